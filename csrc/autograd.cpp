// Autograd for the C++ ops, registered in C++ under the Autograd key (as
// torchvision does): no Python on the dispatch path, so a call costs a few
// microseconds instead of the ~17 us of a Python-registered autograd kernel.
//
// Core ops: backward saves only the per-sample scale vector.  grad_residual
// is grad_out itself (cast only when the dtypes differ); grad_branch is one
// fused sample_scale pass.  sample_scale is linear in x, so its backward is
// sample_scale again and double backward works.
//
// Skip-path ops: backward saves only the index.  scaled_index_add:
// grad_residual = grad_out (cast only when the dtypes differ), grad_src =
// index_scale(grad_out, index, dim, alpha, src dtype).  index_scale:
// grad_x = scaled_index_add(zeros like x, grad_out, index, dim, alpha).  The
// same rules as sdkernels.skip.register_index_autograd, which the Triton pair
// uses from Python.
#include <torch/autograd.h>
#include <torch/library.h>

namespace sdkernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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
      gx = call_sample_scale(grads[0], scale, ctx->saved_data["dim"].toInt(),
                             ctx->saved_data["alpha"].toDouble(),
                             static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
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
      gb = call_sample_scale(g, scale, ctx->saved_data["dim"].toInt(),
                             ctx->saved_data["alpha"].toDouble(),
                             static_cast<at::ScalarType>(ctx->saved_data["b_dtype"].toInt()));
    }
    return {gr, gb, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

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
      gs = call_index_scale(g, index, ctx->saved_data["dim"].toInt(),
                            ctx->saved_data["alpha"].toDouble(),
                            static_cast<at::ScalarType>(ctx->saved_data["s_dtype"].toInt()));
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
      gx = call_scaled_index_add(zeros, g, index, ctx->saved_data["dim"].toInt(),
                                 ctx->saved_data["alpha"].toDouble());
      if (gx.scalar_type() != xdt) gx = gx.to(xdt);
    }
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

bool needs_graph(const at::Tensor& a) {
  return at::GradMode::is_enabled() && a.requires_grad();
}

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
  m.impl("scaled_residual_add", &residual_add_autograd);
  m.impl("sample_scale", &sample_scale_autograd);
  m.impl("scaled_index_add", &scaled_index_add_autograd);
  m.impl("index_scale", &index_scale_autograd);
}

}  // namespace sdkernels

// ---- LayerScale (issue 13) -------------------------------------------------
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
namespace sdkernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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
    std::tie(gb, gg) = call_layer_scale_grads(g, saved[2], saved[0], saved[1], dim, cdim, alpha);
    if (!need_b) gb = at::Tensor();
  } else if (need_b) {
    gb = call_sample_scale_ls(g, saved[0], saved[1], dim, cdim, alpha,
                              static_cast<at::ScalarType>(ctx->saved_data["b_dtype"].toInt()));
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

bool needs_graph_any(std::initializer_list<const at::Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts)
    if (t->requires_grad()) return true;
  return false;
}

at::Tensor residual_add_ls_autograd(const at::Tensor& residual, const at::Tensor& branch,
                                    const at::Tensor& scale, const at::Tensor& gamma, int64_t dim,
                                    int64_t cdim, double alpha) {
  if (!needs_graph_any({&residual, &branch, &gamma})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_residual_add_ls(residual, branch, scale, gamma, dim, cdim, alpha);
  }
  return ResidualAddLsFn::apply(residual, branch, scale, gamma, dim, cdim, alpha);
}

at::Tensor sample_scale_ls_autograd(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& gamma,
                                    int64_t dim, int64_t cdim, double alpha,
                                    std::optional<at::ScalarType> dtype) {
  if (!needs_graph_any({&x, &gamma})) {
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
  if (!needs_graph_any({&grad, &branch, &gamma})) {
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

// ---- add + norm (issue 14) ------------------------------------------------------------------
// sdkernels::add_norm under the Autograd key.  Saves x (the op's own output,
// alive anyway as the next block's input), mean and rstd (one value per row),
// the per-sample scale, weight, bias and gamma, and branch only when gamma
// needs its gradient (eager LayerScale keeps it alive for that too).  The
// backward is one sdkernels::add_norm_backward pass; with create_graph (double
// backward) the same gradients come from differentiable ATen ops instead: the
// formula of sdkernels.reference.add_norm_backward (which the Triton twin calls
// from Python), here in C++ to keep Python off the C++ ops' path.
// add_norm_backward itself is not differentiable.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>

namespace sdkernels {
namespace {

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
    auto [g_res, g_branch, g_w, g_b, g_g] = call_add_norm_backward(
        opt(gx), gh, x, mean, rstd, scale, opt(weight), opt(gamma), want_g ? opt(branch) : std::nullopt, dim, alpha,
        rms, rdt, bdt, want_w ? std::optional<at::ScalarType>(weight.scalar_type()) : std::nullopt,
        want_b ? std::optional<at::ScalarType>(bias.scalar_type()) : std::nullopt);
    if (ctx->needs_input_grad(0)) out[0] = g_res;
    if (ctx->needs_input_grad(1)) out[1] = g_branch;
    if (want_w) out[3] = g_w;
    if (want_b) out[4] = g_b;
    if (want_g) out[5] = g_g;
    return out;
  }
};

bool any_needs_graph(std::initializer_list<std::reference_wrapper<const std::optional<at::Tensor>>> ts) {
  for (const auto& t : ts)
    if (t.get().has_value() && t.get()->defined() && needs_graph(*t.get())) return true;
  return false;
}

AddNormOut add_norm_autograd(const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& scale,
                             const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& gamma, int64_t sample_dim, double alpha, double eps,
                             bool rms, std::optional<at::ScalarType> out_dtype) {
  if (!needs_graph(residual) && !needs_graph(branch) && !any_needs_graph({weight, bias, gamma})) {
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
