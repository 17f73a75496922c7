// Dense convolution with few input channels (C <= 4, one group; a network's stem on RGB or grey
// images), NHWC, float32, K a multiple of 16 up to 64 output channels:
//   y[n, oh, ow, k] = b[k] + sum_{i, j, c} x[n, oh*sH + i*dH - pT, ow*sW + j*dW - pL, c] * w[k, c, i, j]
//   dW[k, c, i, j] = sum_{n, oh, ow} dy[n, oh, ow, k] * x[n, ih, iw, c];  db[k] = sum dy[n, oh, ow, k]
// An im2col GEMM has only kh*kw*C (27 for 3x3 RGB) columns here and runs far below the FMA roof;
// these loops keep one pixel's K outputs in registers (K/16 vectors) and broadcast each input
// value against a row of the transposed weights. The weight gradient sums over row pieces fixed
// by the shape (float within a piece: per chunk of its rows, the chunks added in order; double
// across pieces, in order), so the result does not depend on the thread count.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cnnkit/common.h"
#include "conv_internal.h"
#include "common/isa_vector.h"
#include "dw_common.h"
#include "norm/bn_apply.h"
#include "scratch.h"
#include "unit_stats.h"

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {

// Keeps a vector in a register: each weight vector is loaded once and used by the PX pixels
// (GCC otherwise folds its load into every FMA that uses it, PX loads of each, and the loop became
// load-bound: 3x3 RGB -> 32 at 32x32, N = 64, AVX2, 1.25 loads per FMA; with it the forward ran
// 2.26 -> 1.59 ms on one thread).
#if defined(__AVX512F__)
#define CNNKIT_IN_REGISTER(v) asm("" : "+v"(v))
#elif defined(__AVX__)
#define CNNKIT_IN_REGISTER(v) asm("" : "+x"(v))
#else
#define CNNKIT_IN_REGISTER(v) (void)0
#endif

// PX pixels of one output row at once (PX*NV accumulators), sharing each weight-vector load.
// `full`: every tap of the PX pixels lies inside the image row (no column checks).
template <int NV, int PX>
inline void small_cin_pixels(const float* xn, const float* W, const float* b, float* yp, const Geom& g, int64_t oh,
                             int64_t ow0) {
  using V = vec_t<float>;
  constexpr int L = Vec<float>::n, K = NV * L;
  const int64_t C = g.C;
  V acc[PX][NV];
  for (int p = 0; p < PX; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = b ? vload(b + v * L) : vsplat(0.0f);
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = oh * g.sh + i * g.dh - g.pt;
    if (ih < 0 || ih >= g.H) continue;
    const float* xr = xn + ih * g.W * C;
    for (int64_t j = 0; j < g.kw; ++j) {
      const float* wp = W + (i * g.kw + j) * C * K;
      for (int64_t c = 0; c < C; ++c) {
        V wv[NV];
        for (int v = 0; v < NV; ++v) {
          wv[v] = vload(wp + c * K + v * L);
          CNNKIT_IN_REGISTER(wv[v]);
        }
        for (int p = 0; p < PX; ++p) {
          const int64_t iw = (ow0 + p) * g.sw + j * g.dw - g.pl;
          if (PX == 1 && (iw < 0 || iw >= g.W)) continue;
          const V xv = vsplat(xr[iw * C + c]);
          for (int v = 0; v < NV; ++v) acc[p][v] += xv * wv[v];
        }
      }
    }
  }
  for (int p = 0; p < PX; ++p)
    for (int v = 0; v < NV; ++v) vstore(yp + p * K + v * L, acc[p][v]);
}

// The same for a window that lies wholly inside the image, with the kernel size, the input
// channels and the column stride fixed at compile time (dilation 1): the KH*KW*CC steps unroll
// into straight-line code whose input values are broadcast from a row pointer plus a constant
// offset (the general loops spend as much on index arithmetic as on the FMAs for 3x3 RGB). The
// same products added in the same order as small_cin_pixels, so the same bits.
template <int NV, int PX, int KH, int KW, int CC, int SW>
inline void small_cin_fixed(const float* xn, const float* W, const float* b, float* yp, const Geom& g, int64_t oh,
                            int64_t ow0) {
  using V = vec_t<float>;
  constexpr int L = Vec<float>::n, K = NV * L;
  V acc[PX][NV];
  for (int p = 0; p < PX; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = b ? vload(b + v * L) : vsplat(0.0f);
  const int64_t rs = g.W * CC;
  const float* x0 = xn + (oh * g.sh - g.pt) * rs + (ow0 * SW - g.pl) * CC;
#pragma GCC unroll 8
  for (int i = 0; i < KH; ++i) {
    const float* xr = x0 + i * rs;
#pragma GCC unroll 8
    for (int j = 0; j < KW; ++j)
#pragma GCC unroll 4
      for (int c = 0; c < CC; ++c) {
        V wv[NV];
        for (int v = 0; v < NV; ++v) {
          wv[v] = vload(W + ((i * KW + j) * CC + c) * K + v * L);
          CNNKIT_IN_REGISTER(wv[v]);
        }
        for (int p = 0; p < PX; ++p) {
          const V xv = vsplat(xr[(p * SW + j) * CC + c]);
          for (int v = 0; v < NV; ++v) acc[p][v] += xv * wv[v];
        }
      }
  }
  for (int p = 0; p < PX; ++p)
    for (int v = 0; v < NV; ++v) vstore(yp + p * K + v * L, acc[p][v]);
}

// One output row's columns [lo, hi) (windows inside the image, rows checked by the caller) on
// small_cin_fixed in blocks of PX, the rest one pixel at a time; returns the first column not done.
template <int NV, int PX, int SW>
inline int64_t small_cin_fixed_row(const float* xn, const float* W, const float* b, float* yr, const Geom& g,
                                   int64_t oh, int64_t lo, int64_t hi) {
  constexpr int K = NV * Vec<float>::n;
  int64_t ow = lo;
  for (; ow + PX <= hi; ow += PX) small_cin_fixed<NV, PX, 3, 3, 3, SW>(xn, W, b, yr + ow * K, g, oh, ow);
  for (; ow < hi; ++ow) small_cin_fixed<NV, 1, 3, 3, 3, SW>(xn, W, b, yr + ow * K, g, oh, ow);
  return ow;
}

// With sum/sumsq (the fused forward's statistics, conv::Fused): the work items are units of output
// rows fixed by the shape (an image, or a band of its rows for small batches), each reducing its
// rows' shifted sums while they are in cache (unit_stats.h); else one item per output row.
template <int NV>
void small_cin_forward_k(const float* x, const float* w, const float* b, float* y, const Geom& g, double* sum,
                         double* sumsq) {
  constexpr int L = Vec<float>::n, K = NV * L, PX = NV <= 2 ? 4 : 2;
  const int64_t C = g.C, taps = g.kh * g.kw;
  isa_vector<float> wt(static_cast<size_t>(taps * C * K));  // [(i*kw + j)*C + c][k]
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t t = 0; t < taps; ++t) wt[size_t((t * C + c) * K + k)] = w[(k * C + c) * taps + t];
  // output columns whose whole window row lies inside the image: [lo, hi)
  const int64_t lo = std::min<int64_t>(g.Wo, (g.pl + g.sw - 1) / g.sw);
  int64_t hi = lo;
  while (hi < g.Wo && hi * g.sw + (g.kw - 1) * g.dw - g.pl < g.W) ++hi;
  const float* W = wt.data();
  // 3x3 RGB at column stride 1 or 2, dilation 1: interior rows take small_cin_fixed.
  const bool fixed = C == 3 && g.kh == 3 && g.kw == 3 && g.dh == 1 && g.dw == 1 && (g.sw == 1 || g.sw == 2);
  constexpr int PXF = NV <= 2 ? 6 : 2;
  auto row = [&](int64_t r) {
    const int64_t n = r / g.Ho, oh = r % g.Ho;
    const float* xn = x + n * g.H * g.W * C;
    float* yr = y + r * g.Wo * K;
    int64_t ow = 0;
    for (; ow < lo; ++ow) small_cin_pixels<NV, 1>(xn, W, b, yr + ow * K, g, oh, ow);
    const int64_t ih0 = oh * g.sh - g.pt;
    if (fixed && ih0 >= 0 && ih0 + 2 < g.H)
      ow = g.sw == 1 ? small_cin_fixed_row<NV, PXF, 1>(xn, W, b, yr, g, oh, ow, hi)
                     : small_cin_fixed_row<NV, PXF, 2>(xn, W, b, yr, g, oh, ow, hi);
    for (; ow + PX <= hi; ow += PX) small_cin_pixels<NV, PX>(xn, W, b, yr + ow * K, g, oh, ow);
    for (; ow < g.Wo; ++ow) small_cin_pixels<NV, 1>(xn, W, b, yr + ow * K, g, oh, ow);
  };
  const int64_t rows = g.N * g.Ho;
  if (!sum) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t r = 0; r < rows; ++r) row(r);
    return;
  }
  const RowUnits ru(g);
  const UnitStats st = unit_stats(ru.units, K);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < ru.units; ++u) {
    int64_t n, oh0, oh1;
    ru.rows(u, n, oh0, oh1);
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      row(n * g.Ho + oh);
      unit_stats_add(st, u, y + (n * g.Ho + oh) * g.Wo * K, g.Wo, oh == oh0);
    }
  }
  unit_stats_combine(st, [&](int64_t u) { return ru.pixels(u); }, sum, sumsq);
}

// Weight gradient: for one input channel c and one kernel row i, the kw taps' accumulators
// (kw*NV vectors, kw <= 7 here; wider kernels loop over column blocks) stay in registers while
// the piece's pixels stream by; the piece's dy rows come from L2 for every (c, i).
template <int NV, int KW>
inline void small_cin_wgrad_row(const float* dy, const float* x, float* pw, const Geom& g, int64_t r0, int64_t r1,
                                int64_t rb, int64_t c, int64_t i, int64_t j0) {
  using V = vec_t<float>;
  constexpr int L = Vec<float>::n, K = NV * L;
  const int64_t C = g.C;
  V acc[KW][NV];
  for (int t = 0; t < KW; ++t)
    for (int v = 0; v < NV; ++v) acc[t][v] = vsplat(0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / g.Ho, oh = r % g.Ho;
    const int64_t ih = oh * g.sh + i * g.dh - g.pt;
    if (ih < 0 || ih >= g.H) continue;
    const float* xr = x + (n * g.H + ih) * g.W * C + c;
    const float* dr = dy + (r - rb) * g.Wo * K;
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      V dv[NV];
      for (int v = 0; v < NV; ++v) dv[v] = vload(dr + ow * K + v * L);
      const int64_t iw0 = ow * g.sw + j0 * g.dw - g.pl;
      for (int t = 0; t < KW; ++t) {
        const int64_t iw = iw0 + t * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        const V xv = vsplat(xr[iw * C]);
        for (int v = 0; v < NV; ++v) acc[t][v] += xv * dv[v];
      }
    }
  }
  for (int t = 0; t < KW; ++t)
    for (int v = 0; v < NV; ++v) {
      float* dst = pw + ((i * g.kw + j0 + t) * C + c) * K + v * L;
      vstore(dst, vload(dst) + acc[t][v]);
    }
}

// 3x3 kernels at dilation 1, column stride SW: the nine taps of input channel c at once for a
// slice of NS vectors of the K outputs from k0 (9*NS accumulators), reading x from xp, its copy
// with the padding written as zeros (Hp x Wp pixels an image, pixel (ih + pt, iw + pl) = x[ih, iw]),
// so that no tap is tested against the image's edges. Slices keep the accumulators in registers
// (one vector with AVX2's 16 registers: three taps of all four vectors of K = 32, 12 accumulators
// beside 4 dy vectors and the broadcast, spilled), and each reads only its part of dy. Per tap and
// output the same products in the same order (rows, then columns) as small_cin_wgrad_row, with
// the taps in the padding adding exact zeros (which leave a sum started at +0 as it is), so the
// same bits.
template <int NS, int SW>
inline void small_cin_wgrad_33(const float* dy, const float* xp, int64_t Hp, int64_t Wp, float* pw, const Geom& g,
                               int64_t K, int64_t k0, int64_t r0, int64_t r1, int64_t rb, int64_t c,
                               SpreadPrefetch& pf) {
  using V = vec_t<float>;
  constexpr int L = Vec<float>::n;
  const int64_t C = g.C, rs = Wp * C;
  V acc[9][NS];
  for (int t = 0; t < 9; ++t)
    for (int v = 0; v < NS; ++v) acc[t][v] = vsplat(0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / g.Ho, oh = r % g.Ho;
    const float* xr = xp + (n * Hp + oh * g.sh) * rs + c;
    const float* dr = dy + (r - rb) * g.Wo * K + k0;
    pf.step();
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      V dv[NS];
      for (int v = 0; v < NS; ++v) {
        dv[v] = vload(dr + ow * K + v * L);
        CNNKIT_IN_REGISTER(dv[v]);
      }
      const float* xw = xr + ow * SW * C;
#pragma GCC unroll 3
      for (int i = 0; i < 3; ++i)
#pragma GCC unroll 3
        for (int j = 0; j < 3; ++j) {
          const V xv = vsplat(xw[i * rs + j * C]);
          for (int v = 0; v < NS; ++v) acc[i * 3 + j][v] += xv * dv[v];
        }
    }
  }
  for (int t = 0; t < 9; ++t)
    for (int v = 0; v < NS; ++v) {
      float* dst = pw + (t * C + c) * K + k0 + v * L;
      vstore(dst, vload(dst) + acc[t][v]);
    }
}

// Output rows per chunk of the weight gradient: about 64 KiB of dy (fixed by the shape), which
// the chunk's passes over the input channels and slices re-read from L2.
inline int64_t wgrad_chunk_rows(const Geom& g) { return std::max<int64_t>(1, (int64_t(16) << 10) / (g.Wo * g.K)); }

// ap (null: dy as given): dy is the batch-norm backward's apply pass of ap (conv::DyApply),
// evaluated a chunk of rows at a time into a buffer of the worker, the values the norm's own pass
// writes (bn_apply_pixels), so the same bits as that pass followed by this one.
template <int NV>
void small_cin_backward_weight_k(const float* dy, const float* x, float* dw, float* db, const Geom& g,
                                 const DyApply* ap) {
  using V = vec_t<float>;
  constexpr int L = Vec<float>::n, K = NV * L, KWB = NV <= 2 ? 7 : 3;  // taps per register block
  const int64_t C = g.C, taps = g.kh * g.kw, rows = g.N * g.Ho, width = taps * C * K + K;
  const int64_t pieces = std::max<int64_t>(1, std::min<int64_t>(16, rows));
  const int64_t RC = wgrad_chunk_rows(g);
  isa_vector<float> part(static_cast<size_t>(pieces * width));
  // 3x3 at dilation 1 and column stride 1 or 2: small_cin_wgrad_33 (output columns [lo, hi) read
  // only columns inside the image).
  const bool nine = g.kh == 3 && g.kw == 3 && g.dh == 1 && g.dw == 1 && (g.sw == 1 || g.sw == 2) && g.pt >= 0 &&
                    g.pl >= 0;
  // nine: x with its padding as zeros, the rows and columns the output's windows span
  const int64_t Hp = nine ? (g.Ho - 1) * g.sh + 3 : 0, Wp = nine ? (g.Wo - 1) * g.sw + 3 : 0;
  // (every element written below; the calling thread's shared block, kept between calls)
  float* xpad = nine ? scratch<float>(kBatchSlot, g.N * Hp * Wp * C) : nullptr;
  if (nine) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t rr = 0; rr < g.N * Hp; ++rr) {
      const int64_t n = rr / Hp, ih = rr % Hp - g.pt;
      float* o = xpad + rr * Wp * C;
      std::fill(o, o + Wp * C, 0.0f);
      if (ih < 0 || ih >= g.H) continue;
      const int64_t w0 = std::min(Wp, g.pl), w1 = std::min(Wp, g.pl + g.W);
      std::copy(x + ((n * g.H + ih) * g.W + (w0 - g.pl)) * C, x + ((n * g.H + ih) * g.W + (w1 - g.pl)) * C,
                o + w0 * C);
    }
  }
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t q = 0; q < pieces; ++q) {
    float* pw = part.data() + q * width;  // [(t*C + c)*K + k], then the bias
    float* pb = pw + taps * C * K;
    std::fill(pw, pw + width, 0.0f);
    const int64_t r0 = rows * q / pieces, r1 = rows * (q + 1) / pieces;
    float* dzb = ap ? scratch<float>(kYbSlot, RC * g.Wo * K) : nullptr;
    V bacc[NV];
    for (int v = 0; v < NV; ++v) bacc[v] = vsplat(0.0f);
    // Chunks of RC rows: each chunk's sums start at zero and are added into the piece's, in order.
    for (int64_t c0 = r0; c0 < r1; c0 += RC) {
      const int64_t c1 = std::min(r1, c0 + RC);
      const float* dyc = dy + c0 * g.Wo * K;
      if (ap) {
        ::cnnkit::CNNKIT_ISA_NS::bn_apply_rows(*ap, c0 * g.Wo, dzb, (c1 - c0) * g.Wo, K);
        dyc = dzb;
      }
      for (int64_t p = 0; p < (c1 - c0) * g.Wo; ++p)
        for (int v = 0; v < NV; ++v) bacc[v] += vload(dyc + p * K + v * L);
      if (nine) {
        // slices of NS vectors: 9*NS accumulators within the registers (AVX-512's 32: two vectors)
        constexpr int NS = L >= 16 && NV % 2 == 0 ? 2 : 1;
        // the next chunk's dy (or the apply pass's operands) into L2 over this chunk's rows (plain
        // pass 3x3 RGB -> 32 at 32x32, N = 64: 0.95-0.97x the time without)
        SpreadPrefetch pf;
        if (c1 < r1) {
          const int64_t o = c1 * g.Wo * K, n = (std::min(r1, c1 + RC) - c1) * g.Wo * K * int64_t(sizeof(float));
          pf = ap ? SpreadPrefetch(ap->z + o, n, ap->pooled_s ? nullptr : ap->g + o, ap->pooled_s ? 0 : n,
                                   C * (K / (NS * L)) * (c1 - c0))
                  : SpreadPrefetch(dy + o, n, nullptr, 0, C * (K / (NS * L)) * (c1 - c0));
        }
        for (int64_t c = 0; c < C; ++c)
          for (int64_t k0 = 0; k0 < K; k0 += NS * L) {
            if (g.sw == 1)
              small_cin_wgrad_33<NS, 1>(dyc, xpad, Hp, Wp, pw, g, K, k0, c0, c1, c0, c, pf);
            else
              small_cin_wgrad_33<NS, 2>(dyc, xpad, Hp, Wp, pw, g, K, k0, c0, c1, c0, c, pf);
          }
        continue;
      }
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j0 = 0; j0 < g.kw; j0 += KWB) {
            switch (std::min<int64_t>(KWB, g.kw - j0)) {
              case 1: small_cin_wgrad_row<NV, 1>(dyc, x, pw, g, c0, c1, c0, c, i, j0); break;
              case 2: small_cin_wgrad_row<NV, 2>(dyc, x, pw, g, c0, c1, c0, c, i, j0); break;
              case 3: small_cin_wgrad_row<NV, 3>(dyc, x, pw, g, c0, c1, c0, c, i, j0); break;
              case 4: small_cin_wgrad_row<NV, (KWB >= 4 ? 4 : 1)>(dyc, x, pw, g, c0, c1, c0, c, i, j0); break;
              case 5: small_cin_wgrad_row<NV, (KWB >= 5 ? 5 : 1)>(dyc, x, pw, g, c0, c1, c0, c, i, j0); break;
              case 6: small_cin_wgrad_row<NV, (KWB >= 6 ? 6 : 1)>(dyc, x, pw, g, c0, c1, c0, c, i, j0); break;
              default: small_cin_wgrad_row<NV, (KWB >= 7 ? 7 : 1)>(dyc, x, pw, g, c0, c1, c0, c, i, j0); break;
            }
          }
    }
    for (int v = 0; v < NV; ++v) vstore(pb + v * L, bacc[v]);
  }
  for (int64_t k = 0; k < K; ++k) {
    if (dw)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < taps; ++t) {
          double s = 0.0;
          for (int64_t q = 0; q < pieces; ++q) s += double(part[size_t(q * width + (t * C + c) * K + k)]);
          dw[(k * C + c) * taps + t] = float(s);
        }
    if (db) {
      double s = 0.0;
      for (int64_t q = 0; q < pieces; ++q) s += double(part[size_t(q * width + taps * C * K + k)]);
      db[k] = float(s);
    }
  }
}

// Calls f(std::integral_constant<int, NV>) for the vector count of K = 16, 32, 48 or 64 outputs.
template <typename F>
inline void by_vectors(int64_t K, F&& f) {
  constexpr int L = Vec<float>::n;
  switch (K / L) {
    case 16 / L: return f(std::integral_constant<int, 16 / L>());
    case 32 / L: return f(std::integral_constant<int, 32 / L>());
    case 48 / L: return f(std::integral_constant<int, 48 / L>());
    default: return f(std::integral_constant<int, 64 / L>());
  }
}

// sum/sumsq (either both or neither): the shifted statistics of y (conv::Fused), else null.
inline void small_cin_forward(const float* x, const float* w, const float* b, float* y, const Geom& g, double* sum,
                              double* sumsq) {
  by_vectors(g.K, [&](auto nv) { small_cin_forward_k<decltype(nv)::value>(x, w, b, y, g, sum, sumsq); });
}

inline void small_cin_backward_weight(const float* dy, const float* x, float* dw, float* db, const Geom& g,
                                      const DyApply* ap) {
  by_vectors(g.K, [&](auto nv) { small_cin_backward_weight_k<decltype(nv)::value>(dy, x, dw, db, g, ap); });
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
