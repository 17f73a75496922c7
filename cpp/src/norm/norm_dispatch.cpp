// Normalization entry points: run the kernel that the family's table (cnnkit/registry.h) selects
// for the operation and dtype at the active ISA level; the per-channel helpers (running
// statistics, 1/sqrt(var + eps)) run here, on C values.
#include <cmath>

#include "cnnkit/norm.h"
#include "cnnkit/registry.h"

namespace cnnkit {
namespace scalar { extern const norm::Kernels norm_kernels; }
namespace avx2 { extern const norm::Kernels norm_kernels; }
namespace avx512 { extern const norm::Kernels norm_kernels; }
}  // namespace cnnkit

namespace cnnkit::norm {

registry::Table& kernel_table() {
  constexpr unsigned f = registry::f32 | registry::f64;
  static registry::Table t("norm", {{"norm_stats", f}, {"norm_apply", f}, {"norm_backward_reduce", f},
                                    {"norm_backward_apply", f}, {"norm_affine_pool", f}});
  return t;
}

namespace {
enum Op { kStats, kApply, kBackwardReduce, kBackwardApply, kAffinePool };
const Kernels& kernels(Op op, DType dt) {
  const Isa isa = kernel_table().isa_for(op, dt == DType::f32 ? registry::f32 : registry::f64);
  return registry::of_isa(isa, scalar::norm_kernels, avx2::norm_kernels, avx512::norm_kernels);
}
}  // namespace

void stats(DType dt, const void* x, const Shape& sh, bool ps, double* mean, double* var) {
  kernels(kStats, dt).stats_fn(dt, x, sh, ps, mean, var);
}
void apply(DType dt, const void* x, void* y, const void* r, const Shape& sh, bool ps,
           const double* mean, const double* invstd, const void* w, const void* b, bool relu, const void* r_affine,
           bool r_relu) {
  kernels(kApply, dt).apply_fn(dt, x, y, r, sh, ps, mean, invstd, w, b, relu, r_affine, r_relu);
}
void backward_reduce(DType dt, const void* dy, const void* x, const void* mask, const void* mask_affine, bool pooled,
                     void* gres, const Shape& sh, bool ps, const double* mean, double* sum_g, double* sum_gx) {
  kernels(kBackwardReduce, dt).backward_reduce_fn(dt, dy, x, mask, mask_affine, pooled, gres, sh, ps, mean, sum_g,
                                                  sum_gx);
}
void backward_apply(DType dt, const void* dy, const void* x, const void* mask, const void* mask_affine, bool pooled,
                    void* dx, void* gres, const Shape& sh, bool ps, const double* mean, const double* A,
                    const double* B, const double* D) {
  kernels(kBackwardApply, dt).backward_apply_fn(dt, dy, x, mask, mask_affine, pooled, dx, gres, sh, ps, mean, A, B,
                                                D);
}
void affine_pool(DType dt, const void* x, const void* affine, bool relu, const Shape& sh, void* out,
                 const double* mean, double* m1, double* m2) {
  kernels(kAffinePool, dt).affine_pool_fn(dt, x, affine, relu, sh, out, mean, m1, m2);
}

namespace {
template <typename T>
void update_running_t(T* r, const double* stat, int64_t n, double momentum, double factor) {
  for (int64_t i = 0; i < n; ++i) r[i] = T((1.0 - momentum) * double(r[i]) + momentum * (stat[i] * factor));
}
template <typename T>
int64_t invstd_t(const T* var, int64_t n, double eps, double* out, bool batch) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = double(var[i]);
    if (batch ? v < 0.0 : !(v >= 0.0) || !(v <= 1.7976931348623157e308)) return i;
    out[i] = 1.0 / std::sqrt(v + eps);
  }
  return -1;
}
}  // namespace

void update_running(DType dt, void* running, const double* stat, int64_t n, double momentum, double factor) {
  if (dt == DType::f32)
    update_running_t(static_cast<float*>(running), stat, n, momentum, factor);
  else
    update_running_t(static_cast<double*>(running), stat, n, momentum, factor);
}

int64_t invstd(DType dt, const void* var, int64_t n, double eps, double* out, bool batch) {
  return dt == DType::f32 ? invstd_t(static_cast<const float*>(var), n, eps, out, batch)
                          : invstd_t(static_cast<const double*>(var), n, eps, out, batch);
}

void finish_sums(const float* shift, int64_t shift_stride, const double* s1, const double* s2, int64_t C,
                 double count, double* mean, double* var) {
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = double(shift[c * shift_stride]) + s1[c] / count;
    var[c] = shifted_var(s1[c], s2[c], count);
  }
}

bool prologue_coefs(int64_t C, const double* mean, const double* invstd, const double* w, const double* b,
                    double limit, float* scale_shift) {
  for (int64_t c = 0; c < C; ++c)
    if (!(std::fabs(mean[c]) * invstd[c] <= limit)) return false;
  for (int64_t c = 0; c < C; ++c) {
    const float scale = float(invstd[c] * (w ? w[c] : 1.0));
    scale_shift[c] = scale;
    scale_shift[C + c] = float((b ? b[c] : 0.0) - mean[c] * double(scale));
  }
  return true;
}

void backward_coefs(int64_t C, const double* invstd, const double* w, double count, const double* sg,
                    const double* sgx, double* A, double* B, double* D) {
  for (int64_t c = 0; c < C; ++c) {
    const double a = (w ? w[c] : 1.0) * invstd[c];
    A[c] = a;
    B[c] = a * sg[c] / count;
    D[c] = a * invstd[c] * invstd[c] * sgx[c] / count;
  }
}

}  // namespace cnnkit::norm
