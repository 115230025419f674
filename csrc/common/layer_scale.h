// LayerScale ops: the row view shared by the CPU and CUDA kernels,
// and the host-side planning of a call (checks, output, inputs in the output's
// layout).  Semantics in csrc/ops/layer_scale.cpp and sdkernels/reference.py:
//
//   out = residual + (branch * gamma[c]) * m[s]   kept sample s, channel c
//   m[s] = scale[s] * alpha, each multiply and the add rounded separately.
//
// Row view.  A dense tensor is one memory block; sample s of offset i is
// (i / inner) % n (csrc/common/sample_layout.h) and channel c is
// (i / K) % C, K being the channel dim's stride.  Both are made per-row
// quantities of a [rows, len] view, so kernels know a row's sample once and
// its gamma either per column or once per row:
//
//   channel innermost (K == 1: tokens [B, N, C], channels_last NCHW,
//   seq-first [S, B, C]):  len = C, gamma per column (gamma_cols),
//                          sample(row) = (row / (inner / C)) % n;
//   channel outer, sample outer (contiguous NCHW, channel_dim = 1):
//                          len = K, channel(row) = row % C,
//                          sample(row) = (row / (inner / K)) % n;
//   channel outer, sample inner (any layout whose channel dim lies outside
//   its sample dim in memory):  len = inner, sample(row) = row % n,
//                          channel(row) = (row / (K / inner)) % C.
//
// Dense layouts make these divisions exact: two dims of size > 1 never share
// a stride, and an outer dim's stride is a multiple of the inner one's extent.
// One channel (C == 1) is planned with K = inner; one scale for all samples
// (mode "batch") with n = 1.  Written as __host__ __device__ code (run by the
// CPU test hooks, csrc/testing/index_math.cpp).
//
// The gamma gradient: every program reduces its own part into fixed fp32
// (fp64) partials, which are then summed in a fixed order, so the result does
// not depend on thread counts or timing (no atomics).  Partials are laid out
// [O, C, c_div]: per row group and column for gamma_cols (c_div = 1), per row
// otherwise (rows = O * C * c_div).
#pragma once

#include <cstdint>

#include "common/drop_path_index.h"

namespace sdkernels {
namespace index {

struct LsRowView {
  int64_t rows;     // numel / len
  int64_t len;      // elements per row
  int64_t s_div;    // sample(row) = (row / s_div) % n
  int64_t n;        // samples (1: one scale for all)
  int64_t c_div;    // channel(row) = (row / c_div) % C  (rows with gamma per row)
  int64_t C;        // channels
  bool gamma_cols;  // gamma indexed by column (len == C)
};

// numel > 0; inner, n: the sample layout (n = 1: one scale); K: the channel
// dim's stride in elements; C: channels.
SDK_HD_INLINE LsRowView plan_ls_rows(int64_t numel, int64_t inner, int64_t n, int64_t K, int64_t C) {
  LsRowView v;
  v.C = C < 1 ? 1 : C;
  v.n = n < 1 ? 1 : n;
  if (v.C == 1) K = inner;
  if (v.C > 1 && K == 1) {
    v.gamma_cols = true;
    v.len = v.C;
    v.c_div = 1;
    v.s_div = v.n > 1 ? inner / v.C : 1;
  } else if (v.n > 1 && K > inner) {
    v.gamma_cols = false;
    v.len = inner;
    v.s_div = 1;
    v.c_div = K / inner;
  } else {
    v.gamma_cols = false;
    v.len = K;
    v.s_div = v.n > 1 ? inner / K : 1;
    v.c_div = 1;
  }
  if (v.len < 1) v.len = 1;
  if (v.s_div < 1) v.s_div = 1;
  if (v.c_div < 1) v.c_div = 1;
  v.rows = numel / v.len;
  return v;
}

SDK_HD_INLINE int64_t row_sample(const LsRowView& v, int64_t row) {
  return v.n <= 1 ? 0 : (row / v.s_div) % v.n;
}

SDK_HD_INLINE int64_t row_channel(const LsRowView& v, int64_t row) {
  return (row / v.c_div) % v.C;
}

// Partials of the gamma gradient for row groups of `rows_per_group` rows
// (gamma_cols): one row of C values per group.  Per-row gamma: one value per row.
SDK_HD_INLINE int64_t ls_partial_outer(const LsRowView& v, int64_t groups) {
  return v.gamma_cols ? groups : v.rows / (v.C * v.c_div);
}

// The CUDA backward grid with gamma per column (ls_grads_cols_kernel): blocks
// of ty row lanes x tx column lanes, each column lane holding `vec` columns;
// grid.x the column tiles, grid.y the row groups of rows_per_group rows.
struct LsColsGrid {
  int64_t tx;
  int64_t ty;
  int64_t vec;
  int64_t col_tiles;
  int64_t groups;
  int64_t rows_per_group;
};

// max_blocks: blocks the device holds at once (the groups fill it; at most 65535, grid.y's limit).
SDK_HD_INLINE LsColsGrid plan_ls_cols(const LsRowView& v, int64_t vec, int64_t nthreads, int64_t max_blocks) {
  LsColsGrid g;
  g.vec = vec < 1 ? 1 : vec;
  const int64_t vecs = ceil_div(v.len, g.vec);
  g.tx = vecs < 32 ? vecs : 32;
  g.ty = nthreads / g.tx;
  g.col_tiles = ceil_div(vecs, g.tx);
  int64_t want = max_blocks / g.col_tiles;
  if (want < 1) want = 1;
  const int64_t need = ceil_div(v.rows, g.ty);
  g.groups = need < want ? need : want;
  if (g.groups > 65535) g.groups = 65535;
  if (g.groups < 1) g.groups = 1;
  g.rows_per_group = ceil_div(v.rows, g.groups);
  return g;
}

// Thread t of block (bx, by): its column lane, row lane, first column, and rows
// row0, row0 + ty, ... below row_end.  Inactive threads (past tx * ty, or past
// the last column) hold no columns; the group's partials are written whatever
// its rows (a group may have none).
struct LsColsThread {
  bool active;
  int64_t lane_x;
  int64_t lane_y;
  int64_t col0;
  int64_t row0;
  int64_t row_end;
};

SDK_HD_INLINE LsColsThread ls_cols_thread(const LsColsGrid& g, const LsRowView& v, int64_t bx, int64_t by,
                                          int64_t t) {
  LsColsThread th;
  th.lane_x = t % g.tx;
  th.lane_y = t / g.tx;
  th.col0 = (bx * g.tx + th.lane_x) * g.vec;
  th.active = th.lane_y < g.ty && th.col0 < v.len;
  const int64_t r0 = by * g.rows_per_group;
  th.row0 = r0 + th.lane_y;
  const int64_t r1 = r0 + g.rows_per_group;
  th.row_end = r1 < v.rows ? r1 : v.rows;
  return th;
}

}  // namespace index
}  // namespace sdkernels

#include <ATen/ATen.h>

#include <string>

#include "common/kernel_types.h"
#include "common/sample_layout.h"

namespace sdkernels {

// f(O{}) for the output dtype of scaled_residual_add_ls with residual R, branch
// B and some gamma: promote(R, B), float or double (a wider gamma promotes).
template <typename R, typename B, typename F>
void dispatch_ls_out(at::ScalarType out, const F& f) {
  using P = typename promote<R, B>::type;
  if (out == c10::CppTypeToScalarType<P>::value) {
    f(P{});
  } else if (out == at::kFloat) {
    f(float{});
  } else {
    TORCH_INTERNAL_ASSERT(out == at::kDouble, "sdkernels: unexpected LayerScale output dtype");
    f(double{});
  }
}

inline int64_t wrap_channel_dim(int64_t channel_dim, int64_t ndim, int64_t sample_dim) {
  TORCH_CHECK_INDEX(channel_dim >= -ndim && channel_dim < ndim,
                    "sdkernels: channel_dim " + std::to_string(channel_dim) +
                        " is out of range for a tensor of " + std::to_string(ndim) + " dims");
  const int64_t cd = channel_dim < 0 ? channel_dim + ndim : channel_dim;
  TORCH_CHECK_VALUE(cd != sample_dim, "sdkernels: channel_dim (" + std::to_string(channel_dim) +
                                          ") must differ from sample_dim (" +
                                          std::to_string(sample_dim) + ")");
  return cd;
}

// gamma: a floating-point 1-D tensor of C values on `device`.
inline void check_gamma(const at::Tensor& gamma, int64_t C, const at::Device& device) {
  check_float(gamma, "gamma");
  TORCH_CHECK_VALUE(gamma.dim() == 1 && gamma.numel() == C,
                    "sdkernels: gamma must be 1-D with one value per channel (" + std::to_string(C) +
                        "), got shape " + shape_str(gamma.sizes()));
  check_device(gamma, "gamma", device);
}

// The math dtype: float64 when any of the dtypes is, else float32.
inline at::ScalarType acc_scalar_type(std::initializer_list<at::ScalarType> dts) {
  for (auto d : dts)
    if (d == at::kDouble) return at::kDouble;
  return at::kFloat;
}

// The row view of the dense tensor `out` (inputs already in its layout).
inline index::LsRowView plan_ls_view(const at::Tensor& out, int64_t sample_dim, int64_t channel_dim,
                                     bool one_scale) {
  const SampleLayout L = plan_layout(out, sample_dim);
  const int64_t n = one_scale ? 1 : L.n;
  const int64_t inner = one_scale ? L.numel : L.inner;
  const int64_t C = out.size(channel_dim);
  const index::LsRowView v =
      index::plan_ls_rows(L.numel, inner, n, C == 1 ? inner : out.stride(channel_dim), C);
  TORCH_INTERNAL_ASSERT(v.rows * v.len == L.numel, "sdkernels: bad LayerScale row plan");
  return v;
}

// One call's work, planned alike by every backend (a CUDA caller sets its
// device guard first): arguments checked, the output allocated, inputs in the
// output's layout, gamma as a contiguous vector in the math dtype (a copy only
// when its dtype differs: the values are exact in it), and the row view.
struct LsPlan {
  at::Tensor out;      // the op's (first) output
  at::Tensor a, b;     // the inputs read elementwise (b undefined when there is one)
  at::Tensor scale, gamma;
  index::LsRowView view;
  at::ScalarType acc;
};

inline void plan_inputs(LsPlan& P, const at::Tensor& like, int64_t dim, int64_t cdim,
                        const at::Tensor& a, const at::Tensor* b) {
  P.a = match_strides(a, like);
  if (b != nullptr) P.b = match_strides(*b, like);
  P.view = plan_ls_view(like, dim, cdim, P.scale.numel() == 1);
}

// scaled_residual_add_ls: out = empty_like(residual) in promote(residual, branch, gamma).
inline LsPlan plan_residual_add_ls(const at::Tensor& residual, const at::Tensor& branch,
                                   const at::Tensor& scale, const at::Tensor& gamma,
                                   int64_t sample_dim, int64_t channel_dim) {
  check_pair(residual, branch, "residual", "branch");
  const int64_t dim = wrap_sample_dim(sample_dim, residual.dim());
  const int64_t cdim = wrap_channel_dim(channel_dim, residual.dim(), dim);
  check_gamma(gamma, residual.size(cdim), residual.device());
  LsPlan P;
  P.scale = checked_scale(scale, residual.size(dim), residual.device());
  const auto out_dtype = at::promote_types(
      at::promote_types(residual.scalar_type(), branch.scalar_type()), gamma.scalar_type());
  P.acc = acc_scalar_type({out_dtype});
  P.out = at::empty_like(residual, residual.options().dtype(out_dtype));
  if (P.out.numel() == 0) return P;
  P.gamma = gamma.to(P.acc).contiguous();
  plan_inputs(P, P.out, dim, cdim, residual, &branch);
  return P;
}

// sample_scale_ls: out = empty_like(x) in dtype (default promote(x, gamma)).
// fp64 gamma with narrower x and out: x is widened first (the math is fp64).
inline LsPlan plan_sample_scale_ls(const at::Tensor& x, const at::Tensor& scale,
                                   const at::Tensor& gamma, int64_t sample_dim, int64_t channel_dim,
                                   std::optional<at::ScalarType> dtype) {
  check_float(x, "x");
  const auto out_dtype =
      dtype.has_value() ? *dtype : at::promote_types(x.scalar_type(), gamma.scalar_type());
  check_float_dtype(out_dtype, "dtype");
  const int64_t dim = wrap_sample_dim(sample_dim, x.dim());
  const int64_t cdim = wrap_channel_dim(channel_dim, x.dim(), dim);
  check_gamma(gamma, x.size(cdim), x.device());
  LsPlan P;
  P.scale = checked_scale(scale, x.size(dim), x.device());
  P.acc = acc_scalar_type({x.scalar_type(), out_dtype, gamma.scalar_type()});
  P.out = at::empty_like(x, x.options().dtype(out_dtype));
  if (P.out.numel() == 0) return P;
  P.gamma = gamma.to(P.acc).contiguous();
  const bool widen = P.acc == at::kDouble && x.scalar_type() != at::kDouble && out_dtype != at::kDouble;
  plan_inputs(P, P.out, dim, cdim, widen ? x.to(at::kDouble) : x, nullptr);
  return P;
}

// layer_scale_grads: grad_branch = empty_like(grad) in branch's dtype; the
// gamma gradient is reduced separately.  fp64 gamma with narrower tensors:
// grad is widened first.
inline LsPlan plan_layer_scale_grads(const at::Tensor& grad, const at::Tensor& branch,
                                     const at::Tensor& scale, const at::Tensor& gamma,
                                     int64_t sample_dim, int64_t channel_dim) {
  check_pair(grad, branch, "grad", "branch");
  const int64_t dim = wrap_sample_dim(sample_dim, grad.dim());
  const int64_t cdim = wrap_channel_dim(channel_dim, grad.dim(), dim);
  check_gamma(gamma, grad.size(cdim), grad.device());
  LsPlan P;
  P.scale = checked_scale(scale, grad.size(dim), grad.device());
  P.acc = acc_scalar_type({grad.scalar_type(), branch.scalar_type(), gamma.scalar_type()});
  P.out = at::empty_like(grad, grad.options().dtype(branch.scalar_type()));
  if (P.out.numel() == 0) return P;
  P.gamma = gamma.to(P.acc).contiguous();
  const bool widen = P.acc == at::kDouble && grad.scalar_type() != at::kDouble &&
                     branch.scalar_type() != at::kDouble;
  plan_inputs(P, P.out, dim, cdim, widen ? grad.to(at::kDouble) : grad, &branch);
  return P;
}

}  // namespace sdkernels
