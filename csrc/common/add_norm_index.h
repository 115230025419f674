// Index math of the add + norm kernels, host and device: the CPU
// kernels, the CUDA kernels and the host-run test hooks
// (csrc/testing/add_norm_index.cpp, tests/test_add_norm_index.py) share it.
//
// The tensors are seen as `rows` rows of `H` contiguous elements (the
// normalised last dim) in memory order; row r starts at element r * H.  The
// sample of a row follows from the [outer, n, inner] view of
// csrc/common/sample_layout.h: inner (the sample dim's stride) is a multiple of
// H because the sample dim is never the last one, so a row lies inside one
// sample.
#pragma once

#include <cstdint>

#include "common/drop_path_index.h"  // SDK_HD_INLINE, index::ceil_div, index::vec_width

namespace sdkernels {
namespace add_norm_index {

// Sample of memory row `row` of H elements; n == 1 (one scale for all): 0.
SDK_HD_INLINE int64_t sample_of_row(int64_t row, int64_t H, int64_t inner, int64_t n) {
  return n <= 1 ? 0 : ((row * H) / inner) % n;
}

// ---- CUDA launch plan -------------------------------------------------------
// One thread block per row at a time (a grid-stride loop over rows).  Thread t
// of a block of `threads` owns the vectors t, t + threads, t + 2 threads, ...
// of its row (a vector = `vec` elements, 16 bytes of the narrowest dtype when
// every row start is 16-byte aligned, else 1): chunk c of thread t starts at
// column (c * threads + t) * vec.  With at most `max_chunks` chunks per thread
// (a compile-time bound of the kernel: the forward keeps x, the backward x-hat,
// dy and three partial sums per element in registers) the row lives in
// registers; longer rows take the streaming path, which re-reads the row from
// memory for each pass (x: written by the same thread moments before, so from
// L1/L2).
constexpr int64_t kMinThreads = 32;
constexpr int64_t kMaxThreads = 512;  // the kernels' __launch_bounds__: 128 registers per thread
constexpr int64_t kTargetChunks = 4;

struct RowPlan {
  int64_t vec = 1;       // elements per vector access
  int64_t threads = 32;  // threads per block (one row per block at a time)
  int64_t chunks = 1;    // vectors per thread: ceil(nvec / threads)
  bool streaming = false;
};

// Vectors per row: ceil(H / vec).
SDK_HD_INLINE int64_t row_vectors(int64_t H, int64_t vec) { return index::ceil_div(H, vec); }

// The smallest power-of-two block (32 to kMaxThreads threads) that covers the row
// with at most min(kTargetChunks, max_chunks) vectors per thread; a row needing
// more than max_chunks vectors per thread at kMaxThreads threads streams.
SDK_HD_INLINE RowPlan plan_row(int64_t H, int64_t vec, int64_t max_chunks) {
  RowPlan p;
  p.vec = vec;
  const int64_t nvec = row_vectors(H, vec);
  const int64_t target = max_chunks < kTargetChunks ? max_chunks : kTargetChunks;
  int64_t t = kMinThreads;
  while (t < kMaxThreads && t * target < nvec) t *= 2;
  p.threads = t;
  p.chunks = index::ceil_div(nvec, t);
  p.streaming = p.chunks > max_chunks;
  return p;
}

// First column of chunk c of thread t of a block of `threads` (register path; may
// be >= H: that chunk is idle).
SDK_HD_INLINE int64_t chunk_column(int64_t c, int64_t t, int64_t threads, int64_t vec) {
  return (c * threads + t) * vec;
}

// The streaming path visits columns t * vec, (t + threads) * vec, ... < H: the
// same columns chunk_column gives for c = 0, 1, ...

// The vector width: 16 bytes of the narrowest element size when every
// tensor's base address is 16-byte aligned and H is a multiple of it (so
// every row start stays aligned in every dtype), else 1.
SDK_HD_INLINE int64_t row_vec_width(int64_t H, int64_t min_elem_size, bool bases_aligned) {
  const int64_t v = index::vec_width(min_elem_size);
  return (bases_aligned && H % v == 0) ? v : 1;
}

// Backward partials: `programs` blocks, each owns one fp32/fp64 partial row of
// H per parameter gradient; block b handles rows b, b + programs, ...  Every
// block writes its partial row, even one that got no row (zeros), and the
// reduction sums the partial rows 0, 1, ..., programs - 1 in that order.
SDK_HD_INLINE int64_t rows_of_program(int64_t b, int64_t programs, int64_t rows) {
  return b >= rows ? 0 : (rows - 1 - b) / programs + 1;
}

}  // namespace add_norm_index
}  // namespace sdkernels
