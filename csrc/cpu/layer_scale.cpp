// CPU kernels of the LayerScale ops (schemas in csrc/ops/layer_scale.cpp, row
// view and planning in csrc/common/layer_scale.h, spec in sdkernels/reference.py).
//
// Forward: one pass split by at::parallel_for in chunks of
// at::internal::GRAIN_SIZE elements, each chunk walking the [rows, len] row
// pieces it covers: a kept row computes r + (b * g) * m with gamma per column
// or one gamma for the row, a dropped row copies the residual (writes zeros)
// without reading the branch.  Math in fp32 (fp64 when any tensor is), each
// multiply and the add rounded separately (no FMA), result rounded once.
//
// Backward (layer_scale_grads): one pass that reads grad and branch of the
// kept rows once and writes grad_branch (zeros for dropped rows, nothing
// read) plus the gamma gradient's partials, split into work items fixed by
// the tensor alone (blocks of rows), never by the thread count: each item
// writes its own partials (zeros when it has no kept row) and they are summed
// in a fixed order, so the bits do not depend on threads or timing.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "common/cpu_kernels.h"
#include "common/kernel_types.h"
#include "common/layer_scale.h"
#include "common/sample_layout.h"

namespace sdkernels {
namespace {

using namespace ::sdkernels::cpu;
namespace ix = ::sdkernels::index;

// Row bodies.  kCols: gamma per column (g[k]); else one gamma for the row (g[0]).
#define SDK_LS_ADD_BODY                                                                     \
  for (int64_t k = 0; k < len; ++k) {                                                       \
    o[k] = from_acc<O, acc_t>(to_acc<acc_t>(r[k]) + (to_acc<acc_t>(b[k]) * g[kCols ? k : 0]) * m); \
  }
#define SDK_LS_SCALE_BODY                                                  \
  for (int64_t k = 0; k < len; ++k) {                                      \
    o[k] = from_acc<O, acc_t>((to_acc<acc_t>(x[k]) * g[kCols ? k : 0]) * m); \
  }
// grad_branch = (grad * g) * m; the gamma partials of the row's columns += (grad * m) * b.
// Two loops over the (L1-resident) row: each vectorises on its own, bf16 included.
#define SDK_LS_GRAD_COLS_BODY                                             \
  for (int64_t k = 0; k < len; ++k) {                                     \
    o[k] = from_acc<B, acc_t>((to_acc<acc_t>(gr[k]) * g[k]) * m);         \
  }                                                                       \
  for (int64_t k = 0; k < len; ++k) {                                     \
    part[k] += (to_acc<acc_t>(gr[k]) * m) * to_acc<acc_t>(b[k]);          \
  }

template <bool kCols, typename R, typename B, typename O, typename acc_t>
void ls_add_row_base(const R* __restrict r, const B* __restrict b, const acc_t* __restrict g,
                     O* __restrict o, int64_t len, acc_t m) {
  SDK_LS_ADD_BODY
}
template <bool kCols, typename R, typename B, typename O, typename acc_t>
SDK_TARGET_AVX2 void ls_add_row_avx2(const R* __restrict r, const B* __restrict b,
                                     const acc_t* __restrict g, O* __restrict o, int64_t len,
                                     acc_t m) {
  SDK_LS_ADD_BODY
}
template <bool kCols, typename X, typename O, typename acc_t>
void ls_scale_row_base(const X* __restrict x, const acc_t* __restrict g, O* __restrict o,
                       int64_t len, acc_t m) {
  SDK_LS_SCALE_BODY
}
template <bool kCols, typename X, typename O, typename acc_t>
SDK_TARGET_AVX2 void ls_scale_row_avx2(const X* __restrict x, const acc_t* __restrict g,
                                       O* __restrict o, int64_t len, acc_t m) {
  SDK_LS_SCALE_BODY
}
template <typename G, typename B, typename acc_t>
void ls_grad_cols_base(const G* __restrict gr, const B* __restrict b, const acc_t* __restrict g,
                       B* __restrict o, acc_t* __restrict part, int64_t len, acc_t m) {
  SDK_LS_GRAD_COLS_BODY
}
template <typename G, typename B, typename acc_t>
SDK_TARGET_AVX2 void ls_grad_cols_avx2(const G* __restrict gr, const B* __restrict b,
                                       const acc_t* __restrict g, B* __restrict o,
                                       acc_t* __restrict part, int64_t len, acc_t m) {
  SDK_LS_GRAD_COLS_BODY
}

// One row with one gamma: writes grad_branch and returns the row's sum of
// (grad * m) * b, accumulated in 16 lanes (element k into lane k % 16) and
// the lanes added in a fixed tree: the same bits whatever the thread count.
constexpr int kLanes = 16;
// Gamma per column is repeated to at least this many values (a few KB, L1-resident).
constexpr int64_t kRepElems = 2048;
#define SDK_LS_GRAD_ROW_BODY                                                  \
  acc_t lanes[kLanes] = {};                                                   \
  int64_t k0 = 0;                                                             \
  for (; k0 + kLanes <= len; k0 += kLanes) {                                  \
    for (int j = 0; j < kLanes; ++j) {                                        \
      const acc_t go = to_acc<acc_t>(gr[k0 + j]);                             \
      o[k0 + j] = from_acc<B, acc_t>((go * g) * m);                           \
      lanes[j] += (go * m) * to_acc<acc_t>(b[k0 + j]);                        \
    }                                                                         \
  }                                                                           \
  for (int j = 0; k0 + j < len; ++j) {                                        \
    const acc_t go = to_acc<acc_t>(gr[k0 + j]);                               \
    o[k0 + j] = from_acc<B, acc_t>((go * g) * m);                             \
    lanes[j] += (go * m) * to_acc<acc_t>(b[k0 + j]);                          \
  }                                                                           \
  for (int w = kLanes / 2; w >= 1; w /= 2)                                    \
    for (int j = 0; j < w; ++j) lanes[j] += lanes[j + w];                     \
  return lanes[0];

template <typename G, typename B, typename acc_t>
acc_t ls_grad_row_base(const G* __restrict gr, const B* __restrict b, acc_t g, B* __restrict o,
                       int64_t len, acc_t m) {
  SDK_LS_GRAD_ROW_BODY
}
template <typename G, typename B, typename acc_t>
SDK_TARGET_AVX2 acc_t ls_grad_row_avx2(const G* __restrict gr, const B* __restrict b, acc_t g,
                                       B* __restrict o, int64_t len, acc_t m) {
  SDK_LS_GRAD_ROW_BODY
}

template <bool kCols, typename R, typename B, typename O, typename acc_t>
inline void ls_add_row(const R* r, const B* b, const acc_t* g, O* o, int64_t len, acc_t m,
                       bool avx2) {
  if (SDK_HAS_AVX2_CLONE && avx2) {
    ls_add_row_avx2<kCols, R, B, O, acc_t>(r, b, g, o, len, m);
  } else {
    ls_add_row_base<kCols, R, B, O, acc_t>(r, b, g, o, len, m);
  }
}
template <bool kCols, typename X, typename O, typename acc_t>
inline void ls_scale_row(const X* x, const acc_t* g, O* o, int64_t len, acc_t m, bool avx2) {
  if (SDK_HAS_AVX2_CLONE && avx2) {
    ls_scale_row_avx2<kCols, X, O, acc_t>(x, g, o, len, m);
  } else {
    ls_scale_row_base<kCols, X, O, acc_t>(x, g, o, len, m);
  }
}

// Calls f(begin, end, row) for each piece of a row of the view inside [lo, hi).
template <typename F>
inline void for_each_view_row(const ix::LsRowView& v, int64_t lo, int64_t hi, const F& f) {
  SampleLayout rows;
  rows.numel = v.rows * v.len;
  rows.n = v.rows;
  rows.inner = v.len;
  for_each_row_segment(rows, lo, hi, false, f);
}

template <typename acc_t>
struct Factors {
  c10::SmallVector<acc_t, 64> m;  // no heap allocation for up to 64 samples
  c10::SmallVector<char, 64> kept;
  const acc_t* g;
  std::vector<acc_t> g_rep;  // gamma per column: gamma repeated to >= kRepElems values
  Factors(const LsPlan& P, double alpha) : g(P.gamma.const_data_ptr<acc_t>()) {
    multipliers<acc_t>(P.scale, alpha, m, kept);
    if (P.view.gamma_cols) {
      const int64_t reps = std::max<int64_t>(1, (kRepElems + P.view.C - 1) / P.view.C);
      g_rep.resize(reps * P.view.C);
      for (int64_t r = 0; r < reps; ++r) std::copy(g, g + P.view.C, g_rep.begin() + r * P.view.C);
    }
  }
};

// Calls f(i, e, s, g, cols) for the pieces of [lo, hi) with one sample and one
// stretch of gamma: cols, gamma per element (g[k] for element i + k; several
// rows of one sample at once, through the repeated gamma, so a short row of C
// channels costs no call of its own); else one gamma (*g) for the piece.
template <typename acc_t, typename F>
inline void for_each_ls_piece(const ix::LsRowView& v, const Factors<acc_t>& Fs, int64_t lo, int64_t hi,
                              const F& f) {
  if (!v.gamma_cols) {
    for_each_view_row(v, lo, hi, [&](int64_t i, int64_t e, int64_t row) {
      f(i, e, ix::row_sample(v, row), Fs.g + ix::row_channel(v, row), false);
    });
    return;
  }
  const int64_t block = v.n > 1 ? v.s_div * v.len : v.rows * v.len;  // one sample's elements
  const int64_t rep = static_cast<int64_t>(Fs.g_rep.size());
  int64_t i = lo;
  while (i < hi) {
    const int64_t b = i / block;
    const int64_t s = v.n > 1 ? b % v.n : 0;
    const int64_t bend = std::min((b + 1) * block, hi);
    while (i < bend) {
      const int64_t c = i % v.len;
      const int64_t e = std::min(bend, i + rep - c);
      f(i, e, s, Fs.g_rep.data() + c, true);
      i = e;
    }
  }
}

template <typename R, typename B, typename O>
void residual_add_ls_typed(const LsPlan& P, double alpha) {
  using acc_t = typename acc_of<R, B, O>::type;
  const Factors<acc_t> F(P, alpha);
  const bool avx2 = cpu_has_avx2();
  const R* rp = P.a.const_data_ptr<R>();
  const B* bp = P.b.const_data_ptr<B>();
  O* op = P.out.mutable_data_ptr<O>();
  at::parallel_for(0, P.view.rows * P.view.len, at::internal::GRAIN_SIZE, [&](int64_t lo, int64_t hi) {
    for_each_ls_piece(P.view, F, lo, hi, [&](int64_t i, int64_t e, int64_t s, const acc_t* g, bool cols) {
      if (!F.kept[s]) {
        copy_convert<R, O, acc_t>(rp + i, op + i, e - i);
      } else if (cols) {
        ls_add_row<true>(rp + i, bp + i, g, op + i, e - i, F.m[s], avx2);
      } else {
        ls_add_row<false>(rp + i, bp + i, g, op + i, e - i, F.m[s], avx2);
      }
    });
  });
}

template <typename X, typename O>
void sample_scale_ls_typed(const LsPlan& P, double alpha) {
  using acc_t = typename acc_of<X, O>::type;
  const Factors<acc_t> F(P, alpha);
  const bool avx2 = cpu_has_avx2();
  const X* xp = P.a.const_data_ptr<X>();
  O* op = P.out.mutable_data_ptr<O>();
  at::parallel_for(0, P.view.rows * P.view.len, at::internal::GRAIN_SIZE, [&](int64_t lo, int64_t hi) {
    for_each_ls_piece(P.view, F, lo, hi, [&](int64_t i, int64_t e, int64_t s, const acc_t* g, bool cols) {
      if (!F.kept[s]) {
        std::memset(static_cast<void*>(op + i), 0, sizeof(O) * (e - i));
      } else if (cols) {
        ls_scale_row<true>(xp + i, g, op + i, e - i, F.m[s], avx2);
      } else {
        ls_scale_row<false>(xp + i, g, op + i, e - i, F.m[s], avx2);
      }
    });
  });
}

// grad_gamma[c] = sum over o, j of partials[(o * C + c) * c_div + j], in this order.
template <typename acc_t>
at::Tensor reduce_partials(const at::Tensor& partials, int64_t outer, const ix::LsRowView& v) {
  const int64_t C = v.C, cdiv = v.c_div;
  at::Tensor out = at::empty({C}, partials.options());
  const acc_t* p = partials.const_data_ptr<acc_t>();
  acc_t* o = out.mutable_data_ptr<acc_t>();
  const int64_t per_c = std::max<int64_t>(1, outer * cdiv);
  at::parallel_for(0, C, std::max<int64_t>(1, at::internal::GRAIN_SIZE / per_c), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) o[c] = acc_t(0);
    for (int64_t q = 0; q < outer; ++q) {
      for (int64_t c = c0; c < c1; ++c) {
        const acc_t* src = p + (q * C + c) * cdiv;
        acc_t s = o[c];
        for (int64_t j = 0; j < cdiv; ++j) s += src[j];
        o[c] = s;
      }
    }
  });
  return out;
}

template <typename G, typename B>
at::Tensor layer_scale_grads_typed(const LsPlan& P, double alpha) {
  using acc_t = typename acc_of<G, B>::type;
  const Factors<acc_t> F(P, alpha);
  const ix::LsRowView v = P.view;
  const bool avx2 = cpu_has_avx2();
  const G* gp = P.a.const_data_ptr<G>();
  const B* bp = P.b.const_data_ptr<B>();
  B* op = P.out.mutable_data_ptr<B>();
  const auto opts = P.gamma.options();
  if (v.gamma_cols) {
    // Work items: blocks of `per` rows, one partial row of C values each.
    const int64_t per = std::max<int64_t>(1, at::internal::GRAIN_SIZE / v.len);
    const int64_t items = (v.rows + per - 1) / per;
    at::Tensor partials = at::empty({items * v.C}, opts);
    acc_t* pp = partials.mutable_data_ptr<acc_t>();
    at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t it = i0; it < i1; ++it) {
        acc_t* part = pp + it * v.C;
        std::fill(part, part + v.C, acc_t(0));
        for (int64_t row = it * per; row < std::min(v.rows, (it + 1) * per); ++row) {
          const int64_t i = row * v.len;
          const int64_t s = ix::row_sample(v, row);
          if (!F.kept[s]) {
            std::memset(static_cast<void*>(op + i), 0, sizeof(B) * v.len);
          } else if (SDK_HAS_AVX2_CLONE && avx2) {
            ls_grad_cols_avx2<G, B, acc_t>(gp + i, bp + i, F.g, op + i, part, v.len, F.m[s]);
          } else {
            ls_grad_cols_base<G, B, acc_t>(gp + i, bp + i, F.g, op + i, part, v.len, F.m[s]);
          }
        }
      }
    });
    return reduce_partials<acc_t>(partials, items, v);
  }
  // One gamma per row: one partial per row, each row summed by one thread.
  at::Tensor partials = at::empty({v.rows}, opts);
  acc_t* pp = partials.mutable_data_ptr<acc_t>();
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / v.len);
  at::parallel_for(0, v.rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t i = row * v.len;
      const int64_t s = ix::row_sample(v, row);
      if (!F.kept[s]) {
        std::memset(static_cast<void*>(op + i), 0, sizeof(B) * v.len);
        pp[row] = acc_t(0);
        continue;
      }
      const acc_t g = F.g[ix::row_channel(v, row)];
      pp[row] = (SDK_HAS_AVX2_CLONE && avx2)
                    ? ls_grad_row_avx2<G, B, acc_t>(gp + i, bp + i, g, op + i, v.len, F.m[s])
                    : ls_grad_row_base<G, B, acc_t>(gp + i, bp + i, g, op + i, v.len, F.m[s]);
    }
  });
  return reduce_partials<acc_t>(partials, ix::ls_partial_outer(v, 0), v);
}

#define SDK_DISPATCH_FLOAT(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor scaled_residual_add_ls_cpu(const at::Tensor& residual, const at::Tensor& branch,
                                      const at::Tensor& scale, const at::Tensor& gamma,
                                      int64_t sample_dim, int64_t channel_dim, double alpha) {
  check_backend(residual, "residual", at::kCPU);
  const LsPlan P = plan_residual_add_ls(residual, branch, scale, gamma, sample_dim, channel_dim);
  if (P.out.numel() == 0) return P.out;
  SDK_DISPATCH_FLOAT(P.a.scalar_type(), "scaled_residual_add_ls_cpu", [&] {
    using R = scalar_t;
    SDK_DISPATCH_FLOAT(P.b.scalar_type(), "scaled_residual_add_ls_cpu", [&] {
      dispatch_ls_out<R, scalar_t>(P.out.scalar_type(), [&](auto tag) {
        residual_add_ls_typed<R, scalar_t, decltype(tag)>(P, alpha);
      });
    });
  });
  return P.out;
}

at::Tensor sample_scale_ls_cpu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& gamma,
                               int64_t sample_dim, int64_t channel_dim, double alpha,
                               std::optional<at::ScalarType> dtype) {
  check_backend(x, "x", at::kCPU);
  const LsPlan P = plan_sample_scale_ls(x, scale, gamma, sample_dim, channel_dim, dtype);
  if (P.out.numel() == 0) return P.out;
  SDK_DISPATCH_FLOAT(P.a.scalar_type(), "sample_scale_ls_cpu", [&] {
    using X = scalar_t;
    SDK_DISPATCH_FLOAT(P.out.scalar_type(), "sample_scale_ls_cpu", [&] {
      sample_scale_ls_typed<X, scalar_t>(P, alpha);
    });
  });
  return P.out;
}

std::tuple<at::Tensor, at::Tensor> layer_scale_grads_cpu(const at::Tensor& grad,
                                                         const at::Tensor& branch,
                                                         const at::Tensor& scale,
                                                         const at::Tensor& gamma,
                                                         int64_t sample_dim, int64_t channel_dim,
                                                         double alpha) {
  check_backend(grad, "grad", at::kCPU);
  const LsPlan P = plan_layer_scale_grads(grad, branch, scale, gamma, sample_dim, channel_dim);
  if (P.out.numel() == 0) return {P.out, at::zeros_like(gamma)};
  at::Tensor gg;
  SDK_DISPATCH_FLOAT(P.a.scalar_type(), "layer_scale_grads_cpu", [&] {
    using G = scalar_t;
    SDK_DISPATCH_FLOAT(P.b.scalar_type(), "layer_scale_grads_cpu", [&] {
      gg = layer_scale_grads_typed<G, scalar_t>(P, alpha);
    });
  });
  return {P.out, gg.to(gamma.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, CPU, m) {
  m.impl("scaled_residual_add_ls", &scaled_residual_add_ls_cpu);
  m.impl("sample_scale_ls", &sample_scale_ls_cpu);
  m.impl("layer_scale_grads", &layer_scale_grads_cpu);
}

}  // namespace sdkernels
