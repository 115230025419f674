// Host-side layout planning shared by the CPU and CUDA kernels of the fused
// drop-path ops.  Every kernel sees its tensors as one dense memory block
// viewed as [outer, n, inner]: n samples along sample_dim, inner = the
// sample dim's stride (elements), outer = numel / (n * inner).  This holds
// for any dense, non-overlapping layout (contiguous, channels_last, seq-first
// with sample_dim=1, any permutation): for memory offset i,
// sample = (i / inner) % n.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace sdkernels {

struct SampleLayout {
  int64_t numel = 0;  // elements in the tensor
  int64_t n = 1;      // samples (size of sample_dim)
  int64_t inner = 1;  // contiguous elements per (outer, sample) row
};

// "[4, 5]" for error messages.  Messages here are built as one std::string
// (std::to_string, c10::toString) rather than by streaming integers, dtypes or
// an IntArrayRef into TORCH_CHECK: such a message thrown from the
// nvcc-compiled CUDA entry points crashed the process on an H200 (torch 2.11)
// instead of raising; the one-string form was checked to raise there.
inline std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(sizes[i]);
  }
  return s + "]";
}

// The shortest text that reads back as v ("1e-05", "-0.1", "nan") for error
// messages (snprintf: no stream in nvcc-compiled code).
inline std::string number_str(double v) {
  char buf[32];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

inline int64_t wrap_sample_dim(int64_t sample_dim, int64_t ndim) {
  TORCH_CHECK_INDEX(ndim >= 1, "sdkernels: a 0-dim tensor has no sample dim");
  TORCH_CHECK_INDEX(sample_dim >= -ndim && sample_dim < ndim,
                    "sdkernels: sample_dim " + std::to_string(sample_dim) +
                        " is out of range for a tensor of " + std::to_string(ndim) + " dims");
  return sample_dim < 0 ? sample_dim + ndim : sample_dim;
}

// `t` must be non-overlapping and dense (as empty_like gives for a dense input).
inline SampleLayout plan_layout(const at::Tensor& t, int64_t dim) {
  SampleLayout L;
  L.numel = t.numel();
  L.n = t.size(dim);
  if (L.numel == 0) return L;
  if (L.n == 1) {
    L.inner = L.numel;
  } else {
    L.inner = t.stride(dim);
  }
  TORCH_INTERNAL_ASSERT(L.inner >= 1 && L.numel % (L.n * L.inner) == 0,
                        "sdkernels: bad layout plan");
  return L;
}

// Whether a addresses memory exactly as b does: equal sizes and equal strides
// on every dim of size > 1 (strides of size-1 dims do not matter).  With b
// dense and non-overlapping, a then is too.
inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

// `src` laid out like the dense tensor `like`: itself when it already is,
// else a copy (the slow path for inputs whose layout differs from the
// output's).
inline at::Tensor match_strides(const at::Tensor& src, const at::Tensor& like) {
  if (same_layout(src, like)) return src;
  at::Tensor dst = at::empty_strided(like.sizes(), like.strides(), src.options());
  dst.copy_(src);
  return dst;
}

// Checks shared by every backend's entry point.  Error types follow PyTorch:
// ValueError for values and devices, TypeError for dtypes, IndexError for dims.

// A kernel's first tensor argument is on the kernel's own backend (`type`); a
// kernel reached with tensors of another device (an explicit redispatch, a
// meta tensor) refuses them before reading any memory.
inline void check_backend(const at::Tensor& t, const char* name, at::DeviceType type) {
  TORCH_CHECK_VALUE(t.device().type() == type, std::string("sdkernels: ") + name + " is on " + t.device().str() +
                                                   ", expected a " + c10::DeviceTypeName(type, /*lower_case=*/true) +
                                                   " tensor");
}

// Every other tensor argument is on the device of the first (as ATen requires).
inline void check_device(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, std::string("sdkernels: expected all tensors to be on the same device, but ") +
                                              name + " is on " + t.device().str() + " and the other inputs on " +
                                              device.str());
}
inline void check_float_dtype(at::ScalarType st, const char* name) {
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
                   std::string("sdkernels: ") + name +
                       " must be a floating-point type (float16, bfloat16, float32 or float64), got " +
                       c10::toString(st));
}

inline void check_float(const at::Tensor& t, const char* name) {
  check_float_dtype(t.scalar_type(), name);
}

// Two floating-point tensors of one shape on one device (the elementwise inputs of an op).
inline void check_pair(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  check_float(a, name_a);
  check_float(b, name_b);
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), std::string("sdkernels: ") + name_a + " and " + name_b +
                                                " must have the same shape, got " + shape_str(a.sizes()) +
                                                " and " + shape_str(b.sizes()));
  check_device(b, name_b, a.device());
}

inline at::Tensor checked_scale(const at::Tensor& scale, int64_t n,
                                const at::Device& device) {
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kDouble,
                   std::string("sdkernels: scale must be float32 or float64, got ") +
                       c10::toString(scale.scalar_type()));
  TORCH_CHECK_VALUE(scale.dim() <= 1 && (scale.numel() == n || scale.numel() == 1),
                    "sdkernels: scale must hold one value per sample (" + std::to_string(n) +
                        ") or a single value, got shape " + shape_str(scale.sizes()));
  check_device(scale, "scale", device);
  return scale.contiguous();
}

// One call's work, planned the same way by every backend: arguments checked,
// the output allocated (empty_like of the first input: its memory format),
// inputs in the output's layout (copied only when their layout differs), and
// the [outer, n, inner] view.  A CUDA caller sets its device guard first.
struct ResidualAddPlan {
  at::Tensor out, residual, branch, scale;
  SampleLayout layout;
};

inline ResidualAddPlan plan_residual_add(const at::Tensor& residual, const at::Tensor& branch,
                                         const at::Tensor& scale, int64_t sample_dim) {
  check_pair(residual, branch, "residual", "branch");
  const int64_t dim = wrap_sample_dim(sample_dim, residual.dim());
  ResidualAddPlan P;
  P.scale = checked_scale(scale, residual.size(dim), residual.device());
  const auto out_dtype = at::promote_types(residual.scalar_type(), branch.scalar_type());
  P.out = at::empty_like(residual, residual.options().dtype(out_dtype));
  if (P.out.numel() == 0) return P;
  P.residual = match_strides(residual, P.out);
  P.branch = match_strides(branch, P.out);
  P.layout = plan_layout(P.out, dim);
  return P;
}

struct SampleScalePlan {
  at::Tensor out, x, scale;
  SampleLayout layout;
};

inline SampleScalePlan plan_sample_scale(const at::Tensor& x, const at::Tensor& scale,
                                         int64_t sample_dim,
                                         std::optional<at::ScalarType> dtype) {
  check_float(x, "x");
  const auto out_dtype = dtype.has_value() ? *dtype : x.scalar_type();
  check_float_dtype(out_dtype, "dtype");
  const int64_t dim = wrap_sample_dim(sample_dim, x.dim());
  SampleScalePlan P;
  P.scale = checked_scale(scale, x.size(dim), x.device());
  P.out = at::empty_like(x, x.options().dtype(out_dtype));
  if (P.out.numel() == 0) return P;
  P.x = match_strides(x, P.out);
  P.layout = plan_layout(P.out, dim);
  return P;
}

}  // namespace sdkernels
