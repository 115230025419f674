// The eager fast path of the core family: draw the keep mask and apply it in one call from Python.
//
// drop_path_add_draw(residual, branch, p, sample_dim, batch, scale_by_keep)
//   = scaled_residual_add(residual, branch, keep, sample_dim, alpha)
// drop_path_add_ls_draw(residual, branch, gamma, p, sample_dim, channel_dim, batch, scale_by_keep)
//   = scaled_residual_add_ls(residual, branch, keep, gamma, sample_dim, channel_dim, alpha)
//   (the mask drawn as for branch * gamma, the math dtype of all three)
// drop_path_draw(x, p, sample_dim, batch, scale_by_keep)
//   = sample_scale(x, keep, sample_dim, alpha)
// with keep = empty(n, float32 | float64 for a float64 branch).bernoulli_(1 - p) on the tensors'
// device, n = the sample count (1 when batch): the draw of sdkernels.rng.draw, from the default
// generator; alpha = sdkernels.dtypes.keep_scale(p, scale_by_keep, math dtype).  Registered as CompositeImplicitAutograd: autograd, torch.compile and every tensor
// subclass see the two ops it is made of.  Every argument is checked before the draw, so a bad call
// consumes no random numbers (the Python caller then takes its full path, which names the argument).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace sdkernels {
namespace {

bool is_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// The keep mask of `drawn` (the tensor timm would drop) along its wrapped sample dim.
at::Tensor draw_keep(const at::Tensor& drawn, int64_t dim, double p, bool batch) {
  const int64_t n = batch ? 1 : drawn.size(dim);
  const auto dtype = drawn.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::empty({n}, drawn.options().dtype(dtype)).bernoulli_(1.0 - p);
}

// sdkernels.dtypes.keep_scale: 1 / (1 - p) as the math dtype holds it.  fp32 math: float(1) / float(1 - p),
// the value timm's mask holds (the double quotient of two floats rounds once to the float quotient).
double keep_scale(double p, bool scale_by_keep, bool acc64) {
  const double keep = 1.0 - p;
  if (!scale_by_keep || keep <= 0.0) return 1.0;
  if (acc64) return 1.0 / keep;
  return static_cast<double>(static_cast<float>(1.0 / static_cast<double>(static_cast<float>(keep))));
}

int64_t checked_dim(const at::Tensor& x, int64_t sample_dim, double p) {
  const int64_t nd = x.dim();
  TORCH_CHECK(is_float(x.scalar_type()), "sdkernels: a floating-point tensor is needed");
  TORCH_CHECK(nd >= 1 && sample_dim >= -nd && sample_dim < nd, "sdkernels: sample_dim out of range");
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "sdkernels: p must be in [0, 1]");
  return sample_dim < 0 ? sample_dim + nd : sample_dim;
}

at::Tensor drop_path_add_draw(const at::Tensor& residual, const at::Tensor& branch, double p,
                              int64_t sample_dim, bool batch, bool scale_by_keep) {
  const int64_t dim = checked_dim(residual, sample_dim, p);
  TORCH_CHECK(is_float(branch.scalar_type()) && residual.sizes() == branch.sizes() &&
                  residual.device() == branch.device(),
              "sdkernels: residual and branch must be floating-point tensors of one shape on one device");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::scaled_residual_add", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         int64_t, double)>();
  const bool acc64 = residual.scalar_type() == at::kDouble || branch.scalar_type() == at::kDouble;
  return op.call(residual, branch, draw_keep(branch, dim, p, batch), dim, keep_scale(p, scale_by_keep, acc64));
}

at::Tensor drop_path_add_ls_draw(const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& gamma,
                                 double p, int64_t sample_dim, int64_t channel_dim, bool batch,
                                 bool scale_by_keep) {
  const int64_t dim = checked_dim(residual, sample_dim, p);
  const int64_t nd = residual.dim();
  TORCH_CHECK(is_float(branch.scalar_type()) && residual.sizes() == branch.sizes() &&
                  residual.device() == branch.device(),
              "sdkernels: residual and branch must be floating-point tensors of one shape on one device");
  TORCH_CHECK(channel_dim >= -nd && channel_dim < nd, "sdkernels: channel_dim out of range");
  const int64_t cd = channel_dim < 0 ? channel_dim + nd : channel_dim;
  TORCH_CHECK(cd != dim, "sdkernels: channel_dim must differ from sample_dim");
  TORCH_CHECK(is_float(gamma.scalar_type()) && gamma.dim() == 1 && gamma.size(0) == branch.size(cd) &&
                  gamma.device() == branch.device(),
              "sdkernels: gamma must be a 1-D float tensor with one value per channel, on the inputs' device");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::scaled_residual_add_ls", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, int64_t, int64_t, double)>();
  const auto dropped = at::promote_types(branch.scalar_type(), gamma.scalar_type());
  const int64_t n = batch ? 1 : branch.size(dim);
  at::Tensor keep = at::empty({n}, branch.options().dtype(dropped == at::kDouble ? at::kDouble : at::kFloat))
                        .bernoulli_(1.0 - p);
  const bool acc64 = dropped == at::kDouble || residual.scalar_type() == at::kDouble;
  return op.call(residual, branch, keep, gamma, dim, cd, keep_scale(p, scale_by_keep, acc64));
}

at::Tensor drop_path_draw(const at::Tensor& x, double p, int64_t sample_dim, bool batch, bool scale_by_keep) {
  const int64_t dim = checked_dim(x, sample_dim, p);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sdkernels::sample_scale", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double,
                                         std::optional<at::ScalarType>)>();
  return op.call(x, draw_keep(x, dim, p, batch), dim, keep_scale(p, scale_by_keep, x.scalar_type() == at::kDouble),
                 std::nullopt);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sdkernels, m) {
  m.def(
      "drop_path_add_draw(Tensor residual, Tensor branch, float p, int sample_dim, bool batch, "
      "bool scale_by_keep) -> Tensor");
  m.def(
      "drop_path_add_ls_draw(Tensor residual, Tensor branch, Tensor gamma, float p, int sample_dim, "
      "int channel_dim, bool batch, bool scale_by_keep) -> Tensor");
  m.def("drop_path_draw(Tensor x, float p, int sample_dim, bool batch, bool scale_by_keep) -> Tensor");
}

TORCH_LIBRARY_IMPL(sdkernels, CompositeImplicitAutograd, m) {
  m.impl("drop_path_add_draw", &drop_path_add_draw);
  m.impl("drop_path_add_ls_draw", &drop_path_add_ls_draw);
  m.impl("drop_path_draw", &drop_path_draw);
}

}  // namespace sdkernels
