// A compile-time channel count for the per-pixel loops of pixel-major (NHWC) passes.
//
// Those loops run over a row's C channels, pixel after pixel. With C known only at run time the
// compiler's vectorised loop pays a remainder check, a peeled tail and reloaded loop bounds on
// every pixel, which at the 16-64 channels of small networks costs as much as the arithmetic
// (AVX-512, a batch norm's backward apply pass at 32 channels: 1.17x with C fixed). Each loop
// body gets C as a constant where C is one of the common counts; the same operations per value in
// the same order either way, so the same bits.
#pragma once

#include <cstdint>
#include <type_traits>

namespace cnnkit {
inline namespace CNNKIT_KERNEL_NS {

// f(std::integral_constant<int64_t, CC>{}): CC = C where C is 16, 32, 64 or 128 and at most Max
// (float32 only: the float64 kernels are not worth the code), else CC = 0, C at run time. The
// body reads its count as `CC ? CC : C`.
template <typename T, int64_t Max = 128, typename F>
void with_channels(int64_t C, F&& f) {
  if (std::is_same_v<T, float> && C <= Max) {
    switch (C) {
      case 16: return f(std::integral_constant<int64_t, 16>{});
      case 32: return f(std::integral_constant<int64_t, 32>{});
      case 64: return f(std::integral_constant<int64_t, 64>{});
      case 128: return f(std::integral_constant<int64_t, 128>{});
      default: break;
    }
  }
  f(std::integral_constant<int64_t, 0>{});
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit
