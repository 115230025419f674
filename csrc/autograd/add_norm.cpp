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
#include <ATen/FuncTorchTLS.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include "autograd/common.h"

namespace sdkernels {
namespace {

using namespace ::sdkernels::autograd;
using torch::autograd::SavedVariable;

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

// The backward node, written as PyTorch's own generated nodes are (a Node with SavedVariable members)
// rather than a torch::autograd::Function: no context object, no string-keyed saved_data, no output
// wrapping, which saves host time on every call.  Its next edges are the six tensor inputs in order
// (residual, branch, scale, weight, bias, gamma; an absent one has an invalid edge), its inputs the
// gradients of x and h.  An unused output's gradient arrives undefined (never materialised as zeros,
// which the engine would make a plain tensor even for a DTensor).
struct AddNormBackward : public torch::autograd::Node {
  enum Edge : size_t { kResidual = 0, kBranch, kScale, kWeight, kBias, kGamma, kEdges };

  std::string name() const override { return "AddNormBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x_.reset_data();
    mean_.reset_data();
    rstd_.reset_data();
    scale_.reset_data();
    weight_.reset_data();
    bias_.reset_data();
    gamma_.reset_data();
    branch_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor x = x_.unpack(getptr()), mean = mean_.unpack(), rstd = rstd_.unpack();
    const at::Tensor scale = scale_.unpack(), weight = weight_.unpack(), bias = bias_.unpack();
    const at::Tensor gamma = gamma_.unpack(), branch = branch_.unpack();
    variable_list out(kEdges);
    at::Tensor gx = grads[0], gh = grads[1];
    if (!gx.defined() && !gh.defined()) return out;
    if (!gh.defined()) gh = at::zeros_like(x);  // h unused: its norm term vanishes
    const bool want_r = task_should_compute_output(kResidual);
    const bool want_br = task_should_compute_output(kBranch);
    const bool want_w = weight.defined() && task_should_compute_output(kWeight);
    const bool want_b = bias.defined() && task_should_compute_output(kBias);
    const bool want_g = branch.defined() && task_should_compute_output(kGamma);
    if (at::GradMode::is_enabled()) {  // create_graph: differentiable ATen ops
      const variable_list c =
          add_norm_grads_composite(gx, gh, x, scale, weight, dim, alpha, eps, rms, rstd.scalar_type());
      const int64_t H = x.size(-1);
      if (want_r) out[kResidual] = c[0].to(r_dtype);
      if (want_br) out[kBranch] = (gamma.defined() ? c[1] * gamma.to(c[1].scalar_type()) : c[1]).to(b_dtype);
      if (want_w) out[kWeight] = c[2].to(weight.scalar_type());
      if (want_b) out[kBias] = c[3].to(bias.scalar_type());
      if (want_g) {
        const at::Tensor bk = at::where(sample_view(scale, x, dim, c[1].scalar_type()) != 0,
                                        branch.to(c[1].scalar_type()), at::zeros({}, c[1].options()));
        out[kGamma] = (c[1] * bk).reshape({-1, H}).sum(0).to(gamma.scalar_type());
      }
      return out;
    }
    auto [g_res, g_branch, g_w, g_b, g_g] = call_in_backward([&] {
      return call_add_norm_backward(
          opt(gx), gh, x, mean, rstd, scale, opt(weight), opt(gamma), want_g ? opt(branch) : std::nullopt, dim, alpha,
          rms, r_dtype, b_dtype, want_w ? std::optional<at::ScalarType>(weight.scalar_type()) : std::nullopt,
          want_b ? std::optional<at::ScalarType>(bias.scalar_type()) : std::nullopt);
    });
    if (want_r) out[kResidual] = std::move(g_res);
    if (want_br) out[kBranch] = std::move(g_branch);
    if (want_w) out[kWeight] = std::move(g_w);
    if (want_b) out[kBias] = std::move(g_b);
    if (want_g) out[kGamma] = std::move(g_g);
    return out;
  }

  // x is the node's own output (saved without a reference to the node); branch only when gamma needs
  // its gradient (eager LayerScale keeps it alive for that too).
  SavedVariable x_, mean_, rstd_, scale_, weight_, bias_, gamma_, branch_;
  int64_t dim = 0;
  double alpha = 1.0, eps = 0.0;
  bool rms = false;
  at::ScalarType r_dtype = at::kFloat, b_dtype = at::kFloat;
};

AddNormOut add_norm_autograd(const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& scale,
                             const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& gamma, int64_t sample_dim, double alpha, double eps,
                             bool rms, std::optional<at::ScalarType> out_dtype) {
  at::Tensor x, h, mean, rstd;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(x, h, mean, rstd) =
        call_add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype);
  }
  if (!any_needs_graph(residual, branch, weight, bias, gamma)) return {x, h, mean, rstd};
  if (auto* functorch_tls = at::functorch::functorchTLSAccessor().get()) {
    functorch_tls->checkSupportsCppAutogradFunction();  // as a C++ autograd Function would
  }
  auto node = c10::make_intrusive<AddNormBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(residual, branch, scale, weight, bias, gamma));
  torch::autograd::set_history(x, node);
  torch::autograd::set_history(h, node);
  const at::Tensor g = gamma.value_or(at::Tensor());
  node->x_ = SavedVariable(x, /*is_output=*/true);
  node->mean_ = SavedVariable(mean, false);
  node->rstd_ = SavedVariable(rstd, false);
  node->scale_ = SavedVariable(scale, false);
  node->weight_ = SavedVariable(weight.value_or(at::Tensor()), false);
  node->bias_ = SavedVariable(bias.value_or(at::Tensor()), false);
  node->gamma_ = SavedVariable(g, false);
  node->branch_ = SavedVariable(g.defined() && g.requires_grad() ? branch : at::Tensor(), false);
  node->dim = sample_dim < 0 ? sample_dim + residual.dim() : sample_dim;
  node->alpha = alpha;
  node->eps = eps;
  node->rms = rms;
  node->r_dtype = residual.scalar_type();
  node->b_dtype = branch.scalar_type();
  return {x, h, mean, rstd};
}

}  // namespace

TORCH_LIBRARY_IMPL(sdkernels, Autograd, m) {
  m.impl("add_norm", &add_norm_autograd);
  m.impl("add_norm_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace sdkernels
