// The batch-norm backward's apply pass on pixel-major rows, for kernels that read the gradient at a
// norm's input while they run instead of a written copy (conv::DyApply). Defined in
// norm_kernels.cpp, once per ISA level, with that file's arithmetic (no contraction), so the values
// are the norm kernels' own.
#pragma once

#include <cstdint>

namespace cnnkit {
namespace CNNKIT_ISA_NS {

// out[m, c] = a[c]*g[m, c] - bq[c] - ((z[m, c] - hi[c]) - lo[c])*dd[c] for npix rows of C channels.
void bn_apply_pixels(const float* g, const float* z, float* out, int64_t npix, int64_t C, const float* a,
                     const float* bq, const float* hi, const float* lo, const float* dd);

}  // namespace CNNKIT_ISA_NS
}  // namespace cnnkit
