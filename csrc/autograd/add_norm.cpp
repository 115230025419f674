// Autograd of the add + norm ops (schemas in csrc/ops/add_norm.cpp).
//
// sdkernels::add_norm under the Autograd key.  Saves x (the op's own output,
// alive anyway as the next block's input), mean and rstd (one value per row),
// the per-sample scale, weight, bias and gamma, and branch only when gamma
// needs its gradient (eager LayerScale keeps it alive for that too).  The
// backward is one sdkernels::add_norm_backward pass; with create_graph (double
// backward) the same gradients come from differentiable ATen ops instead: the
// formula of sdkernels.reference.add_norm_backward (which the Triton twin calls
// from Python), here in C++ to keep Python off the C++ ops' path.
// add_norm_backward itself is not differentiable.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>

#include "autograd/common.h"

namespace sdkernels {
namespace {

using namespace ::sdkernels::autograd;

using AddNormOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using AddNormGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

AddNormOut call_add_norm(const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& scale,
                         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& gamma, int64_t sample_dim, double alpha, double eps,
                         bool rms, std::optional<at::ScalarType> out_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::add_norm", "")
                       .typed<AddNormOut(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, int64_t, double, double, bool,
                                         std::optional<at::ScalarType>)>();
  return op.call(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype);
}

AddNormGrads call_add_norm_backward(const std::optional<at::Tensor>& grad_x, const at::Tensor& grad_h,
                                    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                                    const at::Tensor& scale, const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& branch,
                                    int64_t sample_dim, double alpha, bool rms, at::ScalarType residual_dtype,
                                    at::ScalarType branch_dtype, std::optional<at::ScalarType> weight_dtype,
                                    std::optional<at::ScalarType> bias_dtype) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("sdkernels::add_norm_backward", "")
          .typed<AddNormGrads(const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                              const std::optional<at::Tensor>&, int64_t, double, bool, at::ScalarType,
                              at::ScalarType, std::optional<at::ScalarType>, std::optional<at::ScalarType>)>();
  return op.call(grad_x, grad_h, x, mean, rstd, scale, weight, gamma, branch, sample_dim, alpha, rms,
                 residual_dtype, branch_dtype, weight_dtype, bias_dtype);
}

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The per-sample multiplier m[s] = scale[s] * alpha as a view broadcasting along x's sample dim.
at::Tensor sample_view(const at::Tensor& scale, const at::Tensor& x, int64_t dim, at::ScalarType acc) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[dim] = scale.numel() == 1 ? 1 : x.size(dim);
  return scale.to(acc).reshape(shape);
}

// Differentiable gradients (create_graph): the formula of sdkernels.reference.add_norm_backward
// in ATen ops.  Returns (dx, dx * m[s] on kept samples and 0 on dropped ones, grad_weight,
// grad_bias) in the math dtype; x is the saved output, so the graph reaches residual and
// branch through it.  (No nested autograd.grad: x's node also has weight as an input, so an
// inner graph through x would re-enter this node.)
variable_list add_norm_grads_composite(const at::Tensor& gx, const at::Tensor& gh, const at::Tensor& x,
                                       const at::Tensor& scale, const at::Tensor& weight, int64_t dim,
                                       double alpha, double eps, bool rms, at::ScalarType acc) {
  const at::Tensor xa = x.to(acc);
  at::Tensor xhat, rstd;
  if (rms) {
    rstd = at::rsqrt((xa * xa).mean(-1, /*keepdim=*/true) + eps);
    xhat = xa * rstd;
  } else {
    const at::Tensor d = xa - xa.mean(-1, /*keepdim=*/true);
    rstd = at::rsqrt((d * d).mean(-1, /*keepdim=*/true) + eps);
    xhat = d * rstd;
  }
  const at::Tensor g = gh.to(acc);
  const at::Tensor dy = weight.defined() ? g * weight.to(acc) : g;
  const at::Tensor c1 = (dy * xhat).mean(-1, /*keepdim=*/true);
  const at::Tensor u = rms ? dy - xhat * c1 : dy - dy.mean(-1, /*keepdim=*/true) - xhat * c1;
  at::Tensor dx = rstd * u;
  if (gx.defined()) dx = dx + gx.to(acc);
  const at::Tensor s = sample_view(scale, x, dim, acc);
  const at::Tensor dxm = at::where(s != 0, dx * (s * alpha), at::zeros({}, dx.options()));
  const int64_t H = x.size(-1);
  return {dx, dxm, (g * xhat).reshape({-1, H}).sum(0), g.reshape({-1, H}).sum(0)};
}

class AddNormFn : public torch::autograd::Function<AddNormFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& residual, const at::Tensor& branch,
                               const at::Tensor& scale, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& gamma,
                               int64_t sample_dim, double alpha, double eps, bool rms,
                               std::optional<at::ScalarType> out_dtype) {
    // x and h: an unused one's gradient stays undefined (the backward handles that) rather than being
    // materialised as zeros, which the engine would make a plain tensor even for a DTensor.
    ctx->set_materialize_grads(false);
    at::Tensor x, h, mean, rstd;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(x, h, mean, rstd) =
          call_add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype);
    }
    ctx->mark_non_differentiable({mean, rstd});
    const at::Tensor w = weight.value_or(at::Tensor()), b = bias.value_or(at::Tensor());
    const at::Tensor g = gamma.value_or(at::Tensor());
    const bool gamma_grad = g.defined() && g.requires_grad();
    ctx->save_for_backward({x, mean, rstd, scale, w, b, g, gamma_grad ? branch : at::Tensor()});
    // An absent optional tensor has no input edge: needs_input_grad's index of each parameter.
    const int64_t iw = 3, ib = iw + (w.defined() ? 1 : 0), ig = ib + (b.defined() ? 1 : 0);
    ctx->saved_data["edges"] = std::vector<int64_t>{iw, ib, ig};
    ctx->saved_data["dim"] = sample_dim < 0 ? sample_dim + residual.dim() : sample_dim;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["r_dtype"] = static_cast<int64_t>(residual.scalar_type());
    ctx->saved_data["b_dtype"] = static_cast<int64_t>(branch.scalar_type());
    return {x, h, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &mean = saved[1], &rstd = saved[2], &scale = saved[3];
    const at::Tensor &weight = saved[4], &bias = saved[5], &gamma = saved[6], &branch = saved[7];
    const int64_t dim = ctx->saved_data["dim"].toInt();
    const double alpha = ctx->saved_data["alpha"].toDouble();
    const bool rms = ctx->saved_data["rms"].toBool();
    const auto rdt = static_cast<at::ScalarType>(ctx->saved_data["r_dtype"].toInt());
    const auto bdt = static_cast<at::ScalarType>(ctx->saved_data["b_dtype"].toInt());
    variable_list out(11);
    at::Tensor gx = grads[0], gh = grads[1];
    if (!gx.defined() && !gh.defined()) return out;
    if (!gh.defined()) gh = at::zeros_like(x);  // h unused: its norm term vanishes
    const auto edges = ctx->saved_data["edges"].toIntVector();
    const bool want_w = weight.defined() && ctx->needs_input_grad(edges[0]);
    const bool want_b = bias.defined() && ctx->needs_input_grad(edges[1]);
    const bool want_g = branch.defined() && ctx->needs_input_grad(edges[2]);
    if (at::GradMode::is_enabled()) {  // create_graph: differentiable ATen ops
      const variable_list c = add_norm_grads_composite(gx, gh, x, scale, weight, dim, alpha,
                                                       ctx->saved_data["eps"].toDouble(), rms, rstd.scalar_type());
      const int64_t H = x.size(-1);
      if (ctx->needs_input_grad(0)) out[0] = c[0].to(rdt);
      if (ctx->needs_input_grad(1)) out[1] = (gamma.defined() ? c[1] * gamma.to(c[1].scalar_type()) : c[1]).to(bdt);
      if (want_w) out[3] = c[2].to(weight.scalar_type());
      if (want_b) out[4] = c[3].to(bias.scalar_type());
      if (want_g) {
        const at::Tensor bk = at::where(sample_view(scale, x, dim, c[1].scalar_type()) != 0,
                                        branch.to(c[1].scalar_type()), at::zeros({}, c[1].options()));
        out[5] = (c[1] * bk).reshape({-1, H}).sum(0).to(gamma.scalar_type());
      }
      return out;
    }
    auto [g_res, g_branch, g_w, g_b, g_g] = call_in_backward([&] {
      return call_add_norm_backward(
          opt(gx), gh, x, mean, rstd, scale, opt(weight), opt(gamma), want_g ? opt(branch) : std::nullopt, dim, alpha,
          rms, rdt, bdt, want_w ? std::optional<at::ScalarType>(weight.scalar_type()) : std::nullopt,
          want_b ? std::optional<at::ScalarType>(bias.scalar_type()) : std::nullopt);
    });
    if (ctx->needs_input_grad(0)) out[0] = g_res;
    if (ctx->needs_input_grad(1)) out[1] = g_branch;
    if (want_w) out[3] = g_w;
    if (want_b) out[4] = g_b;
    if (want_g) out[5] = g_g;
    return out;
  }
};

AddNormOut add_norm_autograd(const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& scale,
                             const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& gamma, int64_t sample_dim, double alpha, double eps,
                             bool rms, std::optional<at::ScalarType> out_dtype) {
  if (!any_needs_graph(residual, branch, weight, bias, gamma)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype);
  }
  const variable_list o =
      AddNormFn::apply(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype);
  return {o[0], o[1], o[2], o[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, Autograd, m) {
  m.impl("add_norm", &add_norm_autograd);
  m.impl("add_norm_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace sdkernels
