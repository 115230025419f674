// Test-only ops, kept out of the public sdkernels namespace: host-run copies of
// the CUDA kernels' index math, so CPU-only CI catches indexing bugs of the CUDA
// backend.  Called as torch.ops.sdkernels_testing.<name>.  Kernels:
// csrc/testing/index_math.cpp (core and LayerScale: tests/test_index_math.py,
// tests/test_layer_scale_index.py) and csrc/testing/add_norm_index.cpp (add + norm:
// tests/test_add_norm_index.py).
#include <torch/library.h>

TORCH_LIBRARY(sdkernels_testing, m) {
  // ---- core ops (csrc/common/drop_path_index.h) ----------------------------
  m.def("index_sample_of(int[] offsets, int inner, int n) -> int[]");
  m.def("index_vec_width(int[] elem_sizes) -> int");
  m.def("index_aligned(int[] addresses) -> bool");
  m.def("index_vec_plan(int numel, int inner, int n, int vec, bool aligned) -> int[]");
  m.def(
      "index_grid_blocks(int numel, int inner, int n, int vec, bool aligned, "
      "int nthreads, int max_blocks) -> int");
  m.def("index_cursor_walk(int start, int step, int count, int inner, int n) -> Tensor");
  m.def(
      "index_emulate(int numel, int inner, int n, int vec, bool aligned, int nblocks, "
      "int nthreads, int tid_begin=0, int tid_end=-1) -> Tensor[]");

  // ---- LayerScale (csrc/common/layer_scale.h) ------------------------------
  m.def(
      "index_emulate_ch(int numel, int inner, int n, int K, int C, int vec, bool aligned, "
      "int nblocks, int nthreads) -> Tensor[]");
  m.def(
      "index_ls_cols(int numel, int inner, int n, int K, int C, int vec, int nthreads, "
      "int max_blocks) -> Tensor[]");

  // ---- add + norm (csrc/common/add_norm_index.h) ---------------------------
  m.def("add_norm_plan_row(int H, int vec, int max_chunks) -> int[]");
  m.def("add_norm_cover(int H, int vec, int max_chunks) -> Tensor");
  m.def("add_norm_sample_of_row(int[] rows, int H, int inner, int n) -> int[]");
  m.def("add_norm_row_vec_width(int H, int min_elem_size, bool aligned) -> int");
  m.def("add_norm_rows_of_program(int programs, int rows) -> int[]");
}
