// Image kernel entry points: forward to the kernels of the active ISA level.
#include "cnnkit/augment.h"

namespace cnnkit {
namespace scalar { extern const augment::Kernels augment_kernels; extern const augment::OpKernels augment_op_kernels; }
namespace avx2 { extern const augment::Kernels augment_kernels; extern const augment::OpKernels augment_op_kernels; }
namespace avx512 { extern const augment::Kernels augment_kernels; extern const augment::OpKernels augment_op_kernels; }
}  // namespace cnnkit

namespace cnnkit::augment {

void normalize_u8(const uint8_t* x, float* y, int64_t N, int64_t P, int64_t C, bool nchw_out,
                  const float* scale, const float* hi, const float* lo, bool per_image) {
  by_isa(scalar::augment_kernels, avx2::augment_kernels, avx512::augment_kernels)
      .normalize_u8_fn(x, y, N, P, C, nchw_out, scale, hi, lo, per_image);
}

void image_stats_u8(const uint8_t* x, int64_t N, int64_t PC, int64_t* sum, int64_t* sumsq,
                    uint8_t* mn, uint8_t* mx) {
  by_isa(scalar::augment_kernels, avx2::augment_kernels, avx512::augment_kernels)
      .image_stats_u8_fn(x, N, PC, sum, sumsq, mn, mx);
}

void histogram_u8(const uint8_t* x, int64_t N, int64_t P, int64_t C, int64_t* hist) {
  by_isa(scalar::augment_kernels, avx2::augment_kernels, avx512::augment_kernels)
      .histogram_u8_fn(x, N, P, C, hist);
}

void lut_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t P, int64_t C, const uint8_t* lut) {
  by_isa(scalar::augment_kernels, avx2::augment_kernels, avx512::augment_kernels)
      .lut_u8_fn(x, y, N, P, C, lut);
}

namespace {
const OpKernels& ops() {
  return by_isa(scalar::augment_op_kernels, avx2::augment_op_kernels, avx512::augment_op_kernels);
}
}  // namespace

void apply_ops_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t K,
                  const int32_t* codes, const double* params, bool bilinear, const double* fill) {
  ops().apply_ops_u8_fn(x, y, N, H, W, C, K, codes, params, bilinear, fill);
}

void resize_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, const int64_t* boxes,
               int64_t OH, int64_t OW, bool antialias) {
  ops().resize_u8_fn(x, y, N, H, W, C, boxes, OH, OW, antialias);
}

void remap_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW,
              const int64_t* iy, const int64_t* ix, const uint8_t* fill) {
  ops().remap_u8_fn(x, y, N, H, W, C, OH, OW, iy, ix, fill);
}

void clahe_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t tilesX,
              int64_t tilesY, double clip_limit) {
  ops().clahe_u8_fn(x, y, N, H, W, C, tilesX, tilesY, clip_limit);
}

}  // namespace cnnkit::augment
