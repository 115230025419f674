// Autograd of the core ops (schemas in csrc/ops/core.cpp).
//
// Backward saves only the per-sample scale vector.  grad_residual is grad_out
// itself (cast only when the dtypes differ); grad_branch is one fused
// sample_scale pass.  sample_scale is linear in x, so its backward is
// sample_scale again and double backward works.  The same rules as the Triton
// twins' (registered from Python).
#include "autograd/common.h"

namespace sdkernels {
namespace {

using namespace ::sdkernels::autograd;

at::Tensor call_residual_add(const at::Tensor& residual, const at::Tensor& branch,
                             const at::Tensor& scale, int64_t sample_dim, double alpha) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::scaled_residual_add", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         int64_t, double)>();
  return op.call(residual, branch, scale, sample_dim, alpha);
}

at::Tensor call_sample_scale(const at::Tensor& x, const at::Tensor& scale, int64_t sample_dim,
                             double alpha, std::optional<at::ScalarType> dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::sample_scale", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double,
                                         std::optional<at::ScalarType>)>();
  return op.call(x, scale, sample_dim, alpha, dtype);
}

class SampleScaleFn : public torch::autograd::Function<SampleScaleFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            int64_t sample_dim, double alpha,
                            std::optional<at::ScalarType> dtype) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = call_sample_scale(x, scale, sample_dim, alpha, dtype);
    }
    ctx->save_for_backward({scale});
    ctx->saved_data["dim"] = sample_dim;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor scale = ctx->get_saved_variables()[0];
    at::Tensor gx;
    if (ctx->needs_input_grad(0) && grads[0].defined()) {
      gx = call_in_backward([&] {
        return call_sample_scale(grads[0], scale, ctx->saved_data["dim"].toInt(),
                                 ctx->saved_data["alpha"].toDouble(),
                                 static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
      });
    }
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class ResidualAddFn : public torch::autograd::Function<ResidualAddFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& residual,
                            const at::Tensor& branch, const at::Tensor& scale, int64_t sample_dim,
                            double alpha) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = call_residual_add(residual, branch, scale, sample_dim, alpha);
    }
    ctx->save_for_backward({scale});
    ctx->saved_data["dim"] = sample_dim;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["r_dtype"] = static_cast<int64_t>(residual.scalar_type());
    ctx->saved_data["b_dtype"] = static_cast<int64_t>(branch.scalar_type());
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& g = grads[0];
    at::Tensor gr, gb;
    if (!g.defined()) return {gr, gb, at::Tensor(), at::Tensor(), at::Tensor()};
    if (ctx->needs_input_grad(0)) {
      const auto rdt = static_cast<at::ScalarType>(ctx->saved_data["r_dtype"].toInt());
      gr = g.scalar_type() == rdt ? g : g.to(rdt);
    }
    if (ctx->needs_input_grad(1)) {
      const at::Tensor scale = ctx->get_saved_variables()[0];
      gb = call_in_backward([&] {
        return call_sample_scale(g, scale, ctx->saved_data["dim"].toInt(), ctx->saved_data["alpha"].toDouble(),
                                 static_cast<at::ScalarType>(ctx->saved_data["b_dtype"].toInt()));
      });
    }
    return {gr, gb, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor residual_add_autograd(const at::Tensor& residual, const at::Tensor& branch,
                                 const at::Tensor& scale, int64_t sample_dim, double alpha) {
  if (!needs_graph(residual) && !needs_graph(branch)) {  // no graph to record: skip the node
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_residual_add(residual, branch, scale, sample_dim, alpha);
  }
  return ResidualAddFn::apply(residual, branch, scale, sample_dim, alpha);
}

at::Tensor sample_scale_autograd(const at::Tensor& x, const at::Tensor& scale, int64_t sample_dim,
                                 double alpha, std::optional<at::ScalarType> dtype) {
  if (!needs_graph(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_sample_scale(x, scale, sample_dim, alpha, dtype);
  }
  return SampleScaleFn::apply(x, scale, sample_dim, alpha, dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, Autograd, m) {
  m.impl("scaled_residual_add", &residual_add_autograd);
  m.impl("sample_scale", &sample_scale_autograd);
}

}  // namespace sdkernels
