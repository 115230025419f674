// Test-only ops that run the add + norm CUDA kernels' index math
// (csrc/common/add_norm_index.h) on the host (tests/test_add_norm_index.py):
// the launch plan, the column each thread's chunk covers, the sample of a
// row, and the backward's rows per program.  Schemas: csrc/testing/hooks.cpp.
// No tensors in, so registered as CompositeExplicitAutograd.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "common/add_norm_index.h"

namespace sdkernels {
namespace {

namespace ai = ::sdkernels::add_norm_index;

// [vec, threads, chunks, streaming]
std::vector<int64_t> add_norm_plan_row(int64_t H, int64_t vec, int64_t max_chunks) {
  TORCH_CHECK_VALUE(H >= 1 && vec >= 1 && max_chunks >= 1, "H, vec and max_chunks must be >= 1");
  const ai::RowPlan p = ai::plan_row(H, vec, max_chunks);
  return {p.vec, p.threads, p.chunks, p.streaming ? 1 : 0};
}

// How many times each column of a row is visited by a block run with the plan of
// (H, vec, max_chunks): the register path (chunks c < plan.chunks of every thread) or the
// streaming path (c = 0, 1, ... while the column is < H).  int64 tensor [H].
at::Tensor add_norm_cover(int64_t H, int64_t vec, int64_t max_chunks) {
  TORCH_CHECK_VALUE(H >= 1 && H <= (int64_t{1} << 24) && vec >= 1 && H % vec == 0 && max_chunks >= 1,
                    "need 1 <= H <= 2^24, vec >= 1 dividing H, max_chunks >= 1");
  const ai::RowPlan p = ai::plan_row(H, vec, max_chunks);
  at::Tensor out = at::zeros({H}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t t = 0; t < p.threads; ++t) {
    for (int64_t c = 0;; ++c) {
      if (!p.streaming && c >= p.chunks) break;
      const int64_t col = ai::chunk_column(c, t, p.threads, p.vec);
      if (col >= H) break;
      for (int64_t j = 0; j < p.vec; ++j) o[col + j] += 1;
    }
  }
  return out;
}

std::vector<int64_t> add_norm_sample_of_row(at::IntArrayRef rows, int64_t H, int64_t inner, int64_t n) {
  TORCH_CHECK_VALUE(H >= 1 && inner >= 1 && n >= 1, "H, inner and n must be >= 1");
  std::vector<int64_t> out;
  out.reserve(rows.size());
  for (int64_t r : rows) out.push_back(ai::sample_of_row(r, H, inner, n));
  return out;
}

int64_t add_norm_row_vec_width(int64_t H, int64_t min_elem_size, bool aligned) {
  return ai::row_vec_width(H, min_elem_size, aligned);
}

std::vector<int64_t> add_norm_rows_of_program(int64_t programs, int64_t rows) {
  TORCH_CHECK_VALUE(programs >= 1 && programs <= (int64_t{1} << 20) && rows >= 0, "bad programs / rows");
  std::vector<int64_t> out;
  for (int64_t b = 0; b < programs; ++b) out.push_back(ai::rows_of_program(b, programs, rows));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels_testing, CompositeExplicitAutograd, m) {
  m.impl("add_norm_plan_row", &add_norm_plan_row);
  m.impl("add_norm_cover", &add_norm_cover);
  m.impl("add_norm_sample_of_row", &add_norm_sample_of_row);
  m.impl("add_norm_row_vec_width", &add_norm_row_vec_width);
  m.impl("add_norm_rows_of_program", &add_norm_rows_of_program);
}

}  // namespace sdkernels
