// Layer kernels for cnnkit.nn (see cnnkit/nn.h), compiled once per ISA level (namespace
// cnnkit::<isa>::layers) and dispatched by nn_dispatch.cpp.
//   pool2d: max / average pooling, forward and backward, one (image, channel) plane per task, so
//   the scatter in the backward pass is ordered within a plane and results do not depend on the
//   thread count.
//   softmax_xent: log-softmax and cross-entropy fused, in double per row, with its gradient.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cnnkit/common.h"
#include "cnnkit/nn.h"
#include "common/channel_mean.h"
#include "common/isa_vector.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit::CNNKIT_ISA_NS::layers {
using nn::PoolGeom;
namespace {

struct Plane {  // element (h, w) of one (n, c) plane
  int64_t base, row, col;
};

inline Plane plane(const PoolGeom& g, int64_t n, int64_t c, int64_t H, int64_t W) {
  if (g.nhwc) return {n * H * W * g.C + c, W * g.C, g.C};
  return {(n * g.C + c) * H * W, W, 1};
}

// The input rows [ha, hb) and columns [wa, wb) under output (oh, ow)'s window, which starts at
// (h0, w0) in padded coordinates.
struct Window {
  int64_t h0, w0, ha, hb, wa, wb;
  Window(const PoolGeom& g, int64_t oh, int64_t ow)
      : h0(oh * g.sh - g.ph), w0(ow * g.sw - g.pw), ha(std::max<int64_t>(h0, 0)),
        hb(std::min<int64_t>(h0 + g.kh, g.H)), wa(std::max<int64_t>(w0, 0)), wb(std::min<int64_t>(w0 + g.kw, g.W)) {}
  // Average pooling's divisor (torch's): mode 1 counts the window clipped to the padded input
  // (count_include_pad; kh*kw except where ceil_mode lets a window run past the padding), mode 2
  // only the input elements under it.
  int64_t divisor(const PoolGeom& g, int mode) const {
    if (mode == 2) return std::max<int64_t>((hb - ha) * (wb - wa), 1);
    return (std::min(h0 + g.kh, g.H + g.ph) - h0) * (std::min(w0 + g.kw, g.W + g.pw) - w0);
  }
};

}  // namespace

void pool2d_forward(const float* x, float* y, int32_t* idx, const PoolGeom& g, int mode) {
  const int64_t planes = g.N * g.C;
  const int nt = planes * g.OH * g.OW < (1 << 14) ? 1 : num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const int64_t n = pl / g.C, c = pl % g.C;
    const Plane in = plane(g, n, c, g.H, g.W), out = plane(g, n, c, g.OH, g.OW);
    for (int64_t oh = 0; oh < g.OH; ++oh)
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const Window win(g, oh, ow);
        const int64_t ha = win.ha, hb = win.hb, wa = win.wa, wb = win.wb;
        const int64_t o = out.base + oh * out.row + ow * out.col;
        if (mode == 0) {
          float m = -std::numeric_limits<float>::infinity();
          int32_t arg = int32_t(ha * g.W + wa);
          for (int64_t h = ha; h < hb; ++h)
            for (int64_t w = wa; w < wb; ++w) {
              const float v = x[in.base + h * in.row + w * in.col];
              if (v > m || std::isnan(v)) {
                m = v;
                arg = int32_t(h * g.W + w);
                if (std::isnan(v)) goto done;
              }
            }
        done:
          y[o] = m;
          idx[o] = arg;
        } else {
          float s = 0.0f;
          for (int64_t h = ha; h < hb; ++h)
            for (int64_t w = wa; w < wb; ++w) s += x[in.base + h * in.row + w * in.col];
          y[o] = s / float(win.divisor(g, mode));
        }
      }
  }
}

void pool2d_backward(const float* gy, float* gx, const int32_t* idx, const PoolGeom& g, int mode) {
  const int64_t planes = g.N * g.C;
  const int nt = planes * g.H * g.W < (1 << 14) ? 1 : num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const int64_t n = pl / g.C, c = pl % g.C;
    const Plane in = plane(g, n, c, g.H, g.W), out = plane(g, n, c, g.OH, g.OW);
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t w = 0; w < g.W; ++w) gx[in.base + h * in.row + w * in.col] = 0.0f;
    for (int64_t oh = 0; oh < g.OH; ++oh)
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const int64_t o = out.base + oh * out.row + ow * out.col;
        if (mode == 0) {
          const int64_t p = idx[o];
          gx[in.base + (p / g.W) * in.row + (p % g.W) * in.col] += gy[o];
          continue;
        }
        const Window win(g, oh, ow);
        const int64_t ha = win.ha, hb = win.hb, wa = win.wa, wb = win.wb;
        const float v = gy[o] / float(win.divisor(g, mode));
        for (int64_t h = ha; h < hb; ++h)
          for (int64_t w = wa; w < wb; ++w) gx[in.base + h * in.row + w * in.col] += v;
      }
  }
}

void global_avg_pool_forward(const float* x, float* y, int64_t N, int64_t C, int64_t S, bool nhwc) {
  const int nt = N * C * S < (1 << 15) ? 1 : num_threads();
  channel_means(x, N, C, S, nhwc, nt, [](int64_t, float v) { return v; }, y);
}

void global_avg_pool_backward(const float* gy, float* gx, int64_t N, int64_t C, int64_t S, bool nhwc) {
  const int nt = N * C * S < (1 << 15) ? 1 : num_threads();
  const float inv = float(1.0 / double(S));
  if (!nhwc) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t pl = 0; pl < N * C; ++pl) {
      const float v = gy[pl] * inv;
      float* __restrict p = gx + pl * S;
#pragma omp simd
      for (int64_t i = 0; i < S; ++i) p[i] = v;
    }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) {
    const float* __restrict g = gy + n * C;
    for (int64_t i = 0; i < S; ++i) {
      float* __restrict p = gx + (n * S + i) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) p[c] = g[c] * inv;
    }
  }
}

void softmax_xent(const float* z, const int64_t* labels, const float* soft, int64_t N, int64_t K, double eps,
                  double* loss, float* grad, double scale) {
  const int nt = N * K < (1 << 14) ? 1 : num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) {
    const float* zn = z + n * K;
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < K; ++k) m = std::max(m, double(zn[k]));
    double s = 0.0;
    for (int64_t k = 0; k < K; ++k) s += std::exp(double(zn[k]) - m);
    const double lse = m + std::log(s);
    // d/dz of sum_k t_k (lse - z_k) is softmax * sum(t) - t (sum(t) = 1 for label targets)
    double tsum = 1.0;
    if (!labels) {
      tsum = 0.0;
      for (int64_t k = 0; k < K; ++k) tsum += double(soft[n * K + k]);
    }
    double l = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      const double t = labels ? (k == labels[n] ? 1.0 - eps : 0.0) + eps / double(K) : double(soft[n * K + k]);
      const double p = std::exp(double(zn[k]) - lse);
      l += t * (lse - double(zn[k]));
      if (grad) grad[n * K + k] = float((p * tsum - t) * scale);
    }
    loss[n] = l;
  }
}

}  // namespace cnnkit::CNNKIT_ISA_NS::layers

namespace cnnkit::CNNKIT_ISA_NS {
extern const nn::Kernels nn_kernels = {layers::pool2d_forward, layers::pool2d_backward, layers::global_avg_pool_forward,
                                       layers::global_avg_pool_backward, layers::softmax_xent};
}  // namespace cnnkit::CNNKIT_ISA_NS
