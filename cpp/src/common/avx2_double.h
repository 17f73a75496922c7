// float -> double conversions for the AVX2 double-precision sums (the statistics and gradient
// epilogues, the unit statistics, the norm backward's reduction, the last norm + pool's sums).
// Floats that are in memory are converted from memory, one vcvtps2pd of 4 each (cvt4d): the
// halves of a loaded vector (lo4d, hi4d) take a load, a vextractf128 and two conversions for the
// 8. The same conversions of the same values either way. Zen 3, 2 threads, resnext_small's and
// mobilenet_small's steps with the two forms alternating (a timer around each call, 30-40
// rounds): the strided grouped and depthwise input gradients 1.05-1.08x, the RGB stems' forward
// 1.05-1.06x, the 1x1 forwards with statistics 1.02-1.03x, the steps 1.011x and 1.008x.
// At AVX-512 the halves of a 16-float vector (lo8d, hi8d: one conversion of each 256-bit half;
// GCC's generic conversion of a shuffled half went in 128-bit quarters and inserts) and 8 floats
// from memory (cvt8d).
#pragma once

#if defined(__AVX2__) && !defined(__AVX512F__)
#include <immintrin.h>

#include "cnnkit/common.h"

namespace cnnkit::avx2d {
inline namespace CNNKIT_KERNEL_NS {

inline __m256d lo4d(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
inline __m256d hi4d(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
inline __m256d cvt4d(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::avx2d
#endif

#if defined(__AVX512F__)
#include <immintrin.h>

#include "cnnkit/common.h"

namespace cnnkit::avx512d {
inline namespace CNNKIT_KERNEL_NS {

inline __m512d lo8d(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
inline __m512d hi8d(__m512 v) {
  return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
inline __m512d cvt8d(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::avx512d
#endif
