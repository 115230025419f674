// Schemas of the skip-path ops (the branch's compute skipped for dropped
// samples).  Kernels: csrc/cpu/skip.cpp, csrc/cuda/skip.cu; autograd:
// csrc/autograd/skip.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sdkernels, m) {
  // out = residual, then out.select(sample_dim, index[j]) += src.select(sample_dim, j) * alpha.
  // index holds unique int64 sample indices; src has index.numel() samples.
  m.def(
      "scaled_index_add(Tensor residual, Tensor src, Tensor index, "
      "int sample_dim, float alpha) -> Tensor");
  // out.select(sample_dim, j) = grad.select(sample_dim, index[j]) * alpha,
  // in dtype (default grad's).  Backward of scaled_index_add w.r.t. src.
  m.def(
      "index_scale(Tensor grad, Tensor index, int sample_dim, float alpha, "
      "ScalarType? dtype=None) -> Tensor");
}
