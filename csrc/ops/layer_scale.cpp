// Schemas of the LayerScale ops: residual + drop_path(gamma * branch).
// Kernels: csrc/cpu/layer_scale.cpp, csrc/cuda/layer_scale.cu; autograd:
// csrc/autograd/layer_scale.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(sdkernels, m) {
  // c indexes channel_dim (!= sample_dim); gamma is 1-D with one value per
  // channel, any floating dtype (read exactly in the math dtype).  Each
  // multiply and the add rounded separately, math fp32 (fp64 when any tensor
  // is fp64).
  // out = residual + (branch * gamma[c]) * (scale[s] * alpha) for kept samples,
  // residual (branch not read) for dropped ones.  Output dtype:
  // promote_types(residual, branch, gamma); strides: empty_like(residual).
  m.def(
      "scaled_residual_add_ls(Tensor residual, Tensor branch, Tensor scale, Tensor gamma, "
      "int sample_dim, int channel_dim, float alpha=1.0) -> Tensor");
  // out = (x * gamma[c]) * (scale[s] * alpha) for kept samples, zeros (x not
  // read) for dropped ones; dtype defaults to promote_types(x, gamma).
  // drop_path's forward with LayerScale, and the branch gradient of both ops
  // when gamma needs none.
  m.def(
      "sample_scale_ls(Tensor x, Tensor scale, Tensor gamma, int sample_dim, int channel_dim, "
      "float alpha=1.0, ScalarType? dtype=None) -> Tensor");
  // The backward of both ops in one pass over the kept rows of grad and branch:
  // grad_branch = sample_scale_ls(grad, scale, gamma, ..., branch's dtype) and
  // grad_gamma[c] = sum over every other dim of (grad * (scale[s] * alpha)) * branch
  // (dropped samples add exactly 0, unread), in gamma's dtype.  No atomics:
  // fixed partials, summed in a fixed order.
  m.def(
      "layer_scale_grads(Tensor grad, Tensor branch, Tensor scale, Tensor gamma, int sample_dim, "
      "int channel_dim, float alpha=1.0) -> (Tensor, Tensor)");
  // The eager fast path of sdkernels.drop_path_add(layer_scale=): draw (as for branch * gamma) and
  // apply in one call (csrc/composite/draw.cpp).
  m.def(
      "drop_path_add_ls_draw(Tensor residual, Tensor branch, Tensor gamma, float p, int sample_dim, "
      "int channel_dim, bool batch, bool scale_by_keep) -> Tensor");
}
