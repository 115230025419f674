// CPU kernels of the add + norm ops (schemas in csrc/ops/add_norm.cpp, spec in
// sdkernels/reference.py: add_norm, add_norm_backward).
//
// One pass over memory per direction.  A thread takes whole rows (the H
// elements of the normalised last dim) and keeps the row it works on in a
// small fp32 (fp64) buffer, which stays in L1/L2:
//   forward:  read residual, read branch (kept samples only), write x, then
//             the statistics and h from x as stored (re-read from the buffer);
//   backward: read x, grad_h and grad_x, write grad_residual and grad_branch
//             (zeros, branch unread, for dropped samples); the weight / bias /
//             gamma gradients go to per-chunk fp32 (fp64) partial rows.
// Rows are split into a fixed number of chunks that depends on the shape only
// (never on the thread count), and the partial rows are summed in chunk
// order: same inputs, same bits, on any number of threads.  Every input is
// read in its own dtype (converted per row); the math is fp32 (fp64 when any
// tensor is fp64), each multiply and add rounded separately (no FMA: the AVX2
// clone is not given FMA), each output rounded once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/add_norm_index.h"
#include "common/add_norm_plan.h"
#include "common/cpu_kernels.h"

namespace sdkernels {
namespace {

using cpu::from_acc;
using cpu::multipliers;
using cpu::to_acc;
namespace ai = ::sdkernels::add_norm_index;

#if defined(__GNUC__)
#define SDK_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define SDK_ALWAYS_INLINE inline
#endif

// Partial rows of the parameter gradients: at most this many chunks of rows.
constexpr int64_t kMaxChunks = 64;
// Lanes of the row sums (fixed: the summation order never depends on the ISA).
constexpr int kLanes = 16;

// ---- row conversions (inlined into the baseline and AVX2 row loops) ----------

template <typename T, typename A>
SDK_ALWAYS_INLINE void load_typed(const T* __restrict src, A* __restrict dst, int64_t len) {
  for (int64_t k = 0; k < len; ++k) dst[k] = to_acc<A>(src[k]);
}

template <typename T, typename A>
SDK_ALWAYS_INLINE void store_typed(T* __restrict dst, const A* __restrict src, int64_t len) {
  for (int64_t k = 0; k < len; ++k) dst[k] = from_acc<T, A>(src[k]);
}

#define SDK_ROW_SWITCH(ST, ...)                           \
  switch (ST) {                                           \
    case at::kFloat: {                                    \
      using T = float;                                    \
      __VA_ARGS__;                                        \
      break;                                              \
    }                                                     \
    case at::kDouble: {                                   \
      using T = double;                                   \
      __VA_ARGS__;                                        \
      break;                                              \
    }                                                     \
    case at::kHalf: {                                     \
      using T = c10::Half;                                \
      __VA_ARGS__;                                        \
      break;                                              \
    }                                                     \
    case at::kBFloat16: {                                 \
      using T = c10::BFloat16;                            \
      __VA_ARGS__;                                        \
      break;                                              \
    }                                                     \
    default:                                              \
      break;                                              \
  }

template <typename A>
SDK_ALWAYS_INLINE void load_row(at::ScalarType st, const void* base, int64_t off, A* dst, int64_t len) {
  SDK_ROW_SWITCH(st, load_typed<T, A>(static_cast<const T*>(base) + off, dst, len))
}

template <typename A>
SDK_ALWAYS_INLINE void store_row(at::ScalarType st, void* base, int64_t off, const A* src, int64_t len) {
  SDK_ROW_SWITCH(st, store_typed<T, A>(static_cast<T*>(base) + off, src, len))
}

// x of a row in the math dtype, straight from the inputs: residual (dropped sample),
// residual + branch * m, or residual + (branch * gamma) * m (each product rounded).
template <typename R, typename B, typename A>
SDK_ALWAYS_INLINE void add_row_typed(const R* __restrict r, const B* __restrict b, const A* __restrict g, bool kept,
                                     A m, A* __restrict xa, int64_t len) {
  if (!kept) {
    for (int64_t k = 0; k < len; ++k) xa[k] = to_acc<A>(r[k]);
  } else if (g == nullptr) {
    for (int64_t k = 0; k < len; ++k) {
      const A bm = to_acc<A>(b[k]) * m;
      xa[k] = to_acc<A>(r[k]) + bm;
    }
  } else {
    for (int64_t k = 0; k < len; ++k) {
      const A bg = to_acc<A>(b[k]) * g[k];
      const A bgm = bg * m;
      xa[k] = to_acc<A>(r[k]) + bgm;
    }
  }
}

// h = ((x - mean) * rstd) * w + bias, rounded once to H's dtype.
template <typename Hh, typename A>
SDK_ALWAYS_INLINE void norm_row_typed(Hh* __restrict h, const A* __restrict xa, const A* __restrict w,
                                      const A* __restrict bias, A mean, A rstd, int64_t len) {
  for (int64_t k = 0; k < len; ++k) {
    const A xh = (xa[k] - mean) * rstd;
    const A y = xh * w[k];
    h[k] = from_acc<Hh, A>(y + bias[k]);
  }
}

// ---- row sums: kLanes independent accumulators, folded in a fixed order ------

// The lanes are folded in halves (lane j += lane j + w for w = 8, 4, 2, 1), written out so that the
// lanes stay in registers: a loop over w indexes them at run time, which puts them on the stack.
// Every loop over the lanes has constant bounds for the same reason (a row's tail runs the 16 lanes
// with the missing elements taken as +0, which leaves a lane's sum unchanged: a lane sum starts at +0
// and never becomes -0).
static_assert(kLanes == 16, "fold() is written for 16 lanes");
template <typename A>
SDK_ALWAYS_INLINE A fold(const A (&acc)[kLanes]) {
  A a[8], b[4];
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) a[j] = acc[j] + acc[j + 8];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) b[j] = a[j] + a[j + 4];
  const A c0 = b[0] + b[2], c1 = b[1] + b[3];
  return c0 + c1;
}

// sum(v)
template <typename A>
SDK_ALWAYS_INLINE A row_sum(const A* __restrict v, int64_t len) {
  A acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += v[k + j];
#pragma GCC unroll 16
  for (int j = 0; j < kLanes; ++j) acc[j] += k + j < len ? v[k + j] : A(0);
  return fold(acc);
}

// sum((v - c)^2)
template <typename A>
SDK_ALWAYS_INLINE A row_sq_dev(const A* __restrict v, A c, int64_t len) {
  A acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const A d = v[k + j] - c;
      acc[j] += d * d;
    }
#pragma GCC unroll 16
  for (int j = 0; j < kLanes; ++j) {
    const A d = k + j < len ? v[k + j] - c : A(0);
    acc[j] += d * d;
  }
  return fold(acc);
}

// src = dst converted back (x as stored) and the sum of it: one vectorised pass.
template <typename T, typename A>
SDK_ALWAYS_INLINE A load_sum_typed(const T* __restrict dst, A* __restrict src, int64_t len) {
  A acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      src[k + j] = to_acc<A>(dst[k + j]);
      acc[j] += src[k + j];
    }
#pragma GCC unroll 16
  for (int j = 0; j < kLanes; ++j) {
    if (k + j < len) src[k + j] = to_acc<A>(dst[k + j]);
    acc[j] += k + j < len ? src[k + j] : A(0);
  }
  return fold(acc);
}

// Stores x (rounded to T) and returns the sum of x as stored, left in src.
template <typename T, typename A>
SDK_ALWAYS_INLINE A store_x_sum_typed(T* __restrict dst, A* __restrict src, int64_t len) {
  store_typed<T, A>(dst, src, len);
  if constexpr (std::is_same_v<T, A>) {
    return row_sum(src, len);
  } else {
    return load_sum_typed<T, A>(dst, src, len);
  }
}

// ---- forward ------------------------------------------------------------------

template <typename A>
struct FwdArgs {
  const void *r, *b;
  void *x, *h;
  at::ScalarType rdt, bdt, xdt, hdt;
  A *mean, *rstd;                   // mean: nullptr for rms
  const A *w, *bias, *gamma;        // acc copies; gamma nullptr when absent
  const A* m;                       // per-sample multipliers
  const char* kept;
  AddNormLayout L;
  A eps;
};

template <typename A>
SDK_ALWAYS_INLINE void fwd_rows_impl(const FwdArgs<A>& a, int64_t r0, int64_t r1, A* xa) {
  const int64_t H = a.L.H;
  const A inv_h = A(1) / static_cast<A>(H);
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t off = row * H;
    const int64_t s = ai::sample_of_row(row, H, a.L.inner, a.L.n);
    {
      const bool kept = a.kept[s] != 0;
      const A m = a.m[s];
      SDK_ROW_SWITCH(a.rdt, using RT = T; SDK_ROW_SWITCH(a.bdt, add_row_typed<RT, T, A>(
          static_cast<const RT*>(a.r) + off, static_cast<const T*>(a.b) + off, a.gamma, kept, m, xa, H)))
    }
    A sum = A(0);
    SDK_ROW_SWITCH(a.xdt, sum = store_x_sum_typed<T, A>(static_cast<T*>(a.x) + off, xa, H))
    const A mean = a.mean != nullptr ? sum * inv_h : A(0);
    const A var = row_sq_dev(xa, mean, H) * inv_h;
    const A rstd = A(1) / std::sqrt(var + a.eps);
    SDK_ROW_SWITCH(a.hdt, norm_row_typed<T, A>(static_cast<T*>(a.h) + off, xa, a.w, a.bias, mean, rstd, H))
    if (a.mean != nullptr) a.mean[row] = mean;
    a.rstd[row] = rstd;
  }
}

template <typename A>
void fwd_rows_base(const FwdArgs<A>& a, int64_t r0, int64_t r1, A* xa) {
  fwd_rows_impl(a, r0, r1, xa);
}
template <typename A>
SDK_TARGET_AVX2 void fwd_rows_avx2(const FwdArgs<A>& a, int64_t r0, int64_t r1, A* xa) {
  fwd_rows_impl(a, r0, r1, xa);
}

// t in the math dtype, contiguous: t itself when it already is (no dispatch for the common case).
at::Tensor acc_contiguous(const at::Tensor& t, at::ScalarType acc) {
  if (t.scalar_type() == acc && t.is_contiguous()) return t;
  return t.to(acc).contiguous();
}

// The parameter vectors in the math dtype (ones / zeros when absent): H values, once per call.
at::Tensor param_acc(const at::Tensor& p, int64_t H, at::ScalarType acc, double fill) {
  if (!p.defined()) return at::full({H}, fill, at::TensorOptions().dtype(acc));
  return acc_contiguous(p, acc);
}

template <typename A>
void add_norm_fwd(const AddNormPlan& P, double alpha, double eps) {
  const auto acc = c10::CppTypeToScalarType<A>::value;
  const int64_t H = P.layout.H;
  c10::SmallVector<A, 64> m;
  c10::SmallVector<char, 64> kept;
  multipliers<A>(P.scale, alpha, m, kept);
  const at::Tensor w = param_acc(P.weight, H, acc, 1.0);
  const at::Tensor b = param_acc(P.bias, H, acc, 0.0);
  const at::Tensor g = P.gamma.defined() ? acc_contiguous(P.gamma, acc) : at::Tensor();
  FwdArgs<A> a{};
  a.r = P.residual.const_data_ptr();
  a.b = P.branch.const_data_ptr();
  a.x = P.x.mutable_data_ptr();
  a.h = P.h.mutable_data_ptr();
  a.rdt = P.residual.scalar_type();
  a.bdt = P.branch.scalar_type();
  a.xdt = P.x.scalar_type();
  a.hdt = P.h.scalar_type();
  a.mean = P.mean.numel() ? P.mean.mutable_data_ptr<A>() : nullptr;
  a.rstd = P.rstd.mutable_data_ptr<A>();
  a.w = w.const_data_ptr<A>();
  a.bias = b.const_data_ptr<A>();
  a.gamma = g.defined() ? g.const_data_ptr<A>() : nullptr;
  a.m = m.data();
  a.kept = kept.data();
  a.L = P.layout;
  a.eps = static_cast<A>(eps);
  const bool avx2 = cpu::cpu_has_avx2();
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(H, 1));
  at::parallel_for(0, P.layout.rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<A> xa(H);  // the row of x as stored, in the math dtype
    if (SDK_HAS_AVX2_CLONE && avx2) {
      fwd_rows_avx2(a, r0, r1, xa.data());
    } else {
      fwd_rows_base(a, r0, r1, xa.data());
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_cpu(
    const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& scale,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& gamma, int64_t sample_dim, double alpha, double eps, bool rms,
    std::optional<at::ScalarType> out_dtype) {
  check_backend(residual, "residual", at::kCPU);
  const AddNormPlan P = plan_add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms,
                                    out_dtype);
  if (P.x.numel() > 0) {
    if (P.acc64) {
      add_norm_fwd<double>(P, alpha, eps);
    } else {
      add_norm_fwd<float>(P, alpha, eps);
    }
  }
  return {P.x, P.h, P.mean, P.rstd};
}

// ---- backward -----------------------------------------------------------------

template <typename A>
struct BwdArgs {
  const void *gx, *gh, *x, *b;      // gx, b: nullptr when absent
  void *gr, *gb;
  at::ScalarType gxdt, ghdt, xdt, bdt, grdt, gbdt;
  const A *mean, *rstd;             // mean: nullptr for rms
  const A *w, *gamma;               // acc copies (w: ones when absent); gamma nullptr when absent
  const A* m;
  const char* kept;
  A *pw, *pb, *pg;                  // partial rows [chunks, H]; nullptr when not wanted
  AddNormLayout L;
  int64_t rows_per_chunk;
};

// acc[k] += v[k], then v = 0.
template <typename A>
SDK_ALWAYS_INLINE void flush_into(A* __restrict acc, A* __restrict v, int64_t len) {
  for (int64_t k = 0; k < len; ++k) {
    acc[k] += v[k];
    v[k] = A(0);
  }
}

// Rows of one chunk are summed kBlockRows at a time into a block row, which is then
// added to the chunk's partial row: two levels of short sums instead of one long one
// (fp32 error ~ eps * sqrt(rows) instead of eps * rows).
constexpr int64_t kBlockRows = 8;

// Pass A of a row, in place: xh <- x-hat = (x - mean) * rstd, g <- dy = grad_h * w; the
// parameter-gradient block rows bw += grad_h * x-hat, bb += grad_h; and the lanes of the two
// row sums, dot(dy, x-hat) and sum(dy) (element k into lane k % kLanes, folded by fold()).
template <typename A>
SDK_ALWAYS_INLINE void bwd_pass_a(A* __restrict xh, A* __restrict g, const A* __restrict w, A* __restrict bw,
                                  A* __restrict bb, A mean, A rstd, int64_t len, A (&l1)[kLanes],
                                  A (&l2)[kLanes]) {
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const A xv = (xh[k + j] - mean) * rstd;
      const A gv = g[k + j];
      xh[k + j] = xv;
      bw[k + j] += gv * xv;
      bb[k + j] += gv;
      const A dy = gv * w[k + j];
      g[k + j] = dy;
      l1[j] += dy * xv;
      l2[j] += dy;
    }
#pragma GCC unroll 16
  for (int j = 0; j < kLanes; ++j) {
    if (k + j >= len) continue;
    const A xv = (xh[k + j] - mean) * rstd;
    const A gv = g[k + j];
    xh[k + j] = xv;
    bw[k + j] += gv * xv;
    bb[k + j] += gv;
    const A dy = gv * w[k + j];
    g[k + j] = dy;
    l1[j] += dy * xv;
    l2[j] += dy;
  }
}

// Pass B: dx = rstd * ((dy - c2) - x-hat * c1) (+ grad_x when given).
template <typename A>
SDK_ALWAYS_INLINE void bwd_pass_b(const A* __restrict g, const A* __restrict xh, const A* __restrict gx,
                                  A* __restrict dx, A rstd, A c1, A c2, int64_t len) {
  if (gx == nullptr) {
    for (int64_t k = 0; k < len; ++k) dx[k] = rstd * ((g[k] - c2) - xh[k] * c1);
  } else {
    for (int64_t k = 0; k < len; ++k) dx[k] = rstd * ((g[k] - c2) - xh[k] * c1) + gx[k];
  }
}

// Pass C of a kept row, in place: d = dx * m; bg += d * branch (when b); dx <- d * gamma (when gamma).
template <typename A>
SDK_ALWAYS_INLINE void bwd_pass_c(A* __restrict dx, const A* __restrict b, A* __restrict bg,
                                  const A* __restrict gm, A m, int64_t len) {
  if (b != nullptr && gm != nullptr) {
    for (int64_t k = 0; k < len; ++k) {
      const A d = dx[k] * m;
      bg[k] += d * b[k];
      dx[k] = d * gm[k];
    }
  } else if (b != nullptr) {
    for (int64_t k = 0; k < len; ++k) {
      const A d = dx[k] * m;
      bg[k] += d * b[k];
      dx[k] = d;
    }
  } else if (gm != nullptr) {
    for (int64_t k = 0; k < len; ++k) dx[k] = (dx[k] * m) * gm[k];
  } else {
    for (int64_t k = 0; k < len; ++k) dx[k] = dx[k] * m;
  }
}

// buf: 7 H values per task: x-hat, grad_h / dy, dx, a scratch row (grad_x, then branch), and the
// block rows of the three parameter gradients (always accumulated; flushed only when wanted).
// Each row takes three fused passes (A, B, C above) besides its loads and stores.
template <typename A>
SDK_ALWAYS_INLINE void bwd_chunks_impl(const BwdArgs<A>& a, int64_t c0, int64_t c1, A* buf) {
  const int64_t H = a.L.H;
  const A inv_h = A(1) / static_cast<A>(H);
  A *xh = buf, *g = buf + H, *dx = buf + 2 * H, *t = buf + 3 * H;
  A *bw = buf + 4 * H, *bb = buf + 5 * H, *bg = buf + 6 * H;
  std::fill(buf + 4 * H, buf + 7 * H, A(0));
  for (int64_t c = c0; c < c1; ++c) {
    A* pw = a.pw != nullptr ? a.pw + c * H : nullptr;
    A* pb = a.pb != nullptr ? a.pb + c * H : nullptr;
    A* pg = a.pg != nullptr ? a.pg + c * H : nullptr;
    if (pw != nullptr) std::fill(pw, pw + H, A(0));
    if (pb != nullptr) std::fill(pb, pb + H, A(0));
    if (pg != nullptr) std::fill(pg, pg + H, A(0));
    const int64_t row_begin = c * a.rows_per_chunk;
    const int64_t row_end = std::min(a.L.rows, (c + 1) * a.rows_per_chunk);
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t off = row * H;
      const int64_t s = ai::sample_of_row(row, H, a.L.inner, a.L.n);
      const A mean = a.mean != nullptr ? a.mean[row] : A(0);
      const A rstd = a.rstd[row];
      load_row<A>(a.xdt, a.x, off, xh, H);
      load_row<A>(a.ghdt, a.gh, off, g, H);
      A l1[kLanes] = {}, l2[kLanes] = {};
      bwd_pass_a(xh, g, a.w, bw, bb, mean, rstd, H, l1, l2);
      const A c1 = fold(l1) * inv_h;
      const A c2 = a.mean != nullptr ? fold(l2) * inv_h : A(0);
      if (a.gx != nullptr) load_row<A>(a.gxdt, a.gx, off, t, H);
      bwd_pass_b(g, xh, a.gx != nullptr ? t : nullptr, dx, rstd, c1, c2, H);
      store_row<A>(a.grdt, a.gr, off, dx, H);
      if (a.kept[s]) {
        const bool with_b = pg != nullptr;
        if (with_b) load_row<A>(a.bdt, a.b, off, t, H);
        bwd_pass_c(dx, with_b ? t : nullptr, bg, a.gamma, a.m[s], H);
        store_row<A>(a.gbdt, a.gb, off, dx, H);
      } else {
        const int64_t esz = c10::elementSize(a.gbdt);
        std::memset(static_cast<char*>(a.gb) + off * esz, 0, static_cast<size_t>(H * esz));
      }
      if ((row - row_begin) % kBlockRows == kBlockRows - 1 || row + 1 == row_end) {
        if (pw != nullptr) flush_into(pw, bw, H);
        if (pb != nullptr) flush_into(pb, bb, H);
        if (pg != nullptr) flush_into(pg, bg, H);
        if (pw == nullptr) std::fill(bw, bw + H, A(0));  // unwanted sums: kept bounded
        if (pb == nullptr) std::fill(bb, bb + H, A(0));
      }
    }
  }
}

template <typename A>
void bwd_chunks_base(const BwdArgs<A>& a, int64_t c0, int64_t c1, A* buf) {
  bwd_chunks_impl(a, c0, c1, buf);
}
template <typename A>
SDK_TARGET_AVX2 void bwd_chunks_avx2(const BwdArgs<A>& a, int64_t c0, int64_t c1, A* buf) {
  bwd_chunks_impl(a, c0, c1, buf);
}

// out[k] = sum over chunks c = 0, 1, ... of part[c, k], in that order, rounded once to out's dtype.
template <typename A>
void reduce_partials(const at::Tensor& part, int64_t chunks, at::Tensor& out) {
  const int64_t H = out.numel();
  const A* p = part.const_data_ptr<A>();
  std::vector<A> sums(H);
  at::parallel_for(0, H, std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(chunks, 1)),
                   [&](int64_t k0, int64_t k1) {
                     for (int64_t k = k0; k < k1; ++k) sums[k] = A(0);
                     for (int64_t c = 0; c < chunks; ++c)
                       for (int64_t k = k0; k < k1; ++k) sums[k] += p[c * H + k];
                   });
  store_row<A>(out.scalar_type(), out.mutable_data_ptr(), 0, sums.data(), H);
}

// Chunks of rows: at least a grain of elements each, at most kMaxChunks; a function of the shape only.
int64_t rows_per_chunk(int64_t rows, int64_t H) {
  const int64_t by_grain = index::ceil_div(at::internal::GRAIN_SIZE, std::max<int64_t>(H, 1));
  const int64_t by_cap = index::ceil_div(rows, kMaxChunks);
  return std::max<int64_t>(1, std::max(by_grain, by_cap));
}

template <typename A>
void add_norm_bwd(AddNormBackwardPlan& P, double alpha) {
  const auto acc = c10::CppTypeToScalarType<A>::value;
  const int64_t H = P.layout.H;
  const int64_t rows = P.layout.rows;
  c10::SmallVector<A, 64> m;
  c10::SmallVector<char, 64> kept;
  multipliers<A>(P.scale, alpha, m, kept);
  const at::Tensor w = param_acc(P.weight, H, acc, 1.0);
  const at::Tensor g = P.gamma.defined() ? acc_contiguous(P.gamma, acc) : at::Tensor();
  const int64_t rpc = rows_per_chunk(rows, H);
  const int64_t chunks = rows == 0 ? 0 : index::ceil_div(rows, rpc);
  auto partial = [&](const at::Tensor& out) {
    return out.numel() ? at::empty({chunks, H}, at::TensorOptions().dtype(acc)) : at::Tensor();
  };
  const at::Tensor pw = partial(P.grad_weight), pb = partial(P.grad_bias), pg = partial(P.grad_gamma);
  BwdArgs<A> a{};
  a.gx = P.grad_x.defined() ? P.grad_x.const_data_ptr() : nullptr;
  a.gh = P.grad_h.const_data_ptr();
  a.x = P.x.const_data_ptr();
  a.b = P.branch.defined() ? P.branch.const_data_ptr() : nullptr;
  a.gr = P.grad_residual.mutable_data_ptr();
  a.gb = P.grad_branch.mutable_data_ptr();
  a.gxdt = P.grad_x.defined() ? P.grad_x.scalar_type() : at::kFloat;
  a.ghdt = P.grad_h.scalar_type();
  a.xdt = P.x.scalar_type();
  a.bdt = P.branch.defined() ? P.branch.scalar_type() : at::kFloat;
  a.grdt = P.grad_residual.scalar_type();
  a.gbdt = P.grad_branch.scalar_type();
  a.mean = P.mean.defined() ? P.mean.const_data_ptr<A>() : nullptr;
  a.rstd = P.rstd.const_data_ptr<A>();
  a.w = w.const_data_ptr<A>();
  a.gamma = g.defined() ? g.const_data_ptr<A>() : nullptr;
  a.m = m.data();
  a.kept = kept.data();
  a.pw = pw.defined() ? pw.mutable_data_ptr<A>() : nullptr;
  a.pb = pb.defined() ? pb.mutable_data_ptr<A>() : nullptr;
  a.pg = pg.defined() ? pg.mutable_data_ptr<A>() : nullptr;
  a.L = P.layout;
  a.rows_per_chunk = rpc;
  const bool avx2 = cpu::cpu_has_avx2();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<A> buf(7 * H);
    if (SDK_HAS_AVX2_CLONE && avx2) {
      bwd_chunks_avx2(a, c0, c1, buf.data());
    } else {
      bwd_chunks_base(a, c0, c1, buf.data());
    }
  });
  if (pw.defined()) reduce_partials<A>(pw, chunks, P.grad_weight);
  if (pb.defined()) reduce_partials<A>(pb, chunks, P.grad_bias);
  if (pg.defined()) reduce_partials<A>(pg, chunks, P.grad_gamma);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_backward_cpu(
    const std::optional<at::Tensor>& grad_x, const at::Tensor& grad_h, const at::Tensor& x, const at::Tensor& mean,
    const at::Tensor& rstd, const at::Tensor& scale, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& branch, int64_t sample_dim,
    double alpha, bool rms, at::ScalarType residual_dtype, at::ScalarType branch_dtype,
    std::optional<at::ScalarType> weight_dtype, std::optional<at::ScalarType> bias_dtype) {
  check_backend(x, "x", at::kCPU);
  AddNormBackwardPlan P = plan_add_norm_backward(grad_x, grad_h, x, mean, rstd, scale, weight, gamma, branch,
                                                 sample_dim, alpha, rms, residual_dtype, branch_dtype, weight_dtype,
                                                 bias_dtype);
  if (P.acc64) {
    add_norm_bwd<double>(P, alpha);
  } else {
    add_norm_bwd<float>(P, alpha);
  }
  return {P.grad_residual, P.grad_branch, P.grad_weight, P.grad_bias, P.grad_gamma};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, CPU, m) {
  m.impl("add_norm", &add_norm_cpu);
  m.impl("add_norm_backward", &add_norm_backward_cpu);
}

}  // namespace sdkernels
