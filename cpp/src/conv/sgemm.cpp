// cnnkit's own float32 GEMM: C = [C +] A . B with A (M x K) and B (K x N) strided, C row-major.
//
//   C[i, j] (+)= sum_k pa(A[i, k]) * pb(B[k, j])      pa, pb: optional per-k scale/shift/ReLU
//
// The structure is the one of BLIS / GotoBLAS (Goto & van de Geijn, "Anatomy of high-performance
// matrix multiplication", 2008; Van Zee & van de Geijn, "BLIS", 2015): B is packed KC x NC into
// column panels NR wide, A is packed MC x KC into row panels MR high (zero-padded to whole
// panels; a row-major A without a prologue is read in place, its last partial panel packed), and
// a microkernel keeps an MR x NR block of C in registers while it runs one FMA chain
// per element over the KC packed values. Loop order jc (NC) -> pc (KC) -> ic (MC) -> ir (MR) ->
// jr (NR): the microkernel's A panel (MR x KC) stays in L1, the packed B block (KC x NC) in L2.
//
// Register blocks (Zen 4: 32 vector registers at AVX-512, 16 at AVX2; a 512-bit FMA issues at one
// per cycle, double-pumped, with 4 cycles of latency, so 16 independent chains hide it):
//   avx512  MR 8 x NR 32 (16 zmm accumulators + 2 zmm of B + a broadcast)
//   avx2    MR 6 x NR 16 (12 ymm accumulators + 2 ymm of B + a broadcast)
//   scalar  MR 4 x NR 8  (GCC vector extensions lowered to SSE2; the portable path)
// and, for C at most one vector wide (N <= VL: the 16-channel groups), MR2 x VL kernels (16 x 16,
// 12 x 8, 8 x 4) with the same number of accumulators.
// Each element of C is a sum over k in increasing order, KC values at a time, every block a
// chain started at zero and then added to C: its bits depend on K and the level only, never on
// the M/N tiling, so callers can cut M and N by the thread count and still get the same bits.
// This file is compiled with -ffp-contract=fast (a*b+c is one FMA where the level has FMA).
#include "sgemm.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "common/channel_count.h"
#include "scratch.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {
namespace {

#if defined(__AVX512F__)
constexpr int VL = 16, MR = 8, NV = 2, MR2 = 16, KC = 256, MC = 256, NC = 512;
#elif defined(__AVX2__)
constexpr int VL = 8, MR = 6, NV = 2, MR2 = 12, KC = 256, MC = 240, NC = 512;
#else
constexpr int VL = 4, MR = 4, NV = 2, MR2 = 8, KC = 256, MC = 256, NC = 512;
#endif
constexpr int NR = VL * NV;

typedef float V __attribute__((vector_size(VL * sizeof(float))));
typedef float Vu __attribute__((vector_size(VL * sizeof(float)), aligned(4), may_alias));

#if defined(__AVX512F__)
inline V vbroadcast(float s) { return (V)_mm512_set1_ps(s); }
#elif defined(__AVX2__)
inline V vbroadcast(float s) { return (V)_mm256_set1_ps(s); }
#else
inline V vbroadcast(float s) { return (V)_mm_set1_ps(s); }
#endif
inline V vload(const float* p) { return *reinterpret_cast<const Vu*>(p); }
inline void vstore(float* p, V v) { *reinterpret_cast<Vu*>(p) = v; }
// std::max(x, 0) lane by lane: x < 0 ? 0 : x (a NaN stays NaN, -0 stays -0). At AVX2 one vmaxps
// with x as its second operand, which MAXPS returns for a NaN or a pair of zeros: the same values as
// the compare and the and GCC makes of the select. (In sgemm_tn's in-kernel prologue, Zen 3, dW of
// 32->16, 16->32, 32->32 @32 and 32->64 @16, @32 over 64 images, alternating in one process: 1.03-1.08x
// on 2 threads, 1.03-1.05x on 1; the training steps level.)
inline V vrelu(V x) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  return (V)_mm256_max_ps(_mm256_setzero_ps(), (__m256)x);
#else
  return x < V{} ? V{} : x;
#endif
}

// The prologue's affine map as one fma, as conv_gemm.cpp and the norm kernels evaluate it.
inline float pro(float v, const Prologue* f, int64_t k) {
  v = std::fma(f->scale[k], v, f->shift[k]);
  return f->relu ? std::max(v, 0.0f) : v;
}

bool active(const Prologue* f) { return f && (f->scale || f->relu); }

// A rows [i0, i0+mc) x columns [k0, k0+kc) -> panels of R rows: dst[(p*kc + k)*R + i].
template <int R>
void pack_a(Operand A, int64_t i0, int64_t mc, int64_t k0, int64_t kc, const Prologue* f, float* dst) {
  const int64_t panels = (mc + R - 1) / R;
  const bool has = active(f);
  for (int64_t p = 0; p < panels; ++p) {
    float* d = dst + p * kc * R;
    const int64_t rows = std::min<int64_t>(R, mc - p * R);
    if (rows < R)
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = rows; i < R; ++i) d[k * R + i] = 0.0f;
    if (A.rs == 1 && !has) {  // columns contiguous: read along i
      for (int64_t k = 0; k < kc; ++k) {
        const float* s = A.p + i0 + p * R + (k0 + k) * A.cs;
        for (int64_t i = 0; i < rows; ++i) d[k * R + i] = s[i];
      }
      continue;
    }
    for (int64_t i = 0; i < rows; ++i) {
      const float* s = A.p + (i0 + p * R + i) * A.rs + k0 * A.cs;
      if (!has)
        for (int64_t k = 0; k < kc; ++k) d[k * R + i] = s[k * A.cs];
      else if (f->scale)
        for (int64_t k = 0; k < kc; ++k) d[k * R + i] = pro(s[k * A.cs], f, k0 + k);
      else
        for (int64_t k = 0; k < kc; ++k) d[k * R + i] = std::max(s[k * A.cs], 0.0f);
    }
  }
}

// B rows [k0, k0+kc) x columns [j0, j0+nc) -> panels of W columns: dst[(p*kc + k)*W + j].
template <int W>
void pack_b(Operand B, int64_t k0, int64_t kc, int64_t j0, int64_t nc, const Prologue* f, float* dst) {
  const int64_t panels = (nc + W - 1) / W;
  const bool has = active(f);
  if (B.cs == 1) {  // rows contiguous: each row of B read once, front to back, into every panel
    for (int64_t k = 0; k < kc; ++k) {
      const float* s = B.p + (k0 + k) * B.rs + j0;
      float sc = 1.0f, sh = 0.0f;
      if (has && f->scale) {
        sc = f->scale[k0 + k];
        sh = f->shift[k0 + k];
      }
      for (int64_t p = 0; p < panels; ++p) {
        float* o = dst + (p * kc + k) * W;
        const float* q = s + p * W;
        const int64_t cols = std::min<int64_t>(W, nc - p * W);
        if (!has) {
          if (cols == W)
            std::memcpy(o, q, W * sizeof(float));
          else
            for (int64_t j = 0; j < cols; ++j) o[j] = q[j];
        } else if (f->scale) {
          if (f->relu)
            for (int64_t j = 0; j < cols; ++j) o[j] = std::max(std::fma(sc, q[j], sh), 0.0f);
          else
            for (int64_t j = 0; j < cols; ++j) o[j] = std::fma(sc, q[j], sh);
        } else {
          for (int64_t j = 0; j < cols; ++j) o[j] = std::max(q[j], 0.0f);
        }
        for (int64_t j = cols; j < W; ++j) o[j] = 0.0f;
      }
    }
    return;
  }
  for (int64_t p = 0; p < panels; ++p) {
    float* d = dst + p * kc * W;
    const int64_t cols = std::min<int64_t>(W, nc - p * W);
    const float* base = B.p + k0 * B.rs + (j0 + p * W) * B.cs;
    if (cols < W)
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t j = cols; j < W; ++j) d[k * W + j] = 0.0f;
    for (int64_t j = 0; j < cols; ++j) {
      const float* s = base + j * B.cs;
      if (!has)
        for (int64_t k = 0; k < kc; ++k) d[k * W + j] = s[k * B.rs];
      else if (f->scale)
        for (int64_t k = 0; k < kc; ++k) d[k * W + j] = pro(s[k * B.rs], f, k0 + k);
      else
        for (int64_t k = 0; k < kc; ++k) d[k * W + j] = std::max(s[k * B.rs], 0.0f);
    }
  }
}

// The R x U block of accumulators every microkernel keeps in registers: zeroed, and stored into
// C (mr x nr of it valid, row stride ldc; acc adds it to C). Always inlined, so r stays in
// registers.
template <int R, int U>
__attribute__((always_inline)) inline void zero_block(V (&r)[R][U]) {
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < U; ++v) r[i][v] = V{};
}

// One step of a microkernel whose A values of the step lie together: r[i][v] += a[i] * b[v*VL ..]
// (one FMA per element, as every kernel here).
template <int R, int U>
__attribute__((always_inline)) inline void rank1_step(V (&r)[R][U], const float* a, const float* b) {
  V bv[U];
#pragma GCC unroll 4
  for (int v = 0; v < U; ++v) bv[v] = vload(b + v * VL);
#pragma GCC unroll 24
  for (int i = 0; i < R; ++i) {
    const V ai = vbroadcast(a[i]);
#pragma GCC unroll 4
    for (int v = 0; v < U; ++v) r[i][v] = ai * bv[v] + r[i][v];
  }
}

// The epilogue of one panel of W columns (sgemm_rows' RowsEpilogue, its pointers moved to the
// panel and to the block's first row).
struct PanelEp {
  const float* bias;
  const float* res;
  int64_t ldres;
  bool relu;
};

// store_block() through the epilogue (see RowsEpilogue in sgemm.h): a whole block with the values
// in registers; a partial one (mr < R or nr < W) through a tile, the same operations per value.
template <int R, int U>
__attribute__((always_inline)) inline void store_block_ep(V (&r)[R][U], float* c, int64_t ldc, bool acc, int64_t mr,
                                                          int64_t nr, const PanelEp& e) {
  constexpr int W = U * VL;
  if (mr == R && nr == W) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < U; ++v) {
        float* p = c + i * ldc + v * VL;
        V x = acc ? vload(p) + r[i][v] : r[i][v];
        if (e.bias) x = x + vload(e.bias + v * VL);
        if (e.res) x = x + vload(e.res + i * e.ldres + v * VL);
        if (e.relu) x = x < V{} ? V{} : x;  // std::max(x, 0)
        vstore(p, x);
      }
    return;
  }
  alignas(64) float t[R * W];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < U; ++v) vstore(t + i * W + v * VL, r[i][v]);
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      float x = t[i * W + j];
      if (acc) x = c[i * ldc + j] + x;
      if (e.bias) x = x + e.bias[j];
      if (e.res) x = x + e.res[i * e.ldres + j];
      if (e.relu) x = std::max(x, 0.0f);
      c[i * ldc + j] = x;
    }
}

// store_block_ep() without an epilogue (the values as they are, or added to C with acc).
template <int R, int U>
__attribute__((always_inline)) inline void store_block(V (&r)[R][U], float* c, int64_t ldc, bool acc, int64_t mr,
                                                       int64_t nr) {
  store_block_ep<R, U>(r, c, ldc, acc, mr, nr, PanelEp{nullptr, nullptr, 0, false});
}

#if defined(__AVX512F__)
// A panel whose valid columns end in the first half of its last vector (N = 24 in a 32-wide
// panel, 16 + 8): that vector's accumulators as 8-lane (ymm) vectors. Zen 4 runs a 512-bit FMA
// as two 256-bit halves, so the block costs 1.5 vectors' FMAs a row instead of 2; per element
// the same chain of FMAs, so the same bits. (2 panels of 16 columns would leave 8 empty lanes
// as well.)
typedef float V8 __attribute__((vector_size(32)));
typedef float V8u __attribute__((vector_size(32), aligned(4), may_alias));
inline V8 lo8(V v) { return (V8)_mm512_castps512_ps256((__m512)v); }
inline V8 vload8(const float* p) { return *reinterpret_cast<const V8u*>(p); }
inline void vstore8(float* p, V8 v) { *reinterpret_cast<V8u*>(p) = v; }

template <int R, int U, bool Direct>
void ukernel_half(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc, bool acc,
                  int64_t mr, int64_t nr, int64_t lda) {
  constexpr int W = U * VL, F = U - 1;  // F whole vectors, then one half
  V r[R][F > 0 ? F : 1];
  V8 h[R];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < F; ++v) r[i][v] = V{};
    h[i] = V8{};
  }
  for (int64_t k = 0; k < kc; ++k) {
    V bv[F > 0 ? F : 1];
#pragma GCC unroll 4
    for (int v = 0; v < F; ++v) bv[v] = vload(b + v * VL);
    const V8 bh = vload8(b + F * VL);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const V ai = vbroadcast(Direct ? a[i * lda] : a[i]);
#pragma GCC unroll 4
      for (int v = 0; v < F; ++v) r[i][v] = ai * bv[v] + r[i][v];
      h[i] = lo8(ai) * bh + h[i];
    }
    a += Direct ? 1 : R;
    b += W;
  }
  if (mr == R && nr == F * VL + 8) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      float* p = c + i * ldc;
#pragma GCC unroll 4
      for (int v = 0; v < F; ++v) vstore(p + v * VL, acc ? vload(p + v * VL) + r[i][v] : r[i][v]);
      vstore8(p + F * VL, acc ? vload8(p + F * VL) + h[i] : h[i]);
    }
    return;
  }
  alignas(64) float t[R * W];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < F; ++v) vstore(t + i * W + v * VL, r[i][v]);
    vstore8(t + i * W + F * VL, h[i]);
  }
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) c[i * ldc + j] = acc ? c[i * ldc + j] + t[i * W + j] : t[i * W + j];
}
#endif

#if defined(__AVX512F__)
// ---- C 17 to 24 columns wide, rows in pairs (AVX-512: 1024 x 24 x 144, the NHWC 1x1 144 -> 24) --
// 24 columns are a vector and a half a row. A core with two 512-bit FMA pipes spends a whole FMA
// on the half (ukernel_half's 8 lanes) and caps such a block at 75% of its peak. Two rows of 24
// columns are three whole vectors: lane 2m of vector j holds row 2p's column 8j + m, lane 2m + 1
// row 2p + 1's. Each step broadcasts the pair (A[2p, k], A[2p + 1, k]) as one 64-bit value and
// multiplies it into B's row k with every value twice (bd[k*48 + 16j + 2m + {0, 1}] = B[k, 8j + m]).
// A is laid out pair-major (pairs[p][k][2], two permutes per 16 values of a pair); the block's
// stores take the lanes apart again. Per element the chain of sgemm_blocked: the same bits.
// The pairs lie kPairStride floats apart whatever kc is: with kc's stride, the eight broadcasts'
// addresses took eight pointers, two of them kept in vector registers and moved back every step
// (p0 work, an FMA port's). 1 thread, alternating in one process (Intel AVX-512), the fixed
// stride and the prefetches below against the step's own: 1024 x 24 x 144 1.05-1.10x, 2048 x 24
// x 144 1.09x, 4096 x 23 x 145 1.10x, 4096 x 24 x 32 1.06x, 4096 x 24 x 96 1.04x, 2048 x 24 x 600
// 1.03x; the 144 -> 24 layer (100352 x 24 x 144, A from L3) 1.00-1.06x. 2 threads, N = 32, the
// NHWC 1x1 144 -> 24 forward and 24 -> 144 input gradient at 56x56: level (0.98-1.00x, noise).
// (Pairing steps instead of rows, lane 2m column 16 + m's even steps and 2m + 1 its odd ones, needs
// no copy of A and no permute and ran 1.03-1.16x faster, but sums columns 16-23 in two chains: C's
// bits would then depend on its column tiles and on A's layout, which the callers rely on not.)
constexpr int kPairs = 8;  // 16 rows: 24 accumulators, 3 of B, a broadcast
constexpr int kPairStride = 2 * KC;
inline bool pairs_n(int64_t N) { return N > VL && N <= 24; }

// Rows [0, mr) of A (row-major, lda; A[i, k0 + k] at a[i*lda + k]) over kc (<= KC) steps,
// pair-major into dst[p*kPairStride + 2*k + {0, 1}]; rows past mr zero.
void pack_pairs(const float* a, int64_t lda, int64_t mr, int64_t kc, float* dst) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int p = 0; p < kPairs; ++p) {
    const float* r0 = 2 * p < mr ? a + 2 * p * lda : nullptr;
    const float* r1 = 2 * p + 1 < mr ? a + (2 * p + 1) * lda : nullptr;
    float* d = dst + p * kPairStride;
    int64_t k = 0;
    for (; k + VL <= kc; k += VL) {
      const __m512 x = r0 ? _mm512_loadu_ps(r0 + k) : _mm512_setzero_ps();
      const __m512 y = r1 ? _mm512_loadu_ps(r1 + k) : _mm512_setzero_ps();
      _mm512_storeu_ps(d + 2 * k, _mm512_permutex2var_ps(x, lo, y));
      _mm512_storeu_ps(d + 2 * k + VL, _mm512_permutex2var_ps(x, hi, y));
    }
    for (; k < kc; ++k) {
      d[2 * k] = r0 ? r0[k] : 0.0f;
      d[2 * k + 1] = r1 ? r1[k] : 0.0f;
    }
  }
}

// B rows [k0, k0 + kc), its n <= 24 columns, every value twice: dst[k*48 + 16j + 2m + {0, 1}].
void pack_b_twice(Operand B, int64_t k0, int64_t kc, int64_t n, float* dst) {
  if (B.cs != 1) {
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = 0; j < 24; ++j) {
        const float v = j < n ? B.p[(k0 + k) * B.rs + j * B.cs] : 0.0f;
        dst[k * 48 + (j / 8) * 16 + (j % 8) * 2] = v;
        dst[k * 48 + (j / 8) * 16 + (j % 8) * 2 + 1] = v;
      }
    return;
  }
  const __m512i dlo = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i dhi = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  const __mmask16 m = __mmask16((1u << (n - VL)) - 1);  // (VL < n <= 24)
  const float* b = B.p + k0 * B.rs;
  for (int64_t k = 0; k < kc; ++k, b += B.rs, dst += 48) {
    const __m512 v0 = _mm512_loadu_ps(b), v1 = _mm512_maskz_loadu_ps(m, b + VL);
    _mm512_storeu_ps(dst, _mm512_permutexvar_ps(dlo, v0));
    _mm512_storeu_ps(dst + VL, _mm512_permutexvar_ps(dhi, v0));
    _mm512_storeu_ps(dst + 2 * VL, _mm512_permutexvar_ps(dlo, v1));
  }
}

// The next block's rows of C (the block at row ir of M, 2 * kPairs rows; contiguous where ldc ==
// N) as ukernel_pairs' L2 lines (pf2, *pfl2: two a step), or null. Their stores had waited on
// reading the lines they overwrite. Alternating in one process (Intel AVX-512): 1 thread, 100352 x
// 24 x 144 (the 144 -> 24 layer, A from L3) 1.09-1.11x; the NHWC 1x1 forward 144 -> 24 at 56x56,
// N = 32, 1.08x on 1 thread and 1.03x on 2, 96 -> 24 at 32x32, N = 64, 1.07x on 2.
inline const char* pairs_next_c(const float* C, int64_t ldc, int64_t N, int64_t ir, int64_t M, int64_t kc,
                                int64_t* pfl2) {
  constexpr int R = 2 * kPairs;
  if (ldc != N || ir + 2 * R > M) return nullptr;
  *pfl2 = std::min<int64_t>(2 * kc, (R * N * 4 + 63) / 64);
  return reinterpret_cast<const char*>(C + (ir + R) * ldc);
}

// c (mr x nr of 16 x 24, row stride ldc) (+)= the pairs . bd over kc steps.
// Lines to prefetch, in rounds of four steps: pf, pfl lines into L1 (a line a step); pf2, pfl2
// into L2 (two a step); pf3, pfl3 into L2 (a line a step). A round tests once a region whether
// lines are left, and may name up to 3 (7) lines past its end, which a prefetch may do; the
// lines stay spread over the round's steps (a round's lines together at its start ran the 144 ->
// 24 layer 4-8% slower). The last kc mod 4 steps prefetch nothing.
// ep: the epilogue, in store_block_ep's order (the same operations per value).
void ukernel_pairs(int64_t kc, const float* __restrict ap, const float* __restrict bd, float* c, int64_t ldc,
                   bool acc, int64_t mr, int64_t nr, const char* pf, int64_t pfl, const PanelEp* ep,
                   const char* pf2, int64_t pfl2, const char* pf3, int64_t pfl3) {
  V r[kPairs][3];
#pragma GCC unroll 8
  for (int p = 0; p < kPairs; ++p)
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j) r[p][j] = V{};
  auto step = [&](int64_t k) __attribute__((always_inline)) {
    const V b0 = vload(bd + 48 * k), b1 = vload(bd + 48 * k + VL), b2 = vload(bd + 48 * k + 2 * VL);
#pragma GCC unroll 8
    for (int p = 0; p < kPairs; ++p) {
      double d;
      std::memcpy(&d, ap + p * kPairStride + 2 * k, sizeof d);
      const V a = (V)_mm512_castpd_ps(_mm512_set1_pd(d));
      r[p][0] = a * b0 + r[p][0];
      r[p][1] = a * b1 + r[p][1];
      r[p][2] = a * b2 + r[p][2];
    }
  };
  const char *e1 = pf + 64 * pfl, *e2 = pf2 + 64 * pfl2, *e3 = pf3 + 64 * pfl3;
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    const bool g1 = pf < e1, g2 = pf2 < e2, g3 = pf3 < e3;
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      if (g1) __builtin_prefetch(pf + 64 * u, 0, 3);
      if (g2) __builtin_prefetch(pf2 + 128 * u, 0, 2);
      if (g2) __builtin_prefetch(pf2 + 128 * u + 64, 0, 2);
      if (g3) __builtin_prefetch(pf3 + 64 * u, 0, 1);
      step(k + u);
    }
    pf += g1 ? 256 : 0;
    pf2 += g2 ? 512 : 0;
    pf3 += g3 ? 256 : 0;
  }
  for (; k < kc; ++k) step(k);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i split = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __mmask16 m0 = nr >= VL ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1);
  const __mmask16 m1 = nr > VL ? __mmask16((1u << (nr - VL)) - 1) : __mmask16(0);
  auto row = [&](int64_t i, __m512 v0, __m256 v1) {
    float* q = c + i * ldc;
    if (acc) {
      v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, q), v0);
      v1 = _mm256_add_ps(_mm256_maskz_loadu_ps(__mmask8(m1), q + VL), v1);
    }
    if (ep) {
      if (ep->bias) {
        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, ep->bias));
        v1 = _mm256_add_ps(v1, _mm256_maskz_loadu_ps(__mmask8(m1), ep->bias + VL));
      }
      if (ep->res) {
        const float* e = ep->res + i * ep->ldres;
        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, e));
        v1 = _mm256_add_ps(v1, _mm256_maskz_loadu_ps(__mmask8(m1), e + VL));
      }
      if (ep->relu) {  // std::max(x, 0): x < 0 -> 0 (a NaN stays)
        v0 = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v0, _mm512_setzero_ps(), _CMP_LT_OQ), v0, _mm512_setzero_ps());
        v1 = _mm256_mask_blend_ps(_mm256_cmp_ps_mask(v1, _mm256_setzero_ps(), _CMP_LT_OQ), v1, _mm256_setzero_ps());
      }
    }
    _mm512_mask_storeu_ps(q, m0, v0);
    _mm256_mask_storeu_ps(q + VL, __mmask8(m1), v1);
  };
#pragma GCC unroll 8
  for (int p = 0; p < kPairs; ++p) {
    if (2 * p >= mr) break;
    const __m512 x0 = (__m512)r[p][0], x1 = (__m512)r[p][1];
    const __m512 t = _mm512_permutexvar_ps(split, (__m512)r[p][2]);
    row(2 * p, _mm512_permutex2var_ps(x0, even, x1), _mm512_castps512_ps256(t));
    if (2 * p + 1 < mr) row(2 * p + 1, _mm512_permutex2var_ps(x0, odd, x1), _mm512_extractf32x8_ps(t, 1));
  }
}

void prologue_block(const float* A, int64_t lda, int64_t mr, int R, int64_t k0, int64_t kc, const Prologue* f,
                    float* __restrict d);

// sgemm_rows() for 16 < N <= 24: A row-major (lda), through the prologue pa where given (an R x kc
// copy first), B packed by pack_b_twice() over the whole K (bd[k*48 ...]).
// Where A's rows are contiguous (lda == K), the next block's rows are prefetched into L1 (a line
// a step, as rows_blocked) and the fourth block on into L2: 1 thread, alternating (Intel
// AVX-512), the 144 -> 24 layer 1.01-1.05x (the second block or the eighth: within 1.5% of it).
void pairs_rows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* bd, float* C,
                int64_t ldc, const Prologue* pa, const RowsEpilogue* ep, RowsPrefetch* pre) {
  constexpr int R = 2 * kPairs;
  const bool has = active(pa);
  const int64_t kcm = std::max<int64_t>(1, std::min<int64_t>(K, KC));
  float* buf = scratch<float>(kPackASlot, R * kcm);
  float* ap = scratch<float>(kPackBSlot, kPairs * kPairStride);
  for (int64_t ir = 0; ir < M; ir += R) {
    const int64_t mr = std::min<int64_t>(R, M - ir);
    const char* pf = lda == K ? reinterpret_cast<const char*>(A + (ir + R) * lda) : nullptr;
    const char* pf3 = lda == K ? reinterpret_cast<const char*>(A + (ir + 4 * R) * lda) : nullptr;
    for (int64_t pc = 0; pc < K || pc == 0; pc += KC) {  // (K == 0: one empty block, for the epilogue)
      const int64_t kc = std::min<int64_t>(KC, K - pc);
      if (has) {
        prologue_block(A + ir * lda, lda, mr, R, pc, kc, pa, buf);
        pack_pairs(buf, kc, R, kc, ap);
      } else {
        pack_pairs(A + ir * lda + pc, lda, mr, kc, ap);
      }
      const bool last = pc + kc == K;
      PanelEp pe{};
      if (ep && last) pe = PanelEp{ep->bias, ep->res ? ep->res + ir * ep->ldres : nullptr, ep->ldres, ep->relu};
      int64_t pfl2 = 0;
      // (without the caller's lines: the next block's rows of C)
      const char* pf2 = pre ? pre->take(2 * kc, &pfl2) : pc == 0 ? pairs_next_c(C, ldc, N, ir, M, kc, &pfl2) : nullptr;
      const int64_t lines = (R * kc * 4 + 63) / 64;
      ukernel_pairs(kc, ap, bd + pc * 48, C + ir * ldc, ldc, pc > 0, mr, N, pf ? pf + pc * R * 4 : nullptr,
                    pf ? lines : 0, ep && last ? &pe : nullptr, pf2, pfl2, pf3 ? pf3 + pc * R * 4 : nullptr,
                    pf3 ? lines : 0);
    }
  }
}

// C (M x N, 16 < N <= 24) (+)= A . B, A row-major (unit column stride).
void pairs_blocked(int64_t M, int64_t N, int64_t K, Operand A, Operand B, float* C, int64_t ldc, bool accumulate) {
  constexpr int R = 2 * kPairs;
  float* bd = scratch<float>(kPackBSlot, KC * 48);
  float* ap = scratch<float>(kPackASlot, kPairs * kPairStride);
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min<int64_t>(KC, K - pc);
    const bool acc = accumulate || pc > 0;
    pack_b_twice(B, pc, kc, N, bd);
    for (int64_t ir = 0; ir < M; ir += R) {
      const int64_t mr = std::min<int64_t>(R, M - ir);
      pack_pairs(A.p + ir * A.rs + pc, A.rs, mr, kc, ap);
      // The next block of rows, a line a step (contiguous where A's rows are K long).
      const char* pf = A.rs == K ? reinterpret_cast<const char*>(A.p + (ir + R) * A.rs + pc) : nullptr;
      int64_t pfl2 = 0;
      const char* pf2 = pairs_next_c(C, ldc, N, ir, M, kc, &pfl2);
      ukernel_pairs(kc, ap, bd, C + ir * ldc, ldc, acc, mr, N, pf, pf ? (R * kc * 4 + 63) / 64 : 0, nullptr, pf2, pfl2,
                    nullptr, 0);
    }
  }
}
#endif

// Whether an nr-column block of a W = U*VL panel takes ukernel_half (its last vector half empty;
// not a one-vector block: 1024 x 8 x 144, 1 thread, ran 0.96x in 8 lanes).
template <int U>
inline bool half_block(int64_t nr) {
#if defined(__AVX512F__)
  return U > 1 && nr > (U - 1) * VL && nr <= (U - 1) * VL + 8;
#else
  (void)nr;
  return false;
#endif
}

// c (mr x nr valid of an R x (U*VL) block, row stride ldc) (+)= a panel . b panel over kc.
// Direct: a is A itself (row i at a + i*lda, k contiguous) instead of a packed panel.
template <int R, int U, bool Direct = false>
void ukernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc, bool acc,
             int64_t mr, int64_t nr, int64_t lda = 0, const char* pfc = nullptr) {
  constexpr int W = U * VL;
  constexpr int CL = (W * int(sizeof(float)) + 63) / 64;  // lines of a row of the C block
#if defined(__AVX512F__)
  if (half_block<U>(nr)) return ukernel_half<R, U, Direct>(kc, a, b, c, ldc, acc, mr, nr, lda);
#endif
  V r[R][U];
  zero_block<R, U>(r);
  for (int64_t k = 0; k < kc; ++k) {
    if (pfc && k < R * CL) __builtin_prefetch(pfc + (k / CL) * ldc * int64_t(sizeof(float)) + (k % CL) * 64, 1, 3);
    V bv[U];
#pragma GCC unroll 4
    for (int v = 0; v < U; ++v) bv[v] = vload(b + v * VL);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const V ai = vbroadcast(Direct ? a[i * lda] : a[i]);
#pragma GCC unroll 4
      for (int v = 0; v < U; ++v) r[i][v] = ai * bv[v] + r[i][v];
    }
    a += Direct ? 1 : R;
    b += W;
  }
  store_block<R, U>(r, c, ldc, acc, mr, nr);
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
int64_t pad_to(int64_t M, int64_t R) { return (M + R - 1) / R * R; }

// Whether tn_blocked lays out P's strips (below AVX-512): 3+ panels of columns.
inline bool tn_packs_p(int64_t panels) {
#if defined(__AVX512F__)
  (void)panels;
  return false;
#else
  return panels >= 3;
#endif
}
// tn_blocked's sub-blocks of a KC block's rows: at AVX2 64 rows where P is read in place (below).
inline int64_t tn_ksub(bool packp) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  return packp ? KC : 64;
#else
  (void)packp;
  return KC;
#endif
}

// Whether tn_blocked (below AVX-512) lays out Q's block in panels, and P's strips: 3+ panels of W
// columns and 3+ blocks of R rows of C. Otherwise a prologue runs inside its kernel.
inline bool tn_lays_out_q(int64_t M, int64_t N, int64_t R, int64_t W) {
  return (N + W - 1) / W >= 3 && (M + R - 1) / R >= 3;
}

// (the in-place kernels, defined below: sgemm_blocked reads B in place through them for short C)
template <int R, int U, int AM, int Pro = 0, bool Copy = false>
void ukernel_s(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b, int64_t ldb, float* c,
               int64_t ldc, bool acc, int64_t mr, int64_t nr, const char* pf = nullptr, int64_t pfl = 0,
               const float* psc = nullptr, const float* psh = nullptr, const PanelEp* ep = nullptr,
               const float* init = nullptr, float* keep = nullptr, float* __restrict bcopy = nullptr,
               const char* pf2 = nullptr, int64_t pfl2 = 0, const char* pfc = nullptr, int64_t pfc_ld = 0,
               int64_t pfd = 0, const float* pfn = nullptr);

// ---- few rows, B read in place (NCHW 1x1 convolutions per image: 24 x 3136 x 144) -------------
// Packing B moves each of its values once for only 2*M flops, about as long as the arithmetic, so
// for M <= 48 B's panels are read in place (kc lines, in L1 for every block of rows after the
// first) and A is packed once per KC block; only a last partial panel is laid out (its in-place
// reads would run past B), and at AVX2 each whole panel by the first block of rows as it reads it
// (few_rows below). B's rows lie a page or more apart, kc streams that the hardware
// prefetchers do not follow: the first block of rows prefetches B's row pfd steps ahead into L1
// (its lines, one more where the row does not start on a line), running on into the next panel's
// first rows (nb) over its last pfd steps, as MKL's unpacked kernels do. AVX-512, 1 thread, against
// torch.mm (MKL) in the same process: 24 x 3136 x 144 0.70-0.73x -> 0.95-0.98x, 16 x 3136 x 96
// 0.82 -> 0.92x, 8 x 12544 x 64 0.60 -> 0.91-0.99x, 48 x 784 x 96 0.82 -> 0.79x, others level.
// Not for M = 64 (K = 256): 0.75 -> 0.79-0.80x at N = 3136 but 0.78 -> 0.75x at N = 784.
// Not where B's rows lie a multiple of 4 KiB apart (N = 1024, 2048, 3072, 4096: 32x32 and 64x64
// images): a panel's kc lines then fall into a few sets of the caches and evict each other
// (AVX2, 1 thread, 24 x N x 144: in place 58, 60, 61, 50 GFLOP/s against 65, 66, 66, 67
// packed). The chains are sgemm_blocked's: the same bits.
// Direct: a is A itself (row i at a + i*lda, k contiguous) instead of a packed panel.
template <int R, int U, bool Direct = false>
void ukernel_fr(int64_t kc, const float* __restrict a, const float* __restrict b, int64_t ldb, float* c, int64_t ldc,
                bool acc, int64_t mr, int64_t nr, int64_t pfd, const float* nb, int64_t lda = 0) {
  V r[R][U];
  zero_block<R, U>(r);
  const int64_t step = ldb * int64_t(sizeof(float));
  const bool split = (reinterpret_cast<uintptr_t>(b) & 63) != 0;  // U + 1 lines a row
  const char* pf = reinterpret_cast<const char*>(b + pfd * ldb);
  // Direct: row i read at ar[i / 3][(i % 3) * lda], one pointer per three rows (base + lda scaled
  // by 4 or 8 bytes), so that the addresses fit in the registers (twelve row offsets spilled four
  // of them, reloaded every step).
  const float* ar[(R + 2) / 3];
#pragma GCC unroll 8
  for (int j = 0; j < (R + 2) / 3; ++j) ar[j] = a + 3 * j * lda;
  for (int64_t k = 0; k < kc; ++k) {
    if (pfd > 0) {
      if (k == kc - pfd) pf = reinterpret_cast<const char*>(nb);
#pragma GCC unroll 4
      for (int v = 0; v < U; ++v) __builtin_prefetch(pf + 64 * v, 0, 3);
      if (split) __builtin_prefetch(pf + 64 * U - 4, 0, 3);
      pf += step;
    }
    if constexpr (Direct) {
      V bv[U];
#pragma GCC unroll 4
      for (int v = 0; v < U; ++v) bv[v] = vload(b + v * VL);
#pragma GCC unroll 24
      for (int i = 0; i < R; ++i) {
        const V ai = vbroadcast(ar[i / 3][(i % 3) * lda]);
#pragma GCC unroll 4
        for (int v = 0; v < U; ++v) r[i][v] = ai * bv[v] + r[i][v];
      }
#pragma GCC unroll 8
      for (int j = 0; j < (R + 2) / 3; ++j) ++ar[j];
    } else {
      rank1_step<R, U>(r, a, b);
      a += R;
    }
    b += ldb;
  }
  store_block<R, U>(r, c, ldc, acc, mr, nr);
}

// Whether sgemm() takes few_rows(): B row-major without a prologue, rows not 4 KiB apart.
bool few_rows_ok(int64_t M, Operand B, const Prologue* pb) {
  return M <= 48 && B.cs == 1 && !active(pb) && (B.rs * int64_t(sizeof(float))) % 4096 != 0;
}

template <int R, int U>
void few_rows(int64_t M, int64_t N, int64_t K, Operand A, Operand B, float* C, int64_t ldc, bool accumulate,
              const Prologue* pa) {
  constexpr int W = U * VL;
  constexpr int64_t D = 8;  // steps ahead (AVX-512, 24 x 3136 x 144: 8 and 16 alike, 4 slower)
  float* bp = scratch<float>(kPackBSlot, KC * W);
  float* ap = scratch<float>(kPackASlot, KC * round_up(M, R));
#if defined(__AVX2__) && !defined(__AVX512F__)
  // AVX2, more than one block of rows: the first block's kernel reads each whole panel in place
  // and lays it out in bp as it goes (the vectors it loads, as sgemm_blocked's lazy packing), and
  // the other blocks read that copy. Read in place by every block, the panel's kc rows (a page or
  // more apart) took as many pages as steps, past the 64 entries of the first-level TLB, in every
  // call. Zen 3, 1 thread, variants alternating call by call (the same bits: the same chains):
  // 24 x 3136 x 144 1.09-1.13x, 24 x 6272 x 144 1.14-1.16x, 24 x 1568 x 144 1.08x, 40 x 3136 x 64
  // 1.11x, 48 x 784 x 96 1.06x, 8 x 12544 x 64 1.07x, 16 x 3136 x 96 1.00-1.03x, 24 x 784 x 144 and
  // 24 x 392 x 144 0.99-1.00x.
  const bool copy_b = M > R;
#endif
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min<int64_t>(KC, K - pc);
    const bool acc = accumulate || pc > 0;
    // A row-major without a prologue: whole panels of rows read in place, as sgemm_blocked does
    // (Intel AVX-512, 1 thread, processes alternating, x torch.mm: 48 x 784 x 96 0.78-0.84x ->
    // 0.91-0.93x, 24 x 784 x 144 0.76-0.79x -> 0.89x, 16 x 3136 x 96 0.89-0.90x -> 0.90-0.92x,
    // 24 x 3136 x 144 level). The same values in the same chains: the same bits.
    const int64_t whole_rows = A.cs == 1 && !active(pa) ? M / R * R : 0;
    if (whole_rows < M) pack_a<R>(A, whole_rows, M - whole_rows, pc, kc, pa, ap + whole_rows * kc);
    for (int64_t jr = 0; jr < N; jr += W) {
      const int64_t nr = std::min<int64_t>(W, N - jr);
      const float* b = B.p + pc * B.rs + jr;
      int64_t ldb = B.rs;
      if (nr < W) {
        pack_b<W>(B, pc, kc, jr, nr, nullptr, bp);
        b = bp;
        ldb = W;
      }
      for (int64_t ir = 0; ir < M; ir += R) {
        const int64_t mr = std::min<int64_t>(R, M - ir), pfd = ir == 0 && nr == W ? std::min<int64_t>(D, kc) : 0;
        float* c = C + ir * ldc + jr;
        const bool in_place = ir < whole_rows;
#if defined(__AVX2__) && !defined(__AVX512F__)
        if (copy_b && nr == W) {
          if (ir == 0 && in_place)
            ukernel_s<R, U, 1, 0, true>(kc, A.p + pc, A.rs, b, ldb, c, ldc, acc, mr, nr, nullptr, 0, nullptr, nullptr,
                                        nullptr, nullptr, nullptr, bp, nullptr, 0, nullptr, 0, pfd, b + W);
          else if (ir == 0)
            ukernel_s<R, U, 0, 0, true>(kc, ap, R, b, ldb, c, ldc, acc, mr, nr, nullptr, 0, nullptr, nullptr, nullptr,
                                        nullptr, nullptr, bp, nullptr, 0, nullptr, 0, pfd, b + W);
          else if (in_place)
            ukernel<R, U, true>(kc, A.p + ir * A.rs + pc, bp, c, ldc, acc, mr, nr, A.rs);
          else
            ukernel<R, U>(kc, ap + ir * kc, bp, c, ldc, acc, mr, nr);
          continue;
        }
#endif
        if (in_place)
          ukernel_fr<R, U, true>(kc, A.p + ir * A.rs + pc, b, ldb, c, ldc, acc, mr, nr, pfd, b + W, A.rs);
        else
          ukernel_fr<R, U>(kc, ap + ir * kc, b, ldb, c, ldc, acc, mr, nr, pfd, b + W);
      }
    }
  }
}

// Whether A is read in place rather than packed, for a C of N columns in panels of W: packing A
// costs M*K moves against 2*M*N*K flops, as much as the arithmetic for narrow C (N within two
// register blocks), so A rows with unit column stride and no prologue are read in place.
inline bool reads_a_in_place(Operand A, const Prologue* pa, int64_t N, int64_t W) {
  return A.cs == 1 && !active(pa) && N <= 2 * W;
}

// The blocked loops for one microkernel shape (R x U vectors).
template <int R, int U>
void sgemm_blocked(int64_t M, int64_t N, int64_t K, Operand A, Operand B, float* C, int64_t ldc, bool accumulate,
                   const Prologue* pa, const Prologue* pb) {
  constexpr int W = U * VL;
  const int64_t mcb = MC / R * R;
  const bool direct_a = reads_a_in_place(A, pa, N, W);
  float* bp = scratch<float>(kPackBSlot, KC * round_up(std::min<int64_t>(N, NC), W));
  float* ap = scratch<float>(kPackASlot, KC * round_up(std::min<int64_t>(M, mcb), R));
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min<int64_t>(NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min<int64_t>(KC, K - pc);
      const bool acc = accumulate || pc > 0;
      // B row-major without a prologue: the first block of rows reads B's whole panels in place
      // and lays each out as it goes (the kernel stores the vectors it loads), so B is read once,
      // not once to pack and once more from the copy (the arithmetic as ukernel's: the same bits).
      // AVX2, alternating call by call: 64 x 3136 x 256 1.05-1.09x (1 thread) and 1.10x (2),
      // 96 x 3136 x 96 1.04-1.09x, 64 x 1024 x 256 1.05x, 1024^3 and 256 x 196 x 1024 level.
      const bool lazy = !direct_a && B.cs == 1 && !active(pb);
      const int64_t whole = nc / W * W;
      if (!lazy)
        pack_b<W>(B, pc, kc, jc, nc, pb, bp);
      else if (whole < nc)
        pack_b<W>(B, pc, kc, jc + whole, nc - whole, pb, bp + whole * kc);
      if (direct_a) {  // A read in place; only a last partial panel of rows is packed
        for (int64_t ir = 0; ir < M; ir += R) {
          const int64_t mr = std::min<int64_t>(R, M - ir);
          if (mr < R) pack_a<R>(A, ir, mr, pc, kc, pa, ap);
          for (int64_t jr = 0; jr < nc; jr += W) {
            float* c = C + ir * ldc + jc + jr;
            const int64_t nr = std::min<int64_t>(W, nc - jr);
            if (mr == R)
              ukernel<R, U, true>(kc, A.p + ir * A.rs + pc, bp + jr * kc, c, ldc, acc, mr, nr, A.rs);
            else
              ukernel<R, U>(kc, ap, bp + jr * kc, c, ldc, acc, mr, nr);
          }
        }
        continue;
      }
      for (int64_t ic = 0; ic < M; ic += mcb) {
        const int64_t mc = std::min<int64_t>(mcb, M - ic);
        // A row-major without a prologue: its whole panels of rows are read in place (the
        // broadcasts load from R rows instead of one packed panel), and only a last partial panel
        // is laid out, where it would lie in the packed block. Packing A moved every value once
        // per column block and sgemm_parallel's tiles each packed it again, scalar stores R floats
        // apart: Intel AVX-512, 1 thread, processes alternating, x torch.mm: 64 x 3136 x 256
        // 0.82-0.83x -> 0.86-0.89x, 64 x 784 x 256 0.79-0.80x -> 0.93-0.94x, 64 x 1024 x 256
        // 0.77x -> 0.92-0.96x, 1024^3 0.89x -> 0.94-0.96x, 96 x 3136 x 96 and 256 x 3136 x 64
        // level or better. The same values in the same chains: the same bits.
        const int64_t whole_rows = A.cs == 1 && !active(pa) ? mc / R * R : 0;
        if (whole_rows < mc) pack_a<R>(A, ic + whole_rows, mc - whole_rows, pc, kc, pa, ap + whole_rows * kc);
        for (int64_t ir = 0; ir < mc; ir += R) {
          const bool in_place = ir < whole_rows;
          const float* a = in_place ? A.p + (ic + ir) * A.rs + pc : ap + ir * kc;
          for (int64_t jr = 0; jr < nc; jr += W) {
            // (B's rows read in place: each step prefetches the row 8 steps ahead into L1, as
            // few_rows. AVX-512, 1 thread, against torch.mm: 64 x 3136 x 256 0.76-0.77x ->
            // 0.82-0.83x; 64 x 784 x 256, 96 x 3136 x 96 and 1024^3 1.01-1.03x; 256 x 3136 x 64
            // level.)
            if (lazy && ic == 0 && ir == 0 && jr < whole) {
              const float* b = B.p + pc * B.rs + jc + jr;
              float* bc = bp + jr * kc;
              const int64_t pfd = std::min<int64_t>(8, kc), mr = std::min<int64_t>(R, mc);
              if (in_place)
                ukernel_s<R, U, 1, 0, true>(kc, a, A.rs, b, B.rs, C + jc + jr, ldc, acc, mr, W, nullptr, 0, nullptr,
                                            nullptr, nullptr, nullptr, nullptr, bc, nullptr, 0, nullptr, 0, pfd, b + W);
              else
                ukernel_s<R, U, 0, 0, true>(kc, a, R, b, B.rs, C + jc + jr, ldc, acc, mr, W, nullptr, 0, nullptr,
                                            nullptr, nullptr, nullptr, nullptr, bc, nullptr, 0, nullptr, 0, pfd, b + W);
            } else {
              // The C block the next call stores, prefetched for writing in the first reduction
              // block, where its lines are cold (AVX-512, 1 thread: 16384 x 256 x 128 1.02-1.06x,
              // others 1.00-1.02x; in the direct-A path above it ran 0.94x at 65536 x 32 x 64).
              const char* nxt = nullptr;
              if (pc == 0) {
                const int64_t ni = jr + W < nc ? ir : ir + R, nj = jr + W < nc ? jr + W : 0;
                if (ni < mc) nxt = reinterpret_cast<const char*>(C + (ic + ni) * ldc + jc + nj);
              }
              float* c = C + (ic + ir) * ldc + jc + jr;
              const int64_t mr = std::min<int64_t>(R, mc - ir), nr = std::min<int64_t>(W, nc - jr);
              if (in_place)
                ukernel<R, U, true>(kc, a, bp + jr * kc, c, ldc, acc, mr, nr, A.rs, nxt);
              else
                ukernel<R, U>(kc, a, bp + jr * kc, c, ldc, acc, mr, nr, 0, nxt);
            }
          }
        }
      }
    }
  }
}

// ---- the implicit-im2col A operand (sgemm_patches) ----------------------------------------------
// A block of R output pixels keeps its accumulators in registers across the taps: per KC block of
// the reduction, one chain per element over the block's values in (tap, channel) order, each
// tap's run of channels read through one pointer per pixel (into x, or into the zeros of the
// padding), then stored (first block) or added to C: the chains and the order of sgemm() on the
// im2col matrix, without building that matrix.

// The output pixel after (image n, row oh, column ow) of the patches' geometry, in place (stepped
// along a run of pixels instead of two 64-bit divisions a pixel).
inline void next_pixel(int64_t& n, int64_t& oh, int64_t& ow, const Patches& a) {
  if (++ow == a.Wo) {
    ow = 0;
    if (++oh == a.Ho) {
      oh = 0;
      ++n;
    }
  }
}

// Row i of the block: the pixel's image (img) and the input coordinates of its tap (0, 0);
// run: the R rows are R pixels of one output row at stride 1 (NCHW: R consecutive floats a tap).
template <int R>
struct PatchRows {
  const float* img[R];
  int64_t ih0[R], iw0[R];
  bool run;
};

// NCHW (channel stride a.ldc): rows' values of channels [c0, c0+len) of tap (ti, tj) -> panel[q*R + i].
template <int R>
void pack_tap_nchw(const Patches& a, const PatchRows<R>& rows, int64_t ti, int64_t tj, int64_t c0, int64_t len,
                   float* panel) {
  const int64_t ih = rows.ih0[0] + ti * a.dh, iw = rows.iw0[0] + tj * a.dw;
  if (rows.run && ih >= 0 && ih < a.H && iw >= 0 && iw + R <= a.W) {
    const float* s = rows.img[0] + ih * a.W + iw + c0 * a.ldc;
    for (int64_t q = 0; q < len; ++q, s += a.ldc)
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) panel[q * R + i] = s[i];
    return;
  }
  for (int i = 0; i < R; ++i) {
    const int64_t h = rows.ih0[i] + ti * a.dh, w = rows.iw0[i] + tj * a.dw;
    if (h >= 0 && h < a.H && w >= 0 && w < a.W) {
      const float* s = rows.img[i] + h * a.W + w + c0 * a.ldc;
      for (int64_t q = 0; q < len; ++q) panel[q * R + i] = s[q * a.ldc];
    } else {
      for (int64_t q = 0; q < len; ++q) panel[q * R + i] = 0.0f;
    }
  }
}

template <int R, int U>
void patch_kernel(const Patches& a, const PatchRows<R>& rows, int64_t K, const float* __restrict b, float* c,
                  int64_t ldc, int64_t mr, int64_t nr) {
  constexpr int W = U * VL;
  // A dense NHWC convolution at dilation 1 (the group all of the pixel's channels) whose R pixels
  // run along one output row with every tap inside it horizontally: the taps (ti, tj..kw-1) of a
  // pixel lie together in x, so one run covers the rest of the kernel row (3 x 64 values at 64
  // channels) instead of one tap's channels, a third of the pointer set-ups and loop starts (the
  // same values in the same order: the same chains). Intel AVX-512, 3x3 64 -> 64 at 56x56,
  // variants alternating in one process: forward and input gradient 1.02-1.06x.
  const bool merge = rows.run && a.dw == 1 && a.cg == a.ldp && rows.iw0[0] >= 0 &&
                     rows.iw0[0] + R - 1 + (a.kw - 1) < a.W;
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kend = std::min<int64_t>(K, pc + KC);
    V r[R][U];
    zero_block<R, U>(r);
    for (int64_t k = pc; k < kend;) {
      const int64_t t = k / a.cg, c0 = k - t * a.cg;
      const int64_t ti = t / a.kw, tj = t - ti * a.kw;
      const int64_t ihm = rows.ih0[0] + ti * a.dh;
      const int64_t len = std::min((merge && ihm >= 0 && ihm < a.H ? (a.kw - tj) * a.cg : a.cg) - c0, kend - k);
      const float* p[R];
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const int64_t ih = rows.ih0[i] + ti * a.dh, iw = rows.iw0[i] + tj * a.dw;
        p[i] = (ih >= 0 && ih < a.H && iw >= 0 && iw < a.W ? rows.img[i] + (ih * a.W + iw) * a.ldp : a.zeros) + c0;
      }
      for (int64_t q = 0; q < len; ++q) {
        V bv[U];
#pragma GCC unroll 4
        for (int v = 0; v < U; ++v) bv[v] = vload(b + v * VL);
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
          const V ai = vbroadcast(p[i][q]);
#pragma GCC unroll 4
          for (int v = 0; v < U; ++v) r[i][v] = ai * bv[v] + r[i][v];
        }
        b += W;
      }
      k += len;
    }
    store_block<R, U>(r, c, ldc, pc > 0, mr, nr);
  }
}

template <int R, int U, bool Nchw>
void patches_blocked(const Patches& a, int64_t r0, int64_t M, int64_t N, const float* bp, float* C, int64_t ldc) {
  constexpr int W = U * VL;
  const int64_t P = a.Ho * a.Wo, K = a.kh * a.kw * a.cg, panels = (N + W - 1) / W;
  const int64_t ldn = a.ldn ? a.ldn : a.H * a.W * a.ldp;
  float* panel = Nchw ? scratch<float>(kPackASlot, K * R) : nullptr;
  // The pixel of the next row (image n, output row oh, column ow), stepped along (next_pixel).
  int64_t n = r0 / P, oh = (r0 - n * P) / a.Wo, ow = r0 - n * P - oh * a.Wo;
  for (int64_t ir = 0; ir < M; ir += R) {
    const int64_t mr = std::min<int64_t>(R, M - ir);
    PatchRows<R> rows;
    rows.run = mr == R && a.sw == 1;
    for (int i = 0; i < R; ++i) {
      if (i >= mr) {  // past the last row: every tap in the "padding"
        rows.img[i] = a.x;
        rows.ih0[i] = INT64_MIN / 4;
        rows.iw0[i] = 0;
        continue;
      }
      rows.img[i] = a.x + n * ldn;
      rows.ih0[i] = oh * a.sh - a.pt;
      rows.iw0[i] = ow * a.sw - a.pl;
      if (i > 0 && (rows.img[i] != rows.img[0] || rows.ih0[i] != rows.ih0[0] || rows.iw0[i] != rows.iw0[0] + i))
        rows.run = false;
      next_pixel(n, oh, ow, a);
    }
    if constexpr (Nchw) {
      // The block's A (K x R: every tap's R pixels per channel) packed once for all column
      // panels; then per panel and KC block the packed microkernel (the chains of sgemm()) into a
      // row-major tile, written out transposed: C(i, j) at C[j*ldc + i].
      for (int64_t k = 0; k < K;) {
        const int64_t t = k / a.cg, len = a.cg, ti = t / a.kw, tj = t - ti * a.kw;
        pack_tap_nchw<R>(a, rows, ti, tj, 0, len, panel + k * R);
        k += len;
      }
      alignas(64) float tile[R * W];
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t nr = std::min<int64_t>(W, N - p * W);
        for (int64_t pc = 0; pc < K; pc += KC)
          ukernel<R, U>(std::min<int64_t>(KC, K - pc), panel + pc * R, bp + p * K * W + pc * W, tile, W, pc > 0, R, W);
        float* c = C + ir + p * W * ldc;
        for (int64_t j = 0; j < nr; ++j)
          for (int64_t i = 0; i < mr; ++i) c[j * ldc + i] = tile[i * W + j];
      }
    } else {
      for (int64_t p = 0; p < panels; ++p)
        patch_kernel<R, U>(a, rows, K, bp + p * K * W, C + ir * ldc + p * W, ldc, mr, std::min<int64_t>(W, N - p * W));
    }
  }
}

// ---- the transposed patches as A (sgemm_patches_t: the NHWC weight gradient) -------------------
// A(i, k) = column i of pixel r0 + k's patch. Per KC block of pixels a table holds each pixel's
// pointer for every tap (into x, or the zeros); a block of R rows inside one tap reads its R
// values of pixel k as R consecutive floats at table[tap][k] + c0, so A is never packed. (The
// table tap-major, so that a kernel call's KC pointers lie in 32 lines rather than one line a
// pixel: 3x3 64 -> 64 at 56x56, N = 32, NHWC weight gradient, 2 threads, 1.075x; 16 and 128
// channels 1.06x and 1.05x; Intel, AVX-512.) Rows
// that straddle a tap boundary (or pass M) are packed into one panel first. Chains as sgemm():
// one per element and KC block of pixels, started at zero, then stored or added to C.

// c (R x U*VL block, mr x nr valid) (+)= A rows [c0, c0+R) of tap t . b panel, over kc pixels;
// meanwhile a share of pre's lines (when given) prefetched into L2, one a step.
template <int R, int U>
void ind_kernel(int64_t kc, const float* const* ind, int64_t t, int64_t c0, const float* __restrict b, float* c,
                int64_t ldc, bool acc, int64_t mr, int64_t nr, RowsPrefetch* pre) {
  constexpr int W = U * VL;
  V r[R][U];
  zero_block<R, U>(r);
  const float* const* q = ind + t * KC;
  int64_t pfl = 0;
  const char* pf = pre ? pre->take(kc, &pfl) : nullptr;
  for (int64_t k = 0; k < kc; ++k) {
    if (k < pfl) __builtin_prefetch(pf + 64 * k, 0, 2);
    rank1_step<R, U>(r, q[k] + c0, b);
    b += W;
  }
  store_block<R, U>(r, c, ldc, acc, mr, nr);
}

template <int R, int U>
void patches_t_blocked(int64_t M, int64_t N, int64_t K, const Patches& a, int64_t r0, Operand B, float* C,
                       int64_t ldc, bool accumulate) {
  constexpr int W = U * VL;
  const int64_t k2 = a.kh * a.kw, P = a.Ho * a.Wo;
  float* bp = scratch<float>(kPackBSlot, KC * round_up(std::min<int64_t>(N, NC), W));
  // The pointer table (k2 taps x KC pixels), then one packed panel (KC x R floats).
  const float** ind = scratch<const float*>(kPackASlot, KC * k2 + KC * R / 2 + 16);
  float* panel = reinterpret_cast<float*>(ind + KC * k2 + 8);
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min<int64_t>(KC, K - pc);
    const bool acc = accumulate || pc > 0;
    // (the pixel stepped along from the block's first: next_pixel)
    int64_t n = (r0 + pc) / P, oh = (r0 + pc - n * P) / a.Wo, ow = r0 + pc - n * P - oh * a.Wo;
    for (int64_t k = 0; k < kc; ++k) {
      const float* img = a.x + n * (a.ldn ? a.ldn : a.H * a.W * a.ldp);
      for (int64_t ti = 0; ti < a.kh; ++ti) {
        const int64_t ih = oh * a.sh - a.pt + ti * a.dh;
        for (int64_t tj = 0; tj < a.kw; ++tj) {
          const int64_t iw = ow * a.sw - a.pl + tj * a.dw;
          ind[(ti * a.kw + tj) * KC + k] =
              ih >= 0 && ih < a.H && iw >= 0 && iw < a.W ? img + (ih * a.W + iw) * a.ldp : a.zeros;
        }
      }
      next_pixel(n, oh, ow, a);
    }
    // The next KC block of pixels brought into L2 while this one runs: B's rows (dy, which the
    // next block packs first) and, for a dense convolution (the pixels hold only the group's
    // channels), the input rows its patches read, from the first tap row of its first pixel to
    // the last tap row of its last, within one image. Each kernel call requests its share twice
    // over, a line a step, so the lines are asked for over the first half of the block. Intel
    // AVX-512, 3x3 64 -> 64 at 56x56, N = 32, 2 threads, variants alternating in one process:
    // 1.09x (N = 4, 1 thread: 1.03-1.04x; 128 at 28x28 and 256 at 14x14 level).
    RowsPrefetch pst, *pre = nullptr;
    if (pc + KC < K && B.cs == 1) {
      const int64_t kn = std::min<int64_t>(KC, K - pc - KC);
      const int64_t f = r0 + pc + KC, nf = f / P, ohf = (f - nf * P) / a.Wo;
      const int64_t l = f + kn - 1, nl = l / P, ohl = (l - nl * P) / a.Wo;
      if (a.cg == a.ldp && nl == nf) {
        const int64_t h0 = std::max<int64_t>(0, ohf * a.sh - a.pt);
        const int64_t h1 = std::min<int64_t>(a.H - 1, ohl * a.sh - a.pt + (a.kh - 1) * a.dh);
        const float* img = a.x + nf * (a.ldn ? a.ldn : a.H * a.W * a.ldp);
        if (h1 >= h0) pst.add(img + h0 * a.W * a.ldp, (h1 - h0 + 1) * a.W * a.ldp);
      }
      if (B.rs == N) pst.add(B.p + (pc + KC) * B.rs, kn * B.rs);
      const int64_t calls = (M + R - 1) / R * ((std::min<int64_t>(N, NC) + W - 1) / W);
      pst.share = 2 * pst.even_share(calls);
      pre = &pst;
    }
    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min<int64_t>(NC, N - jc);
      pack_b<W>(B, pc, kc, jc, nc, nullptr, bp);
      // Every block of rows inside one tap (R divides cg): the column panels outside the rows, so
      // that a panel of B (KC x W, 32 KiB) stays in L1 over all the row blocks instead of the
      // panels alternating through L2 (Intel AVX-512, N = 32, the two orders alternating in one
      // process: 3x3 64 -> 64 at 56x56 1.02-1.05x, at 32x32 1.04x, 128 at 28x28 1.01-1.08x, 256
      // at 14x14 level).
      if (a.cg % R == 0) {
        for (int64_t jr = 0; jr < nc; jr += W)
          for (int64_t ir = 0; ir < M; ir += R) {
            const int64_t t = ir / a.cg, c0 = ir - t * a.cg;
            ind_kernel<R, U>(kc, ind, t, c0, bp + jr * kc, C + ir * ldc + jc + jr, ldc, acc, R,
                             std::min<int64_t>(W, nc - jr), pre);
          }
        continue;
      }
      for (int64_t ir = 0; ir < M; ir += R) {
        const int64_t mr = std::min<int64_t>(R, M - ir), t = ir / a.cg, c0 = ir - t * a.cg;
        const bool direct = mr == R && c0 + R <= a.cg;
        if (!direct)  // rows across a tap boundary or past M: pack them
          for (int64_t k = 0; k < kc; ++k)
            for (int i = 0; i < R; ++i) {
              const int64_t row = ir + i, tt = row / a.cg;
              panel[k * R + i] = row < M ? ind[tt * KC + k][row - tt * a.cg] : 0.0f;
            }
        for (int64_t jr = 0; jr < nc; jr += W) {
          float* c = C + ir * ldc + jc + jr;
          const int64_t nr = std::min<int64_t>(W, nc - jr);
          if (direct)
            ind_kernel<R, U>(kc, ind, t, c0, bp + jr * kc, c, ldc, acc, mr, nr, pre);
          else
            ukernel<R, U>(kc, panel, bp + jr * kc, c, ldc, acc, mr, nr);
        }
      }
    }
  }
}


// ---- operands read in place, B resident (sgemm_rows, sgemm_tn: the NHWC 1x1 convolutions) ------
// In an NHWC 1x1 convolution every operand is already a row-major matrix (x: pixels x channels),
// and the reductions are short (16-256 channels), so packing A costs about as much as the
// arithmetic. These kernels read A in place (broadcasts from R rows, or from R consecutive
// columns of A^T), B from a panel packed once per call (forward) or in place (weight gradient),
// with register blocks sized by N (VL..4*VL columns). Same chains as sgemm(): the same bits.

// c (mr x nr of an R x U*VL block, row stride ldc) (+)= A . B over kc, B at b[k*ldb + v*VL]:
// AM 0: A a packed panel, a[k*R + i]; AM 1: A row-major, a[i*lda + k]; AM 2: A^T row-major,
// a[k*lda + i].
// pf: a region of pfl lines to prefetch into L1, one line a step; pf2: one of pfl2 lines (at most
// 2*kc) to prefetch into L2, two lines a step; pfc: the R rows (pfc_ld bytes apart) of the C block
// the next call stores, prefetched for writing into L1, one line a step. (The rows pass: each
// block's stores otherwise waited on reading the lines they overwrite from memory, 1x1 forward
// and fused backward calls 1.02-1.17x.)
// Pro (1: affine, 2: affine + ReLU): each B vector goes through fma(psc, b, psh) (one rounding, as
// std::fma) and max(., 0) as it is loaded (psc, psh: U*VL columns).
// init: the registers start from the R x U*VL block at init instead of zero; keep: they are stored
// there as they are instead of into c (a chain split over calls, each continuing the last one's).
#if defined(__AVX512F__)
inline V vfma(V a, V b, V c) { return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
#elif defined(__AVX2__)
inline V vfma(V a, V b, V c) { return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#endif

template <int R, int U, int AM, int Pro, bool Copy>
void ukernel_s(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b, int64_t ldb, float* c,
               int64_t ldc, bool acc, int64_t mr, int64_t nr, const char* pf, int64_t pfl, const float* psc,
               const float* psh, const PanelEp* ep, const float* init, float* keep, float* __restrict bcopy,
               const char* pf2, int64_t pfl2, const char* pfc, int64_t pfc_ld, int64_t pfd, const float* pfn) {
  constexpr int W = U * VL;
  constexpr int CL = (W * int(sizeof(float)) + 63) / 64;  // lines of a row of the C block
  // pfd > 0 (Copy): B's row pfd steps ahead into L1, on into the next panel's rows (pfn) over the
  // last pfd steps, as ukernel_fr (B read in place, rows a page apart).
  const bool split = (reinterpret_cast<uintptr_t>(b) & 63) != 0;
  const char* pb = reinterpret_cast<const char*>(b + pfd * ldb);
  const int64_t pstep = ldb * int64_t(sizeof(float));
  V r[R][U];
  if (init) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < U; ++v) r[i][v] = vload(init + i * W + v * VL);
  } else {
    zero_block<R, U>(r);
  }
  V sv[U], hv[U];
  if constexpr (Pro > 0)
    for (int v = 0; v < U; ++v) {
      sv[v] = vload(psc + v * VL);
      hv[v] = vload(psh + v * VL);
    }
  const auto step = [&](int64_t k, auto prefetching) __attribute__((always_inline)) {
    if constexpr (decltype(prefetching)::value) {
      if (k < pfl) __builtin_prefetch(pf + 64 * k, 0, 3);
      if (2 * k < pfl2) __builtin_prefetch(pf2 + 128 * k, 0, 2);
      if (2 * k + 1 < pfl2) __builtin_prefetch(pf2 + 128 * k + 64, 0, 2);
      if (pfc && k < R * CL) __builtin_prefetch(pfc + (k / CL) * pfc_ld + (k % CL) * 64, 1, 3);
      if (Copy && pfd > 0) {  // (only the lazy packing's calls take it)
        if (k == kc - pfd) pb = reinterpret_cast<const char*>(pfn);
#pragma GCC unroll 4
        for (int v = 0; v < U; ++v) __builtin_prefetch(pb + 64 * v, 0, 3);
        if (split) __builtin_prefetch(pb + 64 * U - 4, 0, 3);
        pb += pstep;
      }
    }
    V bv[U];
#pragma GCC unroll 4
    for (int v = 0; v < U; ++v) {
      bv[v] = vload(b + v * VL);
#if defined(__AVX2__)
      if constexpr (Pro > 0) bv[v] = vfma(sv[v], bv[v], hv[v]);
      if constexpr (Pro > 1) bv[v] = vrelu(bv[v]);  // std::max(v, 0)
#endif
      if constexpr (Copy) vstore(bcopy + k * W + v * VL, bv[v]);
    }
#pragma GCC unroll 24
    for (int i = 0; i < R; ++i) {
      const V ai = vbroadcast(AM == 1 ? a[i * lda] : a[i]);
#pragma GCC unroll 4
      for (int v = 0; v < U; ++v) r[i][v] = ai * bv[v] + r[i][v];
    }
    a += AM == 0 ? R : AM == 1 ? 1 : lda;
    b += ldb;
  };
  // The steps that prefetch come first, then a loop without their tests: at most R*CL (the C
  // block's lines), pfl and pfl2/2 steps prefetch, and the rest of kc (all of a call that takes
  // none, three of four panels' calls in rows_blocked) ran three compare-and-branch pairs a step
  // beside 12 FMAs at AVX2, where the loop was then bound by the front end as much as by the FMA
  // pipes (Zen 3, 2 threads, whole training steps alternating in one process: resnext_small
  // 1.066x in two runs, mobilenet_small 1.10-1.11x). The same steps in the same order: the same bits.
#if defined(__AVX2__) && !defined(__AVX512F__)
  // AVX2: the next rows of A (pf, at most R*kc*4 bytes: 12 lines at kc = 32) and the next C block
  // (pfc) requested at once before the loop, so that only the caller's L2 prefetch (pf2) keeps
  // steps with tests, which at a short reduction were a third of the steps or more. Zen 3, 2
  // threads, N = 64, variants alternating in one process, 1x1 NHWC forward with statistics:
  // 32->64 @32 1.06x, 32->32 1.06x, 32->16 1.12x, 16->32 1.02x, 64->64 @16 1.07x, 128->256 @16
  // 1.01x (1 thread 0.99-1.11x); whole training steps alternating (21 rounds, two runs):
  // resnext_small 1.03x / 1.03x, mobilenet_small 1.00x / 1.05x. Prefetches only: the same bits.
  if (!(Copy && pfd > 0)) {
    for (int64_t l = 0; l < pfl; ++l) __builtin_prefetch(pf + 64 * l, 0, 3);
    if (pfc)
      for (int64_t l = 0; l < int64_t(R) * CL; ++l) __builtin_prefetch(pfc + (l / CL) * pfc_ld + (l % CL) * 64, 1, 3);
    pfl = 0;
    pfc = nullptr;
  }
#endif
  const int64_t kp = Copy && pfd > 0
                         ? kc
                         : std::min<int64_t>(kc, std::max<int64_t>({pfl, (pfl2 + 1) / 2, pfc ? int64_t(R) * CL : 0}));
  int64_t k = 0;
  for (; k < kp; ++k) step(k, std::true_type{});
  for (; k < kc; ++k) step(k, std::false_type{});
  if (keep) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < U; ++v) vstore(keep + i * W + v * VL, r[i][v]);
    return;
  }
  if (ep)
    store_block_ep<R, U>(r, c, ldc, acc, mr, nr, *ep);
  else
    store_block<R, U>(r, c, ldc, acc, mr, nr);
}

// AVX2: a C of N columns that 3-vector panels pad less than 2-vector ones (N = 24, 72, 120 ...
// but not 48 or 96): a 4 x 3-vector register block (12 accumulators, as 6 x 2) instead of 6 x 2,
// whose last panel of a 24-wide C is half empty (1024 x 24 x 144, 1 thread: 61 -> 88 GFLOP/s).
// Where both pad alike 6 x 2 stays (1024 x 48 x 144: 88 against 63 GFLOP/s). One FMA chain per
// element either way: the same bits.
#if defined(__AVX2__) && !defined(__AVX512F__)
inline bool three_wide(int64_t N) { return N > 2 * VL && pad_to(N, 3 * VL) < pad_to(N, 2 * VL); }
#endif

// The register block for a C of N columns: U vectors wide (up to 4 at AVX-512), R rows, about
// 24 accumulators at AVX-512 and 12 at AVX2 (as the MR x NR kernels). FN<R, U>(args...).
#if defined(__AVX512F__)
#define CNNKIT_WITH_BLOCK(N, FN, ...)                                                            \
  ((N) <= VL       ? FN<16, 1>(__VA_ARGS__)                                                       \
   : (N) <= 2 * VL ? FN<8, 2>(__VA_ARGS__)                                                        \
   : (N) <= 3 * VL ? FN<8, 3>(__VA_ARGS__)                                                        \
                   : FN<6, 4>(__VA_ARGS__))
int64_t rows_width(int64_t N) { return N <= VL ? VL : N <= 2 * VL ? 2 * VL : N <= 3 * VL ? 3 * VL : 4 * VL; }
#elif defined(__AVX2__)
#define CNNKIT_WITH_BLOCK(N, FN, ...) \
  ((N) <= VL ? FN<12, 1>(__VA_ARGS__) : three_wide(N) ? FN<4, 3>(__VA_ARGS__) : FN<6, 2>(__VA_ARGS__))
int64_t rows_width(int64_t N) { return N <= VL ? VL : three_wide(N) ? 3 * VL : 2 * VL; }
#else
#define CNNKIT_WITH_BLOCK(N, FN, ...) ((N) <= VL ? FN<8, 1>(__VA_ARGS__) : FN<4, 2>(__VA_ARGS__))
int64_t rows_width(int64_t N) { return N <= VL ? VL : 2 * VL; }
#endif

// sgemm_tn's block also looks at M (the rows of a small result, dW): of R1 and R2 rows, the one
// that pads M less (R1 on a tie).
#define CNNKIT_PICK_R(M, R1, R2, U, FN, ...) \
  (pad_to(M, R2) < pad_to(M, R1) ? FN<R2, U>(__VA_ARGS__) : FN<R1, U>(__VA_ARGS__))
#if defined(__AVX512F__)
#define CNNKIT_WITH_TN_BLOCK(M, N, PRO, FN, ...)                                                \
  ((N) <= VL       ? CNNKIT_PICK_R(M, 16, 8, 1, FN, __VA_ARGS__)                               \
   : (N) <= 2 * VL ? CNNKIT_PICK_R(M, 12, 8, 2, FN, __VA_ARGS__)                               \
   : (N) <= 3 * VL ? FN<8, 3>(__VA_ARGS__)                                                      \
                   : CNNKIT_PICK_R(M, 6, 4, 4, FN, __VA_ARGS__))
int64_t tn_rows(int64_t M, int64_t N) {
  const int64_t r1 = N <= VL ? 16 : N <= 2 * VL ? 12 : N <= 3 * VL ? 8 : 6;
  const int64_t r2 = N <= VL ? 8 : N <= 2 * VL ? 8 : N <= 3 * VL ? 8 : 4;
  return pad_to(M, r2) < pad_to(M, r1) ? r2 : r1;
}
#elif defined(__AVX2__)
// Two vectors of columns: 6 x 2 (12 accumulators) wherever it pads M by at most a quarter more
// than 4 x 2, not only where it pads M less. 4 x 2 keeps 8 FMA chains in flight, just what two FMA
// pipes of latency 4 need, and every late load of the loop then costs cycles (Zen 3, 2 threads,
// dW of a 1x1 NHWC over 64 images, variants alternating in one process: 32->32 @32 1.13x, 16->32
// @32 1.17x, 32->16 @32 (M = 16, padded to 18) 1.06x, 32->64 @32 1.24x, 64->64 @16 1.09x, with a
// packed prologue 64->64 @16 1.16x, 64->128 @8 1.20x). Where the prologue runs in the kernel (pro:
// its 4 vectors of scale and shift) 6 x 2 spills and keeps the rule (32->32 @32 0.96x). One chain
// per element either way: the same bits.
inline bool tn_six(int64_t M, int64_t N, bool pro) {
  if (pro && !tn_lays_out_q(M, N, 6, 2 * VL)) return pad_to(M, 6) <= pad_to(M, 4);
  return 4 * pad_to(M, 6) <= 5 * pad_to(M, 4);
}
#define CNNKIT_WITH_TN_BLOCK(M, N, PRO, FN, ...)               \
  ((N) <= VL             ? CNNKIT_PICK_R(M, 12, 8, 1, FN, __VA_ARGS__) \
   : tn_six(M, N, PRO) ? FN<6, 2>(__VA_ARGS__)                         \
                         : FN<4, 2>(__VA_ARGS__))
int64_t tn_rows(int64_t M, int64_t N) {
  if (N > VL) return tn_six(M, N, false) ? 6 : 4;
  return pad_to(M, 8) < pad_to(M, 12) ? 8 : 12;
}
#else
#define CNNKIT_WITH_TN_BLOCK(M, N, PRO, FN, ...) \
  ((N) <= VL ? CNNKIT_PICK_R(M, 8, 4, 1, FN, __VA_ARGS__) : FN<4, 2>(__VA_ARGS__))
int64_t tn_rows(int64_t M, int64_t N) {
  const int64_t r1 = N <= VL ? 8 : 4, r2 = 4;
  return pad_to(M, r2) < pad_to(M, r1) ? r2 : r1;
}
#endif

template <int R, int U>
void rows_pack_b(int64_t K, int64_t N, Operand B, float* dst) {
  pack_b<U * VL>(B, 0, K, 0, N, nullptr, dst);
}

// The prologue of rows [0, mr) of A (row stride lda), columns [k0, k0 + kc), into d (R x kc,
// rows past mr zero): vectorised along the columns, one fma (and max) per value as pro().
void prologue_block(const float* A, int64_t lda, int64_t mr, int R, int64_t k0, int64_t kc, const Prologue* f,
                    float* __restrict d) {
  // The prologue's fields as locals, read once: read through f inside the loops, GCC reloaded
  // f->relu (and the closure's f) after every store, a chain of dependent loads per vector (in
  // cache, 4 images: 17 cycles a vector, 13% of mobilenet_small's 32->64 forward pass at 32x32).
  const bool act = active(f);
  const float* __restrict sc = act && f->scale ? f->scale + k0 : nullptr;
  const float* __restrict sh = act && f->scale ? f->shift + k0 : nullptr;
  const bool relu = act && f->relu;
  with_channels<float>(kc, [&](auto cc) {
    constexpr int64_t CC = decltype(cc)::value;
    const int64_t n = CC ? CC : kc;
    // one row through the prologue, RELU fixed (vectorised along the columns, one fma (and max)
    // per value as pro())
    auto row = [&](const float* __restrict s, float* __restrict o, auto relu_c) {
      constexpr bool RELU = decltype(relu_c)::value;
      int64_t k = 0;
#if defined(__AVX2__)
      // In vectors: GCC left the fixed-count loops below scalar (a vfmadd132ss and a blend a
      // value; 16->32 with a prologue on the rows pass spent 38% of its time here).
      for (; k + VL <= n; k += VL) {
        V x = sc ? vfma(vload(sc + k), vload(s + k), vload(sh + k)) : vload(s + k);  // one rounding, as std::fma
        if constexpr (RELU) x = x < V{} ? V{} : x;                                   // std::max(x, 0)
        vstore(o + k, x);
      }
#endif
      if (sc) {
        if constexpr (RELU)
          for (; k < n; ++k) o[k] = std::max(std::fma(sc[k], s[k], sh[k]), 0.0f);
        else
          for (; k < n; ++k) o[k] = std::fma(sc[k], s[k], sh[k]);
      } else {
        for (; k < n; ++k) o[k] = std::max(s[k], 0.0f);
      }
    };
    for (int64_t i = 0; i < R; ++i) {
      float* __restrict o = d + i * n;
      if (i >= mr) {
        std::fill(o, o + n, 0.0f);
        continue;
      }
      const float* __restrict s = A + i * lda + k0;
      if (!act)
        std::memcpy(o, s, n * sizeof(float));
      else if (relu)
        row(s, o, std::true_type{});
      else
        row(s, o, std::false_type{});
    }
  });
}

// Flattened (its calls inlined): the kernel's two dozen arguments went through the stack on every
// call, a call per block of R rows and panel, which at the 1x1 convolutions' short reductions
// (16-64 steps) was a visible part of each call. Zen 3, 2 threads, variants alternating in one
// process, replays of resnext_small's NHWC 1x1 calls: forwards with statistics (32->32, 16->32,
// 32->16 @32) 1.04-1.05x, fused input gradients 1.00-1.08x; mobilenet_small's 1.00-1.03x; whole
// steps level within their noise (1.00x, 1.00-1.05x). (sgemm_tn's tn_blocked flattened: level.)
// The same operations in the same order: the same bits. AVX-512 (not measured) keeps the calls.
#if defined(__AVX2__) && !defined(__AVX512F__)
#define CNNKIT_ROWS_FLATTEN __attribute__((flatten))
#else
#define CNNKIT_ROWS_FLATTEN
#endif
template <int R, int U>
CNNKIT_ROWS_FLATTEN void rows_blocked(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* bp,
                                      float* C, int64_t ldc, const Prologue* pa, const RowsEpilogue* ep,
                                      RowsPrefetch* pre) {
  constexpr int W = U * VL;
  const int64_t panels = (N + W - 1) / W;
  const bool has = active(pa);
  float* buf = scratch<float>(kPackASlot, R * std::max<int64_t>(1, std::min<int64_t>(K, KC)));
  for (int64_t ir = 0; ir < M; ir += R) {
    const int64_t mr = std::min<int64_t>(R, M - ir);
    // The broadcasts walk R rows at once, a pattern the hardware prefetchers follow poorly when A
    // comes from memory (sgemm 65536 x 32 x 128, 1 thread: 66 GFLOP/s against 111 with A in L2):
    // the first panel's kernel fetches the next block of rows (contiguous when lda == K), a line
    // per step of its loop, at AVX2 all at once before it (prefetches past the end of A do not
    // fault).
    const char* pf = lda == K ? reinterpret_cast<const char*>(A + (ir + R) * lda) : nullptr;
    for (int64_t pc = 0; pc < K || pc == 0; pc += KC) {  // (K == 0: one empty block, for the epilogue)
      const int64_t kc = std::min<int64_t>(KC, K - pc);
      const float* a = A + ir * lda + pc;
      int64_t la = lda;
      if (has || mr < R) {  // the prologue, or a last partial block of rows: an R x kc copy
        prologue_block(A + ir * lda, lda, mr, R, pc, kc, pa, buf);
        a = buf;
        la = kc;
      }
      const bool last = pc + kc == K;
      for (int64_t p = 0; p < panels; ++p) {
        PanelEp pe{};
        if (ep && last)
          pe = PanelEp{ep->bias ? ep->bias + p * W : nullptr, ep->res ? ep->res + ir * ep->ldres + p * W : nullptr,
                       ep->ldres, ep->relu};
        // The caller's prefetch: the next 2*kc lines of its last region, from the first panel's calls.
        int64_t pfl2 = 0;
        const char* pf2 = pre && p == 0 ? pre->take(2 * kc, &pfl2) : nullptr;
        ukernel_s<R, U, 1>(kc, a, la, bp + p * K * W + pc * W, W, C + ir * ldc + p * W, ldc, pc > 0, mr,
                           std::min<int64_t>(W, N - p * W), p == 0 && pf ? pf + pc * R * 4 : nullptr,
                           p == 0 && pf ? (R * kc * 4 + 63) / 64 : 0, nullptr, nullptr, ep && last ? &pe : nullptr,
                           nullptr, nullptr, nullptr, pf2, pfl2,
                           last && ir + R < M ? reinterpret_cast<const char*>(C + (ir + R) * ldc + p * W) : nullptr,
                           ldc * int64_t(sizeof(float)));
      }
    }
  }
}

// Q rows [k0, k0 + kc) x columns [j0, j0 + n) into panels of W columns, dst[(p*kc + k)*W + j]
// (zero past n), through a per-column prologue f (column j0 + j of f's arrays) when given.
template <int W>
void pack_cols(const float* Q, int64_t lq, int64_t k0, int64_t kc, int64_t j0, int64_t n, const Prologue* f,
               float* dst) {
  const int64_t panels = (n + W - 1) / W;
  const bool has = active(f);
  for (int64_t k = 0; k < kc; ++k) {
    const float* s = Q + (k0 + k) * lq + j0;
    for (int64_t p = 0; p < panels; ++p) {
      float* __restrict o = dst + (p * kc + k) * W;
      const float* __restrict q = s + p * W;
      const int64_t cols = std::min<int64_t>(W, n - p * W), c0 = j0 + p * W;
      if (cols == W && has && f->scale) {  // a whole panel
        const float* __restrict sc = f->scale + c0;
        const float* __restrict sh = f->shift + c0;
#if defined(__AVX2__)
        // (in vectors: GCC left the loop below scalar, one vfmadd132ss a value)
#pragma GCC unroll 4
        for (int v = 0; v < W / VL; ++v) {
          V x = vfma(vload(sc + v * VL), vload(q + v * VL), vload(sh + v * VL));  // one rounding, as std::fma
          if (f->relu) x = x < V{} ? V{} : x;                                    // std::max(x, 0)
          vstore(o + v * VL, x);
        }
#else
        if (f->relu)
          for (int j = 0; j < W; ++j) o[j] = std::max(std::fma(sc[j], q[j], sh[j]), 0.0f);
        else
          for (int j = 0; j < W; ++j) o[j] = std::fma(sc[j], q[j], sh[j]);
#endif
        continue;
      }
      if (!has) {
        for (int64_t j = 0; j < cols; ++j) o[j] = q[j];
      } else if (f->scale) {
        const float* __restrict sc = f->scale + c0;
        const float* __restrict sh = f->shift + c0;
        if (f->relu)
          for (int64_t j = 0; j < cols; ++j) o[j] = std::max(std::fma(sc[j], q[j], sh[j]), 0.0f);
        else
          for (int64_t j = 0; j < cols; ++j) o[j] = std::fma(sc[j], q[j], sh[j]);
      } else {
        for (int64_t j = 0; j < cols; ++j) o[j] = std::max(q[j], 0.0f);
      }
      for (int64_t j = cols; j < W; ++j) o[j] = 0.0f;
    }
  }
}

template <int R, int U>
void tn_blocked(int64_t M, int64_t N, int64_t K, const float* P, int64_t lp, const float* Q, int64_t lq, float* C,
                int64_t ldc, bool accumulate, const Prologue* pq, RowsPrefetch* pre) {
  constexpr int W = U * VL;
  const int64_t panels = (N + W - 1) / W, nw = panels * W;
  const bool has = active(pq), tail = N % W != 0;
  const int64_t kcm = std::min<int64_t>(K, KC);
  // With FMA hardware and up to two vectors of columns (room in the registers), the prologue runs
  // on Q's vectors inside the kernel instead of laying out a copy of Q: the same values.
  // Q's block is read once per block of R rows of C and P's strip once per panel of W columns.
  // Read in place they come as kc lines lq (lp) floats apart: a 256 x 128 result's strips fill L1
  // twice over and every kernel call refetches them from L2 (AVX2, 1 thread, dW 256 x 128 over
  // 16384 pixels: 36 GFLOP/s against OpenBLAS's 80). With 3+ panels of columns (and 3+ blocks of
  // rows) both are laid out first: Q's block in panels (its prologue applied there), P's strip R
  // wide. With one or two panels the lines are used whole or half and the copies cost more than
  // they save (measured at AVX2: 32->16 ... 64->32 slower by 5-35%; 64x64, 128x64, 256x128
  // faster by 1.3x, 1.3x, 1.7x). The same products in the same order: the same bits. Measured at
  // AVX2 only (the machine of that session had no AVX-512): AVX-512 keeps the in-place reads.
#if defined(__AVX512F__)
  const bool packq = false;
#else
  const bool packq = tn_lays_out_q(M, N, R, W);
#endif
  const bool packp = tn_packs_p(panels);
#if defined(__AVX2__)
  const bool inkernel = has && U <= 2 && !packq;
#else
  const bool inkernel = false;
#endif
  const bool qpanels = (has && !inkernel) || packq;
  // With the prologue in the kernel and more than one block of rows, the first block's kernel
  // also writes the panel's vectors it computed (prologue applied) to a copy in L1, and the other
  // blocks read that copy with the plain kernel: each value of Q goes through the prologue once
  // instead of once per block of rows (the fma and max of 2 vectors a step beside 8 FMAs at 4 x 2).
  // The same values into the same chains: the same bits. Zen 3, cold-free replays alternating in
  // one process, the fused 1x1 input + weight gradient passes of resnext_small (32->16 @32, 16->32
  // @32, 32->64 @16): 1.03x, 1.02x, 1.05x on 1 thread, 1.01-1.04x on 2; mobilenet_small's 32->64
  // @32 1.04x; the steps within their noise.
  const bool lazy = inkernel && M > R;
  alignas(64) float ones[W], zeros[W];
  for (int j = 0; j < W; ++j) ones[j] = 1.0f, zeros[j] = 0.0f;
  // [ Q's block in panels (kcm x nw) | Q's last partial panel (kcm x W), then (lazy) the first
  // block's copies of the whole panels of a sub-block (kcm x nw at most) ] [ P's strip ]
  float* qb = scratch<float>(kPackBSlot, kcm * (qpanels ? nw : W) + (lazy ? kcm * nw : 0));
  float* qlazy = lazy ? qb + kcm * W : nullptr;
  float* pt = scratch<float>(kPackASlot, kcm * R);
  // Read in place, a KC block of P's and Q's rows (256 rows of 32 + 32 channels: 64 KiB) does not
  // stay in L1 while every block of C goes over it. At AVX2 the chains then run in sub-blocks of
  // 64 rows: every block of C goes over one sub-block (16 KiB at 32 + 32 channels) before the
  // next, its registers kept in t in between, so each chain is still one kernel call's, the same
  // bits. AVX2, 1 thread, dW over 65536 pixels: 32->32 with the prologue 37-47 -> 48-60
  // GFLOP/s, 32->16 without it 46-56 -> 59-77; with packed operands (3+ panels) level, and
  // not used there. AVX-512 (not measured) keeps whole KC blocks.
  const int64_t ksub = tn_ksub(packp);
  const int64_t rblocks = (M + R - 1) / R;
  float* t = ksub < kcm ? scratch<float>(kTnKeepSlot, rblocks * panels * R * W) : nullptr;
  for (int64_t pc = 0; pc < K; pc += KC) {
    const int64_t kc = std::min<int64_t>(KC, K - pc);
    const bool acc = accumulate || pc > 0;
    if (qpanels)
      pack_cols<W>(Q, lq, pc, kc, 0, N, pq, qb);  // panels of W: qb[(p*kc + k)*W + j]
    else if (tail)  // (the in-kernel prologue reads whole panels of Q: the last one is laid out)
      pack_cols<W>(Q, lq, pc, kc, (panels - 1) * W, N - (panels - 1) * W, pq, qb);
    for (int64_t k0 = 0; k0 < kc; k0 += ksub) {
      const int64_t kn = std::min<int64_t>(ksub, kc - k0);
      const bool first = k0 == 0, last = k0 + kn == kc;
      for (int64_t ir = 0; ir < M; ir += R) {
        const int64_t mr = std::min<int64_t>(R, M - ir);
        const bool direct = mr == R && !packp;  // the kernel reads P in place
        // P's strip laid out R wide: whole rows of R by fixed-size copies (two moves at R = 6;
        // the compare-and-select per value took a sixth of the packed 256 x 128 dW's time at
        // AVX2), a last partial block value by value with zeros past mr.
        if (!direct && mr == R)
          for (int64_t k = 0; k < kn; ++k) std::memcpy(pt + k * R, P + (pc + k0 + k) * lp + ir, R * sizeof(float));
        else if (!direct)
          for (int64_t k = 0; k < kn; ++k)
            for (int i = 0; i < R; ++i) pt[k * R + i] = i < mr ? P[(pc + k0 + k) * lp + ir + i] : 0.0f;
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t nr = std::min<int64_t>(W, N - p * W);
          const float* b = Q + (pc + k0) * lq + p * W;
          int64_t ldb = lq;
          if (qpanels) {
            b = qb + p * kc * W + k0 * W;
            ldb = W;
          } else if (nr < W) {
            b = qb + k0 * W;
            ldb = W;
          }
          float* c = C + ir * ldc + p * W;
          float* tb = t ? t + ((ir / R) * panels + p) * R * W : nullptr;
          const float* init = first ? nullptr : tb;
          float* keep = last ? nullptr : tb;
          // (a packed strip is P^T read in place with a row stride of R: the same kernel)
          const float* pa = direct ? P + (pc + k0) * lp + ir : pt;
          const int64_t la = direct ? lp : R;
          int64_t pfl2 = 0;  // (the caller's prefetch, as in rows_blocked)
          const char* pf2 = pre && p == 0 ? pre->take(2 * kn, &pfl2) : nullptr;
          const bool from_copy = lazy && nr == W && ir > 0;  // (the copy the first block wrote)
          if (from_copy) {
            b = qlazy + p * kn * W;
            ldb = W;
          }
          if (inkernel && nr == W && !from_copy) {  // U <= 2 here
            if constexpr (U <= 2) {
              const float* sc = pq->scale ? pq->scale + p * W : ones;
              const float* sh = pq->scale ? pq->shift + p * W : zeros;
              float* cp = lazy ? qlazy + p * kn * W : nullptr;
              const auto run = [&](auto pro, auto copy) __attribute__((always_inline)) {
                ukernel_s<R, U, 2, decltype(pro)::value, decltype(copy)::value>(
                    kn, pa, la, b, ldb, c, ldc, acc, mr, nr, nullptr, 0, sc, sh, nullptr, init, keep, cp, pf2, pfl2);
              };
              using relu_t = std::integral_constant<int, 2>;
              using affine_t = std::integral_constant<int, 1>;
              if (pq->relu)
                lazy ? run(relu_t{}, std::true_type{}) : run(relu_t{}, std::false_type{});
              else
                lazy ? run(affine_t{}, std::true_type{}) : run(affine_t{}, std::false_type{});
            }
          } else {
            ukernel_s<R, U, 2>(kn, pa, la, b, ldb, c, ldc, acc, mr, nr, nullptr, 0, nullptr, nullptr, nullptr, init,
                               keep, nullptr, pf2, pfl2);
          }
        }
      }
    }
  }
}

}  // namespace

// The column panels' width of sgemm_patches() (its register block's): one vector for N <= VL;
// AVX-512 NHWC with N = 4 vectors (64 channels) one 6 x 4-vector block (24 accumulators) across
// all of N, so that each patch value is loaded once for every output instead of once a 32-wide
// panel (Intel AVX-512, 2 threads, N = 32, variants alternating in one process, 8 x 2 -> 6 x 4:
// 3x3 64 -> 64 at 56x56 forward 1.03-1.04x, input gradient 1.02-1.03x; at 32x32 1.09x / 1.05x;
// 128 -> 128 at 28x28 0.98-1.08x and 256 at 14x14 0.98-1.0x, so they keep 8 x 2; the NCHW form
// 0.90-0.95x); NR otherwise. The bits do not depend on the block.
int64_t patches_width(int64_t N, bool nchw) {
#if defined(__AVX512F__)
  if (!nchw && N == 4 * VL) return 4 * VL;
#endif
  (void)nchw;
  return N <= VL ? VL : NR;
}

int64_t sgemm_patches_b_size(int64_t K, int64_t N, bool nchw) { return K * round_up(N, patches_width(N, nchw)); }

void sgemm_patches_pack_b(int64_t K, int64_t N, Operand B, float* dst, bool nchw) {
  const int64_t w = patches_width(N, nchw);
  if (w == VL)
    pack_b<VL>(B, 0, K, 0, N, nullptr, dst);
  else if (w == NR)
    pack_b<NR>(B, 0, K, 0, N, nullptr, dst);
  else
    pack_b<4 * VL>(B, 0, K, 0, N, nullptr, dst);
}

void sgemm_patches(const Patches& a, int64_t r0, int64_t M, int64_t N, const float* bp, float* C, int64_t ldc,
                   bool nchw) {
  if (M <= 0 || N <= 0) return;
  if (a.kh * a.kw * a.cg <= 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[nchw ? j * ldc + i : i * ldc + j] = 0.0f;
    return;
  }
  if (N <= VL) {  // one vector of columns (MR x VL: the bits do not depend on the block shape)
    if (nchw)
      patches_blocked<MR, 1, true>(a, r0, M, N, bp, C, ldc);
    else
      patches_blocked<MR, 1, false>(a, r0, M, N, bp, C, ldc);
  } else {
    if (nchw)
      patches_blocked<MR, NV, true>(a, r0, M, N, bp, C, ldc);
#if defined(__AVX512F__)
    else if (patches_width(N, false) == 4 * VL)
      patches_blocked<6, 4, false>(a, r0, M, N, bp, C, ldc);
#endif
    else
      patches_blocked<MR, NV, false>(a, r0, M, N, bp, C, ldc);
  }
}

int64_t sgemm_rows_b_size(int64_t K, int64_t N) {
#if defined(__AVX512F__)
  if (pairs_n(N)) return std::max<int64_t>(K, 1) * 48;
#endif
  return K * round_up(N, rows_width(N));
}

void sgemm_rows_pack_b(int64_t K, int64_t N, Operand B, float* dst) {
#if defined(__AVX512F__)
  if (pairs_n(N)) return pack_b_twice(B, 0, K, N, dst);
#endif
  CNNKIT_WITH_BLOCK(N, rows_pack_b, K, N, B, dst);
}

void sgemm_rows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* bp, float* C, int64_t ldc,
                const Prologue* pa, const RowsEpilogue* ep, RowsPrefetch* pre) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 && !ep) {
    for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  // (K == 0 with an epilogue: one empty KC block, zero register blocks through the epilogue.)
#if defined(__AVX512F__)
  if (pairs_n(N)) return pairs_rows(M, N, std::max<int64_t>(K, 0), A, lda, bp, C, ldc, pa, ep, pre);
#endif
  CNNKIT_WITH_BLOCK(N, rows_blocked, M, N, std::max<int64_t>(K, 0), A, lda, bp, C, ldc, pa, ep, pre);
}

void sgemm_tn(int64_t M, int64_t N, int64_t K, const float* P, int64_t lp, const float* Q, int64_t lq, float* C,
              int64_t ldc, bool accumulate, const Prologue* pq, RowsPrefetch* pre) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  CNNKIT_WITH_TN_BLOCK(M, N, active(pq), tn_blocked, M, N, K, P, lp, Q, lq, C, ldc, accumulate, pq, pre);
}

namespace {
// (rows_blocked: one take per block of R rows and KC block of the reduction)
template <int R, int U>
int64_t rows_takes(int64_t M, int64_t K) {
  return (M + R - 1) / R * std::max<int64_t>(1, (K + KC - 1) / KC);
}
// (tn_blocked: one take per block of R rows of C in each sub-block of each KC block)
template <int R, int U>
int64_t tn_takes(int64_t M, int64_t N, int64_t K) {
  const int64_t ksub = tn_ksub(tn_packs_p((N + U * VL - 1) / (U * VL)));
  int64_t subs = 0;
  for (int64_t pc = 0; pc < K; pc += KC) subs += (std::min<int64_t>(KC, K - pc) + ksub - 1) / ksub;
  return (M + R - 1) / R * subs;
}
}  // namespace

int64_t sgemm_rows_takes(int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0) return 0;
  return CNNKIT_WITH_BLOCK(N, rows_takes, M, K);
}

int64_t sgemm_tn_takes(int64_t M, int64_t N, int64_t K, const Prologue* pq) {
  if (M <= 0 || N <= 0 || K <= 0) return 0;
  return CNNKIT_WITH_TN_BLOCK(M, N, active(pq), tn_takes, M, N, K);
}

int64_t sgemm_tn_padded(int64_t M, int64_t N) {
#if defined(__AVX512F__)
  const int64_t w = rows_width(N);
#else
  const int64_t w = N <= VL ? VL : 2 * VL;  // (tn_blocked's panels: one or two vectors)
#endif
  return pad_to(M, tn_rows(M, N)) * pad_to(N, w);
}

SgemmShape sgemm_shape() { return SgemmShape{MR, NR, KC, MC, NC}; }

#if defined(__AVX512F__)
// AVX-512, a wide C (N >= 256) that 4-vector panels pad no more than 2-vector ones: the 6 x 4-vector
// block (24 accumulators; per step 6 broadcasts and 4 loads for 24 FMAs) instead of 8 x 2 (16; 8
// and 2 for 16), where M pads no worse to 6 rows than to 8 or is long (256+ rows: the padding of
// the last block of rows is then small). One FMA chain per element either way: the same bits.
// Intel AVX-512, 1 thread, variants alternating in one process: 1024^3 1.13-1.17x, 2048x1024x256
// 1.15x, 512x768x2048 1.12x, 300x1024x800 1.10x, 96x4096x288 1.10x, 256x256x4096 1.08x,
// 4096x320x320 1.04x, 512^3 1.03x; 2 threads 1024^3 1.13x, 2048x1024x256 1.08x. Not for M = 64
// (64 x 1024 x 576 0.92x, 64 x 3136 x 576 0.98x) nor N = 784 (64 x 784 x 1152: 0.88x).
inline bool wide_block(int64_t M, int64_t N) {
  return N >= 256 && pad_to(N, 4 * VL) <= pad_to(N, 2 * VL) && (M >= 256 || pad_to(M, 6) <= pad_to(M, 8));
}
#endif

void sgemm(int64_t M, int64_t N, int64_t K, Operand A, Operand B, float* C, int64_t ldc, bool accumulate,
           const Prologue* pa, const Prologue* pb) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  // (N <= VL runs sgemm_blocked<MR2, 1>, whose panels are VL wide: A in place there as with NR,
  // since N <= 2 * VL as well.)
  const bool direct_a = reads_a_in_place(A, pa, N, NR);
  if (!direct_a && few_rows_ok(M, B, pb)) {
    if (N <= VL)
      few_rows<MR2, 1>(M, N, K, A, B, C, ldc, accumulate, pa);
#if defined(__AVX512F__)
    // 12 x 2 vectors (24 accumulators), or 8 x 2 where that pads M less (M = 16, 32).
    else if (pad_to(M, 8) < pad_to(M, 12))
      few_rows<8, 2>(M, N, K, A, B, C, ldc, accumulate, pa);
    else
      few_rows<12, 2>(M, N, K, A, B, C, ldc, accumulate, pa);
#elif defined(__AVX2__)
    else if (three_wide(N))
      few_rows<4, 3>(M, N, K, A, B, C, ldc, accumulate, pa);
    else
      few_rows<MR, NV>(M, N, K, A, B, C, ldc, accumulate, pa);
#else
    else
      few_rows<MR, NV>(M, N, K, A, B, C, ldc, accumulate, pa);
#endif
    return;
  }
#if defined(__AVX512F__)
  if (direct_a && pairs_n(N)) {
    pairs_blocked(M, N, K, A, B, C, ldc, accumulate);
    return;
  }
#endif
  // Narrow C (N <= one vector): the MR2 x VL kernel, so that a 16-column C does not run a
  // half-empty 32-wide block. Both kernels give the same bits (one FMA chain per element).
  if (N <= VL)
    sgemm_blocked<MR2, 1>(M, N, K, A, B, C, ldc, accumulate, pa, pb);
#if defined(__AVX2__) && !defined(__AVX512F__)
  else if (three_wide(N))
    sgemm_blocked<4, 3>(M, N, K, A, B, C, ldc, accumulate, pa, pb);
#endif
#if defined(__AVX512F__)
  else if (wide_block(M, N))
    sgemm_blocked<6, 4>(M, N, K, A, B, C, ldc, accumulate, pa, pb);
#endif
  else
    sgemm_blocked<MR, NV>(M, N, K, A, B, C, ldc, accumulate, pa, pb);
}

void sgemm_patches_t(int64_t M, int64_t N, int64_t K, const Patches& a, int64_t r0, Operand B, float* C, int64_t ldc,
                     bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  if (N <= VL)
    patches_t_blocked<MR, 1>(M, N, K, a, r0, B, C, ldc, accumulate);
#if defined(__AVX512F__)
  // Output channels in whole 64s (N a multiple of 4 vectors) from 32+ input channels a group: the
  // 6 x 4-vector block (24 accumulators, 10 loads per 24 FMAs) on 64-wide panels instead of 8 x 2
  // (16; 10 per 16) on 32-wide ones, as sgemm_patches() does at N = 64. Blocks of 6 rows do not
  // divide a tap's channels, so the one block in about 11 (at 64 channels) that straddles two
  // taps is packed first. The same chains: the same bits. Intel AVX-512, 2 threads, weight
  // gradients alternating in one process: 3x3 64->64 at 56x56 (N = 32) 1.07-1.08x, at 28x28
  // 1.07x, 32->64 at 56x56 1.08x, 128->64 (N = 8) 1.07x, 5x5 64->64 at 28x28 1.05x, 128->128 at
  // 28x28 1.11-1.13x, 64->128 1.05x, 256->256 at 14x14 1.00x; not at 16 input channels (16->64:
  // 0.98x, a straddling block in every three).
  else if (N % (4 * VL) == 0 && a.cg >= 32)
    patches_t_blocked<6, 4>(M, N, K, a, r0, B, C, ldc, accumulate);
#endif
  else
    patches_t_blocked<MR, NV>(M, N, K, a, r0, B, C, ldc, accumulate);
}

// Whether sgemm_parallel() runs a product as the 1x1 convolutions run theirs (sgemm_rows(): B
// packed once, A's rows read in place) rather than in sgemm()'s tiles, each of which packs its
// panels of B again and runs the general blocked loops: a tall A (512 rows or more) with row-major
// rows, C written (not added to), N <= 256. The chains per element are the same, so are the bits.
// Not for the three-vector blocks of AVX2 (N = 24, 40-48; their tiles were tuned for the 4 x 3
// block). At AVX-512 16 < N <= 24 too (the pair kernels either way; B's panels packed once instead
// of once a 256-row tile, and pairs_rows' prefetch of C): 1 thread, 100352 x 24 x 144 1.06x
// against the tiles with the same prefetch, 1.17x against the tiles before it. 1 thread, variants
// alternating in one process, Intel AVX-512: 100352x64x256 1.34-1.40x, 1024x64x256 1.07-1.21x,
// 16384x128x64 1.15-1.25x, 16384x256x128 1.08x, 4096x33x100 1.40x, 4096x8x128 1.31x, 4096x200x300
// 0.99-1.04x, 512x64x256 1.05x; 2 threads 100352x64x256 1.32-1.35x, 1024x64x256 1.15x, 2048x48x96
// 1.33x. At AVX2 on the same machine: 100352x64x256 1.07-1.08x, 16384x128x64 1.04x, 4096x200x300
// 1.11x, 4096x8x128 1.16x, 1024x64x256 0.98-1.01x, 4096x16x64 0.98x.
namespace {
bool tall_rows(int64_t M, int64_t N, int64_t K, Operand A, bool accumulate) {
  if (accumulate || A.cs != 1 || K <= 0 || M < 512 || N > 256) return false;
#if defined(__AVX512F__)
  return true;
#elif defined(__AVX2__)
  return !three_wide(N);
#else
  return true;
#endif
}
}  // namespace

void sgemm_parallel(int64_t M, int64_t N, int64_t K, Operand A, Operand B, float* C, int64_t ldc,
                    bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (tall_rows(M, N, K, A, accumulate)) {
    // B's panels packed once for all rows (as the 1x1 convolutions pack their weights), the rows
    // of A read in place by sgemm_rows() in units of up to 1024 rows (4 or more a thread), each in
    // blocks whose rows of A and C take about 192 KiB (forward_1x1_nhwc's blocks).
    float* bp = scratch<float>(kWeightSlot, sgemm_rows_b_size(K, N));
    sgemm_rows_pack_b(K, N, B, bp);
    const int64_t nt = num_threads();
    const int64_t unit = std::min<int64_t>(1024, round_up((M + 4 * nt - 1) / (4 * nt), 48));
    const int64_t units = (M + unit - 1) / unit, sub = std::max<int64_t>(48, 49152 / (K + N) / 48 * 48);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
    for (int64_t u = 0; u < units; ++u) {
      const int64_t r1 = std::min(M, (u + 1) * unit);
      for (int64_t r = u * unit; r < r1; r += sub)
        sgemm_rows(std::min(sub, r1 - r), N, K, A.p + r * A.rs, A.rs, bp, C + r * ldc, ldc, nullptr, nullptr,
                   nullptr);
    }
    return;
  }
  // Tiles from the shape alone (the bits do not depend on them anyway, see the header): rows in
  // pieces of up to MC, columns in pieces of a multiple of NR (at least two register blocks, at
  // most NC) so that there are about 8 tiles: MC x NC tiles left M, N <= 256 (256 x 2304 x 256)
  // as one tile on one thread.
  const int64_t tm = M <= MC ? M : MC;
  const int64_t want = (8 + (M + tm - 1) / tm - 1) / ((M + tm - 1) / tm);
  const int64_t tn = std::min<int64_t>(std::max<int64_t>(N, 1), std::min<int64_t>(NC, std::max<int64_t>(2 * NR, round_up((N + want - 1) / want, NR))));
  const int64_t bm = (M + tm - 1) / tm, bn = (N + tn - 1) / tn;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t u = 0; u < bm * bn; ++u) {
    const int64_t i0 = (u / bn) * tm, j0 = (u % bn) * tn;
    const int64_t m = std::min(tm, M - i0), n = std::min(tn, N - j0);
    sgemm(m, n, K, Operand{A.p + i0 * A.rs, A.rs, A.cs}, Operand{B.p + j0 * B.cs, B.rs, B.cs}, C + i0 * ldc + j0,
          ldc, accumulate);
  }
}

void sgemm_shape_of(int* mr, int* nr, int* kc, int* mc, int* nc) {
  *mr = MR;
  *nr = NR;
  *kc = KC;
  *mc = MC;
  *nc = NC;
}

void sgemm_strided(int64_t M, int64_t N, int64_t K, const float* a, int64_t ars, int64_t acs, const float* b,
                   int64_t brs, int64_t bcs, float* c, int64_t ldc, bool accumulate) {
  sgemm_parallel(M, N, K, Operand{a, ars, acs}, Operand{b, brs, bcs}, c, ldc, accumulate);
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
