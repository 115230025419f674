// Device helpers and launch planning shared by the CUDA kernels of the
// drop-path ops (csrc/cuda/core.cu) and the LayerScale ops
// (csrc/cuda/layer_scale.cu).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "common/cuda_vec.cuh"
#include "common/drop_path_index.h"
#include "common/sample_layout.h"

namespace sdkernels {
namespace cuda_launch {

namespace ix = ::sdkernels::index;
using namespace ::sdkernels::cuda_vec;

constexpr int kThreads = 256;
constexpr int kMaxCachedDevices = 64;

// VEC zeros of T at p (16-byte aligned).
template <int VEC, typename T>
__device__ __forceinline__ void store_zeros(T* __restrict__ p) {
  constexpr int kPer = static_cast<int>(ix::kVectorBytes / sizeof(T));
  uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
  for (int c = 0; c < VEC / kPer; ++c) q[c] = make_uint4(0u, 0u, 0u, 0u);
}

// The multiplier of sample s: m = A(scale[s]) * A(alpha).  Returns whether the
// sample is kept (scale[s] != 0, tested on the stored value).
template <typename A>
__device__ __forceinline__ bool multiplier(const void* __restrict__ scale, bool scale_f64,
                                           int64_t s, A alpha, A& m) {
  if (scale_f64) {
    const double v = __ldg(static_cast<const double*>(scale) + s);
    m = mul_rn(static_cast<A>(v), alpha);
    return v != 0.0;
  }
  const float v = __ldg(static_cast<const float*>(scale) + s);
  m = mul_rn(static_cast<A>(v), alpha);
  return v != 0.0f;
}

// Per-device cache of one kernel's resident blocks (zero: not known yet).
using BlocksCache = std::atomic<int>[kMaxCachedDevices];

// Blocks of `kernel` the device holds at once (occupancy x SMs), cached per
// device in the kernel's own `cache`: the grid-stride loop's grid never
// exceeds it.
template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int device, BlocksCache& cache) {
  const bool cached = device >= 0 && device < kMaxCachedDevices;
  if (cached) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  const int v = (per_sm > 0 ? per_sm : 1) * sm_count(device);
  if (cached) cache[device].store(v, std::memory_order_relaxed);
  return v;
}

// The launch plan of a kernel over layout L.  scale numel 1: one sample.
template <int VEC, typename Kernel>
ix::GridPlan plan_launch(Kernel kernel, BlocksCache& cache, const SampleLayout& L, bool one_scale,
                         bool aligned, int device) {
  const int64_t n = one_scale ? 1 : L.n;
  const int64_t inner = one_scale ? L.numel : L.inner;
  const ix::VecPlan v = ix::plan_vectors(L.numel, inner, n, VEC, aligned);
  const int64_t blocks =
      ix::grid_blocks(ix::work_items(v), kThreads, resident_blocks(kernel, device, cache));
  return ix::plan_grid(v, blocks, kThreads);
}

inline bool aligned16(const void* p) {
  return ix::is_vector_aligned(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
}

}  // namespace cuda_launch
}  // namespace sdkernels
