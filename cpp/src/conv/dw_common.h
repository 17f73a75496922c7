// Vector helpers for the direct conv kernels (compiled once per ISA level): a native-width vector
// of T (64 bytes with AVX-512, 32 with AVX2, 16 otherwise) with unaligned loads and stores.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cnnkit/common.h"

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int n = kVecBytes / sizeof(T);
};
template <typename T>
using vec_t = typename Vec<T>::type;

template <typename T>
CNNKIT_HD vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
CNNKIT_HD void vstore(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
CNNKIT_HD vec_t<T> vsplat(T s) {
  return vec_t<T>{} + s;
}
// Sum of the lanes in a fixed order.
template <typename T>
CNNKIT_HD T hsum(vec_t<T> v) {
  T s = 0;
  for (int i = 0; i < Vec<T>::n; ++i) s += v[i];
  return s;
}

template <typename T>
using ivec_t = typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type;

// VL x VL block transpose in registers: log2(VL) rounds of two-input shuffles, each swapping the
// off-diagonal s x s sub-blocks (s = VL/2, ..., 1).
template <typename T>
void transpose_block(const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  using IV = typename Vec<ivec_t<T>>::type;
  V r[VL];
  for (int i = 0; i < VL; ++i) r[i] = vload(src + i * lds);
  for (int s = VL / 2; s >= 1; s /= 2) {
    IV lo, hi;
    for (int l = 0; l < VL; ++l) {
      lo[l] = (l & s) ? VL + (l - s) : l;
      hi[l] = (l & s) ? VL + l : l + s;
    }
    for (int i = 0; i < VL; ++i)
      if (!(i & s)) {
        const V a = r[i], b = r[i + s];
        r[i] = __builtin_shuffle(a, b, lo);
        r[i + s] = __builtin_shuffle(a, b, hi);
      }
  }
  for (int i = 0; i < VL; ++i) vstore(dst + i * ldd, r[i]);
}

// Stores lanes [0, n) of v (n <= lane count).
template <typename T>
CNNKIT_HD void vstore_n(T* p, vec_t<T> v, int64_t n) {
  if (n == Vec<T>::n) return vstore(p, v);
  for (int64_t l = 0; l < n; ++l) p[l] = v[l];
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
