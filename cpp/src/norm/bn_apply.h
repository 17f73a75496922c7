// The batch-norm backward's apply pass on pixel-major rows, for kernels that read the gradient at a
// norm's input while they run instead of a written copy (conv::DyApply). Defined in
// norm_kernels.cpp, once per ISA level, with that file's arithmetic (no contraction), so the values
// are the norm kernels' own.
#pragma once

#include <cstdint>

#include "cnnkit/conv.h"

namespace cnnkit {
namespace CNNKIT_ISA_NS {

// out[m, c] = a[c]*g[m, c] - bq[c] - ((z[m, c] - hi[c]) - lo[c])*dd[c] for npix rows of C channels.
void bn_apply_pixels(const float* g, const float* z, float* out, int64_t npix, int64_t C, const float* a,
                     const float* bq, const float* hi, const float* lo, const float* dd);

// The same for the rows [r0, r0 + npix) of a tensor whose gradient is given per sample (gs > 0: gp
// holds one value per sample and channel, row r's sample r / gs; gs == 0: gp holds the rows
// themselves, row r at gp + r*C) and masked, with ms and mh, by fma(ms[c], z, mh[c]) > 0 (a +0
// where not kept): norm_backward_apply's values with pooled and mask_affine = concat(ms, mh).
void bn_apply_pixels_masked(const float* gp, int64_t gs, int64_t r0, const float* z, float* out, int64_t npix,
                            int64_t C, const float* a, const float* bq, const float* hi, const float* lo,
                            const float* dd, const float* ms, const float* mh);

// Rows [r0, r0 + npix) of ap's apply pass (C channels) into out.
inline void bn_apply_rows(const conv::DyApply& ap, int64_t r0, float* out, int64_t npix, int64_t C) {
  if (ap.pooled_s > 0 || ap.mask)
    bn_apply_pixels_masked(ap.g, ap.pooled_s, r0, ap.z + r0 * C, out, npix, C, ap.a, ap.b, ap.hi, ap.lo, ap.d,
                           ap.mask, ap.mask ? ap.mask + C : nullptr);
  else
    bn_apply_pixels(ap.g + r0 * C, ap.z + r0 * C, out, npix, C, ap.a, ap.b, ap.hi, ap.lo, ap.d);
}

}  // namespace CNNKIT_ISA_NS
}  // namespace cnnkit
