// Test-only ops that run the CUDA kernels' index math (csrc/common/
// drop_path_index.h, csrc/common/layer_scale.h) on the host, so CPU-only CI
// catches indexing bugs of the CUDA backend (tests/test_index_math.py,
// tests/test_layer_scale_index.py).  Schemas: csrc/testing/hooks.cpp.  They take
// no tensors, so they are registered as CompositeExplicitAutograd kernels
// (reached whatever the dispatch key set).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "common/drop_path_index.h"
#include "common/layer_scale.h"

namespace sdkernels {
namespace {

namespace ix = ::sdkernels::index;

void check_layout_args(int64_t numel, int64_t inner, int64_t n) {
  TORCH_CHECK_VALUE(numel >= 0, "numel must be >= 0, got ", numel);
  TORCH_CHECK_VALUE(inner >= 1, "inner must be >= 1, got ", inner);
  TORCH_CHECK_VALUE(n >= 1, "n must be >= 1, got ", n);
}

// sample_of for each offset.
std::vector<int64_t> index_sample_of(at::IntArrayRef offsets, int64_t inner, int64_t n) {
  check_layout_args(0, inner, n);
  std::vector<int64_t> out;
  out.reserve(offsets.size());
  for (int64_t o : offsets) {
    TORCH_CHECK_VALUE(o >= 0, "offsets must be >= 0, got ", o);
    out.push_back(ix::sample_of(o, inner, n));
  }
  return out;
}

// vec_width of the narrowest of the element sizes.
int64_t index_vec_width(at::IntArrayRef elem_sizes) {
  TORCH_CHECK_VALUE(!elem_sizes.empty(), "elem_sizes must not be empty");
  int64_t m = elem_sizes[0];
  for (int64_t s : elem_sizes) m = s < m ? s : m;
  return ix::vec_width(m);
}

// Whether every address is 16-byte aligned.
bool index_aligned(at::IntArrayRef addresses) {
  bool ok = true;
  for (int64_t a : addresses) ok = ok && ix::is_vector_aligned(static_cast<uint64_t>(a));
  return ok;
}

// [vectorized, row_aligned, vec, nvec, tail_start]
std::vector<int64_t> index_vec_plan(int64_t numel, int64_t inner, int64_t n, int64_t vec,
                                    bool aligned) {
  check_layout_args(numel, inner, n);
  TORCH_CHECK_VALUE(vec >= 1, "vec must be >= 1, got ", vec);
  const ix::VecPlan p = ix::plan_vectors(numel, inner, n, vec, aligned);
  return {p.vectorized, p.row_aligned, p.vec, p.nvec, p.tail_start};
}

// grid_blocks(work_items(plan), nthreads, max_blocks) for a plan.
int64_t index_grid_blocks(int64_t numel, int64_t inner, int64_t n, int64_t vec, bool aligned,
                          int64_t nthreads, int64_t max_blocks) {
  check_layout_args(numel, inner, n);
  TORCH_CHECK_VALUE(nthreads >= 1 && max_blocks >= 1, "nthreads and max_blocks must be >= 1");
  const ix::VecPlan p = ix::plan_vectors(numel, inner, n, vec, aligned);
  return ix::grid_blocks(ix::work_items(p), nthreads, max_blocks);
}

// A cursor started at `start` and advanced `count - 1` times by `step`
// (step 1 uses cursor_next): int64 tensor [count, 2] of (rem, s).
at::Tensor index_cursor_walk(int64_t start, int64_t step, int64_t count, int64_t inner,
                             int64_t n) {
  check_layout_args(0, inner, n);
  TORCH_CHECK_VALUE(start >= 0 && step >= 1 && count >= 0 && count <= (int64_t{1} << 24),
                    "bad start/step/count");
  at::Tensor out = at::empty({count, 2}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  ix::RowCursor c = ix::cursor_at(start, inner, n);
  const ix::CursorStep st = ix::make_step(step, inner, n);
  for (int64_t k = 0; k < count; ++k) {
    o[2 * k] = c.rem;
    o[2 * k + 1] = c.s;
    if (step == 1) {
      ix::cursor_next(c, inner, n);
    } else {
      ix::cursor_advance(c, st, inner, n);
    }
  }
  return out;
}

// Runs the kernel's grid-stride loop (visit_thread) for the global threads
// [tid_begin, tid_end) of a grid of nblocks x nthreads (tid_end < 0: all)
// and returns what they touched, in visiting order:
//   [vector start offsets, their samples, element offsets, their samples].
std::vector<at::Tensor> index_emulate(int64_t numel, int64_t inner, int64_t n, int64_t vec,
                                      bool aligned, int64_t nblocks, int64_t nthreads,
                                      int64_t tid_begin, int64_t tid_end) {
  check_layout_args(numel, inner, n);
  TORCH_CHECK_VALUE(vec >= 1, "vec must be >= 1, got ", vec);
  TORCH_CHECK_VALUE(nblocks >= 1 && nthreads >= 1, "nblocks and nthreads must be >= 1");
  const int64_t total = nblocks * nthreads;
  if (tid_end < 0 || tid_end > total) tid_end = total;
  TORCH_CHECK_VALUE(tid_begin >= 0 && tid_begin <= tid_end, "bad thread range");
  const ix::VecPlan p = ix::plan_vectors(numel, inner, n, vec, aligned);
  const ix::GridPlan g = ix::plan_grid(p, nblocks, nthreads);
  // Bound the work: this is for tests, not a copy of a large tensor.
  const int64_t per_thread = ix::ceil_div(ix::work_items(p), total) + p.vec;
  TORCH_CHECK_VALUE((tid_end - tid_begin) * per_thread <= (int64_t{1} << 26),
                    "emulation too large: ", tid_end - tid_begin, " threads x ", per_thread,
                    " items");
  std::vector<int64_t> vo, vs, eo, es;
  for (int64_t t = tid_begin; t < tid_end; ++t) {
    ix::visit_thread(
        g, t / nthreads, t % nthreads,
        [&](int64_t off, int64_t s) {
          vo.push_back(off);
          vs.push_back(s);
        },
        [&](int64_t off, int64_t s) {
          eo.push_back(off);
          es.push_back(s);
        });
  }
  auto to_tensor = [](const std::vector<int64_t>& v) {
    at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
    if (!v.empty()) std::memcpy(t.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
    return t;
  };
  return {to_tensor(vo), to_tensor(vs), to_tensor(eo), to_tensor(es)};
}

at::Tensor long_tensor(const std::vector<int64_t>& v) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  if (!v.empty()) std::memcpy(t.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
  return t;
}

// ---- LayerScale ----
// The forward kernels' loop (visit_thread_ch) over a grid of nblocks x nthreads:
// every element it touches, in visiting order, as [offsets, samples, channels],
// the channel stepped along a vector as the kernels step it.
std::vector<at::Tensor> index_emulate_ch(int64_t numel, int64_t inner, int64_t n, int64_t K, int64_t C,
                                         int64_t vec, bool aligned, int64_t nblocks, int64_t nthreads) {
  check_layout_args(numel, inner, n);
  TORCH_CHECK_VALUE(K >= 1 && C >= 1 && vec >= 1 && nblocks >= 1 && nthreads >= 1, "bad arguments");
  TORCH_CHECK_VALUE(numel <= (int64_t{1} << 24), "emulation too large");
  const ix::GridPlan g = ix::plan_grid(ix::plan_vectors(numel, inner, n, vec, aligned), nblocks, nthreads);
  const ix::ChannelGrid ch = ix::plan_channels(g, K, C);
  std::vector<int64_t> off, smp, chan;
  for (int64_t t = 0; t < nblocks * nthreads; ++t) {
    ix::visit_thread_ch(
        g, ch, t / nthreads, t % nthreads,
        [&](int64_t o, int64_t s, ix::RowCursor cc) {
          for (int64_t j = 0; j < g.v.vec; ++j) {
            off.push_back(o + j);
            smp.push_back(s);
            chan.push_back(cc.s);
            ix::cursor_next(cc, ch.K, ch.C);
          }
        },
        [&](int64_t o, int64_t s, ix::RowCursor cc) {
          off.push_back(o);
          smp.push_back(s);
          chan.push_back(cc.s);
        });
  }
  return {long_tensor(off), long_tensor(smp), long_tensor(chan)};
}

// The backward's gamma-per-column grid (plan_ls_rows, plan_ls_cols,
// ls_cols_thread, the row cursor) for a dense block: [element offsets visited,
// their samples, their gamma index, partial slots written, grid (col_tiles,
// groups, tx, ty)].  Empty lists when the view has gamma per row.
std::vector<at::Tensor> index_ls_cols(int64_t numel, int64_t inner, int64_t n, int64_t K, int64_t C,
                                      int64_t vec, int64_t nthreads, int64_t max_blocks) {
  check_layout_args(numel, inner, n);
  TORCH_CHECK_VALUE(numel >= 1 && numel <= (int64_t{1} << 24) && K >= 1 && C >= 1 && vec >= 1 &&
                        nthreads >= 1 && max_blocks >= 1, "bad arguments");
  const ix::LsRowView v = ix::plan_ls_rows(numel, inner, n, K, C);
  std::vector<int64_t> off, smp, gam, slots, grid;
  if (v.gamma_cols) {
    const ix::LsColsGrid g = ix::plan_ls_cols(v, vec, nthreads, max_blocks);
    grid = {g.col_tiles, g.groups, g.tx, g.ty};
    for (int64_t by = 0; by < g.groups; ++by)
      for (int64_t bx = 0; bx < g.col_tiles; ++bx)
        for (int64_t t = 0; t < nthreads; ++t) {
          const ix::LsColsThread th = ix::ls_cols_thread(g, v, bx, by, t);
          if (!th.active) continue;
          ix::RowCursor rc = ix::cursor_at(th.row0, v.s_div, v.n);
          const ix::CursorStep step = ix::make_step(g.ty, v.s_div, v.n);
          for (int64_t row = th.row0; row < th.row_end; row += g.ty) {
            for (int64_t j = 0; j < vec && th.col0 + j < v.len; ++j) {
              off.push_back(row * v.len + th.col0 + j);
              smp.push_back(rc.s);
              gam.push_back(th.col0 + j);
            }
            ix::cursor_advance(rc, step, v.s_div, v.n);
          }
          if (th.lane_y == 0)
            for (int64_t j = 0; j < vec && th.col0 + j < v.len; ++j) slots.push_back(by * v.len + th.col0 + j);
        }
  }
  return {long_tensor(off), long_tensor(smp), long_tensor(gam), long_tensor(slots), long_tensor(grid)};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels_testing, CompositeExplicitAutograd, m) {
  m.impl("index_emulate_ch", &index_emulate_ch);
  m.impl("index_ls_cols", &index_ls_cols);
  m.impl("index_sample_of", &index_sample_of);
  m.impl("index_vec_width", &index_vec_width);
  m.impl("index_aligned", &index_aligned);
  m.impl("index_vec_plan", &index_vec_plan);
  m.impl("index_grid_blocks", &index_grid_blocks);
  m.impl("index_cursor_walk", &index_cursor_walk);
  m.impl("index_emulate", &index_emulate);
}

}  // namespace sdkernels
