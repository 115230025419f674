// Every sdkernels schema, defined once.  Backends register implementations
// in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); fake (meta) kernels and
// autograd are registered from Python in sdkernels/ops.py.
#include <Python.h>
#include <torch/library.h>

// `import sdkernels._C` loads this library, which runs the registrations below.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "sdkernels compiled kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(sdkernels, m) {
  // ---- core fused drop path (issue: fused drop-path + residual add) -------
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

  // ---- skip path (issue: skip the branch's compute for dropped samples) ---
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

  // ---- LayerScale (issue 13): residual + drop_path(gamma * branch) --------
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
  // Test hooks (csrc/cpu/index_math_hooks.cpp, tests/test_layer_scale_index.py): the CUDA
  // LayerScale kernels' index math run on the host.
  m.def(
      "_index_emulate_ch(int numel, int inner, int n, int K, int C, int vec, bool aligned, "
      "int nblocks, int nthreads) -> Tensor[]");
  m.def(
      "_index_ls_cols(int numel, int inner, int n, int K, int C, int vec, int nthreads, "
      "int max_blocks) -> Tensor[]");
  // ---- add + norm (issue 14: drop path + residual add + LayerNorm/RMSNorm) --
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

  // Test hooks of the add + norm CUDA index math (csrc/cpu/add_norm_index_hooks.cpp,
  // tests/test_add_norm_index.py).
  m.def("_add_norm_plan_row(int H, int vec, int max_chunks) -> int[]");
  m.def("_add_norm_cover(int H, int vec, int max_chunks) -> Tensor");
  m.def("_add_norm_sample_of_row(int[] rows, int H, int inner, int n) -> int[]");
  m.def("_add_norm_row_vec_width(int H, int min_elem_size, bool aligned) -> int");
  m.def("_add_norm_rows_of_program(int programs, int rows) -> int[]");

  // ---- test hooks: host-run copies of the CUDA kernels' index math --------
  // (defined by csrc/cpu/index_math_hooks.cpp; see tests/test_index_math.py)
  m.def("_index_sample_of(int[] offsets, int inner, int n) -> int[]");
  m.def("_index_vec_width(int[] elem_sizes) -> int");
  m.def("_index_aligned(int[] addresses) -> bool");
  m.def("_index_vec_plan(int numel, int inner, int n, int vec, bool aligned) -> int[]");
  m.def(
      "_index_grid_blocks(int numel, int inner, int n, int vec, bool aligned, "
      "int nthreads, int max_blocks) -> int");
  m.def("_index_cursor_walk(int start, int step, int count, int inner, int n) -> Tensor");
  m.def(
      "_index_emulate(int numel, int inner, int n, int vec, bool aligned, int nblocks, "
      "int nthreads, int tid_begin=0, int tid_end=-1) -> Tensor[]");
}
