// Schemas of the add + norm ops: drop path + residual add + LayerNorm/RMSNorm.
// Kernels: csrc/cpu/add_norm.cpp, csrc/cuda/add_norm.cu; autograd:
// csrc/autograd/add_norm.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sdkernels, m) {
  // x = residual + (branch * gamma[h]) * (scale[s] * alpha) for kept samples
  // (gamma optional), x = residual (branch not read) for dropped ones;
  // h = norm(x as stored) over the last dim H: LayerNorm, or RMSNorm when rms,
  // times weight plus bias (each optional), statistics in fp32 (fp64 when any
  // tensor is fp64).  x: promote_types(residual, branch[, gamma]), laid out
  // like residual when its last dim is contiguous (else contiguous); h:
  // out_dtype (default x's), x's strides; mean and rstd: one value per row
  // (rows in x's memory order) in the math dtype; mean has 0 elements for rms.
  // weight, bias, gamma: shape (H,); sample_dim is not the last dim.
  m.def(
      "add_norm(Tensor residual, Tensor branch, Tensor scale, Tensor? weight, Tensor? bias, "
      "Tensor? gamma, int sample_dim, float alpha, float eps, bool rms, ScalarType? out_dtype=None) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // The eager fast path of drop_path_add_norm (csrc/composite/draw.cpp): the keep mask drawn as
  // drop_path_add_draw draws it, then add_norm without gamma; returns (x, h).
  m.def(
      "drop_path_add_norm_draw(Tensor residual, Tensor branch, float p, Tensor? weight, Tensor? bias, "
      "int sample_dim, bool batch, bool scale_by_keep, float eps, bool rms) -> (Tensor, Tensor)");
  // The backward: dx = d norm(x)/dx . grad_h + grad_x (grad_x optional) in the
  // math dtype; returns (grad_residual = dx, grad_branch = (dx * m[s]) * gamma
  // (zeros for dropped samples, grad_h and grad_x of their rows still read),
  // grad_weight, grad_bias, grad_gamma = sum over kept rows of (dx * m[s]) *
  // branch).  grad_weight / grad_bias are computed when weight_dtype /
  // bias_dtype is given, grad_gamma when branch is given (else 0 elements);
  // they are reduced from fixed per-chunk fp32 (fp64) partials in a fixed
  // order (deterministic).  mean / rstd as the forward returned them.
  m.def(
      "add_norm_backward(Tensor? grad_x, Tensor grad_h, Tensor x, Tensor mean, Tensor rstd, "
      "Tensor scale, Tensor? weight, Tensor? gamma, Tensor? branch, int sample_dim, float alpha, "
      "bool rms, ScalarType residual_dtype, ScalarType branch_dtype, ScalarType? weight_dtype=None, "
      "ScalarType? bias_dtype=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
