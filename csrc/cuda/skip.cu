// CUDA kernels of the skip-path ops (schemas in csrc/ops/skip.cpp; same
// semantics and layouts as csrc/cpu/skip.cpp and sdkernels/skip.py):
//
//   scaled_index_add: out = residual, out[index[j]] += src[j] * alpha (sample dim)
//   index_scale:      out[j] = grad[index[j]] * alpha
//
// Layout: each tensor is a dense block [outer, n, inner]; the k-sample partner
// (src, index_scale's output) is [outer, k, inner] (csrc/common/scaled_index_add.h).
//
// Work split: a 2D grid over (columns of a row, rows).  A block is
// (tx, ty) threads, tx a multiple of 32 sized to the row (<= 256), ty rows
// side by side, so short rows (seq-first [S, B, H] with sample_dim=1: inner =
// H) still fill the warps.  Each thread finds its row's sample once per row
// (one 64-bit division per row, none per element) and walks the row's
// columns with a grid-stride loop; rows too are grid-strided (grid.y <= 65535).
//  - 16-byte loads and stores when every base pointer is 16-byte aligned and
//    every row starts aligned (inner % VEC == 0, or n == 1: one row): a vector is
//    16 bytes of the narrowest dtype; the rest of a single row is a scalar tail;
//    anything else goes element by element.
//  - scaled_index_add: the inverse map inv[s] = j (or -1) is built on the device
//    by one tiny kernel (fill -1, then scatter j) into n int64s; a row either
//    copies the residual (src not read) or adds src row (o, inv[s]) * alpha.
//    Every output element has exactly one writer: no atomics in the main pass,
//    deterministic results.
//  - Index values: range and uniqueness are checked on the device without a host
//    sync, by CUDA_KERNEL_ASSERT in the inverse-map kernel (an atomicCAS per
//    index detects a duplicate) and in index_scale's kernel (range).  A failed
//    device assert is fatal to the CUDA context, as with torch's own indexing
//    kernels; sdkernels.drop_path_residual only passes randperm / nonzero
//    outputs, which are unique and in range by construction.  (The CPU kernel
//    raises ValueError / IndexError instead; index_scale on CUDA does not check
//    uniqueness: its gather is well defined with repeats, and its backward,
//    scaled_index_add, checks.)
//  - Each input is read in its own dtype; math is fp32 (fp64 when any tensor is
//    fp64), multiply and add rounded separately (no FMA contraction) as the CPU
//    kernel and the reference do, result rounded once: CPU and CUDA agree bit
//    for bit.
//  - 64-bit offsets throughout.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/cuda_vec.cuh"
#include "common/kernel_types.h"
#include "common/sample_layout.h"
#include "common/scaled_index_add.h"

namespace sdkernels {
namespace {

using namespace ::sdkernels::cuda_vec;

constexpr int kMaxThreads = 256;      // threads per block
constexpr int kThreadsPerSM = 2048;   // resident threads per SM (sm_80, sm_90)
constexpr int kMaxGridY = 65535;
constexpr int64_t kVecBytes = 16;
constexpr int64_t kInverseOneBlock = 1 << 16;  // n up to this: one block builds the map



// How the threads of a launch cover rows of `inner` elements.
struct RowWalk {
  int64_t rows;   // rows of the output
  int64_t inner;  // elements per row
  int64_t nvec;   // 16-byte vectors per row (0: scalar only)
  int64_t items;  // work items per row: nvec vectors + (inner - nvec * VEC) scalars
};

// ------------------------------------------------------------- kernels ----

// inv[s] = -1 for all s, then inv[index[j]] = j; asserts range and uniqueness.
// One block does both (n small: one launch), or `fill` and `scatter` run as
// two grid-wide launches.
__global__ void inverse_map_kernel(int64_t* __restrict__ inv, const int64_t* __restrict__ index,
                                   int64_t n, int64_t k, bool fill, bool scatter) {
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (fill) {
    for (int64_t s = t0; s < n; s += step) inv[s] = -1;
  }
  if (fill && scatter) __syncthreads();  // only launched as one block in this case
  if (scatter) {
    for (int64_t j = t0; j < k; j += step) {
      const int64_t s = index[j];
      CUDA_KERNEL_ASSERT(s >= 0 && s < n && "sdkernels: index out of range");
      if (s < 0 || s >= n) continue;
      const unsigned long long prev = atomicCAS(
          reinterpret_cast<unsigned long long*>(inv + s), static_cast<unsigned long long>(-1LL),
          static_cast<unsigned long long>(j));
      CUDA_KERNEL_ASSERT(prev == static_cast<unsigned long long>(-1LL) &&
                         "sdkernels: index must hold unique values");
      (void)prev;
    }
  }
}

template <typename R, typename S, typename O, typename A, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
    scaled_index_add_kernel(const R* __restrict__ r, const S* __restrict__ src,
                            O* __restrict__ out, const int64_t* __restrict__ inv, A alpha,
                            RowWalk w, int64_t n, int64_t k) {
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t cstep = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t rstep = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < w.rows;
       row += rstep) {
    const int64_t s = row % n;
    const int64_t j = __ldg(inv + s);
    const int64_t base = row * w.inner;
    const S* srow = src + (j >= 0 ? ((row / n) * k + j) * w.inner : 0);
    for (int64_t c = c0; c < w.items; c += cstep) {
      if (c < w.nvec) {
        const int64_t off = c * VEC;
        A acc[VEC];
        load_vec<VEC>(r + base + off, acc);
        if (j >= 0) {
          A b[VEC];
          load_vec<VEC>(srow + off, b);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] = add_rn(acc[e], mul_rn(b[e], alpha));
        }
        store_vec<VEC>(out + base + off, acc);
      } else {
        const int64_t i = w.nvec * VEC + (c - w.nvec);
        A v = static_cast<A>(r[base + i]);
        if (j >= 0) v = add_rn(v, mul_rn(static_cast<A>(srow[i]), alpha));
        out[base + i] = static_cast<O>(v);
      }
    }
  }
}

template <typename X, typename O, typename A, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
    index_scale_kernel(const X* __restrict__ g, O* __restrict__ out,
                       const int64_t* __restrict__ index, A alpha, RowWalk w, int64_t n,
                       int64_t k) {
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t cstep = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t rstep = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < w.rows;
       row += rstep) {
    const int64_t j = row % k;
    const int64_t s = __ldg(index + j);
    CUDA_KERNEL_ASSERT(s >= 0 && s < n && "sdkernels: index out of range");
    if (s < 0 || s >= n) continue;
    const X* grow = g + ((row / k) * n + s) * w.inner;
    O* orow = out + row * w.inner;
    for (int64_t c = c0; c < w.items; c += cstep) {
      if (c < w.nvec) {
        const int64_t off = c * VEC;
        A v[VEC];
        load_vec<VEC>(grow + off, v);
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[e] = mul_rn(v[e], alpha);
        store_vec<VEC>(orow + off, v);
      } else {
        const int64_t i = w.nvec * VEC + (c - w.nvec);
        orow[i] = static_cast<O>(mul_rn(static_cast<A>(grow[i]), alpha));
      }
    }
  }
}

// -------------------------------------------------------------- launch ----

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVecBytes == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// `one_row`: every tensor is a single row (n == 1), so only base pointers matter.
RowWalk plan_walk(int64_t rows, int64_t inner, int64_t vec, bool aligned, bool one_row) {
  RowWalk w;
  w.rows = rows;
  w.inner = inner;
  // Vectors need every row start aligned: inner a multiple of VEC, or one row.
  const bool use_vec = aligned && vec > 1 && inner >= vec && (inner % vec == 0 || one_row);
  w.nvec = use_vec ? inner / vec : 0;
  w.items = w.nvec + (inner - w.nvec * vec);  // vectors, then the scalar tail of a single row
  return w;
}

// Block shape and grid for a walk: tx threads along a row (multiple of 32,
// <= 256), ty rows per block; at most one wave of resident threads.
void plan_grid(const RowWalk& w, int device, dim3& block, dim3& grid) {
  const int64_t tx = std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, ceil_div(w.items, 32) * 32));
  const int64_t ty = std::max<int64_t>(1, kMaxThreads / tx);
  const int64_t max_blocks =
      std::max<int64_t>(1, static_cast<int64_t>(sm_count(device)) * kThreadsPerSM / (tx * ty));
  const int64_t gx = std::max<int64_t>(1, std::min(ceil_div(w.items, tx), max_blocks));
  const int64_t gy = std::max<int64_t>(
      1, std::min<int64_t>({ceil_div(w.rows, ty), kMaxGridY, std::max<int64_t>(1, max_blocks / gx)}));
  block = dim3(static_cast<unsigned>(tx), static_cast<unsigned>(ty));
  grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
}

void build_inverse(at::Tensor& inv, const at::Tensor& index, int64_t n, cudaStream_t stream) {
  const int64_t k = index.numel();
  int64_t* ip = inv.mutable_data_ptr<int64_t>();
  const int64_t* xp = index.const_data_ptr<int64_t>();
  if (n <= kInverseOneBlock) {
    inverse_map_kernel<<<1, kMaxThreads, 0, stream>>>(ip, xp, n, k, true, true);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const unsigned fill_blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, kMaxThreads), 65535));
  inverse_map_kernel<<<fill_blocks, kMaxThreads, 0, stream>>>(ip, xp, n, k, true, false);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (k > 0) {
    const unsigned sc_blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(k, kMaxThreads), 65535));
    inverse_map_kernel<<<sc_blocks, kMaxThreads, 0, stream>>>(ip, xp, n, k, false, true);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename R, typename S>
void launch_add(const at::Tensor& r, const at::Tensor& s, at::Tensor& out, const at::Tensor& inv,
                double alpha, const SampleLayout& L, int64_t k, cudaStream_t stream) {
  using O = typename promote<R, S>::type;
  using A = typename acc_of<R, S, O>::type;
  constexpr int VEC = vec_of<R, S, O>();
  TORCH_INTERNAL_ASSERT(out.scalar_type() == c10::CppTypeToScalarType<O>::value,
                        "sdkernels: output dtype mismatch");
  const R* rp = r.const_data_ptr<R>();
  const S* sp = s.const_data_ptr<S>();
  O* op = out.mutable_data_ptr<O>();
  const bool aligned = aligned16(rp) && aligned16(sp) && aligned16(op);
  const RowWalk w = plan_walk(L.numel / L.inner, L.inner, VEC, aligned, L.n == 1);
  dim3 block, grid;
  plan_grid(w, out.get_device(), block, grid);
  scaled_index_add_kernel<R, S, O, A, VEC><<<grid, block, 0, stream>>>(
      rp, sp, op, inv.const_data_ptr<int64_t>(), static_cast<A>(alpha), w, L.n, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename X, typename O>
void launch_scale(const at::Tensor& g, at::Tensor& out, const at::Tensor& index, double alpha,
                  const SampleLayout& L, int64_t k, cudaStream_t stream) {
  using A = typename acc_of<X, O>::type;
  constexpr int VEC = vec_of<X, O>();
  const X* gp = g.const_data_ptr<X>();
  O* op = out.mutable_data_ptr<O>();
  const bool aligned = aligned16(gp) && aligned16(op);
  // one output row can still read grad row index[0] != 0 when n > 1: only n == 1 is one row
  const RowWalk w = plan_walk(out.numel() / L.inner, L.inner, VEC, aligned, L.n == 1);
  dim3 block, grid;
  plan_grid(w, out.get_device(), block, grid);
  index_scale_kernel<X, O, A, VEC><<<grid, block, 0, stream>>>(
      gp, op, index.const_data_ptr<int64_t>(), static_cast<A>(alpha), w, L.n, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define SDK_SIA_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor scaled_index_add_cuda(const at::Tensor& residual, const at::Tensor& src,
                                 const at::Tensor& index, int64_t sample_dim, double alpha) {
  check_backend(residual, "residual", at::kCUDA);
  const int64_t dim = skip::check_add_args(residual, src, index, sample_dim);
  const c10::cuda::CUDAGuard guard(residual.device());
  const auto out_dtype = at::promote_types(residual.scalar_type(), src.scalar_type());
  at::Tensor out = at::empty_like(residual, residual.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  const int64_t k = index.numel();
  if (k == 0) {
    out.copy_(residual);
    return out;
  }
  const int64_t n = residual.size(dim);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(out.get_device()).stream();
  const at::Tensor r = match_strides(residual, out);
  const at::Tensor s = match_strides(src, skip::samples_like(out, dim, k, src.options()));
  const at::Tensor idx = index.contiguous();
  at::Tensor inv = at::empty({n}, index.options());
  build_inverse(inv, idx, n, stream);
  const SampleLayout L = plan_layout(out, dim);
  SDK_SIA_DISPATCH(r.scalar_type(), "scaled_index_add_cuda", [&] {
    using R = scalar_t;
    SDK_SIA_DISPATCH(s.scalar_type(), "scaled_index_add_cuda", [&] {
      launch_add<R, scalar_t>(r, s, out, inv, alpha, L, k, stream);
    });
  });
  return out;
}

at::Tensor index_scale_cuda(const at::Tensor& grad, const at::Tensor& index, int64_t sample_dim,
                            double alpha, std::optional<at::ScalarType> dtype) {
  const auto out_dtype = dtype.has_value() ? *dtype : grad.scalar_type();
  check_backend(grad, "grad", at::kCUDA);
  const int64_t dim = skip::check_scale_args(grad, index, sample_dim, out_dtype);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t k = index.numel();
  const at::Tensor base = at::empty_like(grad);
  at::Tensor out = skip::samples_like(base, dim, k, grad.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(out.get_device()).stream();
  const at::Tensor g = match_strides(grad, base);
  const at::Tensor idx = index.contiguous();
  const SampleLayout L = plan_layout(base, dim);
  SDK_SIA_DISPATCH(g.scalar_type(), "index_scale_cuda", [&] {
    using X = scalar_t;
    SDK_SIA_DISPATCH(out_dtype, "index_scale_cuda", [&] {
      launch_scale<X, scalar_t>(g, out, idx, alpha, L, k, stream);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, CUDA, m) {
  m.impl("scaled_index_add", &scaled_index_add_cuda);
  m.impl("index_scale", &index_scale_cuda);
}

}  // namespace sdkernels
