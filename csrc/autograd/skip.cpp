// Autograd of the skip-path ops (schemas in csrc/ops/skip.cpp).
//
// Backward saves only the index.  scaled_index_add: grad_residual = grad_out
// (cast only when the dtypes differ), grad_src = index_scale(grad_out, index,
// dim, alpha, src dtype).  index_scale: grad_x = scaled_index_add(zeros like x,
// grad_out, index, dim, alpha).  The same rules as
// sdkernels.skip.register_index_autograd, which the Triton pair uses from Python.
#include "autograd/common.h"

namespace sdkernels {
namespace {

using namespace ::sdkernels::autograd;

at::Tensor call_scaled_index_add(const at::Tensor& residual, const at::Tensor& src,
                                 const at::Tensor& index, int64_t sample_dim, double alpha) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::scaled_index_add", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         int64_t, double)>();
  return op.call(residual, src, index, sample_dim, alpha);
}

at::Tensor call_index_scale(const at::Tensor& grad, const at::Tensor& index, int64_t sample_dim,
                            double alpha, std::optional<at::ScalarType> dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::index_scale", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double,
                                         std::optional<at::ScalarType>)>();
  return op.call(grad, index, sample_dim, alpha, dtype);
}

class ScaledIndexAddFn : public torch::autograd::Function<ScaledIndexAddFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& residual, const at::Tensor& src,
                            const at::Tensor& index, int64_t sample_dim, double alpha) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = call_scaled_index_add(residual, src, index, sample_dim, alpha);
    }
    ctx->save_for_backward({index});
    ctx->saved_data["dim"] = sample_dim;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["r_dtype"] = static_cast<int64_t>(residual.scalar_type());
    ctx->saved_data["s_dtype"] = static_cast<int64_t>(src.scalar_type());
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& g = grads[0];
    at::Tensor gr, gs;
    if (!g.defined()) return {gr, gs, at::Tensor(), at::Tensor(), at::Tensor()};
    if (ctx->needs_input_grad(0)) {
      const auto rdt = static_cast<at::ScalarType>(ctx->saved_data["r_dtype"].toInt());
      gr = g.scalar_type() == rdt ? g : g.to(rdt);
    }
    if (ctx->needs_input_grad(1)) {
      const at::Tensor index = ctx->get_saved_variables()[0];
      gs = call_in_backward([&] {
        return call_index_scale(g, index, ctx->saved_data["dim"].toInt(), ctx->saved_data["alpha"].toDouble(),
                                static_cast<at::ScalarType>(ctx->saved_data["s_dtype"].toInt()));
      });
    }
    return {gr, gs, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class IndexScaleFn : public torch::autograd::Function<IndexScaleFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& index,
                            int64_t sample_dim, double alpha,
                            std::optional<at::ScalarType> dtype) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = call_index_scale(x, index, sample_dim, alpha, dtype);
    }
    ctx->save_for_backward({index});
    ctx->saved_data["dim"] = sample_dim;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    // x's sample count (a SymInt: symbolic under torch.compile) and layout, for
    // the zeros of the backward: g has x's sizes but k samples along the dim.
    const int64_t dim = sample_dim < 0 ? sample_dim + x.dim() : sample_dim;
    ctx->saved_data["wrapped_dim"] = dim;
    ctx->saved_data["x_n"] = x.sym_size(dim);
    // channels_last stays so (the rule of sdkernels.skip.register_index_autograd).
    ctx->saved_data["x_channels_last"] =
        x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& g = grads[0];
    at::Tensor gx;
    if (g.defined() && ctx->needs_input_grad(0)) {
      const at::Tensor index = ctx->get_saved_variables()[0];
      const auto xdt = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
      const auto fmt = ctx->saved_data["x_channels_last"].toBool() ? at::MemoryFormat::ChannelsLast
                                                                    : at::MemoryFormat::Contiguous;
      std::vector<c10::SymInt> sizes = g.sym_sizes().vec();
      sizes[ctx->saved_data["wrapped_dim"].toInt()] = ctx->saved_data["x_n"].toSymInt();
      const at::Tensor zeros = at::empty_symint(sizes, g.options().dtype(xdt), fmt).zero_();
      gx = call_in_backward([&] {
        return call_scaled_index_add(zeros, g, index, ctx->saved_data["dim"].toInt(),
                                     ctx->saved_data["alpha"].toDouble());
      });
      if (gx.scalar_type() != xdt) gx = gx.to(xdt);
    }
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor scaled_index_add_autograd(const at::Tensor& residual, const at::Tensor& src,
                                     const at::Tensor& index, int64_t sample_dim, double alpha) {
  if (!needs_graph(residual) && !needs_graph(src)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_scaled_index_add(residual, src, index, sample_dim, alpha);
  }
  return ScaledIndexAddFn::apply(residual, src, index, sample_dim, alpha);
}

at::Tensor index_scale_autograd(const at::Tensor& x, const at::Tensor& index, int64_t sample_dim,
                                double alpha, std::optional<at::ScalarType> dtype) {
  if (!needs_graph(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_index_scale(x, index, sample_dim, alpha, dtype);
  }
  return IndexScaleFn::apply(x, index, sample_dim, alpha, dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, Autograd, m) {
  m.impl("scaled_index_add", &scaled_index_add_autograd);
  m.impl("index_scale", &index_scale_autograd);
}

}  // namespace sdkernels
