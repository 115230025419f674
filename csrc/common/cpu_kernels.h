// Helpers shared by the CPU kernels (csrc/cpu/*.cpp): element conversions the
// auto-vectoriser turns into SIMD code, the AVX2 clone switch, per-sample
// multipliers, and the walk over one sample row's pieces of a chunk.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/sample_layout.h"

namespace sdkernels {
namespace cpu {

// Element conversions written so that gcc's auto-vectoriser turns the row
// loops below into SIMD code at the baseline ISA: bf16 <-> fp32 are integer
// shifts (round to nearest even, NaN kept quiet), fp32/fp64 are plain casts.
template <typename acc_t, typename T>
inline acc_t to_acc(T v) {
  return static_cast<acc_t>(v);
}
template <>
inline float to_acc<float, c10::BFloat16>(c10::BFloat16 v) {
  const uint32_t u = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
template <>
inline double to_acc<double, c10::BFloat16>(c10::BFloat16 v) {
  return static_cast<double>(to_acc<float>(v));
}

template <typename O, typename acc_t>
inline O from_acc(acc_t v) {
  return static_cast<O>(v);
}
template <>
inline c10::BFloat16 from_acc<c10::BFloat16, float>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint16_t bits = (v != v) ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded);
  return c10::BFloat16(bits, c10::BFloat16::from_bits());
}
template <>
inline c10::BFloat16 from_acc<c10::BFloat16, double>(double v) {
  return c10::BFloat16(static_cast<float>(v));  // rare (fp64 math, bf16 out): exact rounding via c10
}

// The row loops are compiled twice: for the baseline ISA and, on x86-64, for
// AVX2 (chosen at run time).  AVX2 only, not FMA, so that r + b * m is still
// rounded twice, as the reference computes it.
#if defined(__GNUC__) && defined(__x86_64__)
#define SDK_HAS_AVX2_CLONE 1
#define SDK_TARGET_AVX2 __attribute__((target("avx2")))
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#else
#define SDK_HAS_AVX2_CLONE 0
#define SDK_TARGET_AVX2
inline bool cpu_has_avx2() { return false; }
#endif

// dst = src converted (R -> O is a widening or identity conversion here).
template <typename R, typename O, typename acc_t>
inline void copy_convert(const R* __restrict src, O* __restrict dst, int64_t len) {
  if constexpr (std::is_same_v<R, O>) {
    std::memcpy(dst, src, sizeof(O) * len);
  } else {
    for (int64_t k = 0; k < len; ++k) dst[k] = from_acc<O, acc_t>(to_acc<acc_t>(src[k]));
  }
}

// Per-sample multipliers m[s] = scale[s] * alpha in acc_t, and kept flags.
template <typename acc_t>
void multipliers(const at::Tensor& scale, double alpha, c10::SmallVector<acc_t, 64>& m,
                 c10::SmallVector<char, 64>& kept) {
  const int64_t ns = scale.numel();
  m.resize(ns);
  kept.resize(ns);
  AT_DISPATCH_FLOATING_TYPES(scale.scalar_type(), "sdkernels_scale", [&] {
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    for (int64_t s = 0; s < ns; ++s) {
      kept[s] = sp[s] != scalar_t(0);
      m[s] = static_cast<acc_t>(sp[s]) * static_cast<acc_t>(alpha);
    }
  });
}

// Calls f(begin, end, s) for each maximal run [begin, end) of one sample's
// row inside the element range [lo, hi).
template <typename F>
inline void for_each_row_segment(const SampleLayout& L, int64_t lo, int64_t hi, bool one_scale,
                                 const F& f) {
  int64_t i = lo;
  while (i < hi) {
    const int64_t row = i / L.inner;
    const int64_t s = one_scale ? 0 : row % L.n;
    const int64_t row_end = std::min((row + 1) * L.inner, hi);
    f(i, row_end, s);
    i = row_end;
  }
}

}  // namespace cpu
}  // namespace sdkernels
