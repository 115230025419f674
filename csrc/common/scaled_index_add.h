// Host-side layout rules and argument checks shared by the CPU and CUDA
// kernels of the skip-path ops (scaled_index_add, index_scale; schemas in
// csrc/ops/skip.cpp).
//
// Layout.  A tensor of n samples is a dense block [outer, n, inner]
// (sample_layout.h).  Its k-sample partner (scaled_index_add's src,
// index_scale's output) has the same dims in the same memory order with k in
// place of n (samples_like), so it is [outer, k, inner] with the same outer
// and inner: row (o, j) of the partner pairs with row (o, index[j]).
// sdkernels/skip.py's fake kernels apply the same rule.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "common/sample_layout.h"

namespace sdkernels {
namespace skip {

// An empty dense tensor of `like`'s sizes with k samples along `dim`, its dims
// in `like`'s memory order (sorted by stride, largest first, ties by dim index).
inline at::Tensor samples_like(const at::Tensor& like, int64_t dim, int64_t k,
                               const at::TensorOptions& opts) {
  const int64_t nd = like.dim();
  std::vector<int64_t> perm(nd);
  std::iota(perm.begin(), perm.end(), 0);
  const auto st = like.strides();
  std::stable_sort(perm.begin(), perm.end(),
                   [&](int64_t a, int64_t b) { return st[a] > st[b]; });
  std::vector<int64_t> psizes(nd), inv(nd);
  for (int64_t i = 0; i < nd; ++i) {
    psizes[i] = perm[i] == dim ? k : like.size(perm[i]);
    inv[perm[i]] = i;
  }
  return at::empty(psizes, opts).permute(inv);
}

// samples_like's sizes and strides, without allocating: the sizes of `like` with k along `dim`, dense
// in `like`'s dim order (contiguous strides of the sorted sizes, each dim's stride the product of the
// sizes after it in that order, a size 0 counted as 1, as at::empty lays them out).
struct SamplesGeometry {
  c10::SmallVector<int64_t, 6> sizes, strides;
};
inline SamplesGeometry samples_like_geometry(const at::Tensor& like, int64_t dim, int64_t k) {
  const int64_t nd = like.dim();
  c10::SmallVector<int64_t, 6> perm(nd);
  std::iota(perm.begin(), perm.end(), 0);
  const auto st = like.strides();
  std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return st[a] > st[b]; });
  SamplesGeometry G;
  G.sizes.resize(nd);
  G.strides.resize(nd);
  int64_t stride = 1;
  for (int64_t i = nd - 1; i >= 0; --i) {
    const int64_t d = perm[i];
    const int64_t size = d == dim ? k : like.size(d);
    G.sizes[d] = size;
    G.strides[d] = stride;
    stride *= std::max<int64_t>(size, 1);
  }
  return G;
}

// Whether t addresses memory as a tensor of geometry G (same_layout's rule).
inline bool has_geometry(const at::Tensor& t, const SamplesGeometry& G) {
  if (t.sizes() != at::IntArrayRef(G.sizes)) return false;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (G.sizes[d] != 1 && t.stride(d) != G.strides[d]) return false;
  }
  return true;
}

// index: int64, 1-D, on `device` (values are checked by each backend).
inline void check_index_meta(const at::Tensor& index, const at::Device& device) {
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, std::string("sdkernels: index must be int64, got ") +
                                                      c10::toString(index.scalar_type()));
  TORCH_CHECK_VALUE(index.dim() == 1, "sdkernels: index must be 1-D, got shape ",
                    shape_str(index.sizes()));
  check_device(index, "index", device);
}

// scaled_index_add's arguments, all but index's values; returns sample_dim wrapped.
inline int64_t check_add_args(const at::Tensor& residual, const at::Tensor& src,
                              const at::Tensor& index, int64_t sample_dim) {
  check_float(residual, "residual");
  check_float(src, "src");
  check_float_dtype(residual.scalar_type(), "residual");
  check_float_dtype(src.scalar_type(), "src");
  check_device(src, "src", residual.device());
  const int64_t dim = wrap_sample_dim(sample_dim, residual.dim());
  TORCH_CHECK_VALUE(src.dim() == residual.dim(), "sdkernels: src must have residual's " +
                        std::to_string(residual.dim()) + " dims, got shape " + shape_str(src.sizes()));
  for (int64_t d = 0; d < residual.dim(); ++d) {
    TORCH_CHECK_VALUE(d == dim || src.size(d) == residual.size(d),
                      "sdkernels: src must match residual's shape except along sample_dim " +
                          std::to_string(dim) + ", got " + shape_str(src.sizes()) + " and " +
                          shape_str(residual.sizes()));
  }
  check_index_meta(index, residual.device());
  TORCH_CHECK_VALUE(src.size(dim) == index.numel(), "sdkernels: src has " + std::to_string(src.size(dim)) +
                        " samples along dim " + std::to_string(dim) + " but index has " +
                        std::to_string(index.numel()) + " entries");
  return dim;
}

// index_scale's arguments, all but index's values; returns sample_dim wrapped.
inline int64_t check_scale_args(const at::Tensor& grad, const at::Tensor& index,
                                int64_t sample_dim, at::ScalarType out_dtype) {
  check_float(grad, "grad");
  check_float_dtype(grad.scalar_type(), "grad");
  check_float_dtype(out_dtype, "dtype");
  const int64_t dim = wrap_sample_dim(sample_dim, grad.dim());
  check_index_meta(index, grad.device());
  return dim;
}

}  // namespace skip
}  // namespace sdkernels
