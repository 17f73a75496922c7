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

// Mixing (cpp/src/augment/mix.cpp; dt f32 or f64), S elements per image:
// out[n] = a[n]*x[n] + (1 - a[n])*src[perm[n]], computed in double; src is x or a pool of images
// (perm indexes it). out must not overlap x or src.
void blend(DType dt, const void* x, const void* src, const int64_t* perm, const double* a, void* out, int64_t N,
           int64_t S);
// out[n] = x[n] with box (y0, x0, y1, x1) = boxes[4n..4n+3] of every channel plane (NCHW) taken from
// x[perm[n]]. out must not overlap x.
void paste_boxes(DType dt, const void* x, const int64_t* perm, const int64_t* boxes, void* out, int64_t N, int64_t C,
                 int64_t H, int64_t W);

// Cutout / erasing: out[n] = x[n] with K holes per image (boxes[(n*K + k)*4 ..] = y0, x0, y1, x1)
// filled with values[c] (mode 0) or the image's per-channel mean (mode 1). dt u8 (values rounded
// half to even, clamped), f32 or f64; nhwc or NCHW; C <= 64.
void fill_boxes(DType dt, const void* x, void* out, int64_t N, int64_t H, int64_t W, int64_t C, bool nhwc,
                const int64_t* boxes, int64_t K, int mode, const double* values);

// OpenCV equalizeHist lookup tables from `count` 256-bin histograms (float32 arithmetic as OpenCV).
void equalize_cv_lut(const int64_t* hist, uint8_t* lut, int64_t count);

// ---- image ops for the augmentation policies (cpp/src/augment/image_ops.cpp) --------------------
// Op codes of apply_ops_u8; each (image, op) has kOpParams doubles of parameters.
enum class ImageOp : int32_t {
  kIdentity = 0,
  kAffine = 1,      // p[0..5]: torchvision's inverse affine matrix in centred coordinates
  kBrightness = 2,  // p[0]: factor (torchvision tensor semantics, float32)
  kColor = 3,       // p[0]: saturation factor
  kContrast = 4,    // p[0]: factor
  kSharpness = 5,   // p[0]: factor
  kPosterize = 6,   // p[0]: bits kept, 0..8
  kSolarize = 7,    // p[0]: threshold; values >= it are inverted
  kAutoContrast = 8,  // Pillow ImageOps.autocontrast
  kEqualize = 9,    // Pillow ImageOps.equalize
  kInvert = 10,
  kHFlip = 11,
  kVFlip = 12,
};
constexpr int64_t kOpParams = 6;

// Image n (H x W x C uint8) goes through ops codes[n*K .. n*K+K-1] in order; bilinear or nearest
// sampling for kAffine, with `fill` (C values) outside the image or, when null, torchvision's
// zero padding. y must not overlap x.
void apply_ops_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t K,
                  const int32_t* codes, const double* params, bool bilinear, const double* fill);
// Crop boxes[4n..4n+3] = (top, left, height, width) of image n resized to OH x OW (bilinear,
// align_corners=False, PIL/torch antialiasing when downscaling if antialias).
void resize_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, const int64_t* boxes,
               int64_t OH, int64_t OW, bool antialias);
// y[n, r, c] = x[n, iy[n*OH + r], ix[n*OW + c]] (all channels), or fill where an index is < 0.
void remap_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW,
              const int64_t* iy, const int64_t* ix, const uint8_t* fill);
// OpenCV's CLAHE on every channel plane (tilesX across, tilesY down; clip_limit <= 0: no clipping).
void clahe_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t tilesX,
              int64_t tilesY, double clip_limit);

struct OpKernels {
  decltype(&apply_ops_u8) apply_ops_u8_fn;
  decltype(&resize_u8) resize_u8_fn;
  decltype(&remap_u8) remap_u8_fn;
  decltype(&clahe_u8) clahe_u8_fn;
};

struct MixKernels {  // cpp/src/augment/mix.cpp
  decltype(&blend) blend_fn;
  decltype(&paste_boxes) paste_boxes_fn;
  decltype(&fill_boxes) fill_boxes_fn;
  decltype(&equalize_cv_lut) equalize_cv_lut_fn;
};

struct Kernels {
  decltype(&normalize_u8) normalize_u8_fn;
  decltype(&image_stats_u8) image_stats_u8_fn;
  decltype(&histogram_u8) histogram_u8_fn;
  decltype(&lut_u8) lut_u8_fn;
};

}  // namespace cnnkit::augment
