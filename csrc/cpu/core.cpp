// CPU kernels of the fused drop-path ops (schemas in csrc/ops/core.cpp).
//
// One pass over memory, split across threads by at::parallel_for in chunks of
// at::internal::GRAIN_SIZE elements, so small tensors stay on one thread (no
// wake-up cost) and large ones use every core.  Each chunk walks the
// [outer, n, inner] rows it covers; a dropped row copies the residual (or
// writes zeros) without touching the branch.  Reduced-precision inputs are
// converted to fp32 in small cache-resident blocks; the math is fp32 (fp64
// when any tensor is fp64) and the result is rounded once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "common/cpu_kernels.h"
#include "common/kernel_types.h"
#include "common/sample_layout.h"

namespace sdkernels {
namespace {

using namespace ::sdkernels::cpu;

#define SDK_FUSED_ROW_BODY                                                      \
  for (int64_t k = 0; k < len; ++k) {                                         \
    o[k] = from_acc<O, acc_t>(to_acc<acc_t>(r[k]) + to_acc<acc_t>(b[k]) * m); \
  }
#define SDK_SCALE_ROW_BODY                                \
  for (int64_t k = 0; k < len; ++k) {                   \
    o[k] = from_acc<O, acc_t>(to_acc<acc_t>(x[k]) * m); \
  }

template <typename R, typename B, typename O, typename acc_t>
void fused_row_base(const R* __restrict r, const B* __restrict b, O* __restrict o, int64_t len,
                    acc_t m) {
  SDK_FUSED_ROW_BODY
}
template <typename R, typename B, typename O, typename acc_t>
SDK_TARGET_AVX2 void fused_row_avx2(const R* __restrict r, const B* __restrict b,
                                    O* __restrict o, int64_t len, acc_t m) {
  SDK_FUSED_ROW_BODY
}
template <typename X, typename O, typename acc_t>
void scale_row_base(const X* __restrict x, O* __restrict o, int64_t len, acc_t m) {
  SDK_SCALE_ROW_BODY
}
template <typename X, typename O, typename acc_t>
SDK_TARGET_AVX2 void scale_row_avx2(const X* __restrict x, O* __restrict o, int64_t len,
                                    acc_t m) {
  SDK_SCALE_ROW_BODY
}

// out[0:len] = r + b * m, math in acc_t.
template <typename R, typename B, typename O, typename acc_t>
inline void fused_row(const R* r, const B* b, O* o, int64_t len, acc_t m, bool avx2) {
  if (SDK_HAS_AVX2_CLONE && avx2) {
    fused_row_avx2<R, B, O, acc_t>(r, b, o, len, m);
  } else {
    fused_row_base<R, B, O, acc_t>(r, b, o, len, m);
  }
}

// out[0:len] = x * m, math in acc_t.
template <typename X, typename O, typename acc_t>
inline void scale_row(const X* x, O* o, int64_t len, acc_t m, bool avx2) {
  if (SDK_HAS_AVX2_CLONE && avx2) {
    scale_row_avx2<X, O, acc_t>(x, o, len, m);
  } else {
    scale_row_base<X, O, acc_t>(x, o, len, m);
  }
}

template <typename R, typename B>
void residual_add_typed(const at::Tensor& r, const at::Tensor& b, at::Tensor& out,
                        const at::Tensor& scale, double alpha, const SampleLayout& L) {
  using O = typename promote<R, B>::type;
  using acc_t = typename acc_of<R, B, O>::type;
  c10::SmallVector<acc_t, 64> m;  // no heap allocation for up to 64 samples
  c10::SmallVector<char, 64> kept;
  multipliers<acc_t>(scale, alpha, m, kept);
  const bool one = scale.numel() == 1;
  const bool avx2 = cpu_has_avx2();
  const R* rp = r.const_data_ptr<R>();
  const B* bp = b.const_data_ptr<B>();
  O* op = out.mutable_data_ptr<O>();
  at::parallel_for(0, L.numel, at::internal::GRAIN_SIZE, [&](int64_t lo, int64_t hi) {
    for_each_row_segment(L, lo, hi, one, [&](int64_t i, int64_t e, int64_t s) {
      if (kept[s]) {
        fused_row<R, B, O, acc_t>(rp + i, bp + i, op + i, e - i, m[s], avx2);
      } else {
        copy_convert<R, O, acc_t>(rp + i, op + i, e - i);
      }
    });
  });
}

template <typename X, typename O>
void sample_scale_typed(const at::Tensor& x, at::Tensor& out, const at::Tensor& scale,
                        double alpha, const SampleLayout& L) {
  using acc_t = typename acc_of<X, O>::type;
  c10::SmallVector<acc_t, 64> m;  // no heap allocation for up to 64 samples
  c10::SmallVector<char, 64> kept;
  multipliers<acc_t>(scale, alpha, m, kept);
  const bool one = scale.numel() == 1;
  const bool avx2 = cpu_has_avx2();
  const X* xp = x.const_data_ptr<X>();
  O* op = out.mutable_data_ptr<O>();
  at::parallel_for(0, L.numel, at::internal::GRAIN_SIZE, [&](int64_t lo, int64_t hi) {
    for_each_row_segment(L, lo, hi, one, [&](int64_t i, int64_t e, int64_t s) {
      if (kept[s]) {
        scale_row<X, O, acc_t>(xp + i, op + i, e - i, m[s], avx2);
      } else {
        std::memset(static_cast<void*>(op + i), 0, sizeof(O) * (e - i));
      }
    });
  });
}

#define SDK_DISPATCH_FLOAT(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor scaled_residual_add_cpu(const at::Tensor& residual, const at::Tensor& branch,
                                   const at::Tensor& scale, int64_t sample_dim, double alpha) {
  check_backend(residual, "residual", at::kCPU);
  const ResidualAddPlan P = plan_residual_add(residual, branch, scale, sample_dim);
  at::Tensor out = P.out;
  if (out.numel() == 0) return out;
  SDK_DISPATCH_FLOAT(P.residual.scalar_type(), "scaled_residual_add_cpu", [&] {
    using R = scalar_t;
    SDK_DISPATCH_FLOAT(P.branch.scalar_type(), "scaled_residual_add_cpu", [&] {
      residual_add_typed<R, scalar_t>(P.residual, P.branch, out, P.scale, alpha, P.layout);
    });
  });
  return out;
}

at::Tensor sample_scale_cpu(const at::Tensor& x, const at::Tensor& scale, int64_t sample_dim,
                            double alpha, std::optional<at::ScalarType> dtype) {
  check_backend(x, "x", at::kCPU);
  const SampleScalePlan P = plan_sample_scale(x, scale, sample_dim, dtype);
  at::Tensor out = P.out;
  if (out.numel() == 0) return out;
  SDK_DISPATCH_FLOAT(P.x.scalar_type(), "sample_scale_cpu", [&] {
    using X = scalar_t;
    SDK_DISPATCH_FLOAT(out.scalar_type(), "sample_scale_cpu", [&] {
      sample_scale_typed<X, scalar_t>(P.x, out, P.scale, alpha, P.layout);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, CPU, m) {
  m.impl("scaled_residual_add", &scaled_residual_add_cpu);
  m.impl("sample_scale", &sample_scale_cpu);
}

}  // namespace sdkernels
