// Per-ISA normalization kernels (see cnnkit/norm.h), over x viewed as (N, C, S), NCHW or NHWC.
//
// Statistics: one pass of shifted sums in double, sum(x - K) and sum((x - K)^2), K the first
// value of the reduction; mean = K + s1/n, var = (s2 - s1^2/n)/n. With K within a few standard
// deviations of the mean the sums stay small, so nothing cancels (never E[x^2] - E[x]^2 on raw x).
// Blocks are fixed (an NCHW row of S values; 256 NHWC rows) and combined in index order, so the
// result does not depend on the thread count. Forward and backward subtract the mean as a hi/lo
// pair in T: x - hi is exact (Sterbenz) when x is near the mean, then the small lo is removed.
// Derivation of the training-mode backward: dx = w*invstd*(g - mean(g) - xhat*mean(g*xhat)),
// the usual batch-norm gradient (Ioffe & Szegedy 2015), evaluated as A*g - B - (x - mean)*D.
#include <omp.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cnnkit/norm.h"
#include "common/channel_count.h"
#include "common/channel_mean.h"
#include "norm/bn_apply.h"
#include "common/avx2_double.h"
#include "common/isa_vector.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit {
namespace CNNKIT_ISA_NS {
namespace {

using norm::Shape;

constexpr int64_t kRows = 256;           // NHWC reduction block: rows of C values
constexpr int64_t kSerialBelow = 1 << 15;  // elements; below this one thread does the work

int threads_for(const Shape& sh) { return sh.N * sh.C * sh.S < kSerialBelow ? 1 : num_threads(); }

// NHWC reduction blocks: rows [lo, hi) of the (N*S, C) matrix; within one sample when per_sample.
struct Blocks {
  int64_t count, per_sample_blocks;
  bool ps;
  int64_t S, N;
  void range(int64_t b, int64_t& n, int64_t& lo, int64_t& hi) const {
    if (ps) {
      n = b / per_sample_blocks;
      const int64_t j = b % per_sample_blocks;
      lo = n * S + j * kRows;
      hi = n * S + std::min(S, (j + 1) * kRows);
    } else {
      n = 0;
      lo = b * kRows;
      hi = std::min(N * S, lo + kRows);
    }
  }
};
Blocks nhwc_blocks(const Shape& sh, bool ps) {
  Blocks b;
  b.ps = ps;
  b.S = sh.S;
  b.N = sh.N;
  b.per_sample_blocks = (sh.S + kRows - 1) / kRows;
  b.count = ps ? sh.N * b.per_sample_blocks : (sh.N * sh.S + kRows - 1) / kRows;
  return b;
}

inline int64_t at(const Shape& sh, int64_t n, int64_t c, int64_t s) {
  return sh.nhwc ? (n * sh.S + s) * sh.C + c : (n * sh.C + c) * sh.S + s;
}

// Partial sums -> totals, in a fixed order (so the result does not depend on the thread count).
// NCHW: one partial per (n, c) row, added in n order. NHWC: C partials per block, added in
// block order. Totals have C entries, or N*C when per_sample; a and b must start at zero.
void combine_rows(const Shape& sh, bool ps, const isa_vector<double>& p1,
                  const isa_vector<double>& p2, double* a, double* b) {
  const int64_t C = sh.C;
  for (int64_t r = 0; r < sh.N * C; ++r) {
    const int64_t i = ps ? r : r % C;
    a[i] += p1[r];
    b[i] += p2[r];
  }
}
void combine_blocks(const Shape& sh, const Blocks& bl, const isa_vector<double>& p1,
                    const isa_vector<double>& p2, double* a, double* b) {
  const int64_t C = sh.C;
  for (int64_t blk = 0; blk < bl.count; ++blk) {
    int64_t n, lo, hi;
    bl.range(blk, n, lo, hi);
    double* __restrict aa = a + (bl.ps ? n * C : 0);
    double* __restrict bb = b + (bl.ps ? n * C : 0);
    const double* q1 = p1.data() + blk * C;
    const double* q2 = p2.data() + blk * C;
    for (int64_t c = 0; c < C; ++c) {
      aa[c] += q1[c];
      bb[c] += q2[c];
    }
  }
}

// ---- statistics -----------------------------------------------------------------------------

template <typename T>
void stats_t(const T* x, const Shape& sh, bool ps, double* mean, double* var) {
  const int64_t N = sh.N, C = sh.C, S = sh.S, nk = ps ? N * C : C;
  isa_vector<double> K(nk), a(nk, 0.0), b(nk, 0.0);
  for (int64_t i = 0; i < nk; ++i) K[i] = double(x[at(sh, ps ? i / C : 0, i % C, 0)]);
  const int nt = threads_for(sh);
  if (!sh.nhwc) {
    isa_vector<double> p1(N * C), p2(N * C);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < N * C; ++r) {
      const T* row = x + r * S;
      const double k = K[ps ? r : r % C];
      double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t s = 0; s < S; ++s) {
        const double d = double(row[s]) - k;
        s1 += d;
        s2 += d * d;
      }
      p1[r] = s1;
      p2[r] = s2;
    }
    combine_rows(sh, ps, p1, p2, a.data(), b.data());
  } else {
    const Blocks bl = nhwc_blocks(sh, ps);
    isa_vector<double> p1(bl.count * C), p2(bl.count * C);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t blk = 0; blk < bl.count; ++blk) {
      int64_t n, lo, hi;
      bl.range(blk, n, lo, hi);
      double* __restrict q1 = p1.data() + blk * C;
      double* __restrict q2 = p2.data() + blk * C;
      const double* __restrict k = K.data() + (ps ? n * C : 0);
      std::fill(q1, q1 + C, 0.0);
      std::fill(q2, q2 + C, 0.0);
      int64_t m = lo;
      for (; m + 8 <= hi; m += 8) {  // eight rows per pass: an eighth of the partial-sum traffic
        const T* __restrict xb = x + m * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const double kc = k[c];
          const double d0 = double(xb[c]) - kc, d1 = double(xb[C + c]) - kc;
          const double d2 = double(xb[2 * C + c]) - kc, d3 = double(xb[3 * C + c]) - kc;
          const double d4 = double(xb[4 * C + c]) - kc, d5 = double(xb[5 * C + c]) - kc;
          const double d6 = double(xb[6 * C + c]) - kc, d7 = double(xb[7 * C + c]) - kc;
          q1[c] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7));
          q2[c] += ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)) +
                   ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7));
        }
      }
      for (; m < hi; ++m) {
        const T* __restrict xr = x + m * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const double d = double(xr[c]) - k[c];
          q1[c] += d;
          q2[c] += d * d;
        }
      }
    }
    combine_blocks(sh, bl, p1, p2, a.data(), b.data());
  }
  const double cnt = double(ps ? S : N * S);
  for (int64_t i = 0; i < nk; ++i) {
    mean[i] = K[i] + a[i] / cnt;
    var[i] = norm::shifted_var(a[i], b[i], cnt);
  }
}

// ---- forward apply ----------------------------------------------------------------------------

template <typename T>
struct Coef {
  isa_vector<T> hi, lo, p, q, r;
};

// The mean as hi + lo in T.
template <typename T>
void split(double m, T& hi, T& lo) {
  hi = T(m);
  lo = T(m - double(hi));
}

// The coefficients of an element-wise pass, one entry per channel (or per sample and channel):
// the mean as hi + lo, and the pass's own p, q (and r), which fill(i, k) sets for entry i.
template <typename T, typename F>
Coef<T> coef_of(int64_t nk, const double* mean, bool with_r, F&& fill) {
  Coef<T> k;
  k.hi.resize(nk), k.lo.resize(nk), k.p.resize(nk), k.q.resize(nk);
  if (with_r) k.r.resize(nk);
  for (int64_t i = 0; i < nk; ++i) {
    split(mean[i], k.hi[i], k.lo[i]);
    fill(i, k);
  }
  return k;
}

// The element-wise passes' loops (apply_t, backward_apply_t), in parallel: NCHW, row(rr, i) for
// every (sample, channel) row rr of S values, i its coefficients' index; NHWC, pixel(m, base, cc)
// for every pixel m of C values, base its coefficients' offset (per sample: the sample's C), cc the
// channel count as with_channels() gives it (a compile-time constant where it has one, else 0).
template <typename T, typename Row, typename Pixel>
void for_each_row(const Shape& sh, bool ps, Row&& row, Pixel&& pixel) {
  const int64_t N = sh.N, C = sh.C, S = sh.S;
  const int nt = threads_for(sh);
  if (!sh.nhwc) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t rr = 0; rr < N * C; ++rr) row(rr, ps ? rr : rr % C);
    return;
  }
  with_channels<T>(C, [&](auto cc) {
    const int64_t Cn = decltype(cc)::value ? decltype(cc)::value : C;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t m = 0; m < N * S; ++m) pixel(m, ps ? (m / S) * Cn : 0, cc);
  });
}

// The ReLU of every pass here: std::max(v, 0) as the convolutions' prologue and epilogues and
// torch.relu (v < 0 ? 0 : v: a NaN stays NaN).
template <typename T>
inline T relu_of(T v) {
  return v < T(0) ? T(0) : v;
}

// The residual term: r, or with RA fma(a, r, b) (one rounding, the prologue's form), with RAR then
// max(., 0) as the prologue's ReLU (relu_of).
template <int RA, typename T>
inline T res_term(T r, T a, T b) {
  if constexpr (RA == 0) {
    return r;
  } else {
    const T t = std::fma(a, r, b);
    if constexpr (RA == 2) return relu_of(t);
    return t;
  }
}

// RA: 0 the residual as given, 1 through its affine map, 2 and a ReLU.
template <typename T, bool RELU, bool RES, int RA = 0>
void apply_t(const T* __restrict x, T* __restrict y, const T* __restrict res, const Shape& sh,
             bool ps, const double* mean, const double* invstd, const T* w, const T* b,
             const T* __restrict ra = nullptr) {
  const int64_t C = sh.C, S = sh.S;
  const Coef<T> k = coef_of<T>(ps ? sh.N * C : C, mean, false, [&](int64_t i, Coef<T>& e) {
    const int64_t c = i % C;
    e.p[i] = T(invstd[i] * (w ? double(w[c]) : 1.0));
    e.q[i] = b ? b[c] : T(0);
  });
  for_each_row<T>(
      sh, ps,
      [&](int64_t rr, int64_t i) {
        const T hi = k.hi[i], lo = k.lo[i], p = k.p[i], q = k.q[i];
        const T* __restrict xr = x + rr * S;
        T* __restrict yr = y + rr * S;
        const T* __restrict rs = RES ? res + rr * S : nullptr;
        const T ras = RA ? ra[rr % C] : T(0), rat = RA ? ra[C + rr % C] : T(0);
#pragma omp simd
        for (int64_t s = 0; s < S; ++s) {
          T v = ((xr[s] - hi) - lo) * p + q;
          if (RES) v = v + res_term<RA>(rs[s], ras, rat);
          if (RELU) v = relu_of(v);
          yr[s] = v;
        }
      },
      [&](int64_t m, int64_t base, auto cc) {
        constexpr int64_t CC = decltype(cc)::value;
        const int64_t Cn = CC ? CC : C;
        const T* __restrict hi = k.hi.data() + base;
        const T* __restrict lo = k.lo.data() + base;
        const T* __restrict p = k.p.data() + base;
        const T* __restrict q = k.q.data() + base;
        const T* __restrict xr = x + m * Cn;
        T* __restrict yr = y + m * Cn;
        const T* __restrict rs = RES ? res + m * Cn : nullptr;
#pragma omp simd
        for (int64_t c = 0; c < Cn; ++c) {
          T v = ((xr[c] - hi[c]) - lo[c]) * p[c] + q[c];
          if (RES) v = v + res_term<RA>(rs[c], RA ? ra[c] : T(0), RA ? ra[Cn + c] : T(0));
          if (RELU) v = relu_of(v);
          yr[c] = v;
        }
      });
}

// ---- backward ---------------------------------------------------------------------------------

// Whether position i of g passes the ReLU mask: MK 0 no mask; 1 mask array m (m[i] > 0, the
// forward output); 2 the affine mask of a fused prologue, fma(a, x, b) > 0 with x the norm's
// input: the value the convolution's prologue computed, with its single rounding (conv_gemm.cpp
// and sgemm.cpp evaluate the prologue as the same fma), so the mask is the forward's exactly.
template <int MK, typename T>
inline bool kept(const T* __restrict m, int64_t i, T a, T b, T x) {
  if constexpr (MK == 1) return m[i] > T(0);
  if constexpr (MK == 2) return std::fma(a, x, b) > T(0);
  (void)m, (void)i, (void)a, (void)b, (void)x;
  return true;
}

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
// backward_reduce_t's four-row passes over NHWC rows [lo, hi) of float32 (AVX2), eight channels
// at a time, for the channels that fill whole vectors; returns the first row left (the rest, and
// the channels past the last whole vector of every pass, go to the generic loops). The same
// operations per channel in the same order as those loops: the mask and the pooled or stored
// gradient in float32 (the mask's fma as std::fma, a value not kept +0), then per row
// g = double(gv), e = g * (double(x) - mean) (no contraction), and q1 += (g0 + g1) + (g2 + g3),
// q2 likewise: the same bits. The compiler's vectorisation of those loops masked in double
// (sign-extended compares, 64-bit ands) and spilled. Pooled, 256 channels at 16x16, N = 64
// (mobilenet_small's last norm), alternating calls: 1.16x on one thread, 1.32x on two.
template <int MK, bool PL, bool GR>
int64_t reduce4_rows_avx2(const float* dy, const float* x, const float* mk, const float* ma, float* gres,
                          int64_t C, int64_t S, int64_t lo, int64_t hi, const double* mn, double* q1, double* q2) {
  const int64_t cw = C / 8 * 8;
  const __m256 zero = _mm256_setzero_ps();
  int64_t m = lo;
  for (; m + 4 <= hi; m += 4) {
    const float* dp[4];
    for (int j = 0; j < 4; ++j) dp[j] = PL ? dy + ((m + j) / S) * C : dy + (m + j) * C;
    const float* xb = x + m * C;
    for (int64_t c = 0; c < cw; c += 8) {
      __m256 gv[4];
      for (int j = 0; j < 4; ++j) {
        __m256 v = _mm256_loadu_ps(dp[j] + c);
        if constexpr (MK == 1)
          v = _mm256_and_ps(_mm256_cmp_ps(_mm256_loadu_ps(mk + (m + j) * C + c), zero, _CMP_GT_OQ), v);
        if constexpr (MK == 2) {
          const __m256 t = _mm256_fmadd_ps(_mm256_loadu_ps(ma + c), _mm256_loadu_ps(xb + j * C + c),
                                           _mm256_loadu_ps(ma + C + c));
          v = _mm256_and_ps(_mm256_cmp_ps(t, zero, _CMP_GT_OQ), v);
        }
        if constexpr (GR) _mm256_storeu_ps(gres + (m + j) * C + c, v);
        gv[j] = v;
      }
      for (int h = 0; h < 2; ++h) {
        const __m256d mc = _mm256_loadu_pd(mn + c + 4 * h);
        __m256d g[4], e[4];
        for (int j = 0; j < 4; ++j) {
          // (x's halves, and g's where it is dy as stored, converted from memory: one vcvtps2pd
          // each instead of a vextractf128 and a conversion; resnext_small's unmasked reductions
          // 1.04-1.10x on two threads, 1.27-1.31x on one, alternating calls)
          g[j] = MK == 0 && !PL ? avx2d::cvt4d(dp[j] + c + 4 * h) : h ? avx2d::hi4d(gv[j]) : avx2d::lo4d(gv[j]);
          e[j] = _mm256_mul_pd(g[j], _mm256_sub_pd(avx2d::cvt4d(xb + j * C + c + 4 * h), mc));
        }
        double* a1 = q1 + c + 4 * h;
        double* a2 = q2 + c + 4 * h;
        _mm256_storeu_pd(a1, _mm256_add_pd(_mm256_loadu_pd(a1), _mm256_add_pd(_mm256_add_pd(g[0], g[1]),
                                                                               _mm256_add_pd(g[2], g[3]))));
        _mm256_storeu_pd(a2, _mm256_add_pd(_mm256_loadu_pd(a2), _mm256_add_pd(_mm256_add_pd(e[0], e[1]),
                                                                               _mm256_add_pd(e[2], e[3]))));
      }
    }
    for (int64_t c = cw; c < C; ++c) {  // (the channels past the last whole vector, as the generic loop)
      const double mcs = mn[c];
      double g[4], e[4];
      for (int j = 0; j < 4; ++j) {
        const float xs = xb[j * C + c];
        const float gs = kept<MK>(mk + (m + j) * C, c, MK == 2 ? ma[c] : 0.0f, MK == 2 ? ma[C + c] : 0.0f, xs)
                             ? dp[j][c]
                             : 0.0f;
        if constexpr (GR) gres[(m + j) * C + c] = gs;
        g[j] = double(gs);
        e[j] = g[j] * (double(xs) - mcs);
      }
      q1[c] += (g[0] + g[1]) + (g[2] + g[3]);
      q2[c] += (e[0] + e[1]) + (e[2] + e[3]);
    }
  }
  return m;
}
#endif

// PL (pooled): dy holds one value per (n, c), the gradient at every position s of that sample and
// channel (a global average pool's adjoint, never written out whole). GR: gres receives g (the
// masked gradient; not with PL), so that the apply pass can read it instead of dy and the mask.
template <typename T, int MK, bool PL, bool GR = false>
void backward_reduce_t(const T* __restrict dy, const T* __restrict x, const T* __restrict mk,
                       const T* __restrict ma, T* __restrict gres, const Shape& sh, bool ps, const double* mean,
                       double* sum_g, double* sum_gx) {
  static_assert(!(PL && GR), "a pooled gradient is not written out");
  const int64_t N = sh.N, C = sh.C, S = sh.S, nk = ps ? N * C : C;
  std::fill(sum_g, sum_g + nk, 0.0);
  std::fill(sum_gx, sum_gx + nk, 0.0);
  const int nt = threads_for(sh);
  if (!sh.nhwc) {
    isa_vector<double> p1(N * C), p2(N * C);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < N * C; ++r) {
      const double m = mean[ps ? r : r % C];
      const T* __restrict d = PL ? dy + r : dy + r * S;
      const T* __restrict xr = x + r * S;
      const T* __restrict mr = MK == 1 ? mk + r * S : nullptr;
      const T as = MK == 2 ? ma[r % C] : T(0), at = MK == 2 ? ma[C + r % C] : T(0);
      T* __restrict gr = GR ? gres + r * S : nullptr;
      double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t s = 0; s < S; ++s) {
        const T gv = !kept<MK>(mr, s, as, at, xr[s]) ? T(0) : d[PL ? 0 : s];
        if (GR) gr[s] = gv;
        const double g = double(gv);
        s1 += g;
        s2 += g * (double(xr[s]) - m);
      }
      p1[r] = s1;
      p2[r] = s2;
    }
    combine_rows(sh, ps, p1, p2, sum_g, sum_gx);
  } else {
    const Blocks bl = nhwc_blocks(sh, ps);
    isa_vector<double> p1(bl.count * C), p2(bl.count * C);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t blk = 0; blk < bl.count; ++blk) {
      int64_t n, lo, hi;
      bl.range(blk, n, lo, hi);
      double* __restrict q1 = p1.data() + blk * C;
      double* __restrict q2 = p2.data() + blk * C;
      const double* __restrict mn = mean + (ps ? n * C : 0);
      std::fill(q1, q1 + C, 0.0);
      std::fill(q2, q2 + C, 0.0);
      int64_t m = lo;
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>)
        m = reduce4_rows_avx2<MK, PL, GR>(dy, x, mk, ma, gres, C, S, lo, hi, mn, q1, q2);
#endif
      // (at 64 channels a constant count made these loops 0.77x: only up to 32)
      with_channels<T, 32>(C, [&](auto cc) {
        constexpr int64_t CC = decltype(cc)::value;
        const int64_t Cn = CC ? CC : C;
        for (; m + 4 <= hi; m += 4) {  // four rows per pass: a quarter of the partial-sum traffic
          const T* __restrict db = dy + m * Cn;
          const T* __restrict xb = x + m * Cn;
          const T* __restrict mb = MK == 1 ? mk + m * Cn : nullptr;
          T* __restrict gb = GR ? gres + m * Cn : nullptr;
          const T* __restrict dp[4] = {};  // PL: the rows' samples' gradients
          if (PL)
            for (int j = 0; j < 4; ++j) dp[j] = dy + ((m + j) / S) * Cn;
#pragma omp simd
          for (int64_t c = 0; c < Cn; ++c) {
            const double mc = mn[c];
            double g[4], e[4];
            for (int j = 0; j < 4; ++j) {
              const T xv = xb[j * Cn + c];
              const T gv = !kept<MK>(mb, j * Cn + c, MK == 2 ? ma[c] : T(0), MK == 2 ? ma[Cn + c] : T(0), xv)
                               ? T(0)
                               : (PL ? dp[j][c] : db[j * Cn + c]);
              if (GR) gb[j * Cn + c] = gv;
              g[j] = double(gv);
              e[j] = g[j] * (double(xv) - mc);
            }
            q1[c] += (g[0] + g[1]) + (g[2] + g[3]);
            q2[c] += (e[0] + e[1]) + (e[2] + e[3]);
          }
        }
        for (; m < hi; ++m) {
          const T* __restrict d = dy + (PL ? m / S : m) * Cn;
          const T* __restrict xr = x + m * Cn;
          const T* __restrict mr = MK == 1 ? mk + m * Cn : nullptr;
          T* __restrict gr = GR ? gres + m * Cn : nullptr;
#pragma omp simd
          for (int64_t c = 0; c < Cn; ++c) {
            const T gv = !kept<MK>(mr, c, MK == 2 ? ma[c] : T(0), MK == 2 ? ma[Cn + c] : T(0), xr[c]) ? T(0) : d[c];
            if (GR) gr[c] = gv;
            const double g = double(gv);
            q1[c] += g;
            q2[c] += g * (double(xr[c]) - mn[c]);
          }
        }
      });
    }
    combine_blocks(sh, bl, p1, p2, sum_g, sum_gx);
  }
}

// The apply pass's value (this file is compiled without contraction: five roundings).
template <typename T>
inline T apply_value(T g, T x, T a, T bq, T hi, T lo, T dd) {
  return a * g - bq - ((x - hi) - lo) * dd;
}

// dx may be dy itself (in place: each value is read before it is written, at the same position;
// not restrict-qualified for that), or x (likewise).
template <typename T, int MK, bool GRES, bool PL>
void backward_apply_t(const T* dy, const T* x, const T* __restrict mk, const T* __restrict ma, T* dx,
                      T* __restrict gres, const Shape& sh, bool ps, const double* mean, const double* A,
                      const double* B, const double* D) {
  const int64_t C = sh.C, S = sh.S;
  const Coef<T> k = coef_of<T>(ps ? sh.N * C : C, mean, true, [&](int64_t i, Coef<T>& e) {
    e.p[i] = T(A[i]);
    e.q[i] = T(B[i]);
    e.r[i] = T(D[i]);
  });
  for_each_row<T>(
      sh, ps,
      [&](int64_t rr, int64_t i) {
        const T hi = k.hi[i], lo = k.lo[i], a = k.p[i], bq = k.q[i], dd = k.r[i];
        const T* d = PL ? dy + rr : dy + rr * S;
        const T* xr = x + rr * S;
        const T* __restrict mr = MK == 1 ? mk + rr * S : nullptr;
        const T as = MK == 2 ? ma[rr % C] : T(0), at = MK == 2 ? ma[C + rr % C] : T(0);
        T* o = dx + rr * S;
        T* __restrict gr = GRES ? gres + rr * S : nullptr;
#pragma omp simd
        for (int64_t s = 0; s < S; ++s) {
          const T g = !kept<MK>(mr, s, as, at, xr[s]) ? T(0) : d[PL ? 0 : s];
          o[s] = apply_value(g, xr[s], a, bq, hi, lo, dd);
          if (GRES) gr[s] = g;
        }
      },
      [&](int64_t m, int64_t base, auto cc) {
        constexpr int64_t CC = decltype(cc)::value;
        const int64_t Cn = CC ? CC : C;
        const T* __restrict hi = k.hi.data() + base;
        const T* __restrict lo = k.lo.data() + base;
        const T* __restrict a = k.p.data() + base;
        const T* __restrict bq = k.q.data() + base;
        const T* __restrict dd = k.r.data() + base;
        const T* d = dy + (PL ? m / S : m) * Cn;
        const T* xr = x + m * Cn;
        const T* __restrict mr = MK == 1 ? mk + m * Cn : nullptr;
        T* o = dx + m * Cn;
        T* __restrict gr = GRES ? gres + m * Cn : nullptr;
#pragma omp simd
        for (int64_t c = 0; c < Cn; ++c) {
          const T g = !kept<MK>(mr, c, MK == 2 ? ma[c] : T(0), MK == 2 ? ma[Cn + c] : T(0), xr[c]) ? T(0) : d[c];
          o[c] = apply_value(g, xr[c], a[c], bq[c], hi[c], lo[c], dd[c]);
          if (GRES) gr[c] = g;
        }
      });
}

// ---- affine + activation + global average pool -------------------------------------------------

// out[n*C + c] = T(sum over s of act(fma(a[c], x, b[c])) * (1/S)), summed in double per sample (n, c):
// a batch norm's output, in the single-fma form of a convolution's fused prologue, averaged as
// global_avg_pool_forward (cpp/src/nn/layers.cpp) averages it, without writing it.
template <typename T, bool RELU>
void affine_pool_t(const T* x, const T* ab, const Shape& sh, T* out) {
  const T* __restrict a = ab;
  const T* __restrict b = ab + sh.C;
  channel_means(x, sh.N, sh.C, sh.S, sh.nhwc, threads_for(sh),
                [=](int64_t c, T v) {
                  const T t = std::fma(a[c], v, b[c]);
                  return RELU ? relu_of(t) : t;
                },
                out);
}

#if defined(__AVX2__)
// The vectors of pool_sums_relu_vectors (GCC vector extensions of the ISA's width): F VL floats,
// D VL / 2 doubles, K VL int32 counts; the arithmetic is the operators' and the conversions and
// the fma the ISA's (PoolOps).
template <int N>
struct PoolVectors {
  static constexpr int VL = N;
  typedef float F __attribute__((vector_size(4 * N)));
  typedef double D __attribute__((vector_size(4 * N)));
  typedef int32_t K __attribute__((vector_size(4 * N)));
  template <typename V, typename T>
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  template <typename V, typename T>
  static void store(T* p, V v) {
    std::memcpy(p, &v, sizeof v);
  }
  // relu_of: t where !(t < 0) (a NaN stays), else 0
  static F relu(F t) { return t < F{} ? F{} : t; }
  // k + 1 where t > 0 (a true compare is -1)
  static K count(K k, F t) { return k - (t > F{}); }
  // (r > 0 ? 1.0 : 0.0) * d, the product kept (0 * inf, 0 * NaN: NaN)
  static D keep(D r, D d) { return (r > D{} ? D{} + 1.0 : D{}) * d; }
};
#if defined(__AVX512F__)
struct PoolOps : PoolVectors<16> {
  static F fma(F a, F x, F b) { return (F)_mm512_fmadd_ps((__m512)a, (__m512)x, (__m512)b); }
  static D lo(F v) { return (D)avx512d::lo8d((__m512)v); }
  static D hi(F v) { return (D)avx512d::hi8d((__m512)v); }
  static D cvt(const float* p) { return (D)avx512d::cvt8d(p); }
};
#else
struct PoolOps : PoolVectors<8> {
  static F fma(F a, F x, F b) { return (F)_mm256_fmadd_ps((__m256)a, (__m256)x, (__m256)b); }
  static D lo(F v) { return (D)avx2d::lo4d((__m256)v); }
  static D hi(F v) { return (D)avx2d::hi4d((__m256)v); }
  static D cvt(const float* p) { return (D)avx2d::cvt4d(p); }
};
#endif

// affine_pool_sums_t's NHWC loop with the ReLU over the first cv channels (a multiple of VL) of
// one sample's S positions, VL channels a vector: the same operations per channel in the same
// order (the pool's sum position by position, x - mean's products in groups of four), the mask in
// double taken as r > 0 (so t > 0) from the converted r, the counts in int32 lanes (exact).
// GCC's vectorisation of the loop below, its masks converted to double, ran at 2-3 cycles a value
// (Zen 3, alternating calls in one process: 64 x 256 channels x 16 x 16 (mobilenet_small's last
// norm + pool), 1 thread 3.58 -> 2.61 ms, 2 threads 1.42 -> 1.02; 64 x 128 x 8 x 8 1.40x). Without
// the ReLU that loop has neither and stays (this form measured 0.93-1.04x there). At AVX-512 GCC's
// loop ran at 1.5 cycles a value (Intel, model 207; alternating calls in one process, the same
// bits): 64 x 256 x 16 x 16 1.25x on 2 threads, 1.55x on 1, 1.93x called after a 256 MiB sweep;
// 64 x 128 x 8 x 8 1.05x; mobilenet_small's profiled step 2.14 -> 1.04 ms for this call. Without
// the prefetch below (on Intel) 0.78x, 0.48x on 1 thread.
void pool_sums_relu_vectors(const float* x, const float* a, const float* b, const double* mean, int64_t S, int64_t C,
                            int64_t cv, double* s1, int32_t* cnt, double* q, int64_t S_ahead) {
  using O = PoolOps;
  constexpr int VL = O::VL, H = VL / 2;
  int64_t i = 0;
  for (; i + 4 <= S; i += 4) {
    const float* p = x + i * C;
    // the group of four positions two groups on (past S: the next sample's, which follows in
    // memory, up to S_ahead positions), its lines into L1 as the loop reads the same share of
    // this group's. perf put a third of the loop's samples on its loads of x. mobilenet_small's
    // last norm + pool, alternating calls in one process: 1.30x (2 threads) and 1.26x (1) while
    // the host's memory was slow (1.73 -> 1.33 ms), level (1.31-1.37 ms both) while it was fast;
    // four or eight groups on: 1.35 and 1.39 ms.
    const char* pf = reinterpret_cast<const char*>(x + std::min(i + 8, S + S_ahead - 4) * C);
    for (int64_t c = 0; c < cv; c += VL) {
      for (int64_t o = 0; o < 16 * VL; o += 64) _mm_prefetch(pf + c * 16 + o, _MM_HINT_T0);
      const O::F av = O::load<O::F>(a + c), bv = O::load<O::F>(b + c);
      const O::D ml = O::load<O::D>(mean + c), mh = O::load<O::D>(mean + c + H);
      O::D sl = O::load<O::D>(s1 + c), sh = O::load<O::D>(s1 + c + H);
      O::K k = O::load<O::K>(cnt + c);
      O::D el[4], eh[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const O::F t = O::fma(av, O::load<O::F>(p + j * C + c), bv);
        const O::F r = O::relu(t);
        const O::D rl = O::lo(r), rh = O::hi(r);
        sl += rl;
        sh += rh;
        k = O::count(k, t);
        // m = 1 or 0, times x - mean (a NaN or inf x stays NaN where masked)
        // (x's halves converted from memory, not extracted from the loaded vector: alternating
        // calls 1.03-1.06x on Zen 3)
        el[j] = O::keep(rl, O::cvt(p + j * C + c) - ml);
        eh[j] = O::keep(rh, O::cvt(p + j * C + c + H) - mh);
      }
      O::store(s1 + c, sl);
      O::store(s1 + c + H, sh);
      O::store(q + c, O::load<O::D>(q + c) + ((el[0] + el[1]) + (el[2] + el[3])));
      O::store(q + c + H, O::load<O::D>(q + c + H) + ((eh[0] + eh[1]) + (eh[2] + eh[3])));
      O::store(cnt + c, k);
    }
  }
  for (; i < S; ++i) {  // the last positions one at a time, as the loop below
    const float* p = x + i * C;
    for (int64_t c = 0; c < cv; ++c) {
      const float t = std::fma(a[c], p[c], b[c]);
      s1[c] += double(relu_of(t));
      const double m = t > 0.0f ? 1.0 : 0.0;
      cnt[c] += t > 0.0f ? 1 : 0;
      q[c] += m * (double(p[c]) - mean[c]);
    }
  }
}
#endif

// affine_pool_t and, per (n, c), m1 = the count of positions whose act keeps them (t > 0 with the
// ReLU, all without) and m2 = the sum over them of double(x) - mean[c] (the pooled norm
// backward's sums, see norm.h). NHWC in one pass, the pool's sums as channel_means forms them (the
// same bits), m1 and m2 over groups of four positions in order; NCHW by channel_means, then the
// two sums position by position in a second pass.
template <typename T, bool RELU>
void affine_pool_sums_t(const T* x, const T* ab, const Shape& sh, T* out, const double* mean, double* m1,
                        double* m2) {
  const int64_t N = sh.N, C = sh.C, S = sh.S;
  const T* __restrict a = ab;
  const T* __restrict b = ab + C;
  const int nt = threads_for(sh);
  if (!sh.nhwc) {
    affine_pool_t<T, RELU>(x, ab, sh, out);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < N * C; ++r) {
      const T* __restrict p = x + r * S;
      const int64_t c = r % C;
      double k = 0.0, q = 0.0;
      for (int64_t i = 0; i < S; ++i) {
        const double m = !RELU || std::fma(a[c], p[i], b[c]) > T(0) ? 1.0 : 0.0;
        k += m;
        q += m * (double(p[i]) - mean[c]);
      }
      m1[r] = k;
      m2[r] = q;
    }
    return;
  }
  const double inv = 1.0 / double(S);
#pragma omp parallel num_threads(nt)
  {
    isa_vector<double> acc(static_cast<size_t>(3 * C));
#if defined(__AVX2__)
    // (pool_sums_relu_vectors' channels; its int32 counts hold at most S)
    const int64_t cv = RELU && std::is_same_v<T, float> && S <= INT32_MAX ? C / PoolOps::VL * PoolOps::VL : 0;
    isa_vector<int32_t> counts(static_cast<size_t>(cv));
#else
    const int64_t cv = 0;
#endif
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      double* __restrict s1 = acc.data();
      double* __restrict k = s1 + C;
      double* __restrict q = k + C;
      std::fill(s1, s1 + 3 * C, 0.0);
#if defined(__AVX2__)
      if constexpr (RELU && std::is_same_v<T, float>)
        if (cv > 0) {
          std::fill(counts.begin(), counts.end(), 0);
          pool_sums_relu_vectors(x + n * S * C, a, b, mean, S, C, cv, s1, counts.data(), q, n + 1 < N ? S : 0);
          for (int64_t c = 0; c < cv; ++c) k[c] = double(counts[c]);  // (exact: at most S)
        }
#endif
      // Four positions per pass: the pool's sum still adds them one at a time (its bits), the two
      // new sums add each group's (m0 + m1) + (m2 + m3); m = 0 or 1 times (x - mean), as the
      // reduction multiplies a masked g (a NaN or inf x stays NaN where masked, as there).
      int64_t i = 0;
      for (; i + 4 <= S; i += 4) {
        const T* __restrict p = x + (n * S + i) * C;
#pragma omp simd
        for (int64_t c = cv; c < C; ++c) {
          double s = s1[c], m[4], e[4];
          for (int j = 0; j < 4; ++j) {
            const T v = p[j * C + c];
            const T t = std::fma(a[c], v, b[c]);
            s += double(RELU ? relu_of(t) : t);
            m[j] = !RELU || t > T(0) ? 1.0 : 0.0;
            e[j] = m[j] * (double(v) - mean[c]);
          }
          s1[c] = s;
          k[c] += (m[0] + m[1]) + (m[2] + m[3]);
          q[c] += (e[0] + e[1]) + (e[2] + e[3]);
        }
      }
      for (; i < S; ++i) {
        const T* __restrict p = x + (n * S + i) * C;
#pragma omp simd
        for (int64_t c = cv; c < C; ++c) {
          const T t = std::fma(a[c], p[c], b[c]);
          s1[c] += double(RELU ? relu_of(t) : t);
          const double m = !RELU || t > T(0) ? 1.0 : 0.0;
          k[c] += m;
          q[c] += m * (double(p[c]) - mean[c]);
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        out[n * C + c] = T(s1[c] * inv);
        m1[n * C + c] = k[c];
        m2[n * C + c] = q[c];
      }
    }
  }
}

// ---- dtype and flag dispatch ------------------------------------------------------------------

void stats(DType dt, const void* x, const Shape& sh, bool ps, double* mean, double* var) {
  if (dt == DType::f32)
    stats_t(static_cast<const float*>(x), sh, ps, mean, var);
  else
    stats_t(static_cast<const double*>(x), sh, ps, mean, var);
}

template <typename T>
void apply_d(const void* x, void* y, const void* r, const Shape& sh, bool ps, const double* mean,
             const double* invstd, const void* w, const void* b, bool relu, const void* r_affine, bool r_relu) {
  auto X = static_cast<const T*>(x);
  auto Y = static_cast<T*>(y);
  auto R = static_cast<const T*>(r);
  auto W = static_cast<const T*>(w);
  auto B = static_cast<const T*>(b);
  auto RA = static_cast<const T*>(r_affine);
  if (r && RA && r_relu) {
    if (relu) apply_t<T, true, true, 2>(X, Y, R, sh, ps, mean, invstd, W, B, RA);
    else apply_t<T, false, true, 2>(X, Y, R, sh, ps, mean, invstd, W, B, RA);
  } else if (r && RA) {
    if (relu) apply_t<T, true, true, 1>(X, Y, R, sh, ps, mean, invstd, W, B, RA);
    else apply_t<T, false, true, 1>(X, Y, R, sh, ps, mean, invstd, W, B, RA);
  } else if (relu && r) apply_t<T, true, true>(X, Y, R, sh, ps, mean, invstd, W, B);
  else if (relu) apply_t<T, true, false>(X, Y, R, sh, ps, mean, invstd, W, B);
  else if (r) apply_t<T, false, true>(X, Y, R, sh, ps, mean, invstd, W, B);
  else apply_t<T, false, false>(X, Y, R, sh, ps, mean, invstd, W, B);
}

void apply(DType dt, const void* x, void* y, const void* r, const Shape& sh, bool ps,
           const double* mean, const double* invstd, const void* w, const void* b, bool relu, const void* r_affine,
           bool r_relu) {
  if (dt == DType::f32)
    apply_d<float>(x, y, r, sh, ps, mean, invstd, w, b, relu, r_affine, r_relu);
  else
    apply_d<double>(x, y, r, sh, ps, mean, invstd, w, b, relu, r_affine, r_relu);
}

template <typename T, bool PL, bool GR>
void backward_reduce_p(const void* dy, const void* x, const void* mask, const void* mask_affine, void* gres,
                       const Shape& sh, bool ps, const double* mean, double* sg, double* sgx) {
  auto G = static_cast<const T*>(dy);
  auto X = static_cast<const T*>(x);
  auto M = static_cast<const T*>(mask);
  auto A = static_cast<const T*>(mask_affine);
  auto R = static_cast<T*>(gres);
  if (mask_affine)
    backward_reduce_t<T, 2, PL, GR>(G, X, M, A, R, sh, ps, mean, sg, sgx);
  else if (mask)
    backward_reduce_t<T, 1, PL, GR>(G, X, M, A, R, sh, ps, mean, sg, sgx);
  else
    backward_reduce_t<T, 0, PL, GR>(G, X, M, A, R, sh, ps, mean, sg, sgx);
}

template <typename T>
void backward_reduce_d(const void* dy, const void* x, const void* mask, const void* mask_affine, bool pooled,
                       void* gres, const Shape& sh, bool ps, const double* mean, double* sg, double* sgx) {
  if (pooled)
    backward_reduce_p<T, true, false>(dy, x, mask, mask_affine, nullptr, sh, ps, mean, sg, sgx);
  else if (gres)
    backward_reduce_p<T, false, true>(dy, x, mask, mask_affine, gres, sh, ps, mean, sg, sgx);
  else
    backward_reduce_p<T, false, false>(dy, x, mask, mask_affine, nullptr, sh, ps, mean, sg, sgx);
}

void backward_reduce(DType dt, const void* dy, const void* x, const void* mask, const void* mask_affine, bool pooled,
                     void* gres, const Shape& sh, bool ps, const double* mean, double* sg, double* sgx) {
  if (dt == DType::f32)
    backward_reduce_d<float>(dy, x, mask, mask_affine, pooled, gres, sh, ps, mean, sg, sgx);
  else
    backward_reduce_d<double>(dy, x, mask, mask_affine, pooled, gres, sh, ps, mean, sg, sgx);
}

template <typename T, int MK>
void backward_apply_m(const T* G, const T* X, const T* M, const T* MA, T* O, T* R, bool pooled, const Shape& sh,
                      bool ps, const double* mean, const double* A, const double* B, const double* D) {
  if (R && pooled)
    backward_apply_t<T, MK, true, true>(G, X, M, MA, O, R, sh, ps, mean, A, B, D);
  else if (R)
    backward_apply_t<T, MK, true, false>(G, X, M, MA, O, R, sh, ps, mean, A, B, D);
  else if (pooled)
    backward_apply_t<T, MK, false, true>(G, X, M, MA, O, R, sh, ps, mean, A, B, D);
  else
    backward_apply_t<T, MK, false, false>(G, X, M, MA, O, R, sh, ps, mean, A, B, D);
}

template <typename T>
void backward_apply_d(const void* dy, const void* x, const void* mask, const void* mask_affine, bool pooled, void* dx,
                      void* gres, const Shape& sh, bool ps, const double* mean, const double* A, const double* B,
                      const double* D) {
  auto G = static_cast<const T*>(dy);
  auto X = static_cast<const T*>(x);
  auto M = static_cast<const T*>(mask);
  auto MA = static_cast<const T*>(mask_affine);
  auto O = static_cast<T*>(dx);
  auto R = static_cast<T*>(gres);
  if (mask_affine) backward_apply_m<T, 2>(G, X, M, MA, O, R, pooled, sh, ps, mean, A, B, D);
  else if (mask) backward_apply_m<T, 1>(G, X, M, MA, O, R, pooled, sh, ps, mean, A, B, D);
  else backward_apply_m<T, 0>(G, X, M, MA, O, R, pooled, sh, ps, mean, A, B, D);
}

void backward_apply(DType dt, const void* dy, const void* x, const void* mask, const void* mask_affine, bool pooled,
                    void* dx, void* gres, const Shape& sh, bool ps, const double* mean, const double* A,
                    const double* B, const double* D) {
  if (dt == DType::f32)
    backward_apply_d<float>(dy, x, mask, mask_affine, pooled, dx, gres, sh, ps, mean, A, B, D);
  else
    backward_apply_d<double>(dy, x, mask, mask_affine, pooled, dx, gres, sh, ps, mean, A, B, D);
}

template <typename T>
void affine_pool_d(const void* x, const void* affine, bool relu, const Shape& sh, void* out, const double* mean,
                   double* m1, double* m2) {
  auto X = static_cast<const T*>(x);
  auto A = static_cast<const T*>(affine);
  auto O = static_cast<T*>(out);
  if (mean)
    relu ? affine_pool_sums_t<T, true>(X, A, sh, O, mean, m1, m2) : affine_pool_sums_t<T, false>(X, A, sh, O, mean, m1, m2);
  else
    relu ? affine_pool_t<T, true>(X, A, sh, O) : affine_pool_t<T, false>(X, A, sh, O);
}

void affine_pool(DType dt, const void* x, const void* affine, bool relu, const Shape& sh, void* out,
                 const double* mean, double* m1, double* m2) {
  if (dt == DType::f32)
    affine_pool_d<float>(x, affine, relu, sh, out, mean, m1, m2);
  else
    affine_pool_d<double>(x, affine, relu, sh, out, mean, m1, m2);
}

}  // namespace

void bn_apply_pixels(const float* __restrict g, const float* __restrict z, float* __restrict out, int64_t npix,
                     int64_t C, const float* a, const float* bq, const float* hi, const float* lo, const float* dd) {
  with_channels<float>(C, [&](auto cc) {
    constexpr int64_t CC = decltype(cc)::value;
    const int64_t Cn = CC ? CC : C;
    for (int64_t m = 0; m < npix; ++m) {
      const float* __restrict gr = g + m * Cn;
      const float* __restrict zr = z + m * Cn;
      float* __restrict o = out + m * Cn;
#pragma omp simd
      for (int64_t c = 0; c < Cn; ++c) o[c] = apply_value(gr[c], zr[c], a[c], bq[c], hi[c], lo[c], dd[c]);
    }
  });
}

void bn_apply_pixels_masked(const float* gp, int64_t gs, int64_t r0, const float* __restrict z, float* __restrict out,
                            int64_t npix, int64_t C, const float* a, const float* bq, const float* hi, const float* lo,
                            const float* dd, const float* ms, const float* mh) {
  // (backward_apply_t's per-pixel loop: the same mask and value per element)
  auto rows = [&](auto masked) {
    constexpr bool MASKED = decltype(masked)::value;
    with_channels<float>(C, [&](auto cc) {
      constexpr int64_t CC = decltype(cc)::value;
      const int64_t Cn = CC ? CC : C;
      for (int64_t m = 0; m < npix; ++m) {
        const float* __restrict gr = gs > 0 ? gp + ((r0 + m) / gs) * Cn : gp + (r0 + m) * Cn;
        const float* __restrict zr = z + m * Cn;
        float* __restrict o = out + m * Cn;
#pragma omp simd
        for (int64_t c = 0; c < Cn; ++c) {
          const float g = MASKED && !kept<2, float>(nullptr, c, ms[c], mh[c], zr[c]) ? 0.0f : gr[c];
          o[c] = apply_value(g, zr[c], a[c], bq[c], hi[c], lo[c], dd[c]);
        }
      }
    });
  };
  if (ms)
    rows(std::true_type{});
  else
    rows(std::false_type{});
}

extern const norm::Kernels norm_kernels;
const norm::Kernels norm_kernels = {stats, apply, backward_reduce, backward_apply, affine_pool};

}  // namespace CNNKIT_ISA_NS
}  // namespace cnnkit
