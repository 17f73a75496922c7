// cnnkit normalization kernels (C++ API; the Python layer is cnnkit.ops.norm): the passes that
// batch norm and group norm are built from, over an (N, C, S) tensor in NCHW or NHWC order.
//
// Statistics can be per channel (over n and s: batch norm) or per sample and channel (over s
// only: the building block of group norm). They are accumulated in double, shifted by the first
// value of each reduction (so the sums stay small when the mean dwarfs the spread), over fixed
// blocks combined in a fixed order: the same bits at any thread count.
#pragma once

#include <cstdint>

#include "cnnkit/common.h"

namespace cnnkit::norm {

// The biased variance of a reduction of `count` values from its sums s1 and s2 of (x - shift) and
// (x - shift)^2: (s2 - s1*s1/count)/count, clamped at 0 as numpy.maximum(0.0, v) clamps it (-0.0
// gives 0.0; a NaN, from a NaN or infinite input, stays NaN, as torch's batch norm propagates it).
inline double shifted_var(double s1, double s2, double count) {
  const double v = (s2 - s1 * s1 / count) / count;
  return v > 0.0 || v != v ? v : 0.0;
}

// Element (n, c, s) is at nhwc ? (n*S + s)*C + c : (n*C + c)*S + s.
struct Shape {
  int64_t N, C, S;
  bool nhwc;
};

// Per-(n?, c) statistics: mean and biased variance over the reduced positions (s, and n when
// !per_sample). Outputs have C entries, or N*C when per_sample.
void stats(DType dt, const void* x, const Shape& sh, bool per_sample, double* mean, double* var);

// y = act(((x - mean) * invstd) * w + b + r): the subtraction is done in extended precision
// (hi/lo pair), w/b/r may be null (1, 0, 0). mean/invstd have C or (per_sample) N*C entries.
// r_affine (2*C values of dt, a then b; with r only): the residual term is fma(a[c], r, b[c]), one
// rounding, then with r_relu max(., 0) (another norm's output in the single-fma form of a
// convolution's fused prologue, r that norm's input: a norm never written, e.g. a projection
// shortcut's, or a network's stem before an identity block).
void apply(DType dt, const void* x, void* y, const void* r, const Shape& sh, bool per_sample,
           const double* mean, const double* invstd, const void* w, const void* b, bool relu,
           const void* r_affine = nullptr, bool r_relu = false);

// Sums over the reduced positions of g and g*(x - mean), g = dy masked by (mask > 0) when mask is
// given (the forward output of a fused ReLU), or, when mask_affine is given (2*C values of dt: a
// then b), by fma(a[c], x, b[c]) > 0: the ReLU of a convolution's fused prologue, recomputed from
// x with the prologue's own rounding, so the normalized tensor need not exist. Outputs have C or
// N*C entries. With pooled, dy holds N*C values: the gradient at every position s of sample n and
// channel c is dy[n*C + c] (a global average pool's adjoint, never written out whole). gres (not
// with pooled; may be null) receives g, which the apply pass can then read as dy without a mask.
void backward_reduce(DType dt, const void* dy, const void* x, const void* mask, const void* mask_affine, bool pooled,
                     void* gres, const Shape& sh, bool per_sample, const double* mean, double* sum_g,
                     double* sum_gx);

// dx = A*g - B - (x - mean)*D per (n?, c), g as above; if gres is given it receives g.
void backward_apply(DType dt, const void* dy, const void* x, const void* mask, const void* mask_affine, bool pooled,
                    void* dx, void* gres, const Shape& sh, bool per_sample, const double* mean, const double* A,
                    const double* B, const double* D);

// out[n*C + c] = the mean over s of act(fma(a[c], x, b[c])) (affine = a then b, 2*C values of dt;
// act the ReLU with relu), summed in double per (n, c): a batch norm's output in the single-fma form
// of a convolution's fused prologue, averaged as global_avg_pool_forward averages it, never written.
// (Its NCHW form and the pooled NCHW backward passes are correct but do not vectorise with GCC 12,
// 15-20x slower than the plain passes at 256 channels of 16x16: cnnkit.nn fuses NHWC only.)
// With mean (C values; m1 and m2 N*C each), in the same pass the two sums per (n, c) that the
// norm's backward needs when the gradient comes from this pool (the same value at every position
// of a sample and channel): m1 = the count of positions that act keeps (fma(a, x, b) > 0 with the
// ReLU, every position without), m2 = the sum of m*(double(x) - mean[c]) with m = 1 there and 0
// elsewhere, in a fixed order (sum of g = g*m1 and sum of g*(x - mean) = g*m2 for such a g).)
void affine_pool(DType dt, const void* x, const void* affine, bool relu, const Shape& sh, void* out,
                 const double* mean = nullptr, double* m1 = nullptr, double* m2 = nullptr);

// Running statistics: running[i] <- (1 - momentum) * running[i] + momentum * (stat[i] * factor),
// in double, rounded once to dt (factor: 1 for the mean, the unbiasing count/(count-1) for the
// variance). n entries; single-threaded (n is a channel count).
void update_running(DType dt, void* running, const double* stat, int64_t n, double momentum, double factor);

// invstd[i] = 1 / sqrt(var[i] + eps) in double, for n variances of type dt. Returns -1, or the index
// of the first variance that is negative, NaN or infinite (invstd is then incomplete). With batch
// (a batch's own variance, which a NaN or infinite input makes NaN) only a negative one is refused;
// a NaN gives a NaN invstd (as torch's batch norm propagates it).
int64_t invstd(DType dt, const void* var, int64_t n, double eps, double* invstd, bool batch = false);

// The small per-channel finishing steps between the passes (single-threaded: C is a channel
// count), in double with the rounding order of the NumPy expressions they replace, so the bits
// are the same (this file is compiled without FMA contraction).
//
// finish_sums: the batch statistics from a convolution epilogue's sums about a shift, the first
// output value of each channel (shift[c * shift_stride], float32): mean = shift + s1 / count,
// var = max(0, (s2 - s1 * s1 / count) / count), a NaN kept.
void finish_sums(const float* shift, int64_t shift_stride, const double* s1, const double* s2, int64_t C,
                 double count, double* mean, double* var);
// prologue_coefs: whether every channel's |mean| * invstd is <= limit (a NaN is not); if so,
// scale_shift = (scale, shift) for the next convolution's prologue: scale = float(invstd * w),
// shift = float(b - mean * double(scale)), w and b null meaning 1 and 0.
bool prologue_coefs(int64_t C, const double* mean, const double* invstd, const double* w, const double* b,
                    double limit, float* scale_shift);
// backward_coefs: A = w * invstd, B = A * sg / count, D = A * invstd * invstd * sgx / count, the
// coefficients of the apply pass (grad_x = A * g - B - (x - mean) * D); w null meaning 1.
void backward_coefs(int64_t C, const double* invstd, const double* w, double count, const double* sg,
                    const double* sgx, double* A, double* B, double* D);

using StatsFn = decltype(&stats);
using ApplyFn = decltype(&apply);
using BackwardReduceFn = decltype(&backward_reduce);
using BackwardApplyFn = decltype(&backward_apply);
using AffinePoolFn = decltype(&affine_pool);
struct Kernels {
  StatsFn stats_fn;
  ApplyFn apply_fn;
  BackwardReduceFn backward_reduce_fn;
  BackwardApplyFn backward_apply_fn;
  AffinePoolFn affine_pool_fn;
};

}  // namespace cnnkit::norm
