// CPU kernels of the skip-path ops (schemas in csrc/ops/skip.cpp):
//
//   scaled_index_add(residual, src, index, sample_dim, alpha):
//     out = residual (converted to promote_types(residual, src)), then
//     out.select(sample_dim, index[j]) += src.select(sample_dim, j) * alpha
//   index_scale(grad, index, sample_dim, alpha, dtype):
//     out.select(sample_dim, j) = grad.select(sample_dim, index[j]) * alpha
//
// Layout.  Every tensor is seen as a dense block [outer, n, inner]
// (csrc/common/sample_layout.h).  A tensor with k samples (src, index_scale's
// output) uses the same dim order in memory as its n-sample partner, with k in
// place of n (skip::samples_like, csrc/common/scaled_index_add.h), so it is
// [outer, k, inner] with the same outer and inner: row (o, j) of src pairs
// with row (o, index[j]) of out.
//
// scaled_index_add is one pass over out: the inverse map sample -> j (or -1)
// is built once on the host (n int64s), then each output row either copies the
// residual row or computes residual + src_row * alpha.  Every output element
// is written by exactly one thread: no atomics, deterministic.  index_scale
// is one pass over its output, gathering the rows it needs.
//
// Threads: at::parallel_for over output elements in chunks of
// at::internal::GRAIN_SIZE (small tensors stay on one thread).  It runs
// multi-threaded only when the extension is compiled with -fopenmp (without
// it ATen's header runs the whole range inline on the calling thread).  Reduced
// precision is converted to fp32 in small blocks; the math is fp32 (fp64 when
// any tensor is fp64), multiply and add rounded separately, and the result is
// rounded once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/sample_layout.h"
#include "common/kernel_types.h"
#include "common/scaled_index_add.h"

namespace sdkernels {
namespace {


constexpr int64_t kConvBlock = 1024;  // elements converted per step

template <typename T, typename acc_t>
inline const acc_t* load_acc(const T* src, acc_t* buf, int64_t c) {
  if constexpr (std::is_same_v<T, acc_t>) {
    return src;
  } else {
    at::vec::convert(src, buf, c);
    return buf;
  }
}

// dst[0:len] = src converted to O.
template <typename R, typename O, typename acc_t>
inline void copy_row(const R* src, O* dst, int64_t len) {
  if constexpr (std::is_same_v<R, O>) {
    std::memcpy(dst, src, sizeof(O) * len);
  } else {
    acc_t buf[kConvBlock];
    for (int64_t j = 0; j < len; j += kConvBlock) {
      const int64_t c = std::min(kConvBlock, len - j);
      const acc_t* a = load_acc<R, acc_t>(src + j, buf, c);
      at::vec::convert(a, dst + j, c);
    }
  }
}

// o[0:c] = r + b * m and o[0:c] = x * m on math-type values.  Plain loops: GCC
// vectorizes them at -O3 for the ISA the extension is built for (SSE2 by
// default), which measured 1.5x faster here than at::vec::Vectorized compiled
// without its AVX flags (its generic fallback).  No FMA contraction: the
// default x86-64 target has no FMA instructions, so multiply and add round
// separately, as the reference and the CUDA kernel do.
template <typename acc_t>
inline void add_scaled_acc(const acc_t* __restrict r, const acc_t* __restrict b,
                           acc_t* __restrict o, int64_t c, acc_t m) {
  for (int64_t q = 0; q < c; ++q) {
    const acc_t prod = b[q] * m;
    o[q] = r[q] + prod;
  }
}

template <typename acc_t>
inline void scale_acc(const acc_t* __restrict x, acc_t* __restrict o, int64_t c, acc_t m) {
  for (int64_t q = 0; q < c; ++q) o[q] = x[q] * m;
}

// o[0:len] = r + b * m, math in acc_t, inputs converted in cache-sized blocks.
template <typename R, typename B, typename O, typename acc_t>
inline void add_scaled_row(const R* r, const B* b, O* o, int64_t len, acc_t m) {
  if constexpr (std::is_same_v<R, acc_t> && std::is_same_v<B, acc_t> && std::is_same_v<O, acc_t>) {
    add_scaled_acc<acc_t>(r, b, o, len, m);
  } else {
    acc_t rbuf[kConvBlock], bbuf[kConvBlock], obuf[kConvBlock];
    for (int64_t j = 0; j < len; j += kConvBlock) {
      const int64_t c = std::min(kConvBlock, len - j);
      const acc_t* ra = load_acc<R, acc_t>(r + j, rbuf, c);
      const acc_t* ba = load_acc<B, acc_t>(b + j, bbuf, c);
      if constexpr (std::is_same_v<O, acc_t>) {
        add_scaled_acc<acc_t>(ra, ba, o + j, c, m);
      } else {
        add_scaled_acc<acc_t>(ra, ba, obuf, c, m);
        at::vec::convert(obuf, o + j, c);
      }
    }
  }
}

// o[0:len] = x * m, math in acc_t.
template <typename X, typename O, typename acc_t>
inline void scale_row(const X* x, O* o, int64_t len, acc_t m) {
  if constexpr (std::is_same_v<X, acc_t> && std::is_same_v<O, acc_t>) {
    scale_acc<acc_t>(x, o, len, m);
  } else {
    acc_t xbuf[kConvBlock], obuf[kConvBlock];
    for (int64_t j = 0; j < len; j += kConvBlock) {
      const int64_t c = std::min(kConvBlock, len - j);
      const acc_t* xa = load_acc<X, acc_t>(x + j, xbuf, c);
      if constexpr (std::is_same_v<O, acc_t>) {
        scale_acc<acc_t>(xa, o + j, c, m);
      } else {
        scale_acc<acc_t>(xa, obuf, c, m);
        at::vec::convert(obuf, o + j, c);
      }
    }
  }
}

// The inverse map inv[s] = j where index[j] == s, -1 elsewhere; checks that
// index's values are in [0, n) and unique (O(n + k) with the map).
std::vector<int64_t> inverse_index(const at::Tensor& index, int64_t n) {
  const at::Tensor ic = index.contiguous();
  const int64_t* ip = ic.const_data_ptr<int64_t>();
  const int64_t k = ic.numel();
  std::vector<int64_t> inv(n, -1);
  for (int64_t j = 0; j < k; ++j) {
    const int64_t s = ip[j];
    TORCH_CHECK_INDEX(s >= 0 && s < n, "sdkernels: index[", j, "] = ", s,
                      " is out of range for ", n, " samples");
    TORCH_CHECK_VALUE(inv[s] < 0, "sdkernels: index must hold unique values, but ", s,
                      " appears at positions ", inv[s], " and ", j);
    inv[s] = j;
  }
  return inv;
}

#define SDK_SIA_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

template <typename R, typename S>
void scaled_index_add_typed(const at::Tensor& r, const at::Tensor& src, at::Tensor& out,
                            const std::vector<int64_t>& inv, int64_t k, double alpha,
                            const SampleLayout& L) {
  using O = typename promote<R, S>::type;
  using acc_t = typename acc_of<R, S, O>::type;
  const acc_t m = static_cast<acc_t>(alpha);
  const R* rp = r.const_data_ptr<R>();
  const S* sp = k > 0 ? src.const_data_ptr<S>() : nullptr;
  O* op = out.mutable_data_ptr<O>();
  const int64_t inner = L.inner, n = L.n;
  at::parallel_for(0, L.numel, at::internal::GRAIN_SIZE, [&](int64_t lo, int64_t hi) {
    int64_t i = lo;
    while (i < hi) {
      const int64_t row = i / inner;
      const int64_t row_end = std::min((row + 1) * inner, hi);
      const int64_t s = row % n;
      const int64_t j = inv[s];
      if (j >= 0) {
        const int64_t o = row / n;
        const int64_t src_off = (o * k + j) * inner + (i - row * inner);
        add_scaled_row<R, S, O, acc_t>(rp + i, sp + src_off, op + i, row_end - i, m);
      } else {
        copy_row<R, O, acc_t>(rp + i, op + i, row_end - i);
      }
      i = row_end;
    }
  });
}

template <typename X, typename O>
void index_scale_typed(const at::Tensor& g, at::Tensor& out, const int64_t* idx, int64_t n,
                       int64_t k, int64_t inner, double alpha) {
  using acc_t = typename acc_of<X, O>::type;
  const acc_t m = static_cast<acc_t>(alpha);
  const X* gp = g.const_data_ptr<X>();
  O* op = out.mutable_data_ptr<O>();
  const bool copy = std::is_same_v<X, O> && alpha == 1.0;
  at::parallel_for(0, out.numel(), at::internal::GRAIN_SIZE, [&](int64_t lo, int64_t hi) {
    int64_t i = lo;
    while (i < hi) {
      const int64_t row = i / inner;
      const int64_t row_end = std::min((row + 1) * inner, hi);
      const int64_t o = row / k;
      const int64_t j = row % k;
      const int64_t in_off = (o * n + idx[j]) * inner + (i - row * inner);
      if (copy) {  // alpha == 1, same dtype: x * 1 == x, a plain copy (the gather)
        std::memcpy(static_cast<void*>(op + i), gp + in_off, sizeof(O) * (row_end - i));
      } else {
        scale_row<X, O, acc_t>(gp + in_off, op + i, row_end - i, m);
      }
      i = row_end;
    }
  });
}

at::Tensor scaled_index_add_cpu(const at::Tensor& residual, const at::Tensor& src,
                                const at::Tensor& index, int64_t sample_dim, double alpha) {
  check_backend(residual, "residual", at::kCPU);
  const int64_t dim = skip::check_add_args(residual, src, index, sample_dim);
  const int64_t n = residual.size(dim);
  const std::vector<int64_t> inv = inverse_index(index, n);
  const int64_t k = index.numel();
  const auto out_dtype = at::promote_types(residual.scalar_type(), src.scalar_type());
  at::Tensor out = at::empty_like(residual, residual.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  const at::Tensor r = match_strides(residual, out);
  at::Tensor s = src;
  if (k > 0) {  // src in samples_like(out)'s layout: itself when it already is (no allocation to compare)
    const skip::SamplesGeometry G = skip::samples_like_geometry(out, dim, k);
    if (!skip::has_geometry(src, G)) s = at::empty_strided(G.sizes, G.strides, src.options()).copy_(src);
  }
  const SampleLayout L = plan_layout(out, dim);
  SDK_SIA_DISPATCH(r.scalar_type(), "scaled_index_add_cpu", [&] {
    using R = scalar_t;
    SDK_SIA_DISPATCH(s.scalar_type(), "scaled_index_add_cpu", [&] {
      scaled_index_add_typed<R, scalar_t>(r, s, out, inv, k, alpha, L);
    });
  });
  return out;
}

at::Tensor index_scale_cpu(const at::Tensor& grad, const at::Tensor& index, int64_t sample_dim,
                           double alpha, std::optional<at::ScalarType> dtype) {
  const auto out_dtype = dtype.has_value() ? *dtype : grad.scalar_type();
  check_backend(grad, "grad", at::kCPU);
  const int64_t dim = skip::check_scale_args(grad, index, sample_dim, out_dtype);
  const int64_t n = grad.size(dim);
  inverse_index(index, n);  // validates: in range and unique
  const int64_t k = index.numel();
  // base: grad's layout when dense (empty_like would give it the same strides), else empty_like's.
  const at::Tensor base = grad.is_non_overlapping_and_dense() ? grad : at::empty_like(grad);
  const skip::SamplesGeometry G = skip::samples_like_geometry(base, dim, k);
  at::Tensor out = at::empty_strided(G.sizes, G.strides, grad.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  const at::Tensor g = match_strides(grad, base);
  // out is [outer, k, inner] with base's inner (n == 1: k == 1, one row each).
  const SampleLayout L = plan_layout(base, dim);
  const at::Tensor ic = index.contiguous();
  const int64_t* idx = ic.const_data_ptr<int64_t>();
  SDK_SIA_DISPATCH(g.scalar_type(), "index_scale_cpu", [&] {
    using X = scalar_t;
    SDK_SIA_DISPATCH(out_dtype, "index_scale_cpu", [&] {
      index_scale_typed<X, scalar_t>(g, out, idx, n, k, L.inner, alpha);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, CPU, m) {
  m.impl("scaled_index_add", &scaled_index_add_cpu);
  m.impl("index_scale", &index_scale_cpu);
}

}  // namespace sdkernels
