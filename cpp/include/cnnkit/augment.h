// cnnkit image kernels (C++ API; the Python layer is cnnkit.augment). Images are uint8, N images
// of P pixels with C interleaved channels (NHWC).
#pragma once

#include <cstdint>

#include "cnnkit/common.h"

namespace cnnkit::augment {

// y = ((float(x) - hi) - lo) * scale, per (image if per_image, channel): the centre hi + lo is a
// float pair (x - hi is exact for a centre near x), so low-contrast images keep full float32
// accuracy. scale/hi/lo have C entries, or N*C when per_image. Output NCHW (n, c, p) when
// nchw_out, else NHWC (n, p, c). float32.
void normalize_u8(const uint8_t* x, float* y, int64_t N, int64_t P, int64_t C, bool nchw_out,
                  const float* scale, const float* hi, const float* lo, bool per_image);

// Exact per-image statistics over all P*C values: sum, sum of squares, min, max.
void image_stats_u8(const uint8_t* x, int64_t N, int64_t PC, int64_t* sum, int64_t* sumsq,
                    uint8_t* mn, uint8_t* mx);

// Per-image, per-channel histograms: hist[(n*C + c)*256 + v] = count of value v.
void histogram_u8(const uint8_t* x, int64_t N, int64_t P, int64_t C, int64_t* hist);

// y = lut[n, c, x] with one 256-entry table per (image, channel): lut has N*C*256 entries.
void lut_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t P, int64_t C, const uint8_t* lut);

// Mixing (cpp/src/augment/mix.cpp; float32, or float64 when f64), S elements per image:
// out[n] = a[n]*x[n] + (1 - a[n])*src[perm[n]], computed in double; src is x or a pool of images
// (perm indexes it). out must not overlap x or src.
void blend(bool f64, const void* x, const void* src, const int64_t* perm, const double* a, void* out, int64_t N,
           int64_t S);
// out[n] = x[n] with box (y0, x0, y1, x1) = boxes[4n..4n+3] of every channel plane (NCHW) taken from
// x[perm[n]]. out must not overlap x.
void paste_boxes(bool f64, const void* x, const int64_t* perm, const int64_t* boxes, void* out, int64_t N, int64_t C,
                 int64_t H, int64_t W);

// Cutout / erasing: out[n] = x[n] with K holes per image (boxes[(n*K + k)*4 ..] = y0, x0, y1, x1)
// filled with values[c] (mode 0) or the image's per-channel mean (mode 1). dtype 0 uint8 (values
// rounded half to even, clamped), 1 float32, 2 float64; nhwc or NCHW; C <= 64.
void fill_boxes(int dtype, const void* x, void* out, int64_t N, int64_t H, int64_t W, int64_t C, bool nhwc,
                const int64_t* boxes, int64_t K, int mode, const double* values);

// OpenCV equalizeHist lookup tables from `count` 256-bin histograms (float32 arithmetic as OpenCV).
void equalize_cv_lut(const int64_t* hist, uint8_t* lut, int64_t count);

struct Kernels {
  decltype(&normalize_u8) normalize_u8_fn;
  decltype(&image_stats_u8) image_stats_u8_fn;
  decltype(&histogram_u8) histogram_u8_fn;
  decltype(&lut_u8) lut_u8_fn;
};

}  // namespace cnnkit::augment
