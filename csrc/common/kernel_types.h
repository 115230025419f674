// Compile-time dtype rules shared by the CPU and CUDA kernels (host and device).
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>

namespace sdkernels {

// Result dtype of two floating types, as torch.promote_types gives it.
template <typename A, typename B>
struct promote {
  using type = std::conditional_t<
      std::is_same_v<A, B>, A,
      std::conditional_t<std::is_same_v<A, double> || std::is_same_v<B, double>, double,
                         float>>;  // fp32 with anything narrower, and fp16 + bf16 -> fp32
};

// The math type: fp64 when any type is fp64, else fp32.
template <typename... Ts>
struct acc_of {
  using type = std::conditional_t<(std::is_same_v<Ts, double> || ...), double, float>;
};

// Elements per vector access: 16 bytes of the narrowest of the types.
template <typename... Ts>
constexpr int vec_of() {
  constexpr std::size_t narrowest = std::min({sizeof(Ts)...});
  return static_cast<int>(16 / narrowest);
}

}  // namespace sdkernels
