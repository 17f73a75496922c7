// Batch statistics of a convolution's output reduced in its epilogue (conv::Fused's stats), per
// work unit fixed by the shape: sums of (y - s_u) and (y - s_u)^2 in double over the unit's
// pixels in order, s_u the unit's first value of each channel; combined in unit order about the
// first unit's shift (y at image 0, pixel 0: the norm kernels' shift), so the bits do not depend
// on the thread count. Pixel-major (NHWC) rows of K channels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cnnkit/common.h"
#include "cnnkit/conv.h"
#include "common/avx2_double.h"
#include "dw_common.h"
#include "scratch.h"

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {

// The work units of a pass over output rows: an image each, or bands of an image's rows when the
// batch is small (at least 16 units while rows last); fixed by the shape alone.
struct RowUnits {
  int64_t band, nb, units, Ho, Wo;
  RowUnits(const Geom& g) : Ho(g.Ho), Wo(g.Wo) {
    const int64_t per_img = g.N >= 16 ? 1 : std::min<int64_t>(g.Ho, ceil_div(16, g.N));
    band = ceil_div(g.Ho, per_img);
    nb = ceil_div(g.Ho, band);
    units = g.N * nb;
  }
  // Unit u: image n, output rows [oh0, oh1).
  void rows(int64_t u, int64_t& n, int64_t& oh0, int64_t& oh1) const {
    n = u / nb;
    oh0 = (u % nb) * band;
    oh1 = std::min(Ho, oh0 + band);
  }
  int64_t pixels(int64_t u) const {
    const int64_t oh0 = (u % nb) * band;
    return (std::min(Ho, oh0 + band) - oh0) * Wo;
  }
};

// The partials of `units` units of K channels, [s1 | s2 | shift][unit][ld] (ld = line_rows(K):
// each unit's rows on their own cache lines), in the calling thread's kPartSlot (taken before the
// parallel region; each unit is written by the thread that runs it). `extra` doubles follow them
// there (StatParts' pixel counts).
struct UnitStats {
  double* p;
  int64_t units, K, ld;
  double* s1(int64_t u) const { return p + u * ld; }
  double* s2(int64_t u) const { return p + (units + u) * ld; }
  double* sh(int64_t u) const { return p + (2 * units + u) * ld; }
};

inline UnitStats unit_stats(int64_t units, int64_t K, int64_t extra = 0) {
  const int64_t ld = line_rows(K);
  return UnitStats{scratch<double>(kPartSlot, static_cast<size_t>(3 * units * ld + extra)), units, K, ld};
}

// s1, s2 += the shifted sums (about sh) of np pixel-major rows of K channels: channels in blocks of
// KB whose sums stay in registers over the pixels (per channel the pixels still add in order: the
// same sums as one pass per pixel); the rest one pass per pixel.
template <typename T, int KB>
void unit_stats_blocks(double* __restrict s1, double* __restrict s2, const double* __restrict sh, const T* __restrict y,
                       int64_t np, int64_t K) {
  int64_t k0 = 0;
#if defined(__AVX2__) && !defined(__AVX512F__)
  // float at AVX2: each 4 values converted from memory (avx2d::cvt4d; GCC's loop below loaded 8,
  // converted the low 4 from memory and the high 4 after a vextractf128). The same operations per
  // lane: d = double(y) - c, a1 + d, and d * d + a2 as the one FMA this file's contraction makes
  // of it (-ffp-contract=fast), so the same bits. In the steps: the RGB stems' forward with
  // statistics 1.05-1.06x, the depthwise forward at 128 channels 1.04x.
  if constexpr (std::is_same_v<T, float> && KB == 16)
    for (; k0 + KB <= K; k0 += KB) {
      __m256d a1[4], a2[4], c[4];
      for (int q = 0; q < 4; ++q) {
        a1[q] = _mm256_loadu_pd(s1 + k0 + 4 * q);
        a2[q] = _mm256_loadu_pd(s2 + k0 + 4 * q);
        c[q] = _mm256_loadu_pd(sh + k0 + 4 * q);
      }
      const float* yp = y + k0;
      for (int64_t p = 0; p < np; ++p, yp += K)
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          const __m256d d = _mm256_sub_pd(avx2d::cvt4d(yp + 4 * q), c[q]);
          a1[q] = _mm256_add_pd(a1[q], d);
          a2[q] = _mm256_fmadd_pd(d, d, a2[q]);
        }
      for (int q = 0; q < 4; ++q) {
        _mm256_storeu_pd(s1 + k0 + 4 * q, a1[q]);
        _mm256_storeu_pd(s2 + k0 + 4 * q, a2[q]);
      }
    }
#endif
  for (; k0 + KB <= K; k0 += KB) {
    double a1[KB], a2[KB], c[KB];
    for (int k = 0; k < KB; ++k) {
      a1[k] = s1[k0 + k];
      a2[k] = s2[k0 + k];
      c[k] = sh[k0 + k];
    }
    const T* __restrict yp = y + k0;
    for (int64_t p = 0; p < np; ++p, yp += K)
#pragma omp simd
      for (int k = 0; k < KB; ++k) {
        const double d = double(yp[k]) - c[k];
        a1[k] += d;
        a2[k] += d * d;
      }
    for (int k = 0; k < KB; ++k) {
      s1[k0 + k] = a1[k];
      s2[k0 + k] = a2[k];
    }
  }
  if (k0 == K) return;
  for (int64_t p = 0; p < np; ++p)
#pragma omp simd
    for (int64_t k = k0; k < K; ++k) {
      const double d = double(y[p * K + k]) - sh[k];
      s1[k] += d;
      s2[k] += d * d;
    }
}

// Adds np pixels of unit u (y: np rows of K values); `start` (the unit's first pixels) resets its
// sums and takes its shift from y's first row.
template <typename T>
void unit_stats_add(const UnitStats& st, int64_t u, const T* __restrict y, int64_t np, bool start) {
  const int64_t K = st.K;
  double* __restrict s1 = st.s1(u);
  double* __restrict s2 = st.s2(u);
  double* __restrict sh = st.sh(u);
  if (start)
    for (int64_t k = 0; k < K; ++k) {
      sh[k] = double(y[k]);
      s1[k] = s2[k] = 0;
    }
  // Channels in blocks whose sums stay in registers over the pixels: 16 (8 ymm accumulators and
  // 4 shifts) below AVX-512, where blocks of 32 spilled (3x3 RGB -> 32 forward with statistics,
  // N = 64: 0.97-0.98x the time), 32 with AVX-512's 32 registers.
  constexpr int KB = Vec<double>::n >= 8 ? 32 : 16;
  unit_stats_blocks<T, KB>(s1, s2, sh, y, np, K);
}

// sum[k], sumsq[k]: the units in order about unit 0's shift; count(u) is unit u's pixel count. (Units
// outer, channels inner: the partials are read in address order; each channel's terms still come
// in unit order.)
template <typename F>
void unit_stats_combine(const UnitStats& st, F&& count, double* sum, double* sumsq) {
  const int64_t K = st.K;
  const double* __restrict k0 = st.sh(0);
  for (int64_t k = 0; k < K; ++k) sum[k] = sumsq[k] = 0;
  for (int64_t u = 0; u < st.units; ++u) {
    const double n = double(count(u));
    const double* __restrict a1 = st.s1(u);
    const double* __restrict a2 = st.s2(u);
    const double* __restrict su = st.sh(u);
    for (int64_t k = 0; k < K; ++k) {
      const double d = su[k] - k0[k];
      sum[k] += a1[k] + n * d;
      sumsq[k] += a2[k] + 2 * d * a1[k] + n * d * d;
    }
  }
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
