// Vector helpers for the direct conv kernels (compiled once per ISA level): a native-width vector
// of T (64 bytes with AVX-512, 32 with AVX2, 16 otherwise) with unaligned loads and stores.
#pragma once

#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <type_traits>
#include <utility>

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
// All lanes = s, as one broadcast (`{} + s` would cost a scalar add: 0 + s is not s for s = -0).
template <typename T>
CNNKIT_HD vec_t<T> vsplat(T s) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) return (vec_t<T>)_mm512_set1_ps(s); else return (vec_t<T>)_mm512_set1_pd(s);
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4) return (vec_t<T>)_mm256_set1_ps(s); else return (vec_t<T>)_mm256_set1_pd(s);
#else
  if constexpr (sizeof(T) == 4) return (vec_t<T>)_mm_set1_ps(s); else return (vec_t<T>)_mm_set1_pd(s);
#endif
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

// VL x VL block transpose in registers: log2(VL) rounds of two-input shuffles with constant
// masks, each swapping the off-diagonal s x s sub-blocks (s = VL/2, ..., 1).
template <typename V, int VL, int S, int... L>
CNNKIT_HD V shuffle_lo(V a, V b, std::integer_sequence<int, L...>) {
  return __builtin_shufflevector(a, b, ((L & S) ? VL + (L - S) : L)...);
}
template <typename V, int VL, int S, int... L>
CNNKIT_HD V shuffle_hi(V a, V b, std::integer_sequence<int, L...>) {
  return __builtin_shufflevector(a, b, ((L & S) ? VL + L : L + S)...);
}
template <typename T, int S>
CNNKIT_HD void transpose_round(vec_t<T>* r) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  using Seq = std::make_integer_sequence<int, VL>;
  for (int i = 0; i < VL; ++i)
    if (!(i & S)) {
      const V a = r[i], b = r[i + S];
      r[i] = shuffle_lo<V, VL, S>(a, b, Seq{});
      r[i + S] = shuffle_hi<V, VL, S>(a, b, Seq{});
    }
  if constexpr (S > 1) transpose_round<T, S / 2>(r);
}
template <typename T>
CNNKIT_HD void transpose_block(const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int VL = Vec<T>::n;
  vec_t<T> r[VL];
  for (int i = 0; i < VL; ++i) r[i] = vload(src + i * lds);
  transpose_round<T, VL / 2>(r);
  for (int i = 0; i < VL; ++i) vstore(dst + i * ldd, r[i]);
}

// Software prefetch of the 64-byte lines of [p, p + bytes): for reading (into L2, hint 2) or for
// writing (prefetchw, into L1 exclusive, so a store does not wait for its line's read for ownership).
// Addresses past an array's end are harmless: a prefetch never faults.
CNNKIT_HD void prefetch_bytes(const void* p, int64_t bytes, bool write) {
  const char* c = static_cast<const char*>(p);
  const char* e = c + bytes;
  c = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(c) & ~uintptr_t(63));
  if (write)
    for (; c < e; c += 64) __builtin_prefetch(c, 1, 3);
  else
    for (; c < e; c += 64) __builtin_prefetch(c, 0, 2);
}

// Whether n values at p can go through stream_floats(): float32, p on a 64-byte line, n a multiple
// of 16.
template <typename T>
bool streamable(const T* p, int64_t n) {
  return std::is_same_v<T, float> && (reinterpret_cast<uintptr_t>(p) & 63) == 0 && n % 16 == 0;
}
// dst[0, n) = src[0, n) by non-temporal stores: the lines go to memory without being read first
// (a store that misses reads its line before writing it) and without displacing cached data.
// streamable(dst, n) must hold; src is any float array. The stores are weakly ordered: an sfence
// (store_fence()) before other threads read dst.
inline void stream_floats(float* __restrict dst, const float* __restrict src, int64_t n) {
#if defined(__AVX512F__)
  for (int64_t e = 0; e < n; e += 16) _mm512_stream_ps(dst + e, _mm512_loadu_ps(src + e));
#elif defined(__AVX__)
  for (int64_t e = 0; e < n; e += 8) _mm256_stream_ps(dst + e, _mm256_loadu_ps(src + e));
#else
  for (int64_t e = 0; e < n; e += 4) _mm_stream_ps(dst + e, _mm_loadu_ps(src + e));
#endif
}
inline void store_fence() { _mm_sfence(); }

// Read prefetch of up to two byte ranges (into L2), spread over the steps of a loop: a few lines per
// step(), so that the DRAM reads of the next piece of work overlap this one's FMAs.
struct SpreadPrefetch {
  const char* p[2] = {nullptr, nullptr};
  int64_t left[2] = {0, 0};
  int64_t per = 0;  // lines per step
  SpreadPrefetch() = default;
  SpreadPrefetch(const void* a, int64_t abytes, const void* b, int64_t bbytes, int64_t steps) {
    p[0] = static_cast<const char*>(a);
    p[1] = static_cast<const char*>(b);
    left[0] = abytes;
    left[1] = bbytes;
    const int64_t lines = (abytes + 63) / 64 + (bbytes + 63) / 64;
    per = steps > 0 ? (lines + steps - 1) / steps : lines;
  }
  CNNKIT_HD void step() {
    int64_t k = per;
    for (int s = 0; s < 2; ++s)
      for (; left[s] > 0 && k > 0; --k, p[s] += 64, left[s] -= 64) __builtin_prefetch(p[s], 0, 2);
  }
};

// Whether the depthwise weight gradients (dw3_wgrad_image; dw_wgrad_band's register rows) prefetch
// the next image's operands into L2 over the current image's rows (SpreadPrefetch). On AMD, where
// it was measured (Zen 4, N = 64, mobilenet_small's 3x3 weight gradients: 1.04-1.54x faster with
// it). Not on Intel: 2 threads, the calls alternating in one process (Sapphire Rapids class),
// dw3_backward_weight ran 1.33-1.46x faster without it at C384@14 and C960@7 for N = 32 and 128,
// and 1.14-1.22x from DRAM (N = 1024); spread over every channel vector instead of every row, from
// DRAM it beat none by 1.05-1.15x, from L3 it lost 0.9x. dw_wgrad_band (N = 64): C32@32, C64@32
// stride 2, C96@24, C128@32 1.06-1.17x faster without.
inline bool wgrad_prefetch_next() {
  static const bool amd = __builtin_cpu_is("amd");
  return amd;
}

// Stores lanes [0, n) of v (n <= lane count).
template <typename T>
CNNKIT_HD void vstore_n(T* p, vec_t<T> v, int64_t n) {
  if (n == Vec<T>::n) return vstore(p, v);
  for (int64_t l = 0; l < n; ++l) p[l] = v[l];
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
