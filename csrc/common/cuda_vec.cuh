// Helpers shared by the CUDA kernels: explicitly rounded arithmetic (no fused
// multiply-add, so results match the reference's two roundings), 16-byte
// vector loads/stores with per-element conversion, and the SM count.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstring>

namespace sdkernels {
namespace cuda_vec {

constexpr int kVectorBytes = 16;

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

// VEC elements of T at p (16-byte aligned), converted to A: VEC * sizeof(T) / 16
// read-only loads of 16 bytes each.
template <int VEC, typename T, typename A>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, A (&dst)[VEC]) {
  constexpr int kPer = static_cast<int>(kVectorBytes / sizeof(T));
  static_assert(VEC % kPer == 0, "a vector must be whole 16-byte chunks");
  const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int c = 0; c < VEC / kPer; ++c) {
    const uint4 raw = __ldg(q + c);
    T v[kPer];
    memcpy(v, &raw, sizeof(raw));
#pragma unroll
    for (int j = 0; j < kPer; ++j) dst[c * kPer + j] = static_cast<A>(v[j]);
  }
}

// src converted to T, stored at p (16-byte aligned) as 16-byte stores.
template <int VEC, typename T, typename A>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const A (&src)[VEC]) {
  constexpr int kPer = static_cast<int>(kVectorBytes / sizeof(T));
  static_assert(VEC % kPer == 0, "a vector must be whole 16-byte chunks");
  uint4* q = reinterpret_cast<uint4*>(p);
#pragma unroll
  for (int c = 0; c < VEC / kPer; ++c) {
    T v[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) v[j] = static_cast<T>(src[c * kPer + j]);
    uint4 raw;
    memcpy(&raw, v, sizeof(raw));
    q[c] = raw;
  }
}

// VEC elements of T at p (16-byte aligned) into A with plain (coherent) loads: for data
// the same kernel wrote, which the read-only path (__ldg) may not see.
template <int VEC, typename T, typename A>
__device__ __forceinline__ void load_vec_coherent(const T* p, A (&dst)[VEC]) {
  constexpr int kPer = static_cast<int>(kVectorBytes / sizeof(T));
  static_assert(VEC % kPer == 0, "a vector must be whole 16-byte chunks");
  const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int c = 0; c < VEC / kPer; ++c) {
    const uint4 raw = q[c];
    T v[kPer];
    memcpy(v, &raw, sizeof(raw));
#pragma unroll
    for (int j = 0; j < kPer; ++j) dst[c * kPer + j] = static_cast<A>(v[j]);
  }
}

// Streaming multiprocessors of a device, cached per device (one cache for the
// whole library: an inline function's static is shared by every file).
inline int sm_count(int device) {
  constexpr int kCachedDevices = 64;
  static std::atomic<int> cache[kCachedDevices];
  const bool cached = device >= 0 && device < kCachedDevices;
  if (cached) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  v = v > 0 ? v : 1;
  if (cached) cache[device].store(v, std::memory_order_relaxed);
  return v;
}

}  // namespace cuda_vec
}  // namespace sdkernels
