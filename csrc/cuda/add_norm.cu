// CUDA kernels of the add + norm ops (schemas in csrc/ops/add_norm.cpp, same
// semantics as csrc/cpu/add_norm.cpp and sdkernels.reference.add_norm /
// add_norm_backward).
//
// Forward: one thread block per row at a time (grid-stride over rows, grid =
// the blocks the device holds at once); the block's threads cover the row in
// vectors of 16 bytes of the narrowest dtype (csrc/common/add_norm_index.h:
// plan_row, chunk_column).  x = residual + (branch * gamma) * m is computed
// with explicitly rounded multiplies and adds (no FMA), rounded to x's dtype,
// stored, and kept *as stored* in registers for the statistics and h (rows
// past the register budget stream: x is re-read, from L1/L2).  A dropped
// sample's branch is never read.
//
// Backward: a persistent grid of P blocks; block b takes rows b, b + P, ...
// and keeps its fp32 (fp64) partial sums of the weight, bias and gamma
// gradients for its columns in registers (streaming rows: in its own partial
// row in global memory, zeroed by the host).  Every block writes its partial
// row, even a block that got no row (zeros), and a second kernel sums the
// partial rows 0, 1, ..., P - 1 in that order: no atomics, same bits every run.
//
// Dtypes: the common combinations are compiled natively (each input read in
// its own dtype); others are converted to x's dtype on the host first (a
// wider or equal type: exact) and h / the gradients cast afterwards.  The
// weight, bias and gamma vectors (H values) are used in the math dtype.
// Block sums use warp shuffles and a fixed-order sum over warps: every thread
// gets the same value, and the same value every run.  64-bit offsets.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <string>
#include <tuple>
#include <type_traits>

#include "common/add_norm_index.h"
#include "common/add_norm_plan.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_vec.cuh"
#include "common/kernel_types.h"

namespace sdkernels {
namespace {

namespace ai = ::sdkernels::add_norm_index;
using namespace ::sdkernels::cuda_vec;

constexpr int kFwdMaxChunks = 8;   // vectors of x per thread in registers (forward)
constexpr int kBwdMaxBytes = 64;   // bytes per thread per register array (backward: five of them)
constexpr int kMaxWarps = 32;

// Backward vectors per thread in registers: 16 fp32 (8 fp64) values per array.
template <int VEC, typename A>
constexpr int bwd_max_chunks() {
  return static_cast<int>(kBwdMaxBytes / sizeof(A)) / VEC > 0 ? static_cast<int>(kBwdMaxBytes / sizeof(A)) / VEC : 1;
}

// VEC elements of T at p into A: 16-byte loads when VEC > 1 (p aligned), else one element.
template <int VEC, typename T, typename A>
__device__ __forceinline__ void load_n(const T* __restrict__ p, A (&dst)[VEC]) {
  if constexpr (VEC == 1) {
    dst[0] = static_cast<A>(p[0]);
  } else {
    load_vec<VEC>(p, dst);
  }
}

// The same from memory this kernel wrote (x re-read by the streaming forward).
template <int VEC, typename T, typename A>
__device__ __forceinline__ void load_n_coherent(const T* p, A (&dst)[VEC]) {
  if constexpr (VEC == 1) {
    dst[0] = static_cast<A>(p[0]);
  } else {
    load_vec_coherent<VEC>(p, dst);
  }
}

template <int VEC, typename T, typename A>
__device__ __forceinline__ void store_n(T* __restrict__ p, const A (&src)[VEC]) {
  if constexpr (VEC == 1) {
    p[0] = static_cast<T>(src[0]);
  } else {
    store_vec<VEC>(p, src);
  }
}

// The sum of v over the block, the same value in every thread (fixed order over warps).
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  __syncthreads();  // red may still be read by the previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  A tot = A(0);
  for (int i = 0; i < nw; ++i) tot += red[i];
  return tot;
}

// f(c, col) for each register chunk c of thread t (of T) that holds columns [col, col + VEC) of the row.
template <int R, int VEC, typename F>
__device__ __forceinline__ void for_each_chunk(int chunks, int64_t t, int64_t T, int64_t H, F&& f) {
#pragma unroll
  for (int c = 0; c < R; ++c) {
    const int64_t col = ai::chunk_column(c, t, T, VEC);
    if (c < chunks && col < H) f(c, col);
  }
}

struct Rows {
  int64_t rows, H, n, inner;
};

// x of VEC columns at col in the math dtype, rounded to X and back (x as stored); stores x.
template <int VEC, typename R, typename B, typename X, typename A>
__device__ __forceinline__ void add_vec(const R* __restrict__ r, const B* __restrict__ b, X* __restrict__ x,
                                        const A* __restrict__ gamma, int64_t base, int64_t col, bool keep, A m,
                                        A (&xv)[VEC]) {
  load_n<VEC>(r + base + col, xv);
  if (keep) {
    A bv[VEC];
    load_n<VEC>(b + base + col, bv);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      A t = bv[j];
      if (gamma != nullptr) t = mul_rn(t, gamma[col + j]);
      xv[j] = add_rn(xv[j], mul_rn(t, m));
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) xv[j] = static_cast<A>(static_cast<X>(xv[j]));
  store_n<VEC>(x + base + col, xv);
}

template <int VEC, typename Hh, typename A>
__device__ __forceinline__ void norm_vec(Hh* __restrict__ h, const A* __restrict__ w, const A* __restrict__ bias,
                                         int64_t base, int64_t col, A mean, A rstd, const A (&xv)[VEC]) {
  A y[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    A v = (xv[j] - mean) * rstd;
    if (w != nullptr) v = v * w[col + j];
    if (bias != nullptr) v = v + bias[col + j];
    y[j] = v;
  }
  store_n<VEC>(h + base + col, y);
}

template <typename R, typename B, typename X, typename Hh, typename A, int VEC, bool STREAM>
__global__ void __launch_bounds__(ai::kMaxThreads)
    add_norm_fwd_kernel(const R* __restrict__ r, const B* __restrict__ b, X* __restrict__ x, Hh* __restrict__ h,
                        A* __restrict__ mean_out, A* __restrict__ rstd_out, const A* __restrict__ w,
                        const A* __restrict__ bias, const A* __restrict__ gamma, const void* __restrict__ scale,
                        bool scale_f64, A alpha, A eps, Rows L, int chunks) {
  __shared__ A red[kMaxWarps];
  constexpr int kRegs = STREAM ? 1 : kFwdMaxChunks;
  A xr[kRegs][VEC];
  const int64_t T = blockDim.x, t = threadIdx.x;
  const int64_t H = L.H;
  const bool rms = mean_out == nullptr;
  for (int64_t row = blockIdx.x; row < L.rows; row += gridDim.x) {
    const int64_t base = row * H;
    A m;
    const bool keep = ::sdkernels::cuda_launch::multiplier(scale, scale_f64, ai::sample_of_row(row, H, L.inner, L.n), alpha, m);
    A sum = A(0);
    if constexpr (!STREAM) {
      for_each_chunk<kRegs, VEC>(chunks, t, T, H, [&](int c, int64_t col) {
        add_vec<VEC, R, B, X, A>(r, b, x, gamma, base, col, keep, m, xr[c]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) sum += xr[c][j];
      });
    } else {
      for (int64_t col = t * VEC; col < H; col += T * VEC) {
        A xv[VEC];
        add_vec<VEC, R, B, X, A>(r, b, x, gamma, base, col, keep, m, xv);
#pragma unroll
        for (int j = 0; j < VEC; ++j) sum += xv[j];
      }
    }
    const A mean = rms ? A(0) : block_sum(sum, red) / static_cast<A>(H);
    A sq = A(0);
    if constexpr (!STREAM) {
      for_each_chunk<kRegs, VEC>(chunks, t, T, H, [&](int c, int64_t) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const A d = xr[c][j] - mean;
          sq += d * d;
        }
      });
    } else {
      for (int64_t col = t * VEC; col < H; col += T * VEC) {
        A xv[VEC];
        load_n_coherent<VEC>(x + base + col, xv);  // this thread's own store: visible to it
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const A d = xv[j] - mean;
          sq += d * d;
        }
      }
    }
    const A rstd = A(1) / sqrt(block_sum(sq, red) / static_cast<A>(H) + eps);
    if constexpr (!STREAM) {
      for_each_chunk<kRegs, VEC>(chunks, t, T, H, [&](int c, int64_t col) {
        norm_vec<VEC, Hh, A>(h, w, bias, base, col, mean, rstd, xr[c]);
      });
    } else {
      for (int64_t col = t * VEC; col < H; col += T * VEC) {
        A xv[VEC];
        load_n_coherent<VEC>(x + base + col, xv);
        norm_vec<VEC, Hh, A>(h, w, bias, base, col, mean, rstd, xv);
      }
    }
    if (t == 0) {
      if (!rms) mean_out[row] = mean;
      rstd_out[row] = rstd;
    }
  }
}

// ---------------------------------------------------------------------------------- backward ----

struct BwdPtrs {
  const void* gx;      // x's dtype, or nullptr
  const void* branch;  // branch's dtype, or nullptr (no gamma gradient)
  void *pw, *pb, *pg;  // partial rows [P, H] in the math dtype, or nullptr
};

template <typename X, typename Hh, typename A, int VEC>
__device__ __forceinline__ void load_xhat_dy(const X* __restrict__ x, const Hh* __restrict__ gh,
                                             const A* __restrict__ w, int64_t base, int64_t col, A mean, A rstd,
                                             A (&xh)[VEC], A (&g)[VEC], A (&dy)[VEC]) {
  load_n<VEC>(x + base + col, xh);
  load_n<VEC>(gh + base + col, g);
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    xh[j] = (xh[j] - mean) * rstd;
    dy[j] = w != nullptr ? g[j] * w[col + j] : g[j];
  }
}

// grad_residual and grad_branch of VEC columns; adds (dx * m) * branch to pgv when branch is given.
template <typename R, typename B, typename X, typename A, int VEC>
__device__ __forceinline__ void write_grads(R* __restrict__ gr, B* __restrict__ gb, const X* __restrict__ gx,
                                            const B* __restrict__ branch, const A* __restrict__ gamma,
                                            int64_t base, int64_t col, bool keep, A m, A rstd, A c1, A c2,
                                            const A (&xh)[VEC], const A (&dy)[VEC], A (&pgv)[VEC]) {
  A dx[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) dx[j] = rstd * ((dy[j] - c2) - xh[j] * c1);
  if (gx != nullptr) {
    A g[VEC];
    load_n<VEC>(gx + base + col, g);
#pragma unroll
    for (int j = 0; j < VEC; ++j) dx[j] = dx[j] + g[j];
  }
  store_n<VEC>(gr + base + col, dx);
  if (keep) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dx[j] = dx[j] * m;
    if (branch != nullptr) {
      A bv[VEC];
      load_n<VEC>(branch + base + col, bv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) pgv[j] += dx[j] * bv[j];
    }
    if (gamma != nullptr) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) dx[j] = dx[j] * gamma[col + j];
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dx[j] = A(0);
  }
  store_n<VEC>(gb + base + col, dx);
}

template <typename R, typename B, typename X, typename Hh, typename A, int VEC, bool STREAM>
__global__ void __launch_bounds__(ai::kMaxThreads)
    add_norm_bwd_kernel(R* __restrict__ gr, B* __restrict__ gb, const Hh* __restrict__ gh, const X* __restrict__ x,
                        const A* __restrict__ mean_in, const A* __restrict__ rstd_in, const A* __restrict__ w,
                        const A* __restrict__ gamma, const void* __restrict__ scale, bool scale_f64, A alpha,
                        BwdPtrs P, Rows L, int chunks) {
  __shared__ A red[kMaxWarps];
  constexpr int kRegs = STREAM ? 1 : bwd_max_chunks<VEC, A>();
  const int64_t T = blockDim.x, t = threadIdx.x;
  const int64_t H = L.H;
  const X* gx = static_cast<const X*>(P.gx);
  const B* branch = static_cast<const B*>(P.branch);
  A* pw = static_cast<A*>(P.pw);
  A* pb = static_cast<A*>(P.pb);
  A* pg = static_cast<A*>(P.pg);
  const int64_t prow = static_cast<int64_t>(blockIdx.x) * H;
  A aw[kRegs][VEC], ab[kRegs][VEC], ag[kRegs][VEC];
#pragma unroll
  for (int c = 0; c < kRegs; ++c)
#pragma unroll
    for (int j = 0; j < VEC; ++j) aw[c][j] = ab[c][j] = ag[c][j] = A(0);
  for (int64_t row = blockIdx.x; row < L.rows; row += gridDim.x) {
    const int64_t base = row * H;
    A m;
    const bool keep = ::sdkernels::cuda_launch::multiplier(scale, scale_f64, ai::sample_of_row(row, H, L.inner, L.n), alpha, m);
    const A mean = mean_in != nullptr ? mean_in[row] : A(0);
    const A rstd = rstd_in[row];
    A s1 = A(0), s2 = A(0);
    if constexpr (!STREAM) {
      A xh[kRegs][VEC], dy[kRegs][VEC];
      for_each_chunk<kRegs, VEC>(chunks, t, T, H, [&](int c, int64_t col) {
        A g[VEC];
        load_xhat_dy<X, Hh, A, VEC>(x, gh, w, base, col, mean, rstd, xh[c], g, dy[c]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          aw[c][j] += g[j] * xh[c][j];
          ab[c][j] += g[j];
          s1 += dy[c][j] * xh[c][j];
          s2 += dy[c][j];
        }
      });
      const A c1 = block_sum(s1, red) / static_cast<A>(H);
      const A c2 = mean_in != nullptr ? block_sum(s2, red) / static_cast<A>(H) : A(0);
      for_each_chunk<kRegs, VEC>(chunks, t, T, H, [&](int c, int64_t col) {
        write_grads<R, B, X, A, VEC>(gr, gb, gx, branch, gamma, base, col, keep, m, rstd, c1, c2, xh[c], dy[c],
                                     ag[c]);
      });
    } else {
      for (int64_t col = t * VEC; col < H; col += T * VEC) {
        A xh[VEC], g[VEC], dy[VEC];
        load_xhat_dy<X, Hh, A, VEC>(x, gh, w, base, col, mean, rstd, xh, g, dy);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          s1 += dy[j] * xh[j];
          s2 += dy[j];
        }
      }
      const A c1 = block_sum(s1, red) / static_cast<A>(H);
      const A c2 = mean_in != nullptr ? block_sum(s2, red) / static_cast<A>(H) : A(0);
      for (int64_t col = t * VEC; col < H; col += T * VEC) {
        A xh[VEC], g[VEC], dy[VEC], pgv[VEC];
        load_xhat_dy<X, Hh, A, VEC>(x, gh, w, base, col, mean, rstd, xh, g, dy);
#pragma unroll
        for (int j = 0; j < VEC; ++j) pgv[j] = A(0);
        write_grads<R, B, X, A, VEC>(gr, gb, gx, branch, gamma, base, col, keep, m, rstd, c1, c2, xh, dy, pgv);
        // This block's own partial row, these columns owned by this thread: no races.
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          if (pw != nullptr) pw[prow + col + j] += g[j] * xh[j];
          if (pb != nullptr) pb[prow + col + j] += g[j];
          if (pg != nullptr) pg[prow + col + j] += pgv[j];
        }
      }
    }
  }
  if constexpr (!STREAM) {
    // Every block writes its partial row, rows or not.
    for_each_chunk<kRegs, VEC>(chunks, t, T, H, [&](int c, int64_t col) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if (pw != nullptr) pw[prow + col + j] = aw[c][j];
        if (pb != nullptr) pb[prow + col + j] = ab[c][j];
        if (pg != nullptr) pg[prow + col + j] = ag[c][j];
      }
    });
  }
}

// out[k] = sum over p = 0, 1, ..., P - 1 of part[p, k], in that order.
template <typename A>
__global__ void reduce_partials_kernel(A* __restrict__ out, const A* __restrict__ part, int64_t P, int64_t H) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= H) return;
  A s = A(0);
  for (int64_t p = 0; p < P; ++p) s += part[p * H + k];
  out[k] = s;
}

// -------------------------------------------------------------------------------------- host ----

bool aligned16(const void* p) {
  return p == nullptr || index::is_vector_aligned(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
}

template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int threads, int device) {
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0));
  return static_cast<int64_t>(per_sm > 0 ? per_sm : 1) * sm_count(device);
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

Rows rows_of(const AddNormLayout& L) { return Rows{L.rows, L.H, L.n, L.inner}; }

template <typename R, typename B, typename X, typename Hh, typename A, int VEC, bool STREAM>
void launch_fwd(const AddNormPlan& P, const at::Tensor& h, const at::Tensor& w, const at::Tensor& bias,
                const at::Tensor& gamma, double alpha, double eps, const ai::RowPlan& rp, int device) {
  auto kernel = add_norm_fwd_kernel<R, B, X, Hh, A, VEC, STREAM>;
  const int threads = static_cast<int>(rp.threads);
  const int64_t blocks = std::min<int64_t>(P.layout.rows, resident_blocks(kernel, threads, device));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  kernel<<<static_cast<unsigned>(std::max<int64_t>(blocks, 1)), threads, 0, stream>>>(
      P.residual.const_data_ptr<R>(), P.branch.const_data_ptr<B>(), P.x.mutable_data_ptr<X>(),
      h.mutable_data_ptr<Hh>(), P.mean.numel() ? P.mean.mutable_data_ptr<A>() : nullptr,
      P.rstd.mutable_data_ptr<A>(), ptr_or_null<A>(w), ptr_or_null<A>(bias), ptr_or_null<A>(gamma),
      P.scale.const_data_ptr(), P.scale.scalar_type() == at::kDouble, static_cast<A>(alpha), static_cast<A>(eps),
      rows_of(P.layout), static_cast<int>(rp.chunks));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor in_acc(const at::Tensor& t, at::ScalarType acc) {
  if (!t.defined()) return t;
  return t.scalar_type() == acc ? t : t.to(acc);
}

template <typename R, typename B, typename X, typename Hh>
void fwd_typed(const AddNormPlan& P, const at::Tensor& h, double alpha, double eps, int device) {
  using A = typename acc_of<R, B, X, Hh>::type;
  constexpr int VEC = vec_of<R, B, X, Hh>();
  const auto acc = c10::CppTypeToScalarType<A>::value;
  const at::Tensor w = in_acc(P.weight, acc), bias = in_acc(P.bias, acc), g = in_acc(P.gamma, acc);
  const bool aligned = aligned16(P.residual.const_data_ptr()) && aligned16(P.branch.const_data_ptr()) &&
                       aligned16(P.x.const_data_ptr()) && aligned16(h.const_data_ptr());
  const int64_t vec = ai::row_vec_width(P.layout.H, index::vec_width(std::min({sizeof(R), sizeof(B), sizeof(X),
                                                                               sizeof(Hh)})), aligned);
  if (vec == VEC) {
    const ai::RowPlan rp = ai::plan_row(P.layout.H, VEC, kFwdMaxChunks);
    if (rp.streaming) {
      launch_fwd<R, B, X, Hh, A, VEC, true>(P, h, w, bias, g, alpha, eps, rp, device);
    } else {
      launch_fwd<R, B, X, Hh, A, VEC, false>(P, h, w, bias, g, alpha, eps, rp, device);
    }
  } else {
    const ai::RowPlan rp = ai::plan_row(P.layout.H, 1, kFwdMaxChunks);
    if (rp.streaming) {
      launch_fwd<R, B, X, Hh, A, 1, true>(P, h, w, bias, g, alpha, eps, rp, device);
    } else {
      launch_fwd<R, B, X, Hh, A, 1, false>(P, h, w, bias, g, alpha, eps, rp, device);
    }
  }
}

// The kernels' math dtype follows the activations (fp64 when one is fp64); an fp64
// weight, bias or gamma with narrower activations would need fp64 math: refused here.
void check_math_dtype(bool acc64, std::initializer_list<at::ScalarType> activations) {
  TORCH_CHECK_TYPE(acc64 == any_double(activations),
                   "sdkernels: the CUDA add_norm kernels take a float64 weight, bias or layer_scale only with "
                   "float64 activations; cast the parameters to the activations' dtype, or use backend='triton'");
}

using BF16 = c10::BFloat16;
using F16 = c10::Half;

// The natively compiled (residual, branch, x, h) dtypes; true when the call was made.
bool fwd_native(const AddNormPlan& P, const at::Tensor& h, double alpha, double eps, int device) {
  const auto r = P.residual.scalar_type(), b = P.branch.scalar_type(), x = P.x.scalar_type(), hd = h.scalar_type();
  auto is = [&](at::ScalarType a, at::ScalarType bb, at::ScalarType c, at::ScalarType d) {
    return r == a && b == bb && x == c && hd == d;
  };
  using at::kBFloat16, at::kDouble, at::kFloat, at::kHalf;
  if (is(kFloat, kFloat, kFloat, kFloat)) fwd_typed<float, float, float, float>(P, h, alpha, eps, device);
  else if (is(kBFloat16, kBFloat16, kBFloat16, kBFloat16)) fwd_typed<BF16, BF16, BF16, BF16>(P, h, alpha, eps, device);
  else if (is(kHalf, kHalf, kHalf, kHalf)) fwd_typed<F16, F16, F16, F16>(P, h, alpha, eps, device);
  else if (is(kDouble, kDouble, kDouble, kDouble)) fwd_typed<double, double, double, double>(P, h, alpha, eps, device);
  else if (is(kFloat, kBFloat16, kFloat, kFloat)) fwd_typed<float, BF16, float, float>(P, h, alpha, eps, device);
  else if (is(kFloat, kBFloat16, kFloat, kBFloat16)) fwd_typed<float, BF16, float, BF16>(P, h, alpha, eps, device);
  else if (is(kFloat, kFloat, kFloat, kBFloat16)) fwd_typed<float, float, float, BF16>(P, h, alpha, eps, device);
  else return false;
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_cuda(
    const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& scale,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& gamma, int64_t sample_dim, double alpha, double eps, bool rms,
    std::optional<at::ScalarType> out_dtype) {
  check_backend(residual, "residual", at::kCUDA);
  const c10::cuda::CUDAGuard guard(residual.device());
  AddNormPlan P = plan_add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype);
  if (P.x.numel() == 0) return {P.x, P.h, P.mean, P.rstd};
  check_math_dtype(P.acc64, {residual.scalar_type(), branch.scalar_type(), P.x.scalar_type(), P.h.scalar_type()});
  const int device = P.x.get_device();
  if (fwd_native(P, P.h, alpha, eps, device)) return {P.x, P.h, P.mean, P.rstd};
  // Other dtypes: inputs converted to x's dtype (exact: x's is the widest), h computed in x's dtype.
  const auto xdt = P.x.scalar_type();
  P.residual = P.residual.to(xdt);
  P.branch = P.branch.to(xdt);
  at::Tensor h = P.h.scalar_type() == xdt ? P.h : empty_in_layout(P.x, xdt);
  TORCH_INTERNAL_ASSERT(fwd_native(P, h, alpha, eps, device), "sdkernels: no add_norm kernel for these dtypes");
  if (!h.is_same(P.h)) P.h.copy_(h);
  return {P.x, P.h, P.mean, P.rstd};
}

template <typename R, typename B, typename X, typename Hh, typename A, int VEC, bool STREAM>
void launch_bwd(const AddNormBackwardPlan& P, const at::Tensor& gr, const at::Tensor& gb, const at::Tensor& gh,
                const at::Tensor& w, const at::Tensor& g, BwdPtrs ptrs, int64_t programs, const ai::RowPlan& rp,
                double alpha, int device) {
  auto kernel = add_norm_bwd_kernel<R, B, X, Hh, A, VEC, STREAM>;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  kernel<<<static_cast<unsigned>(programs), static_cast<int>(rp.threads), 0, stream>>>(
      gr.mutable_data_ptr<R>(), gb.mutable_data_ptr<B>(), gh.const_data_ptr<Hh>(), P.x.const_data_ptr<X>(),
      P.mean.defined() ? P.mean.const_data_ptr<A>() : nullptr, P.rstd.const_data_ptr<A>(), ptr_or_null<A>(w),
      ptr_or_null<A>(g), P.scale.const_data_ptr(), P.scale.scalar_type() == at::kDouble, static_cast<A>(alpha), ptrs,
      rows_of(P.layout), static_cast<int>(rp.chunks));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename A>
void reduce_into(const at::Tensor& part, at::Tensor& out, int device) {
  const int64_t P = part.size(0), H = part.size(1);
  at::Tensor acc_out = out.scalar_type() == part.scalar_type() ? out : at::empty({H}, part.options());
  const int threads = 256;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  reduce_partials_kernel<A><<<static_cast<unsigned>(index::ceil_div(H, threads)), threads, 0, stream>>>(
      acc_out.mutable_data_ptr<A>(), part.const_data_ptr<A>(), P, H);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!acc_out.is_same(out)) out.copy_(acc_out);
}

template <typename R, typename B, typename X, typename Hh>
void bwd_typed(AddNormBackwardPlan& P, const at::Tensor& gr, const at::Tensor& gb, const at::Tensor& gh,
               double alpha, int device) {
  using A = typename acc_of<R, B, X, Hh>::type;
  constexpr int VEC = vec_of<R, B, X, Hh>();
  const auto acc = c10::CppTypeToScalarType<A>::value;
  TORCH_INTERNAL_ASSERT(acc == P.rstd.scalar_type(), "sdkernels: add_norm_backward: math dtype mismatch");
  const at::Tensor w = in_acc(P.weight, acc), g = in_acc(P.gamma, acc);
  const int64_t H = P.layout.H;
  const bool aligned = aligned16(gr.const_data_ptr()) && aligned16(gb.const_data_ptr()) &&
                       aligned16(gh.const_data_ptr()) && aligned16(P.x.const_data_ptr()) &&
                       aligned16(P.grad_x.defined() ? P.grad_x.const_data_ptr() : nullptr) &&
                       aligned16(P.branch.defined() ? P.branch.const_data_ptr() : nullptr);
  const int64_t vec =
      ai::row_vec_width(H, index::vec_width(std::min({sizeof(R), sizeof(B), sizeof(X), sizeof(Hh)})), aligned);
  const int64_t v = vec == VEC ? VEC : 1;
  const ai::RowPlan rp = ai::plan_row(H, v, v == VEC ? bwd_max_chunks<VEC, A>() : bwd_max_chunks<1, A>());
  // Programs: the resident blocks of this shape, at most one per row (at least 1).
  const int64_t per_sm = std::max<int64_t>(1, 2048 / rp.threads);
  const int64_t programs = std::max<int64_t>(1, std::min<int64_t>(P.layout.rows, per_sm * sm_count(device)));
  auto partial = [&](const at::Tensor& out) {
    if (out.numel() == 0) return at::Tensor();
    return rp.streaming ? at::zeros({programs, H}, P.x.options().dtype(acc))
                        : at::empty({programs, H}, P.x.options().dtype(acc));
  };
  const at::Tensor pw = partial(P.grad_weight), pb = partial(P.grad_bias), pg = partial(P.grad_gamma);
  BwdPtrs ptrs{P.grad_x.defined() ? P.grad_x.const_data_ptr() : nullptr,
               P.branch.defined() ? P.branch.const_data_ptr() : nullptr,
               pw.defined() ? pw.mutable_data_ptr() : nullptr, pb.defined() ? pb.mutable_data_ptr() : nullptr,
               pg.defined() ? pg.mutable_data_ptr() : nullptr};
  if (v == VEC) {
    if (rp.streaming) launch_bwd<R, B, X, Hh, A, VEC, true>(P, gr, gb, gh, w, g, ptrs, programs, rp, alpha, device);
    else launch_bwd<R, B, X, Hh, A, VEC, false>(P, gr, gb, gh, w, g, ptrs, programs, rp, alpha, device);
  } else {
    if (rp.streaming) launch_bwd<R, B, X, Hh, A, 1, true>(P, gr, gb, gh, w, g, ptrs, programs, rp, alpha, device);
    else launch_bwd<R, B, X, Hh, A, 1, false>(P, gr, gb, gh, w, g, ptrs, programs, rp, alpha, device);
  }
  if (pw.defined()) reduce_into<A>(pw, P.grad_weight, device);
  if (pb.defined()) reduce_into<A>(pb, P.grad_bias, device);
  if (pg.defined()) reduce_into<A>(pg, P.grad_gamma, device);
}

// The natively compiled (grad_residual, grad_branch, x, grad_h) dtypes (the forward's
// (residual, branch, x, h)); true when the call was made.
bool bwd_native(AddNormBackwardPlan& P, const at::Tensor& gr, const at::Tensor& gb, const at::Tensor& gh,
                double alpha, int device) {
  const auto r = gr.scalar_type(), b = gb.scalar_type(), x = P.x.scalar_type(), hd = gh.scalar_type();
  if (P.grad_x.defined() && P.grad_x.scalar_type() != x) return false;
  if (P.branch.defined() && P.branch.scalar_type() != b) return false;
  auto is = [&](at::ScalarType a, at::ScalarType bb, at::ScalarType c, at::ScalarType d) {
    return r == a && b == bb && x == c && hd == d;
  };
  using at::kBFloat16, at::kDouble, at::kFloat, at::kHalf;
  if (is(kFloat, kFloat, kFloat, kFloat)) bwd_typed<float, float, float, float>(P, gr, gb, gh, alpha, device);
  else if (is(kBFloat16, kBFloat16, kBFloat16, kBFloat16)) bwd_typed<BF16, BF16, BF16, BF16>(P, gr, gb, gh, alpha, device);
  else if (is(kHalf, kHalf, kHalf, kHalf)) bwd_typed<F16, F16, F16, F16>(P, gr, gb, gh, alpha, device);
  else if (is(kDouble, kDouble, kDouble, kDouble)) bwd_typed<double, double, double, double>(P, gr, gb, gh, alpha, device);
  else if (is(kFloat, kBFloat16, kFloat, kFloat)) bwd_typed<float, BF16, float, float>(P, gr, gb, gh, alpha, device);
  else if (is(kFloat, kBFloat16, kFloat, kBFloat16)) bwd_typed<float, BF16, float, BF16>(P, gr, gb, gh, alpha, device);
  else if (is(kFloat, kFloat, kFloat, kBFloat16)) bwd_typed<float, float, float, BF16>(P, gr, gb, gh, alpha, device);
  else return false;
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_backward_cuda(
    const std::optional<at::Tensor>& grad_x, const at::Tensor& grad_h, const at::Tensor& x, const at::Tensor& mean,
    const at::Tensor& rstd, const at::Tensor& scale, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& branch, int64_t sample_dim,
    double alpha, bool rms, at::ScalarType residual_dtype, at::ScalarType branch_dtype,
    std::optional<at::ScalarType> weight_dtype, std::optional<at::ScalarType> bias_dtype) {
  check_backend(x, "x", at::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  AddNormBackwardPlan P = plan_add_norm_backward(grad_x, grad_h, x, mean, rstd, scale, weight, gamma, branch,
                                                 sample_dim, alpha, rms, residual_dtype, branch_dtype, weight_dtype,
                                                 bias_dtype);
  const auto out = std::make_tuple(P.grad_residual, P.grad_branch, P.grad_weight, P.grad_bias, P.grad_gamma);
  if (P.layout.rows == 0 || P.layout.H == 0) {
    P.grad_weight.zero_();
    P.grad_bias.zero_();
    P.grad_gamma.zero_();
    return out;
  }
  check_math_dtype(P.acc64, {P.x.scalar_type(), P.grad_h.scalar_type(), residual_dtype, branch_dtype});
  const int device = P.x.get_device();
  if (bwd_native(P, P.grad_residual, P.grad_branch, P.grad_h, alpha, device)) return out;
  // Other dtypes: everything in x's dtype, the gradients cast afterwards.
  const auto xdt = P.x.scalar_type();
  const at::Tensor gr = empty_in_layout(P.x, xdt), gb = empty_in_layout(P.x, xdt);
  const at::Tensor gh = P.grad_h.to(xdt);
  if (P.grad_x.defined()) P.grad_x = P.grad_x.to(xdt);
  if (P.branch.defined()) P.branch = P.branch.to(xdt);
  TORCH_INTERNAL_ASSERT(bwd_native(P, gr, gb, gh, alpha, device), "sdkernels: no add_norm_backward kernel");
  P.grad_residual.copy_(gr);
  P.grad_branch.copy_(gb);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, CUDA, m) {
  m.impl("add_norm", &add_norm_cuda);
  m.impl("add_norm_backward", &add_norm_backward_cuda);
}

}  // namespace sdkernels
