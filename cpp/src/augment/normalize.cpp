// Per-ISA image normalization kernels (see cnnkit/augment.h).
//   normalize_u8: y = ((x - hi) - lo) * scale in float32, fusing uint8 -> float, the centring
//   (hi + lo = 255*mean for torchvision-style normalization, the image mean or minimum for the
//   per-image modes; x - hi is exact, so nothing cancels), the scaling and, for NCHW output, the
//   HWC -> CHW transpose. One pass: read 1 B, write 4 B per value.
//   image_stats_u8: integer sums (exact, so the same at any thread count), min and max.
//   histogram_u8 / lut_u8: per-(image, channel) histograms and table lookups, from which the
//   Pillow-exact point operations (equalize, autocontrast, posterize, solarize, invert) are made.
// Work is split by (image, block of kPix pixels); every output element is written by one thread.
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "cnnkit/augment.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit {
namespace CNNKIT_ISA_NS {
namespace {

constexpr int64_t kPix = 4096;
constexpr int64_t kSerialBelow = 1 << 16;  // values

template <int CC>  // channel count known at compile time (1, 3, 4), or 0 for any
void normalize_block(const uint8_t* __restrict x, float* __restrict y, int64_t P, int64_t C, bool nchw,
                     const float* __restrict sc, const float* __restrict hi,
                     const float* __restrict lo, int64_t p0, int64_t p1) {
  const int64_t Cn = CC ? CC : C;
  if (!nchw) {
    const uint8_t* __restrict xs = x + p0 * Cn;
    float* __restrict ys = y + p0 * Cn;
    const int64_t n = (p1 - p0) * Cn;
    if (Cn == 1) {
      const float a = sc[0], h = hi[0], l = lo[0];
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) ys[i] = ((float(xs[i]) - h) - l) * a;
    } else {
      for (int64_t p = 0; p < p1 - p0; ++p)
#pragma omp simd
        for (int64_t c = 0; c < Cn; ++c) ys[p * Cn + c] = ((float(xs[p * Cn + c]) - hi[c]) - lo[c]) * sc[c];
    }
    return;
  }
  for (int64_t c = 0; c < Cn; ++c) {  // one output plane at a time: contiguous stores
    const float a = sc[c], h = hi[c], l = lo[c];
    const uint8_t* __restrict xc = x + c;
    float* __restrict yc = y + c * P;
#pragma omp simd
    for (int64_t p = p0; p < p1; ++p) yc[p] = ((float(xc[p * Cn]) - h) - l) * a;
  }
}

void normalize_u8(const uint8_t* x, float* y, int64_t N, int64_t P, int64_t C, bool nchw,
                  const float* scale, const float* hi, const float* lo, bool per_image) {
  const int64_t per = (P + kPix - 1) / kPix, total = N * per;
  const int nt = N * P * C < kSerialBelow ? 1 : num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t t = 0; t < total; ++t) {
    const int64_t n = t / per, p0 = (t % per) * kPix, p1 = std::min(P, p0 + kPix);
    const uint8_t* xn = x + n * P * C;
    float* yn = y + n * P * C;
    const float* sc = scale + (per_image ? n * C : 0);
    const float* h = hi + (per_image ? n * C : 0);
    const float* l = lo + (per_image ? n * C : 0);
    switch (C) {
      case 1: normalize_block<1>(xn, yn, P, C, nchw, sc, h, l, p0, p1); break;
      case 3: normalize_block<3>(xn, yn, P, C, nchw, sc, h, l, p0, p1); break;
      case 4: normalize_block<4>(xn, yn, P, C, nchw, sc, h, l, p0, p1); break;
      default: normalize_block<0>(xn, yn, P, C, nchw, sc, h, l, p0, p1); break;
    }
  }
}

void image_stats_u8(const uint8_t* x, int64_t N, int64_t PC, int64_t* sum, int64_t* sumsq,
                    uint8_t* mn, uint8_t* mx) {
  const int nt = N * PC < kSerialBelow ? 1 : num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* __restrict xi = x + n * PC;
    int64_t s = 0, q = 0;
    int lo = 255, hi = 0;
    // int32 lanes cannot overflow within 8192 values (8192 * 255^2 < 2^31); carried in int64
    for (int64_t b = 0; b < PC; b += 8192) {
      const int64_t e = std::min(PC, b + 8192);
      int32_t s32 = 0, q32 = 0, l32 = 255, h32 = 0;
#pragma omp simd reduction(+ : s32, q32) reduction(min : l32) reduction(max : h32)
      for (int64_t i = b; i < e; ++i) {
        const int32_t v = xi[i];
        s32 += v;
        q32 += v * v;
        l32 = v < l32 ? v : l32;
        h32 = v > h32 ? v : h32;
      }
      s += s32;
      q += q32;
      lo = std::min<int>(lo, l32);
      hi = std::max<int>(hi, h32);
    }
    sum[n] = s;
    sumsq[n] = q;
    mn[n] = uint8_t(PC ? lo : 0);
    mx[n] = uint8_t(PC ? hi : 0);
  }
}

void histogram_u8(const uint8_t* x, int64_t N, int64_t P, int64_t C, int64_t* hist) {
  const int nt = N * P * C < kSerialBelow ? 1 : num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* __restrict xi = x + n * P * C;
    int64_t* __restrict h = hist + n * C * 256;
    std::fill(h, h + C * 256, int64_t(0));
    if (C == 1) {
      // four sub-histograms so that runs of equal values do not serialise on one counter
      int32_t sub[4][256] = {};
      const int64_t P4 = P & ~int64_t(3);
      for (int64_t p = 0; p < P4; p += 4) {
        ++sub[0][xi[p]];
        ++sub[1][xi[p + 1]];
        ++sub[2][xi[p + 2]];
        ++sub[3][xi[p + 3]];
        if (((p + 4) & ((1 << 20) - 1)) == 0)  // flush before int32 could overflow
          for (int k = 0; k < 4; ++k)
            for (int v = 0; v < 256; ++v) h[v] += sub[k][v], sub[k][v] = 0;
      }
      for (int64_t p = P4; p < P; ++p) ++h[xi[p]];
      for (int k = 0; k < 4; ++k)
        for (int v = 0; v < 256; ++v) h[v] += sub[k][v];
    } else if (C <= 4) {
      // two sets of per-channel sub-histograms, alternating by pixel, so that neighbouring pixels
      // with equal values (common in images) do not serialise on one counter
      int32_t sub[2][4][256] = {};
      const int64_t P2 = P & ~int64_t(1);
      for (int64_t p = 0; p < P2; p += 2) {
        const uint8_t* a = xi + p * C;
        for (int64_t c = 0; c < C; ++c) {
          ++sub[0][c][a[c]];
          ++sub[1][c][a[C + c]];
        }
        if (((p + 2) & ((1 << 20) - 1)) == 0)  // flush before int32 could overflow
          for (int k = 0; k < 2; ++k)
            for (int64_t c = 0; c < C; ++c)
              for (int v = 0; v < 256; ++v) h[c * 256 + v] += sub[k][c][v], sub[k][c][v] = 0;
      }
      for (int64_t p = P2; p < P; ++p)
        for (int64_t c = 0; c < C; ++c) ++h[c * 256 + xi[p * C + c]];
      for (int k = 0; k < 2; ++k)
        for (int64_t c = 0; c < C; ++c)
          for (int v = 0; v < 256; ++v) h[c * 256 + v] += sub[k][c][v];
    } else {
      for (int64_t p = 0; p < P; ++p)
        for (int64_t c = 0; c < C; ++c) ++h[c * 256 + xi[p * C + c]];
    }
  }
}

void lut_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t P, int64_t C, const uint8_t* lut) {
  const int64_t per = (P + kPix - 1) / kPix, total = N * per;
  const int nt = N * P * C < kSerialBelow ? 1 : num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t t = 0; t < total; ++t) {
    const int64_t n = t / per, p0 = (t % per) * kPix, p1 = std::min(P, p0 + kPix);
    const uint8_t* __restrict xs = x + (n * P + p0) * C;
    uint8_t* __restrict ys = y + (n * P + p0) * C;
    const uint8_t* __restrict L = lut + n * C * 256;
    const int64_t m = (p1 - p0) * C;
    if (C == 1) {
      for (int64_t i = 0; i < m; ++i) ys[i] = L[xs[i]];
    } else {
      for (int64_t p = 0; p < p1 - p0; ++p)
        for (int64_t c = 0; c < C; ++c) ys[p * C + c] = L[c * 256 + xs[p * C + c]];
    }
  }
}

}  // namespace

extern const augment::Kernels augment_kernels;
const augment::Kernels augment_kernels = {normalize_u8, image_stats_u8, histogram_u8, lut_u8};

}  // namespace CNNKIT_ISA_NS
}  // namespace cnnkit
