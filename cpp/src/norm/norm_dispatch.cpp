// Normalization entry points: forward to the kernels of the active ISA level.
#include "cnnkit/norm.h"

namespace cnnkit {
namespace scalar { extern const norm::Kernels norm_kernels; }
namespace avx2 { extern const norm::Kernels norm_kernels; }
namespace avx512 { extern const norm::Kernels norm_kernels; }
}  // namespace cnnkit

namespace cnnkit::norm {
namespace {
const Kernels& kernels() {
  return by_isa(scalar::norm_kernels, avx2::norm_kernels, avx512::norm_kernels);
}
}  // namespace

void stats(DType dt, const void* x, const Shape& sh, bool ps, double* mean, double* var) {
  kernels().stats_fn(dt, x, sh, ps, mean, var);
}
void apply(DType dt, const void* x, void* y, const void* r, const Shape& sh, bool ps,
           const double* mean, const double* invstd, const void* w, const void* b, bool relu) {
  kernels().apply_fn(dt, x, y, r, sh, ps, mean, invstd, w, b, relu);
}
void backward_reduce(DType dt, const void* dy, const void* x, const void* mask, const Shape& sh,
                     bool ps, const double* mean, double* sum_g, double* sum_gx) {
  kernels().backward_reduce_fn(dt, dy, x, mask, sh, ps, mean, sum_g, sum_gx);
}
void backward_apply(DType dt, const void* dy, const void* x, const void* mask, void* dx, void* gres,
                    const Shape& sh, bool ps, const double* mean, const double* A, const double* B,
                    const double* D) {
  kernels().backward_apply_fn(dt, dy, x, mask, dx, gres, sh, ps, mean, A, B, D);
}

}  // namespace cnnkit::norm
