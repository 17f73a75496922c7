// Grouped conv with few channels per group (Cg == Kg == CPG in {2, 4, 8, 16, 32}), direct, computed
// on pixel-major rows (NHWC arrays directly; NCHW rows transposed in registers as they are read and
// written). Included by conv_kernels.cpp; compiled once per ISA level.
//
// Vectors hold VL consecutive output channels. Output lane l (channel k = cv*VL + l) needs, for
// each in-group index ci, the input channel group(k)*CPG + ci of the same pixel:
//   CPG <  VL: the lane's group changes inside the vector; the operand is copy ci of the input
//              vector of the same VL channels, lane l taking lane (l/CPG)*CPG + ci (one constant
//              in-register shuffle per FMA, no extra memory traffic);
//   CPG >= VL: the whole vector is one group and the operand is a broadcast of x[group*CPG + ci]
//              (an FMA with an embedded broadcast); two channel vectors of one group share it.
// Input rows are kept zero-padded along W in a small ring cache (a row is padded once and reused
// by the kh output rows that read it), so the inner loops have no bounds checks. Broadcast blocks
// and the weight gradient skip the products of a row's first and last pixel with a tap that puts
// them in the padding (their products are 0: the sums, in the same order, keep their bits): 2 of
// 21 pixel-taps of a 7-wide 3x3 row. Intel AVX-512, N = 32, 2 threads, the two alternating in one
// process: g32 C1024@7 forward 1.07-1.09x, input gradient 1.05-1.09x, weight gradient
// 1.11-1.13x; C512@14 1.03-1.05x, 1.02x, 1.03-1.06x; C256@28 and the g8 layers of resnext_small
// 0.98-1.04x (noise).
//   forward:       y[pix][k] = b[k] + sum over taps (i, j) and ci of operand * w[k, ci, i, j]
//   input grad at stride > 1: the same gather over the padded dy rows, one column phase of dx at a
//                  time, with the taps that land on it (stride 1 is the adjoint forward);
//   weight grad:   per fixed piece of output rows, dw[k, ci, i, j] += dy[pix][k] * operand, with
//                  register accumulators per (j, ci); pieces summed in order. On small planes
//                  with large weights (grouped_weight_by_blocks()) by channel blocks instead: one
//                  block's pixels of many images in compact buffers, reductions that span
//                  images, double sums.
// Fused (float32, conv::Fused): the prologue a = max(fma(pre_scale[c], x, pre_shift[c]), 0) is
// applied to each input row as it is filled into the ring or a block buffer (the padding stays 0,
// as after the prologue), so the forward pass and the weight gradient never see x itself. The
// forward epilogue works on each output row as it is written (in cache): the statistics as shifted
// double sums per band of rows about the band's first value (bands fixed by the shape), combined
// in band order about y[0, 0, 0, k] (unit_stats.h, the bands as units); then residual and ReLU.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cnnkit/conv.h"
#include "conv_internal.h"
#include "dw_common.h"
#include "norm/bn_apply.h"
#include "scratch.h"
#include "sgemm.h"
#include "unit_stats.h"

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {

template <typename T, int CPG>
struct GroupedTraits {
  static constexpr int VL = Vec<T>::n;
  static constexpr bool permute = CPG < VL;  // else broadcast
};

// Row cache: slot s holds padded source row `tag[s]` (of image tag_n[s]).
template <typename T>
struct RowRing {
  T* buf;
  int64_t slots, pitch;  // elements per slot
  int64_t tag[64];
  int64_t tag_n[64];
  void reset() {
    for (int64_t s = 0; s < slots; ++s) tag[s] = tag_n[s] = -1;
  }
};

// The columns [lo, hi) of a row padded to `width` columns that hold data: source pixel c - left
// at column c, for the source's Wsrc pixels.
struct DataCols {
  int64_t lo, hi;
};
inline DataCols data_cols(int64_t width, int64_t left, int64_t Wsrc) {
  const int64_t lo = std::min(width, std::max<int64_t>(0, left));
  return DataCols{lo, std::max(lo, std::min(width, left + Wsrc))};
}

// Pads one source row of `C` channels: column c holds source pixel c - left (zeros outside
// [0, Wsrc)), `width` columns.
template <typename T, int CPG>
void fill_row(const T* src, int64_t Wsrc, int64_t C, int64_t left, int64_t width, T* dst) {
  const auto [lo, hi] = data_cols(width, left, Wsrc);
  std::fill(dst, dst + lo * C, T(0));
  if (hi > lo) std::memcpy(dst + lo * C, src + (lo - left) * C, (hi - lo) * C * sizeof(T));
  std::fill(dst + hi * C, dst + width * C, T(0));
}

// NCHW source: pixels [iw0, iw0 + cnt) of row r of an image's planes (plane size hw) as cnt x C
// (pitch C), by VL x VL register transposes (C is a multiple of VL here).
template <typename T>
void gather_row_nchw(const T* img, int64_t hw, int64_t r, int64_t Wsrc, int64_t C, int64_t iw0, int64_t cnt,
                     T* dst) {
  constexpr int VL = Vec<T>::n;
  const T* base = img + r * Wsrc + iw0;
  int64_t w = 0;
  for (; w + VL <= cnt; w += VL)
    for (int64_t c = 0; c < C; c += VL) transpose_block(base + c * hw + w, hw, dst + w * C + c, C);
  for (; w < cnt; ++w)
    for (int64_t c = 0; c < C; ++c) dst[w * C + c] = base[c * hw + w];
}

// The way back: Wn pixels x C (pitch C) to NCHW rows out[c*P + w].
template <typename T>
void scatter_row_nchw(const T* src, int64_t Wn, int64_t C, T* out, int64_t P) {
  constexpr int VL = Vec<T>::n;
  int64_t w = 0;
  for (; w + VL <= Wn; w += VL)
    for (int64_t c = 0; c < C; c += VL) transpose_block(src + w * C + c, C, out + c * P + w, P);
  for (; w < Wn; ++w)
    for (int64_t c = 0; c < C; ++c) out[c * P + w] = src[w * C + c];
}

// The fused prologue in place on npix pixels of cc channels (pitch cc, cc a multiple of VL): with
// sc (and sh) v = fma(sc[c], v, sh[c]) (one rounding, as everywhere the prologue is evaluated: the
// backward's ReLU mask is recomputed as fma(...) > 0), then with relu v = max(v, 0) as std::max
// (v < 0 ? 0 : v). Float32 only.
inline vec_t<float> prologue_vec(vec_t<float> v, const float* sc, const float* sh, bool relu) {
  using V = vec_t<float>;
#if defined(__AVX512F__)
  if (sc) v = (V)_mm512_fmadd_ps((__m512)vload(sc), (__m512)v, (__m512)vload(sh));
  if (relu) v = (V)_mm512_max_ps(_mm512_setzero_ps(), (__m512)v);
#elif defined(__AVX2__) && defined(__FMA__)
  if (sc) v = (V)_mm256_fmadd_ps((__m256)vload(sc), (__m256)v, (__m256)vload(sh));
  if (relu) v = (V)_mm256_max_ps(_mm256_setzero_ps(), (__m256)v);
#else
  if (sc)
    for (int l = 0; l < Vec<float>::n; ++l) v[l] = std::fma(sc[l], v[l], sh[l]);
  if (relu) v = (V)_mm_max_ps(_mm_setzero_ps(), (__m128)v);
#endif
  return v;
}
template <typename T>
void prologue_pixels(T* d, int64_t npix, int64_t cc, const float* sc, const float* sh, bool relu) {
  if constexpr (std::is_same_v<T, float>) {
    if (!sc && !relu) return;
    constexpr int VL = Vec<float>::n;
    for (int64_t p = 0; p < npix; ++p)
      for (int64_t c = 0; c < cc; c += VL)
        vstore(d + p * cc + c, prologue_vec(vload(d + p * cc + c), sc ? sc + c : nullptr, sh ? sh + c : nullptr, relu));
  }
}
// d = prologue(s) on npix pixels of cc channels (pitch cc): the copy and the prologue in one pass.
template <typename T>
void prologue_copy(T* __restrict d, const T* __restrict s, int64_t npix, int64_t cc, const float* sc,
                   const float* sh, bool relu) {
  if constexpr (std::is_same_v<T, float>) {
    constexpr int VL = Vec<float>::n;
    for (int64_t p = 0; p < npix; ++p)
      for (int64_t c = 0; c < cc; c += VL)
        vstore(d + p * cc + c, prologue_vec(vload(s + p * cc + c), sc ? sc + c : nullptr, sh ? sh + c : nullptr, relu));
  }
}
inline bool has_prologue(const Fused* fu) { return fu && (fu->pre_scale || fu->pre_relu); }

// The prologue of fu (null: none) on pixels of the channels [c0, c0 + cc).
template <typename T>
void prologue_of(const Fused* fu, T* d, int64_t npix, int64_t cc, int64_t c0) {
  if (fu && (fu->pre_scale || fu->pre_relu))
    prologue_pixels(d, npix, cc, fu->pre_scale ? fu->pre_scale + c0 : nullptr,
                    fu->pre_shift ? fu->pre_shift + c0 : nullptr, fu->pre_relu);
}

// Padded row r of an image in either layout (hw: plane size, for NCHW), through the prologue of fu
// (null: none).
template <typename T, int CPG>
void fill_row_src(const T* img, bool nchw, int64_t hw, int64_t r, int64_t Wsrc, int64_t C, int64_t left,
                  int64_t width, T* dst, const Fused* fu = nullptr) {
  const auto [lo, hi] = data_cols(width, left, Wsrc);
  if (!nchw && has_prologue(fu)) {  // (the copy through the prologue)
    std::fill(dst, dst + lo * C, T(0));
    prologue_copy(dst + lo * C, img + (r * Wsrc + lo - left) * C, hi - lo, C, fu->pre_scale, fu->pre_shift,
                  fu->pre_relu);
    std::fill(dst + hi * C, dst + width * C, T(0));
    return;
  }
  if (!nchw) {
    fill_row<T, CPG>(img + r * Wsrc * C, Wsrc, C, left, width, dst);
  } else {
    std::fill(dst, dst + lo * C, T(0));
    gather_row_nchw(img, hw, r, Wsrc, C, lo - left, hi - lo, dst + lo * C);
    std::fill(dst + hi * C, dst + width * C, T(0));
  }
  prologue_of(fu, dst + lo * C, hi - lo, C, 0);
}

// The broadcast operand (CPG >= VL) of channel vector cv, in-group index ci, at padded column
// `col` of a filled row.
template <typename T, int CPG>
CNNKIT_HD vec_t<T> operand(const T* row, int64_t col, int64_t C, int64_t cv, int ci) {
  constexpr int VL = Vec<T>::n;
  const int64_t grp = (cv * VL) / CPG;
  return vsplat<T>(row[col * C + grp * CPG + ci]);
}

// Lane l of rotation R of an input vector: lane (l / CPG) * CPG + (l % CPG + R) % CPG, the input
// channel of in-group index (l % CPG + R) % CPG of lane l's group (R = 0: the vector itself).
template <typename T, int CPG, int R, int... L>
CNNKIT_HD vec_t<T> lane_rot(vec_t<T> x, std::integer_sequence<int, L...>) {
  if constexpr (R == 0) return x;
  else return __builtin_shufflevector(x, x, ((L / CPG) * CPG + (L % CPG + R) % CPG)...);
}

// acc[p] += rot_R(xv[p]) * w[R] for every rotation R (the forward's weights are laid out by
// rotation: grouped_weights()), so one operand in CPG needs no shuffle.
template <typename T, int CPG, int NP, int... CI>
CNNKIT_HD void permute_fma(vec_t<T> (&acc)[NP], const vec_t<T> (&xv)[NP], const T* wtp,
                           std::integer_sequence<int, CI...>) {
  constexpr int VL = Vec<T>::n;
  auto one = [&](auto cic) {
    constexpr int c = decltype(cic)::value;
    const vec_t<T> wv = vload(wtp + c * VL);
    for (int p = 0; p < NP; ++p)
      acc[p] += lane_rot<T, CPG, c>(xv[p], std::make_integer_sequence<int, Vec<T>::n>{}) * wv;
  };
  (one(std::integral_constant<int, CI>{}), ...);
}

// acc[R] += g * rot_R(xv) for every rotation R (the weight gradient's inner step): lane l of acc[R]
// sums dw[l, (l % CPG + R) % CPG] (grouped_backward_weight_t maps it back).
template <typename T, int CPG, int... CI>
CNNKIT_HD void permute_fma_copies(vec_t<T>* acc, vec_t<T> g, vec_t<T> xv, std::integer_sequence<int, CI...>) {
  ((acc[CI] += g * lane_rot<T, CPG, CI>(xv, std::make_integer_sequence<int, Vec<T>::n>{})), ...);
}

// Weights as wt[tap][cv][ci][VL]: lane l of (tap, cv, ci) is w[cv*VL + l, ci', tap] (forward), or,
// for the input gradient (adjoint = true), w[group(c)*CPG + ci', c % CPG, tap] with c = cv*VL + l;
// ci' = ci for broadcast operands (CPG >= VL), the rotation (c % CPG + ci) % CPG for permuted ones.
// Laid out channel by channel, each (channel, ci) reading its k2 taps together and writing them
// into the k2 planes; channel vectors shared among the threads above 64 Ki values. (Tap-major
// order read every value k2 floats from the last and took 12% of a 1-thread g32 C1024@7 forward
// at N = 4, 3.7% at N = 32, serially before the rows ran. Intel AVX-512, N = 32, 2 threads, the
// two alternating in one process: g32 C1024@7 forward 1.055x, input gradient 1.03x; C512@14
// level.)
template <typename T, int CPG>
const T* grouped_weights(const T* w, const Geom& g, bool adjoint) {
  constexpr int VL = GroupedTraits<T, CPG>::VL;
  const int64_t k2 = g.kh * g.kw, C = g.C, ncv = C / VL, plane = ncv * CPG * VL;
  T* wt = scratch<T>(kWeightSlot, k2 * C * CPG);
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && !GroupedTraits<T, CPG>::permute) {
    // A vector's lanes are VL channels of one group: lane l reads w at base + l * stride (stride
    // CPG * k2 forward, k2 for the adjoint), one gather per (tap, channel vector, ci), stored whole
    // (the per-value loop below ran about 3 cycles a value; g32 C1024@7, N = 32, the two
    // alternating in one process: forward 1.005-1.02x, input gradient 1.03-1.05x).
    static_assert(VL == 16, "one zmm of floats per channel vector");
    const int64_t stride = adjoint ? k2 : CPG * k2;
    const __m512i lanes = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32(int(stride)));
#pragma omp parallel for num_threads(num_threads()) if (k2 * C * CPG >= (int64_t(1) << 16))
    for (int64_t cv = 0; cv < ncv; ++cv) {
      const int64_t c = cv * VL;
      for (int64_t ci = 0; ci < CPG; ++ci) {
        const T* s = w + (adjoint ? (((c / CPG) * CPG + ci) * CPG + c % CPG) * k2 : (c * CPG + ci) * k2);
        T* d = wt + (cv * CPG + ci) * VL;
        for (int64_t t = 0; t < k2; ++t) _mm512_storeu_ps(d + t * plane, _mm512_i32gather_ps(lanes, s + t, 4));
      }
    }
    return wt;
  }
#endif
#pragma omp parallel for num_threads(num_threads()) if (k2 * C * CPG >= (int64_t(1) << 16))
  for (int64_t cv = 0; cv < ncv; ++cv)
    for (int64_t l = 0; l < VL; ++l) {
      const int64_t c = cv * VL + l;
      for (int64_t ci = 0; ci < CPG; ++ci) {
        const int64_t cs = GroupedTraits<T, CPG>::permute ? (c % CPG + ci) % CPG : ci;
        const T* s = w + (adjoint ? (((c / CPG) * CPG + cs) * CPG + c % CPG) * k2 : (c * CPG + cs) * k2);
        T* d = wt + (cv * CPG + ci) * VL + l;
        for (int64_t t = 0; t < k2; ++t) d[t * plane] = s[t];
      }
    }
  return wt;
}

struct RowTap {
  const void* row;  // filled padded row
  int64_t col_off;  // column of output index 0
  int64_t tap;      // index into the weight layout
  // The row's data columns [c0, c1): an output pixel whose column falls outside reads the zero
  // padding, and a block may skip its product (the default: no such columns known).
  int64_t c0 = INT64_MIN / 4, c1 = INT64_MAX / 4;
};

// f(P0, P1) as std::integral_constant<int, 0 or 1>: whether a block of NP pixels from output
// index v (pixels step columns apart) skips its first and last pixel on tap t, where that pixel
// reads the row's zero padding.
template <int NP, typename F>
CNNKIT_HD void by_edges(const RowTap& t, int64_t v, int64_t step, F&& f) {
  const int64_t f0 = v * step + t.col_off;
  const bool s0 = f0 < t.c0, s1 = f0 + (NP - 1) * step >= t.c1;
  using Z = std::integral_constant<int, 0>;
  using O = std::integral_constant<int, 1>;
  if (!s0 && !s1)
    f(Z{}, Z{});
  else if (!s1)
    f(O{}, Z{});
  else if (!s0)
    f(Z{}, O{});
  else
    f(O{}, O{});
}

// out[v * ostride + ...] for v in [0, nv): sum over taps and ci of operand(row, v*step + col_off)
// * wt[tap]; plus bias.
// NP output pixels x NCV channel vectors (NCV = 2 only when both vectors are in one group, so a
// broadcast operand feeds two FMAs).
// pre (the row-by-row forward): the next row's lines, of which the block takes its share and
// requests it into L1 a line a step of its loop (permuted operands: at once). One burst of them
// before the row had stalled on the line fill buffers (9.7% of a 2-thread g32 C512@14 forward).
template <typename T, int CPG, int NP, int NCV>
CNNKIT_HD void grouped_block(T* out, int64_t ostride, int64_t v, int64_t step, const RowTap* taps, int ntaps,
                             const T* wt, const T* b, int64_t C, int64_t cv, RowsPrefetch* pre = nullptr) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t ncv = C / VL;
  V acc[NCV][NP];
  for (int q = 0; q < NCV; ++q) {
    const V bias = b ? vload(b + (cv + q) * VL) : V{};
    for (int p = 0; p < NP; ++p) acc[q][p] = bias;
  }
  // Operand addresses by pointer increments of one pixel (step * C): per-pixel index products
  // cost more integer work than the FMAs (and spilled the pointers).
  const int64_t ps = step * C;
  int64_t pfl = 0, it = 0;
  // (a line a step of the broadcast loop below, ntaps * CPG steps; permuted operands: at once)
  const char* pf = pre ? pre->take(GroupedTraits<T, CPG>::permute ? pre->share : int64_t(ntaps) * CPG, &pfl) : nullptr;
  if constexpr (GroupedTraits<T, CPG>::permute)
    for (int64_t l = 0; l < pfl; ++l) __builtin_prefetch(pf + 64 * l, 0, 3);
  for (int t = 0; t < ntaps; ++t) {
    const T* wtp = wt + (taps[t].tap * ncv + cv) * CPG * VL;
    const T* px = static_cast<const T*>(taps[t].row) + (v * step + taps[t].col_off) * C;
    if constexpr (GroupedTraits<T, CPG>::permute) {
      static_assert(NCV == 1, "permuted operands come one channel vector at a time");
      V xv[NP];
      const T* q = px + cv * VL;
      for (int p = 0; p < NP; ++p, q += ps) xv[p] = vload(q);
      permute_fma<T, CPG, NP>(acc[0], xv, wtp, std::make_integer_sequence<int, CPG>{});
      continue;
    }
    px += (cv * VL) / CPG * CPG;  // the group's first channel
    by_edges<NP>(taps[t], v, step, [&](auto p0c, auto p1c) {
      constexpr int P0 = decltype(p0c)::value, P1 = NP - decltype(p1c)::value;
      for (int ci = 0; ci < CPG; ++ci) {
        V wv[NCV];
        for (int q = 0; q < NCV; ++q) wv[q] = vload(wtp + (q * CPG + ci) * VL);
        const T* q = px + ci + P0 * ps;
        for (int p = P0; p < P1; ++p, q += ps) {
          const V x = vsplat<T>(*q);
          for (int u = 0; u < NCV; ++u) acc[u][p] += x * wv[u];
        }
        if (it < pfl) __builtin_prefetch(pf + 64 * it, 0, 3);
        ++it;
      }
    });
  }
  for (int q = 0; q < NCV; ++q)
    for (int p = 0; p < NP; ++p) vstore(out + (v + p) * ostride + (cv + q) * VL, acc[q][p]);
}

// grouped_block (NCV = 2) for two output rows at once, rows a and b with the same taps in the same
// order (ta[t].tap == tb[t].tap): each weight load feeds 4 * NP FMAs instead of 2 * NP (28
// accumulators at NP = 7). Every output's chain is grouped_block's: the same bits.
template <typename T, int CPG, int NP>
void grouped_block_rows2(T* outa, T* outb, int64_t ostride, int64_t v, int64_t step, const RowTap* ta,
                         const RowTap* tb, int ntaps, const T* wt, const T* b, int64_t C, int64_t cv) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t ncv = C / VL;
  V acc[2][2][NP];
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q) {
    const V bias = b ? vload(b + (cv + q) * VL) : V{};
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) acc[0][q][p] = acc[1][q][p] = bias;
  }
  const int64_t ps = step * C;
  for (int t = 0; t < ntaps; ++t) {
    const T* wtp = wt + (ta[t].tap * ncv + cv) * CPG * VL;
    const int64_t goff = (cv * VL) / CPG * CPG;
    const T* pa = static_cast<const T*>(ta[t].row) + (v * step + ta[t].col_off) * C + goff;
    const T* pb = static_cast<const T*>(tb[t].row) + (v * step + tb[t].col_off) * C + goff;
    by_edges<NP>(ta[t], v, step, [&](auto p0c, auto p1c) {  // (both rows' taps have the same columns)
      constexpr int P0 = decltype(p0c)::value, P1 = NP - decltype(p1c)::value;
      for (int ci = 0; ci < CPG; ++ci) {
        const V w0 = vload(wtp + ci * VL), w1 = vload(wtp + (CPG + ci) * VL);
        const T* qa = pa + ci + P0 * ps;
        const T* qb = pb + ci + P0 * ps;
#pragma GCC unroll 8
        for (int p = P0; p < P1; ++p, qa += ps, qb += ps) {
          const V xa = vsplat<T>(*qa), xb = vsplat<T>(*qb);
          acc[0][0][p] += xa * w0;
          acc[0][1][p] += xa * w1;
          acc[1][0][p] += xb * w0;
          acc[1][1][p] += xb * w1;
        }
      }
    });
  }
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q)
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
      vstore(outa + (v + p) * ostride + (cv + q) * VL, acc[0][q][p]);
      vstore(outb + (v + p) * ostride + (cv + q) * VL, acc[1][q][p]);
    }
}

// Whether grouped_row_range_rows2 takes rows of nv pixels (one block of at most 7 pixels a row, two
// channel vectors of one group, 32 vector registers).
template <typename T, int CPG>
constexpr bool rows2_level() {
  return !GroupedTraits<T, CPG>::permute && CPG >= 2 * Vec<T>::n && Vec<T>::n * sizeof(T) >= 64;
}
inline bool rows2_width(int64_t nv) { return nv >= 4 && nv <= 7; }

template <typename T, int CPG>
void grouped_row_range_rows2(T* outa, T* outb, int64_t ostride, int64_t nv, int64_t step, const RowTap* ta,
                             const RowTap* tb, int ntaps, const T* wt, const T* b, int64_t C, int64_t cv0,
                             int64_t cv1) {
  for (int64_t cv = cv0; cv < cv1; cv += 2) switch (nv) {
      case 7: grouped_block_rows2<T, CPG, 7>(outa, outb, ostride, 0, step, ta, tb, ntaps, wt, b, C, cv); break;
      case 6: grouped_block_rows2<T, CPG, 6>(outa, outb, ostride, 0, step, ta, tb, ntaps, wt, b, C, cv); break;
      case 5: grouped_block_rows2<T, CPG, 5>(outa, outb, ostride, 0, step, ta, tb, ntaps, wt, b, C, cv); break;
      case 4: grouped_block_rows2<T, CPG, 4>(outa, outb, ostride, 0, step, ta, tb, ntaps, wt, b, C, cv); break;
      default: break;
    }
}

template <typename T, int CPG, int NCV, int PB>
void grouped_row_tail(T* out, int64_t ostride, int64_t v, int64_t count, int64_t step, const RowTap* taps, int ntaps,
                      const T* wt, const T* b, int64_t C, int64_t cv, RowsPrefetch* pre = nullptr);

// The blocks of a row of nv pixels: whole blocks of PB pixels up to `whole`, then `mid` pixels (0:
// no such block), then the last nv - whole - mid. A short rest (at most PB / 2 pixels) is joined
// with the last whole block and the two split about evenly (7 = 4 + 3, not 6 + 1), so that no
// block runs on few accumulator chains (FMA latency bound).
struct RowSplit {
  int64_t whole, mid;
};
template <int PB>
inline RowSplit row_split(int64_t nv) {
  const int64_t rest = nv % PB;
  const int64_t whole = nv - rest - (nv > PB && rest && 2 * rest <= PB ? PB : 0);
  return RowSplit{whole, nv - whole > PB ? (nv - whole + 1) / 2 : 0};
}

template <typename T, int CPG, int NCV, int PB>
void grouped_row_blocks(T* out, int64_t ostride, int64_t nv, int64_t step, const RowTap* taps, int ntaps,
                        const T* wt, const T* b, int64_t C, int64_t cv, RowsPrefetch* pre = nullptr) {
  const RowSplit sp = row_split<PB>(nv);
  for (int64_t v = 0; v < sp.whole; v += PB)
    grouped_block<T, CPG, PB, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre);
  if (sp.mid) grouped_row_tail<T, CPG, NCV, PB>(out, ostride, sp.whole, sp.mid, step, taps, ntaps, wt, b, C, cv, pre);
  const int64_t v = sp.whole + sp.mid;
  grouped_row_tail<T, CPG, NCV, PB>(out, ostride, v, nv - v, step, taps, ntaps, wt, b, C, cv, pre);
}

// A block of `count` < PB pixels at v (one instantiation per size).
template <typename T, int CPG, int NCV, int PB>
void grouped_row_tail(T* out, int64_t ostride, int64_t v, int64_t count, int64_t step, const RowTap* taps, int ntaps,
                      const T* wt, const T* b, int64_t C, int64_t cv, RowsPrefetch* pre) {
  switch (count) {
    case 15: if constexpr (PB > 15) grouped_block<T, CPG, 15, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 14: if constexpr (PB > 14) grouped_block<T, CPG, 14, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 13: if constexpr (PB > 13) grouped_block<T, CPG, 13, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 12: if constexpr (PB > 12) grouped_block<T, CPG, 12, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 11: if constexpr (PB > 11) grouped_block<T, CPG, 11, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 10: if constexpr (PB > 10) grouped_block<T, CPG, 10, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 9: if constexpr (PB > 9) grouped_block<T, CPG, 9, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 8: if constexpr (PB > 8) grouped_block<T, CPG, 8, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 7: if constexpr (PB > 7) grouped_block<T, CPG, 7, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 6: if constexpr (PB > 6) grouped_block<T, CPG, 6, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 5: grouped_block<T, CPG, 5, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 4: grouped_block<T, CPG, 4, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 3: grouped_block<T, CPG, 3, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 2: grouped_block<T, CPG, 2, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    case 1: grouped_block<T, CPG, 1, NCV>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre); break;
    default: break;
  }
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// grouped_row_blocks' blocks for the channel vectors [cv, cv + 4) of one group (CPG >= 4 * VL) at
// AVX2: the same blocks of pixels for both pairs of vectors, except a last block of 2 or 3 pixels
// (a 7-pixel row's 4 + 3), which takes all four vectors at once: 8 or 12 FMA chains instead of 4
// or 6 a pair, which two pipes of latency 4 left a quarter idle or more. Every output's chain is
// one grouped_block call's, as there: the same bits. Zen 3, g32 C1024@7 (CPG 32), N = 32, the two
// alternating in one process: forward 1.11x, input gradient 1.08x on 2 threads, 1.07x / 1.08x on 1.
template <typename T, int CPG, int PB>
void grouped_row_blocks4(T* out, int64_t ostride, int64_t nv, int64_t step, const RowTap* taps, int ntaps,
                         const T* wt, const T* b, int64_t C, int64_t cv, RowsPrefetch* pre) {
  const RowSplit sp = row_split<PB>(nv);
  for (int64_t v = 0; v < sp.whole; v += PB)
    for (int64_t q = 0; q < 4; q += 2)
      grouped_block<T, CPG, PB, 2>(out, ostride, v, step, taps, ntaps, wt, b, C, cv + q, pre);
  if (sp.mid)
    for (int64_t q = 0; q < 4; q += 2)
      grouped_row_tail<T, CPG, 2, PB>(out, ostride, sp.whole, sp.mid, step, taps, ntaps, wt, b, C, cv + q, pre);
  const int64_t v = sp.whole + sp.mid, last = nv - v;
  if (last == 3)
    grouped_block<T, CPG, 3, 4>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre);
  else if (last == 2)
    grouped_block<T, CPG, 2, 4>(out, ostride, v, step, taps, ntaps, wt, b, C, cv, pre);
  else
    for (int64_t q = 0; q < 4; q += 2)
      grouped_row_tail<T, CPG, 2, PB>(out, ostride, v, last, step, taps, ntaps, wt, b, C, cv + q, pre);
}
#endif

// The channel vectors [cv0, cv1) of a row (cv0 and cv1 multiples of 2 where CPG >= 2 * VL).
template <typename T, int CPG>
void grouped_row_range(T* out, int64_t ostride, int64_t nv, int64_t step, const RowTap* taps, int ntaps,
                       const T* wt, const T* b, int64_t C, int64_t cv0, int64_t cv1, RowsPrefetch* pre = nullptr) {
  constexpr int VL = Vec<T>::n;
  if constexpr (CPG >= 2 * VL) {
    // 2 x PB accumulators: 6 pixels with 16 vector registers; 8 with 32 (AVX-512), so that a 7-pixel
    // row (7x7 planes) runs as one block on 14 chains instead of 4 + 3 pixels (6 to 8 chains).
    constexpr int PB = Vec<T>::n * sizeof(T) >= 64 ? 8 : 6;
#if defined(__AVX2__) && !defined(__AVX512F__)
    if constexpr (CPG >= 4 * VL) {
      for (int64_t cv = cv0; cv < cv1;) {
        if (cv % 4 == 0 && cv + 4 <= cv1) {
          grouped_row_blocks4<T, CPG, PB>(out, ostride, nv, step, taps, ntaps, wt, b, C, cv, pre);
          cv += 4;
        } else {
          grouped_row_blocks<T, CPG, 2, PB>(out, ostride, nv, step, taps, ntaps, wt, b, C, cv, pre);
          cv += 2;
        }
      }
      return;
    }
#endif
    for (int64_t cv = cv0; cv < cv1; cv += 2)
      grouped_row_blocks<T, CPG, 2, PB>(out, ostride, nv, step, taps, ntaps, wt, b, C, cv, pre);
  } else {
    // Broadcast operands with 32 vector registers: 16 pixels a block, so that a 14-wide row (g32
    // C512@14) runs as one block on 14 chains instead of 8 + 6 (forward about 1.04x, Intel).
    constexpr int PB1 = (!GroupedTraits<T, CPG>::permute && Vec<T>::n * sizeof(T) >= 64) ? 16 : 8;
    for (int64_t cv = cv0; cv < cv1; ++cv)
      grouped_row_blocks<T, CPG, 1, PB1>(out, ostride, nv, step, taps, ntaps, wt, b, C, cv, pre);
  }
}

template <typename T, int CPG>
void grouped_row(T* out, int64_t ostride, int64_t nv, int64_t step, const RowTap* taps, int ntaps, const T* wt,
                 const T* b, int64_t C, RowsPrefetch* pre = nullptr) {
  grouped_row_range<T, CPG>(out, ostride, nv, step, taps, ntaps, wt, b, C, 0, C / Vec<T>::n, pre);
}

// Fetch (fill if absent) padded source row r of image n into the ring; nullptr if r is outside
// [0, nrows).
template <typename T, int CPG>
const T* ring_row(RowRing<T>& ring, const T* src_img, int64_t n, int64_t r, int64_t nrows, int64_t Wsrc,
                  int64_t C, int64_t left, int64_t width, bool nchw, const Fused* fu = nullptr) {
  if (r < 0 || r >= nrows) return nullptr;
  const int64_t s = r % ring.slots;
  T* dst = ring.buf + s * ring.pitch;
  if (ring.tag[s] != r || ring.tag_n[s] != n) {
    fill_row_src<T, CPG>(src_img, nchw, nrows * Wsrc, r, Wsrc, C, left, width, dst, fu);
    ring.tag[s] = r;
    ring.tag_n[s] = n;
  }
  return dst;
}

// Rows of a band of for_row_bands (from the shape alone).
inline int64_t row_band(int64_t rows, int64_t per_image) {
  return std::max<int64_t>(1, std::min<int64_t>(per_image, ceil_div(rows, 16)));
}

// Runs body(ring, taps, r, bi) for rows r in [0, rows) in parallel bands bi (about 16 per call, at
// most one image of `per_image` rows each: row_band()), every band with a fresh ring of `slots`
// padded rows of `pitch` elements and room for `ntaps` taps; a band's rows run in order.
template <typename T, typename F>
void for_row_bands(int64_t rows, int64_t per_image, int64_t slots, int64_t pitch, int64_t ntaps, F&& body) {
  const int64_t band = row_band(rows, per_image);
  const int64_t nb = ceil_div(rows, band);
#pragma omp parallel num_threads(num_threads())
  {
    RowRing<T> ring;
    ring.slots = slots;
    ring.pitch = pitch;
    ring.buf = scratch<T>(kPlaneSlot, slots * pitch);
    RowTap* taps = reinterpret_cast<RowTap*>(scratch<char>(kColSlot, sizeof(RowTap) * ntaps));
#pragma omp for schedule(dynamic, 1)
    for (int64_t bi = 0; bi < nb; ++bi) {
      ring.reset();
      for (int64_t r = bi * band; r < std::min(rows, (bi + 1) * band); ++r) body(ring, taps, r, bi);
    }
  }
}

// NB double vectors of channels from k0 (NB independent pairs of chains per pixel).
template <typename T, int NB>
void row_stats_block(const T* __restrict y, int64_t np, int64_t C, int64_t k0, const double* __restrict sh,
                     double* __restrict s1, double* __restrict s2) {
  constexpr int VD = Vec<double>::n;
  using D = vec_t<double>;
  typedef T H __attribute__((vector_size(VD * sizeof(T))));  // VD values of T
  D a1[NB], a2[NB], c[NB];
  for (int b = 0; b < NB; ++b) {
    a1[b] = vload(s1 + k0 + b * VD);
    a2[b] = vload(s2 + k0 + b * VD);
    c[b] = vload(sh + k0 + b * VD);
  }
  const T* q = y + k0;
  for (int64_t p = 0; p < np; ++p, q += C)
    for (int b = 0; b < NB; ++b) {
      H h;
      std::memcpy(&h, q + b * VD, sizeof h);
      const D d = __builtin_convertvector(h, D) - c[b];
      a1[b] += d;
      a2[b] += d * d;
    }
  for (int b = 0; b < NB; ++b) {
    vstore(s1 + k0 + b * VD, a1[b]);
    vstore(s2 + k0 + b * VD, a2[b]);
  }
}

// Shifted sums of one pixel-major row (np pixels of C channels, C a multiple of the float vector
// length) about sh[k], added to s1, s2: double vectors of channels held in registers over the
// pixels, each channel's sum in pixel order.
template <typename T>
void row_stats_pm(const T* __restrict y, int64_t np, int64_t C, const double* __restrict sh, double* __restrict s1,
                  double* __restrict s2) {
  // Four double vectors of channels at once, 8 independent chains per pixel (one vector at a time
  // waited on its add and fma every pixel: g8 16->16 at 32x32, N = 64, forward with statistics
  // 0.91-0.95x the time); per channel the same additions in the same order. The rest two vectors
  // at once where it can (16 channels at AVX-512: that forward 1.05x in a warm loop, 2 threads).
  constexpr int VD = Vec<double>::n, NB = 4;
  int64_t k0 = 0;
  for (; k0 + NB * VD <= C; k0 += NB * VD) row_stats_block<T, NB>(y, np, C, k0, sh, s1, s2);
  for (; k0 + 2 * VD <= C; k0 += 2 * VD) row_stats_block<T, 2>(y, np, C, k0, sh, s1, s2);
  for (; k0 < C; k0 += VD) row_stats_block<T, 1>(y, np, C, k0, sh, s1, s2);
}

// The forward pass; with fu (float32) the fused prologue on x, and the epilogue of conv::Fused on
// y (statistics, residual, post ReLU).
template <typename T, int CPG>
void grouped_forward_direct(const T* x, const T* w, const T* b, T* y, const Geom& g, const Fused* fu = nullptr) {
  const int64_t C = g.C, kh = g.kh, kw = g.kw;
  const T* wt = grouped_weights<T, CPG>(w, g, false);
  const int64_t width = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
  const int64_t slots = (kh - 1) * g.dh + 1;
  const int64_t pitch = width * C;
  const int64_t rows = g.N * g.Ho, P = g.Ho * g.Wo;
  const int64_t band = row_band(rows, g.Ho), nb = ceil_div(rows, band);
  const bool stats = fu && fu->stats_sum, relu = fu && fu->post_relu;
  const T* res = nullptr;
  if constexpr (std::is_same_v<T, float>) res = fu ? fu->residual : nullptr;
  // Per band (the statistics' units): s1, s2 about sh, the band's first output pixel.
  const UnitStats st = stats ? unit_stats(nb, C) : UnitStats{nullptr, nb, C, C};
  // Row r's taps: its input rows, filled into the ring where absent (through the prologue).
  auto row_taps = [&](RowRing<T>& ring, RowTap* taps, int64_t r) {
    const int64_t n = r / g.Ho, oh = r % g.Ho;
    const T* xn = x + n * g.H * g.W * C;
    int nt = 0;
    for (int64_t i = 0; i < kh; ++i) {
      const T* row =
          ring_row<T, CPG>(ring, xn, n, oh * g.sh + i * g.dh - g.pt, g.H, g.W, C, g.pl, width, !g.nhwc, fu);
      if (!row) continue;
      for (int64_t j = 0; j < kw; ++j) taps[nt++] = RowTap{row, j * g.dw, i * kw + j, g.pl, g.pl + g.W};
    }
    return nt;
  };
  // The epilogue of finished row r (NHWC: yrow is y's row; NCHW: a buffer, transposed out here).
  auto row_epilogue = [&](T* yrow, int64_t r, int64_t bi) {
    if (stats) {
      if (r == bi * band) unit_stats_add(st, bi, yrow, 0, true);  // the band's shift, sums reset
      row_stats_pm(yrow, g.Wo, C, st.sh(bi), st.s1(bi), st.s2(bi));
    }
    if (g.nhwc) {
      if (res) {
        const T* rr = res + r * g.Wo * C;
        for (int64_t e = 0; e < g.Wo * C; ++e) yrow[e] += rr[e];
      }
      if (relu)
        for (int64_t e = 0; e < g.Wo * C; ++e) yrow[e] = std::max(yrow[e], T(0));
      return;
    }
    const int64_t n = r / g.Ho, oh = r % g.Ho;
    T* yo = y + n * C * P + oh * g.Wo;
    scatter_row_nchw(yrow, g.Wo, C, yo, P);
    if (res || relu)
      for (int64_t c = 0; c < C; ++c) {
        T* yc = yo + c * P;
        if (res) {
          const T* rc = res + n * C * P + c * P + oh * g.Wo;
          for (int64_t e = 0; e < g.Wo; ++e) yc[e] += rc[e];
        }
        if (relu)
          for (int64_t e = 0; e < g.Wo; ++e) yc[e] = std::max(yc[e], T(0));
      }
  };
  constexpr int VL = Vec<T>::n;
  const int64_t ncv = C / VL;
  const int64_t bslots = (band - 1) * g.sh + (kh - 1) * g.dh + 1;  // the input rows of a band
  const int64_t wbytes = C * CPG * kh * kw * int64_t(sizeof(T));  // the weights of all groups
  if (g.nhwc && g.Ho % band == 0 && band <= 64 && bslots <= 64 && wbytes > (int64_t(1) << 20)) {
    // Weights larger than L2 (1 MiB here), which a row's pass over all the channels reads from L3
    // again at every row: each band's input rows filled into the ring once, then the band's rows
    // computed a chunk of channel vectors at a time (about 288 KiB of weights: 16 vectors of
    // 32-channel groups at AVX-512, which stay in L2 over the band's rows), then the rows'
    // epilogues in order. Each output's sum runs over the same taps and in-group channels in the
    // same order as row by row: the same bits. Measured (Zen 4, NHWC g32 C1024@7, N = 32, cold, the
    // two orders alternating in one process): forward 1.07-1.19x and the input gradient (the
    // adjoint's forward) 1.05-1.20x on 2 threads, 1.08x on 1; N = 64 1.07x. Chunks of 1 group
    // were 0.97-1.0x, of 4 groups 1.0-1.02x; on g32 C512@14 (590 KiB of weights, in L2) chunks
    // were 0.92-1.0x, so it keeps the row order.
    constexpr int64_t vg = CPG >= 2 * VL ? 2 : 1;  // (grouped_row_range's step)
    const int64_t per_vec = kh * kw * CPG * VL * int64_t(sizeof(T));
    const int64_t chv = std::max<int64_t>(vg, (int64_t(288) << 10) / per_vec / vg * vg);
    const int64_t ntb = kh * kw;
    // Rows of 4 to 7 pixels whose taps are all inside the image run in pairs
    // (grouped_block_rows2): Intel AVX-512, g32 C1024@7, N = 32, the two alternating in one
    // process: forward 1.02-1.05x, input gradient 1.01-1.04x, at 1 and 2 threads.
    const bool pairs = rows2_width(g.Wo);
#pragma omp parallel num_threads(num_threads())
    {
      RowRing<T> ring;
      ring.slots = bslots;
      ring.pitch = pitch;
      ring.buf = scratch<T>(kPlaneSlot, bslots * pitch);
      RowTap* taps = reinterpret_cast<RowTap*>(scratch<char>(kColSlot, sizeof(RowTap) * ntb * band));
      int nts[64];
#pragma omp for schedule(dynamic, 1)
      for (int64_t bi = 0; bi < nb; ++bi) {
        ring.reset();
        const int64_t r0 = bi * band, r1 = std::min(rows, r0 + band);
        for (int64_t r = r0; r < r1; ++r) nts[r - r0] = row_taps(ring, taps + (r - r0) * ntb, r);
        for (int64_t cv0 = 0; cv0 < ncv; cv0 += chv)
          for (int64_t r = r0; r < r1; ++r) {
            const RowTap* ta = taps + (r - r0) * ntb;
            const int64_t cv1 = std::min(ncv, cv0 + chv);
            if constexpr (rows2_level<T, CPG>()) {
              if (pairs && r + 1 < r1 && nts[r - r0] == ntb && nts[r + 1 - r0] == ntb) {
                grouped_row_range_rows2<T, CPG>(y + r * g.Wo * C, y + (r + 1) * g.Wo * C, C, g.Wo, g.sw, ta, ta + ntb,
                                                int(ntb), wt, b, C, cv0, cv1);
                ++r;
                continue;
              }
            }
            grouped_row_range<T, CPG>(y + r * g.Wo * C, C, g.Wo, g.sw, ta, nts[r - r0], wt, b, C, cv0, cv1);
          }
        for (int64_t r = r0; r < r1; ++r) row_epilogue(y + r * g.Wo * C, r, bi);
      }
    }
  } else {
  // Work items: bands of output rows (the ring makes each input row filled about once per band).
  for_row_bands<T>(rows, g.Ho, slots, pitch, kh * kw, [&](RowRing<T>& ring, RowTap* taps, int64_t r, int64_t bi) {
    const int64_t n = r / g.Ho, oh = r % g.Ho;
    const T* xn = x + n * g.H * g.W * C;
    const int nt = row_taps(ring, taps, r);
    // Prefetch the input rows the next output row adds to the ring (NHWC rows are contiguous), so
    // that their DRAM reads overlap this row's FMAs.
    RowsPrefetch lines;
    if (g.nhwc && oh + 1 < g.Ho) {
      const int64_t last = oh * g.sh + (kh - 1) * g.dh - g.pt;
      const int64_t a0 = std::max<int64_t>(last + 1, 0), a1 = std::min(last + g.sh, g.H - 1);
      // the next output row, and (taken first: the last region added) the input rows it adds
      lines.add_bytes(y + (r + 1) * g.Wo * C, g.Wo * C * int64_t(sizeof(T)));
      if (a1 >= a0) lines.add_bytes(xn + a0 * g.W * C, (a1 - a0 + 1) * g.W * C * int64_t(sizeof(T)));
      // A share per block, each spread a line a step over the block's loop, sized so that the
      // row's first half of channel vectors takes them all (grouped_row_range steps two vectors
      // at a time where a group spans two). Against the burst, 2 threads, N = 32, alternating in
      // one process: g32 C512@14 forward 1.06-1.10x, input gradient 1.06-1.12x; g32 C256@28
      // 1.04x / 1.06x; g32 C128@56 1.03x / 1.02x; 1 thread C512@14 1.12x.
      const int64_t takers = std::max<int64_t>(1, C / Vec<T>::n / 2);
      lines.share = lines.even_share(takers);
    }
    // The row as pixels x channels: in place (NHWC), else in a buffer transposed out below.
    T* yrow = g.nhwc ? y + r * g.Wo * C : scratch<T>(kAccSlot, g.Wo * C);
    grouped_row<T, CPG>(yrow, C, g.Wo, g.sw, taps, nt, wt, b, C, lines.n ? &lines : nullptr);
    row_epilogue(yrow, r, bi);
  });
  }
  if (!stats) return;
  // Bands in order, re-centred about the first band's shift (y[0, 0, 0, k]).
  unit_stats_combine(
      st, [&](int64_t bi) { return (std::min(rows, (bi + 1) * band) - bi * band) * g.Wo; }, fu->stats_sum,
      fu->stats_sumsq);
}

// Input gradient at any stride by gather over padded dy rows (used at stride > 1). With fu (float32,
// NHWC): the fused input gradient, each finished dx row (in L1) through the residual and the
// gradient epilogue of fu, its sums per band of rows (a band's rows in order: with a band per
// image the same sums as the per-image epilogue of backward_input_units), the bands added in order
// into fu->grad_sum and fu->grad_sumxc; bands come from the shape, so the bits do not depend on the
// thread count.
// The input gradient's rows (grouped_backward_input_direct): the adjoint's weights, the padded dy
// rows' ring geometry and the row bands (row_band: at most one image each) of dx = grad(dy) for
// geometry g; row(r) computes dx row r from its image's dy (dyn), with fu's gradient epilogue
// (float32 NHWC), the band's sums in part's unit bi.
template <typename T, int CPG>
struct GroupedInputRows {
  const Geom& g;
  const Fused* fu;
  T* dx;
  const T* wt;
  int64_t C, kh, kw, sw, PADL, width, slots, pitch, rows, band, nb, rowlen;
  bool grad, stream;
  GroupedInputRows(const T* w, T* dx_, const Geom& g_, const Fused* fu_)
      : g(g_), fu(fu_), dx(dx_), wt(grouped_weights<T, CPG>(w, g_, true)), C(g_.C), kh(g_.kh), kw(g_.kw),
        sw(g_.sw) {
    PADL = ceil_div((kw - 1) * g.dw, sw) + 1;
    width = PADL + std::max(g.Wo, ceil_div(g.W + g.pl, sw) + 1) + 1;
    slots = (kh - 1) * g.dh + 1;
    pitch = width * C;
    rows = g.N * g.H;
    band = row_band(rows, g.H);
    nb = ceil_div(rows, band);
    grad = std::is_same_v<T, float> && fu && g.nhwc;
    rowlen = g.W * C;
    // With the epilogue (the training step's fused pass), each dx row is computed in a row buffer
    // (in L1) and written out by non-temporal stores, where dx's rows start on 64-byte lines. At
    // stride 2 dx is four times dy, so this pass is mostly writes: regular stores first read every
    // line they overwrite (8 MiB for g8 32->32 s2 at 32x32, N = 64), and its consumer (the block's
    // 1x1 conv1 backward, four calls later) finds it in memory either way. Measured in the step
    // (resnext_small, 2 threads, per-call medians, the two forms alternating in one process): g8
    // 32->32 s2 1.29-1.32x and g8 64->64 s2 1.22x, their consumers 0.97-0.99x, the step
    // 1.009-1.016x. (The same buffer written out by regular stores: 0.95-1.03x. Non-temporal stores
    // of the NHWC 1x1 passes' outputs, which the next call reads: those calls 0.79-0.97x.)
    stream = grad && streamable(dx, rowlen);
  }
  __attribute__((always_inline)) void row(RowRing<T>& ring, RowTap* taps, int64_t r, int64_t bi, const T* dyn,
                                          const GradParts& part) const {
    const int64_t n = r / g.H, ih = r % g.H;
    if (g.nhwc) {  // the dy row the next input rows reach first, into L1 ahead of its copy
      const int64_t nr = (ih + 1 + g.pt) / g.sh + 1;
      if (nr < g.Ho && (ih + 1 + g.pt) % g.sh == 0) {
        const char* p0 = reinterpret_cast<const char*>(dyn + nr * g.Wo * C);
        for (int64_t o = 0; o < g.Wo * C * int64_t(sizeof(T)); o += 64) __builtin_prefetch(p0 + o, 0, 3);
      }
    }
    // The next dx row (written by regular stores, which wait on reading the lines they overwrite)
    // and, with the epilogue, the next row's epilogue operands (x, the stored mask, the residual),
    // requested a share per block, a line a step of the blocks' loops (RowsPrefetch, as the
    // forward's rows), sized so that the first half of the row's blocks takes them all. They
    // replaced bursts before every row: of the next four dx rows (all four again each time: 256
    // requests a row at g8 32->32, where the burst took 29% of the call's samples, waiting on the
    // fill buffers), and of the operands. 2 threads, alternating in one process (Sapphire Rapids
    // class): the plain input gradient, g8 32->32 s2 at 32x32, N = 64, 1.36x (1 thread 1.32x; cold
    // operands 1.20x), g8 64->64 s2 at 16x16 1.38x, g32 C256@56 s2 (N = 32) 1.41x, against no
    // prefetch at all 0.97-1.43x (cold 0.97x); the operands spread in resnext_small's step (its
    // fused s2 calls, dx streamed), alternating steps: 1.04-1.07x. The same bits (prefetches only).
    RowsPrefetch lines;
    if (g.nhwc && r + 1 < rows) {
      const int64_t next = (r + 1) * rowlen, bytes = rowlen * int64_t(sizeof(T));
      if (grad)
        for (const float* q : {fu->gx, fu->gmask, fu->residual})
          if (q) lines.add_bytes(q + next, bytes);
      if (!stream) lines.add_bytes(dx + next, bytes);
    }
    if (lines.n) {
      const int64_t blocks = sw * (C / Vec<T>::n) * ceil_div(ceil_div(g.W, sw), int64_t(8));
      const int64_t takers = std::max<int64_t>(1, blocks / 2);
      lines.share = lines.even_share(takers);
    }
    // (NCHW: transposed out below; streamed: written out below)
    T* dxr = g.nhwc && !stream ? dx + r * rowlen : scratch<T>(kAccSlot, rowlen);
    for (int64_t ph = 0; ph < sw; ++ph) {
      const int64_t iw0 = ((ph - g.pl) % sw + sw) % sw;
      if (iw0 >= g.W) continue;
      const int64_t nu = ceil_div(g.W - iw0, sw);
      int nt = 0;
      for (int64_t i = 0; i < kh; ++i) {
        const int64_t rr = ih + g.pt - i * g.dh;
        if (rr < 0 || rr % g.sh) continue;
        const T* row = ring_row<T, CPG>(ring, dyn, n, rr / g.sh, g.Ho, g.Wo, C, PADL, width, !g.nhwc);
        if (!row) continue;
        for (int64_t j = 0; j < kw; ++j) {
          const int64_t cc = iw0 + g.pl - j * g.dw;
          if (((cc % sw) + sw) % sw) continue;
          const int64_t e = (cc - ((cc % sw) + sw) % sw) / sw;
          taps[nt++] = RowTap{row, e + PADL, i * kw + j, PADL, PADL + g.Wo};
        }
      }
      if (nt == 0) {
        for (int64_t v = 0; v < nu; ++v) std::fill(dxr + (iw0 + v * sw) * C, dxr + (iw0 + v * sw + 1) * C, T(0));
        continue;
      }
      grouped_row<T, CPG>(dxr + iw0 * C, sw * C, nu, 1, taps, nt, wt, nullptr, C, lines.n ? &lines : nullptr);
    }
    if constexpr (std::is_same_v<T, float>) {
      if (grad) {
        grad_epilogue_rows(dxr, r * rowlen, C, g.W, *fu, part.s1(bi), part.s2(bi), r != bi * band);
      }
    }
    if (!g.nhwc) scatter_row_nchw(dxr, g.W, C, dx + n * C * g.H * g.W + ih * g.W, g.H * g.W);
    if constexpr (std::is_same_v<T, float>) {
      if (stream) {
        stream_floats(dx + r * rowlen, dxr, rowlen);
        if (r + 1 == std::min(rows, (bi + 1) * band)) store_fence();  // the band's last row
      }
    }
  }
};

template <typename T, int CPG>
void grouped_backward_input_direct(const T* dy, const T* w, T* dx, const Geom& g, const Fused* fu = nullptr) {
  const GroupedInputRows<T, CPG> in(w, dx, g, fu);
  GradParts part(in.grad ? in.nb : 0, g.C);
  const int64_t img = g.Ho * g.Wo * g.C;
  for_row_bands<T>(in.rows, g.H, in.slots, in.pitch, g.kh * g.kw,
                   [&](RowRing<T>& ring, RowTap* taps, int64_t r, int64_t bi) {
                     in.row(ring, taps, r, bi, dy + (r / g.H) * img, part);
                   });
  if (in.grad) part.combine(*fu);
}

// The weight gradients' register block: NCV channel vectors x 3 taps x CB in-group indices, CB
// from this (permuted operands: all CPG). 24 accumulators with 32 vector registers; with 16
// (AVX2) 12, where 24 had spilled the accumulators to the stack, reloaded and stored every FMA
// (Zen 3, 2 threads, NHWC weight gradients against torch in the same process, two builds
// alternating: see BENCHMARKS.md). Each accumulator is one chain over the same pixels in the same
// order whichever block holds it: the same bits.
template <typename T, int CPG, int NCV>
constexpr int wgrad_block_indices() {
  constexpr bool wide = Vec<T>::n * sizeof(T) >= 64;
  if constexpr (GroupedTraits<T, CPG>::permute) return CPG;
  else if constexpr (NCV == 2) return wide ? 4 : 2;
  else return CPG < 8 ? CPG : (wide ? 8 : 4);
}

// The weight gradients' inner step: one pixel's dy vectors gv into the register block acc (NCV
// channel vectors x 3 taps x CB in-group indices), the input of tap j at xj[j]: broadcasts of CB
// in-group channels (CPG >= VL) or the rotations of one vector (permute_fma_copies). Each tap has
// a pointer of its own, so that its CB operands are immediate offsets from it: indexed from one
// pointer (xq[j * js + c]) GCC kept the 16 offsets of taps 1 and 2 on the stack and reloaded 7 of
// them a pixel (32 loads for 24 FMAs).
template <typename T, int CPG, int NCV, int CB, int NJ, int J0 = 0, int J1 = NJ>
CNNKIT_HD void wgrad_pixel(vec_t<T> (&acc)[NCV][3][CB], const vec_t<T> (&gv)[NCV], const T* const (&xj)[3]) {
  using V = vec_t<T>;
  for (int j = J0; j < J1; ++j) {
    if constexpr (GroupedTraits<T, CPG>::permute) {
      static_assert(NCV == 1 && CB == CPG, "one block of all in-group indices");
      permute_fma_copies<T, CPG>(acc[0][j], gv[0], vload(xj[j]), std::make_integer_sequence<int, CPG>{});
    } else {
      for (int c = 0; c < CB; ++c) {
        const V xo = vsplat<T>(xj[j][c]);
        for (int q = 0; q < NCV; ++q) acc[q][j][c] += gv[q] * xo;
      }
    }
  }
}

// The tap pointers one pixel on (xs floats); the empty asm keeps GCC from folding them back
// into one pointer and offsets.
template <typename T>
CNNKIT_HD void wgrad_advance(const T* (&xj)[3], int64_t xs) {
  xj[0] += xs;
  xj[1] += xs;
  xj[2] += xs;
#if !defined(__CUDA_ARCH__)
  __asm__("" : "+r"(xj[1]), "+r"(xj[2]));
#endif
}

// One pixel of a weight-gradient row: its dy vectors from gq, its taps [J0, J1) (wgrad_pixel).
// (A function, not a lambda over the row's state: as a lambda it kept acc in memory, and the g32
// C1024@7 weight gradient ran 2.4x slower.)
template <typename T, int CPG, int NCV, int CB, int NJ, int J0 = 0, int J1 = NJ>
__attribute__((always_inline)) CNNKIT_HD void wgrad_step(vec_t<T> (&acc)[NCV][3][CB], const T* const (&xj)[3],
                                                         const T* gq) {
  vec_t<T> gv[NCV];
  for (int q = 0; q < NCV; ++q) gv[q] = vload(gq + q * Vec<T>::n);
  wgrad_pixel<T, CPG, NCV, CB, NJ, J0, J1>(acc, gv, xj);
}

// One row of the weight gradient's pixels: Wo pixels of dy from gq (gs floats apart, NCV vectors
// each) against the taps' x from xq (tap j at xq + j*js, pixels xs apart), into acc. (Pointer
// increments, not per-pixel index products: see grouped_block; one pointer a tap: wgrad_pixel.)
// s0, s1: the first pixel's first tap and the last pixel's last tap read the zero padding, and
// their products are skipped (pad_edges()). (One variant a branch: two variants of one pixel
// behind one branch let GCC hoist their common products above it, away from their adds, which
// then lost their FMA contraction and changed the bits.)
template <typename T, int CPG, int NCV, int CB, int NJ>
CNNKIT_HD void wgrad_row(vec_t<T> (&acc)[NCV][3][CB], const T* xq, int64_t js, int64_t xs, const T* gq, int64_t gs,
                         int64_t Wo, bool s0 = false, bool s1 = false) {
  const T* xj[3] = {xq, xq + js, xq + 2 * js};
  int64_t ow = 0;
  if (s0) {
    wgrad_step<T, CPG, NCV, CB, NJ, 1, NJ>(acc, xj, gq);
    wgrad_advance(xj, xs);
    gq += gs;
    ++ow;
  }
  const int64_t end = s1 ? Wo - 1 : Wo;
  for (; ow < end; ++ow, gq += gs) {
    wgrad_step<T, CPG, NCV, CB, NJ>(acc, xj, gq);
    wgrad_advance(xj, xs);
  }
  if (ow < Wo) wgrad_step<T, CPG, NCV, CB, NJ, 0, NJ - 1>(acc, xj, gq);
}

// Whether the weight gradient's block of taps [j0, j0 + nj) of a kernel row reads the zero padding
// at its first tap for the row's first output pixel (s0) and at its last tap for the last pixel
// (s1), in rows padded to `width` columns with the data at [pl, pl + W).
struct PadEdges {
  bool s0, s1;
};
inline PadEdges pad_edges(const Geom& g, int64_t width, int64_t j0, int64_t nj) {
  const DataCols dc = data_cols(width, g.pl, g.W);
  return PadEdges{j0 * g.dw < dc.lo, (g.Wo - 1) * g.sw + (j0 + nj - 1) * g.dw >= dc.hi};
}

// f(std::integral_constant<int, NJ>{}) for a block's nj taps (1 to 3).
template <typename F>
CNNKIT_HD void by_taps(int64_t nj, F&& f) {
  if (nj == 3)
    f(std::integral_constant<int, 3>{});
  else if (nj == 2)
    f(std::integral_constant<int, 2>{});
  else
    f(std::integral_constant<int, 1>{});
}

// The weight gradient's chunks (grouped_weight_partials_direct): output rows [oh0, oh1) of one
// image (xn its input, dyc its dy rows from oh0 as pixels x C) added into acc_mem's channel
// vectors [cv0, cv1) (layout [tap][cv][ci][VL]): the chunk's input rows padded (through fu's
// prologue) into buf (rowp: the rows, null in the padding), then every register block over the
// chunk's pixels; pf steps once a block row.
template <typename T, int CPG>
struct GroupedWeightChunks {
  using Tr = GroupedTraits<T, CPG>;
  static constexpr int VL = Tr::VL;
  // Register block: NCV channel vectors (2 when both are in one group, so a broadcast operand
  // feeds two FMAs) x 3 taps x CB in-group indices.
  static constexpr int NCV = CPG >= 2 * VL ? 2 : 1;
  static constexpr int CB = wgrad_block_indices<T, CPG, NCV>();
  const Geom& g;
  const Fused* fu;
  int64_t C, kh, kw, k2, ncv, width, pitch, psize, span, R, max_in;
  GroupedWeightChunks(const Geom& g_, const Fused* fu_) : g(g_), fu(fu_) {
    C = g.C;
    kh = g.kh;
    kw = g.kw;
    k2 = kh * kw;
    ncv = C / VL;
    width = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
    pitch = width * C;
    psize = k2 * C * CPG;
    span = (kh - 1) * g.dh + 1;  // input rows of one output row
    R = std::max<int64_t>(1, std::min<int64_t>(g.Ho, ((int64_t(1) << 17) / pitch - span) / g.sh + 1));
    max_in = (R - 1) * g.sh + span;
  }
  __attribute__((always_inline)) void chunk(T* acc_mem, const T* xn, const T* dyc, int64_t oh0, int64_t oh1,
                                            int64_t cv0, int64_t cv1, T* buf, const T** rowp,
                                            SpreadPrefetch& pf) const {
    using V = vec_t<T>;
      const int64_t in0 = oh0 * g.sh - g.pt, in1 = (oh1 - 1) * g.sh + span - g.pt;
      for (int64_t ir = in0; ir < in1; ++ir) {
        if (ir < 0 || ir >= g.H) {
          rowp[ir - in0] = nullptr;
          continue;
        }
        T* dst = buf + (ir - in0) * pitch;
        fill_row_src<T, CPG>(xn, !g.nhwc, g.H * g.W, ir, g.W, C, g.pl, width, dst, fu);
        rowp[ir - in0] = dst;
      }
      for (int64_t cv = cv0; cv < cv1; cv += NCV)
        for (int ci0 = 0; ci0 < CPG; ci0 += CB)
          for (int64_t i = 0; i < kh; ++i)
            for (int64_t j0 = 0; j0 < kw; j0 += 3) {
              const int64_t nj = std::min<int64_t>(3, kw - j0);
              const PadEdges pe = pad_edges(g, width, j0, nj);
              auto at = [&](int q, int64_t j, int c) {
                return acc_mem + (((i * kw + j0 + j) * ncv + cv + q) * CPG + ci0 + c) * VL;
              };
              V acc[NCV][3][CB];
              for (int q = 0; q < NCV; ++q)
                for (int64_t j = 0; j < 3; ++j)
                  for (int c = 0; c < CB; ++c) acc[q][j][c] = j < nj ? vload(at(q, j, c)) : V{};
              for (int64_t oh = oh0; oh < oh1; ++oh) {
                pf.step();
                const T* row = rowp[oh * g.sh + i * g.dh - g.pt - in0];
                if (!row) continue;
                const T* dyr = dyc + (oh - oh0) * g.Wo * C + cv * VL;
                const int64_t xs = g.sw * C, js = g.dw * C;
                const T* xq = row + j0 * js + (Tr::permute ? cv * VL : (cv * VL) / CPG * CPG + ci0);
                by_taps(nj, [&](auto njc) {
                  wgrad_row<T, CPG, NCV, CB, decltype(njc)::value>(acc, xq, js, xs, dyr, C, g.Wo, pe.s0, pe.s1);
                });
              }
              for (int q = 0; q < NCV; ++q)
                for (int64_t j = 0; j < nj; ++j)
                  for (int c = 0; c < CB; ++c) vstore(at(q, j, c), acc[q][j][c]);
            }
  }
};

// Weight-gradient partials: piece p (a fixed range of the N*Ho output rows) accumulates into
// part[p] laid out [tap][cv][ci][VL]. The piece is walked in chunks of up to R output rows of one
// image whose filled input rows fit in about 512 KiB; within a chunk, register accumulators for
// (channel vectors) x (3 taps of a kernel row) x (in-group indices) run over the chunk's pixels.
// Each piece is further cut into `cblocks` ranges of channel vectors (disjoint outputs, same sums),
// so that tiny planes, with too few pixels for many pieces, still give the threads work.
template <typename T, int CPG>
void grouped_weight_partials_direct(const T* dy, const T* x, T* part, int64_t pieces, int64_t cblocks,
                                    const Geom& g, const Fused* fu = nullptr) {
  using WC = GroupedWeightChunks<T, CPG>;
  constexpr int64_t VL = WC::VL, NCV = WC::NCV, CB = WC::CB;
  const WC wc(g, fu);
  const int64_t C = g.C, kh = g.kh, kw = g.kw, k2 = wc.k2, ncv = wc.ncv, pitch = wc.pitch, span = wc.span;
  const int64_t R = wc.R, max_in = wc.max_in, psize = wc.psize;
  const int64_t rows = g.N * g.Ho, per = ceil_div(rows, pieces);
#pragma omp parallel num_threads(num_threads())
  {
    T* buf = scratch<T>(kPlaneSlot, max_in * pitch);
    const T** rowp = reinterpret_cast<const T**>(scratch<char>(kColSlot, sizeof(T*) * max_in));
    T* dybuf = g.nhwc ? nullptr : scratch<T>(kAccSlot, R * g.Wo * C);  // NCHW dy rows as pixels x C
    const int64_t cper = ceil_div(ncv / NCV, cblocks) * NCV;  // channel vectors of a block
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < pieces * cblocks; ++u) {
      const int64_t p = u / cblocks, cv0 = (u % cblocks) * cper, cv1 = std::min(ncv, cv0 + cper);
      if (cv0 >= cv1) continue;
      T* acc_mem = part + p * psize;
      for (int64_t t = 0; t < k2; ++t)  // layout [tap][cv][ci][VL]
        std::fill(acc_mem + (t * ncv + cv0) * CPG * VL, acc_mem + (t * ncv + cv1) * CPG * VL, T(0));
      const int64_t pr1 = std::min(rows, (p + 1) * per);
      for (int64_t r = p * per; r < pr1;) {
        const int64_t n = r / g.Ho, oh0 = r % g.Ho;
        const int64_t oh1 = std::min({g.Ho, oh0 + R, oh0 + (pr1 - r)});
        const T* xn = x + n * g.H * g.W * C;
        // dy rows oh0..oh1 as pixels x C: in place (NHWC) or transposed into dybuf (NCHW).
        const T* dyc = dy + (n * g.Ho + oh0) * g.Wo * C;
        if (!g.nhwc) {
          for (int64_t oh = oh0; oh < oh1; ++oh)
            gather_row_nchw(dy + n * C * g.Ho * g.Wo, g.Ho * g.Wo, oh, g.Wo, C, 0, g.Wo, dybuf + (oh - oh0) * g.Wo * C);
          dyc = dybuf;
        }
        // NHWC: the next chunk's input and dy rows (contiguous) prefetched over this chunk's
        // register blocks (the copy of a chunk's rows waited on DRAM for a third of the time).
        SpreadPrefetch pf;
        if (g.nhwc && r + (oh1 - oh0) < pr1) {
          const int64_t rn = r + (oh1 - oh0), nn = rn / g.Ho, q0 = rn % g.Ho;
          const int64_t q1 = std::min({g.Ho, q0 + R, q0 + (pr1 - rn)});
          const int64_t a0 = std::max<int64_t>(q0 * g.sh - g.pt, 0), a1 = std::min((q1 - 1) * g.sh + span - g.pt, g.H);
          pf = SpreadPrefetch(x + (nn * g.H + a0) * g.W * C, a1 > a0 ? (a1 - a0) * g.W * C * int64_t(sizeof(T)) : 0,
                              dy + (nn * g.Ho + q0) * g.Wo * C, (q1 - q0) * g.Wo * C * int64_t(sizeof(T)),
                              (cv1 - cv0 + NCV - 1) / NCV * ceil_div(CPG, CB) * kh * ceil_div(kw, 3) * (oh1 - oh0));
        }
        wc.chunk(acc_mem, xn, dyc, oh0, oh1, cv0, cv1, buf, rowp, pf);
        r += oh1 - oh0;
      }
    }
  }
}

// ---- the backward from a norm's apply pass in one pass (conv::backward_input_fused with dy_apply
// and the weight gradient; NHWC float32, a stride above 1, pieces of whole images) --------------
// As the depthwise one pass (dw_nhwc.h): per image, on the thread of the weight gradient's piece
// that holds it, the norm's apply pass into a per-thread copy of its dy (bn_apply_rows), its dx
// rows from that copy (GroupedInputRows::row, bands of one image: the epilogue's sums in the
// image's unit), then its weight chunks from the same copy into the piece's partials
// (GroupedWeightChunks::chunk, the chunks of grouped_weight_partials_direct's loop, in order). The
// same kernels on the same values in the same order: the three passes' bits. The caller checks
// that pieces are runs of whole images, that the bands are images (in.band == g.H) and that no
// piece is cut into blocks of channels. x, fw: the weight gradient's input and prologue.
template <typename T, int CPG>
void grouped_backward_onepass(const DyApply& ap, const T* w, const T* x, T* dx, T* part, int64_t pieces,
                              const Geom& g, const Fused& fu, const Fused& fw, const GradParts& gparts) {
  static_assert(std::is_same_v<T, float>, "the apply pass and the gradient epilogue are float32");
  const GroupedInputRows<T, CPG> in(w, dx, g, &fu);
  const GroupedWeightChunks<T, CPG> wc(g, &fw);
  const int64_t C = g.C, P = g.Ho * g.Wo, per_img = g.N / pieces, psize = wc.psize, ncv = wc.ncv;
#pragma omp parallel num_threads(num_threads())
  {
    RowRing<T> ring;
    ring.slots = in.slots;
    ring.pitch = in.pitch;
    ring.buf = scratch<T>(kPlaneSlot, in.slots * in.pitch);
    RowTap* taps = reinterpret_cast<RowTap*>(scratch<char>(kColSlot, sizeof(RowTap) * g.kh * g.kw));
    // (the chunks' rows in slots of their own: the ring's stay in use from image to image)
    T* buf = scratch<T>(kXbSlot, wc.max_in * wc.pitch);
    const T** rowp = reinterpret_cast<const T**>(scratch<char>(kPackASlot, sizeof(T*) * wc.max_in));
    T* dyb = scratch<T>(kYbSlot, P * C);
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < pieces; ++p) {
      T* acc_mem = part + p * psize;
      std::fill(acc_mem, acc_mem + psize, T(0));
      for (int64_t n = p * per_img; n < (p + 1) * per_img; ++n) {
        ::cnnkit::CNNKIT_ISA_NS::bn_apply_rows(ap, n * P, dyb, P, C);
        ring.reset();
        for (int64_t ih = 0; ih < g.H; ++ih) in.row(ring, taps, n * g.H + ih, n, dyb, gparts);
        const T* xn = x + n * g.H * g.W * C;
        for (int64_t oh0 = 0; oh0 < g.Ho; oh0 += wc.R) {
          SpreadPrefetch pf;
          wc.chunk(acc_mem, xn, dyb + oh0 * g.Wo * C, oh0, std::min(g.Ho, oh0 + wc.R), 0, ncv, buf, rowp, pf);
        }
      }
    }
  }
}

// Weight gradient by channel blocks (whole groups and whole vectors: CW = max(CPG, VL) channels).
// Unit (block range, piece): NB consecutive blocks (NB * CW values of a pixel, about 512 bytes, read
// contiguously) over the piece's output rows, which are rows of the N*Ho rows of the batch, so a
// piece spans images. The rows are walked in chunks of Rc rows (about 256 pixels, fixed by the
// shape); a chunk's input rows (zero-padded along W; rows in the padding are skipped) and dy rows
// are copied into compact per-block buffers, then every register block (NCV channel vectors x 3
// taps of a kernel row x CB in-group indices) runs one float FMA chain per accumulator over all the
// chunk's pixels, and is added to the unit's double accumulators. Chunks in order, pieces summed in
// order (in double): the bits depend on the shape only. Against grouped_weight_partials_direct
// (chunks of at most one image, float partials of the whole dw per piece, re-read every chunk):
// a block's data and sums stay in L1/L2, and on small planes (7x7) one reduction spans images.
template <typename T, int CPG>
void grouped_weight_blocks_direct(const T* dy, const T* x, T* dw, const Geom& g, const Fused* fu = nullptr) {
  using Tr = GroupedTraits<T, CPG>;
  constexpr int VL = Tr::VL;
  constexpr int CW = CPG > VL ? CPG : VL;
  constexpr int NV = CW / VL;
  constexpr int NCV = CPG >= 2 * VL ? 2 : 1;
  constexpr int CB = wgrad_block_indices<T, CPG, NCV>();
  using V = vec_t<T>;
  const int64_t C = g.C, kh = g.kh, kw = g.kw, k2 = kh * kw, nblk = C / CW;
  const int64_t width = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
  const int64_t span = (kh - 1) * g.dh + 1;
  const int64_t rows = g.N * g.Ho;
  const int64_t Rc = std::max<int64_t>(1, std::min<int64_t>(rows, ceil_div(256, g.Wo)));
  const int64_t nchunks = ceil_div(rows, Rc);
  // Blocks per unit: about 512 contiguous bytes of a pixel, but at least 8 block ranges.
  const int64_t NB = std::max<int64_t>(1, std::min<int64_t>(512 / int64_t(CW * sizeof(T)), nblk / 8));
  const int64_t nbg = ceil_div(nblk, NB);
  const int64_t pieces = std::min<int64_t>(nchunks, ceil_div(8, nbg));
  const int64_t cper = ceil_div(nchunks, pieces);
  const int64_t bsize = k2 * CW * CPG;  // one block's dw, laid out [tap][v][ci][VL]
  double* part = pieces > 1 ? scratch<double>(kPartSlot, pieces * nblk * bsize) : nullptr;
  // Input rows of a chunk: each image segment of it needs (rows - 1) * sh + span.
  const int64_t nseg = std::min<int64_t>(Rc, Rc / g.Ho + 2);
  const int64_t max_in = Rc * g.sh + nseg * span;
  const int64_t xbs = max_in * width * CW, dybs = Rc * g.Wo * CW;  // per block
  const bool nchw = !g.nhwc;
  // dw's contiguous row of channel c of block b (CPG x k2 values) from the [tap][v][ci][VL] sums
  // (no per-element divisions: they cost more than the rest of the write-out).
  auto put_row = [&](int64_t b, int64_t c, auto&& sum) {
    const int64_t v = c / VL, l = c % VL;
    T* d = dw + (b * CW + c) * CPG * k2;
    for (int64_t ci = 0; ci < CPG; ++ci)
      for (int64_t t = 0; t < k2; ++t) d[ci * k2 + t] = T(sum(((t * NV + v) * CPG + ci) * VL + l));
  };
#pragma omp parallel num_threads(num_threads())
  {
    T* xb = scratch<T>(kPlaneSlot, NB * xbs);
    T* dyb = scratch<T>(kYbSlot, NB * dybs);
    int64_t* xoff = scratch<int64_t>(kColSlot, Rc * kh);
    double* dacc = scratch<double>(kAccSlot, NB * bsize);
    T* xt = nchw ? scratch<T>(kXbSlot, max_in * g.W * CW) : nullptr;  // NCHW rows, pixel-major
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < nbg * pieces; ++u) {
      const int64_t bg = u % nbg, p = u / nbg, b0 = bg * NB, nb = std::min(NB, nblk - b0), c0 = b0 * CW;
      std::fill(dacc, dacc + nb * bsize, 0.0);
      const int64_t q1 = std::min(nchunks, (p + 1) * cper);
      for (int64_t q = p * cper; q < q1; ++q) {
        const int64_t r0 = q * Rc, r1 = std::min(rows, r0 + Rc);
        // Copy the chunk: per image segment, its input rows, then the dy rows.
        int64_t used = 0;
        for (int64_t r = r0; r < r1;) {
          const int64_t n = r / g.Ho, oh0 = r % g.Ho, oh1 = std::min(g.Ho, oh0 + (r1 - r));
          const int64_t in0 = oh0 * g.sh - g.pt, in1 = (oh1 - 1) * g.sh + span - g.pt;
          const auto [lo, hi] = data_cols(width, g.pl, g.W);
          const int64_t ir0 = std::max<int64_t>(in0, 0), ir1 = std::min(in1, g.H);
          for (int64_t ir = ir0; ir < ir1; ++ir)
            for (int64_t k = 0; k < nb; ++k) {
              T* dst = xb + k * xbs + (used + ir - in0) * width * CW;
              std::fill(dst, dst + lo * CW, T(0));
              std::fill(dst + hi * CW, dst + width * CW, T(0));
            }
          if (nchw) {
            // Rows [ir0, ir1) of a plane are contiguous: a block's CW planes are read as one
            // CW x (rows * W) matrix, transposed in registers into xt, then placed row by row.
            for (int64_t k = 0; k < nb && ir1 > ir0 && hi > lo; ++k) {
              gather_row_nchw(x + (n * C + c0 + k * CW) * g.H * g.W, g.H * g.W, ir0, g.W, int64_t(CW), 0,
                              (ir1 - ir0) * g.W, xt);
              for (int64_t ir = ir0; ir < ir1; ++ir) {
                T* dst = xb + k * xbs + (used + ir - in0) * width * CW + lo * CW;
                std::memcpy(dst, xt + ((ir - ir0) * g.W + lo - g.pl) * CW, (hi - lo) * CW * sizeof(T));
                prologue_of(fu, dst, hi - lo, CW, c0 + k * CW);
              }
            }
            for (int64_t k = 0; k < nb; ++k)
              gather_row_nchw(dy + (n * C + c0 + k * CW) * g.Ho * g.Wo, g.Ho * g.Wo, oh0, g.Wo, int64_t(CW), 0,
                              (oh1 - oh0) * g.Wo, dyb + k * dybs + (r - r0) * g.Wo * CW);
          } else {
            for (int64_t ir = ir0; ir < ir1; ++ir) {
              for (int64_t c = lo; c < hi; ++c) {
                const T* src = x + ((n * g.H + ir) * g.W + c - g.pl) * C + c0;
                T* dst = xb + (used + ir - in0) * width * CW + c * CW;
                for (int64_t k = 0; k < nb; ++k) std::memcpy(dst + k * xbs, src + k * CW, CW * sizeof(T));
              }
              for (int64_t k = 0; k < nb; ++k)
                prologue_of(fu, xb + k * xbs + (used + ir - in0) * width * CW + lo * CW, hi - lo, CW, c0 + k * CW);
            }
            for (int64_t oh = oh0; oh < oh1; ++oh)
              for (int64_t ow = 0; ow < g.Wo; ++ow) {
                const T* src = dy + ((n * g.Ho + oh) * g.Wo + ow) * C + c0;
                T* dst = dyb + ((r - r0 + oh - oh0) * g.Wo + ow) * CW;
                for (int64_t k = 0; k < nb; ++k) std::memcpy(dst + k * dybs, src + k * CW, CW * sizeof(T));
              }
          }
          for (int64_t oh = oh0; oh < oh1; ++oh)
            for (int64_t i = 0; i < kh; ++i) {
              const int64_t ir = oh * g.sh + i * g.dh - g.pt;
              xoff[(r - r0 + oh - oh0) * kh + i] = ir < 0 || ir >= g.H ? -1 : (used + ir - in0) * width * CW;
            }
          used += in1 - in0;
          r += oh1 - oh0;
        }
        const int64_t nr = r1 - r0;
        for (int64_t k = 0; k < nb; ++k) {
          const T* xk = xb + k * xbs;
          const T* dyk = dyb + k * dybs;
          double* dk = dacc + k * bsize;
          for (int v = 0; v < NV; v += NCV)
            for (int ci0 = 0; ci0 < CPG; ci0 += CB)
              for (int64_t i = 0; i < kh; ++i)
                for (int64_t j0 = 0; j0 < kw; j0 += 3) {
                  const int64_t nj = std::min<int64_t>(3, kw - j0);
                  const PadEdges pe = pad_edges(g, width, j0, nj);
                  V acc[NCV][3][CB];
                  for (int a = 0; a < NCV; ++a)
                    for (int j = 0; j < 3; ++j)
                      for (int c = 0; c < CB; ++c) acc[a][j][c] = V{};
                  auto pixels = [&](auto njc) {
                    constexpr int NJ = decltype(njc)::value;
                    for (int64_t rl = 0; rl < nr; ++rl) {
                      const int64_t off = xoff[rl * kh + i];
                      if (off < 0) continue;
                      const T* row = xk + off;
                      const T* dyr = dyk + rl * g.Wo * CW + v * VL;
                      const int64_t xs = g.sw * CW, js = g.dw * CW;
                      const T* xq = row + j0 * js + (Tr::permute ? 0 : (v * VL) / CPG * CPG + ci0);
                      wgrad_row<T, CPG, NCV, CB, NJ>(acc, xq, js, xs, dyr, CW, g.Wo, pe.s0, pe.s1);
                    }
                  };
                  by_taps(nj, pixels);
                  alignas(64) T fl[NCV][3][CB][VL];  // (a stored copy: lane reads would keep acc in memory)
                  for (int a = 0; a < NCV; ++a)
                    for (int j = 0; j < 3; ++j)
                      for (int c = 0; c < CB; ++c) vstore(fl[a][j][c], acc[a][j][c]);
                  for (int a = 0; a < NCV; ++a)
                    for (int64_t j = 0; j < nj; ++j)
                      for (int c = 0; c < CB; ++c) {
                        double* d = dk + (((i * kw + j0 + j) * NV + v + a) * CPG + ci0 + c) * VL;
                        for (int l = 0; l < VL; ++l) d[l] += double(fl[a][j][c][l]);
                      }
                }
        }
      }
      if (part) {
        std::copy(dacc, dacc + nb * bsize, part + (p * nblk + b0) * bsize);
        continue;
      }
      for (int64_t k = 0; k < nb; ++k)
        for (int64_t c = 0; c < CW; ++c) put_row(b0 + k, c, [&](int64_t f) { return dacc[k * bsize + f]; });
    }
    if (part) {  // (after the loop's barrier)
#pragma omp for schedule(static)
      for (int64_t e = 0; e < nblk * CW; ++e)
        put_row(e / CW, e % CW, [&](int64_t f) {
          double s = 0;
          for (int64_t p = 0; p < pieces; ++p) s += part[(p * nblk + e / CW) * bsize + f];
          return s;
        });
    }
  }
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
