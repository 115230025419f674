// Autograd of the skip-path ops (schemas in csrc/ops/skip.cpp).
//
// Backward saves only the index.  scaled_index_add: grad_residual = grad_out
// (cast only when the dtypes differ), grad_src = index_scale(grad_out, index,
// dim, alpha, src dtype).  index_scale: grad_x = scaled_index_add(zeros like x,
// grad_out, index, dim, alpha).  The same rules as
// sdkernels.skip.register_index_autograd, which the Triton pair uses from Python.
#include <ATen/FuncTorchTLS.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

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

// scaled_index_add's backward node, written as PyTorch's generated nodes are (a Node with a
// SavedVariable) rather than a torch::autograd::Function, which costs more host time per call.  Next
// edges: residual, src, index; an undefined incoming gradient is taken as zeros, as a Function's is.
struct ScaledIndexAddBackward : public torch::autograd::Node {
  std::string name() const override { return "ScaledIndexAddBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    index_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor g = grads[0].defined() ? grads[0] : input_metadata(0).zeros_like();
    variable_list out(3);
    if (task_should_compute_output(0)) out[0] = g.scalar_type() == r_dtype ? g : g.to(r_dtype);
    if (task_should_compute_output(1)) {
      const at::Tensor index = index_.unpack();
      out[1] = call_in_backward([&] { return call_index_scale(g, index, dim, alpha, s_dtype); });
    }
    return out;
  }

  torch::autograd::SavedVariable index_;
  int64_t dim = 0;
  double alpha = 1.0;
  at::ScalarType r_dtype = at::kFloat, s_dtype = at::kFloat;
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
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = call_scaled_index_add(residual, src, index, sample_dim, alpha);
  }
  if (auto* functorch_tls = at::functorch::functorchTLSAccessor().get()) {
    functorch_tls->checkSupportsCppAutogradFunction();  // as a C++ autograd Function would
  }
  auto node = c10::make_intrusive<ScaledIndexAddBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(residual, src, index));
  torch::autograd::set_history(out, node);
  node->index_ = torch::autograd::SavedVariable(index, false);
  node->dim = sample_dim;
  node->alpha = alpha;
  node->r_dtype = residual.scalar_type();
  node->s_dtype = src.scalar_type();
  return out;
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
