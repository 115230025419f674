// Schemas of the core fused drop-path ops.  Kernels: csrc/cpu/core.cpp,
// csrc/cuda/core.cu; autograd: csrc/autograd/core.cpp; the draw + op entries:
// csrc/composite/draw.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sdkernels, m) {
  // out = residual + branch * (scale[s] * alpha) for samples with scale[s] != 0,
  // out = residual (branch not read) for samples with scale[s] == 0.
  // s indexes sample_dim; scale has one value per sample (or one for all),
  // fp32 or fp64.  Output dtype: promote_types(residual, branch); output
  // strides: empty_like(residual).
  m.def(
      "scaled_residual_add(Tensor residual, Tensor branch, Tensor scale, "
      "int sample_dim, float alpha=1.0) -> Tensor");
  // out = x * (scale[s] * alpha) for kept samples, zeros (x not read) for
  // dropped ones; dtype defaults to x's.  drop_path's forward and the
  // branch gradient of both ops.
  m.def(
      "sample_scale(Tensor x, Tensor scale, int sample_dim, float alpha=1.0, "
      "ScalarType? dtype=None) -> Tensor");
  // The eager fast path of sdkernels.drop_path_add / drop_path: draw the keep mask (the draw of
  // sdkernels.rng.draw, default generator) and apply it with the multiplier of
  // sdkernels.dtypes.keep_scale, in one call.  CompositeImplicitAutograd: made of the ops above.
  m.def(
      "drop_path_add_draw(Tensor residual, Tensor branch, float p, int sample_dim, bool batch, "
      "bool scale_by_keep) -> Tensor");
  m.def("drop_path_draw(Tensor x, float p, int sample_dim, bool batch, bool scale_by_keep) -> Tensor");
}
