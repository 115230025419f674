// Index and tail math of the CUDA drop-path kernels (csrc/cuda/drop_path.cu),
// written as __host__ __device__ code so the CPU test hooks
// (csrc/cpu/index_math_hooks.cpp, tests/test_index_math.py) run exactly the
// functions the GPU runs.  Plain C++ when not compiled by nvcc.
//
// Model.  A kernel sees its tensors as one dense memory block of `numel`
// elements viewed as [outer, n, inner] (csrc/common/sample_layout.h): memory
// offset i belongs to sample (i / inner) % n.  With one scale for every
// sample, n is 1 and the sample is always 0.
//
// Work split.  When every pointer is 16-byte aligned the block is cut into
// `nvec` vectors of `vec` elements (vec = 16 bytes / narrowest element size,
// so each access of the narrowest dtype is one 16-byte load or store and a
// wider dtype takes several), then a scalar tail [tail_start, numel) of fewer
// than `vec` elements.  A vector that would straddle two sample rows (only
// possible when inner % vec != 0) is done element by element instead, so a
// vector access never spans two samples and a dropped sample's branch is
// never read.  Unaligned pointers: everything is scalar (nvec = 0).
//
// Grid-stride loop.  Thread t of the grid (t = block * nthreads + thread)
// takes vectors t, t + T, t + 2T, ... (T = nblocks * nthreads) and then tail
// elements tail_start + t, tail_start + t + T, ...  The sample of the current
// position is tracked by a RowCursor that advances by a fixed step with adds
// and compares only: one 64-bit division per thread to start, none per
// element (a 64-bit division costs dozens of instructions on a GPU).
//
// All counts and offsets are int64_t: nothing here overflows for tensors of
// up to 2^62 elements.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SDK_HD __host__ __device__
#define SDK_HD_INLINE __host__ __device__ __forceinline__
#else
#define SDK_HD
#define SDK_HD_INLINE inline
#endif

namespace sdkernels {
namespace index {

// Bytes of one vector access.
constexpr int64_t kVectorBytes = 16;
// Largest grid.x a launch may use.
constexpr int64_t kMaxGridX = 2147483647;

SDK_HD_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elements per 16-byte access of the narrowest dtype (its size in bytes).
// 1 (scalar only) for sizes that do not divide 16.
SDK_HD_INLINE int64_t vec_width(int64_t min_elem_size) {
  return (min_elem_size >= 1 && min_elem_size <= kVectorBytes &&
          kVectorBytes % min_elem_size == 0)
             ? kVectorBytes / min_elem_size
             : 1;
}

// Whether an address is a multiple of kVectorBytes.
SDK_HD_INLINE bool is_vector_aligned(uint64_t address) {
  return address % static_cast<uint64_t>(kVectorBytes) == 0;
}

// The sample that memory offset `offset` belongs to (n <= 1: always 0).
SDK_HD_INLINE int64_t sample_of(int64_t offset, int64_t inner, int64_t n) {
  return n <= 1 ? 0 : (offset / inner) % n;
}

// How one tensor is split into vectors and a scalar tail.
struct VecPlan {
  int64_t numel;       // elements in the block
  int64_t inner;       // elements per sample row (>= 1)
  int64_t n;           // samples (1: one scale for all)
  int64_t vec;         // elements per vector (1 when not vectorized)
  int64_t nvec;        // full vectors, covering [0, nvec * vec)
  int64_t tail_start;  // first element of the scalar tail (= nvec * vec)
  bool vectorized;     // nvec > 0
  bool row_aligned;    // no vector can straddle a sample row (n == 1 or inner % vec == 0)
};

// numel >= 0, inner >= 1, n >= 1, vec >= 1; `aligned`: every pointer the
// kernel touches is 16-byte aligned.
SDK_HD_INLINE VecPlan plan_vectors(int64_t numel, int64_t inner, int64_t n, int64_t vec,
                                   bool aligned) {
  VecPlan p;
  p.numel = numel;
  p.n = n < 1 ? 1 : n;
  p.inner = inner < 1 ? 1 : inner;
  const bool use_vec = aligned && vec > 1 && numel >= vec;
  p.vec = use_vec ? vec : 1;
  p.nvec = use_vec ? numel / vec : 0;
  p.tail_start = p.nvec * p.vec;
  p.vectorized = p.nvec > 0;
  p.row_aligned = p.n == 1 || p.inner % p.vec == 0;
  return p;
}

// Position of a thread's cursor: offset % inner and the offset's sample.
struct RowCursor {
  int64_t rem;  // offset % inner
  int64_t s;    // (offset / inner) % n
};

// A fixed advance of the cursor, precomputed on the host.
struct CursorStep {
  int64_t d_rem;  // step % inner
  int64_t d_s;    // (step / inner) % n
};

SDK_HD_INLINE RowCursor cursor_at(int64_t offset, int64_t inner, int64_t n) {
  RowCursor c;
  c.rem = offset % inner;
  c.s = (offset / inner) % n;
  return c;
}

SDK_HD_INLINE CursorStep make_step(int64_t step, int64_t inner, int64_t n) {
  CursorStep st;
  st.d_rem = step % inner;
  st.d_s = (step / inner) % n;
  return st;
}

// Moves the cursor forward by the step `st` was made for.  rem + d_rem <
// 2 * inner and s + d_s + 1 < 2 * n, so one conditional subtraction each.
SDK_HD_INLINE void cursor_advance(RowCursor& c, const CursorStep& st, int64_t inner, int64_t n) {
  c.rem += st.d_rem;
  c.s += st.d_s;
  if (c.rem >= inner) {
    c.rem -= inner;
    c.s += 1;
  }
  if (c.s >= n) c.s -= n;
}

// Moves the cursor forward by one element.
SDK_HD_INLINE void cursor_next(RowCursor& c, int64_t inner, int64_t n) {
  if (++c.rem == inner) {
    c.rem = 0;
    if (++c.s == n) c.s = 0;
  }
}

// Whether the vector starting at the cursor lies inside one sample row.
SDK_HD_INLINE bool vector_in_row(const VecPlan& p, const RowCursor& c) {
  return p.row_aligned || c.rem + p.vec <= p.inner;
}

// A launch: the vector plan, the grid, and the cursor steps of its loops.
struct GridPlan {
  VecPlan v;
  int64_t nblocks;
  int64_t nthreads;
  CursorStep vec_step;     // nblocks * nthreads * vec elements
  CursorStep scalar_step;  // nblocks * nthreads elements
};

// Grid-stride loop iterations the grid must cover: vectors and tail elements
// are taken by the same threads, so the larger of the two counts.
SDK_HD_INLINE int64_t work_items(const VecPlan& p) {
  const int64_t tail = p.numel - p.tail_start;
  return p.nvec > tail ? p.nvec : tail;
}

// Blocks of a launch: enough for one item per thread, at most `max_blocks`
// (the blocks the device holds at once: a grid-stride loop does the rest),
// at least 1, never above the grid.x limit.
SDK_HD_INLINE int64_t grid_blocks(int64_t work, int64_t nthreads, int64_t max_blocks) {
  int64_t b = ceil_div(work, nthreads);
  if (b > max_blocks) b = max_blocks;
  if (b > kMaxGridX) b = kMaxGridX;
  if (b < 1) b = 1;
  return b;
}

SDK_HD_INLINE GridPlan plan_grid(const VecPlan& v, int64_t nblocks, int64_t nthreads) {
  GridPlan g;
  g.v = v;
  g.nblocks = nblocks;
  g.nthreads = nthreads;
  const int64_t total = nblocks * nthreads;
  g.vec_step = make_step(total * v.vec, v.inner, v.n);
  g.scalar_step = make_step(total, v.inner, v.n);
  return g;
}

// A second cursor for the LayerScale kernels (csrc/cuda/layer_scale.cu): the
// channel c = (offset / K) % C of the current position, K being the channel
// dim's stride (K = numel, C = 1 when there is one channel), advanced with
// the same adds and compares as the sample cursor.
struct ChannelGrid {
  int64_t K;
  int64_t C;
  CursorStep vec_step;     // as GridPlan's, for (K, C)
  CursorStep scalar_step;
};

SDK_HD_INLINE ChannelGrid plan_channels(const GridPlan& g, int64_t K, int64_t C) {
  ChannelGrid c;
  c.K = K < 1 ? 1 : K;
  c.C = C < 1 ? 1 : C;
  const int64_t total = g.nblocks * g.nthreads;
  c.vec_step = make_step(total * g.v.vec, c.K, c.C);
  c.scalar_step = make_step(total, c.K, c.C);
  return c;
}

// The grid-stride loop of thread `thread` of block `block`.  Calls
//   vec_fn(offset, s)   for each whole vector [offset, offset + vec) of sample s,
//   elem_fn(offset, s)  for each element done alone (straddling vectors, tail),
// visiting, over all threads of the grid, every element of [0, numel) once.
// With kChannel (visit_thread_ch) both also get the channel cursor of
// `offset` (its .s is the channel; step it along a vector with cursor_next).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <bool kChannel, typename VecFn, typename ElemFn>
SDK_HD_INLINE void visit_thread_impl(const GridPlan& g, const ChannelGrid& ch, int64_t block,
                                     int64_t thread, VecFn&& vec_fn, ElemFn&& elem_fn) {
  const VecPlan& p = g.v;
  const int64_t tid = block * g.nthreads + thread;
  const int64_t total = g.nblocks * g.nthreads;
  if (tid < p.nvec) {
    RowCursor c = cursor_at(tid * p.vec, p.inner, p.n);
    RowCursor cc{0, 0};
    if constexpr (kChannel) cc = cursor_at(tid * p.vec, ch.K, ch.C);
    for (int64_t w = tid; w < p.nvec; w += total) {
      const int64_t off = w * p.vec;
      if (vector_in_row(p, c)) {
        if constexpr (kChannel) {
          vec_fn(off, c.s, cc);
        } else {
          vec_fn(off, c.s);
        }
      } else {
        RowCursor e = c;
        RowCursor ec = cc;
        for (int64_t j = 0; j < p.vec; ++j) {
          if constexpr (kChannel) {
            elem_fn(off + j, e.s, ec);
            cursor_next(ec, ch.K, ch.C);
          } else {
            elem_fn(off + j, e.s);
          }
          cursor_next(e, p.inner, p.n);
        }
      }
      cursor_advance(c, g.vec_step, p.inner, p.n);
      if constexpr (kChannel) cursor_advance(cc, ch.vec_step, ch.K, ch.C);
    }
  }
  const int64_t first = p.tail_start + tid;
  if (first < p.numel) {
    RowCursor c = cursor_at(first, p.inner, p.n);
    RowCursor cc{0, 0};
    if constexpr (kChannel) cc = cursor_at(first, ch.K, ch.C);
    for (int64_t i = first; i < p.numel; i += total) {
      if constexpr (kChannel) {
        elem_fn(i, c.s, cc);
        cursor_advance(cc, ch.scalar_step, ch.K, ch.C);
      } else {
        elem_fn(i, c.s);
      }
      cursor_advance(c, g.scalar_step, p.inner, p.n);
    }
  }
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename VecFn, typename ElemFn>
SDK_HD_INLINE void visit_thread(const GridPlan& g, int64_t block, int64_t thread, VecFn&& vec_fn,
                                ElemFn&& elem_fn) {
  const ChannelGrid none{1, 1, {0, 0}, {0, 0}};
  visit_thread_impl<false>(g, none, block, thread, vec_fn, elem_fn);
}

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename VecFn, typename ElemFn>
SDK_HD_INLINE void visit_thread_ch(const GridPlan& g, const ChannelGrid& ch, int64_t block,
                                   int64_t thread, VecFn&& vec_fn, ElemFn&& elem_fn) {
  visit_thread_impl<true>(g, ch, block, thread, vec_fn, elem_fn);
}

}  // namespace index
}  // namespace sdkernels
