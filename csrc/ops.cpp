// The extension module and the sdkernels op library.
//
// Each op family defines its schemas in its own fragment, csrc/ops/<family>.cpp
// (core, skip, layer_scale, add_norm); its kernels live in csrc/cpu/<family>.cpp
// and csrc/cuda/<family>.cu, its C++ autograd in csrc/autograd/<family>.cpp.
// Fake (meta) kernels and the Triton twins are registered from Python.  Test-only
// host hooks live in their own library, sdkernels_testing (csrc/testing/).
#include <Python.h>
#include <torch/library.h>

// `import sdkernels._C` loads this library, which runs every registration in it.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "sdkernels compiled kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}

// Claims the sdkernels namespace (a second TORCH_LIBRARY(sdkernels) elsewhere is an
// error at load time); the schemas are the fragments' (csrc/ops/*.cpp).
TORCH_LIBRARY(sdkernels, m) {}
