// Helpers shared by the C++ autograd kernels (csrc/autograd/<family>.cpp).
//
// Each family's ops get their autograd in C++ under the Autograd key (as
// torchvision does): no Python on the dispatch path, so a call costs a few
// microseconds instead of the ~17 us of a Python-registered autograd kernel.
// The rules are the Triton twins' (registered from Python); each C++ file
// names its Python counterpart.
#pragma once

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <initializer_list>
#include <optional>

namespace sdkernels {
namespace autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Whether a call must record a node: grad mode on and some input requires grad.
inline bool needs_graph(const at::Tensor& t) {
  return at::GradMode::is_enabled() && t.defined() && t.requires_grad();
}
inline bool needs_graph(const std::optional<at::Tensor>& t) {
  return t.has_value() && needs_graph(*t);
}
template <typename... Ts>
bool any_needs_graph(const Ts&... ts) {
  return (needs_graph(ts) || ...);
}

// Runs an op call of a backward.  A first-order backward (grad mode off) calls
// straight into the backend kernel, past the op's Autograd kernel: one dispatch
// instead of two (for add_norm_backward, past the boxed not-implemented
// fallback).  With create_graph the call records its own node, so double
// backward works.
template <typename F>
decltype(auto) call_in_backward(F&& f) {
  if (at::GradMode::is_enabled()) return f();
  at::AutoDispatchBelowADInplaceOrView guard;
  return f();
}

}  // namespace autograd
}  // namespace sdkernels
