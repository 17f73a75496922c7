// Depthwise conv kernels, NHWC (included by conv_kernels.cpp; compiled once per ISA level).
// Vectors run along channels; weights are re-laid out as wt[tap][C] so a tap of a channel vector
// is one contiguous load. Multiplier m > 1 (K = m*C) takes a plain per-element path.
//   forward / adjoint forward: one output row per work item; interior pixels in blocks of four
//                  sharing each weight load, edge pixels with their valid taps only.
//   input grad (stride > 1): 3x3 stride 2 by register rows (dw33s2_bwdin_row), anything else by a
//                  gather over the taps that land on each dx pixel.
//   weight grad:   partial sums per (image, row band), register accumulators per tap over a
//                  channel vector, summed over the pieces in order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "dw_common.h"
#include "norm/bn_apply.h"
#include "unit_stats.h"
#include "scratch.h"

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {

// Planes up to this many pixels take the 3x3 stride-1 register-row kernels (dw3_*, below) where
// they won (see dw3_forward_shape, dw3_weight_shape); the rest, up to kDw3MaxPlane, did not.
constexpr int64_t kDw3MaxPlane = 256;
constexpr int64_t kDw3SmallPlane = 64;

// wt[t*K + k] = w[k*k2 + t]
template <typename T>
const T* dw_weights_tk(const T* w, const Geom& g) {
  const int64_t k2 = g.kh * g.kw;
  T* wt = scratch<T>(kWeightSlot, k2 * g.K);
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t t = 0; t < k2; ++t) wt[t * g.K + k] = w[k * k2 + t];
  return wt;
}

// Valid tap range [lo, hi) of a kernel axis for output position o: o*s + i*d - p in [0, n).
inline void tap_range(int64_t o, int64_t s, int64_t d, int64_t p, int64_t k, int64_t n, int64_t& lo,
                      int64_t& hi) {
  const int64_t base = o * s - p;
  lo = base >= 0 ? 0 : ceil_div(-base, d);
  hi = base + (k - 1) * d < n ? k : (n - 1 - base) / d + 1;
  if (base >= n) hi = 0;
  if (lo > k) lo = k;
  if (hi < lo) hi = lo;
}

// The taps that land on dx pixel (ih, iw): pairs (dy pixel index * scale, tap index * scale)
// written to out in tap order; returns their count.
template <typename I>
int64_t landing_taps(const Geom& g, int64_t ih, int64_t iw, int64_t scale, I* out) {
  int64_t nt = 0;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t rr = ih + g.pt - i * g.dh;
    if (rr < 0 || rr % g.sh || rr / g.sh >= g.Ho) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t cc = iw + g.pl - j * g.dw;
      if (cc < 0 || cc % g.sw || cc / g.sw >= g.Wo) continue;
      out[2 * nt] = I(((rr / g.sh) * g.Wo + cc / g.sw) * scale);
      out[2 * nt + 1] = I((i * g.kw + j) * scale);
      ++nt;
    }
  }
  return nt;
}

// Interior output columns [ow_lo, ow_hi): every tap inside the row.
inline void dw_interior_cols(const Geom& g, int64_t kw, int64_t& ow_lo, int64_t& ow_hi) {
  ow_lo = g.pl > 0 ? ceil_div(g.pl, g.sw) : 0;
  ow_hi = g.W - 1 - (kw - 1) * g.dw + g.pl >= 0 ? (g.W - 1 - (kw - 1) * g.dw + g.pl) / g.sw + 1 : 0;
  ow_hi = std::min(ow_hi, g.Wo);
  if (ow_lo > ow_hi) ow_lo = ow_hi;
}

// Output row oh of one image (xn: the image, NHWC; yr: the row, Wo x K), any multiplier.
template <typename T, int KH, int KW>
void dw_fwd_row_nhwc(const T* xn, const T* wt, const T* b, T* yr, const Geom& g, int64_t oh, int64_t ow_lo,
                     int64_t ow_hi) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, C = g.C, K = g.K, m = K / C;
  const int64_t cv = C / VL * VL;  // channels in full vectors
  int64_t i0, i1;
  tap_range(oh, g.sh, g.dh, g.pt, kh, g.H, i0, i1);
  if (m != 1) {
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      int64_t j0, j1;
      tap_range(ow, g.sw, g.dw, g.pl, kw, g.W, j0, j1);
      for (int64_t k = 0; k < K; ++k) {
        T a = b ? b[k] : T(0);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < j1; ++j)
            a += xn[((oh * g.sh + i * g.dh - g.pt) * g.W + ow * g.sw + j * g.dw - g.pl) * C + k / m] *
                 wt[(i * kw + j) * K + k];
        yr[ow * K + k] = a;
      }
    }
    return;
  }
  auto pixel = [&](int64_t ow) {
    int64_t j0, j1;
    tap_range(ow, g.sw, g.dw, g.pl, kw, g.W, j0, j1);
    T* yo = yr + ow * K;
    for (int64_t c = 0; c < cv; c += VL) {
      V a = b ? vload(b + c) : V{};
      for (int64_t i = i0; i < i1; ++i) {
        const T* xr = xn + ((oh * g.sh + i * g.dh - g.pt) * g.W + ow * g.sw - g.pl) * C + c;
        for (int64_t j = j0; j < j1; ++j) a += vload(xr + j * g.dw * C) * vload(wt + (i * kw + j) * K + c);
      }
      vstore(yo + c, a);
    }
    for (int64_t c = cv; c < C; ++c) {
      T a = b ? b[c] : T(0);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j)
          a += xn[((oh * g.sh + i * g.dh - g.pt) * g.W + ow * g.sw + j * g.dw - g.pl) * C + c] *
               wt[(i * kw + j) * K + c];
      yo[c] = a;
    }
  };
  for (int64_t ow = 0; ow < ow_lo; ++ow) pixel(ow);
  int64_t ow = ow_lo;
  if (cv == C) {
    const int64_t xs = g.sw * C;
    for (; ow + 4 <= ow_hi; ow += 4) {
      T* yo = yr + ow * K;
      for (int64_t c = 0; c < C; c += VL) {
        V a0 = b ? vload(b + c) : V{};
        V a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i = i0; i < i1; ++i) {
          const T* xr = xn + ((oh * g.sh + i * g.dh - g.pt) * g.W + ow * g.sw - g.pl) * C + c;
          for (int64_t j = 0; j < kw; ++j) {
            const V wv = vload(wt + (i * kw + j) * K + c);
            const T* p = xr + j * g.dw * C;
            a0 += vload(p) * wv;
            a1 += vload(p + xs) * wv;
            a2 += vload(p + 2 * xs) * wv;
            a3 += vload(p + 3 * xs) * wv;
          }
        }
        vstore(yo + c, a0);
        vstore(yo + K + c, a1);
        vstore(yo + 2 * K + c, a2);
        vstore(yo + 3 * K + c, a3);
      }
    }
  }
  for (; ow < g.Wo; ++ow) pixel(ow);
}

template <typename T, int KH, int KW>
void dw_forward_nhwc(const T* x, const T* w, const T* b, T* y, const Geom& g) {
  const T* wt = dw_weights_tk(w, g);
  int64_t ow_lo, ow_hi;
  dw_interior_cols(g, KW ? KW : g.kw, ow_lo, ow_hi);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < g.N * g.Ho; ++u)
    dw_fwd_row_nhwc<T, KH, KW>(x + u / g.Ho * g.H * g.W * g.C, wt, b, y + u * g.Wo * g.K, g, u % g.Ho, ow_lo, ow_hi);
}

// The fused prologue of conv::Fused on the input channels: a = max(fma(scale[c], x, shift[c]), 0)
// (the fma when scale, the ReLU when relu). One fma, a single rounding, as the GEMM path packs it
// and as the norm kernels recompute the ReLU mask (fma(...) > 0) in the backward pass.
template <typename T>
struct DwPro {
  const T* scale = nullptr;
  const T* shift = nullptr;
  bool relu = false;
  bool any() const { return scale || relu; }
};

// d[p*C + c] = prologue(s[p*C + c]) for np pixels of C channels (branch-free loops the compiler
// vectorises; std::fma is the fused instruction where the level has one, else libm's exact fma).
template <typename T>
void dw_prologue_px(const T* __restrict s, T* __restrict d, int64_t np, int64_t C, const DwPro<T>& pro) {
  const T* __restrict sc = pro.scale;
  const T* __restrict sh = pro.shift;
  if (sc && pro.relu) {
    for (int64_t p = 0; p < np; ++p, s += C, d += C)
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) d[c] = std::max(std::fma(sc[c], s[c], sh[c]), T(0));
  } else if (sc) {
    for (int64_t p = 0; p < np; ++p, s += C, d += C)
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) d[c] = std::fma(sc[c], s[c], sh[c]);
  } else if (pro.relu) {
    for (int64_t e = 0; e < np * C; ++e) d[e] = std::max(s[e], T(0));
  } else {
    std::memcpy(d, s, np * C * sizeof(T));
  }
}

// Rows [r0, r1) (clipped to the image) of image xn through the prologue into buf, at the same
// offsets as in xn (buf holds a whole image; only those rows are written).
template <typename T>
void dw_stage_rows(const T* xn, const Geom& g, int64_t r0, int64_t r1, T* buf, const DwPro<T>& pro) {
  r0 = std::max<int64_t>(r0, 0);
  r1 = std::min(r1, g.H);
  if (r1 > r0) dw_prologue_px(xn + r0 * g.W * g.C, buf + r0 * g.W * g.C, (r1 - r0) * g.W, g.C, pro);
}

// The fused statistics of one channel vector (s1, s2, sh point at its first channel): running
// sums of (y - sh) and (y - sh)^2 in double over the unit's pixels in order; init: this chunk
// holds the unit's first pixel (sh is set from it and the sums start at 0).
struct DwStat {
  double* s1 = nullptr;
  double* s2 = nullptr;
  double* sh = nullptr;
  bool init = false;
};

template <int Off, typename V, int... L>
CNNKIT_HD auto dw_half(V v, std::integer_sequence<int, L...>) {
  return __builtin_shufflevector(v, v, (Off + L)...);
}

// Lanes [Off, Off + VL/2) of a float vector as doubles (exact): one conversion of the half
// (common/avx2_double.h; GCC otherwise converts it in 128-bit quarters and inserts them).
template <int Off, typename V>
CNNKIT_HD vec_t<double> dw_half_pd(V v) {
  constexpr int H = Vec<float>::n / 2;
#if defined(__AVX512F__)
  return (vec_t<double>)(Off == 0 ? avx512d::lo8d((__m512)v) : avx512d::hi8d((__m512)v));
#elif defined(__AVX2__)
  // (the same at AVX2: GCC converted pairs, xmm to xmm, and inserted them)
  return (vec_t<double>)(Off == 0 ? avx2d::lo4d((__m256)v) : avx2d::hi4d((__m256)v));
#else
  return __builtin_convertvector(dw_half<Off>(v, std::make_integer_sequence<int, H>{}), vec_t<double>);
#endif
}

// The sums over NP pixels of one channel vector, from the accumulators a[p] (in registers: the
// output is not read back). The order per channel is the pixels' (unit_stats_add's; the same bits).
template <typename T, int NP>
CNNKIT_HD void dw_stats_regs(const vec_t<T>* a, const DwStat& st) {
  constexpr int VL = Vec<T>::n, H = VL / 2;
  using D = vec_t<double>;
  static_assert(sizeof(T) == 4 && Vec<double>::n == H, "float vectors of two double vectors");
  D s1[2], s2[2], c[2];
  if (st.init) {
    c[0] = dw_half_pd<0>(a[0]);
    c[1] = dw_half_pd<H>(a[0]);
    vstore(st.sh, c[0]);
    vstore(st.sh + H, c[1]);
    s1[0] = s1[1] = s2[0] = s2[1] = D{};
  } else {
    for (int h = 0; h < 2; ++h) {
      c[h] = vload(st.sh + h * H);
      s1[h] = vload(st.s1 + h * H);
      s2[h] = vload(st.s2 + h * H);
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < NP; ++p) {
    const D d0 = dw_half_pd<0>(a[p]) - c[0];
    const D d1 = dw_half_pd<H>(a[p]) - c[1];
    s1[0] += d0;
    s2[0] += d0 * d0;
    s1[1] += d1;
    s2[1] += d1 * d1;
  }
  for (int h = 0; h < 2; ++h) {
    vstore(st.s1 + h * H, s1[h]);
    vstore(st.s2 + h * H, s2[h]);
  }
}

// Zero-padded copy of input rows [r0, r1) of image xn: row r - r0 has Wp*C entries, column c
// holding pixel c - pl (zeros outside the image). With pro, the pixels go through the prologue
// (the padding stays 0: it applies after the prologue).
template <typename T>
void pad_rows_nhwc(const T* xn, const Geom& g, int64_t r0, int64_t r1, int64_t Wp, T* buf,
                   const DwPro<T>* pro = nullptr) {
  const int64_t C = g.C;
  const int64_t lo = std::min(Wp, std::max<int64_t>(0, g.pl));
  const int64_t hi = std::max(lo, std::min(Wp, g.pl + g.W));
  for (int64_t r = r0; r < r1; ++r) {
    T* d = buf + (r - r0) * Wp * C;
    if (r < 0 || r >= g.H) {
      std::fill(d, d + Wp * C, T(0));
      continue;
    }
    std::fill(d, d + lo * C, T(0));
    if (hi > lo) {
      if (pro)
        dw_prologue_px(xn + (r * g.W + (lo - g.pl)) * C, d + lo * C, hi - lo, C, *pro);
      else
        std::memcpy(d + lo * C, xn + (r * g.W + (lo - g.pl)) * C, (hi - lo) * C * sizeof(T));
    }
    std::fill(d + hi * C, d + Wp * C, T(0));
  }
}

// NP output pixels of one row, all channels: acc = b + sum over taps of w * xp.
template <typename T, int KH, int KW, int NP>
CNNKIT_HD void dw_pad_block(const T* const* rows, T* yo, int64_t ow, const T* wt, const T* b, const Geom& g,
                            int64_t kh, int64_t kw) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t C = g.C, cv = C / VL * VL, xs = g.sw * C;
  for (int64_t c = 0; c < cv; c += VL) {
    V a[NP];
    const V bv = b ? vload(b + c) : V{};
    for (int p = 0; p < NP; ++p) a[p] = bv;
    for (int64_t i = 0; i < kh; ++i) {
      const T* xr = rows[i] + ow * xs + c;
      for (int64_t j = 0; j < kw; ++j) {
        const V wv = vload(wt + (i * kw + j) * C + c);
        const T* q = xr + j * g.dw * C;
        for (int p = 0; p < NP; ++p) a[p] += vload(q + p * xs) * wv;
      }
    }
    for (int p = 0; p < NP; ++p) vstore(yo + p * C + c, a[p]);
  }
  for (int64_t c = cv; c < C; ++c)
    for (int p = 0; p < NP; ++p) {
      T a = b ? b[c] : T(0);
      for (int64_t i = 0; i < kh; ++i)
        for (int64_t j = 0; j < kw; ++j) a += rows[i][(ow + p) * xs + j * g.dw * C + c] * wt[(i * kw + j) * C + c];
      yo[p * C + c] = a;
    }
}

// ---- 3x3, dilation 1, stride S in {1, 2}, multiplier 1, on zero-padded rows --------------------
// Register rows: per chunk of NP output pixels, each channel vector in turn (the forward writes the
// row in address order, a chunk's pixels at a time: with the channel vectors outermost the stores
// strided through the whole row once per vector and waited on their lines' reads), with the chunk's
// accumulators, the input vectors of each of the three rows it reads ((NP - 1)*S + 3) and the nine
// weight vectors in registers (AVX-512: 8 + 10 + 9 of 32 at S = 1; 6 + 13 + 9 at S = 2), the
// pixel pointers stepped by C. Each output sums its taps in the order (i, j), as dw_pad_block, and
// each weight-gradient tap its pixels in row order, as dw_wgrad_band's per-pixel loop: the same
// bits. (dw_pad_block's eight runtime pixel offsets per tap spilled to the stack. N = 64, C = 128,
// 16x16, forward: 1 thread 0.92 -> 0.77 ms (min, separate runs on a loaded machine); 2 threads,
// against torch's channels_last forward in the same run, 0.77x -> 0.59x its time.)
inline bool dw33_shape(const Geom& g) {
  return g.kh == 3 && g.kw == 3 && g.dh == 1 && g.dw == 1 && (g.sw == 1 || g.sw == 2);
}

// f(std::integral_constant<int, NP>{}, ow0) for the chunks of a row of Wo pixels: chunks of NPMAX,
// then one of the rest.
template <int NPMAX, typename F>
CNNKIT_HD void dw_row_chunks(int64_t Wo, F&& f) {
  int64_t ow = 0;
  for (; ow + NPMAX <= Wo; ow += NPMAX) f(std::integral_constant<int, NPMAX>{}, ow);
  const int64_t r = Wo - ow;
  if constexpr (NPMAX > 7) if (r == 7) return f(std::integral_constant<int, 7>{}, ow);
  if constexpr (NPMAX > 6) if (r == 6) return f(std::integral_constant<int, 6>{}, ow);
  if constexpr (NPMAX > 5) if (r == 5) return f(std::integral_constant<int, 5>{}, ow);
  if constexpr (NPMAX > 4) if (r == 4) return f(std::integral_constant<int, 4>{}, ow);
  if constexpr (NPMAX > 3) if (r == 3) return f(std::integral_constant<int, 3>{}, ow);
  if constexpr (NPMAX > 2) if (r == 2) return f(std::integral_constant<int, 2>{}, ow);
  if constexpr (NPMAX > 1) if (r == 1) return f(std::integral_constant<int, 1>{}, ow);
}

// The tap walk both register-row kernels share: for NP output pixels from pixel offset `off` of the
// three padded rows (pixels C apart), the NX = (NP - 1)*S + 3 input vectors of each row loaded once,
// then f(tap i*3 + j, pixel p, input vector) for i, j, p in that order (so each output, and each
// weight-gradient tap, sums in the order the plain loops do).
template <typename T, int S, int NP, typename F>
CNNKIT_HD void dw33_taps(const T* const* rows, int64_t off, int64_t C, F&& f) {
  constexpr int NX = (NP - 1) * S + 3;
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i) {
    const T* q = rows[i] + off;
    vec_t<T> xv[NX];
#pragma GCC unroll 24
    for (int u = 0; u < NX; ++u, q += C) xv[u] = vload(q);
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j)
#pragma GCC unroll 8
      for (int p = 0; p < NP; ++p) f(i * 3 + j, p, xv[p * S + j]);
  }
}

// dw33_taps' sums a[p] += x[p + j] * w[i*3 + j] of NP outputs at stride 1, each input vector
// loaded once and added at once into the (at most three) outputs that read it: u = p + j in
// increasing order, so each output still takes its taps in (i, j) order (the same bits). Live:
// the NP sums, one input vector and the weights; dw33_taps holds a row's NP + 2 inputs as well
// (27 vectors at NP = 8, which AVX2's 16 registers spilled).
template <typename T, int NP>
CNNKIT_HD void dw33_slide(const T* const* rows, int64_t off, int64_t C, vec_t<T> (&a)[NP], const vec_t<T> (&wv)[9]) {
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i) {
    const T* q = rows[i] + off;
#pragma GCC unroll 10
    for (int u = 0; u < NP + 2; ++u) {
      const vec_t<T> x = vload(q + u * C);
#pragma GCC unroll 3
      for (int j = 0; j < 3; ++j)
        if (u >= j && u - j < NP) a[u - j] += x * wv[i * 3 + j];
    }
  }
}

// One output row yr (Wo pixels of C channels) from the padded rows rows[0..2] (Wp pixels each).
// With st (the unit's sums at channel 0; init: this row is the unit's first), the statistics.
template <typename T, int S>
void dw33_fwd_row(const T* const* rows, T* yr, const T* wt, const T* b, const Geom& g, const DwStat* st = nullptr,
                  SpreadPrefetch* pf = nullptr) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  constexpr int NPMAX = S == 1 ? 8 : 6;
  const int64_t C = g.C, cv = C / VL * VL;
  dw_row_chunks<NPMAX>(g.Wo, [&](auto npc, int64_t ow0) __attribute__((always_inline)) {
    for (int64_t c = 0; c < cv; c += VL) {
      if (pf) pf->step();
      V wv[9];
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) wv[t] = vload(wt + t * C + c);
      const V bv = b ? vload(b + c) : V{};
      constexpr int NP = decltype(npc)::value;
      V a[NP];
#pragma GCC unroll 8
      for (int p = 0; p < NP; ++p) a[p] = bv;
#if defined(__AVX2__) && !defined(__AVX512F__)
      if constexpr (S == 1)
        dw33_slide<T, NP>(rows, ow0 * C + c, C, a, wv);
      else
#endif
        dw33_taps<T, S, NP>(rows, ow0 * S * C + c, C,
                            [&](int t, int p, V xv) __attribute__((always_inline)) { a[p] += xv * wv[t]; });
      T* yo = yr + ow0 * C + c;
#pragma GCC unroll 8
      for (int p = 0; p < NP; ++p, yo += C) vstore(yo, a[p]);
      if constexpr (sizeof(T) == 4)
        if (st) dw_stats_regs<T, NP>(a, DwStat{st->s1 + c, st->s2 + c, st->sh + c, st->init && ow0 == 0});
    }
  });
  for (int64_t c = cv; c < C; ++c) {
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      T a = b ? b[c] : T(0);
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) a += rows[i][(ow * S + j) * C + c] * wt[(i * 3 + j) * C + c];
      yr[ow * C + c] = a;
    }
    if (st) {  // the remainder channels' sums, in pixel order
      if (st->init) {
        st->sh[c] = double(yr[c]);
        st->s1[c] = st->s2[c] = 0;
      }
      double a1 = st->s1[c], a2 = st->s2[c];
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        const double d = double(yr[ow * C + c]) - st->sh[c];
        a1 += d;
        a2 += d * d;
      }
      st->s1[c] = a1;
      st->s2[c] = a2;
    }
  }
}

// The channel vectors of dw_wgrad_band's partials (pwu[tap][C], pbu[C]) for output rows
// [oh0, oh1) from the padded rows in buf (row r at (r - r0) * Wp * C); cont: the sums continue
// from pwu and pbu (earlier rows' sums) instead of starting at zero.
template <typename T, int S>
void dw33_wgrad_vectors(const T* buf, const T* dyn, T* pwu, T* pbu, const Geom& g, int64_t oh0, int64_t oh1,
                        int64_t r0, int64_t Wp, SpreadPrefetch* pf = nullptr, bool cont = false) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t C = g.C, cv = C / VL * VL;
#if defined(__AVX2__) && !defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    // AVX2: rows outermost, then the channel vectors of a span whose three padded rows fit in
    // about 16 KiB, then the row's pixels, each tap's x a memory operand of its FMA; the sums
    // live in pwu and pbu between rows. Channel vectors outermost (below) stream the whole band
    // once per vector, using one vector of each line they touch (at C = 32 each pixel's two lines
    // come four times): L2-bound at about 12 cycles a pixel and vector. Here the rows come from
    // L2 once, then from L1. Each sum still takes the pixels in row order (the same bits).
    for (int64_t c = 0; c < cv && !cont; c += VL) {
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) vstore(pwu + t * C + c, V{});
      vstore(pbu + c, V{});
    }
    const int64_t span = std::max<int64_t>(VL, (int64_t(16) << 10) / (3 * Wp * int64_t(sizeof(T))) / VL * VL);
    for (int64_t c0 = 0; c0 < cv; c0 += span) {
      const int64_t c1 = std::min(cv, c0 + span);
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const T* xr = buf + (oh * g.sh - g.pt - r0) * Wp * C;
        const T* dr = dyn + oh * g.Wo * C;
        for (int64_t c = c0; c < c1; c += VL) {
          if (pf) pf->step();  // (once a row and vector, as below)
          V acc[9];
#pragma GCC unroll 9
          for (int t = 0; t < 9; ++t) acc[t] = vload(pwu + t * C + c);
          V sb = vload(pbu + c);
          for (int64_t ow = 0; ow < g.Wo; ++ow) {
            const V d = vload(dr + ow * C + c);
            sb += d;
            const T* q = xr + ow * S * C + c;
#pragma GCC unroll 3
            for (int i = 0; i < 3; ++i)
#pragma GCC unroll 3
              for (int j = 0; j < 3; ++j) acc[i * 3 + j] += d * vload(q + (i * Wp + j) * C);
          }
#pragma GCC unroll 9
          for (int t = 0; t < 9; ++t) vstore(pwu + t * C + c, acc[t]);
          vstore(pbu + c, sb);
        }
      }
    }
    return;
  }
#endif
  constexpr int NPMAX = S == 1 ? 8 : 6;
  for (int64_t c = 0; c < cv; c += VL) {
    V acc[9];
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) acc[t] = cont ? vload(pwu + t * C + c) : V{};
    V sb = cont ? vload(pbu + c) : V{};
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const T* xr = buf + (oh * g.sh - g.pt - r0) * Wp * C + c;
      const T* dr = dyn + oh * g.Wo * C + c;
      if (pf) pf->step();
      const T* r3[3] = {xr, xr + Wp * C, xr + 2 * Wp * C};
      dw_row_chunks<NPMAX>(g.Wo, [&](auto npc, int64_t ow0) __attribute__((always_inline)) {
        constexpr int NP = decltype(npc)::value;
        V d[NP];
        const T* dq = dr + ow0 * C;
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p, dq += C) d[p] = vload(dq);
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) sb += d[p];
        dw33_taps<T, S, NP>(r3, ow0 * S * C, C,
                            [&](int t, int p, V xv) __attribute__((always_inline)) { acc[t] += d[p] * xv; });
      });
    }
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) vstore(pwu + t * C + c, acc[t]);
    vstore(pbu + c, sb);
  }
}

// Whether the forward kernels prefetch their next rows into L2: more than one image and an input
// of at least 2 MiB (twice a core's L2). On tensors already in L2 (N = 4) the prefetches cost 8-20%.
template <typename T>
inline bool dw_prefetch_worthy(const Geom& g) {
  return g.N > 1 && g.N * g.H * g.W * g.C * int64_t(sizeof(T)) >= (int64_t(2) << 20);
}

// Output rows [oh0, oh1) of one image (xn, yn: NHWC with g.C channels), multiplier 1, from
// zero-padded copies of the input rows they read (no edge cases in the inner loops).
// With N > 1, each output row prefetches into L2 the input rows the next one adds and the next
// output row (with next, also past the band: the next unit's rows follow in memory), spread over
// the register rows' chunks. Measured (1 thread, CPU time, N = 64, interleaved with the build
// before, load 3-8): the fused forward of mobilenet_small's 3x3 layers 1.1-1.2x faster from DRAM
// with a burst of prefetchw of the output row, 1.3-1.4x with a burst of read prefetches into L2,
// 1.44-1.79x with those spread over the chunks (C384 14x14 plain forward 1.09-1.21x). On tensors
// already in L2 (N = 4) they cost 8-20%, so inputs under 2 MiB (twice a core's L2) take none.
// (With after, after(oh, row) is called on each output row once it is written.)
// (With st, the 3x3 register rows accumulate the statistics from their registers instead.)
template <typename T, int KH, int KW, typename After = std::nullptr_t>
void dw_fwd_band(const T* xn, const T* wt, const T* b, T* yn, const Geom& g, int64_t oh0, int64_t oh1, int64_t Wp,
                 T* buf, const T** rows, const DwPro<T>* pro = nullptr, After after = nullptr,
                 const DwStat* st = nullptr, bool next = false) {
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, C = g.C;
  const int64_t r0 = oh0 * g.sh - g.pt;
  int64_t done = r0;  // rows [r0, done) are padded: each output row pads the rows it newly reads
  const bool big = dw_prefetch_worthy<T>(g);
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const int64_t need = oh * g.sh + (kh - 1) * g.dh - g.pt + 1;
    if (need > done) {
      pad_rows_nhwc(xn, g, done, need, Wp, buf + (done - r0) * Wp * C, pro);
      done = need;
    }
    for (int64_t i = 0; i < kh; ++i) rows[i] = buf + (oh * g.sh + i * g.dh - g.pt - r0) * Wp * C;
    T* yr = yn + oh * g.Wo * C;
    // The input rows the next output row adds and that row of y (past the band: the next unit's,
    // at the following addresses), so their DRAM traffic overlaps this row's FMAs instead of
    // stalling the row copy and the stores.
    const bool pf_next = big && (next || oh + 1 < oh1);
    if constexpr (KH == 3 && KW == 3) {
      if (dw33_shape(g)) {
        // (The register rows spread the prefetches over their chunks: in one burst they stalled
        // as long as the row's FMAs took.)
        const int64_t VL0 = Vec<T>::n;
        SpreadPrefetch pf(xn + need * g.W * C, pf_next ? g.sh * g.W * C * int64_t(sizeof(T)) : 0, yr + g.Wo * C,
                          pf_next ? g.Wo * C * int64_t(sizeof(T)) : 0,
                          ceil_div(g.Wo, int64_t(g.sw == 1 ? 8 : 6)) * (C / VL0));
        DwStat rs;
        if (st) rs = DwStat{st->s1, st->s2, st->sh, oh == oh0};
        if (g.sw == 1)
          dw33_fwd_row<T, 1>(rows, yr, wt, b, g, st ? &rs : nullptr, pf_next ? &pf : nullptr);
        else
          dw33_fwd_row<T, 2>(rows, yr, wt, b, g, st ? &rs : nullptr, pf_next ? &pf : nullptr);
        if constexpr (!std::is_same_v<After, std::nullptr_t>)
          if (!st) after(oh, yr);
        continue;
      }
    }
    if (pf_next) {
      prefetch_bytes(xn + need * g.W * C, g.sh * g.W * C * int64_t(sizeof(T)), false);
      prefetch_bytes(yr + g.Wo * C, g.Wo * C * int64_t(sizeof(T)), false);
    }
    int64_t ow = 0;
    for (; ow + 8 <= g.Wo; ow += 8) dw_pad_block<T, KH, KW, 8>(rows, yr + ow * C, ow, wt, b, g, kh, kw);
    switch (g.Wo - ow) {  // the rest in one block
      case 7: dw_pad_block<T, KH, KW, 7>(rows, yr + ow * C, ow, wt, b, g, kh, kw); break;
      case 6: dw_pad_block<T, KH, KW, 6>(rows, yr + ow * C, ow, wt, b, g, kh, kw); break;
      case 5: dw_pad_block<T, KH, KW, 5>(rows, yr + ow * C, ow, wt, b, g, kh, kw); break;
      case 4: dw_pad_block<T, KH, KW, 4>(rows, yr + ow * C, ow, wt, b, g, kh, kw); break;
      case 3: dw_pad_block<T, KH, KW, 3>(rows, yr + ow * C, ow, wt, b, g, kh, kw); break;
      case 2: dw_pad_block<T, KH, KW, 2>(rows, yr + ow * C, ow, wt, b, g, kh, kw); break;
      case 1: dw_pad_block<T, KH, KW, 1>(rows, yr + ow * C, ow, wt, b, g, kh, kw); break;
      default: break;
    }
    if constexpr (!std::is_same_v<After, std::nullptr_t>) after(oh, yr);
  }
}

// Forward, multiplier 1, NHWC: bands of output rows.
template <typename T, int KH, int KW>
void dw_forward_nhwc_padded(const T* x, const T* w, const T* b, T* y, const Geom& g) {
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, C = g.C;
  const T* wt = dw_weights_tk(w, g);
  const int64_t Wp = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
  const int64_t per_img = g.N >= 16 ? 1 : std::min<int64_t>(g.Ho, ceil_div(16, g.N));
  const int64_t band = ceil_div(g.Ho, per_img), nb = ceil_div(g.Ho, band);
  const int64_t max_rows = (band - 1) * g.sh + (kh - 1) * g.dh + 1;
#pragma omp parallel num_threads(num_threads())
  {
    T* buf = scratch<T>(kPlaneSlot, max_rows * Wp * C);
    const T** rows = reinterpret_cast<const T**>(scratch<char>(kColSlot, sizeof(T*) * kh));
#pragma omp for schedule(static)
    for (int64_t u = 0; u < g.N * nb; ++u) {
      const int64_t n = u / nb, oh0 = (u % nb) * band, oh1 = std::min(g.Ho, oh0 + band);
      dw_fwd_band<T, KH, KW>(x + n * g.H * g.W * C, wt, b, y + n * g.Ho * g.Wo * C, g, oh0, oh1, Wp, buf, rows,
                             nullptr, nullptr, nullptr, u + 1 < g.N * nb);
    }
  }
}

// Weight-gradient partials of output rows [oh0, oh1) of one image (xn, dyn: NHWC with g.C
// channels), multiplier 1: pwu[tap][C] and pbu[C].
template <typename T, int KH, int KW>
void dw_wgrad_band(const T* xn, const T* dyn, T* pwu, T* pbu, const Geom& g, int64_t oh0, int64_t oh1, int64_t Wp,
                   T* buf, vec_t<T>* dyn_acc, const DwPro<T>* pro = nullptr, bool next = false) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, k2 = kh * kw, C = g.C;
  const int64_t cv = C / VL * VL;
  constexpr int NA = KH && KW ? KH * KW : 1;
  if (oh0 >= oh1) {
    std::fill(pwu, pwu + k2 * C, T(0));
    std::fill(pbu, pbu + C, T(0));
    return;
  }
  const int64_t r0 = oh0 * g.sh - g.pt, r1 = (oh1 - 1) * g.sh + (kh - 1) * g.dh - g.pt + 1;
  bool padded = false;  // (whether the 3x3 sums below padded the rows the loops after them read)
  if constexpr (KH == 3 && KW == 3) {
    if (dw33_shape(g)) {
      // With next (a whole image per piece, another after it): the next image's x and dy (the
      // next piece's on this thread, at the following addresses) prefetched over this one's rows,
      // where wgrad_prefetch_next().
      const int64_t C0 = g.C, VL0 = Vec<T>::n;
      SpreadPrefetch pf;
      const bool whole = next && oh0 == 0 && oh1 == g.Ho && C0 >= VL0 && wgrad_prefetch_next();
      if (whole)
        pf = SpreadPrefetch(xn + g.H * g.W * C0, g.H * g.W * C0 * int64_t(sizeof(T)), dyn + g.Ho * g.Wo * C0,
                            g.Ho * g.Wo * C0 * int64_t(sizeof(T)), (C0 / VL0) * g.Ho);
      // The band padded whole, then summed; at AVX2 (its weight sums take the rows outermost, the
      // sums in pwu and pbu between rows), a band whose padded rows pass 128 KiB is padded and
      // summed 8 output rows at a time: padded whole, the copy (mobilenet_small's stride-2 layer,
      // 64 channels at 32x32: 279 KiB) and the image it comes from filled Zen 3's 512 KiB L2
      // before the sums read the copy back. Each sum still takes the rows in order: the same bits.
      // Replays of that call alternating in one process, 2 threads: 1.04-1.17x in three runs with
      // a switch, 1.00x in three later runs of the two builds loaded side by side (within the
      // noise, then); mobilenet_small's stride-1 32-channel layer (148 KiB) level. (Without whole
      // vectors only: the remainder channels below read the whole band.)
      int64_t B = oh1 - oh0;
#if defined(__AVX2__) && !defined(__AVX512F__)
      if (std::is_same_v<T, float> && cv == C && (r1 - r0) * Wp * C * int64_t(sizeof(T)) > (int64_t(128) << 10))
        B = 8;
#endif
      for (int64_t a = oh0; a < oh1; a += B) {
        const int64_t b = std::min(oh1, a + B);
        const int64_t ra = a * g.sh - g.pt, rb = (b - 1) * g.sh + (kh - 1) * g.dh - g.pt + 1;
        pad_rows_nhwc(xn, g, ra, rb, Wp, buf, pro);
        if (g.sw == 1)
          dw33_wgrad_vectors<T, 1>(buf, dyn, pwu, pbu, g, a, b, ra, Wp, whole ? &pf : nullptr, a > oh0);
        else
          dw33_wgrad_vectors<T, 2>(buf, dyn, pwu, pbu, g, a, b, ra, Wp, whole ? &pf : nullptr, a > oh0);
      }
      padded = true;
    }
  }
  if (!padded) pad_rows_nhwc(xn, g, r0, r1, Wp, buf, pro);
  for (int64_t c = (KH == 3 && KW == 3 && dw33_shape(g)) ? cv : 0; c < cv; c += VL) {
    V accs[NA];
    V* acc = (KH && KW) ? accs : dyn_acc;
    for (int64_t t = 0; t < k2; ++t) acc[t] = V{};
    V sb{};
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const T* xr = buf + (oh * g.sh - g.pt - r0) * Wp * C + c;
      const T* dr = dyn + oh * g.Wo * C + c;
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        const V gv = vload(dr + ow * C);
        sb += gv;
        const T* q = xr + ow * g.sw * C;
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j) acc[i * kw + j] += gv * vload(q + (i * g.dh * Wp + j * g.dw) * C);
      }
    }
    for (int64_t t = 0; t < k2; ++t) vstore(pwu + t * C + c, acc[t]);
    vstore(pbu + c, sb);
  }
  for (int64_t c = cv; c < C; ++c) {
    T sb = 0;
    for (int64_t t = 0; t < k2; ++t) pwu[t * C + c] = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        const T gv = dyn[(oh * g.Wo + ow) * C + c];
        sb += gv;
        const T* q = buf + (oh * g.sh - g.pt - r0) * Wp * C + ow * g.sw * C + c;
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j) pwu[(i * kw + j) * C + c] += gv * q[(i * g.dh * Wp + j * g.dw) * C];
      }
    pbu[c] = sb;
  }
}

// Weight-gradient partials (multiplier 1), NHWC: piece (n, band) writes pw[piece][tap][C] and
// pb[piece][C]. With pro, x goes through the prologue as its rows are padded.
template <typename T, int KH, int KW>
void dw_weight_partials_nhwc_padded(const T* dy, const T* x, T* pw, T* pb, int64_t bands, const Geom& g,
                                    const DwPro<T>* pro = nullptr) {
  constexpr int VL = Vec<T>::n;
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, k2 = kh * kw, C = g.C;
  const int64_t Wp = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
  const int64_t band = ceil_div(g.Ho, bands);
  const int64_t max_rows = (band - 1) * g.sh + (kh - 1) * g.dh + 1;
#pragma omp parallel num_threads(num_threads())
  {
    T* buf = scratch<T>(kPlaneSlot, max_rows * Wp * C);
    vec_t<T>* dyn_acc = reinterpret_cast<vec_t<T>*>(scratch<T>(kAccSlot, k2 * VL));
#pragma omp for schedule(static)
    for (int64_t u = 0; u < g.N * bands; ++u) {
      const int64_t n = u / bands, oh0 = (u % bands) * band, oh1 = std::min(g.Ho, oh0 + band);
      dw_wgrad_band<T, KH, KW>(x + n * g.H * g.W * C, dy + n * g.Ho * g.Wo * C, pw + u * k2 * C, pb + u * C, g, oh0,
                               oh1, Wp, buf, dyn_acc, pro, bands == 1 && n + 1 < g.N);
    }
  }
}

// NCHW planes <-> pixel-major blocks of VL channels: VL rows of L elements (row stride S) to
// L x VL, and back, by register transposes.
template <typename T>
void block_to_px(const T* src, int64_t L, int64_t S, T* dst) {
  constexpr int VL = Vec<T>::n;
  int64_t l = 0;
  for (; l + VL <= L; l += VL) transpose_block(src + l, S, dst + l * VL, VL);
  for (; l < L; ++l)
    for (int i = 0; i < VL; ++i) dst[l * VL + i] = src[i * S + l];
}
template <typename T>
void px_to_block(const T* src, int64_t L, T* dst, int64_t S) {
  constexpr int VL = Vec<T>::n;
  int64_t l = 0;
  for (; l + VL <= L; l += VL) transpose_block(src + l * VL, VL, dst + l, S);
  for (; l < L; ++l)
    for (int i = 0; i < VL; ++i) dst[i * S + l] = src[l * VL + i];
}

// Small NCHW planes (C a multiple of VL, multiplier 1): per (image, block of VL channels), the
// planes are transposed in registers into a pixel-major block in cache, run through the NHWC
// band kernels with C = VL, and (forward) transposed back. Weights per block: wb[cb][tap][VL],
// then the bias bb[cb][VL].
template <typename T>
const T* dw_block_weights(const T* w, const T* b, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  const int64_t k2 = g.kh * g.kw, ncb = g.C / VL;
  T* wb = scratch<T>(kWeightSlot, ncb * (k2 + 1) * VL);
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t t = 0; t < k2; ++t) wb[((c / VL) * k2 + t) * VL + c % VL] = w[c * k2 + t];
    wb[ncb * k2 * VL + c] = b ? b[c] : T(0);
  }
  return wb;
}

inline Geom dw_block_geom(const Geom& g, int vl) {
  Geom s = g;
  s.N = 1;
  s.C = s.K = s.G = vl;
  s.nhwc = true;
  return s;
}

template <typename T, int KH, int KW>
void dw_forward_nchw_blocked(const T* x, const T* w, const T* b, T* y, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, k2 = kh * kw, ncb = g.C / VL;
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo;
  const T* wb = dw_block_weights(w, b, g);
  const Geom gs = dw_block_geom(g, VL);
  const int64_t Wp = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
  const int64_t max_rows = (g.Ho - 1) * g.sh + (kh - 1) * g.dh + 1;
#pragma omp parallel num_threads(num_threads())
  {
    T* buf = scratch<T>(kPlaneSlot, max_rows * Wp * VL);
    const T** rows = reinterpret_cast<const T**>(scratch<char>(kColSlot, sizeof(T*) * kh));
    T* xb = scratch<T>(kXbSlot, HW * VL);
    T* yb = scratch<T>(kYbSlot, P * VL);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < g.N * ncb; ++u) {
      const int64_t n = u / ncb, cb = u % ncb;
      block_to_px(x + (n * g.C + cb * VL) * HW, HW, HW, xb);
      dw_fwd_band<T, KH, KW>(xb, wb + cb * k2 * VL, b ? wb + ncb * k2 * VL + cb * VL : nullptr, yb, gs, 0, g.Ho, Wp,
                             buf, rows);
      px_to_block(yb, P, y + (n * g.C + cb * VL) * P, P);
    }
  }
}

// Input gradient (any stride) for NCHW planes, channels a multiple of VL, multiplier 1. The taps
// that land on each dx pixel are the same for every block, so they are listed once: for pixel
// (ih, iw), pairs (dy pixel, tap) in tap order.
template <typename T>
void dw_backward_input_nchw_blocked(const T* dy, const T* w, T* dx, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t kh = g.kh, kw = g.kw, k2 = kh * kw, ncb = g.C / VL, HW = g.H * g.W, P = g.Ho * g.Wo;
  const T* wb = dw_block_weights<T>(w, nullptr, g);
  int32_t* list = scratch<int32_t>(kAdjointSlot, HW * (2 * k2 + 1));  // [pixel][count, pairs...]
  for (int64_t ih = 0; ih < g.H; ++ih)
    for (int64_t iw = 0; iw < g.W; ++iw) {
      int32_t* e = list + (ih * g.W + iw) * (2 * k2 + 1);
      e[0] = int32_t(landing_taps(g, ih, iw, VL, e + 1));
    }
#pragma omp parallel num_threads(num_threads())
  {
    T* dxb = scratch<T>(kXbSlot, HW * VL);
    T* dyb = scratch<T>(kYbSlot, P * VL);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < g.N * ncb; ++u) {
      const int64_t n = u / ncb, cb = u % ncb;
      const T* wt = wb + cb * k2 * VL;
      block_to_px(dy + (n * g.C + cb * VL) * P, P, P, dyb);
      for (int64_t p = 0; p < HW; ++p) {
        const int32_t* e = list + p * (2 * k2 + 1);
        V a{};
        for (int32_t t = 0; t < e[0]; ++t) a += vload(dyb + e[1 + 2 * t]) * vload(wt + e[2 + 2 * t]);
        vstore(dxb + p * VL, a);
      }
      px_to_block(dxb, HW, dx + (n * g.C + cb * VL) * HW, HW);
    }
  }
}

// Weight-gradient partials for small NCHW planes: piece n writes pw[n][tap][C] and pb[n][C].
template <typename T, int KH, int KW>
void dw_weight_partials_nchw_blocked(const T* dy, const T* x, T* pw, T* pb, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, k2 = kh * kw, C = g.C, ncb = C / VL;
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo;
  const Geom gs = dw_block_geom(g, VL);
  const int64_t Wp = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
  const int64_t max_rows = (g.Ho - 1) * g.sh + (kh - 1) * g.dh + 1;
#pragma omp parallel num_threads(num_threads())
  {
    T* buf = scratch<T>(kPlaneSlot, max_rows * Wp * VL);
    T* acc = scratch<T>(kAccSlot, (2 * k2 + 1) * VL);  // accumulators, then this block's partials
    T* xb = scratch<T>(kXbSlot, HW * VL);
    T* dyb = scratch<T>(kYbSlot, P * VL);
    T* tw = acc + k2 * VL;
    T* tb = tw + k2 * VL;
#pragma omp for schedule(static)
    for (int64_t u = 0; u < g.N * ncb; ++u) {
      const int64_t n = u / ncb, cb = u % ncb;
      block_to_px(x + (n * C + cb * VL) * HW, HW, HW, xb);
      block_to_px(dy + (n * C + cb * VL) * P, P, P, dyb);
      dw_wgrad_band<T, KH, KW>(xb, dyb, tw, tb, gs, 0, g.Ho, Wp, buf, reinterpret_cast<vec_t<T>*>(acc));
      for (int64_t t = 0; t < k2; ++t) std::memcpy(pw + (n * k2 + t) * C + cb * VL, tw + t * VL, VL * sizeof(T));
      std::memcpy(pb + n * C + cb * VL, tb, VL * sizeof(T));
    }
  }
}

// One dx row ih of one image by gather (any stride): dyn is the image's dy (NHWC, g.K channels),
// wt the weights as [tap][K], dxr the row (g.W pixels x g.C).
template <typename T>
void dw_bwdin_row(const T* dyn, const T* wt, T* dxr, int64_t ih, const Geom& g, int64_t* taps) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t C = g.C, K = g.K, m = K / C;
  const int64_t cv = m == 1 ? C / VL * VL : 0;
  for (int64_t iw = 0; iw < g.W; ++iw) {
    const int64_t nt = landing_taps(g, ih, iw, K, taps);  // (dy pixel offset, tap offset) pairs
    T* d = dxr + iw * C;
    for (int64_t c = 0; c < cv; c += VL) {
      V a{};
      for (int64_t t = 0; t < nt; ++t) a += vload(dyn + taps[2 * t] + c) * vload(wt + taps[2 * t + 1] + c);
      vstore(d + c, a);
    }
    for (int64_t c = cv; c < C; ++c) {
      T a = 0;
      for (int64_t q = 0; q < m; ++q)
        for (int64_t t = 0; t < nt; ++t) a += dyn[taps[2 * t] + c * m + q] * wt[taps[2 * t + 1] + c * m + q];
      d[c] = a;
    }
  }
}

// ---- 3x3, stride 2, dilation 1, multiplier 1: input gradient by register rows ---------------------
//   dx[ih][iw] = sum over taps (i, j) in order with ih + pt - i = 2*oh, iw + pl - j = 2*ow, (oh, ow)
//                inside dy, of w[i][j] * dy[oh][ow]
// A dx row takes one or two dy rows (i of the row's parity). Its columns go in pairs (e, e + 1)
// with e + pl even, e = 2*ow - pl: column e takes taps j = 0 (dy column ow) and j = 2 (ow - 1),
// column e + 1 tap j = 1 (ow). Per channel vector, NP pairs keep 2*NP accumulators, the NP + 1 dy
// vectors of each dy row and the nine weights in registers (AVX-512: 12 + 7 + 9 of 32), so no
// per-pixel tap lists (the gather below spent more on listing a pixel's taps than on its FMAs).
// Dy vectors outside the row are zeros and dx columns outside [0, W) are not stored, so the edges
// need no separate loops; each dx element sums its taps in (i, j) order, as the gather did.
// Chunks outermost and channel vectors inside, so dx is written in address order, and the same
// columns of the next dx row are prefetched into L2 (1 thread, C64 32x32 s2, N = 64: 1.4-1.47x
// the gather from DRAM; N = 4, in cache: 2.4-2.9x). AVX2's 16 registers take chunks of 3 pairs
// (6 + 4 + 3 live: the row's three weights): 6 pairs (12 + 7 + 3) spilled. Zen 3, 2 threads,
// alternating in one process: C64@32 N = 64 1.23-1.28x, C128@16 1.13x, C144@28 1.06-1.14x,
// C96@14 1.04-1.08x, N = 8 1.00-1.07x; 4 and 2 pairs measured within 0.9-1.1x of 3, no rule;
// mobilenet_small's stride-2 one-pass backward (dx by these rows) 1.04-1.08x replayed, 1.07x in the step.
inline bool dw33s2_input_shape(const Geom& g) {
  return g.kh == 3 && g.kw == 3 && g.sh == 2 && g.sw == 2 && g.dh == 1 && g.dw == 1 && g.K == g.C;
}

template <typename T>
void dw33s2_bwdin_row(const T* dyn, const T* wt, T* dxr, int64_t ih, const Geom& g, bool next) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
#if defined(__AVX2__) && !defined(__AVX512F__)
  constexpr int NPMAX = 3;
#else
  constexpr int NPMAX = 6;
#endif
  const int64_t C = g.C, cv = C / VL * VL;
  // The dy rows of this dx row: taps i = par, par + 2 (those inside dy), in order.
  const T* dr[2];
  int ti[2], nr = 0;
  for (int i = (ih + g.pt) & 1; i < 3; i += 2) {
    const int64_t oh = (ih + g.pt - i) / 2;
    if (ih + g.pt - i >= 0 && oh < g.Ho) {
      dr[nr] = dyn + oh * g.Wo * C;
      ti[nr++] = i;
    }
  }
  if (nr == 0) {
    std::fill(dxr, dxr + g.W * C, T(0));
    return;
  }
  const int64_t e0 = -(g.pl & 1);                  // the first pair's even column (e0 + pl even)
  const int64_t npairs = (g.W - e0 + 1) / 2;       // pairs covering columns [e0, W)
  const int64_t m0 = (e0 + g.pl) / 2;              // the dy column of the first pair's taps j = 0, 1
  dw_row_chunks<NPMAX>(npairs, [&](auto npc, int64_t q0) __attribute__((always_inline)) {
    if (next)  // the same columns of the next dx row, into L2 ahead of their stores
      prefetch_bytes(dxr + (g.W + std::max<int64_t>(e0 + 2 * q0, 0)) * C,
                     2 * decltype(npc)::value * C * int64_t(sizeof(T)), false);
    for (int64_t c = 0; c < cv; c += VL) {
      constexpr int NP = decltype(npc)::value;
      V ae[NP], ao[NP];
#pragma GCC unroll 8
      for (int q = 0; q < NP; ++q) ae[q] = ao[q] = V{};
      const int64_t m = m0 + q0 - 1;  // dv[u] = dy column m + u, u <= NP
      const bool inside = m >= 0 && m + NP < g.Wo;
      for (int r = 0; r < nr; ++r) {
        const T* q = dr[r] + m * C + c;
        V dv[NP + 1];
        if (inside) {
#pragma GCC unroll 8
          for (int u = 0; u <= NP; ++u) dv[u] = vload(q + u * C);
        } else {
#pragma GCC unroll 8
          for (int u = 0; u <= NP; ++u) dv[u] = m + u >= 0 && m + u < g.Wo ? vload(q + u * C) : V{};
        }
        const T* wr = wt + ti[r] * 3 * C + c;
        const V w3[3] = {vload(wr), vload(wr + C), vload(wr + 2 * C)};
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) {
          ae[p] += dv[p + 1] * w3[0];
          ae[p] += dv[p] * w3[2];
          ao[p] += dv[p + 1] * w3[1];
        }
      }
      const int64_t e = e0 + 2 * q0;
      T* d = dxr + e * C + c;
      if (e >= 0 && e + 2 * NP <= g.W) {
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) {
          vstore(d + 2 * p * C, ae[p]);
          vstore(d + (2 * p + 1) * C, ao[p]);
        }
      } else {
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) {
          if (e + 2 * p >= 0 && e + 2 * p < g.W) vstore(d + 2 * p * C, ae[p]);
          if (e + 2 * p + 1 >= 0 && e + 2 * p + 1 < g.W) vstore(d + (2 * p + 1) * C, ao[p]);
        }
      }
    }
  });
  for (int64_t c = cv; c < C; ++c)
    for (int64_t iw = 0; iw < g.W; ++iw) {
      T a = 0;
      for (int r = 0; r < nr; ++r)
        for (int j = (iw + g.pl) & 1; j < 3; j += 2) {
          const int64_t ow = (iw + g.pl - j) / 2;
          if (iw + g.pl - j >= 0 && ow < g.Wo) a += dr[r][ow * C + c] * wt[(ti[r] * 3 + j) * C + c];
        }
      dxr[iw * C + c] = a;
    }
}

// Input gradient by gather (any stride; used at stride > 1), or by the register rows above.
template <typename T>
void dw_backward_input_nhwc(const T* dy, const T* w, T* dx, const Geom& g) {
  const int64_t k2 = g.kh * g.kw;
  const T* wt = dw_weights_tk(w, g);
  if (dw33s2_input_shape(g)) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t u = 0; u < g.N * g.H; ++u) {
      const int64_t n = u / g.H, ih = u % g.H;
      dw33s2_bwdin_row(dy + n * g.Ho * g.Wo * g.C, wt, dx + u * g.W * g.C, ih, g, u + 1 < g.N * g.H);
    }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < g.N * g.H; ++u) {
    const int64_t n = u / g.H, ih = u % g.H;
    int64_t* taps = scratch<int64_t>(kColSlot, 2 * k2);
    dw_bwdin_row(dy + n * g.Ho * g.Wo * g.K, wt, dx + u * g.W * g.C, ih, g, taps);
  }
}

// Weight-gradient partials: piece p = (image n, band of output rows) writes pw[p][tap][K] and
// pb[p][K]; the caller sums pieces in order. With pro, the rows of x a piece reads go through the
// prologue into a per-thread image first.
template <typename T, int KH, int KW>
void dw_weight_partials_nhwc(const T* dy, const T* x, T* pw, T* pb, int64_t bands, const Geom& g,
                             const DwPro<T>* pro = nullptr) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, k2 = kh * kw, C = g.C, K = g.K, m = K / C;
  const int64_t band = ceil_div(g.Ho, bands);
  const int64_t cv = m == 1 ? K / VL * VL : 0;
  constexpr int NA = KH && KW ? KH * KW : 1;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < g.N * bands; ++u) {
    const int64_t n = u / bands, oh0 = (u % bands) * band, oh1 = std::min(g.Ho, oh0 + band);
    T* pwu = pw + u * k2 * K;
    T* pbu = pb + u * K;
    const T* xn = x + n * g.H * g.W * C;
    if (pro && oh1 > oh0) {
      T* st = scratch<T>(kXbSlot, g.H * g.W * C);
      dw_stage_rows(xn, g, oh0 * g.sh - g.pt, (oh1 - 1) * g.sh + (kh - 1) * g.dh - g.pt + 1, st, *pro);
      xn = st;
    }
    const T* dyn = dy + n * g.Ho * g.Wo * K;
    int64_t ow_lo = g.pl > 0 ? ceil_div(g.pl, g.sw) : 0;
    int64_t ow_hi = g.W - 1 - (kw - 1) * g.dw + g.pl >= 0 ? (g.W - 1 - (kw - 1) * g.dw + g.pl) / g.sw + 1 : 0;
    ow_hi = std::min(ow_hi, g.Wo);
    if (ow_lo > ow_hi) ow_lo = ow_hi;
    V* eacc = reinterpret_cast<V*>(scratch<T>(kAccSlot, 2 * k2 * VL));  // edge pixels' sums
    for (int64_t c = 0; c < cv; c += VL) {
      // Interior pixels accumulate in registers (taps unrolled when KH, KW are known), edge
      // pixels in eacc; the two are added at the end.
      V accs[NA];
      V* acc = accs;
      if (!(KH && KW)) acc = eacc + k2;
      for (int64_t t = 0; t < k2; ++t) acc[t] = eacc[t] = V{};
      V sb{};
      auto edge = [&](int64_t oh, int64_t ow, int64_t i0, int64_t i1) {
        int64_t j0, j1;
        tap_range(ow, g.sw, g.dw, g.pl, kw, g.W, j0, j1);
        const V gv = vload(dyn + (oh * g.Wo + ow) * K + c);
        sb += gv;
        const T* xr = xn + ((oh * g.sh - g.pt) * g.W + ow * g.sw - g.pl) * C + c;
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < j1; ++j) eacc[i * kw + j] += gv * vload(xr + (i * g.dh * g.W + j * g.dw) * C);
      };
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        int64_t i0, i1;
        tap_range(oh, g.sh, g.dh, g.pt, kh, g.H, i0, i1);
        if (i0 != 0 || i1 != kh) {
          for (int64_t ow = 0; ow < g.Wo; ++ow) edge(oh, ow, i0, i1);
          continue;
        }
        for (int64_t ow = 0; ow < ow_lo; ++ow) edge(oh, ow, i0, i1);
        for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
          const V gv = vload(dyn + (oh * g.Wo + ow) * K + c);
          sb += gv;
          const T* xr = xn + ((oh * g.sh - g.pt) * g.W + ow * g.sw - g.pl) * C + c;
          for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) acc[i * kw + j] += gv * vload(xr + (i * g.dh * g.W + j * g.dw) * C);
        }
        for (int64_t ow = ow_hi; ow < g.Wo; ++ow) edge(oh, ow, i0, i1);
      }
      for (int64_t t = 0; t < k2; ++t) vstore(pwu + t * K + c, acc[t] + eacc[t]);
      vstore(pbu + c, sb);
    }
    for (int64_t k = cv; k < K; ++k) {
      const int64_t ci = k / m;
      T sb = 0;
      for (int64_t t = 0; t < k2; ++t) pwu[t * K + k] = 0;
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        int64_t i0, i1;
        tap_range(oh, g.sh, g.dh, g.pt, kh, g.H, i0, i1);
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          int64_t j0, j1;
          tap_range(ow, g.sw, g.dw, g.pl, kw, g.W, j0, j1);
          const T gv = dyn[(oh * g.Wo + ow) * K + k];
          sb += gv;
          for (int64_t i = i0; i < i1; ++i)
            for (int64_t j = j0; j < j1; ++j)
              pwu[(i * kw + j) * K + k] +=
                  gv * xn[((oh * g.sh + i * g.dh - g.pt) * g.W + ow * g.sw + j * g.dw - g.pl) * C + ci];
        }
      }
      pbu[k] = sb;
    }
  }
}

// ---- 3x3, stride 1, multiplier 1, small planes: rows of registers ------------------------------
// Output rows go in chunks of NP <= 8 pixels of one channel vector; a chunk's accumulators, the
// NP + 2 input vectors of each input row it reads (zeros outside the image, loaded in place: no
// padded copy, no edge loops) and the nine weight vectors stay in registers (8 + 10 + 9 of
// AVX-512's 32), so a 7x7 plane's 49 pixels cost no per-plane setup.
//   forward      y[oh][ow] = b + sum_{i,j<3} w[i][j] * x[oh+i-pt][ow+j-pl]   (taps in order)
//   weight grad  dw[i][j] = sum_n sum_{oh,ow} dy[n][oh][ow] * x[n][oh+i-pt][ow+j-pl], db = sum dy:
//                per (image, channel vector) in T (chunks in row order), summed over the images of
//                a work item in double, then over the items' image blocks in order (the blocks
//                depend on the shape only, so the bits do not depend on the thread count).
// NHWC: forward work items (image, output row), weight-gradient items blocks of images, channel
// vectors innermost (address order). NCHW (the blocked entry): items (image, 16-channel block) and
// (image block, 16-channel block), the planes transposed in cache into a pixel-major block.
inline bool dw3_shape(const Geom& g) {
  return g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && g.K == g.C && g.G == g.C &&
         g.C % 16 == 0 && g.Ho * g.Wo <= kDw3MaxPlane && g.H * g.W <= kDw3MaxPlane;
}
inline bool dw3_small_plane(const Geom& g) { return g.Ho * g.Wo <= kDw3SmallPlane && g.H * g.W <= kDw3SmallPlane; }
// Measured against the band kernels (one thread, N = 32, C = 384 at 14x14 and C = 960 at 7x7,
// cnnkit's old and new kernels interleaved in one process on a loaded machine): forward (and the
// stride-1 input gradient) NHWC 7x7 1.3-1.5x faster, 14x14 0.75-0.8x (then without their
// prefetches: see below); NCHW blocked 1.1-1.45x at both sizes. Weight gradient NHWC 2.2x at 7x7 and 1.45x at
// 14x14; NCHW blocked 1.25x at 7x7, 0.96x at 14x14 (kept on the band kernel).
// NHWC forward at 14x14 (and up to kDw3MaxPlane pixels) too, since the register rows prefetch their
// next rows (dw3_fwd_row_nhwc): 2 threads, N = 32, the two kernels alternating in one process
// (Sapphire Rapids class), C384@14 0.65-0.74 ms on the band kernel, 0.53-0.61 on the register rows.
inline bool dw3_forward_shape(const Geom& g) { return dw3_shape(g) && (g.nhwc || dw3_small_plane(g)); }
inline bool dw3_weight_shape(const Geom& g) { return dw3_shape(g) && (g.nhwc || dw3_small_plane(g)); }

// xv[q] = pixel c0 + q of the row (pixel stride xs) for q < NP + 2; zero outside [0, W).
// Where at most the first and the last of them lie outside (a row of 7 or 14 pixels in chunks of
// 7, padding 1: every chunk at 7x7 and 14x14), the NP inner ones load unconditionally, stepping a
// pointer, and only the two ends are chosen: the general form compiled to a compare, a branch and
// a multiply per vector, and its loads waited behind them (2 threads, N = 32, alternating in one
// process, Sapphire Rapids class: C960@7 forward 1.08x, the one-pass backward 1.11-1.20x;
// C384@14 1.08x, 1.09-1.16x).
template <typename T, int NP>
CNNKIT_HD void dw3_load_row(const T* xr, int64_t xs, int64_t c0, int64_t W, vec_t<T>* xv) {
  if (c0 >= 0 && c0 + NP + 2 <= W) {
#pragma GCC unroll 16
    for (int q = 0; q < NP + 2; ++q) xv[q] = vload(xr + (c0 + q) * xs);
  } else if (c0 >= -1 && c0 + NP + 1 <= W) {
    const T* p = xr + (c0 + 1) * xs;
    xv[0] = c0 < 0 ? vec_t<T>{} : vload(p - xs);
#pragma GCC unroll 16
    for (int q = 1; q <= NP; ++q, p += xs) xv[q] = vload(p);
    xv[NP + 1] = c0 + NP + 1 == W ? vec_t<T>{} : vload(p);
  } else {
#pragma GCC unroll 16
    for (int q = 0; q < NP + 2; ++q)
      xv[q] = c0 + q >= 0 && c0 + q < W ? vload(xr + (c0 + q) * xs) : vec_t<T>{};
  }
}

template <typename T, int NP>
CNNKIT_HD void dw3_fwd_chunk(const T* x, int64_t xs, T* y, int64_t ys, const Geom& g, const vec_t<T>* wv,
                             vec_t<T> bias, int64_t oh, int64_t ow0, const DwStat* st = nullptr) {
  using V = vec_t<T>;
  V a[NP];
#pragma GCC unroll 16
  for (int p = 0; p < NP; ++p) a[p] = bias;
#pragma GCC unroll 16
  for (int i = 0; i < 3; ++i) {
    const int64_t ih = oh + i - g.pt;
    if (ih < 0 || ih >= g.H) continue;
    V xv[NP + 2];
    dw3_load_row<T, NP>(x + ih * g.W * xs, xs, ow0 - g.pl, g.W, xv);
#pragma GCC unroll 16
    for (int j = 0; j < 3; ++j)
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p) a[p] += xv[p + j] * wv[i * 3 + j];
  }
  T* yo = y + (oh * g.Wo + ow0) * ys;
#pragma GCC unroll 16
  for (int p = 0; p < NP; ++p) vstore(yo + p * ys, a[p]);
  if constexpr (sizeof(T) == 4)
    if (st) dw_stats_regs<T, NP>(a, *st);
}

// f(u, pixel c0 + u of the row) for u < NP + 2 in order, zeros outside [0, W) (xr: pixel c0, pixels
// xs apart), in dw3_load_row's three cases (all inside, only the two ends outside, any), one vector
// live at a time: the sliding register rows below.
template <typename T, int NP, typename F>
CNNKIT_HD void dw3_slide_row(const T* xr, int64_t xs, int64_t c0, int64_t W, F&& f) {
  using V = vec_t<T>;
  if (c0 >= 0 && c0 + NP + 2 <= W) {
#pragma GCC unroll 16
    for (int u = 0; u < NP + 2; ++u) f(u, vload(xr + u * xs));
  } else if (c0 >= -1 && c0 + NP + 1 <= W) {
    f(0, c0 < 0 ? V{} : vload(xr));
#pragma GCC unroll 16
    for (int u = 1; u <= NP; ++u) f(u, vload(xr + u * xs));
    f(NP + 1, c0 + NP + 1 == W ? V{} : vload(xr + (NP + 1) * xs));
  } else {
#pragma GCC unroll 16
    for (int u = 0; u < NP + 2; ++u) f(u, c0 + u >= 0 && c0 + u < W ? vload(xr + u * xs) : V{});
  }
}

// Output rows oh .. oh + NR - 1 of one chunk at once: the NR + 2 input rows they read loaded once
// each (dw3_fwd_chunk loads each input row once per output row that reads it), each input vector
// added at once into the (at most 3 NR) sums that read it, u = p + j in increasing order and the
// rows in order, so each output still takes its taps in (i, j) order (the same bits). Live: NR NP
// sums, the nine weights and one input (31 at NR = 3, NP = 7).
template <typename T, int NR, int NP>
CNNKIT_HD void dw3_fwd_chunk_rows(const T* x, int64_t xs, T* y, int64_t ys, const Geom& g, const vec_t<T>* wv,
                                  vec_t<T> bias, int64_t oh, int64_t ow0) {
  using V = vec_t<T>;
  V a[NR][NP];
#pragma GCC unroll 4
  for (int k = 0; k < NR; ++k)
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) a[k][p] = bias;
  const int64_t c0 = ow0 - g.pl;
#pragma GCC unroll 6
  for (int r = 0; r < NR + 2; ++r) {
    const int64_t ih = oh + r - g.pt;
    if (ih < 0 || ih >= g.H) continue;
    dw3_slide_row<T, NP>(x + (ih * g.W + c0) * xs, xs, c0, g.W, [&](int u, V xv) __attribute__((always_inline)) {
#pragma GCC unroll 4
      for (int k = 0; k < NR; ++k) {
        const int i = r - k;
        if (i < 0 || i > 2) continue;
#pragma GCC unroll 3
        for (int j = 0; j < 3; ++j) {
          const int p = u - j;
          if (p < 0 || p >= NP) continue;
          a[k][p] += xv * wv[i * 3 + j];
        }
      }
    });
  }
#pragma GCC unroll 4
  for (int k = 0; k < NR; ++k) {
    T* yo = y + ((oh + k) * g.Wo + ow0) * ys;
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) vstore(yo + p * ys, a[k][p]);
  }
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// dw3_fwd_chunk for AVX2's 16 registers, as dw33_slide does for the band kernel: each input vector
// loaded once and added at once into the (at most three) outputs that read it (u = p + j in
// increasing order, so each output still takes its taps in (i, j) order, zeros outside the image
// included: the same bits), the row's three weight vectors loaded with it (w: tap t at w + t*wst).
// Live: the NP sums, three weights and one input (12 at NP = 8). dw3_fwd_chunk holds the row's NP + 2
// inputs and all nine weights besides its sums (27), which spilled sums and weights to the stack.
// Zen 3, the two alternating in one process, NHWC plain forward, 2 threads: C128@16 N = 64
// 1.16-1.32x, N = 8 1.17-1.25x, C64@16 1.34-1.38x, C256@8 1.24-1.32x, C384@14 1.04-1.23x, C960@7
// 1.01-1.15x; mobilenet_small's fused C128@16 forward (replayed) 1.13x, its one-pass backward
// (dx by these rows) 1.05x; NCHW planes (dw3_plane_fwd) 0.99-1.06x.
template <typename T, int NP>
CNNKIT_HD void dw3_fwd_chunk_slide(const T* x, int64_t xs, T* y, int64_t ys, const Geom& g, const T* w,
                                   int64_t wst, vec_t<T> bias, int64_t oh, int64_t ow0, const DwStat* st = nullptr) {
  using V = vec_t<T>;
  V a[NP];
#pragma GCC unroll 16
  for (int p = 0; p < NP; ++p) a[p] = bias;
  const int64_t c0 = ow0 - g.pl;
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i) {
    const int64_t ih = oh + i - g.pt;
    if (ih < 0 || ih >= g.H) continue;
    const V w0 = vload(w + (i * 3) * wst), w1 = vload(w + (i * 3 + 1) * wst), w2 = vload(w + (i * 3 + 2) * wst);
    dw3_slide_row<T, NP>(x + (ih * g.W + c0) * xs, xs, c0, g.W, [&](int u, V xv) __attribute__((always_inline)) {
      if (u < NP) a[u] += xv * w0;
      if (u >= 1 && u - 1 < NP) a[u - 1] += xv * w1;
      if (u >= 2) a[u - 2] += xv * w2;
    });
  }
  T* yo = y + (oh * g.Wo + ow0) * ys;
#pragma GCC unroll 16
  for (int p = 0; p < NP; ++p) vstore(yo + p * ys, a[p]);
  if constexpr (sizeof(T) == 4)
    if (st) dw_stats_regs<T, NP>(a, *st);
}
#endif

// acc[0..8] += the chunk's tap sums, acc[9] += its dy.
template <typename T, int NP>
CNNKIT_HD void dw3_wgrad_chunk(const T* x, int64_t xs, const T* dy, int64_t ys, const Geom& g, vec_t<T>* acc,
                               int64_t oh, int64_t ow0) {
  using V = vec_t<T>;
  V d[NP];
  const T* dr = dy + (oh * g.Wo + ow0) * ys;
#pragma GCC unroll 16
  for (int p = 0; p < NP; ++p) d[p] = vload(dr + p * ys);
#pragma GCC unroll 16
  for (int p = 0; p < NP; ++p) acc[9] += d[p];
#pragma GCC unroll 16
  for (int i = 0; i < 3; ++i) {
    const int64_t ih = oh + i - g.pt;
    if (ih < 0 || ih >= g.H) continue;
    V xv[NP + 2];
    dw3_load_row<T, NP>(x + ih * g.W * xs, xs, ow0 - g.pl, g.W, xv);
#pragma GCC unroll 16
    for (int j = 0; j < 3; ++j)
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p) acc[i * 3 + j] += d[p] * xv[p + j];
  }
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// dw3_wgrad_chunk for AVX2's 16 registers (as dw3_fwd_chunk_slide): acc in memory (acc[0..8] the
// taps' sums, acc[9] dy's), each input vector loaded once and added at once into the (at most three)
// taps of its row that read it: u = p + j in increasing order, so each tap still sums its pixels in
// order (zeros outside the image included: the same bits). Live: the NP dy vectors, the row's three
// tap sums and one input (12 at NP = 8); dw3_wgrad_chunk's ten sums, NP dy and NP + 2 inputs (28)
// spilled. Zen 3, alternating in one process, the NHWC weight gradient: C128@16 1.06-1.09x, C64@16
// 1.14-1.15x, C256@8 1.11-1.12x, C384@14 1.03x, C960@7 0.99-1.03x; NCHW planes 0.98-1.09x.
template <typename T, int NP>
CNNKIT_HD void dw3_wgrad_chunk_slide(const T* x, int64_t xs, const T* dy, int64_t ys, const Geom& g,
                                     vec_t<T>* acc, int64_t oh, int64_t ow0) {
  using V = vec_t<T>;
  V d[NP];
  const T* dr = dy + (oh * g.Wo + ow0) * ys;
#pragma GCC unroll 16
  for (int p = 0; p < NP; ++p) d[p] = vload(dr + p * ys);
  {
    V s = acc[9];
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) s += d[p];
    acc[9] = s;
  }
  const int64_t c0 = ow0 - g.pl;
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i) {
    const int64_t ih = oh + i - g.pt;
    if (ih < 0 || ih >= g.H) continue;
    V a0 = acc[i * 3], a1 = acc[i * 3 + 1], a2 = acc[i * 3 + 2];
    dw3_slide_row<T, NP>(x + (ih * g.W + c0) * xs, xs, c0, g.W, [&](int u, V xv) __attribute__((always_inline)) {
      if (u < NP) a0 += d[u] * xv;
      if (u >= 1 && u - 1 < NP) a1 += d[u - 1] * xv;
      if (u >= 2) a2 += d[u - 2] * xv;
    });
    acc[i * 3] = a0;
    acc[i * 3 + 1] = a1;
    acc[i * 3 + 2] = a2;
  }
}
#endif

// Calls f(std::integral_constant<int, NP>{}, oh, ow0) for the chunks of output row oh: the row
// split into ceil(Wo / MaxNP) chunks of near-equal width (MaxNP 8: 14 -> 7 + 7, not 8 + 6;
// MaxNP 7 or 8).
template <int MaxNP = 8, typename F>
CNNKIT_HD void dw3_for_row_chunks(const Geom& g, int64_t oh, F&& f) {
  static_assert(MaxNP == 7 || MaxNP == 8, "chunks of at most 7 or 8 pixels");
  const int64_t nc = ceil_div(g.Wo, int64_t(MaxNP)), base = g.Wo / nc, extra = g.Wo % nc;
  int64_t ow = 0;
  for (int64_t k = 0; k < nc; ++k) {
    const int64_t np = base + (k < extra);
    switch (np) {
      case 8:
        if constexpr (MaxNP == 8) f(std::integral_constant<int, 8>{}, oh, ow);
        break;
      case 7: f(std::integral_constant<int, 7>{}, oh, ow); break;
      case 6: f(std::integral_constant<int, 6>{}, oh, ow); break;
      case 5: f(std::integral_constant<int, 5>{}, oh, ow); break;
      case 4: f(std::integral_constant<int, 4>{}, oh, ow); break;
      case 3: f(std::integral_constant<int, 3>{}, oh, ow); break;
      case 2: f(std::integral_constant<int, 2>{}, oh, ow); break;
      default: f(std::integral_constant<int, 1>{}, oh, ow); break;
    }
    ow += np;
  }
}
template <typename F>
CNNKIT_HD void dw3_for_chunks(const Geom& g, F&& f) {
  for (int64_t oh = 0; oh < g.Ho; ++oh) dw3_for_row_chunks(g, oh, f);
}

// Output row oh of one NHWC image (xs: its input, yn: its output; wt: the weights as [tap][C], b
// the bias or null) by the register rows, channel vectors innermost. With pfx (the image's input
// in memory, which xs may be a staged copy of; null: none) and an input worth it
// (dw_prefetch_worthy), the input row the next output row adds and that output row are prefetched
// into L2, spread over the row's chunks and channel vectors (past the image's last row: the next
// image's, at the following addresses). The 7x7 and 14x14 rows waited on both: 2 threads,
// N = 32, the prefetch on and off alternating in one process (Sapphire Rapids class), C384@14
// 0.65-0.74 -> 0.53-0.61 ms, C960@7 0.36-0.38 -> 0.34-0.36 ms; most of it from the output row's
// lines, which the stores otherwise wait on. And each chunk's output lines two channel vectors
// ahead are prefetched for writing into L1: a chunk stores NP vectors C apart, each a line of its
// own, and the stores (the store buffer full, waiting on their lines) had most of the samples.
// Alternating in one process: 1 thread, N = 4 (in L2) C384@14 1.76-1.82x, C960@7 1.35-1.43x
// faster (one to four vectors ahead alike); 2 threads, N = 32, 1.08-1.12x.
template <typename T>
void dw3_fwd_row_nhwc(const T* xs, const T* wt, const T* b, T* yn, const Geom& g, int64_t oh, const T* pfx,
                      const DwStat* st = nullptr) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t C = g.C, rowlen = g.W * C, orow = g.Wo * C, sz = int64_t(sizeof(T));
  SpreadPrefetch pf;
  if (pfx && dw_prefetch_worthy<T>(g)) {
    const int64_t r = oh + 3 - g.pt;  // the input row output row oh + 1 adds (>= H: the next image's)
    pf = SpreadPrefetch(pfx + r * rowlen, r >= 0 && r < 2 * g.H ? rowlen * sz : 0, yn + (oh + 1) * orow, orow * sz,
                        ceil_div(g.Wo, int64_t(8)) * (C / VL));
  }
  dw3_for_row_chunks(g, oh, [&](auto np, int64_t oh_, int64_t ow0) __attribute__((always_inline)) {
    constexpr int NP = decltype(np)::value;
    for (int64_t c = 0; c < C; c += VL) {
      pf.step();
      const T* yo = yn + (oh_ * g.Wo + ow0) * C + c + 2 * VL;
#pragma GCC unroll 8
      for (int p = 0; p < NP; ++p) __builtin_prefetch(yo + p * C, 1, 3);
      const V bv = b ? vload(b + c) : V{};
      DwStat sc;
      if (st) sc = DwStat{st->s1 + c, st->s2 + c, st->sh + c, st->init && ow0 == 0};
#if defined(__AVX2__) && !defined(__AVX512F__)
      dw3_fwd_chunk_slide<T, NP>(xs + c, C, yn + c, C, g, wt + c, C, bv, oh_, ow0, st ? &sc : nullptr);
#else
      V wv[9];
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) wv[t] = vload(wt + t * C + c);
      dw3_fwd_chunk<T, NP>(xs + c, C, yn + c, C, g, wv, bv, oh_, ow0, st ? &sc : nullptr);
#endif
    }
  });
}

#if defined(__AVX512F__)
// AVX-512: the NHWC register rows a group of up to three output rows at a time (dw3_fwd_rows_nhwc),
// in the plain forward, the fused forward and the input gradient without a per-row epilogue.
// Each output row's chunks (dw3_fwd_row_nhwc) load the three input rows it reads, so every input
// line came from L2 three times (a row of 7 pixels at C = 960 is 27 KB; L1 holds 48 KB); three rows
// at once load five input rows for them. Ho splits into ceil(Ho / 3) groups of near-equal size
// (7 -> 3 + 2 + 2, 14 -> 3 + 3 + 3 + 3 + 2), the forward's work items (image, group). Against the
// rows one at a time (with their L2 prefetch), alternating in one process (Sapphire Rapids class,
// 2 threads, N = 32): forward C960@7 1.25x, C384@14 1.20x; the one-pass backward 1.13x, 1.11x;
// the fused forward (prologue, statistics) 1.20x, 1.25x, and C128@16 N = 64 1.14x. Two rows at a
// time: 1.15-1.22x (forward). From L3 (N = 256) 1.14x and 1.02x, from DRAM (C960@7 N = 1024) 1.13x.
// One thread in L2 (N = 4, 7 rows then as 3 + 3 + 1): 1.14x, 1.15x. The fused input gradient's
// rows (dw_fused_dx_image: an epilogue on each row while it is in L1) stay one at a time: groups
// ran level in mobilenet_small's step (1.00x), unmeasured at larger planes.
struct Dw3RowGroups {
  int64_t count, base, extra;
  explicit Dw3RowGroups(int64_t Ho)
      : count(ceil_div(Ho, int64_t(3))), base(count ? Ho / count : 0), extra(count ? Ho % count : 0) {}
  int64_t first(int64_t k) const { return k * base + std::min(k, extra); }
  int64_t size(int64_t k) const { return base + (k < extra); }
};

// Whether the row groups prefetch the input rows the next group adds and its output rows into L2
// (SpreadPrefetch, as dw3_fwd_row_nhwc does for the next row). Not on Intel, where it took back
// their gain: the forward, 2 threads, alternating in one process (Sapphire Rapids class), against
// the rows one at a time with theirs, at C960@7 / C384@14: the groups with it 1.00x / 1.00x at
// N = 32, 1.05x / 1.02x at N = 256, 0.94x from DRAM (C960@7, N = 1024); without it 1.28x / 1.28x,
// 1.14x / 1.02x, 1.13x; with only the input rows 1.20x / 1.16x and 1.11x / 0.84x, only the output
// rows 1.20x / 1.15x and 1.10x / 0.96x. On AMD, where the rows' and the band kernels' prefetches
// were measured to pay from DRAM (Zen 4, a 32 MB L3) and the groups were not measured, kept.
inline bool dw3_rows_prefetch() {
  static const bool amd = __builtin_cpu_is("amd");
  return amd;
}

// Output rows oh .. oh + NR - 1 (all < Ho) of one NHWC image (xs, wt, b, yn as dw3_fwd_row_nhwc's),
// with the bits of NR calls of dw3_fwd_row_nhwc, by dw3_fwd_chunk_rows in chunks of at most 8
// (NR <= 2) or 7 (NR = 3) pixels, channel vectors innermost; each chunk's output lines two channel
// vectors ahead prefetched for writing into L1, as there. With pfx (the image's input in memory;
// null: none) and dw3_rows_prefetch, the input rows the next group adds and its output rows
// prefetched into L2 over the chunks.
template <typename T, int NR>
void dw3_fwd_rows_nhwc(const T* xs, const T* wt, const T* b, T* yn, const Geom& g, int64_t oh, const T* pfx) {
  constexpr int VL = Vec<T>::n, MaxNP = NR == 3 ? 7 : 8;
  using V = vec_t<T>;
  const int64_t C = g.C, rowlen = g.W * C, orow = g.Wo * C, sz = int64_t(sizeof(T));
  SpreadPrefetch pf;
  if (pfx && dw_prefetch_worthy<T>(g) && dw3_rows_prefetch()) {
    const int64_t r = oh + NR + 2 - g.pt;  // the input rows the next group adds (>= H: the next image's)
    pf = SpreadPrefetch(pfx + r * rowlen, r >= 0 && r + NR <= 2 * g.H ? NR * rowlen * sz : 0,
                        yn + (oh + NR) * orow, NR * orow * sz, ceil_div(g.Wo, int64_t(MaxNP)) * (C / VL));
  }
  dw3_for_row_chunks<MaxNP>(g, oh, [&](auto np, int64_t, int64_t ow0) __attribute__((always_inline)) {
    constexpr int NP = decltype(np)::value;
    for (int64_t c = 0; c < C; c += VL) {
      pf.step();
      const T* yo = yn + (oh * g.Wo + ow0) * C + c + 2 * VL;
#pragma GCC unroll 3
      for (int k = 0; k < NR; ++k)
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p) __builtin_prefetch(yo + k * orow + p * C, 1, 3);
      const V bv = b ? vload(b + c) : V{};
      V wv[9];
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) wv[t] = vload(wt + t * C + c);
      dw3_fwd_chunk_rows<T, NR, NP>(xs + c, C, yn + c, C, g, wv, bv, oh, ow0);
    }
  });
}

// Group k of G (Dw3RowGroups of the rows from oh0: of g.Ho, or of a band's rows) of one NHWC image;
// pfx as dw3_fwd_rows_nhwc's.
template <typename T>
void dw3_fwd_group_nhwc(const T* xs, const T* wt, const T* b, T* yn, const Geom& g, const Dw3RowGroups& G,
                        int64_t k, const T* pfx, int64_t oh0 = 0) {
  const int64_t oh = oh0 + G.first(k);
  switch (G.size(k)) {
    case 3: dw3_fwd_rows_nhwc<T, 3>(xs, wt, b, yn, g, oh, pfx); break;
    case 2: dw3_fwd_rows_nhwc<T, 2>(xs, wt, b, yn, g, oh, pfx); break;
    default: dw3_fwd_rows_nhwc<T, 1>(xs, wt, b, yn, g, oh, pfx); break;
  }
}
#endif

// One plane: taps w[t * wst] (t < 9), bias vector bias.
template <typename T>
void dw3_plane_fwd(const T* x, int64_t xs, T* y, int64_t ys, const T* w, int64_t wst, vec_t<T> bias,
                   const Geom& g) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  dw3_for_chunks(g, [&](auto np, int64_t oh, int64_t ow0) __attribute__((always_inline)) {
    dw3_fwd_chunk_slide<T, decltype(np)::value>(x, xs, y, ys, g, w, wst, bias, oh, ow0);
  });
#else
  using V = vec_t<T>;
  V wv[9];
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) wv[t] = vload(w + t * wst);
  dw3_for_chunks(g, [&](auto np, int64_t oh, int64_t ow0) __attribute__((always_inline)) {
    dw3_fwd_chunk<T, decltype(np)::value>(x, xs, y, ys, g, wv, bias, oh, ow0);
  });
#endif
}

// One plane's weight-gradient sums: s[0..8] taps, s[9] bias (overwritten).
template <typename T>
void dw3_plane_wgrad(const T* x, int64_t xs, const T* dy, int64_t ys, const Geom& g, vec_t<T>* s) {
  using V = vec_t<T>;
  V acc[10];
#pragma GCC unroll 10
  for (int t = 0; t < 10; ++t) acc[t] = V{};
  dw3_for_chunks(g, [&](auto np, int64_t oh, int64_t ow0) __attribute__((always_inline)) {
#if defined(__AVX2__) && !defined(__AVX512F__)
    dw3_wgrad_chunk_slide<T, decltype(np)::value>(x, xs, dy, ys, g, acc, oh, ow0);
#else
    dw3_wgrad_chunk<T, decltype(np)::value>(x, xs, dy, ys, g, acc, oh, ow0);
#endif
  });
#pragma GCC unroll 10
  for (int t = 0; t < 10; ++t) s[t] = acc[t];
}

// acc (10 x VL doubles) += s (10 vectors of T).
template <typename T>
CNNKIT_HD void dw3_add_double(double* acc, const vec_t<T>* s) {
  constexpr int VL = Vec<T>::n;
  typedef double D __attribute__((vector_size(VL * sizeof(double))));
  for (int t = 0; t < 10; ++t) {
    D a;
    std::memcpy(&a, acc + t * VL, sizeof a);
    a += __builtin_convertvector(s[t], D);
    std::memcpy(acc + t * VL, &a, sizeof a);
  }
}

template <typename T>
void dw3_forward(const T* x, const T* w, const T* b, T* y, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t C = g.C, ncv = C / VL, HW = g.H * g.W, P = g.Ho * g.Wo;
  if (g.nhwc) {
    // Work items (image, output row; AVX-512: image, group of rows), channel vectors innermost:
    // the rows stream through the cache in address order (plane by plane, a channel vector's
    // pixels lie C apart and were fetched with no help from the prefetchers: 2.6 against 0.6 ms
    // at C = 960, 7x7).
    const T* wt = dw_weights_tk(w, g);  // [tap][C]
#if defined(__AVX512F__)
    const Dw3RowGroups G(g.Ho);
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t u = 0; u < g.N * G.count; ++u) {
      const int64_t n = u / G.count, k = u % G.count;
      const T* xn = x + n * HW * C;
      dw3_fwd_group_nhwc(xn, wt, b, y + n * P * C, g, G, k, u + 1 < g.N * G.count ? xn : nullptr);
    }
#else
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t u = 0; u < g.N * g.Ho; ++u) {
      const int64_t n = u / g.Ho, oh = u % g.Ho;
      const T* xn = x + n * HW * C;
      dw3_fwd_row_nhwc(xn, wt, b, y + n * P * C, g, oh, n + 1 < g.N || oh + 1 < g.Ho ? xn : nullptr);
    }
#endif
    return;
  }
  const T* wb = dw_block_weights(w, b, g);  // [block][tap][VL], then the bias [C]
#pragma omp parallel num_threads(num_threads())
  {
    T* xb = scratch<T>(kXbSlot, HW * VL);
    T* yb = scratch<T>(kYbSlot, P * VL);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < g.N * ncv; ++u) {
      const int64_t n = u / ncv, cb = u % ncv;
      block_to_px(x + (n * C + cb * VL) * HW, HW, HW, xb);
      dw3_plane_fwd(xb, VL, yb, VL, wb + cb * 9 * VL, VL, vload(wb + ncv * 9 * VL + cb * VL), g);
      px_to_block(yb, P, y + (n * C + cb * VL) * P, P);
    }
  }
}

// The NHWC weight gradient's blocks of images, ib images each (the last may have fewer): from the
// shape alone, so the order of the sums does not depend on the thread count.
inline int64_t dw3_weight_blocks(const Geom& g, int64_t& ib) {
  const int64_t nblk = std::min<int64_t>(g.N, 8);
  ib = ceil_div(g.N, nblk);
  return ceil_div(g.N, ib);
}

// One NHWC image's weight-gradient sums (xn, dyn: the image's x and dy) added into dacc (ncv x 10
// x VL doubles): rows outermost and channel vectors innermost with their tap sums in facc (ncv x 10
// vectors, in memory; a plane per channel vector at a time reads pixels C apart, out of the
// prefetchers' reach: 2.5 against 1.0 ms at C = 960, 7x7, one thread); pf steps once a row. Above
// 16 channel vectors, the image runs in parts of at most 16 (the parts' facc, 10 KiB, stays in L1
// with the rows streaming through: C = 960's whole facc is 38 KiB). 2 threads, N = 32, the calls
// alternating in one process (Sapphire Rapids class): C960@7 1.05-1.13x faster in 4 parts, C384@14
// 1.04-1.08x in 2; blocks of 3 to 5 vectors gained less.
template <typename T>
void dw3_wgrad_image(const T* xn, const T* dyn, vec_t<T>* facc, double* dacc, const Geom& g, SpreadPrefetch& pf) {
  using V = vec_t<T>;
  const int64_t C = g.C, ncv = C / Vec<T>::n;
  for (int64_t t = 0; t < ncv * 10; ++t) facc[t] = V{};
  const int64_t parts = ceil_div(ncv, int64_t(16));
  for (int64_t part = 0; part < parts; ++part) {
    const int64_t cb0 = ncv * part / parts, cb1 = ncv * (part + 1) / parts;
    for (int64_t oh = 0; oh < g.Ho; ++oh) {
      if (part == 0) pf.step();
      dw3_for_row_chunks(g, oh, [&](auto np, int64_t oh_, int64_t ow0) __attribute__((always_inline)) {
        for (int64_t cb = cb0; cb < cb1; ++cb) {
#if defined(__AVX2__) && !defined(__AVX512F__)
          // (the sums in facc: the chunk holds a row's three at a time)
          dw3_wgrad_chunk_slide<T, decltype(np)::value>(xn + cb * Vec<T>::n, C, dyn + cb * Vec<T>::n, C, g,
                                                        facc + cb * 10, oh_, ow0);
#else
          V acc[10];
#pragma GCC unroll 10
          for (int t = 0; t < 10; ++t) acc[t] = facc[cb * 10 + t];
          dw3_wgrad_chunk<T, decltype(np)::value>(xn + cb * Vec<T>::n, C, dyn + cb * Vec<T>::n, C, g, acc, oh_, ow0);
#pragma GCC unroll 10
          for (int t = 0; t < 10; ++t) facc[cb * 10 + t] = acc[t];
#endif
        }
      });
    }
  }
  for (int64_t cb = 0; cb < ncv; ++cb) dw3_add_double<T>(dacc + cb * 10 * Vec<T>::n, facc + cb * 10);
}

// The NHWC weight gradient's prefetch over image n's rows (dw3_wgrad_image): the next image's x
// and dy (at the following addresses) where wgrad_prefetch_next(), else none.
template <typename T>
SpreadPrefetch dw3_next_image_prefetch(const T* x, const T* dy, int64_t n, const Geom& g) {
  if (n + 1 >= g.N || !wgrad_prefetch_next()) return SpreadPrefetch{};
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo, sz = int64_t(sizeof(T));
  return SpreadPrefetch(x + (n + 1) * HW * g.C, HW * g.C * sz, dy + (n + 1) * P * g.C, P * g.C * sz, g.Ho);
}

// dw [C][9] and db [C] (either may be null) from the blocks' sums part[block][channel
// vector][10][VL], added over the blocks in order.
template <typename T>
void dw3_weight_finish(const double* part, int64_t nblk, T* dw, T* db, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  const int64_t C = g.C, ncv = C / VL;
  if (dw) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t c = 0; c < C; ++c)
      for (int t = 0; t < 9; ++t) {
        double v = 0;
        for (int64_t blk = 0; blk < nblk; ++blk) v += part[((blk * ncv + c / VL) * 10 + t) * VL + c % VL];
        dw[c * 9 + t] = T(v);
      }
  }
  if (db)
    for (int64_t c = 0; c < C; ++c) {
      double v = 0;
      for (int64_t blk = 0; blk < nblk; ++blk) v += part[((blk * ncv + c / VL) * 10 + 9) * VL + c % VL];
      db[c] = T(v);
    }
}

// The NHWC weight gradient: dw [C][9] and db [C] (either may be null) over blocks of images
// (dw3_weight_blocks) on the threads, each image's sums by dw3_wgrad_image after before(n) has run
// on the image's thread. With pro, each image goes through the prologue into a per-thread copy
// before its sums (the same sums as on the prologue's output). A before(n) that returns a pointer
// gives the image's dy there (dy unused; no next-image prefetch).
template <typename T, typename Before>
void dw3_weight_nhwc(const T* dy, const T* x, T* dw, T* db, const Geom& g, const DwPro<T>* pro, Before&& before) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t C = g.C, ncv = C / VL, HW = g.H * g.W, P = g.Ho * g.Wo;
  int64_t ib;
  const int64_t nblk = dw3_weight_blocks(g, ib);
  double* part = scratch<double>(kPartSlot, nblk * C * 10);  // [block][channel vector][10][VL]
#pragma omp parallel num_threads(num_threads())
  {
    V* facc = reinterpret_cast<V*>(scratch<T>(kAccSlot, ncv * 10 * VL));
    T* st = pro ? scratch<T>(kXbSlot, HW * C) : nullptr;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      double* dacc = part + blk * ncv * 10 * VL;
      std::fill(dacc, dacc + ncv * 10 * VL, 0.0);
      for (int64_t n = blk * ib; n < std::min(g.N, (blk + 1) * ib); ++n) {
        const T* dyn = nullptr;
        if constexpr (std::is_void_v<decltype(before(n))>)
          before(n);
        else
          dyn = before(n);
        const T* xn = x + n * HW * C;
        if (pro) {
          dw_prologue_px(xn, st, HW, C, *pro);
          xn = st;
        }
        SpreadPrefetch pf = dyn ? SpreadPrefetch{} : dw3_next_image_prefetch(x, dy, n, g);
        dw3_wgrad_image(xn, dyn ? dyn : dy + n * P * C, facc, dacc, g, pf);
      }
    }
  }
  dw3_weight_finish(part, nblk, dw, db, g);
}

// dw [C][9] and db [C] (either may be null); pro (NHWC only): as dw3_weight_nhwc.
template <typename T>
void dw3_backward_weight(const T* dy, const T* x, T* dw, T* db, const Geom& g, const DwPro<T>* pro = nullptr) {
  if (g.nhwc) return dw3_weight_nhwc(dy, x, dw, db, g, pro, [](int64_t) {});
  // NCHW: work items (image block, 16-channel block): the blocks' planes are contiguous.
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t C = g.C, ncv = C / VL, HW = g.H * g.W, P = g.Ho * g.Wo;
  const int64_t ib = ceil_div(g.N, std::min<int64_t>(g.N, ceil_div(16, ncv)));
  const int64_t nblk = ceil_div(g.N, ib);
  double* part = scratch<double>(kPartSlot, nblk * C * 10);
#pragma omp parallel num_threads(num_threads())
  {
    T* xb = scratch<T>(kXbSlot, HW * VL);
    T* dyb = scratch<T>(kYbSlot, P * VL);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < nblk * ncv; ++u) {
      const int64_t blk = u / ncv, cb = u % ncv, c = cb * VL;
      double* acc = part + (blk * ncv + cb) * 10 * VL;
      std::fill(acc, acc + 10 * VL, 0.0);
      V s[10];
      for (int64_t n = blk * ib; n < std::min(g.N, (blk + 1) * ib); ++n) {
        block_to_px(x + (n * C + c) * HW, HW, HW, xb);
        block_to_px(dy + (n * C + c) * P, P, P, dyb);
        dw3_plane_wgrad(xb, VL, dyb, VL, g, s);
        dw3_add_double<T>(acc, s);
      }
    }
  }
  dw3_weight_finish(part, nblk, dw, db, g);
}

// How an image's dx rows are computed as the adjoint's forward pass a: the register rows on the
// 3x3 planes of dw3_forward_shape (small3, as dw_forward_t), else the band kernel on padded rows in
// bands of at most about 1 MiB of them (the whole image at mobilenet_small's sizes), in order on
// the image's thread.
struct DwAdjointRows {
  bool small3;
  int64_t Wp, band, max_rows;
};
template <typename T>
DwAdjointRows dw_adjoint_rows(const Geom& a) {
  DwAdjointRows L;
  L.small3 = dw3_forward_shape(a);
  L.Wp = (a.Wo - 1) + (a.kw - 1) * a.dw + 1;
  L.band = std::clamp<int64_t>((int64_t(1) << 20) / (L.Wp * a.C * int64_t(sizeof(T))), 8, std::max<int64_t>(8, a.Ho));
  L.max_rows = (std::min(L.band, a.Ho) - 1) + (a.kh - 1) * a.dh + 1;
  return L;
}

// One image's dx (dxn) from its dy (dyn) as the adjoint's forward pass a (stride 1, multiplier 1;
// wt its weights as [tap][C]), a row at a time by the plain pass's kernels, with after(ih, row) on
// each dx row once it is written; buf and rows: the band kernel's (null on small3); next: the
// kernels prefetch past the image (the next image's rows follow in memory).
template <typename T, int KH, int KW, typename After = std::nullptr_t>
void dw_adjoint_image(const T* dyn, const T* wt, T* dxn, const Geom& a, const DwAdjointRows& L, T* buf,
                      const T** rows, After after = nullptr, bool next = false) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t C = a.K;
  if (!L.small3) {
    for (int64_t oh0 = 0; oh0 < a.Ho; oh0 += L.band) {
      const int64_t oh1 = std::min(a.Ho, oh0 + L.band);
      dw_fwd_band<T, KH, KW>(dyn, wt, nullptr, dxn, a, oh0, oh1, L.Wp, buf, rows, nullptr, after, nullptr,
                             next || oh1 < a.Ho);
    }
    return;
  }
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<After, std::nullptr_t>) {  // AVX-512: groups of rows (dw3_fwd_group_nhwc)
    const Dw3RowGroups G(a.Ho);
    for (int64_t k = 0; k < G.count; ++k)
      dw3_fwd_group_nhwc<T>(dyn, wt, nullptr, dxn, a, G, k, next || k + 1 < G.count ? dyn : nullptr);
    return;
  }
#endif
  for (int64_t oh = 0; oh < a.Ho; ++oh) {
    dw3_fwd_row_nhwc<T>(dyn, wt, nullptr, dxn, a, oh, next || oh + 1 < a.Ho ? dyn : nullptr);
    if constexpr (!std::is_same_v<After, std::nullptr_t>) after(oh, dxn + oh * a.Wo * C);
  }
}

// Image n's dx rows (dxn) from its dy (dyn) by dw_adjoint_image (a: the adjoint of g), each row
// then through the residual and the gradient epilogue of fu while it is in L1, its sums continued
// into part's unit n, the next row's epilogue operands (x, a stored mask, the residual) prefetched
// into L2; next: as dw_adjoint_image's.
template <typename T, int KH, int KW>
void dw_fused_dx_image(const T* dyn, const T* wt, T* dxn, int64_t n, const Geom& g, const Geom& a,
                       const DwAdjointRows& L, T* buf, const T** rows, const Fused& fu, const GradParts& part,
                       bool next) {
  const int64_t C = g.C, rowlen = g.W * C, img = g.H * rowlen;
  auto epilogue = [&](int64_t ih, T* row) __attribute__((always_inline)) {
    const int64_t o = n * img + ih * rowlen;
    if (ih + 1 < g.H)
      for (const T* q : {fu.gx, fu.gmask, fu.residual})
        if (q) prefetch_bytes(q + o + rowlen, rowlen * int64_t(sizeof(T)), false);
    grad_epilogue_rows(row, o, C, g.W, fu, part.s1(n), part.s2(n), ih > 0);
  };
  dw_adjoint_image<T, KH, KW>(dyn, wt, dxn, a, L, buf, rows, epilogue, next);
}

// ---- the fused input gradient at stride 1 (conv::backward_input_fused, conv2d_dw_f32_nhwc) ------
// NHWC, multiplier 1, stride 1, float32: dx = the adjoint's forward pass (wa: the adjoint's
// weights), a row at a time by the plain pass's own kernels (the band kernel, or the register rows
// on small planes). Each dx row then goes through the residual and the gradient epilogue of fu
// while it is still in L1, and the next row's epilogue operands (x, a stored mask, the residual)
// are prefetched into L2 (prefetched into L1 instead, the calls ran 0.77-0.90x).
// Work units are whole images, in row order on one thread. Each image's sums continue row by row
// (grad_epilogue_rows) into part (one unit per image), and the caller adds the images in order. So
// dx and both sums have the bits of backward_input_units: the plain kernel on units of images,
// then the epilogue image by image, which re-read the unit's dx from L2 and x from memory after
// the kernel, with nothing to overlap with. Cold replays of mobilenet_small's fused depthwise input
// gradients (2 threads, N = 64, the calls alternating in one process, loaded machine): C128 @16
// 1.17-1.26x, C32 @32 1.21-1.27x faster; in the step 1.20x and 1.21x. (At stride 2 the rows of
// dw33s2_bwdin_row with the same per-row epilogue ran 0.85-1.04x: those keep backward_input_units.)
template <typename T, int KH, int KW>
void dw_backward_input_fused_nhwc(const T* dy, const T* wa, T* dx, const Geom& g, const Fused& fu,
                                  const GradParts& part) {
  static_assert(std::is_same_v<T, float>, "the gradient epilogue is float32");
  const int64_t C = g.C, img = g.H * g.W * C, kh = KH ? KH : g.kh;
  const Geom a = adjoint(g);  // the forward pass whose output is dx
  const T* wt = dw_weights_tk(wa, a);
  const DwAdjointRows L = dw_adjoint_rows<T>(a);
  // In place (dx == dy, the same shape at stride 1): one band per image pads each dy row before
  // the dx row over it is written (row oh pads the dy rows up to oh + (kh - 1)*dh - pt, which
  // covers row oh itself since pt <= (kh - 1)*dh at stride 1 with the same size), so it reads
  // dy as given; the register rows and later bands would read overwritten rows, and take a copy
  // of the image's dy first.
  const bool stage = dx == dy && (L.small3 || L.band < a.Ho || a.pt > (kh - 1) * a.dh);
#pragma omp parallel num_threads(num_threads())
  {
    T* buf = L.small3 ? nullptr : scratch<T>(kPlaneSlot, L.max_rows * L.Wp * C);
    const T** rows = L.small3 ? nullptr : reinterpret_cast<const T**>(scratch<char>(kColSlot, sizeof(T*) * kh));
    T* copy = stage ? scratch<T>(kYbSlot, g.Ho * g.Wo * C) : nullptr;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      const T* dyn = dy + n * g.Ho * g.Wo * C;
      T* dxn = dx + n * img;
      if (stage) {
        std::copy(dyn, dyn + g.Ho * g.Wo * C, copy);
        dyn = copy;
      }
      dw_fused_dx_image<T, KH, KW>(dyn, wt, dxn, n, g, a, L, buf, rows, fu, part, n + 1 < g.N);
    }
  }
}

// ---- both gradients in one pass (conv::backward; conv2d_dw_*_nhwc at 3x3, stride 1) -------------
// dx (the adjoint's forward pass; wa its weights) and dw, db (either may be null) of the shapes of
// dw3_backward_weight's NHWC pass, over its blocks of images: per image, its dx rows by
// dw_adjoint_image, then its weight sums by dw3_wgrad_image while its dy is still in L2 (each with
// the prefetches of its own pass). The two passes one after the other read dy twice from memory
// (or L3), and between them read x and write dx: 4 tensors' traffic against 3. 2 threads, the
// calls alternating in one process (Sapphire Rapids class), against the two passes: N = 32
// C384@14 1.03-1.05x, C960@7 1.07-1.08x; N = 128 1.00-1.04x (this machine's L3 holds all of it;
// prefetching x during the dx rows lost 0.92-0.95x). The same bits as the two passes: every dx row
// is the same kernel's on the same rows, and the weight sums run the same blocks in the same order.
template <typename T>
void dw3_backward_both(const T* dy, const T* x, const T* wa, T* dx, T* dw, T* db, const Geom& g) {
  const int64_t C = g.C, HW = g.H * g.W, P = g.Ho * g.Wo;
  const Geom a = adjoint(g);
  const T* wt = dw_weights_tk(wa, a);
  const DwAdjointRows L = dw_adjoint_rows<T>(a);
  dw3_weight_nhwc<T>(dy, x, dw, db, g, nullptr, [&](int64_t n) {
    // (the band kernel's padded rows and row pointers: this thread's)
    T* buf = L.small3 ? nullptr : scratch<T>(kPlaneSlot, L.max_rows * L.Wp * C);
    const T** rows = L.small3 ? nullptr : reinterpret_cast<const T**>(scratch<char>(kColSlot, sizeof(T*) * 3));
    dw_adjoint_image<T, 3, 3>(dy + n * P * C, wt, dx + n * HW * C, a, L, buf, rows);
  });
}

// ---- the backward from a norm's apply pass in one pass (conv::backward_input_fused with dy_apply
// and the weight gradient; NHWC, multiplier 1; stride 1 with the output the input's size, or a
// stride above 1) -----------------------------------------------------------------------------------
// Three passes over memory otherwise: the norm's apply pass (g and z in, dy out), the weight
// gradient (dy and x in), the input gradient (dy and x in, dx out). Here each image goes through
// all three while it is in L2, on the thread of the weight gradient's piece that holds it: its dy
// rows by the apply pass into a copy of this thread's (bn_apply_rows: dy_apply_rows's values),
// its dx rows from that copy with the gradient epilogue, then its weight sums from the same copy:
// dw3_wgrad_image in dw3_weight_nhwc's blocks of images on its shapes, else one piece per image
// by dw_wgrad_band (dw_weight_partials_nhwc_padded's pieces where it takes whole images: N >= 8),
// into pw/pb (piece-major, summed by the caller). dx at stride 1: dw_backward_input_fused_nhwc's
// per-image work (wa: the adjoint's weights; dx may lie over the apply pass's g, whose image is
// read whole first); at a stride above 1: backward_input_units' (w: the weights; the plain
// kernel's rows of the image, then the residual and grad_epilogue_image over it). The same kernels
// on the same values in the same order: the three passes' bits. Zen 3, 2 threads, in the step (a
// timer around each call, the two forms alternating a step at a time): mobilenet_small's C128 @16
// 3.0-3.4 -> 2.4 ms (1.24-1.40x), C32 @32 2.3-2.5 -> 2.0-2.1 ms (1.07-1.16x: there the image's
// padded band, dx and x fill the L2, so the weight sums re-read part of x; with the weight sums
// before dx, level), the stride-2 C64 @32 -> @16 3.3-3.4 -> 2.5-2.6 ms (1.30x); the step 1.04x
// with all three against none.
template <typename T, int KH, int KW>
void dw_backward_onepass_nhwc(const DyApply& ap, const T* w, const T* wa, T* dx, T* dw, T* pw, T* pb, const Geom& g,
                              const Fused& fu, const GradParts& part, const DwPro<T>* pro) {
  static_assert(std::is_same_v<T, float>, "the apply pass and the gradient epilogue are float32");
  const int64_t C = g.C, P = g.Ho * g.Wo, HW = g.H * g.W, img = HW * C;
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, k2 = kh * kw;
  const bool strided = g.sh != 1 || g.sw != 1;
  const Geom a = adjoint(g);
  const T* wt = strided ? dw_weights_tk(w, g) : dw_weights_tk(wa, a);
  const DwAdjointRows L = dw_adjoint_rows<T>(a);
  // Image n's apply pass into dyb, then its dx rows from dyb with the epilogue.
  const auto image = [&](int64_t n, T* dyb) __attribute__((always_inline)) {
    ::cnnkit::CNNKIT_ISA_NS::bn_apply_rows(ap, n * P, dyb, P, C);
    T* dxn = dx + n * img;
    if (!strided) {  // each row's epilogue while it is in L1
      T* buf = L.small3 ? nullptr : scratch<T>(kPlaneSlot, L.max_rows * L.Wp * C);
      const T** rows = L.small3 ? nullptr : reinterpret_cast<const T**>(scratch<char>(kColSlot, sizeof(T*) * kh));
      dw_fused_dx_image<T, KH, KW>(dyb, wt, dxn, n, g, a, L, buf, rows, fu, part, false);
      return;
    }
    if (dw33s2_input_shape(g)) {
      for (int64_t ih = 0; ih < g.H; ++ih) dw33s2_bwdin_row(dyb, wt, dxn + ih * g.W * C, ih, g, ih + 1 < g.H);
    } else {
      int64_t* taps = scratch<int64_t>(kColSlot, 2 * k2);
      for (int64_t ih = 0; ih < g.H; ++ih) dw_bwdin_row(dyb, wt, dxn + ih * g.W * C, ih, g, taps);
    }
    if (fu.residual)
      for (int64_t i = 0; i < img; ++i) dxn[i] += fu.residual[n * img + i];
    grad_epilogue_image(dxn, fu.gx + n * img, fu.gmask ? fu.gmask + n * img : nullptr, C, HW, true, fu, part.s1(n),
                        part.s2(n));
  };
  if constexpr (KH == 3 && KW == 3) {
    if (dw3_weight_shape(g)) {
      dw3_weight_nhwc<T>(nullptr, fu.wgrad_x, dw, nullptr, g, pro, [&](int64_t n) -> const T* {
        T* dyb = scratch<T>(kYbSlot, P * C);
        image(n, dyb);
        return dyb;
      });
      return;
    }
  }
  const int64_t Wp = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
  const int64_t max_rows = (g.Ho - 1) * g.sh + (kh - 1) * g.dh + 1;
#pragma omp parallel num_threads(num_threads())
  {
    vec_t<T>* dyn_acc = reinterpret_cast<vec_t<T>*>(scratch<T>(kAccSlot, k2 * Vec<T>::n));
    T* dyb = scratch<T>(kYbSlot, P * C);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      image(n, dyb);
      T* buf = scratch<T>(kPlaneSlot, max_rows * Wp * C);  // (after the adjoint's band: the same slot)
      dw_wgrad_band<T, KH, KW>(fu.wgrad_x + n * HW * C, dyb, pw + n * k2 * C, pb + n * C, g, 0, g.Ho, Wp, buf,
                               dyn_acc, pro, false);
    }
  }
}

// Whether dw3_backward_both takes g: dw3_backward_weight's NHWC shapes, with as many blocks of
// images on every thread (its work items; the two passes split finer).
inline bool dw3_both_shape(const Geom& g) {
  int64_t ib;
  return g.nhwc && dw3_weight_shape(g) && g.N > 0 && dw3_weight_blocks(g, ib) % num_threads() == 0;
}

// ---- the fused forward pass (conv::forward_fused on the conv2d_dw_f32_nhwc entry) ---------------
//   a = prologue(x) (DwPro), y = conv(a) + b with the plain kernels' arithmetic on a (the same bits
//   as the plain pass on the materialised a), then per output channel the shifted double sums of y
//   (stats), or y += residual and then y = max(y, 0).
// Work units (image, band of output rows), from the shape alone. A unit stages the input rows it
// reads through the prologue (the band kernel into its zero-padded rows, the others into a
// per-thread image), computes its rows, and runs the epilogue on them while they are in cache.
// Statistics: per unit, sums of (y - s_u) and (y - s_u)^2 in double over its pixels in order (s_u
// the unit's first value of the channel); combined in unit order about s = y[0, 0, 0, k] (as
// conv_gemm.cpp's combine_stats), so the bits do not depend on the thread count.

// Whether the register rows (dw3_fwd_row_nhwc) take the fused statistics from their registers
// (AVX2's sliding chunks, which leave registers free: 2 threads, the fused forward with the
// after-pass and with the registers' sums alternating in one process, Zen 3: C128@16 N = 64
// 1.00-1.13x, C384@14 N = 32 1.24x, C960@7 1.06x, C256@8 and C128@7 0.96-1.00x) or from one pass
// over each unit's output after it (AVX-512 and the scalar level).
#if defined(__AVX2__) && !defined(__AVX512F__)
constexpr bool kDw3StatsInRows = true;
#else
constexpr bool kDw3StatsInRows = false;
#endif

template <typename T, int KH, int KW>
void dw_fused_forward_nhwc(const T* x, const T* w, const T* b, T* y, const Geom& g, const DwPro<T>& pro,
                           const T* res, bool post_relu, double* sum, double* sumsq) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, C = g.C, K = g.K, HW = g.H * g.W, P = g.Ho * g.Wo;
  const T* wt = dw_weights_tk(w, g);  // [tap][K]
  const bool small3 = dw3_forward_shape(g), padded = !small3 && K == C;
  const RowUnits ru(g);
  const int64_t band = ru.band, units = ru.units;
  const int64_t Wp = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
  const int64_t max_rows = (band - 1) * g.sh + (kh - 1) * g.dh + 1;
  int64_t ow_lo, ow_hi;
  dw_interior_cols(g, kw, ow_lo, ow_hi);
  const UnitStats stp = sum ? unit_stats(units, K) : UnitStats{nullptr, units, K, K};
  const DwPro<T>* pp = pro.any() ? &pro : nullptr;
#pragma omp parallel num_threads(num_threads())
  {
    T* buf = padded ? scratch<T>(kPlaneSlot, max_rows * Wp * C) : pp ? scratch<T>(kXbSlot, HW * C) : nullptr;
    const T** rows = reinterpret_cast<const T**>(scratch<char>(kColSlot, sizeof(T*) * kh));
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      int64_t n, oh0, oh1;
      ru.rows(u, n, oh0, oh1);
      const T* xn = x + n * HW * C;
      T* yn = y + n * P * K;
      double *s1 = nullptr, *s2 = nullptr, *sh = nullptr;
      if (sum) {
        s1 = stp.s1(u);
        s2 = stp.s2(u);
        sh = stp.sh(u);
      }
      auto row_stats = [&](int64_t oh, const T* yr) __attribute__((always_inline)) {
        if (sum) unit_stats_add(stp, u, yr, g.Wo, oh == oh0);  // the row while it is in cache
      };
      if (padded) {
        const DwStat st{s1, s2, sh, true};
        dw_fwd_band<T, KH, KW>(xn, wt, b, yn, g, oh0, oh1, Wp, buf, rows, pp, row_stats, sum ? &st : nullptr,
                               u + 1 < units);
      } else {
        const T* xs = xn;
        int64_t done = oh0 * g.sh - g.pt;  // rows [.., done) are staged
#if defined(__AVX512F__)
        if (small3) {  // AVX-512: the unit's rows in groups (dw3_fwd_group_nhwc)
          const Dw3RowGroups G(oh1 - oh0);
          for (int64_t k = 0; k < G.count; ++k) {
            if (pp) {  // stage the rows this group newly reads
              const int64_t need = oh0 + G.first(k) + G.size(k) + 2 - g.pt;
              if (need > done) {
                dw_stage_rows(xn, g, done, need, buf, pro);
                done = need;
              }
              xs = buf;
            }
            dw3_fwd_group_nhwc(xs, wt, b, yn, g, G, k, u + 1 < units || k + 1 < G.count ? xn : nullptr, oh0);
          }
        } else
#endif
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          if (pp) {  // stage the rows this output row newly reads
            const int64_t need = oh * g.sh + (kh - 1) * g.dh - g.pt + 1;
            if (need > done) {
              dw_stage_rows(xn, g, done, need, buf, pro);
              done = need;
            }
            xs = buf;
          }
          if (small3) {
            const DwStat rs{s1, s2, sh, oh == oh0};
            dw3_fwd_row_nhwc(xs, wt, b, yn, g, oh, u + 1 < units || oh + 1 < oh1 ? xn : nullptr,
                             sum && kDw3StatsInRows ? &rs : nullptr);
          } else {
            dw_fwd_row_nhwc<T, KH, KW>(xs, wt, b, yn + oh * g.Wo * K, g, oh, ow_lo, ow_hi);
            row_stats(oh, yn + oh * g.Wo * K);
          }
        }
      }
      T* yb = yn + oh0 * g.Wo * K;
      const int64_t np = (oh1 - oh0) * g.Wo;
      if (sum && small3 && !kDw3StatsInRows) {
        // Small planes: one pass over the unit's output (in L2) after it. (Sums taken from the
        // chunks' registers, with their per-chunk loads and stores, cost as much with AVX-512.)
        // Open: at C960@7, N = 32 the statistics still cost about as much as the convolution (1
        // thread, loaded machine: 0.74 ms against 0.50 without them).
        unit_stats_add(stp, u, yb, np, true);
      }
      if (res) {
        const T* rb = res + n * P * K + oh0 * g.Wo * K;
        for (int64_t e = 0; e < np * K; ++e) yb[e] += rb[e];
      }
      if (post_relu)
        for (int64_t e = 0; e < np * K; ++e) yb[e] = std::max(yb[e], T(0));
    }
  }
  if (!sum) return;
  unit_stats_combine(stp, [&](int64_t u) { return ru.pixels(u); }, sum, sumsq);
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
