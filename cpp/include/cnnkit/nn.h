// cnnkit layer kernels used by cnnkit.nn (pooling, the fused softmax cross-entropy).
#pragma once

#include <cstdint>

namespace cnnkit::nn {

// Geometry of a 2-D pooling: N images of C channels, H x W in, OH x OW out, window kh x kw,
// stride sh x sw, padding ph x pw; NHWC when nhwc, else NCHW.
struct PoolGeom {
  int64_t N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw;
  bool nhwc;
};

// mode 0, max: y = the window's maximum (padding never wins; NaN propagates; the first maximum in
// row-major window order is kept), idx = its position h*W + w in the input plane.
// mode 1, average: y = sum of the in-image values / the window's size within the padded input
// (torch's count_include_pad=True); mode 2: / the number of in-image values (count_include_pad=False).
// Windows start inside the padded input; with ceil_mode the last may run past it.
void pool2d_forward(const float* x, float* y, int32_t* idx, const PoolGeom& g, int mode);
// gx = the adjoint: max routes each gradient to idx, average spreads it over the window.
void pool2d_backward(const float* gy, float* gx, const int32_t* idx, const PoolGeom& g, int mode);

// Global average pooling over S = H*W positions: y[n, c] = sum_s x[n, c, s] / S (summed in double),
// and its adjoint gx[n, c, s] = gy[n, c] / S; NHWC when nhwc.
void global_avg_pool_forward(const float* x, float* y, int64_t N, int64_t C, int64_t S, bool nhwc);
void global_avg_pool_backward(const float* gy, float* gx, int64_t N, int64_t C, int64_t S, bool nhwc);

// Softmax cross-entropy over rows of K logits, fused: loss[n] = logsumexp(z[n]) - sum_k t[n,k] z[n,k]
// with targets t = (1 - eps) onehot(label) + eps/K (labels given) or soft rows; grad[n] =
// (softmax(z[n]) * sum(t[n]) - t[n]) * scale. Computed in double per row.
void softmax_xent(const float* z, const int64_t* labels, const float* soft, int64_t N, int64_t K, double eps,
                  double* loss, float* grad, double scale);

// Per-ISA kernels (cpp/src/nn/layers.cpp, one copy per ISA level).
struct Kernels {
  decltype(&pool2d_forward) pool2d_forward_fn;
  decltype(&pool2d_backward) pool2d_backward_fn;
  decltype(&global_avg_pool_forward) global_avg_pool_forward_fn;
  decltype(&global_avg_pool_backward) global_avg_pool_backward_fn;
  decltype(&softmax_xent) softmax_xent_fn;
};

}  // namespace cnnkit::nn
