// Image kernel entry points: run the kernel that the family's table (cnnkit/registry.h) selects
// for the operation and element type at the active ISA level.
#include "cnnkit/augment.h"
#include "cnnkit/registry.h"

namespace cnnkit {
namespace scalar { extern const augment::Kernels augment_kernels; extern const augment::OpKernels augment_op_kernels; extern const augment::MixKernels mix_kernels; }
namespace avx2 { extern const augment::Kernels augment_kernels; extern const augment::OpKernels augment_op_kernels; extern const augment::MixKernels mix_kernels; }
namespace avx512 { extern const augment::Kernels augment_kernels; extern const augment::OpKernels augment_op_kernels; extern const augment::MixKernels mix_kernels; }
}  // namespace cnnkit

namespace cnnkit::augment {

registry::Table& kernel_table() {
  using registry::f32;
  using registry::f64;
  using registry::u8;
  static registry::Table t("augment", {{"augment_normalize", u8}, {"augment_image_stats", u8},
                                       {"augment_histogram", u8}, {"augment_lut", u8},
                                       {"augment_apply_ops", u8}, {"augment_resize", u8},
                                       {"augment_remap", u8}, {"augment_clahe", u8},
                                       {"augment_blend", f32 | f64}, {"augment_paste_boxes", f32 | f64},
                                       {"augment_fill_boxes", u8 | f32 | f64},
                                       {"augment_equalize_cv_lut", u8}});
  return t;
}

namespace {
enum Op { kNormalize, kImageStats, kHistogram, kLut, kApplyOps, kResize, kRemap, kClahe, kBlend, kPaste, kFill,
          kEqualizeLut };
Isa isa_for(Op op, unsigned elems = registry::u8) { return kernel_table().isa_for(op, elems); }
const Kernels& kernels(Op op) {
  return registry::of_isa(isa_for(op), scalar::augment_kernels, avx2::augment_kernels, avx512::augment_kernels);
}
const OpKernels& ops(Op op) {
  return registry::of_isa(isa_for(op), scalar::augment_op_kernels, avx2::augment_op_kernels,
                          avx512::augment_op_kernels);
}
const MixKernels& mix(Op op, unsigned elems) {
  return registry::of_isa(isa_for(op, elems), scalar::mix_kernels, avx2::mix_kernels, avx512::mix_kernels);
}
unsigned elem_bit(DType dt) { return dt == DType::u8 ? registry::u8 : dt == DType::f64 ? registry::f64 : registry::f32; }
}  // namespace

void normalize_u8(const uint8_t* x, float* y, int64_t N, int64_t P, int64_t C, bool nchw_out,
                  const float* scale, const float* hi, const float* lo, bool per_image) {
  kernels(kNormalize).normalize_u8_fn(x, y, N, P, C, nchw_out, scale, hi, lo, per_image);
}

void image_stats_u8(const uint8_t* x, int64_t N, int64_t PC, int64_t* sum, int64_t* sumsq,
                    uint8_t* mn, uint8_t* mx) {
  kernels(kImageStats).image_stats_u8_fn(x, N, PC, sum, sumsq, mn, mx);
}

void histogram_u8(const uint8_t* x, int64_t N, int64_t P, int64_t C, int64_t* hist) {
  kernels(kHistogram).histogram_u8_fn(x, N, P, C, hist);
}

void lut_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t P, int64_t C, const uint8_t* lut) {
  kernels(kLut).lut_u8_fn(x, y, N, P, C, lut);
}

void apply_ops_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t K,
                  const int32_t* codes, const double* params, bool bilinear, const double* fill) {
  ops(kApplyOps).apply_ops_u8_fn(x, y, N, H, W, C, K, codes, params, bilinear, fill);
}

void resize_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, const int64_t* boxes,
               int64_t OH, int64_t OW, bool antialias) {
  ops(kResize).resize_u8_fn(x, y, N, H, W, C, boxes, OH, OW, antialias);
}

void remap_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW,
              const int64_t* iy, const int64_t* ix, const uint8_t* fill) {
  ops(kRemap).remap_u8_fn(x, y, N, H, W, C, OH, OW, iy, ix, fill);
}

void clahe_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t tilesX,
              int64_t tilesY, double clip_limit) {
  ops(kClahe).clahe_u8_fn(x, y, N, H, W, C, tilesX, tilesY, clip_limit);
}

void blend(DType dt, const void* x, const void* src, const int64_t* perm, const double* a, void* out, int64_t N,
           int64_t S) {
  mix(kBlend, elem_bit(dt)).blend_fn(dt, x, src, perm, a, out, N, S);
}

void paste_boxes(DType dt, const void* x, const int64_t* perm, const int64_t* boxes, void* out, int64_t N, int64_t C,
                 int64_t H, int64_t W) {
  mix(kPaste, elem_bit(dt)).paste_boxes_fn(dt, x, perm, boxes, out, N, C, H, W);
}

void fill_boxes(DType dt, const void* x, void* out, int64_t N, int64_t H, int64_t W, int64_t C, bool nhwc,
                const int64_t* boxes, int64_t K, int mode, const double* values) {
  mix(kFill, elem_bit(dt)).fill_boxes_fn(dt, x, out, N, H, W, C, nhwc, boxes, K, mode, values);
}

void equalize_cv_lut(const int64_t* hist, uint8_t* lut, int64_t count) {
  mix(kEqualizeLut, registry::u8).equalize_cv_lut_fn(hist, lut, count);
}

}  // namespace cnnkit::augment
