// CUDA kernels of the LayerScale ops (schemas in csrc/ops/layer_scale.cpp, row
// view and planning in csrc/common/layer_scale.h, spec in sdkernels/reference.py).
//
// Forward (scaled_residual_add_ls, sample_scale_ls): the grid-stride loop of
// the core ops (csrc/common/drop_path_index.h) with a second cursor that
// tracks the channel, 16-byte vectors, a dropped sample's branch never read,
// out = r + (b * g) * m with each multiply and the add rounded (mul_rn /
// add_rn: no FMA, bit for bit the reference and eager fp32).
//
// Backward (layer_scale_grads), on the [rows, len] row view:
//  - gamma per column (channel innermost): ls_grads_cols_kernel, a block of
//    ty rows x tx column vectors; grid (column tiles, row groups); each thread
//    accumulates its columns over its rows, the block adds its ty partial rows
//    in a fixed order and writes one partial per column for its group, every
//    group, also one with no rows (a grid larger than the rows must not leave
//    partials unwritten);
//  - gamma per row: ls_grads_rows_kernel, one warp per row, lanes along the
//    row, a fixed shuffle tree, one partial per row;
//  - ls_reduce_kernel: grad_gamma[c] = sum of the partials of c, in order.
// No atomics anywhere: the same inputs give the same bits.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "common/cuda_launch.cuh"
#include "common/cuda_vec.cuh"
#include "common/drop_path_index.h"
#include "common/kernel_types.h"
#include "common/layer_scale.h"
#include "common/sample_layout.h"

namespace sdkernels {
namespace {

namespace ix = ::sdkernels::index;
using namespace ::sdkernels::cuda_vec;
using namespace ::sdkernels::cuda_launch;

// ------------------------------------------------------------ forward ----

template <typename R, typename B, typename O, typename A, int VEC>
__global__ void __launch_bounds__(kThreads)
    residual_add_ls_kernel(const R* __restrict__ r, const B* __restrict__ b, O* __restrict__ o,
                           const void* __restrict__ scale, bool scale_f64, A alpha,
                           const A* __restrict__ gamma, ix::GridPlan g, ix::ChannelGrid ch) {
  ix::visit_thread_ch(
      g, ch, static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(threadIdx.x),
      [&](int64_t off, int64_t s, ix::RowCursor cc) {
        A m;
        const bool keep = multiplier(scale, scale_f64, s, alpha, m);
        A acc[VEC];
        load_vec<VEC>(r + off, acc);
        if (keep) {
          A bv[VEC];
          load_vec<VEC>(b + off, bv);
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            acc[j] = add_rn(acc[j], mul_rn(mul_rn(bv[j], __ldg(gamma + cc.s)), m));
            ix::cursor_next(cc, ch.K, ch.C);
          }
        }
        store_vec<VEC>(o + off, acc);
      },
      [&](int64_t i, int64_t s, ix::RowCursor cc) {
        A m;
        const bool keep = multiplier(scale, scale_f64, s, alpha, m);
        A v = static_cast<A>(r[i]);
        if (keep) v = add_rn(v, mul_rn(mul_rn(static_cast<A>(b[i]), __ldg(gamma + cc.s)), m));
        o[i] = static_cast<O>(v);
      });
}

template <typename X, typename O, typename A, int VEC>
__global__ void __launch_bounds__(kThreads)
    sample_scale_ls_kernel(const X* __restrict__ x, O* __restrict__ o, const void* __restrict__ scale,
                           bool scale_f64, A alpha, const A* __restrict__ gamma, ix::GridPlan g,
                           ix::ChannelGrid ch) {
  ix::visit_thread_ch(
      g, ch, static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(threadIdx.x),
      [&](int64_t off, int64_t s, ix::RowCursor cc) {
        A m;
        if (multiplier(scale, scale_f64, s, alpha, m)) {
          A v[VEC];
          load_vec<VEC>(x + off, v);
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            v[j] = mul_rn(mul_rn(v[j], __ldg(gamma + cc.s)), m);
            ix::cursor_next(cc, ch.K, ch.C);
          }
          store_vec<VEC>(o + off, v);
        } else {
          store_zeros<VEC>(o + off);
        }
      },
      [&](int64_t i, int64_t s, ix::RowCursor cc) {
        A m;
        if (multiplier(scale, scale_f64, s, alpha, m)) {
          o[i] = static_cast<O>(mul_rn(mul_rn(static_cast<A>(x[i]), __ldg(gamma + cc.s)), m));
        } else {
          o[i] = O(0);
        }
      });
}

// ----------------------------------------------------------- backward ----

// grad_branch of VEC elements at off (whole vector, or element by element when
// VEC == 1) and the gamma-gradient terms added to acc.
template <typename G, typename B, typename A, int VEC>
__device__ __forceinline__ void grads_vec(const G* __restrict__ go, const B* __restrict__ br,
                                          B* __restrict__ gb, int64_t off, const A (&g)[VEC], A m,
                                          A (&acc)[VEC]) {
  if constexpr (VEC == 1) {
    const A gv = static_cast<A>(go[off]);
    gb[off] = static_cast<B>(mul_rn(mul_rn(gv, g[0]), m));
    acc[0] = add_rn(acc[0], mul_rn(mul_rn(gv, m), static_cast<A>(br[off])));
  } else {
    A gv[VEC], bv[VEC];
    load_vec<VEC>(go + off, gv);
    load_vec<VEC>(br + off, bv);
    A out[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      out[j] = mul_rn(mul_rn(gv[j], g[j]), m);
      acc[j] = add_rn(acc[j], mul_rn(mul_rn(gv[j], m), bv[j]));
    }
    store_vec<VEC>(gb + off, out);
  }
}

template <typename G, typename B, typename A, int VEC>
__global__ void __launch_bounds__(kThreads)
    ls_grads_cols_kernel(const G* __restrict__ go, const B* __restrict__ br, B* __restrict__ gb,
                         const void* __restrict__ scale, bool scale_f64, A alpha,
                         const A* __restrict__ gamma, A* __restrict__ part, ix::LsRowView v,
                         ix::LsColsGrid cg) {
  __shared__ A red[kThreads * VEC];
  const int t = static_cast<int>(threadIdx.x);
  const ix::LsColsThread th = ix::ls_cols_thread(cg, v, static_cast<int64_t>(blockIdx.x),
                                                 static_cast<int64_t>(blockIdx.y), t);
  A acc[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) acc[j] = A(0);
  if (th.active) {
    A g[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) g[j] = th.col0 + j < v.len ? __ldg(gamma + th.col0 + j) : A(0);
    ix::RowCursor rc = ix::cursor_at(th.row0, v.s_div, v.n);
    const ix::CursorStep step = ix::make_step(cg.ty, v.s_div, v.n);
    for (int64_t row = th.row0; row < th.row_end; row += cg.ty) {
      const int64_t off = row * v.len + th.col0;
      A m;
      if (multiplier(scale, scale_f64, rc.s, alpha, m)) {
        if constexpr (VEC > 1) {
          grads_vec<G, B, A, VEC>(go, br, gb, off, g, m, acc);
        } else {
          if (th.col0 < v.len) grads_vec<G, B, A, 1>(go, br, gb, off, g, m, acc);
        }
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (th.col0 + j < v.len) gb[off + j] = B(0);
      }
      ix::cursor_advance(rc, step, v.s_div, v.n);
    }
  }
  // The block's ty partial rows, added in row-lane order by the first row lane.
#pragma unroll
  for (int j = 0; j < VEC; ++j) red[t * VEC + j] = acc[j];
  __syncthreads();
  if (th.active && th.lane_y == 0) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      A s = red[t * VEC + j];
      for (int64_t y = 1; y < cg.ty; ++y) s = add_rn(s, red[(y * cg.tx + th.lane_x) * VEC + j]);
      if (th.col0 + j < v.len) part[static_cast<int64_t>(blockIdx.y) * v.len + th.col0 + j] = s;
    }
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = add_rn(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}

template <typename G, typename B, typename A, int VEC>
__global__ void __launch_bounds__(kThreads)
    ls_grads_rows_kernel(const G* __restrict__ go, const B* __restrict__ br, B* __restrict__ gb,
                         const void* __restrict__ scale, bool scale_f64, A alpha,
                         const A* __restrict__ gamma, A* __restrict__ part, ix::LsRowView v) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t row = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32; row < v.rows;
       row += warps) {
    const int64_t base = row * v.len;
    A m;
    const bool keep = multiplier(scale, scale_f64, ix::row_sample(v, row), alpha, m);
    A sum = A(0);
    if (keep) {
      A g[VEC];
      const A gc = __ldg(gamma + ix::row_channel(v, row));
#pragma unroll
      for (int j = 0; j < VEC; ++j) g[j] = gc;
      A acc[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = A(0);
      for (int64_t k = static_cast<int64_t>(lane) * VEC; k < v.len; k += 32 * VEC)
        grads_vec<G, B, A, VEC>(go, br, gb, base + k, g, m, acc);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum = add_rn(sum, acc[j]);
    } else {
      for (int64_t k = lane; k < v.len; k += 32) gb[base + k] = B(0);
    }
    sum = warp_sum(sum);
    if (lane == 0) part[row] = sum;
  }
}

// grad[c] = sum over o, j of part[(o * C + c) * c_div + j], in this order.
template <typename A>
__global__ void __launch_bounds__(kThreads)
    ls_reduce_kernel(const A* __restrict__ part, A* __restrict__ grad, int64_t outer, int64_t C,
                     int64_t cdiv) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= C) return;
  A s = A(0);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < cdiv; ++j) s = add_rn(s, part[(o * C + c) * cdiv + j]);
  grad[c] = s;
}

// ------------------------------------------------------------- launch ----

ix::ChannelGrid channel_grid(const ix::GridPlan& g, const at::Tensor& out, int64_t cdim) {
  const int64_t C = out.size(cdim);
  return ix::plan_channels(g, C == 1 ? std::max<int64_t>(out.numel(), 1) : out.stride(cdim), C);
}

int64_t wrap_dims(const at::Tensor& t, int64_t sample_dim, int64_t channel_dim, int64_t* cdim) {
  const int64_t dim = wrap_sample_dim(sample_dim, t.dim());
  *cdim = wrap_channel_dim(channel_dim, t.dim(), dim);
  return dim;
}

template <typename R, typename B, typename O>
void launch_residual_add_ls(const LsPlan& P, double alpha, int64_t dim, int64_t cdim) {
  using A = typename acc_of<R, B, O>::type;
  constexpr int VEC = vec_of<R, B, O>();
  const R* rp = P.a.const_data_ptr<R>();
  const B* bp = P.b.const_data_ptr<B>();
  O* op = P.out.mutable_data_ptr<O>();
  const bool aligned = aligned16(rp) && aligned16(bp) && aligned16(op);
  auto kernel = residual_add_ls_kernel<R, B, O, A, VEC>;
  static BlocksCache cache;
  const int device = P.out.get_device();
  const ix::GridPlan g = plan_launch<VEC>(kernel, cache, plan_layout(P.out, dim), P.scale.numel() == 1,
                                          aligned, device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  kernel<<<static_cast<unsigned>(g.nblocks), kThreads, 0, stream>>>(
      rp, bp, op, P.scale.const_data_ptr(), P.scale.scalar_type() == at::kDouble, static_cast<A>(alpha),
      P.gamma.const_data_ptr<A>(), g, channel_grid(g, P.out, cdim));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename X, typename O>
void launch_sample_scale_ls(const LsPlan& P, double alpha, int64_t dim, int64_t cdim) {
  using A = typename acc_of<X, O>::type;
  constexpr int VEC = vec_of<X, O>();
  const X* xp = P.a.const_data_ptr<X>();
  O* op = P.out.mutable_data_ptr<O>();
  const bool aligned = aligned16(xp) && aligned16(op);
  auto kernel = sample_scale_ls_kernel<X, O, A, VEC>;
  static BlocksCache cache;
  const int device = P.out.get_device();
  const ix::GridPlan g = plan_launch<VEC>(kernel, cache, plan_layout(P.out, dim), P.scale.numel() == 1,
                                          aligned, device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  kernel<<<static_cast<unsigned>(g.nblocks), kThreads, 0, stream>>>(
      xp, op, P.scale.const_data_ptr(), P.scale.scalar_type() == at::kDouble, static_cast<A>(alpha),
      P.gamma.const_data_ptr<A>(), g, channel_grid(g, P.out, cdim));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The gamma-gradient partials and grad_branch; returns grad_gamma in the math dtype.
template <typename G, typename B, int VEC>
at::Tensor launch_grads_vec(const LsPlan& P, double alpha) {
  using A = typename acc_of<G, B>::type;
  const ix::LsRowView v = P.view;
  const G* gp = P.a.const_data_ptr<G>();
  const B* bp = P.b.const_data_ptr<B>();
  B* op = P.out.mutable_data_ptr<B>();
  const int device = P.out.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const void* sp = P.scale.const_data_ptr();
  const bool f64 = P.scale.scalar_type() == at::kDouble;
  const A* gam = P.gamma.const_data_ptr<A>();
  at::Tensor part;
  int64_t outer;
  if (v.gamma_cols) {
    auto kernel = ls_grads_cols_kernel<G, B, A, VEC>;
    static BlocksCache cache;
    const ix::LsColsGrid cg = ix::plan_ls_cols(v, VEC, kThreads, resident_blocks(kernel, device, cache));
    part = at::empty({cg.groups * v.len}, P.gamma.options());
    kernel<<<dim3(static_cast<unsigned>(cg.col_tiles), static_cast<unsigned>(cg.groups)), kThreads, 0, stream>>>(
        gp, bp, op, sp, f64, static_cast<A>(alpha), gam, part.mutable_data_ptr<A>(), v, cg);
    outer = cg.groups;
  } else {
    auto kernel = ls_grads_rows_kernel<G, B, A, VEC>;
    static BlocksCache cache;
    const int64_t blocks =
        ix::grid_blocks(v.rows, kThreads / 32, resident_blocks(kernel, device, cache));
    part = at::empty({v.rows}, P.gamma.options());
    kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        gp, bp, op, sp, f64, static_cast<A>(alpha), gam, part.mutable_data_ptr<A>(), v);
    outer = ix::ls_partial_outer(v, 0);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor grad = at::empty({v.C}, P.gamma.options());
  ls_reduce_kernel<A><<<static_cast<unsigned>(ix::ceil_div(v.C, kThreads)), kThreads, 0, stream>>>(
      part.const_data_ptr<A>(), grad.mutable_data_ptr<A>(), outer, v.C, v.c_div);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

template <typename G, typename B>
at::Tensor launch_layer_scale_grads(const LsPlan& P, double alpha) {
  constexpr int VEC = vec_of<G, B>();
  // 16-byte vectors when every row starts aligned: pointers aligned and len a multiple of VEC.
  const bool vec_ok = aligned16(P.a.const_data_ptr()) && aligned16(P.b.const_data_ptr()) &&
                      aligned16(P.out.const_data_ptr()) && P.view.len % VEC == 0;
  return vec_ok ? launch_grads_vec<G, B, VEC>(P, alpha) : launch_grads_vec<G, B, 1>(P, alpha);
}

// ------------------------------------------------------------ entry ops ----

#define SDK_DISPATCH_FLOAT(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor scaled_residual_add_ls_cuda(const at::Tensor& residual, const at::Tensor& branch,
                                       const at::Tensor& scale, const at::Tensor& gamma, int64_t sample_dim,
                                       int64_t channel_dim, double alpha) {
  check_backend(residual, "residual", at::kCUDA);
  const c10::cuda::CUDAGuard guard(residual.device());
  const LsPlan P = plan_residual_add_ls(residual, branch, scale, gamma, sample_dim, channel_dim);
  if (P.out.numel() == 0) return P.out;
  int64_t cdim;
  const int64_t dim = wrap_dims(residual, sample_dim, channel_dim, &cdim);
  SDK_DISPATCH_FLOAT(P.a.scalar_type(), "scaled_residual_add_ls_cuda", [&] {
    using R = scalar_t;
    SDK_DISPATCH_FLOAT(P.b.scalar_type(), "scaled_residual_add_ls_cuda", [&] {
      using B = scalar_t;
      dispatch_ls_out<R, B>(P.out.scalar_type(), [&](auto tag) {
        launch_residual_add_ls<R, B, decltype(tag)>(P, alpha, dim, cdim);
      });
    });
  });
  return P.out;
}

at::Tensor sample_scale_ls_cuda(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& gamma,
                                int64_t sample_dim, int64_t channel_dim, double alpha,
                                std::optional<at::ScalarType> dtype) {
  check_backend(x, "x", at::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const LsPlan P = plan_sample_scale_ls(x, scale, gamma, sample_dim, channel_dim, dtype);
  if (P.out.numel() == 0) return P.out;
  int64_t cdim;
  const int64_t dim = wrap_dims(x, sample_dim, channel_dim, &cdim);
  SDK_DISPATCH_FLOAT(P.a.scalar_type(), "sample_scale_ls_cuda", [&] {
    using X = scalar_t;
    SDK_DISPATCH_FLOAT(P.out.scalar_type(), "sample_scale_ls_cuda", [&] {
      launch_sample_scale_ls<X, scalar_t>(P, alpha, dim, cdim);
    });
  });
  return P.out;
}

std::tuple<at::Tensor, at::Tensor> layer_scale_grads_cuda(const at::Tensor& grad, const at::Tensor& branch,
                                                          const at::Tensor& scale, const at::Tensor& gamma,
                                                          int64_t sample_dim, int64_t channel_dim,
                                                          double alpha) {
  check_backend(grad, "grad", at::kCUDA);
  const c10::cuda::CUDAGuard guard(grad.device());
  const LsPlan P = plan_layer_scale_grads(grad, branch, scale, gamma, sample_dim, channel_dim);
  if (P.out.numel() == 0) return {P.out, at::zeros_like(gamma)};
  at::Tensor gg;
  SDK_DISPATCH_FLOAT(P.a.scalar_type(), "layer_scale_grads_cuda", [&] {
    using G = scalar_t;
    SDK_DISPATCH_FLOAT(P.b.scalar_type(), "layer_scale_grads_cuda", [&] {
      gg = launch_layer_scale_grads<G, scalar_t>(P, alpha);
    });
  });
  return {P.out, gg.to(gamma.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, CUDA, m) {
  m.impl("scaled_residual_add_ls", &scaled_residual_add_ls_cuda);
  m.impl("sample_scale_ls", &sample_scale_ls_cuda);
  m.impl("layer_scale_grads", &layer_scale_grads_cuda);
}

}  // namespace sdkernels
