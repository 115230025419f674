// Host-side planning of the add + norm ops, shared by the CPU and
// CUDA kernels: argument checks, output allocation and the row layout.
//
//   x = residual + (branch * gamma[h]) * (scale[s] * alpha)   kept sample s (gamma optional)
//   x = residual                                              dropped sample s (branch unread)
//   h = norm(x as stored) * weight + bias over the last dim H  (LayerNorm, or RMSNorm when rms)
//
// Rows are the H contiguous elements of the last dim, in memory order.  x is
// allocated like residual (empty_like) when that keeps the last dim
// contiguous and dense, else contiguous; h, the backward's gradients and
// every activation input are put in x's layout (copied only when they differ).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>

#include "common/add_norm_index.h"
#include "common/sample_layout.h"

namespace sdkernels {

struct AddNormLayout {
  int64_t rows = 0;   // numel / H
  int64_t H = 0;      // row length
  int64_t n = 1;      // samples (1: one scale for all)
  int64_t inner = 1;  // the sample dim's stride in x
};

inline bool any_double(std::initializer_list<at::ScalarType> dts) {
  for (auto d : dts)
    if (d == at::kDouble) return true;
  return false;
}

// weight / bias / gamma: None, or a float tensor of shape (H,) on `device`.
inline at::Tensor checked_param(const std::optional<at::Tensor>& t, const char* name, int64_t H,
                                const at::Device& device) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_float(*t, name);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == H,
                    std::string("sdkernels: ") + name + " must have shape (" + std::to_string(H) +
                        ",) (the normalized last dim), got " + shape_str(t->sizes()));
  check_device(*t, name, device);
  return t->contiguous();
}

// The layout of x (dense, last dim contiguous) for a sample dim.
inline AddNormLayout plan_rows(const at::Tensor& x, int64_t dim, int64_t scale_numel) {
  AddNormLayout L;
  L.H = x.size(-1);
  L.rows = L.H == 0 ? 0 : x.numel() / L.H;
  L.n = scale_numel == 1 ? 1 : x.size(dim);
  L.inner = L.n > 1 ? x.stride(dim) : 1;
  TORCH_INTERNAL_ASSERT(L.n <= 1 || (L.inner >= L.H && L.inner % std::max<int64_t>(L.H, 1) == 0),
                        "sdkernels: bad add_norm layout");
  return L;
}

// x's allocation: residual's dense layout when its last dim is contiguous, else contiguous.
inline at::Tensor norm_out_like(const at::Tensor& residual, at::ScalarType dtype) {
  at::Tensor x = at::empty_like(residual, residual.options().dtype(dtype));
  if (x.dim() >= 1 && x.size(-1) > 1 && x.stride(-1) != 1) {
    x = at::empty(residual.sizes(), residual.options().dtype(dtype));
  }
  return x;
}

// An empty tensor of x's sizes and strides.
inline at::Tensor empty_in_layout(const at::Tensor& x, at::ScalarType dtype) {
  return at::empty_strided(x.sizes(), x.strides(), x.options().dtype(dtype));
}

// alpha finite; eps finite and >= 0 (a negative or NaN eps would make every row NaN).
inline void check_add_norm_scalars(double alpha, std::optional<double> eps) {
  TORCH_CHECK_VALUE(std::isfinite(alpha), "sdkernels: alpha must be finite, got " + number_str(alpha));
  if (eps.has_value()) {
    TORCH_CHECK_VALUE(std::isfinite(*eps) && *eps >= 0.0,
                      "sdkernels: eps must be a finite number >= 0, got " + number_str(*eps));
  }
}

inline int64_t check_add_norm_dims(const at::Tensor& t, int64_t sample_dim) {
  TORCH_CHECK_VALUE(t.dim() >= 2,
                    "sdkernels: add_norm needs at least 2 dims (samples, ..., the normalized last dim), got " +
                        std::to_string(t.dim()));
  const int64_t dim = wrap_sample_dim(sample_dim, t.dim());
  TORCH_CHECK_VALUE(dim != t.dim() - 1,
                    "sdkernels: sample_dim must not be the normalized last dim (" + std::to_string(sample_dim) +
                        " of " + std::to_string(t.dim()) + " dims)");
  return dim;
}

struct AddNormPlan {
  at::Tensor x, h, mean, rstd;                // outputs (mean has 0 elements for rms)
  at::Tensor residual, branch;                // inputs in x's layout
  at::Tensor scale, weight, bias, gamma;      // contiguous; undefined when absent
  AddNormLayout layout;
  bool acc64 = false;
};

inline AddNormPlan plan_add_norm(const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& scale,
                                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& gamma, int64_t sample_dim, double alpha,
                                 double eps, bool rms, std::optional<at::ScalarType> out_dtype) {
  check_add_norm_scalars(alpha, eps);
  check_float(residual, "residual");
  check_float(branch, "branch");
  TORCH_CHECK_VALUE(residual.sizes() == branch.sizes(),
                    "sdkernels: residual and branch must have the same shape, got " +
                        shape_str(residual.sizes()) + " and " + shape_str(branch.sizes()));
  check_device(branch, "branch", residual.device());
  const int64_t dim = check_add_norm_dims(residual, sample_dim);
  const int64_t H = residual.size(-1);
  AddNormPlan P;
  P.scale = checked_scale(scale, residual.size(dim), residual.device());
  P.weight = checked_param(weight, "weight", H, residual.device());
  P.bias = checked_param(bias, "bias", H, residual.device());
  P.gamma = checked_param(gamma, "gamma", H, residual.device());
  auto xdt = at::promote_types(residual.scalar_type(), branch.scalar_type());
  if (P.gamma.defined()) xdt = at::promote_types(xdt, P.gamma.scalar_type());
  const auto hdt = out_dtype.has_value() ? *out_dtype : xdt;
  check_float_dtype(hdt, "out_dtype");
  P.acc64 = any_double({xdt, hdt, residual.scalar_type(), branch.scalar_type(),
                        P.gamma.defined() ? P.gamma.scalar_type() : at::kFloat,
                        P.weight.defined() ? P.weight.scalar_type() : at::kFloat,
                        P.bias.defined() ? P.bias.scalar_type() : at::kFloat});
  const auto acc = P.acc64 ? at::kDouble : at::kFloat;
  P.x = norm_out_like(residual, xdt);
  P.h = empty_in_layout(P.x, hdt);
  P.layout = plan_rows(P.x, dim, P.scale.numel());
  P.rstd = at::empty({P.layout.rows}, residual.options().dtype(acc));
  P.mean = at::empty({rms ? 0 : P.layout.rows}, residual.options().dtype(acc));
  if (P.x.numel() == 0) {
    P.rstd.zero_();
    P.mean.zero_();
    return P;
  }
  P.residual = match_strides(residual, P.x);
  P.branch = match_strides(branch, P.x);
  return P;
}

struct AddNormBackwardPlan {
  at::Tensor grad_residual, grad_branch, grad_weight, grad_bias, grad_gamma;  // outputs (0 elements: not wanted)
  at::Tensor grad_x, grad_h, x, branch;       // activations in x's layout (grad_x, branch: may be undefined)
  at::Tensor mean, rstd, scale, weight, gamma;
  AddNormLayout layout;
  bool acc64 = false;
};

inline AddNormBackwardPlan plan_add_norm_backward(
    const std::optional<at::Tensor>& grad_x, const at::Tensor& grad_h, const at::Tensor& x, const at::Tensor& mean,
    const at::Tensor& rstd, const at::Tensor& scale, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& branch, int64_t sample_dim,
    double alpha, bool rms, at::ScalarType residual_dtype, at::ScalarType branch_dtype,
    std::optional<at::ScalarType> weight_dtype, std::optional<at::ScalarType> bias_dtype) {
  check_add_norm_scalars(alpha, std::nullopt);
  check_float(x, "x");
  check_float(grad_h, "grad_h");
  check_device(grad_h, "grad_h", x.device());
  check_float_dtype(residual_dtype, "residual_dtype");
  check_float_dtype(branch_dtype, "branch_dtype");
  TORCH_CHECK_VALUE(grad_h.sizes() == x.sizes(), "sdkernels: grad_h must have x's shape " + shape_str(x.sizes()) +
                                                     ", got " + shape_str(grad_h.sizes()));
  const int64_t dim = check_add_norm_dims(x, sample_dim);
  const int64_t H = x.size(-1);
  AddNormBackwardPlan P;
  P.scale = checked_scale(scale, x.size(dim), x.device());
  P.weight = checked_param(weight, "weight", H, x.device());
  P.gamma = checked_param(gamma, "gamma", H, x.device());
  const bool want_gamma = branch.has_value() && branch->defined();
  TORCH_CHECK_VALUE(!want_gamma || P.gamma.defined(), "sdkernels: branch is given (for gamma's gradient) without gamma");
  // x as the forward wrote it: dense with a contiguous last dim (a copy otherwise).
  at::Tensor like = norm_out_like(x, x.scalar_type());
  P.x = match_strides(x, like);
  P.layout = plan_rows(P.x, dim, P.scale.numel());
  // The forward's math dtype, recorded in rstd's dtype; mean comes from the same forward.
  TORCH_CHECK_TYPE(rstd.scalar_type() == at::kFloat || rstd.scalar_type() == at::kDouble,
                   std::string("sdkernels: rstd must be float32 or float64, got ") + c10::toString(rstd.scalar_type()));
  TORCH_CHECK_TYPE(mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble,
                   std::string("sdkernels: mean must be float32 or float64, got ") + c10::toString(mean.scalar_type()));
  check_device(rstd, "rstd", x.device());
  check_device(mean, "mean", x.device());
  P.acc64 = rstd.scalar_type() == at::kDouble;
  const auto stat = rstd.scalar_type();
  TORCH_CHECK_VALUE(rstd.dim() == 1 && rstd.size(0) == P.layout.rows,
                    "sdkernels: rstd must hold one value per row (" + std::to_string(P.layout.rows) + "), got " +
                        shape_str(rstd.sizes()));
  TORCH_CHECK_VALUE(rms || (mean.dim() == 1 && mean.size(0) == P.layout.rows),
                    "sdkernels: mean must hold one value per row (" + std::to_string(P.layout.rows) + "), got " +
                        shape_str(mean.sizes()));
  P.rstd = rstd.contiguous();
  P.mean = rms ? at::Tensor() : mean.to(stat).contiguous();
  P.grad_h = match_strides(grad_h, P.x);
  if (grad_x.has_value() && grad_x->defined()) {
    check_float(*grad_x, "grad_x");
    check_device(*grad_x, "grad_x", x.device());
    TORCH_CHECK_VALUE(grad_x->sizes() == x.sizes(), "sdkernels: grad_x must have x's shape " +
                                                        shape_str(x.sizes()) + ", got " +
                                                        shape_str(grad_x->sizes()));
    P.grad_x = match_strides(*grad_x, P.x);
  }
  if (want_gamma) {
    check_float(*branch, "branch");
    check_device(*branch, "branch", x.device());
    TORCH_CHECK_VALUE(branch->sizes() == x.sizes(), "sdkernels: branch must have x's shape " +
                                                        shape_str(x.sizes()) + ", got " +
                                                        shape_str(branch->sizes()));
    P.branch = match_strides(*branch, P.x);
  }
  P.grad_residual = empty_in_layout(P.x, residual_dtype);
  P.grad_branch = empty_in_layout(P.x, branch_dtype);
  auto param_out = [&](std::optional<at::ScalarType> dt) {
    if (!dt.has_value()) return at::empty({0}, x.options());
    check_float_dtype(*dt, "a parameter dtype");
    return at::empty({H}, x.options().dtype(*dt));
  };
  P.grad_weight = param_out(weight_dtype);
  P.grad_bias = param_out(bias_dtype);
  P.grad_gamma = want_gamma ? at::empty({H}, x.options().dtype(P.gamma.scalar_type())) : at::empty({0}, x.options());
  return P;
}

}  // namespace sdkernels
