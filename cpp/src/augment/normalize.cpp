// Per-ISA image normalization kernels (see cnnkit/augment.h).
//   normalize_u8: y = ((x - hi) - lo) * scale in float32, fusing uint8 -> float, the centring
//   (hi + lo = 255*mean for torchvision-style normalization, the image mean or minimum for the
//   per-image modes; x - hi is exact, so nothing cancels), the scaling and, for NCHW output, the
//   HWC -> CHW transpose. One pass: read 1 B, write 4 B per value.
//   image_stats_u8: integer sums (exact, so the same at any thread count), min and max.
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

}  // namespace

extern const augment::Kernels augment_kernels;
const augment::Kernels augment_kernels = {normalize_u8, image_stats_u8};

}  // namespace CNNKIT_ISA_NS
}  // namespace cnnkit
