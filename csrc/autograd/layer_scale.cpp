// Autograd of the LayerScale ops (schemas in csrc/ops/layer_scale.cpp).
//
// scaled_residual_add_ls and sample_scale_ls save the scale, gamma and, only
// when gamma requires grad, the branch (x).  grad_residual is grad_out itself
// (cast only when the dtypes differ).  With gamma requiring grad, one
// layer_scale_grads pass gives grad_branch and grad_gamma; without, grad_branch
// is one sample_scale_ls pass.  layer_scale_grads is linear in grad and in
// branch, so its own backward is made of the same ops (double backward):
//   d grad   = sample_scale_ls(g_gb, gamma) + sample_scale_ls(branch, g_gg)
//   d branch = sample_scale_ls(grad, g_gg)
//   d gamma  = layer_scale_grads(g_gb, grad)[1]
// The same rules as sdkernels.ops.layer_scale_autograd_rules (the Triton ops').
#include "autograd/common.h"

namespace sdkernels {
namespace {

using namespace ::sdkernels::autograd;

at::Tensor call_residual_add_ls(const at::Tensor& residual, const at::Tensor& branch,
                                const at::Tensor& scale, const at::Tensor& gamma, int64_t dim,
                                int64_t cdim, double alpha) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::scaled_residual_add_ls", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, int64_t, int64_t, double)>();
  return op.call(residual, branch, scale, gamma, dim, cdim, alpha);
}

at::Tensor call_sample_scale_ls(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& gamma,
                                int64_t dim, int64_t cdim, double alpha,
                                std::optional<at::ScalarType> dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::sample_scale_ls", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         int64_t, int64_t, double, std::optional<at::ScalarType>)>();
  return op.call(x, scale, gamma, dim, cdim, alpha, dtype);
}

std::tuple<at::Tensor, at::Tensor> call_layer_scale_grads(const at::Tensor& grad,
                                                          const at::Tensor& branch,
                                                          const at::Tensor& scale,
                                                          const at::Tensor& gamma, int64_t dim,
                                                          int64_t cdim, double alpha) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::layer_scale_grads", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           int64_t, int64_t, double)>();
  return op.call(grad, branch, scale, gamma, dim, cdim, alpha);
}

// The call's constants, kept in the context.
void save_ls_args(AutogradContext* ctx, int64_t dim, int64_t cdim, double alpha) {
  ctx->saved_data["dim"] = dim;
  ctx->saved_data["cdim"] = cdim;
  ctx->saved_data["alpha"] = alpha;
}

// (grad_branch, grad_gamma) of both forward ops from the saved {scale, gamma, branch or undefined}.
std::pair<at::Tensor, at::Tensor> ls_branch_gamma_grads(AutogradContext* ctx, const at::Tensor& g,
                                                        bool need_b, bool need_g) {
  const auto saved = ctx->get_saved_variables();
  const int64_t dim = ctx->saved_data["dim"].toInt();
  const int64_t cdim = ctx->saved_data["cdim"].toInt();
  const double alpha = ctx->saved_data["alpha"].toDouble();
  at::Tensor gb, gg;
  if (need_g) {
    std::tie(gb, gg) =
        call_in_backward([&] { return call_layer_scale_grads(g, saved[2], saved[0], saved[1], dim, cdim, alpha); });
    if (!need_b) gb = at::Tensor();
  } else if (need_b) {
    const auto bdt = static_cast<at::ScalarType>(ctx->saved_data["b_dtype"].toInt());
    gb = call_in_backward([&] { return call_sample_scale_ls(g, saved[0], saved[1], dim, cdim, alpha, bdt); });
  }
  return {gb, gg};
}

class ResidualAddLsFn : public torch::autograd::Function<ResidualAddLsFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& residual, const at::Tensor& branch,
                            const at::Tensor& scale, const at::Tensor& gamma, int64_t dim, int64_t cdim,
                            double alpha) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = call_residual_add_ls(residual, branch, scale, gamma, dim, cdim, alpha);
    }
    ctx->save_for_backward({scale, gamma, gamma.requires_grad() ? branch : at::Tensor()});
    save_ls_args(ctx, dim, cdim, alpha);
    ctx->saved_data["r_dtype"] = static_cast<int64_t>(residual.scalar_type());
    ctx->saved_data["b_dtype"] = static_cast<int64_t>(branch.scalar_type());
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& g = grads[0];
    at::Tensor gr;
    if (!g.defined()) return {gr, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    if (ctx->needs_input_grad(0)) {
      const auto rdt = static_cast<at::ScalarType>(ctx->saved_data["r_dtype"].toInt());
      gr = g.scalar_type() == rdt ? g : g.to(rdt);
    }
    auto [gb, gg] = ls_branch_gamma_grads(ctx, g, ctx->needs_input_grad(1), ctx->needs_input_grad(3));
    return {gr, gb, at::Tensor(), gg, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class SampleScaleLsFn : public torch::autograd::Function<SampleScaleLsFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& gamma, int64_t dim, int64_t cdim, double alpha,
                            std::optional<at::ScalarType> dtype) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = call_sample_scale_ls(x, scale, gamma, dim, cdim, alpha, dtype);
    }
    ctx->save_for_backward({scale, gamma, gamma.requires_grad() ? x : at::Tensor()});
    save_ls_args(ctx, dim, cdim, alpha);
    ctx->saved_data["b_dtype"] = static_cast<int64_t>(x.scalar_type());
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    auto [gx, gg] = ls_branch_gamma_grads(ctx, g, ctx->needs_input_grad(0), ctx->needs_input_grad(2));
    return {gx, at::Tensor(), gg, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class LayerScaleGradsFn : public torch::autograd::Function<LayerScaleGradsFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& branch,
                               const at::Tensor& scale, const at::Tensor& gamma, int64_t dim,
                               int64_t cdim, double alpha) {
    // Two outputs: an unused one's gradient stays undefined (the backward handles that) rather than
    // being materialised as zeros, which the engine would make a plain tensor even for a DTensor.
    ctx->set_materialize_grads(false);
    at::Tensor gb, gg;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(gb, gg) = call_layer_scale_grads(grad, branch, scale, gamma, dim, cdim, alpha);
    }
    ctx->save_for_backward({grad, branch, scale, gamma});
    save_ls_args(ctx, dim, cdim, alpha);
    return {gb, gg};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& g_gb = grads[0];
    const at::Tensor& g_gg = grads[1];
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &grad = saved[0], &branch = saved[1], &scale = saved[2], &gamma = saved[3];
    const int64_t dim = ctx->saved_data["dim"].toInt();
    const int64_t cdim = ctx->saved_data["cdim"].toInt();
    const double alpha = ctx->saved_data["alpha"].toDouble();
    at::Tensor d_grad, d_branch, d_gamma;
    if (ctx->needs_input_grad(0)) {
      if (g_gb.defined()) d_grad = call_sample_scale_ls(g_gb, scale, gamma, dim, cdim, alpha, grad.scalar_type());
      if (g_gg.defined()) {
        at::Tensor t = call_sample_scale_ls(branch, scale, g_gg, dim, cdim, alpha, grad.scalar_type());
        d_grad = d_grad.defined() ? d_grad.add(t) : t;
      }
    }
    if (ctx->needs_input_grad(1) && g_gg.defined()) {
      d_branch = call_sample_scale_ls(grad, scale, g_gg, dim, cdim, alpha, branch.scalar_type());
    }
    if (ctx->needs_input_grad(3) && g_gb.defined()) {
      d_gamma = std::get<1>(call_layer_scale_grads(g_gb, grad, scale, gamma, dim, cdim, alpha));
    }
    return {d_grad, d_branch, at::Tensor(), d_gamma, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor residual_add_ls_autograd(const at::Tensor& residual, const at::Tensor& branch,
                                    const at::Tensor& scale, const at::Tensor& gamma, int64_t dim,
                                    int64_t cdim, double alpha) {
  if (!any_needs_graph(residual, branch, gamma)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_residual_add_ls(residual, branch, scale, gamma, dim, cdim, alpha);
  }
  return ResidualAddLsFn::apply(residual, branch, scale, gamma, dim, cdim, alpha);
}

at::Tensor sample_scale_ls_autograd(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& gamma,
                                    int64_t dim, int64_t cdim, double alpha,
                                    std::optional<at::ScalarType> dtype) {
  if (!any_needs_graph(x, gamma)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_sample_scale_ls(x, scale, gamma, dim, cdim, alpha, dtype);
  }
  return SampleScaleLsFn::apply(x, scale, gamma, dim, cdim, alpha, dtype);
}

std::tuple<at::Tensor, at::Tensor> layer_scale_grads_autograd(const at::Tensor& grad,
                                                              const at::Tensor& branch,
                                                              const at::Tensor& scale,
                                                              const at::Tensor& gamma, int64_t dim,
                                                              int64_t cdim, double alpha) {
  if (!any_needs_graph(grad, branch, gamma)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_layer_scale_grads(grad, branch, scale, gamma, dim, cdim, alpha);
  }
  auto r = LayerScaleGradsFn::apply(grad, branch, scale, gamma, dim, cdim, alpha);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, Autograd, m) {
  m.impl("scaled_residual_add_ls", &residual_add_ls_autograd);
  m.impl("sample_scale_ls", &sample_scale_ls_autograd);
  m.impl("layer_scale_grads", &layer_scale_grads_autograd);
}

}  // namespace sdkernels
