// CUDA kernels of the fused drop-path ops (schemas in csrc/ops/core.cpp; same
// semantics as csrc/cpu/core.cpp and sdkernels/reference.py).
//
// One pass over memory.  Each op sees its tensors as a dense block
// [outer, n, inner] (csrc/common/sample_layout.h) and walks it with a
// grid-stride loop whose index and tail math lives in
// csrc/common/drop_path_index.h (run on the host by the CPU tests):
//  - 16-byte loads and stores when every pointer is 16-byte aligned: a vector
//    holds 16 bytes of the narrowest dtype (8 elements for fp16/bf16, 4 for
//    fp32, 2 for fp64); a wider dtype of the same vector takes several 16-byte
//    accesses;
//  - a vector that would straddle two samples, the tail, and unaligned
//    tensors go element by element;
//  - a dropped sample (scale[s] == 0) copies the residual (sample_scale:
//    writes zeros) without reading the branch (x);
//  - each input is read in its own dtype; the math is fp32 (fp64 when any
//    tensor is fp64), multiply and add rounded separately as the reference
//    does (no FMA contraction), and the result rounded once;
//  - 64-bit offsets throughout; no atomics, so results are deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Half.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/cuda_launch.cuh"
#include "common/cuda_vec.cuh"
#include "common/drop_path_index.h"
#include "common/kernel_types.h"
#include "common/sample_layout.h"

namespace sdkernels {
namespace {

namespace ix = ::sdkernels::index;
using namespace ::sdkernels::cuda_vec;
using namespace ::sdkernels::cuda_launch;


// -------------------------------------------------------------- kernels ----

// out = r + b * m for kept samples, r for dropped ones.
template <typename R, typename B, typename O, typename A, int VEC>
__global__ void __launch_bounds__(kThreads)
    scaled_residual_add_kernel(const R* __restrict__ r, const B* __restrict__ b,
                               O* __restrict__ o, const void* __restrict__ scale, bool scale_f64,
                               A alpha, ix::GridPlan g) {
  ix::visit_thread(
      g, static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(threadIdx.x),
      [&](int64_t off, int64_t s) {
        A m;
        const bool keep = multiplier(scale, scale_f64, s, alpha, m);
        A acc[VEC];
        load_vec<VEC>(r + off, acc);
        if (keep) {
          A bv[VEC];
          load_vec<VEC>(b + off, bv);
#pragma unroll
          for (int j = 0; j < VEC; ++j) acc[j] = add_rn(acc[j], mul_rn(bv[j], m));
        }
        store_vec<VEC>(o + off, acc);
      },
      [&](int64_t i, int64_t s) {
        A m;
        const bool keep = multiplier(scale, scale_f64, s, alpha, m);
        A v = static_cast<A>(r[i]);
        if (keep) v = add_rn(v, mul_rn(static_cast<A>(b[i]), m));
        o[i] = static_cast<O>(v);
      });
}

// out = x * m for kept samples, zeros (x not read) for dropped ones.
template <typename X, typename O, typename A, int VEC>
__global__ void __launch_bounds__(kThreads)
    sample_scale_kernel(const X* __restrict__ x, O* __restrict__ o,
                        const void* __restrict__ scale, bool scale_f64, A alpha, ix::GridPlan g) {
  ix::visit_thread(
      g, static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(threadIdx.x),
      [&](int64_t off, int64_t s) {
        A m;
        if (multiplier(scale, scale_f64, s, alpha, m)) {
          A v[VEC];
          load_vec<VEC>(x + off, v);
#pragma unroll
          for (int j = 0; j < VEC; ++j) v[j] = mul_rn(v[j], m);
          store_vec<VEC>(o + off, v);
        } else {
          store_zeros<VEC>(o + off);
        }
      },
      [&](int64_t i, int64_t s) {
        A m;
        if (multiplier(scale, scale_f64, s, alpha, m)) {
          o[i] = static_cast<O>(mul_rn(static_cast<A>(x[i]), m));
        } else {
          o[i] = O(0);
        }
      });
}

// --------------------------------------------------------------- launch ----

template <typename R, typename B>
void launch_residual_add(const at::Tensor& r, const at::Tensor& b, at::Tensor& out,
                         const at::Tensor& scale, double alpha, const SampleLayout& L) {
  using O = typename promote<R, B>::type;
  using A = typename acc_of<R, B, O>::type;
  constexpr int VEC = vec_of<R, B, O>();
  TORCH_INTERNAL_ASSERT(out.scalar_type() == c10::CppTypeToScalarType<O>::value,
                        "sdkernels: output dtype mismatch");
  const R* rp = r.const_data_ptr<R>();
  const B* bp = b.const_data_ptr<B>();
  O* op = out.mutable_data_ptr<O>();
  const bool aligned = aligned16(rp) && aligned16(bp) && aligned16(op);
  auto kernel = scaled_residual_add_kernel<R, B, O, A, VEC>;
  static BlocksCache cache;  // one per instantiation, i.e. per kernel
  const int device = out.get_device();
  const ix::GridPlan g = plan_launch<VEC>(kernel, cache, L, scale.numel() == 1, aligned, device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  kernel<<<static_cast<unsigned>(g.nblocks), kThreads, 0, stream>>>(
      rp, bp, op, scale.const_data_ptr(), scale.scalar_type() == at::kDouble,
      static_cast<A>(alpha), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename X, typename O>
void launch_sample_scale(const at::Tensor& x, at::Tensor& out, const at::Tensor& scale,
                         double alpha, const SampleLayout& L) {
  using A = typename acc_of<X, O>::type;
  constexpr int VEC = vec_of<X, O>();
  const X* xp = x.const_data_ptr<X>();
  O* op = out.mutable_data_ptr<O>();
  const bool aligned = aligned16(xp) && aligned16(op);
  auto kernel = sample_scale_kernel<X, O, A, VEC>;
  static BlocksCache cache;  // one per instantiation, i.e. per kernel
  const int device = out.get_device();
  const ix::GridPlan g = plan_launch<VEC>(kernel, cache, L, scale.numel() == 1, aligned, device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  kernel<<<static_cast<unsigned>(g.nblocks), kThreads, 0, stream>>>(
      xp, op, scale.const_data_ptr(), scale.scalar_type() == at::kDouble,
      static_cast<A>(alpha), g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------ entry ops ----


#define SDK_DISPATCH_FLOAT(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor scaled_residual_add_cuda(const at::Tensor& residual, const at::Tensor& branch,
                                    const at::Tensor& scale, int64_t sample_dim, double alpha) {
  check_backend(residual, "residual", at::kCUDA);
  const c10::cuda::CUDAGuard guard(residual.device());
  const ResidualAddPlan P = plan_residual_add(residual, branch, scale, sample_dim);
  at::Tensor out = P.out;
  if (out.numel() == 0) return out;
  SDK_DISPATCH_FLOAT(P.residual.scalar_type(), "scaled_residual_add_cuda", [&] {
    using R = scalar_t;
    SDK_DISPATCH_FLOAT(P.branch.scalar_type(), "scaled_residual_add_cuda", [&] {
      launch_residual_add<R, scalar_t>(P.residual, P.branch, out, P.scale, alpha, P.layout);
    });
  });
  return out;
}

at::Tensor sample_scale_cuda(const at::Tensor& x, const at::Tensor& scale, int64_t sample_dim,
                             double alpha, std::optional<at::ScalarType> dtype) {
  check_backend(x, "x", at::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const SampleScalePlan P = plan_sample_scale(x, scale, sample_dim, dtype);
  at::Tensor out = P.out;
  if (out.numel() == 0) return out;
  SDK_DISPATCH_FLOAT(P.x.scalar_type(), "sample_scale_cuda", [&] {
    using X = scalar_t;
    SDK_DISPATCH_FLOAT(out.scalar_type(), "sample_scale_cuda", [&] {
      launch_sample_scale<X, scalar_t>(P.x, out, P.scale, alpha, P.layout);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, CUDA, m) {
  m.impl("scaled_residual_add", &scaled_residual_add_cuda);
  m.impl("sample_scale", &sample_scale_cuda);
}

}  // namespace sdkernels
