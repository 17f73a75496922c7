// The GEMM-based convolution path: any geometry, both layouts, float32 and float64.
//
// Forward, per group:        Y_g = W_g . col(X_g)              (NCHW: (Kg x P) = (Kg x KK)(KK x P))
//                            Y_g = col(X_g) . W_g^T            (NHWC: (P x Kg) = (P x KK)(KK x Kg))
// Weight gradient:           dW_g = sum_n dY_g[n] . col(X_g[n])^T
// Input gradient (scatter):  dX_g = col2im(W_g^T . dY_g)
// with P = Ho*Wo output pixels and KK = Cg*kh*kw patch entries. col() is im2col; a 1x1 kernel at
// stride 1 without padding reads X directly. On cnnkit's own sgemm, without a fused prologue and
// with 16+ channels a group, the forward pass (both layouts) and the NHWC weight gradient never
// build col(): the sgemm reads each pixel's patch from X (sgemm_patches*, sgemm.cpp), with the
// reduction in (i, j, c) order; its NHWC dense 3x3 stride-1 problems with 32+ channels on both
// sides (2048+ output pixels) run the forward pass and the weight gradient by Winograd F(2x2, 3x3)
// instead (winograd.h). GEMMs are single-threaded OpenBLAS calls inside cnnkit's own OpenMP loop,
// over pieces cut from the shape alone; reductions over pieces run in a fixed order (beta = 1
// accumulation in piece order), so results do not depend on the thread count.
// Compiled once per ISA level (namespace cnnkit::conv::<isa>) like the direct kernels; the copies
// reach the dispatcher through conv::Kernels (conv_kernels.cpp) and the registry's gemm entries.
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <type_traits>

#include <immintrin.h>

#include "common/avx2_double.h"
#include "common/isa_vector.h"

#include "conv_internal.h"
#include "norm/bn_apply.h"
#include "scratch.h"
#include "sgemm.h"
#include "unit_stats.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {
namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// GEMM dimensions are checked against 2^31 - 1 before any kernel starts (check_dims()).
int to_int(int64_t v) { return static_cast<int>(v); }

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  g_blas_sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, to_int(M), to_int(N), to_int(K),
          1.0f, A, to_int(lda), B, to_int(ldb), beta, C, to_int(ldc));
}
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  g_blas_dgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, to_int(M), to_int(N), to_int(K),
          1.0, A, to_int(lda), B, to_int(ldb), beta, C, to_int(ldc));
}

// The GEMM of a pass: OpenBLAS, or cnnkit's own packed sgemm (Own; float32 only), which also
// applies the fused prologue while it packs (pa on A's columns, pb on B's rows).
template <bool Own, typename T>
void gemm_t(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
            T beta, T* C, int64_t ldc, const Prologue* pa = nullptr, const Prologue* pb = nullptr) {
  if constexpr (Own && std::is_same_v<T, float>) {
    const Operand a = ta ? Operand{A, 1, lda} : Operand{A, lda, 1};
    const Operand b = tb ? Operand{B, 1, ldb} : Operand{B, ldb, 1};
    sgemm(M, N, K, a, b, C, ldc, beta != T(0), pa, pb);
  } else {
    (void)pa;
    (void)pb;
    gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
  }
}

// The prologue's affine map is one fma (a single rounding) everywhere it is evaluated (here, the
// sgemm's packing, and the batch-norm backward's recomputed ReLU mask), so every path computes
// the same normalized values and the backward's mask is the forward's exactly.
template <typename T>
T apply(T v, const Prologue* f, int64_t c) {
  if (f->scale) v = std::fma(T(f->scale[c]), v, T(f->shift[c]));
  return f->relu ? std::max(v, T(0)) : v;
}

// d[t] = prologue(d[t]) for t < n, one channel c (branch-free loops the compiler vectorises).
template <typename T>
void apply_run(T* d, int64_t n, const Prologue* f, int64_t c) {
  if (f->scale) {
    const T sc = T(f->scale[c]), sh = T(f->shift[c]);
    if (f->relu)
      for (int64_t t = 0; t < n; ++t) d[t] = std::max(std::fma(sc, d[t], sh), T(0));
    else
      for (int64_t t = 0; t < n; ++t) d[t] = std::fma(sc, d[t], sh);
  } else if (f->relu) {
    for (int64_t t = 0; t < n; ++t) d[t] = std::max(d[t], T(0));
  }
}

// d[c] = prologue(s[c]) for channels c0 + c, c < n.
template <typename T>
void apply_channels(T* __restrict d, const T* __restrict s, int64_t n, const Prologue* f, int64_t c0) {
  if (f->scale) {
    const float* sc = f->scale + c0;
    const float* sh = f->shift + c0;
    if (f->relu)
      for (int64_t c = 0; c < n; ++c) d[c] = std::max(std::fma(T(sc[c]), s[c], T(sh[c])), T(0));
    else
      for (int64_t c = 0; c < n; ++c) d[c] = std::fma(T(sc[c]), s[c], T(sh[c]));
  } else {
    for (int64_t c = 0; c < n; ++c) d[c] = f->relu ? std::max(s[c], T(0)) : s[c];
  }
}

// Rows [r0, r1) of a pixel-major input read directly (a 1x1 kernel at stride 1, no padding; row
// stride ldx) through the prologue into col ((r1-r0) x cc, channels [c0, c0+cc) of each row): the
// prologue's pass of such a problem, without im2col's per-pixel index arithmetic.
template <typename T>
void prologue_rows(const T* x, int64_t ldx, int64_t r0, int64_t r1, int64_t c0, int64_t cc, T* col,
                   const Prologue* f) {
  if (ldx == cc && f->scale && cc <= 128) {
    // Contiguous rows of few channels: one flat pass over pieces of m whole rows, with the
    // per-channel scale and shift laid out m times (a call per row of 16 channels cost more than
    // the arithmetic).
    const int64_t m = 256 / cc, L = m * cc, total = (r1 - r0) * cc;
    alignas(64) T a[256], b[256];
    for (int64_t j = 0; j < L; ++j) {
      a[j] = T(f->scale[j % cc]);
      b[j] = T(f->shift[j % cc]);
    }
    const T* __restrict s = x + r0 * ldx;
    T* __restrict d = col;
    for (int64_t e0 = 0; e0 < total; e0 += L) {
      const int64_t n = std::min(L, total - e0);
      if (f->relu)
        for (int64_t j = 0; j < n; ++j) d[e0 + j] = std::max(std::fma(a[j], s[e0 + j], b[j]), T(0));
      else
        for (int64_t j = 0; j < n; ++j) d[e0 + j] = std::fma(a[j], s[e0 + j], b[j]);
    }
    return;
  }
  for (int64_t r = r0; r < r1; ++r) apply_channels(col + (r - r0) * cc, x + r * ldx + c0, cc, f, 0);
}

bool reads_x_directly(const Geom& g) {
  return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0 && g.Ho == g.H &&
         g.Wo == g.W;
}

// NCHW im2col of channels [c0, c0+cc) of one image/group (xn points at its first channel) for output
// pixels [p0, p1): col is (cc*kh*kw) x (p1-p0), rows ordered (c, i, j).
// With f, every value read from x goes through the prologue (channel c0 + c of f's arrays);
// padding stays zero.
template <typename T>
void im2col_nchw(const T* xn, const Geom& g, int64_t c0, int64_t cc, int64_t p0, int64_t p1, T* col,
                 const Prologue* f = nullptr) {
  const int64_t np = p1 - p0, HW = g.H * g.W;
  for (int64_t c = 0; c < cc; ++c) {
    const T* plane = xn + (c0 + c) * HW;
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        T* row = col + ((c * g.kh + i) * g.kw + j) * np;
        int64_t p = p0;
        while (p < p1) {
          const int64_t oh = p / g.Wo, ow = p % g.Wo;
          const int64_t len = std::min(g.Wo - ow, p1 - p);
          T* dst = row + (p - p0);
          const int64_t ih = oh * g.sh + i * g.dh - g.pt;
          if (ih < 0 || ih >= g.H) {
            std::fill(dst, dst + len, T(0));
          } else {
            const T* src = plane + ih * g.W;
            const int64_t iw0 = ow * g.sw + j * g.dw - g.pl;
            if (g.sw == 1) {
              const int64_t lo = std::min(len, std::max<int64_t>(0, -iw0));
              const int64_t hi = std::max(lo, std::min(len, g.W - iw0));
              std::fill(dst, dst + lo, T(0));
              if (hi > lo) std::memcpy(dst + lo, src + iw0 + lo, (hi - lo) * sizeof(T));
              std::fill(dst + hi, dst + len, T(0));
              if (f) apply_run(dst + lo, hi - lo, f, c0 + c);
            } else {
              for (int64_t t = 0; t < len; ++t) {
                const int64_t iw = iw0 + t * g.sw;
                dst[t] = (iw >= 0 && iw < g.W) ? (f ? apply(src[iw], f, c0 + c) : src[iw]) : T(0);
              }
            }
          }
          p += len;
        }
      }
  }
}

// The adjoint of im2col_nchw: dxn[c0 + c] += the entries of col (same shape and order).
template <typename T>
void col2im_nchw(const T* col, const Geom& g, int64_t c0, int64_t cc, int64_t p0, int64_t p1, T* dxn) {
  const int64_t np = p1 - p0, HW = g.H * g.W;
  for (int64_t c = 0; c < cc; ++c) {
    T* plane = dxn + (c0 + c) * HW;
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        const T* row = col + ((c * g.kh + i) * g.kw + j) * np;
        int64_t p = p0;
        while (p < p1) {
          const int64_t oh = p / g.Wo, ow = p % g.Wo;
          const int64_t len = std::min(g.Wo - ow, p1 - p);
          const T* src = row + (p - p0);
          const int64_t ih = oh * g.sh + i * g.dh - g.pt;
          if (ih >= 0 && ih < g.H) {
            T* dst = plane + ih * g.W;
            const int64_t iw0 = ow * g.sw + j * g.dw - g.pl;
            for (int64_t t = 0; t < len; ++t) {
              const int64_t iw = iw0 + t * g.sw;
              if (iw >= 0 && iw < g.W) dst[iw] += src[t];
            }
          }
          p += len;
        }
      }
  }
}

// NHWC im2col of channels [c0, c0+cc) of group gi, image n, output pixels [p0, p1): col is
// (p1-p0) x (kh*kw*cc), columns ordered (i, j, c).
template <typename T>
void im2col_nhwc(const T* x, const Geom& g, int64_t n, int64_t gi, int64_t c0, int64_t cc, int64_t p0,
                 int64_t p1, T* col, const Prologue* f = nullptr) {
  const int64_t ld = g.kh * g.kw * cc;
  const T* xn = x + n * g.H * g.W * g.C + gi * g.Cg() + c0;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t oh = p / g.Wo, ow = p % g.Wo;
    T* row = col + (p - p0) * ld;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.sh + i * g.dh - g.pt;
      for (int64_t j = 0; j < g.kw; ++j) {
        T* dst = row + (i * g.kw + j) * cc;
        const int64_t iw = ow * g.sw + j * g.dw - g.pl;
        if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) {
          std::fill(dst, dst + cc, T(0));
        } else if (f) {
          apply_channels(dst, xn + (ih * g.W + iw) * g.C, cc, f, c0);
        } else {
          std::memcpy(dst, xn + (ih * g.W + iw) * g.C, cc * sizeof(T));
        }
      }
    }
  }
}

template <typename T>
void col2im_nhwc(const T* col, const Geom& g, int64_t n, int64_t gi, int64_t c0, int64_t cc, int64_t p0,
                 int64_t p1, T* dx) {
  const int64_t ld = g.kh * g.kw * cc;
  T* dxn = dx + n * g.H * g.W * g.C + gi * g.Cg() + c0;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t oh = p / g.Wo, ow = p % g.Wo;
    const T* row = col + (p - p0) * ld;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.sh + i * g.dh - g.pt;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t iw = ow * g.sw + j * g.dw - g.pl;
        if (iw < 0 || iw >= g.W) continue;
        const T* src = row + (i * g.kw + j) * cc;
        T* dst = dxn + (ih * g.W + iw) * g.C;
        for (int64_t c = 0; c < cc; ++c) dst[c] += src[c];
      }
    }
  }
}

// Pieces of a length-`len` range: chunk size from the shape alone.
struct Split {
  int64_t chunk, count;
};
Split split(int64_t len, int64_t chunk) {
  chunk = std::max<int64_t>(1, std::min(chunk, len));
  return Split{chunk, (len + chunk - 1) / chunk};
}

// ---- the forward pass and its fused epilogue -------------------------------------------------

// Per-(unit, channel) partial statistics of the fused forward: sums of (y - s) and (y - s)^2 in
// double about s, the unit's first value of the channel (a shift close to the data, as the norm
// kernels use), and the unit's pixel count. UnitStats' rows (each unit's on its own cache lines)
// and the counts after them. Combined in unit order by combine_stats().
struct StatParts : UnitStats {
  int64_t* cnt;
};

StatParts stat_parts(int64_t units, int64_t Kg) {
  const UnitStats u = unit_stats(units, Kg, units);
  return StatParts{u, reinterpret_cast<int64_t*>(u.p + 3 * units * u.ld)};
}

// Channel k of the units `order` (in that order; the first holds the channel's first value, y at
// image 0, pixel 0): sum and sum of squares of (y - K), K = that first value.
void combine_stats(const StatParts& p, const int64_t* order, int64_t count, int64_t kk, double* sum,
                   double* sumsq) {
  const double K0 = p.sh(order[0])[kk];
  double s = 0, q = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t u = order[i];
    const double d = p.sh(u)[kk] - K0, n = double(p.cnt[u]), s1 = p.s1(u)[kk];
    s += s1 + n * d;
    q += p.s2(u)[kk] + 2 * d * s1 + n * d * d;
  }
  *sum = s;
  *sumsq = q;
}

// Shifted sums of one contiguous run of values: a SIMD reduction (its lanes and their final
// combination fixed by the ISA level, never by the thread count), as the norm kernels' statistics.
template <typename T>
void run_stats(const T* __restrict r, int64_t n, double shift, double* s1, double* s2) {
  double t1 = 0, t2 = 0;
#pragma omp simd reduction(+ : t1, t2)
  for (int64_t p = 0; p < n; ++p) {
    const double d = double(r[p]) - shift;
    t1 += d;
    t2 += d * d;
  }
  *s1 = t1;
  *s2 = t2;
}

// 16 channels of float32 as one vector, and its halves in double (GCC vector extensions: one zmm
// at AVX-512, two ymm at AVX2, SSE2 pieces at the scalar level). The statistics epilogues keep
// their double accumulators in these (registers, across all rows of a block) instead of arrays
// that every row loads and stores.
typedef float F16v __attribute__((vector_size(64)));
typedef double D8v __attribute__((vector_size(64)));

inline F16v load16(const float* p) {
  F16v v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, F16v v) { std::memcpy(p, &v, sizeof v); }
inline D8v load8d(const double* p) {
  D8v v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8d(double* p, D8v v) { std::memcpy(p, &v, sizeof v); }
#if defined(__AVX512F__)
inline D8v lo8(F16v v) { return (D8v)avx512d::lo8d((__m512)v); }
inline D8v hi8(F16v v) { return (D8v)avx512d::hi8d((__m512)v); }
#else
inline D8v lo8(F16v v) {
  return __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), D8v);
}
inline D8v hi8(F16v v) {
  return __builtin_convertvector(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15), D8v);
}
#endif
// fma(a, x, b) per lane, one rounding (as std::fma).
inline F16v fma16(F16v a, F16v x, F16v b) {
#if defined(__AVX512F__)
  return (F16v)_mm512_fmadd_ps((__m512)a, (__m512)x, (__m512)b);
#elif defined(__FMA__)
  typedef float F8v __attribute__((vector_size(32)));
  const F8v l = (F8v)_mm256_fmadd_ps((__m256)__builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7),
                                     (__m256)__builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7),
                                     (__m256)__builtin_shufflevector(b, b, 0, 1, 2, 3, 4, 5, 6, 7));
  const F8v h = (F8v)_mm256_fmadd_ps((__m256)__builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15),
                                     (__m256)__builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15),
                                     (__m256)__builtin_shufflevector(b, b, 8, 9, 10, 11, 12, 13, 14, 15));
  return __builtin_shufflevector(l, h, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  F16v r;
  for (int k = 0; k < 16; ++k) r[k] = std::fma(a[k], x[k], b[k]);
  return r;
#endif
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// AVX2: the two register-held epilogues below on native 256-bit vectors. GCC lowers the 64-byte
// generic vectors above to xmm pieces shuffled through general registers and the stack at this
// level (the NHWC statistics and gradient epilogues ran at 3-4 cycles an element, 2-3x the NCHW
// ones). Per lane the same operations in the same order (no contraction in this file), so the
// same bits; channels in passes of 16 so that the accumulators stay in the 16 ymm registers
// (passes of 8 made the gradient epilogue at 32-64 channels 1.2-1.5x slower).
using avx2d::cvt4d;  // (common/avx2_double.h: floats in memory converted from memory)
using avx2d::hi4d;
using avx2d::lo4d;

// Statistics of 16 channels over nr rows (the loop of stats16 below).
inline void stats16_pass(const float* y, int64_t ld, int64_t nr, const double* sh, double* s1, double* s2,
                         bool cont) {
  __m256d a1[4], a2[4], c[4];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    a1[q] = cont ? _mm256_loadu_pd(s1 + 4 * q) : _mm256_setzero_pd();
    a2[q] = cont ? _mm256_loadu_pd(s2 + 4 * q) : _mm256_setzero_pd();
    c[q] = _mm256_loadu_pd(sh + 4 * q);
  }
  for (int64_t r = 0; r < nr; ++r) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const float* yp = y + r * ld + 8 * h;
      const __m256d dl = _mm256_sub_pd(cvt4d(yp), c[2 * h]), dh = _mm256_sub_pd(cvt4d(yp + 4), c[2 * h + 1]);
      a1[2 * h] = _mm256_add_pd(a1[2 * h], dl);
      a1[2 * h + 1] = _mm256_add_pd(a1[2 * h + 1], dh);
      a2[2 * h] = _mm256_add_pd(a2[2 * h], _mm256_mul_pd(dl, dl));
      a2[2 * h + 1] = _mm256_add_pd(a2[2 * h + 1], _mm256_mul_pd(dh, dh));
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    _mm256_storeu_pd(s1 + 4 * q, a1[q]);
    _mm256_storeu_pd(s2 + 4 * q, a2[q]);
  }
}

// The two double sums of 8 channels (s1 and s2 of channels k..k+7, each as two halves).
struct Sums8 {
  __m256d s1l, s1h, s2l, s2h;
};

// The row-major statistics and gradient epilogues' loop: f(k, r0, std::integral_constant<int,
// NR>{}, sums) for every 8-channel vector k < nk (nk a multiple of 8) of every group of NR rows
// from r0 (groups of 4 rows, then the rest one at a time), the vector's sums loaded from s1, s2
// before and stored back after (zeroed first unless cont).
template <typename F>
inline void rows_by_vectors(int64_t nr, int64_t nk, double* s1, double* s2, bool cont, F&& f) {
  if (!cont)
    for (int64_t k = 0; k < nk; ++k) s1[k] = s2[k] = 0.0;
  auto group = [&](int64_t r0, auto rb) __attribute__((always_inline)) {
    for (int64_t k = 0; k < nk; k += 8) {
      Sums8 a{_mm256_loadu_pd(s1 + k), _mm256_loadu_pd(s1 + k + 4), _mm256_loadu_pd(s2 + k),
              _mm256_loadu_pd(s2 + k + 4)};
      f(k, r0, rb, a);
      _mm256_storeu_pd(s1 + k, a.s1l);
      _mm256_storeu_pd(s1 + k + 4, a.s1h);
      _mm256_storeu_pd(s2 + k, a.s2l);
      _mm256_storeu_pd(s2 + k + 4, a.s2h);
    }
  };
  int64_t r = 0;
  for (; r + 4 <= nr; r += 4) group(r, std::integral_constant<int, 4>{});
  for (; r < nr; ++r) group(r, std::integral_constant<int, 1>{});
}

// Statistics of nk channels (a multiple of 8) over nr rows, rows outermost: each 8-channel vector's
// sums loaded from s1, s2, continued over 4 rows and stored back, so the block is read in address
// order once instead of one line of every row per 16-channel pass (from L2 where the block is
// larger than L1: 96 rows of 256 channels in the 1x1 forward). Per channel the same operations in
// the same order: the same bits. Used from 64 channels (block_stats_pm); mobilenet_small's forward
// passes with statistics, alternating calls in one process (2 threads), while the host's memory
// was slow: the stride-2 depthwise (64 channels) 1.11x, the 1x1s (64, 128, 256 channels)
// 1.005-1.02x; while it was fast 0.99-1.01x. At 16 and 32 channels (resnext_small) the register
// passes stay.
inline void stats_rows_pass(const float* y, int64_t ld, int64_t nr, int64_t nk, const double* sh, double* s1,
                            double* s2, bool cont) {
  rows_by_vectors(nr, nk, s1, s2, cont, [&](int64_t k, int64_t r0, auto rb, Sums8& a) __attribute__((always_inline)) {
    const __m256d cl = _mm256_loadu_pd(sh + k), ch = _mm256_loadu_pd(sh + k + 4);
#pragma GCC unroll 4
    for (int i = 0; i < decltype(rb)::value; ++i) {
      const float* yp = y + (r0 + i) * ld + k;
      const __m256d dl = _mm256_sub_pd(cvt4d(yp), cl), dh = _mm256_sub_pd(cvt4d(yp + 4), ch);
      a.s1l = _mm256_add_pd(a.s1l, dl);
      a.s1h = _mm256_add_pd(a.s1h, dh);
      a.s2l = _mm256_add_pd(a.s2l, _mm256_mul_pd(dl, dl));
      a.s2h = _mm256_add_pd(a.s2h, _mm256_mul_pd(dh, dh));
    }
  });
}
template <int P>
void stats16(const float* y, int64_t ld, int64_t nr, const double* sh, double* s1, double* s2, bool cont) {
  for (int h = 0; h < P; ++h) stats16_pass(y + 16 * h, ld, nr, sh + 16 * h, s1 + 16 * h, s2 + 16 * h, cont);
}
#else
// block_stats_pm on P*16 channels at a time (P independent sets of chains per row), the sums in
// registers: per channel, the same additions in the same order as the loop below.
template <int P>
void stats16(const float* y, int64_t ld, int64_t nr, const double* sh, double* s1, double* s2, bool cont) {
  D8v a1[2 * P], a2[2 * P], c[2 * P];
#pragma GCC unroll 4
  for (int q = 0; q < 2 * P; ++q) {
    a1[q] = cont ? load8d(s1 + 8 * q) : D8v{};
    a2[q] = cont ? load8d(s2 + 8 * q) : D8v{};
    c[q] = load8d(sh + 8 * q);
  }
  for (int64_t r = 0; r < nr; ++r) {
#pragma GCC unroll 2
    for (int q = 0; q < P; ++q) {
      const F16v v = load16(y + r * ld + 16 * q);
      const D8v dl = lo8(v) - c[2 * q], dh = hi8(v) - c[2 * q + 1];
      a1[2 * q] += dl;
      a1[2 * q + 1] += dh;
      a2[2 * q] += dl * dl;
      a2[2 * q + 1] += dh * dh;
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < 2 * P; ++q) {
    store8d(s1 + 8 * q, a1[q]);
    store8d(s2 + 8 * q, a2[q]);
  }
}
#endif

// Shifted sums per channel of a pixel-major block (nr rows of nk channels, row stride ld) about
// sh[k]: channels in pieces of 64 with local accumulators (vectorised across channels; each
// channel's sum runs over the rows in order). cont: the sums continue from s1, s2 (a block of rows
// that follows the block that started them: the same sums as over both blocks at once).
template <typename T>
void block_stats_pm(const T* __restrict y, int64_t ld, int64_t nr, int64_t nk, const double* sh, double* s1,
                    double* s2, bool cont = false) {
  int64_t kv = 0;
  if constexpr (std::is_same_v<T, float>) {
#if defined(__AVX2__) && !defined(__AVX512F__)
    if (nk >= 64) {
      kv = nk / 16 * 16;
      stats_rows_pass(y, ld, nr, kv, sh, s1, s2, cont);
    }
#endif
    for (; kv + 32 <= nk; kv += 32) stats16<2>(y + kv, ld, nr, sh + kv, s1 + kv, s2 + kv, cont);
    for (; kv + 16 <= nk; kv += 16) stats16<1>(y + kv, ld, nr, sh + kv, s1 + kv, s2 + kv, cont);
  }
  for (int64_t k0 = kv; k0 < nk; k0 += 64) {
    const int64_t n = std::min<int64_t>(64, nk - k0);
    double a1[64], a2[64], c[64];
    for (int64_t k = 0; k < n; ++k) {
      a1[k] = cont ? s1[k0 + k] : 0;
      a2[k] = cont ? s2[k0 + k] : 0;
      c[k] = sh[k0 + k];
    }
    for (int64_t r = 0; r < nr; ++r) {
      const T* __restrict yr = y + r * ld + k0;
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        const double d = double(yr[k]) - c[k];
        a1[k] += d;
        a2[k] += d * d;
      }
    }
    for (int64_t k = 0; k < n; ++k) {
      s1[k0 + k] = a1[k];
      s2[k0 + k] = a2[k];
    }
  }
}

// The epilogue of one output block in channel-major order (NCHW): nk channels of np pixels, row
// stride ld: y += bias; statistics of y; y += residual; y = max(y, 0). st: this unit's partials.
template <typename T>
void epilogue_cm(T* y, int64_t ld, int64_t nk, int64_t np, const T* b, const T* res, bool relu, double* s1,
                 double* s2, double* sh) {
  for (int64_t k = 0; k < nk; ++k) {
    T* r = y + k * ld;
    if (b) {
      const T bk = b[k];
      for (int64_t p = 0; p < np; ++p) r[p] += bk;
    }
    if (s1) {
      sh[k] = double(r[0]);
      run_stats(r, np, sh[k], s1 + k, s2 + k);
    }
    if (res) {
      const T* q = res + k * ld;
      for (int64_t p = 0; p < np; ++p) r[p] += q[p];
    }
    if (relu)
      for (int64_t p = 0; p < np; ++p) r[p] = std::max(r[p], T(0));
  }
}

// The same in pixel-major order (NHWC): nr rows of nk channels, row stride ld. cont: these rows
// continue a unit whose statistics (shift and sums) an earlier block of rows started.
template <typename T>
void epilogue_pm(T* y, int64_t ld, int64_t nr, int64_t nk, const T* b, const T* res, bool relu, double* s1,
                 double* s2, double* sh, bool cont = false) {
  if (b)
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t k = 0; k < nk; ++k) y[r * ld + k] += b[k];
  if (s1) {
    if (!cont)
      for (int64_t k = 0; k < nk; ++k) sh[k] = double(y[k]);
    block_stats_pm(y, ld, nr, nk, sh, s1, s2, cont);
  }
  if (res)
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t k = 0; k < nk; ++k) y[r * ld + k] += res[r * ld + k];
  if (relu)
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t k = 0; k < nk; ++k) y[r * ld + k] = std::max(y[r * ld + k], T(0));
}

// ---- the gradient epilogue (backward_input_fused(): the adjoint's forward pass) -----------------
// The output here is the gradient at a prologue's output; xb holds the prologue's input at the
// same positions. o = o * [fma(sc, x, sh) > 0] (relu; sc null: x > 0; with mb, the mask of a
// stored ReLU output at the same positions: o * [mb > 0]), then the partial sums of o and
// o * (x - ctr) in double: per channel, over the block, in a fixed order.

// The stored-mask block at element offset off of the output (Fused::gmask), or null.
inline const float* grad_mask(const Fused* fu, int64_t off) { return fu->gmask ? fu->gmask + off : nullptr; }

// Channel-major block (NCHW): nk channels of np pixels, row stride ld.
// One channel's row of grad_epilogue_cm: M 0 no mask, 1 fma(a, x, b) > 0, 2 m > 0 (the mask
// kind fixed per loop, so that the loop vectorises).
template <int M>
inline void grad_row_cm(float* __restrict r, const float* __restrict xr, const float* __restrict mr, int64_t np,
                        float a, float b, double c, double* s1, double* s2) {
  double t1 = 0, t2 = 0;  // a SIMD reduction: lanes fixed by the ISA level
#pragma omp simd reduction(+ : t1, t2)
  for (int64_t p = 0; p < np; ++p) {
    const float xv = xr[p];
    const bool keep = M == 0 || (M == 1 ? std::fma(a, xv, b) > 0.0f : mr[p] > 0.0f);
    const float v = keep ? r[p] : 0.0f;
    r[p] = v;
    t1 += double(v);
    t2 += double(v) * (double(xv) - c);
  }
  *s1 = t1;
  *s2 = t2;
}

void grad_epilogue_cm(float* y, const float* xb, const float* mb, int64_t ld, int64_t nk, int64_t np,
                      const float* sc, const float* sh, bool relu, const double* ctr, double* s1, double* s2) {
  for (int64_t k = 0; k < nk; ++k) {
    float* r = y + k * ld;
    const float* xr = xb + k * ld;
    const float a = sc ? sc[k] : 1.0f, b = sc ? sh[k] : 0.0f;
    if (!relu)
      grad_row_cm<0>(r, xr, nullptr, np, a, b, ctr[k], s1 + k, s2 + k);
    else if (mb)
      grad_row_cm<2>(r, xr, mb + k * ld, np, a, b, ctr[k], s1 + k, s2 + k);
    else
      grad_row_cm<1>(r, xr, nullptr, np, a, b, ctr[k], s1 + k, s2 + k);
  }
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// f(std::integral_constant<int, MK>{}) with the AVX2 gradient epilogues' mask kind MK: 2 a stored
// mask (relu and mb), 1 fma(sc, x, sh) > 0 (relu), 0 none.
template <typename F>
inline void with_mask_kind(bool relu, const float* mb, F&& f) {
  if (relu && mb)
    f(std::integral_constant<int, 2>{});
  else if (relu)
    f(std::integral_constant<int, 1>{});
  else
    f(std::integral_constant<int, 0>{});
}

// The gradient epilogue of 16 channels over nr rows (AVX2; the loop of grad16 below). MK, the
// mask's kind, fixed per loop: 0 none, 1 fma(sc, x, sh) > 0, 2 the stored mask mb > 0. (Chosen
// inside the loop, GCC tested the kind every row and spilled the stored-mask form's registers:
// in a replay of resnext_small's 32->32 @32 fused input gradient the epilogue's share of the
// samples went from 4.99% to 4.65%; whole calls within the noise. The same operations: the same bits.)
template <int MK>
inline void grad16_pass(float* y, const float* xb, const float* mb, int64_t ld, int64_t nr, const float* sc,
                        const float* sh, const double* ctr, double* s1, double* s2, bool cont) {
  __m256d a1[4], a2[4], c[4];
  __m256 ka[2], kb[2];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    a1[q] = cont ? _mm256_loadu_pd(s1 + 4 * q) : _mm256_setzero_pd();
    a2[q] = cont ? _mm256_loadu_pd(s2 + 4 * q) : _mm256_setzero_pd();
    c[q] = _mm256_loadu_pd(ctr + 4 * q);
  }
  for (int h = 0; h < 2; ++h) {
    ka[h] = sc ? _mm256_loadu_ps(sc + 8 * h) : _mm256_set1_ps(1.0f);
    kb[h] = sc ? _mm256_loadu_ps(sh + 8 * h) : _mm256_setzero_ps();
  }
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t r = 0; r < nr; ++r) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      float* yr = y + r * ld + 8 * h;
      const float* xp = xb + r * ld + 8 * h;
      __m256 v = _mm256_loadu_ps(yr);
      if constexpr (MK == 2)
        v = _mm256_and_ps(v, _mm256_cmp_ps(_mm256_loadu_ps(mb + r * ld + 8 * h), zero, _CMP_GT_OQ));
      else if constexpr (MK == 1)
        v = _mm256_and_ps(v, _mm256_cmp_ps(_mm256_fmadd_ps(ka[h], _mm256_loadu_ps(xp), kb[h]), zero, _CMP_GT_OQ));
      _mm256_storeu_ps(yr, v);
      const __m256d vl = lo4d(v), vh = hi4d(v);
      a1[2 * h] = _mm256_add_pd(a1[2 * h], vl);
      a1[2 * h + 1] = _mm256_add_pd(a1[2 * h + 1], vh);
      a2[2 * h] = _mm256_add_pd(a2[2 * h], _mm256_mul_pd(vl, _mm256_sub_pd(cvt4d(xp), c[2 * h])));
      a2[2 * h + 1] = _mm256_add_pd(a2[2 * h + 1], _mm256_mul_pd(vh, _mm256_sub_pd(cvt4d(xp + 4), c[2 * h + 1])));
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    _mm256_storeu_pd(s1 + 4 * q, a1[q]);
    _mm256_storeu_pd(s2 + 4 * q, a2[q]);
  }
}

// The gradient epilogue of nk channels (a multiple of 8) over nr rows, rows outermost as
// stats_rows_pass: the block's rows (and x's) read in address order once, each 8-channel vector's
// sums continued over 4 rows from s1, s2. The same operations per channel in the same order as
// grad16_pass: the same bits. Used from 64 channels (grad_epilogue_pm). The passes of 16 channels
// read one line of every row of y and x per pass, and perf put half of grad16_pass's samples on
// its load of x (mobilenet_small's 128-channel 1x1 input gradient). Alternating calls in one
// process, 2 threads, while the host's memory was slow: mobilenet_small's depthwise input
// gradients 1.13x (stride 2, 64 channels, two runs) and 1.06-1.10x (128), its 1x1 input gradients
// 0.99-1.02x; while it was fast, the two builds side by side: 0.99-1.01x on every call. At 16-32
// channels (resnext_small) the register passes (0.98-1.00x in this form) stay.
template <int MK>
inline void grad_rows_pass(float* y, const float* xb, const float* mb, int64_t ld, int64_t nr, int64_t nk,
                           const float* sc, const float* sh, const double* ctr, double* s1, double* s2, bool cont) {
  const __m256 zero = _mm256_setzero_ps();
  rows_by_vectors(nr, nk, s1, s2, cont, [&](int64_t k, int64_t r0, auto rb, Sums8& a) __attribute__((always_inline)) {
    const __m256d cl = _mm256_loadu_pd(ctr + k), ch = _mm256_loadu_pd(ctr + k + 4);
    __m256 ka = _mm256_set1_ps(1.0f), kb = zero;
    if constexpr (MK == 1)
      if (sc) ka = _mm256_loadu_ps(sc + k), kb = _mm256_loadu_ps(sh + k);
#pragma GCC unroll 4
    for (int i = 0; i < decltype(rb)::value; ++i) {
      float* yr = y + (r0 + i) * ld + k;
      const float* xp = xb + (r0 + i) * ld + k;
      __m256 v = _mm256_loadu_ps(yr);
      if constexpr (MK == 2)
        v = _mm256_and_ps(v, _mm256_cmp_ps(_mm256_loadu_ps(mb + (r0 + i) * ld + k), zero, _CMP_GT_OQ));
      else if constexpr (MK == 1)
        v = _mm256_and_ps(v, _mm256_cmp_ps(_mm256_fmadd_ps(ka, _mm256_loadu_ps(xp), kb), zero, _CMP_GT_OQ));
      _mm256_storeu_ps(yr, v);
      const __m256d vl = lo4d(v), vh = hi4d(v);
      a.s1l = _mm256_add_pd(a.s1l, vl);
      a.s1h = _mm256_add_pd(a.s1h, vh);
      a.s2l = _mm256_add_pd(a.s2l, _mm256_mul_pd(vl, _mm256_sub_pd(cvt4d(xp), cl)));
      a.s2h = _mm256_add_pd(a.s2h, _mm256_mul_pd(vh, _mm256_sub_pd(cvt4d(xp + 4), ch)));
    }
  });
}

template <int P>
void grad16(float* y, const float* xb, const float* mb, int64_t ld, int64_t nr, const float* sc, const float* sh,
            bool relu, const double* ctr, double* s1, double* s2, bool cont) {
  for (int h = 0; h < P; ++h) {
    const int64_t o = 16 * h;
    const float* m = mb ? mb + o : nullptr;
    const float* a = sc ? sc + o : nullptr;
    const float* b = sc ? sh + o : nullptr;
    with_mask_kind(relu, mb, [&](auto mk) __attribute__((always_inline)) {
      grad16_pass<decltype(mk)::value>(y + o, xb + o, m, ld, nr, a, b, ctr + o, s1 + o, s2 + o, cont);
    });
  }
}
#else
// grad_epilogue_pm on P*16 channels at a time, the sums in registers (per channel the same
// operations in the same order as the loop there).
template <int P>
void grad16(float* y, const float* xb, const float* mb, int64_t ld, int64_t nr, const float* sc, const float* sh,
            bool relu, const double* ctr, double* s1, double* s2, bool cont) {
  D8v a1[2 * P], a2[2 * P], c[2 * P];
  F16v ka[P], kb[P];
#pragma GCC unroll 4
  for (int q = 0; q < 2 * P; ++q) {
    a1[q] = cont ? load8d(s1 + 8 * q) : D8v{};
    a2[q] = cont ? load8d(s2 + 8 * q) : D8v{};
    c[q] = load8d(ctr + 8 * q);
  }
  // (whole-vector loads: filled lane by lane, the vectors went through the stack and their reads
  // waited on store forwarding at every call, which the strided grouped path makes once a row.
  // Cold replays, the calls alternating in one process: resnext_small's fused input gradients
  // 0.99-1.05x, the s2 grouped ones 1.02-1.05x)
  const F16v zero = {};
  for (int q = 0; q < P; ++q) {
    ka[q] = sc ? load16(sc + 16 * q) : zero + 1.0f;
    kb[q] = sc ? load16(sh + 16 * q) : zero;
  }
  for (int64_t r = 0; r < nr; ++r) {
#pragma GCC unroll 2
    for (int q = 0; q < P; ++q) {
      float* yr = y + r * ld + 16 * q;
      const F16v xv = load16(xb + r * ld + 16 * q);
      F16v v = load16(yr);
      if (relu && mb) v = load16(mb + r * ld + 16 * q) > zero ? v : zero;
      else if (relu) v = fma16(ka[q], xv, kb[q]) > zero ? v : zero;
      store16(yr, v);
      const D8v vl = lo8(v), vh = hi8(v);
      a1[2 * q] += vl;
      a1[2 * q + 1] += vh;
      a2[2 * q] += vl * (lo8(xv) - c[2 * q]);
      a2[2 * q + 1] += vh * (hi8(xv) - c[2 * q + 1]);
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < 2 * P; ++q) {
    store8d(s1 + 8 * q, a1[q]);
    store8d(s2 + 8 * q, a2[q]);
  }
}
#endif

// Pixel-major block (NHWC): nr rows of nk channels, row stride ld (cont: the sums continue from
// s1, s2, as block_stats_pm).
void grad_epilogue_pm(float* y, const float* xb, const float* mb, int64_t ld, int64_t nr, int64_t nk,
                      const float* sc, const float* sh, bool relu, const double* ctr, double* s1, double* s2,
                      bool cont = false) {
  int64_t kv = 0;
#if defined(__AVX2__) && !defined(__AVX512F__)
  if (nk >= 64) {
    kv = nk / 16 * 16;
    with_mask_kind(relu, mb, [&](auto mk) __attribute__((always_inline)) {
      grad_rows_pass<decltype(mk)::value>(y, xb, mb, ld, nr, kv, sc, sh, ctr, s1, s2, cont);
    });
  }
#endif
  for (; kv + 32 <= nk; kv += 32)
    grad16<2>(y + kv, xb + kv, mb ? mb + kv : nullptr, ld, nr, sc ? sc + kv : nullptr, sc ? sh + kv : nullptr,
              relu, ctr + kv, s1 + kv, s2 + kv, cont);
  for (; kv + 16 <= nk; kv += 16)
    grad16<1>(y + kv, xb + kv, mb ? mb + kv : nullptr, ld, nr, sc ? sc + kv : nullptr, sc ? sh + kv : nullptr,
              relu, ctr + kv, s1 + kv, s2 + kv, cont);
  for (int64_t k0 = kv; k0 < nk; k0 += 64) {  // channels in pieces of 64, local accumulators
    const int64_t n = std::min<int64_t>(64, nk - k0);
    double a1[64], a2[64], c[64];
    float ka[64], kb[64];
    for (int64_t k = 0; k < n; ++k) {
      a1[k] = cont ? s1[k0 + k] : 0;
      a2[k] = cont ? s2[k0 + k] : 0;
      c[k] = ctr[k0 + k];
      ka[k] = sc && !mb ? sc[k0 + k] : 1.0f;
      kb[k] = sc && !mb ? sh[k0 + k] : 0.0f;
    }
    for (int64_t r = 0; r < nr; ++r) {
      float* __restrict yr = y + r * ld + k0;
      const float* __restrict xr = xb + r * ld + k0;
      // (with a stored mask: the fma form's a = 1, b = 0 on the mask's values, same rule m > 0)
      const float* __restrict mr = mb ? mb + r * ld + k0 : xr;
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        const float xv = xr[k];
        const float v = (!relu || std::fma(ka[k], mr[k], kb[k]) > 0.0f) ? yr[k] : 0.0f;
        yr[k] = v;
        a1[k] += double(v);
        a2[k] += double(v) * (double(xv) - c[k]);
      }
    }
    for (int64_t k = 0; k < n; ++k) {
      s1[k0 + k] = a1[k];
      s2[k0 + k] = a2[k];
    }
  }
}

// grad_sum / grad_sumxc of channels [c0, c0 + n) from the partials of the units `order` (in order).
void combine_grad(const StatParts& p, const int64_t* order, int64_t count, int64_t c0, int64_t n, const Fused* fu) {
  for (int64_t k = 0; k < n; ++k) {
    double a = 0, b = 0;
    for (int64_t i = 0; i < count; ++i) {
      a += p.s1(order[i])[k];
      b += p.s2(order[i])[k];
    }
    fu->grad_sum[c0 + k] = a;
    fu->grad_sumxc[c0 + k] = b;
  }
}

// Channels [c0, c0 + n) of fu's sums from the units `order` (count of them, in that order): the
// gradient epilogue's sums (grad) and the statistics (stats).
void combine_unit_sums(const StatParts& p, const int64_t* order, int64_t count, int64_t c0, int64_t n, const Fused* fu,
                       bool stats, bool grad) {
  if (grad) combine_grad(p, order, count, c0, n, fu);
  if (stats)
    for (int64_t k = 0; k < n; ++k)
      combine_stats(p, order, count, k, fu->stats_sum + c0 + k, fu->stats_sumsq + c0 + k);
}

// The prologue of group gi (channels gi*Cg ...), or null.
const Prologue* group_prologue(const Fused* fu, int64_t gi, int64_t Cg, Prologue* store) {
  if (!fu || (!fu->pre_scale && !fu->pre_relu)) return nullptr;
  *store = Prologue{fu->pre_scale ? fu->pre_scale + gi * Cg : nullptr, fu->pre_shift ? fu->pre_shift + gi * Cg : nullptr,
                    fu->pre_relu};
  return store;
}

template <typename T>
const T* residual_of(const Fused* fu) {
  if constexpr (std::is_same_v<T, float>)
    return fu ? fu->residual : nullptr;
  else
    return nullptr;
}

// ---- small output planes: whole-batch GEMMs over fixed tiles (small_planes(), G == 1) ----------
// One GEMM per image (or per 16-row chunk) re-reads and re-packs the whole weight tensor for a
// handful of rows: the NHWC forward of 3x3 512->512 at 2x2 (N = 16) packed its 9.4 MB of weights
// four times after laying them out once more, and the weight gradient ran on one thread. Here the
// N*P pixels of the batch are the rows of one GEMM per pass, taken in blocks of whole images:
// each block's im2col is built by all threads into one shared buffer, with columns ordered
// (c, i, j) like w's rows, so the weights are read in place; then the block's GEMM is cut into
// tiles of its output, from the shape alone, that the threads share. Every output element is one
// sgemm sum (its bits depend on the reduction length and the ISA level only), so the results do
// not depend on the thread count.

// Rows [r0, r1) of the batch (row r: image r / P, pixel r % P):
// col[(r - r0)*KK + c*kh*kw + i*kw + j] = prologue(x[n, ih, iw, c]) (0 in the padding).
void im2col_cij(const float* x, const Geom& g, int64_t r0, int64_t r1, float* col, const Prologue* f) {
  const int64_t P = g.Ho * g.Wo, C = g.C, k2 = g.kh * g.kw, KK = C * k2;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / P, p = r % P, oh = p / g.Wo, ow = p % g.Wo;
    float* row = col + (r - r0) * KK;
    const float* xn = x + n * g.H * g.W * C;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.sh + i * g.dh - g.pt;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t iw = ow * g.sw + j * g.dw - g.pl;
        float* d = row + i * g.kw + j;
        if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) {
          for (int64_t c = 0; c < C; ++c) d[c * k2] = 0.0f;
          continue;
        }
        const float* s = xn + (ih * g.W + iw) * C;
        if (f)
          for (int64_t c = 0; c < C; ++c) d[c * k2] = apply(s[c], f, c);
        else
          for (int64_t c = 0; c < C; ++c) d[c * k2] = s[c];
      }
    }
  }
}

// The adjoint: dx[n, ih, iw, c] += col[...] over rows [r0, r1) (same shape and order).
void col2im_cij(const float* col, const Geom& g, int64_t r0, int64_t r1, float* dx) {
  const int64_t P = g.Ho * g.Wo, C = g.C, k2 = g.kh * g.kw, KK = C * k2;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / P, p = r % P, oh = p / g.Wo, ow = p % g.Wo;
    const float* row = col + (r - r0) * KK;
    float* dxn = dx + n * g.H * g.W * C;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.sh + i * g.dh - g.pt;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t iw = ow * g.sw + j * g.dw - g.pl;
        if (iw < 0 || iw >= g.W) continue;
        const float* s = row + i * g.kw + j;
        float* d = dxn + (ih * g.W + iw) * C;
        for (int64_t c = 0; c < C; ++c) d[c] += s[c * k2];
      }
    }
  }
}

// The im2col of batch rows [R0, R0 + rows) into col (rows x C*kh*kw), built by all threads in
// pieces of 16 rows (a 1x1 kernel read directly: only the prologue to apply).
void block_col(const float* x, const Geom& g, int64_t R0, int64_t rows, float* col, const Prologue* pf) {
  const int64_t pieces = ceil_div(rows, 16), KK = g.C * g.kh * g.kw;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t q = 0; q < pieces; ++q) {
    const int64_t a0 = R0 + q * 16, a1 = R0 + std::min(rows, q * 16 + 16);
    if (reads_x_directly(g))
      prologue_rows(x, g.C, a0, a1, 0, g.C, col + q * 16 * KK, pf);
    else
      im2col_cij(x, g, a0, a1, col + q * 16 * KK, pf);
  }
}

// Images per block: the block's im2col (P*KK floats an image) within 8 MiB, at least one image.
int64_t batch_images(const Geom& g, int64_t KK) {
  return std::max<int64_t>(1, std::min<int64_t>(g.N, (int64_t(2) << 20) / std::max<int64_t>(1, g.Ho * g.Wo * KK)));
}

// Tiles of an M x N output: rows in pieces of at most 256 (the sgemm's MC), columns in pieces of
// a multiple of 32 (two register blocks) and at least 64, about 8 tiles in all.
struct Tiles {
  Split m, n;
  int64_t count() const { return m.count * n.count; }
};
Tiles tiles(int64_t M, int64_t N) {
  const Split m = split(M, 256);
  const int64_t want = ceil_div(8, m.count);
  const int64_t cn = std::max<int64_t>(64, (ceil_div(N, want) + 31) / 32 * 32);
  return Tiles{m, split(N, cn)};
}

// Forward: Y (rows x K) = col (rows x KK) . w^T, w read in place as B = (KK x K) with unit row
// stride; the fused prologue/epilogue of fu as in forward_nhwc.
void batched_forward(const float* x, const float* w, const float* b, float* y, const Geom& g, const Fused* fu) {
  const int64_t P = g.Ho * g.Wo, K = g.K, KK = g.C * g.kh * g.kw;
  // With a prologue x goes through im2col (a vectorised pass into L2), not the sgemm's A packing.
  const bool direct = reads_x_directly(g) && !(fu && (fu->pre_scale || fu->pre_relu));
  const int64_t nb = direct ? g.N : batch_images(g, KK), blocks = ceil_div(g.N, nb);
  const int64_t mt_max = split(nb * P, 256).count;  // row tiles of a full block
  const bool stats = fu && fu->stats_sum, grad = fu && fu->grad_sum;
  const StatParts st = stats || grad ? stat_parts(blocks * mt_max, K) : StatParts{};
  const float* residual = residual_of<float>(fu);
  const bool relu = fu && fu->post_relu;
  Prologue pstore;
  const Prologue* pf = group_prologue(fu, 0, g.C, &pstore);
  float* col = direct ? nullptr : scratch<float>(kBatchSlot, nb * P * KK);
  isa_vector<int64_t> order;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t R0 = blk * nb * P, rows = std::min(nb, g.N - blk * nb) * P;
    if (!direct) block_col(x, g, R0, rows, col, pf);
    const Tiles t = tiles(rows, K);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
    for (int64_t u = 0; u < t.count(); ++u) {
      const int64_t im = u / t.n.count, jn = u % t.n.count;
      const int64_t i0 = im * t.m.chunk, nr = std::min(rows - i0, t.m.chunk);
      const int64_t k0 = jn * t.n.chunk, nk = std::min(K - k0, t.n.chunk);
      const float* A = direct ? x + (R0 + i0) * g.C : col + i0 * KK;
      float* yr = y + (R0 + i0) * K + k0;
      gemm_t<true>(false, true, nr, nk, KK, A, KK, w + k0 * KK, KK, 0.0f, yr, K, direct ? pf : nullptr, nullptr);
      const int64_t su = blk * mt_max + im;  // the statistics unit: this row tile
      if (stats && jn == 0) st.cnt[su] = nr;
      epilogue_pm(yr, K, nr, nk, b ? b + k0 : nullptr, residual ? residual + (R0 + i0) * K + k0 : nullptr, relu,
                  stats ? st.s1(su) + k0 : nullptr, stats ? st.s2(su) + k0 : nullptr,
                  stats ? st.sh(su) + k0 : nullptr);
      if (grad)
        grad_epilogue_pm(yr, fu->gx + (R0 + i0) * K + k0, grad_mask(fu, (R0 + i0) * K + k0), K, nr, nk,
                         fu->gscale ? fu->gscale + k0 : nullptr,
                         fu->gshift ? fu->gshift + k0 : nullptr, fu->grelu, fu->center + k0, st.s1(su) + k0,
                         st.s2(su) + k0);
    }
    if (stats || grad)
      for (int64_t im = 0; im < t.m.count; ++im) order.push_back(blk * mt_max + im);
  }
  if (grad) combine_grad(st, order.data(), int64_t(order.size()), 0, K, fu);
  if (!stats) return;
  for (int64_t kk = 0; kk < K; ++kk)
    combine_stats(st, order.data(), int64_t(order.size()), kk, fu->stats_sum + kk, fu->stats_sumsq + kk);
}

// Weight gradient: dW (K x KK, w's own layout) = sum over blocks of dY^T (K x rows) . col, col
// built from prologue(x) when fu has a prologue (the normalized input recomputed while it is laid
// out, never stored whole).
void batched_backward_weight(const float* dy, const float* x, float* dw, const Geom& g, const Fused* fu) {
  const int64_t P = g.Ho * g.Wo, K = g.K, KK = g.C * g.kh * g.kw;
  Prologue pstore;
  const Prologue* pf = group_prologue(fu, 0, g.C, &pstore);
  const bool direct = reads_x_directly(g) && !pf;
  const int64_t nb = direct ? g.N : batch_images(g, KK), blocks = ceil_div(g.N, nb);
  float* col = direct ? nullptr : scratch<float>(kBatchSlot, nb * P * KK);
  const Tiles t = tiles(K, KK);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t R0 = blk * nb * P, rows = std::min(nb, g.N - blk * nb) * P;
    if (!direct) block_col(x, g, R0, rows, col, pf);
    const float* B = direct ? x + R0 * g.C : col;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
    for (int64_t u = 0; u < t.count(); ++u) {
      const int64_t k0 = (u / t.n.count) * t.m.chunk, nk = std::min(K - k0, t.m.chunk);
      const int64_t j0 = (u % t.n.count) * t.n.chunk, nj = std::min(KK - j0, t.n.chunk);
      gemm_t<true>(true, false, nk, nj, rows, dy + R0 * K + k0, K, B + j0, KK, blk ? 1.0f : 0.0f,
                   dw + k0 * KK + j0, KK);
    }
  }
}

// Input gradient (any stride): dcol (rows x KK) = dY (rows x K) . w (K x KK, as it is), then col2im
// by images (each image's rows by one thread, in row order); a 1x1 kernel at stride 1 without
// padding writes dx directly.
void batched_backward_input(const float* dy, const float* w, float* dx, const Geom& g) {
  const int64_t P = g.Ho * g.Wo, K = g.K, KK = g.C * g.kh * g.kw, img = g.H * g.W * g.C;
  const bool direct = reads_x_directly(g);
  const int64_t nb = direct ? g.N : batch_images(g, KK), blocks = ceil_div(g.N, nb);
  float* col = direct ? dx : scratch<float>(kBatchSlot, nb * P * KK);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t n0 = blk * nb, nn = std::min(nb, g.N - n0), R0 = n0 * P, rows = nn * P;
    const Tiles t = tiles(rows, KK);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
    for (int64_t u = 0; u < t.count(); ++u) {
      const int64_t i0 = (u / t.n.count) * t.m.chunk, nr = std::min(rows - i0, t.m.chunk);
      const int64_t j0 = (u % t.n.count) * t.n.chunk, nj = std::min(KK - j0, t.n.chunk);
      gemm_t<true>(false, false, nr, nj, K, dy + (R0 + i0) * K, K, w + j0, KK, 0.0f,
                   (direct ? dx + R0 * KK : col) + i0 * KK + j0, KK);
    }
    if (direct) continue;
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t n = n0; n < n0 + nn; ++n) {
      std::fill(dx + n * img, dx + (n + 1) * img, 0.0f);
      col2im_cij(col + (n - n0) * P * KK, g, n * P, (n + 1) * P, dx);
    }
  }
}

// Weights as (G, kh*kw*Cg, Kg) with rows ordered (i, j, c): the B operand of the NHWC forward
// and of the patches paths.
template <typename T>
const T* weights_ijc_k(const T* w, const Geom& g) {
  const int64_t Cg = g.Cg(), Kg = g.Kg(), k2 = g.kh * g.kw, KK = Cg * k2;
  T* wt = scratch<T>(kWeightSlot, g.G * KK * Kg);
  for (int64_t gi = 0; gi < g.G; ++gi)
    for (int64_t ko = 0; ko < Kg; ++ko)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t t = 0; t < k2; ++t)
          wt[(gi * KK + t * Cg + c) * Kg + ko] = w[((gi * Kg + ko) * Cg + c) * k2 + t];
  return wt;
}

// ---- NHWC 1x1 convolutions at stride 1 without padding (G == 1) on the in-place kernels -------
// x (and dy) are row-major matrices of pixels by channels as they lie, so no pass lays them out:
// the forward pass (and the input gradient, the adjoint's forward) reads x in place through
// sgemm_rows() against the weights packed once per call, in blocks of rows small enough that the
// epilogue (bias, statistics, residual, ReLU, or the gradient mask and sums) runs on each block
// while it is still in cache; the weight gradient reduces dY^T . x over fixed pieces of pixels
// with sgemm_tn(), which reads both in place. The units, their order and the per-element chains
// are forward_nhwc's and backward_weight_gemm's, so the bits are theirs.

// Rows [r0, r0 + nr) of a strided one_by_one(g) problem's input (output pixel (n, oh, ow) reads
// x's pixel (n, oh*sh, ow*sw)) into dst (nr x C), through the prologue pf when given.
void gather_strided_rows(const float* x, const Geom& g, int64_t r0, int64_t nr, const Prologue* pf, float* dst) {
  const int64_t C = g.C, P = g.Ho * g.Wo;
  int64_t n = r0 / P, oh = (r0 % P) / g.Wo, ow = r0 % g.Wo;
  for (int64_t i = 0; i < nr; ++i) {
    const float* src = x + ((n * g.H + oh * g.sh) * g.W + ow * g.sw) * C;
    if (pf)
      apply_channels(dst + i * C, src, C, pf, 0);
    else
      std::memcpy(dst + i * C, src, C * sizeof(float));
    if (++ow == g.Wo) {
      ow = 0;
      if (++oh == g.Ho) oh = 0, ++n;
    }
  }
}

// Rows [r0, r0 + nr) of y (pixel-major, K channels, images of H x W pixels) += the residual given
// at the pixels (h, w) with h and w multiples of s only (res: N x ceil(H/s) x ceil(W/s) x K).
// (One float add per element, as the register blocks' store adds a whole residual: the same bits.)
void add_strided_rows(float* y, const float* res, int64_t r0, int64_t nr, int64_t K, int64_t H, int64_t W,
                      int64_t s) {
  const int64_t Hr = ceil_div(H, s), Wr = ceil_div(W, s);
  int64_t n = r0 / (H * W), h = (r0 / W) % H, x = r0 % W;
  for (int64_t r = 0; r < nr; ++r) {
    if (h % s == 0 && x % s == 0) {
      float* __restrict yr = y + r * K;
      const float* __restrict q = res + ((n * Hr + h / s) * Wr + x / s) * K;
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) yr[k] += q[k];
    }
    if (++x == W) {
      x = 0;
      if (++h == H) h = 0, ++n;
    }
  }
}

// The weight gradient of an NHWC 1x1 convolution at stride 1 (backward_weight_1x1_nhwc): dW (K x C)
// = the sum over fixed pieces of the N*H*W pixels (backward_weight_gemm's) of dY^T . pf(x) over the
// piece (float, sgemm_tn), the pieces' partials added in piece order in double. A piece may be
// reduced a range of rows at a time (wgrad_1x1_rows), each range after the first continuing the
// piece's partial: where every range starts a multiple of the sgemm's KC rows into its piece the
// partial has the bits of one call over the whole piece.
struct Wgrad1x1 {
  int64_t rows, K, C, pieces, per;
  // Without a prologue the partials may be dW^T (x^T . dY) where its register blocks fit the
  // shape better (32->16: 16 x 32 takes blocks of 12 or 8 rows by 32, 32 x 16 two of 16 by 16).
  bool tr;
  const Prologue* pf;
  float* part;  // [piece][K*C] (the calling thread's scratch)
};
Wgrad1x1 wgrad_1x1_plan(const Geom& g, const Prologue* pf);
// (dy row r at dy + (r - dy_base) * K, x row r at x + (r - x_base) * C: blocks holding rows
// [dy_base, ...) or [x_base, ...) only)
void wgrad_1x1_rows(const Wgrad1x1& p, const float* dy, const float* x, int64_t r0, int64_t r1, int64_t dy_base = 0,
                    int64_t x_base = 0, RowsPrefetch* pre = nullptr);
void wgrad_1x1_pieces(const Wgrad1x1& p, const float* dy, const float* x);  // every piece, threads over them
// The same for a strided one_by_one(g) (p: its plan): rows [a, b) of the output pixels, x's rows
// gathered from the strided pixels into a block of the calling worker first; every piece.
void wgrad_1x1_strided_rows(const Wgrad1x1& p, const float* dy, const float* x, const Geom& g, int64_t a, int64_t b,
                            int64_t dy_base = 0, RowsPrefetch* pre = nullptr);
void wgrad_1x1_strided_pieces(const Wgrad1x1& p, const float* dy, const float* x, const Geom& g);
void wgrad_1x1_finish(const Wgrad1x1& p, float* dw);
void backward_weight_1x1_nhwc(const float* dy, const float* x, float* dw, const Geom& g, const Prologue* pf);
void backward_weight_1x1_strided(const float* dy, const float* x, float* dw, const Geom& g, const Prologue* pf);

// At a stride above 1 the rows of x a block needs are gathered (through the prologue) into an L1
// block first, then read in place like a stride-1 problem's.
void forward_1x1_nhwc(const float* x, const float* w, const float* b, float* y, const Geom& g, const Fused* fu) {
  const int64_t R = g.N * g.Ho * g.Wo, C = g.C, K = g.K;
  const bool strided = !reads_x_directly(g);
  Prologue pstore;
  const Prologue* pf = group_prologue(fu, 0, C, &pstore);
  float* bp = scratch<float>(kBatchSlot, sgemm_rows_b_size(C, K));
  sgemm_rows_pack_b(C, K, Operand{w, 1, C}, bp);  // B = w^T (C x K)
  // forward_nhwc's units: 1024 rows, or with a prologue the rows of its im2col block.
  const Split s = split(R, pf ? std::max<int64_t>(16, std::min<int64_t>(512, (int64_t(1) << 16) / C)) : 1024);
  const bool stats = fu && fu->stats_sum, grad = fu && fu->grad_sum;
  // Blocks of rows, a multiple of every register block: x's rows and y's within about 48 KiB for
  // the input gradient's pass (grad), 192 KiB for the forward pass (in L2; the next block's
  // operands, prefetched over a block's product, are then further ahead). Against 48 KiB, cold
  // replays alternating in one process: resnext_small's NHWC 1x1 forward passes 1.03-1.08x on 2
  // threads, 1.00-1.08x on 1, the AVX2 code 1.03-1.05x; the benchmark's 1x1 shapes (N = 32 at 56x56
  // and 28x28, plain and with statistics) 1.00-1.07x; the plain input gradient's adjoint pass
  // (no epilogue: these blocks too) 1.01-1.02x. The fused input gradient's passes were 0.96-1.03x
  // with larger blocks. The blocks do not change the bits (each output's sum and each channel's
  // statistics run in the same order).
  const int64_t sub = std::max<int64_t>(48, (grad ? 12288 : 49152) / (C + K) / 48 * 48);
  const StatParts st = stats || grad ? stat_parts(s.count, K) : StatParts{};
  const float* residual = fu ? fu->residual : nullptr;
  // A gradient's residual given at the strided pixels only (Fused::res_stride; g here is the
  // adjoint, y the input gradient): added to those rows of each block before its epilogue.
  const int64_t rs = residual && grad ? fu->res_stride : 1;
  const bool relu = fu && fu->post_relu;
  // x (the adjoint's input: the gradient dy) as a batch norm's apply pass (Fused::dy_apply): each
  // block's rows evaluated into x's own rows (x is then where the pass is written), read back from
  // L1 by the block's product.
  const DyApply* dya = fu && !strided ? fu->dy_apply : nullptr;  // (backward_input_fused: never strided)
  // The convolution's weight gradient from the same rows (Fused::wgrad_dw; g here is the adjoint,
  // x the gradient dy): each unit's rows reduced into the weight gradient's partials as the unit
  // goes (spans of whole KC blocks between its blocks of rows, below), while its dy rows (written
  // by the apply pass) and the input's rows are in cache. The work items are runs of units that no
  // piece of the weight gradient crosses, so each piece's
  // ranges are reduced in order by one thread; where a unit would start a piece's range off the
  // sgemm's KC grid (other bits than the weight gradient's own pass), or where there are fewer
  // such runs than threads, the weight gradient's own pass runs after.
  const bool wgrad = fu && fu->wgrad_dw && !strided && !pf && R > 0;
  Prologue wstore{};
  Wgrad1x1 wp{};
  // A strided convolution's weight gradient (Fused::wgrad_geom; this pass its input gradient at
  // the strided pixels): each unit's rows of its input gathered from those pixels into a block of
  // the worker, as its own pass gathers them (backward_weight_1x1_strided: the same plan).
  const Geom* wg = wgrad ? fu->wgrad_geom : nullptr;
  if (wgrad) {
    wstore = Prologue{fu->wgrad_scale, fu->wgrad_shift, fu->wgrad_relu};
    Geom gc = g;  // the convolution's own geometry (1x1, stride 1: the adjoint's channels swapped)
    gc.C = g.K;
    gc.K = g.C;
    wp = wgrad_1x1_plan(wg ? *wg : gc, wstore.scale || wstore.relu ? &wstore : nullptr);
  }
  // whether unit u ends a piece of the weight gradient (or the rows)
  auto ends_piece = [&](int64_t u) { return std::min(R, (u + 1) * s.chunk) % wp.per == 0 || (u + 1) * s.chunk >= R; };
  bool in_pass = wgrad;
  int64_t runs = 0;  // (work items in the pass: fewer than the threads leave one idle, as at batch 1)
  for (int64_t u = 0; u < s.count && in_pass; ++u) {
    in_pass = (u * s.chunk) % wp.per % sgemm_shape().kc == 0;
    runs += ends_piece(u);
  }
  in_pass = in_pass && runs >= num_threads();
  isa_vector<int64_t> items;  // the first unit of each work item, then s.count
  items.push_back(0);
  for (int64_t u = 0; u < s.count; ++u)
    if (!in_pass || ends_piece(u)) items.push_back(u + 1);
  const int64_t n_items = int64_t(items.size()) - 1;
  // dy not kept (Fused::dy_discard): each unit's apply pass into a block of the worker (in L2 for
  // the unit's product and its weight-gradient ranges) instead of dy's rows.
  const bool unit_dy = dya && in_pass && fu->dy_discard;
  // In the pass, a unit's weight gradient is reduced a span at a time between its blocks of rows:
  // after each block, the rows done up to a point of the sgemm's KC grid within their piece (the
  // unit's last span to its end), so each piece's chains are those of one call over its rows (the
  // same bits). The next block's operands are prefetched half over the block's product and half
  // over the span's (sgemm_tn's kernel calls). Run once at the unit's end, the weight gradient's
  // products left the memory idle: in resnext_small's step, removing
  // them took 0.42-0.62 ms off each 1x1 backward at 32x32 and 16x16 (32->32 @32: 2.16 -> 1.56 ms),
  // their whole time at the FMA peak. AVX-512, 2 threads, in the step, alternating blocks of steps,
  // two runs of 10 and 20 rounds: 2.conv3 (32->16 adjoint) 1.03x / 1.05x, 2.conv1 1.07x / 1.03x,
  // 3.conv1 1.02x / 1.02x, 3.conv3 1.02x / 1.03x, 4.conv1 and the strided shortcuts 0.99-1.01x;
  // resnext_small's calls summed 0.8% / 0.9% faster; mobilenet_small's 1x1s (32->64 @32, 64->128
  // @16, 256->128 @16) 0.99-1.02x. Spans without the budgeted prefetch (the product took it all)
  // gave half of that; an eighth of the lines per span or two thirds gave the same within the noise.
  const int64_t kc_rows = sgemm_shape().kc;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t it = 0; it < n_items; ++it)
  for (int64_t u = items[it]; u < items[it + 1]; ++u) {  // (an item's units, in order, by one thread)
    const int64_t r0 = u * s.chunk, r1 = std::min(R, r0 + s.chunk);
    if (stats) st.cnt[u] = r1 - r0;
    float* du = unit_dy ? scratch<float>(kYbSlot, s.chunk * C) : nullptr;  // rows [r0, r1) of dy
    int64_t wdone = r0;
    for (int64_t a = r0; a < r1; a += sub) {
      const int64_t nr = std::min(sub, r1 - a);
      const bool cont = a > r0;
      float* yr = y + a * K;
      // Bias, residual and ReLU on the register blocks as they are stored (a pass over y cost as
      // much as the GEMM's own pass: 32->32 at 32x32, N = 64, 1 thread, 1.85 -> 1.39 ms with a
      // residual); the statistics and the gradient epilogue as passes over the block of y (in L1).
      // (The statistics on the register blocks ran 4-8% slower than this pass: in double, they are
      // the same arithmetic, competing with the block's FMAs.) With the gradient epilogue the
      // residual (the shortcut's gradient) is added in the store too, and the epilogue reads the sum.
      RowsPrefetch pre;
      // the weight gradient's rows [wdone, wnext) are reduced after this block: up to the last
      // point of the KC grid of the piece holding the rows done (its start at the least)
      const int64_t done = a + nr, piece0 = in_pass ? done / wp.per * wp.per : 0;
      const int64_t wnext = !in_pass ? wdone
                            : done == r1 ? r1
                                         : std::max(wdone, piece0 + (done - piece0) / kc_rows * kc_rows);
      const bool in_store = !stats;
      RowsEpilogue ep;
      ep.bias = in_store ? b : nullptr;
      ep.res = in_store && residual && rs == 1 ? residual + a * K : nullptr;
      ep.ldres = K;
      ep.relu = in_store && relu;
      const RowsEpilogue* epp = ep.bias || ep.res || ep.relu ? &ep : nullptr;
      if (strided) {
        float* blk = scratch<float>(kColSlot, sub * C);
        gather_strided_rows(x, g, a, nr, pf, blk);
        sgemm_rows(nr, K, C, blk, C, bp, yr, K, nullptr, epp);
      } else {
        float* xa = du ? du + (a - r0) * C : const_cast<float*>(x) + a * C;
        if (dya) ::cnnkit::CNNKIT_ISA_NS::bn_apply_rows(*dya, a, xa, nr, C);
        // The next block's operands from memory (the apply pass's g and z, the gradient
        // epilogue's x and mask, the residual) into L2 while this block's product runs: the
        // passes over them otherwise wait on memory while the product leaves it idle. AVX-512,
        // resnext_small's fused 1x1 input + weight gradient passes, alternating calls: 32->32 @32,
        // 64->64 @16, 32->64 @16 1.06x, 1.10x, 1.11x on 2 threads, 1.09-1.15x on 1; the step
        // 1.016-1.045x on 2 threads, 1.025x on 1. AVX2 too: its code on the same Zen 4 (no
        // AVX2-only CPU at hand), alternating calls, 32->32 @32, 64->64 @16, 32->64 @16 1.08x, 1.18x,
        // 1.14x on 2 threads, 1.10x, 1.22x on 1; the step 1.027x.
        // (Within the unit: the next unit may run on the other thread.)
#if defined(__AVX2__)
        const int64_t na = a + nr, nn = std::min(sub, r1 - na);
        if (nn > 0) {
          if (residual && rs == 1) pre.add(residual + na * K, nn * K);
          if (grad) {
            pre.add(fu->gmask ? fu->gmask + na * K : nullptr, nn * K);
            pre.add(fu->gx + na * K, nn * K);
          }
          if (dya) {
            pre.add(dya->z + na * C, nn * C);
            if (dya->pooled_s == 0) pre.add(dya->g + na * C, nn * C);  // (per sample: a few lines, in cache)
          }
        }
#endif
        if (wnext > wdone) pre.budget = (pre.lines_left() + 1) / 2;  // (a span follows: the rest for it)
#if defined(__AVX2__) && !defined(__AVX512F__)
        // Spread over the product's blocks of rows: each block's kernel takes an even share of the
        // lines, not all it can (two a step, from the first block on). The kernel then issues two
        // lines a step at the start of every block instead of one burst: in the burst, a line
        // every 3 cycles or so is more than the memory serves, the requests back up and the
        // kernel's own loads wait behind them (Zen 3, sgemm_tn's 32 x 32 x 256 span in L1 with 64
        // to 128 lines from memory: 72 -> 53-58 GFLOP/s). The same for the weight gradient's span
        // below (sgemm_tn: one take per block of R rows of each 64-row sub-block).
        if (pre.n) pre.share = std::max<int64_t>(2, pre.even_share(sgemm_rows_takes(nr, K, C)));  // (2: a step's pair)
#endif
        sgemm_rows(nr, K, C, xa, C, bp, yr, K, pf, epp, pre.n ? &pre : nullptr);
        pre.share = -1;
        pre.budget = -1;
      }
      if (rs > 1) add_strided_rows(yr, residual, a, nr, K, g.Ho, g.Wo, rs);
      if (!in_store)
        epilogue_pm(yr, K, nr, K, b, residual ? residual + a * K : nullptr, relu, stats ? st.s1(u) : nullptr,
                    stats ? st.s2(u) : nullptr, stats ? st.sh(u) : nullptr, cont);
      if (grad)
        grad_epilogue_pm(yr, fu->gx + a * K, grad_mask(fu, a * K), K, nr, K, fu->gscale, fu->gshift, fu->grelu,
                         fu->center, st.s1(u), st.s2(u), cont);
      if (wnext > wdone) {
#if defined(__AVX2__) && !defined(__AVX512F__)
        if (pre.n)
          pre.share = std::max<int64_t>(2, pre.even_share(wp.tr ? sgemm_tn_takes(wp.C, wp.K, wnext - wdone)
                                                                 : sgemm_tn_takes(wp.K, wp.C, wnext - wdone, wp.pf)));
#endif
        RowsPrefetch* wpre = pre.n ? &pre : nullptr;
        if (wg)
          wgrad_1x1_strided_rows(wp, du ? du : x, fu->wgrad_x, *wg, wdone, wnext, du ? r0 : 0, wpre);
        else
          wgrad_1x1_rows(wp, du ? du : x, fu->wgrad_x, wdone, wnext, du ? r0 : 0, 0, wpre);
      }
      wdone = wnext;
    }
  }
  if (wgrad) {
    if (!in_pass && wg)
      wgrad_1x1_strided_pieces(wp, x, fu->wgrad_x, *wg);
    else if (!in_pass)
      wgrad_1x1_pieces(wp, x, fu->wgrad_x);
    wgrad_1x1_finish(wp, fu->wgrad_dw);
  }
  if (!stats && !grad) return;
  isa_vector<int64_t> order(s.count);
  for (int64_t q = 0; q < s.count; ++q) order[q] = q;
  if (grad) combine_grad(st, order.data(), s.count, 0, K, fu);
  if (stats)
    for (int64_t kk = 0; kk < K; ++kk)
      combine_stats(st, order.data(), s.count, kk, fu->stats_sum + kk, fu->stats_sumsq + kk);
}

// The input gradient of an NHWC 1x1 convolution at a stride above 1 (no padding): dx is zero but
// at the pixels (oh*sh, ow*sw), where it is dy's row of that output pixel times w (K x C). Each
// image row is written once, the sgemm_rows product straight into its strided pixels and zeros
// between them, in place of zeroing dx, a product into a column block and a scatter-add pass
// over dx. Bits: sgemm()'s on the same operands, as the column block's.
void backward_input_1x1_strided_nhwc(const float* dy, const float* w, float* dx, const Geom& g) {
  const int64_t C = g.C, K = g.K, rowlen = g.W * C;
  float* bp = scratch<float>(kBatchSlot, sgemm_rows_b_size(K, C));
  sgemm_rows_pack_b(K, C, Operand{w, C, 1}, bp);  // B = w (K x C)
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t r = 0; r < g.N * g.H; ++r) {
    const int64_t n = r / g.H, h = r - n * g.H;
    float* xr = dx + r * rowlen;
    if (h % g.sh != 0 || h / g.sh >= g.Ho) {
      std::fill(xr, xr + rowlen, 0.0f);
      continue;
    }
    for (int64_t c = 0; c < g.W; ++c)
      if (c % g.sw != 0 || c / g.sw >= g.Wo) std::fill(xr + c * C, xr + (c + 1) * C, 0.0f);
    sgemm_rows(g.Wo, C, K, dy + (n * g.Ho + h / g.sh) * g.Wo * K, K, bp, xr, g.sw * C);
  }
}

// fu (float32): the fused prologue and epilogues; null for a plain forward pass.
template <typename T, bool Own>
void forward_nchw(const T* x, const T* w, const T* b, T* y, const Geom& g, const Fused* fu) {
  const int64_t P = g.Ho * g.Wo, Cg = g.Cg(), Kg = g.Kg(), KK = Cg * g.kh * g.kw, HW = g.H * g.W;
  // OpenBLAS cannot apply a prologue while it packs: x then goes through im2col, which applies it.
  const bool direct = reads_x_directly(g) && (Own || !(fu && (fu->pre_scale || fu->pre_relu)));
  // Enough pieces to feed the threads (from the shape alone), each im2col buffer <= 2 MiB.
  // The own GEMM reads im2col blocks of <= 512 KiB (they stay in L2 between im2col and packing).
  int64_t chunk = std::max<int64_t>(64, (int64_t(1) << (Own ? 17 : 19)) / KK);
  const int64_t ng = g.N * g.G;
  if (ng < 16) chunk = std::min(chunk, std::max<int64_t>(256, ceil_div(P, ceil_div(16, ng))));
  if (direct) chunk = std::max<int64_t>(chunk, ng >= 16 ? P : chunk);
  // Without a prologue, the own GEMM reads the patches straight from x as forward_nhwc does
  // (sgemm_patches in its NCHW form: each tap's R pixels packed per channel, the output tile
  // written transposed), in units of 240 pixels (a multiple of every level's MR).
  const bool patches = Own && std::is_same_v<T, float> && !direct && Cg >= 16 &&
                       !(fu && (fu->pre_scale || fu->pre_relu));
  float* bp = nullptr;  // patches: the packed weights of every group
  int64_t bsize = 0;
  if constexpr (Own && std::is_same_v<T, float>)
    if (patches) {
      const float* wt = weights_ijc_k(w, g);
      bsize = sgemm_patches_b_size(KK, Kg, true);
      bp = scratch<float>(kBatchSlot, g.G * bsize);
      for (int64_t gi = 0; gi < g.G; ++gi)
        sgemm_patches_pack_b(KK, Kg, Operand{wt + gi * KK * Kg, Kg, 1}, bp + gi * bsize, true);
      chunk = 240;
    }
  const Split s = split(P, chunk);
  const int64_t units = ng * s.count;
  const bool stats = fu && fu->stats_sum, grad = fu && fu->grad_sum;
  const StatParts st = stats || grad ? stat_parts(units, Kg) : StatParts{};
  const T* residual = residual_of<T>(fu);
  const bool relu = fu && fu->post_relu;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u) {
    const int64_t q = u % s.count, gi = (u / s.count) % g.G, n = u / s.count / g.G;
    const int64_t p0 = q * s.chunk, p1 = std::min(P, p0 + s.chunk), np = p1 - p0;
    const T* xn = x + (n * g.C + gi * Cg) * HW;
    T* yg = y + (n * g.K + gi * Kg) * P;
    Prologue pstore;
    const Prologue* pf = group_prologue(fu, gi, Cg, &pstore);
    if (patches) {
      if constexpr (Own && std::is_same_v<T, float>) {
        Patches a{xn, nullptr, g.H, g.W, 1, g.Ho, g.Wo, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, Cg};
        a.ldn = g.C * HW;
        a.ldc = HW;
        sgemm_patches(a, p0, np, Kg, bp + gi * bsize, yg + p0, P, true);
      }
    } else {
      const T* B = xn + p0;
      int64_t ldb = HW;
      if (!direct) {
        T* col = scratch<T>(kColSlot, KK * np);
        im2col_nchw(xn, g, 0, Cg, p0, p1, col, pf);
        B = col;
        ldb = np;
      }
      gemm_t<Own>(false, false, Kg, np, KK, w + gi * Kg * KK, KK, B, ldb, T(0), yg + p0, P, nullptr,
                  direct ? pf : nullptr);
    }
    if (stats) st.cnt[u] = np;
    epilogue_cm(yg + p0, P, Kg, np, b ? b + gi * Kg : nullptr,
                residual ? residual + (n * g.K + gi * Kg) * P + p0 : nullptr, relu, stats ? st.s1(u) : nullptr,
                stats ? st.s2(u) : nullptr, stats ? st.sh(u) : nullptr);
    if constexpr (std::is_same_v<T, float>)
      if (grad) {
        const int64_t c0 = gi * Kg;
        grad_epilogue_cm(yg + p0, fu->gx + (n * g.K + c0) * P + p0, grad_mask(fu, (n * g.K + c0) * P + p0), P, Kg,
                         np, fu->gscale ? fu->gscale + c0 : nullptr,
                         fu->gshift ? fu->gshift + c0 : nullptr, fu->grelu, fu->center + c0, st.s1(u),
                         st.s2(u));
      }
  }
  if (!stats && !grad) return;
  isa_vector<int64_t> order(g.N * s.count);
  for (int64_t gi = 0; gi < g.G; ++gi) {
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t q = 0; q < s.count; ++q) order[n * s.count + q] = (n * g.G + gi) * s.count + q;
    combine_unit_sums(st, order.data(), int64_t(order.size()), gi * Kg, Kg, fu, stats, grad);
  }
}

#include "winograd.h"

template <typename T, bool Own>
void forward_nhwc(const T* x, const T* w, const T* b, T* y, const Geom& g, const Fused* fu) {
  if constexpr (Own && std::is_same_v<T, float>) {
    if (small_planes(g)) return batched_forward(x, w, b, y, g, fu);
    if (one_by_one(g)) return forward_1x1_nhwc(x, w, b, y, g, fu);
    if (winograd_shape(g)) return winograd_forward_nhwc(x, w, b, y, g, fu);
  }
  const int64_t P = g.Ho * g.Wo, Cg = g.Cg(), Kg = g.Kg(), KK = Cg * g.kh * g.kw, R = g.N * P;
  // With a prologue x goes through im2col, which applies it per pixel into an L2-sized block:
  // OpenBLAS cannot apply it, and the sgemm's A packing would apply it one element at a time.
  const bool direct = reads_x_directly(g) && !(fu && (fu->pre_scale || fu->pre_relu));
  const T* wt = weights_ijc_k(w, g);
  // Without a prologue, the own GEMM reads the patches straight from x (sgemm_patches: no im2col
  // matrix, the same bits) where a tap's run of channels is long enough to pay for its pointers.
  const bool patches = Own && std::is_same_v<T, float> && !direct && Cg >= 16 &&
                       !(fu && (fu->pre_scale || fu->pre_relu));
  float* bp = nullptr;  // patches: the packed weights of every group, then Cg zeros
  int64_t bsize = 0;
  if constexpr (Own && std::is_same_v<T, float>)
    if (patches) {
      bsize = sgemm_patches_b_size(KK, Kg);
      bp = scratch<float>(kBatchSlot, g.G * bsize + Cg);
      std::fill(bp + g.G * bsize, bp + g.G * bsize + Cg, 0.0f);
      for (int64_t gi = 0; gi < g.G; ++gi)
        sgemm_patches_pack_b(KK, Kg, Operand{wt + gi * KK * Kg, Kg, 1}, bp + gi * bsize);
    }
  // The own GEMM reads the im2col rows in place (a narrow C): blocks of <= 256 KiB stay in L2.
  int64_t rows = std::max<int64_t>(16, std::min<int64_t>(512, (int64_t(1) << (Own ? 16 : 18)) / KK));
  if (direct) rows = 1024;
  if (patches) rows = 240;  // a multiple of every level's MR (8, 6, 4); the output tile in L2
  const Split s = split(R, rows);
  const int64_t units = s.count * g.G;
  const bool stats = fu && fu->stats_sum, grad = fu && fu->grad_sum;
  const StatParts st = stats || grad ? stat_parts(units, Kg) : StatParts{};
  const T* residual = residual_of<T>(fu);
  const bool relu = fu && fu->post_relu;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u) {
    const int64_t gi = u % g.G, q = u / g.G;
    const int64_t r0 = q * s.chunk, r1 = std::min(R, r0 + s.chunk), nr = r1 - r0;
    Prologue pstore;
    const Prologue* pf = group_prologue(fu, gi, Cg, &pstore);
    T* yr = y + r0 * g.K + gi * Kg;
    if (patches) {
      if constexpr (Own && std::is_same_v<T, float>)
        sgemm_patches(Patches{x + gi * Cg, bp + g.G * bsize, g.H, g.W, g.C, g.Ho, g.Wo, g.kh, g.kw, g.sh, g.sw, g.dh,
                              g.dw, g.pt, g.pl, Cg},
                      r0, nr, Kg, bp + gi * bsize, yr, g.K);
    } else {
      const T* A;
      int64_t lda;
      if (direct) {
        A = x + r0 * g.C + gi * Cg;
        lda = g.C;
      } else {
        T* col = scratch<T>(kColSlot, nr * KK);
        // Rows may span images: im2col each image's part (a 1x1 kernel read directly: only the
        // prologue to apply, row by row).
        if (reads_x_directly(g)) prologue_rows(x, g.C, r0, r1, gi * Cg, Cg, col, pf);
        for (int64_t r = reads_x_directly(g) ? r1 : r0; r < r1;) {
          const int64_t n = r / P, p0 = r % P, p1 = std::min(P, p0 + (r1 - r));
          im2col_nhwc(x, g, n, gi, 0, Cg, p0, p1, col + (r - r0) * KK, pf);
          r += p1 - p0;
        }
        A = col;
        lda = KK;
      }
      gemm_t<Own>(false, false, nr, Kg, KK, A, lda, wt + gi * KK * Kg, Kg, T(0), yr, g.K, direct ? pf : nullptr,
                  nullptr);
    }
    if (stats) st.cnt[u] = nr;
    epilogue_pm(yr, g.K, nr, Kg, b ? b + gi * Kg : nullptr, residual ? residual + r0 * g.K + gi * Kg : nullptr, relu,
                stats ? st.s1(u) : nullptr, stats ? st.s2(u) : nullptr,
                stats ? st.sh(u) : nullptr);
    if constexpr (std::is_same_v<T, float>)
      if (grad) {
        const int64_t c0 = gi * Kg;
        grad_epilogue_pm(yr, fu->gx + r0 * g.K + c0, grad_mask(fu, r0 * g.K + c0), g.K, nr, Kg,
                         fu->gscale ? fu->gscale + c0 : nullptr,
                         fu->gshift ? fu->gshift + c0 : nullptr, fu->grelu, fu->center + c0, st.s1(u),
                         st.s2(u));
      }
  }
  if (!stats && !grad) return;
  isa_vector<int64_t> order(s.count);
  for (int64_t gi = 0; gi < g.G; ++gi) {
    for (int64_t q = 0; q < s.count; ++q) order[q] = q * g.G + gi;
    combine_unit_sums(st, order.data(), s.count, gi * Kg, Kg, fu, stats, grad);
  }
}

// Weight gradient of an NHWC problem that forward_nhwc runs on patches (16+ channels a group, not a
// plain 1x1): dW_g^T (KK x Kg, rows (i, j, c)) = sum over pieces of the N*P output pixels of
// patches^T . dY_g, one sgemm per (group, piece) whose A panels are packed straight from x
// (sgemm_patches_t: no im2col matrix), into a partial per piece; the partials are added in piece
// order in double. (Transposed because the own sgemm runs a tall KK x Kg product 1.5x faster
// than the wide Kg x KK one: 72 against 46 GFLOP/s at 576 x 64 x 6272, 1 thread.) Pieces are cut from the shape alone (about 16, of whole 1024-pixel runs), so
// the bits do not depend on the thread count.
void backward_weight_patches(const float* dy, const float* x, float* dw, const Geom& g) {
  if (winograd_weight_shape(g)) return winograd_backward_weight_nhwc(dy, x, dw, g, nullptr);
  const int64_t P = g.Ho * g.Wo, Cg = g.Cg(), Kg = g.Kg(), k2 = g.kh * g.kw, KK = Cg * k2, rows = g.N * P;
  int64_t pieces = std::max<int64_t>(1, std::min<int64_t>(ceil_div(16, g.G), rows / 1024));
  while (pieces > 1 && pieces * g.K * KK * int64_t(sizeof(float)) > (int64_t(64) << 20)) --pieces;
  const int64_t per = ceil_div(rows, pieces);
  float* part = scratch<float>(kAccSlot, pieces * g.K * KK);
  float* zeros = scratch<float>(kBatchSlot, Cg);
  std::fill(zeros, zeros + Cg, 0.0f);
  const int64_t units = g.G * pieces;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u) {
    const int64_t gi = u % g.G, pc = u / g.G;
    const int64_t r0 = std::min(rows, pc * per), r1 = std::min(rows, r0 + per);
    const Patches b{x + gi * Cg, zeros, g.H, g.W, g.C, g.Ho, g.Wo, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, Cg};
    sgemm_patches_t(KK, Kg, r1 - r0, b, r0, Operand{dy + r0 * g.K + gi * Kg, g.K, 1},
                    part + (pc * g.G + gi) * KK * Kg, Kg, false);
  }
  // dw[k][c][t] = sum over pieces of part[piece][group][t*Cg + c][k in the group], a row (group,
  // t*Cg + c) of Kg values at a time.
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t row = 0; row < g.G * KK; ++row) {
    const int64_t gi = row / KK, tc = row % KK, t = tc / Cg, c = tc % Cg;
    sum_pieces(part + row * Kg, pieces, g.G * KK * Kg, Kg,
               [&](int64_t kk, double s) { dw[(gi * Kg + kk) * KK + c * k2 + t] = float(s); });
  }
}

}  // namespace

// The registry's conv2d_gemm_f32_nhwc_patches entry (the weight pass; float32, NHWC).
void patches_backward_weight(DType, const void* dy, const void* x, void* dw, const Geom& g) {
  backward_weight_patches(static_cast<const float*>(dy), static_cast<const float*>(x), static_cast<float*>(dw), g);
}

namespace {

// Channel pieces for the weight gradient and the scatter input gradient: about 8+ pieces over
// (group, channel chunk), from the shape alone.
int64_t channel_chunk(const Geom& g) {
  const int64_t Cg = g.Cg();
  // With many (image, group) units there is parallel work enough: whole groups keep the GEMMs
  // wide (a 4-channel chunk made a 32->64 strided 1x1 input gradient 8x slower). Only a few
  // units: split the channels too. The rule reads the shape only, never the thread count.
  if (g.N * g.G >= 16) return Cg;
  const int64_t want_per_group = ceil_div(8, g.G);
  return std::max<int64_t>(1, ceil_div(Cg, std::min(Cg, want_per_group)));
}

// Weight gradient: the N*P output pixels are cut into pieces fixed by the shape; each (group,
// piece) accumulates dW_g over its pixels (beta = 1 GEMMs in pixel order) into its own partial,
// and the partials are added in piece order. A GEMM here is Kg x KK x (pixels of a chunk).
int64_t wgrad_pieces(const Geom& g, size_t elem) {
  const int64_t rows = g.N * g.Ho * g.Wo;
  int64_t p = std::max<int64_t>(1, std::min<int64_t>(ceil_div(16, g.G), rows / 256));
  const int64_t bytes = g.K * g.Cg() * g.kh * g.kw * static_cast<int64_t>(elem);  // one piece, all groups
  while (p > 1 && p * bytes > (int64_t(64) << 20)) --p;
  return p;
}

// fu (float32 only): a fused prologue on x (the weight gradient of conv(prologue(x))), applied
// while x is laid out as im2col rows (a 1x1 kernel then takes the im2col path too); null: plain.
template <typename T, bool Own>
void backward_weight_gemm(const T* dy, const T* x, T* dw, const Geom& g, const Fused* fu = nullptr) {
  if constexpr (Own && std::is_same_v<T, float>) {
    if (g.nhwc && small_planes(g)) return batched_backward_weight(dy, x, dw, g, fu);
    if (winograd_weight_shape(g)) {  // (the fused form with a prologue; NCHW between transposes)
      Prologue pstore;
      return winograd_backward_weight_nhwc(dy, x, dw, g, group_prologue(fu, 0, g.C, &pstore));
    }
    if (g.nhwc && g.G == 1 && reads_x_directly(g)) {
      Prologue pstore;
      return backward_weight_1x1_nhwc(dy, x, dw, g, group_prologue(fu, 0, g.C, &pstore));
    }
    if (g.nhwc && one_by_one(g) && !reads_x_directly(g)) {
      Prologue pstore;
      return backward_weight_1x1_strided(dy, x, dw, g, group_prologue(fu, 0, g.C, &pstore));
    }
  }
  const int64_t P = g.Ho * g.Wo, Cg = g.Cg(), Kg = g.Kg(), k2 = g.kh * g.kw, KK = Cg * k2, HW = g.H * g.W;
  const bool pro = fu && (fu->pre_scale || fu->pre_relu);
  const bool direct = reads_x_directly(g) && !pro;
  const int64_t rows = g.N * P, pieces = wgrad_pieces(g, sizeof(T));
  const int64_t per = ceil_div(rows, pieces);
  const int64_t chunk = g.nhwc ? std::max<int64_t>(16, std::min<int64_t>(1024, (int64_t(1) << 18) / KK))
                               : std::max<int64_t>(64, (int64_t(1) << 19) / KK);
  // Partials [piece][group][Kg][KK]; with one piece in NCHW the GEMMs write dw directly (same layout).
  // The own GEMM computes NCHW partials transposed, [piece][group][KK][Kg] = col . dY^T: it reads
  // the im2col rows in place (a narrow C) and packs only dY, where dW = dY . col^T would gather
  // all of col^T into panels for a C only Kg rows high.
  const bool transposed = Own && !g.nhwc;
  const bool in_place = pieces == 1 && !g.nhwc && !transposed;
  T* part = in_place ? dw : scratch<T>(kAccSlot, pieces * g.K * KK);
  const int64_t units = g.G * pieces;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u) {
    const int64_t gi = u % g.G, pc = u / g.G;
    T* acc = part + (pc * g.G + gi) * Kg * KK;
    Prologue pstore;
    const Prologue* pf = group_prologue(fu, gi, Cg, &pstore);
    const int64_t r1 = std::min(rows, (pc + 1) * per);
    bool first = true;
    for (int64_t r = pc * per; r < r1;) {
      const int64_t n = r / P, p0 = r % P, p1 = std::min({P, p0 + (r1 - r), p0 + chunk}), np = p1 - p0;
      const T* B;
      int64_t ldb;
      if (g.nhwc) {
        if (direct) {
          B = x + (n * P + p0) * g.C + gi * Cg;
          ldb = g.C;
        } else {
          T* col = scratch<T>(kColSlot, np * KK);
          if (reads_x_directly(g))  // a 1x1 kernel with a prologue: only the prologue to apply
            prologue_rows(x, g.C, n * P + p0, n * P + p1, gi * Cg, Cg, col, pf);
          else
            im2col_nhwc(x, g, n, gi, 0, Cg, p0, p1, col, pf);
          B = col;
          ldb = KK;
        }
        gemm_t<Own>(true, false, Kg, KK, np, dy + (n * P + p0) * g.K + gi * Kg, g.K, B, ldb, first ? T(0) : T(1), acc, KK);
      } else {
        const T* xn = x + (n * g.C + gi * Cg) * HW;
        if (direct) {
          B = xn + p0;
          ldb = HW;
        } else {
          T* col = scratch<T>(kColSlot, KK * np);
          im2col_nchw(xn, g, 0, Cg, p0, p1, col, pf);
          B = col;
          ldb = np;
        }
        if (transposed)
          gemm_t<Own>(false, true, KK, Kg, np, B, ldb, dy + (n * g.K + gi * Kg) * P + p0, P, first ? T(0) : T(1), acc,
                      Kg);
        else
          gemm_t<Own>(false, true, Kg, KK, np, dy + (n * g.K + gi * Kg) * P + p0, P, B, ldb, first ? T(0) : T(1),
                      acc, KK);
      }
      first = false;
      r += np;
    }
    if (first) std::fill(acc, acc + Kg * KK, T(0));
  }
  if (in_place) return;
  // dw[k][c][t] = sum over pieces of part[piece][k][col], col = c*k2 + t (NCHW) or t*Cg + c (NHWC)
  // (transposed: part[piece][group][col][k in the group]), a contiguous row of a piece at a time.
  auto at = [&](int64_t k, int64_t col) {
    return k * KK + (g.nhwc ? (col % Cg) * k2 + col / Cg : col);
  };
  if (transposed) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t row = 0; row < g.G * KK; ++row) {
      const int64_t gi = row / KK, col = row % KK;
      sum_pieces(part + row * Kg, pieces, g.G * KK * Kg, Kg,
                 [&](int64_t kk, double s) { dw[at(gi * Kg + kk, col)] = T(s); });
    }
  } else {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t k = 0; k < g.K; ++k)
      sum_pieces(part + k * KK, pieces, g.K * KK, KK, [&](int64_t col, double s) { dw[at(k, col)] = T(s); });
  }
}

Wgrad1x1 wgrad_1x1_plan(const Geom& g, const Prologue* pf) {
  Wgrad1x1 p;
  p.rows = g.N * g.Ho * g.Wo;  // (the output pixels: N*H*W at stride 1)
  p.K = g.K;
  p.C = g.C;
  p.pieces = wgrad_pieces(g, sizeof(float));
  p.per = ceil_div(p.rows, p.pieces);
  p.tr = !pf && sgemm_tn_padded(g.C, g.K) < sgemm_tn_padded(g.K, g.C);
  p.pf = pf;
  p.part = scratch<float>(kAccSlot, p.pieces * g.K * g.C);
  return p;
}

void wgrad_1x1_rows(const Wgrad1x1& p, const float* dy, const float* x, int64_t r0, int64_t r1, int64_t dy_base,
                    int64_t x_base, RowsPrefetch* pre) {
  const int64_t K = p.K, C = p.C;
  dy -= dy_base * K;  // (rows are addressed from r0 >= dy_base on)
  x -= x_base * C;
  for (int64_t pc = r0 / p.per; pc < p.pieces && pc * p.per < r1; ++pc) {
    const int64_t a = std::max(r0, pc * p.per), b = std::min(r1, (pc + 1) * p.per);
    if (a >= b) continue;
    const bool acc = a > pc * p.per;  // (a range after the piece's first continues its partial)
    float* out = p.part + pc * K * C;
    if (p.tr)
      sgemm_tn(C, K, b - a, x + a * C, C, dy + a * K, K, out, K, acc, nullptr, pre);
    else
      sgemm_tn(K, C, b - a, dy + a * K, K, x + a * C, C, out, C, acc, p.pf, pre);
  }
}

void wgrad_1x1_finish(const Wgrad1x1& p, float* dw) {
  const int64_t total = p.K * p.C, C = p.C, K = p.K;
  // (a piece without rows, possible where pieces * per overshoots rows: zeros, as its empty call)
  for (int64_t pc = 0; pc < p.pieces; ++pc)
    if (pc * p.per >= p.rows) std::fill(p.part + pc * total, p.part + (pc + 1) * total, 0.0f);
  // The partials read in their own order, in blocks of 8 entries whose double sums stay in
  // registers over the pieces (each entry's sum over the pieces in piece order, as before); dw
  // written at each entry's place (transposed where p.tr). Summed per dw element, the transposed
  // partials were read a line per piece and element: 64 -> 128 at 8x8 (16 pieces, 512 KiB of
  // partials) spent 9% of its fused input + weight gradient pass here. Measured in the step
  // (resnext_small, 2 threads, per-call medians, the two orders alternating in one process):
  // 64 -> 128 1.07x and 1.13x (the shortcut's and 4.conv3's passes), 64 -> 64 1.02x; in
  // mobilenet_small 256 -> 128 1.02x.
  constexpr int64_t B = 8;
  const int64_t blocks = ceil_div(total, B);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t bi = 0; bi < blocks; ++bi) {
    const int64_t a0 = bi * B, n = std::min(B, total - a0);
    double s[B] = {};
    for (int64_t pc = 0; pc < p.pieces; ++pc) {
      const float* q = p.part + pc * total + a0;
#pragma omp simd
      for (int64_t j = 0; j < B; ++j) s[j] += double(j < n ? q[j] : 0.0f);
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = a0 + j;
      dw[p.tr ? (at % K) * C + at / K : at] = float(s[j]);
    }
  }
}

void wgrad_1x1_pieces(const Wgrad1x1& p, const float* dy, const float* x) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t pc = 0; pc < p.pieces; ++pc) {
    const int64_t r0 = std::min(p.rows, pc * p.per), r1 = std::min(p.rows, r0 + p.per);
    wgrad_1x1_rows(p, dy, x, r0, r1);
  }
}

void backward_weight_1x1_nhwc(const float* dy, const float* x, float* dw, const Geom& g, const Prologue* pf) {
  const Wgrad1x1 p = wgrad_1x1_plan(g, pf);
  wgrad_1x1_pieces(p, dy, x);
  wgrad_1x1_finish(p, dw);
}

// one_by_one(g) at a stride: the pieces and partials of backward_weight_1x1_nhwc over the N*Ho*Wo output
// pixels, each piece's rows of x gathered from the strided pixels into a worker block of 1024 rows
// at a time (a multiple of the sgemm's KC, so every block starts on that grid within its piece:
// the bits of one call over the piece) and reduced from there, where the registry ran OpenBLAS
// on an im2col copy (32 -> 64 at stride 2 from 32x32) or the patch pointers (64 -> 128).
void wgrad_1x1_strided_rows(const Wgrad1x1& p, const float* dy, const float* x, const Geom& g, int64_t a, int64_t b,
                            int64_t dy_base, RowsPrefetch* pre) {
  float* xb = scratch<float>(kXbSlot, (b - a) * g.C);
  gather_strided_rows(x, g, a, b - a, nullptr, xb);  // (p.pf: applied by sgemm_tn)
  wgrad_1x1_rows(p, dy, xb, a, b, dy_base, a, pre);
}

void wgrad_1x1_strided_pieces(const Wgrad1x1& p, const float* dy, const float* x, const Geom& g) {
  constexpr int64_t kBlock = 1024;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t pc = 0; pc < p.pieces; ++pc) {
    const int64_t r0 = std::min(p.rows, pc * p.per), r1 = std::min(p.rows, r0 + p.per);
    for (int64_t a = r0; a < r1; a += kBlock) wgrad_1x1_strided_rows(p, dy, x, g, a, std::min(r1, a + kBlock));
  }
}

void backward_weight_1x1_strided(const float* dy, const float* x, float* dw, const Geom& g, const Prologue* pf) {
  const Wgrad1x1 p = wgrad_1x1_plan(g, pf);
  wgrad_1x1_strided_pieces(p, dy, x, g);
  wgrad_1x1_finish(p, dw);
}

template <typename T, bool Own>
void backward_input_nchw(const T* dy, const T* w, T* dx, const Geom& g) {
  const int64_t P = g.Ho * g.Wo, Cg = g.Cg(), Kg = g.Kg(), k2 = g.kh * g.kw, KK = Cg * k2, HW = g.H * g.W;
  const Split cs = split(Cg, channel_chunk(g));
  const int64_t units = g.N * g.G * cs.count;
  const int64_t pchunk = std::max<int64_t>(64, (int64_t(1) << 19) / (cs.chunk * k2));
  const Split ps = split(P, pchunk);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u) {
    const int64_t q0 = u % cs.count, gi = (u / cs.count) % g.G, n = u / cs.count / g.G;
    const int64_t c0 = q0 * cs.chunk, cc = std::min(cs.chunk, Cg - c0);
    T* dxn = dx + (n * g.C + gi * Cg) * HW;
    std::fill(dxn + c0 * HW, dxn + (c0 + cc) * HW, T(0));
    const T* dyn = dy + (n * g.K + gi * Kg) * P;
    for (int64_t q = 0; q < ps.count; ++q) {
      const int64_t p0 = q * ps.chunk, p1 = std::min(P, p0 + ps.chunk), np = p1 - p0;
      T* col = scratch<T>(kColSlot, cc * k2 * np);
      gemm_t<Own>(true, false, cc * k2, np, Kg, w + gi * Kg * KK + c0 * k2, KK, dyn + p0, P, T(0), col, np);
      col2im_nchw(col, g, c0, cc, p0, p1, dxn);
    }
  }
}

template <typename T, bool Own>
void backward_input_nhwc(const T* dy, const T* w, T* dx, const Geom& g) {
  if constexpr (Own && std::is_same_v<T, float>) {
    if (small_planes(g)) return batched_backward_input(dy, w, dx, g);
    if (one_by_one(g) && !reads_x_directly(g)) return backward_input_1x1_strided_nhwc(dy, w, dx, g);
  }
  const int64_t P = g.Ho * g.Wo, Cg = g.Cg(), Kg = g.Kg(), k2 = g.kh * g.kw, KK = Cg * k2;
  const Split cs = split(Cg, channel_chunk(g));
  // Weights per (group, channel chunk) as a Kg x (kh*kw*cc) block, columns ordered (i, j, c).
  T* wb = scratch<T>(kWeightSlot, g.G * Kg * KK);
  for (int64_t gi = 0; gi < g.G; ++gi)
    for (int64_t q = 0; q < cs.count; ++q) {
      const int64_t c0 = q * cs.chunk, cc = std::min(cs.chunk, Cg - c0);
      T* blk = wb + gi * Kg * KK + Kg * k2 * c0;
      for (int64_t ko = 0; ko < Kg; ++ko)
        for (int64_t c = 0; c < cc; ++c)
          for (int64_t t = 0; t < k2; ++t)
            blk[ko * k2 * cc + t * cc + c] = w[((gi * Kg + ko) * Cg + c0 + c) * k2 + t];
    }
  const int64_t units = g.N * g.G * cs.count;
  const int64_t pchunk = std::max<int64_t>(16, std::min<int64_t>(1024, (int64_t(1) << 18) / (cs.chunk * k2)));
  const Split ps = split(P, pchunk);
  const int64_t HW = g.H * g.W;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u) {
    const int64_t q0 = u % cs.count, gi = (u / cs.count) % g.G, n = u / cs.count / g.G;
    const int64_t c0 = q0 * cs.chunk, cc = std::min(cs.chunk, Cg - c0), ld = k2 * cc;
    T* dxn = dx + n * HW * g.C + gi * Cg + c0;
    for (int64_t p = 0; p < HW; ++p) std::fill(dxn + p * g.C, dxn + p * g.C + cc, T(0));
    const T* blk = wb + gi * Kg * KK + Kg * k2 * c0;
    for (int64_t q = 0; q < ps.count; ++q) {
      const int64_t p0 = q * ps.chunk, p1 = std::min(P, p0 + ps.chunk), np = p1 - p0;
      T* col = scratch<T>(kColSlot, np * ld);
      gemm_t<Own>(false, false, np, ld, Kg, dy + (n * P + p0) * g.K + gi * Kg, g.K, blk, ld, T(0), col, ld);
      col2im_nhwc(col, g, n, gi, c0, cc, p0, p1, dx);
    }
  }
}

template <typename T>
void bias_grad_t(const T* dy, T* db, const Geom& g) {
  const int64_t P = g.Ho * g.Wo;
  if (!g.nhwc) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t k = 0; k < g.K; ++k) {
      double s = 0;
      for (int64_t n = 0; n < g.N; ++n) {
        const T* r = dy + (n * g.K + k) * P;
        double acc[8] = {};  // eight independent lanes (vectorisable without reassociation)
        int64_t p = 0;
        for (; p + 8 <= P; p += 8)
          for (int l = 0; l < 8; ++l) acc[l] += double(r[p + l]);
        double t = 0;
        for (; p < P; ++p) t += double(r[p]);
        for (int l = 0; l < 8; ++l) t += acc[l];
        s += t;
      }
      db[k] = T(s);
    }
    return;
  }
  const int64_t R = g.N * P;
  const Split s = split(R, std::max<int64_t>(256, ceil_div(R, 64)));
  double* part = scratch<double>(kAccSlot, s.count * g.K);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t q = 0; q < s.count; ++q) {
    double* acc = part + q * g.K;
    std::fill(acc, acc + g.K, 0.0);
    const int64_t r1 = std::min(R, (q + 1) * s.chunk);
    for (int64_t r = q * s.chunk; r < r1; ++r)
      for (int64_t k = 0; k < g.K; ++k) acc[k] += double(dy[r * g.K + k]);
  }
  for (int64_t k = 0; k < g.K; ++k) {
    double t = 0;
    for (int64_t q = 0; q < s.count; ++q) t += part[q * g.K + k];
    db[k] = T(t);
  }
}

void need_blas() {
  if (!g_blas_sgemm || !g_blas_dgemm)
    throw std::runtime_error("cnnkit: no BLAS registered (cnnkit's __init__ loads scipy-openblas32)");
}

}  // namespace

void gemm_forward(DType dt, const void* x, const void* w, const void* b, void* y, const Geom& g) {
  need_blas();
  if (dt == DType::f32) {
    auto f = g.nhwc ? forward_nhwc<float, false> : forward_nchw<float, false>;
    f(static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(b),
      static_cast<float*>(y), g, nullptr);
  } else {
    auto f = g.nhwc ? forward_nhwc<double, false> : forward_nchw<double, false>;
    f(static_cast<const double*>(x), static_cast<const double*>(w), static_cast<const double*>(b),
      static_cast<double*>(y), g, nullptr);
  }
}

void gemm_backward_input(DType dt, const void* dy, const void* w, void* dx, const Geom& g) {
  need_blas();
  if (dt == DType::f32) {
    auto f = g.nhwc ? backward_input_nhwc<float, false> : backward_input_nchw<float, false>;
    f(static_cast<const float*>(dy), static_cast<const float*>(w), static_cast<float*>(dx), g);
  } else {
    auto f = g.nhwc ? backward_input_nhwc<double, false> : backward_input_nchw<double, false>;
    f(static_cast<const double*>(dy), static_cast<const double*>(w), static_cast<double*>(dx), g);
  }
}

void gemm_backward_weight(DType dt, const void* dy, const void* x, void* dw, const Geom& g) {
  need_blas();
  if (dt == DType::f32) {
    backward_weight_gemm<float, false>(static_cast<const float*>(dy), static_cast<const float*>(x),
                                       static_cast<float*>(dw), g);
  } else {
    backward_weight_gemm<double, false>(static_cast<const double*>(dy), static_cast<const double*>(x),
                                        static_cast<double*>(dw), g);
  }
}

// cnnkit's own packed GEMM (sgemm.cpp) in place of OpenBLAS: float32 only (the registry's
// conv2d_gemm_f32_*_packed entries).
void packed_forward(DType, const void* x, const void* w, const void* b, void* y, const Geom& g) {
  auto f = g.nhwc ? forward_nhwc<float, true> : forward_nchw<float, true>;
  f(static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(b), static_cast<float*>(y),
    g, nullptr);
}

void packed_backward_input(DType, const void* dy, const void* w, void* dx, const Geom& g) {
  auto f = g.nhwc ? backward_input_nhwc<float, true> : backward_input_nchw<float, true>;
  f(static_cast<const float*>(dy), static_cast<const float*>(w), static_cast<float*>(dx), g);
}

void packed_backward_weight(DType, const void* dy, const void* x, void* dw, const Geom& g) {
  backward_weight_gemm<float, true>(static_cast<const float*>(dy), static_cast<const float*>(x),
                                    static_cast<float*>(dw), g);
}

void fused_forward(const float* x, const float* w, const float* b, float* y, const Geom& g, const Fused& fu) {
  auto f = g.nhwc ? forward_nhwc<float, true> : forward_nchw<float, true>;
  f(x, w, b, y, g, &fu);
}

void fused_forward_any(const float* x, const float* w, const float* b, float* y, const Geom& g, const Fused& fu,
                       bool own) {
  if (own)
    (g.nhwc ? forward_nhwc<float, true> : forward_nchw<float, true>)(x, w, b, y, g, &fu);
  else
    (g.nhwc ? forward_nhwc<float, false> : forward_nchw<float, false>)(x, w, b, y, g, &fu);
}

void fused_backward_weight(const float* dy, const float* x, float* dw, const Geom& g, const Fused& fu, bool own) {
  if (own)
    backward_weight_gemm<float, true>(dy, x, dw, g, &fu);
  else
    backward_weight_gemm<float, false>(dy, x, dw, g, &fu);
}

void grad_epilogue_image(float* o, const float* gx, const float* mask, int64_t C, int64_t P, bool nhwc,
                         const Fused& fu, double* s1, double* s2) {
  if (!nhwc) {
    grad_epilogue_cm(o, gx, mask, P, C, P, fu.gscale, fu.gshift, fu.grelu, fu.center, s1, s2);
    return;
  }
  // Pixel-major: in blocks of about 4 KiB of x (at least 4 pixels). grad_epilogue_pm makes one
  // pass over its rows per group of 16 (AVX-512: 32) channels, each reading one line of every
  // pixel; over a whole image the later passes found x and o evicted (mobilenet_small's stride-2
  // depthwise input gradient, 64 channels at 32x32: 256 KiB of each against a 512 KiB L2, Zen 3)
  // and waited on memory. The sums continue block to block (cont), per channel in pixel order as
  // before: the same bits. Replays of that call alternating in one process, 2 threads: 3.66-3.73
  // -> 2.30 ms; 16 KiB blocks (x and o filling the 32 KiB L1) ran as slowly as none.
  const int64_t R = C > 16 ? std::max<int64_t>(4, 1024 / C) : P;
  for (int64_t r0 = 0; r0 < P; r0 += R)
    grad_epilogue_pm(o + r0 * C, gx + r0 * C, mask ? mask + r0 * C : nullptr, C, std::min(R, P - r0), C, fu.gscale,
                     fu.gshift, fu.grelu, fu.center, s1, s2, r0 > 0);
}

void grad_epilogue_rows(float* o, int64_t off, int64_t C, int64_t nr, const Fused& fu, double* s1, double* s2,
                        bool cont) {
  if (fu.residual)
    for (int64_t e = 0; e < nr * C; ++e) o[e] += fu.residual[off + e];
  grad_epilogue_pm(o, fu.gx + off, fu.gmask ? fu.gmask + off : nullptr, C, nr, C, fu.gscale, fu.gshift, fu.grelu,
                   fu.center, s1, s2, cont);
}

void bias_grad(DType dt, const void* dy, void* db, const Geom& g) {
  if (dt == DType::f32)
    bias_grad_t(static_cast<const float*>(dy), static_cast<float*>(db), g);
  else
    bias_grad_t(static_cast<const double*>(dy), static_cast<double*>(db), g);
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
