// Mixing kernels for float image batches (Mixup, CutMix, SamplePairing), parallel over images;
// compiled once per ISA level (namespace cnnkit::<isa>::mix), dispatched by augment_dispatch.cpp.
// Randomness (lambdas, partners, boxes) comes from the Python samplers; these are deterministic and
// compute every element the same way at any thread count.
//   blend:       out[n] = a[n] * x[n] + (1 - a[n]) * src[perm[n]]    (in double, rounded once;
//                src is x itself or a separate pool of images)
//   paste_boxes: out[n] = x[n], then the box of every channel plane replaced by x[perm[n]]'s
//   fill_boxes:  out[n] = x[n] with holes filled by a constant per channel or the image's mean
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cnnkit/augment.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit::CNNKIT_ISA_NS::mix {
namespace {

template <typename T>
void blend_t(const T* x, const T* src, const int64_t* perm, const double* a, T* out, int64_t N, int64_t S) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t n = 0; n < N; ++n) {
    const T* p = x + n * S;
    const T* q = src + perm[n] * S;
    T* o = out + n * S;
    const double lam = a[n], mu = 1.0 - a[n];
    for (int64_t i = 0; i < S; ++i) o[i] = T(lam * double(p[i]) + mu * double(q[i]));
  }
}

template <typename T>
void paste_t(const T* x, const int64_t* perm, const int64_t* boxes, T* out, int64_t N, int64_t C, int64_t H,
             int64_t W) {
  const int64_t S = C * H * W;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t n = 0; n < N; ++n) {
    T* o = out + n * S;
    if (o != x + n * S) std::memcpy(o, x + n * S, S * sizeof(T));
    const T* q = x + perm[n] * S;
    const int64_t y0 = boxes[4 * n], x0 = boxes[4 * n + 1], y1 = boxes[4 * n + 2], x1 = boxes[4 * n + 3];
    if (y1 <= y0 || x1 <= x0) continue;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = y0; r < y1; ++r)
        std::memcpy(o + (c * H + r) * W + x0, q + (c * H + r) * W + x0, (x1 - x0) * sizeof(T));
  }
}

}  // namespace

void blend(DType dt, const void* x, const void* src, const int64_t* perm, const double* a, void* out, int64_t N,
           int64_t S) {
  if (dt == DType::f64)
    blend_t(static_cast<const double*>(x), static_cast<const double*>(src), perm, a, static_cast<double*>(out), N, S);
  else
    blend_t(static_cast<const float*>(x), static_cast<const float*>(src), perm, a, static_cast<float*>(out), N, S);
}

void paste_boxes(DType dt, const void* x, const int64_t* perm, const int64_t* boxes, void* out, int64_t N, int64_t C,
                 int64_t H, int64_t W) {
  if (dt == DType::f64)
    paste_t(static_cast<const double*>(x), perm, boxes, static_cast<double*>(out), N, C, H, W);
  else
    paste_t(static_cast<const float*>(x), perm, boxes, static_cast<float*>(out), N, C, H, W);
}

}  // namespace cnnkit::CNNKIT_ISA_NS::mix

namespace cnnkit::CNNKIT_ISA_NS::mix {
namespace {

// Per image: holes (y0, x0, y1, x1) filled with values[c] (mode 0) or the image's own per-channel
// mean (mode 1, computed in double over the whole image, before any hole is filled and rounded
// to the element type as T(mean) would be after round-half-even for uint8).
template <typename T>
void fill_t(const T* x, T* out, int64_t N, int64_t H, int64_t W, int64_t C, bool nhwc, const int64_t* boxes,
            int64_t K, int mode, const double* values) {
  const int64_t S = H * W * C;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t n = 0; n < N; ++n) {
    const T* xi = x + n * S;
    T* o = out + n * S;
    if (o != xi) std::memcpy(o, xi, S * sizeof(T));
    T fillv[64];
    for (int64_t c = 0; c < C; ++c) {
      double v = values[c];
      if (mode == 1) {
        double s = 0;
        for (int64_t p = 0; p < H * W; ++p) s += double(nhwc ? xi[p * C + c] : xi[c * H * W + p]);
        v = s / double(H * W);
      }
      if constexpr (std::is_integral<T>::value) {
        v = std::nearbyint(v);
        v = v < 0 ? 0 : (v > 255 ? 255 : v);
      }
      fillv[c] = T(v);
    }
    for (int64_t k = 0; k < K; ++k) {
      const int64_t* b = boxes + (n * K + k) * 4;
      for (int64_t r = b[0]; r < b[2]; ++r)
        for (int64_t q = b[1]; q < b[3]; ++q)
          for (int64_t c = 0; c < C; ++c) o[nhwc ? (r * W + q) * C + c : (c * H + r) * W + q] = fillv[c];
    }
  }
}

}  // namespace

void fill_boxes(DType dt, const void* x, void* out, int64_t N, int64_t H, int64_t W, int64_t C, bool nhwc,
                const int64_t* boxes, int64_t K, int mode, const double* values) {
  switch (dt) {
    case DType::u8:
      fill_t(static_cast<const uint8_t*>(x), static_cast<uint8_t*>(out), N, H, W, C, nhwc, boxes, K, mode, values);
      break;
    case DType::f32:
      fill_t(static_cast<const float*>(x), static_cast<float*>(out), N, H, W, C, nhwc, boxes, K, mode, values);
      break;
    case DType::f64:
      fill_t(static_cast<const double*>(x), static_cast<double*>(out), N, H, W, C, nhwc, boxes, K, mode, values);
      break;
  }
}

}  // namespace cnnkit::CNNKIT_ISA_NS::mix

namespace cnnkit::CNNKIT_ISA_NS::mix {

// OpenCV's equalizeHist table for each of `count` 256-bin histograms: i0 the first non-empty bin,
// scale = 255.f / float(total - h[i0]), lut[i0] = 0 and lut[i] = saturate(round_half_even(
// float(sum(h[i0+1..i])) * scale)) above it (float32 throughout, as OpenCV computes it); a
// single-valued histogram gives the identity. Bins below i0 are never looked up; they get 0.
void equalize_cv_lut(const int64_t* hist, uint8_t* lut, int64_t count) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t k = 0; k < count; ++k) {
    const int64_t* h = hist + 256 * k;
    uint8_t* l = lut + 256 * k;
    int64_t total = 0;
    for (int i = 0; i < 256; ++i) total += h[i];
    int i0 = 0;
    while (i0 < 255 && h[i0] == 0) ++i0;
    if (h[i0] == total) {
      for (int i = 0; i < 256; ++i) l[i] = uint8_t(i);
      continue;
    }
    const float scale = 255.0f / float(total - h[i0]);
    for (int i = 0; i <= i0; ++i) l[i] = 0;
    int64_t sum = 0;
    for (int i = i0 + 1; i < 256; ++i) {
      sum += h[i];
      const float v = std::nearbyint(float(sum) * scale);
      l[i] = uint8_t(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v));
    }
  }
}

}  // namespace cnnkit::CNNKIT_ISA_NS::mix

namespace cnnkit::CNNKIT_ISA_NS {
extern const augment::MixKernels mix_kernels = {mix::blend, mix::paste_boxes, mix::fill_boxes, mix::equalize_cv_lut};
}  // namespace cnnkit::CNNKIT_ISA_NS
