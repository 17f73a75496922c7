// Direct conv kernels, compiled once per ISA level (namespace cnnkit::<isa>).
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "conv_internal.h"
#include "dw_nchw.h"
#include "dw_nhwc.h"
#include "grouped.h"
#include "scratch.h"
#include "sgemm.h"
#include "small_cin.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit::CNNKIT_ISA_NS {
namespace {
using conv::Geom;

// NCHW <-> NHWC: src (N, A, B) -> dst (N, B, A): VL x VL register transposes inside 64 x 64 tiles.
template <typename T>
void transpose_t(const T* src, T* dst, int64_t N, int64_t A, int64_t B) {
  constexpr int64_t VL = conv::Vec<T>::n, t = 64;
  const int64_t ta = conv::ceil_div(A, t), tb = conv::ceil_div(B, t);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < N * ta * tb; ++u) {
    const int64_t n = u / (ta * tb), a0 = (u / tb % ta) * t, b0 = (u % tb) * t;
    const T* s = src + n * A * B;
    T* d = dst + n * A * B;
    const int64_t a1 = std::min(A, a0 + t), b1 = std::min(B, b0 + t);
    const int64_t af = a0 + (a1 - a0) / VL * VL, bf = b0 + (b1 - b0) / VL * VL;
    for (int64_t a = a0; a < af; a += VL)
      for (int64_t b = b0; b < bf; b += VL) conv::transpose_block(s + a * B + b, B, d + b * A + a, A);
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t a = (b < bf ? af : a0); a < a1; ++a) d[b * A + a] = s[a * B + b];
  }
}

void transpose(DType dt, const void* src, void* dst, int64_t N, int64_t A, int64_t B) {
  if (dt == DType::f32)
    transpose_t(static_cast<const float*>(src), static_cast<float*>(dst), N, A, B);
  else
    transpose_t(static_cast<const double*>(src), static_cast<double*>(dst), N, A, B);
}

// Kernel-size specialisations: 3x3, 5x5 and 7x7 get unrolled taps, anything else the runtime loop.
#define CNNKIT_DW_BY_K(fn, T, ...)                                              \
  do {                                                                          \
    const int64_t k_ = g.kh == g.kw ? g.kh : 0;                                 \
    if (k_ == 3) fn<T, 3, 3>(__VA_ARGS__);                                      \
    else if (k_ == 5) fn<T, 5, 5>(__VA_ARGS__);                                 \
    else if (k_ == 7) fn<T, 7, 7>(__VA_ARGS__);                                 \
    else fn<T, 0, 0>(__VA_ARGS__);                                              \
  } while (0)



// Small NCHW planes, channels a multiple of 16 (so of every level's vector length): the blocked
// kernels (planes transposed in cache around the NHWC band kernels), taken when `blocked` is set
// (the registry's conv2d_dw_*_nchw_blocked entries, for shapes that dw_nchw_blocked_shape accepts).
template <typename T>
void dw_forward_t(const T* x, const T* w, const T* b, T* y, const Geom& g, bool blocked) {
  static_assert(16 % conv::Vec<T>::n == 0, "16 channels must be whole vectors");
  if ((blocked || g.nhwc) && conv::dw3_forward_shape(g))  // 3x3 stride 1 on small planes
    conv::dw3_forward(x, w, b, y, g);
  else if (blocked)
    CNNKIT_DW_BY_K(conv::dw_forward_nchw_blocked, T, x, w, b, y, g);
  else if (g.nhwc && g.K == g.C)
    CNNKIT_DW_BY_K(conv::dw_forward_nhwc_padded, T, x, w, b, y, g);
  else if (g.nhwc)
    CNNKIT_DW_BY_K(conv::dw_forward_nhwc, T, x, w, b, y, g);
  else
    CNNKIT_DW_BY_K(conv::dw_forward_nchw, T, x, w, b, y, g);
}

// dw and db (either may be null) from the pieces' partials pw, pb (dw_backward_weight_t's), summed
// over the pieces in order in double.
template <typename T>
void dw_weight_finish_pieces(const T* pw, const T* pb, int64_t pieces, T* dw, T* db, const Geom& g, bool blocked) {
  const int64_t k2 = g.kh * g.kw, K = g.K;
  // NCHW plane partials are [n][k][tap], NHWC and blocked ones [piece][tap][k]: walk them in their own layout
  // (contiguous streams, one per piece) and scatter into dw.
  const int64_t per_piece = K * k2;
  if (dw) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t e0 = 0; e0 < per_piece; e0 += 256)
      conv::sum_pieces(pw + e0, pieces, per_piece, std::min<int64_t>(256, per_piece - e0), [&](int64_t i, double s) {
        const int64_t e = e0 + i;
        dw[g.nhwc || blocked ? (e % K) * k2 + e / K : e] = T(s);
      });
  }
  if (db)
    for (int64_t k = 0; k < K; ++k) {
      double s = 0;
      for (int64_t p = 0; p < pieces; ++p) s += double(pb[p * K + k]);
      db[k] = T(s);
    }
}

// pro (NHWC only): the weight gradient of conv(prologue(x)), x going through the prologue as the
// kernels read it (the same bits as the plain pass on the prologue's output).
template <typename T>
void dw_backward_weight_t(const T* dy, const T* x, T* dw, T* db, const Geom& g, bool blocked,
                          const conv::DwPro<T>* pro = nullptr) {
  if ((blocked || g.nhwc) && conv::dw3_weight_shape(g)) return conv::dw3_backward_weight(dy, x, dw, db, g, pro);
  const int64_t k2 = g.kh * g.kw, K = g.K;
  // Pieces: (image) in NCHW, (image, band of output rows) in NHWC; each piece's partial sums are
  // written by one thread, then summed over pieces in order (in double).
  const int64_t bands = g.nhwc ? (g.N >= 8 ? 1 : std::min<int64_t>(g.Ho, conv::ceil_div(8, g.N))) : 1;
  const int64_t pieces = g.N * bands;
  T* part = conv::scratch<T>(conv::kPartSlot, pieces * K * (k2 + 1));
  T* pw = part;
  T* pb = part + pieces * K * k2;
  if (blocked)
    CNNKIT_DW_BY_K(conv::dw_weight_partials_nchw_blocked, T, dy, x, pw, pb, g);
  else if (g.nhwc && g.K == g.C)
    CNNKIT_DW_BY_K(conv::dw_weight_partials_nhwc_padded, T, dy, x, pw, pb, bands, g, pro);
  else if (g.nhwc)
    CNNKIT_DW_BY_K(conv::dw_weight_partials_nhwc, T, dy, x, pw, pb, bands, g, pro);
  else
    CNNKIT_DW_BY_K(conv::dw_weight_partials_nchw, T, dy, x, pw, pb, g);
  dw_weight_finish_pieces(pw, pb, pieces, dw, db, g, blocked);
}

template <bool Blocked>
void dw_forward(DType dt, const void* x, const void* w, const void* b, void* y, const Geom& g) {
  if (dt == DType::f32)
    dw_forward_t(static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(b),
                 static_cast<float*>(y), g, Blocked);
  else
    dw_forward_t(static_cast<const double*>(x), static_cast<const double*>(w), static_cast<const double*>(b),
                 static_cast<double*>(y), g, Blocked);
}

template <bool Blocked>
void dw_backward_input(DType dt, const void* dy, const void* w, void* dx, const Geom& g) {
  if (dt == DType::f32) {
    auto f = Blocked ? conv::dw_backward_input_nchw_blocked<float>
             : g.nhwc ? conv::dw_backward_input_nhwc<float> : conv::dw_backward_input_nchw<float>;
    f(static_cast<const float*>(dy), static_cast<const float*>(w), static_cast<float*>(dx), g);
  } else {
    auto f = Blocked ? conv::dw_backward_input_nchw_blocked<double>
             : g.nhwc ? conv::dw_backward_input_nhwc<double> : conv::dw_backward_input_nchw<double>;
    f(static_cast<const double*>(dy), static_cast<const double*>(w), static_cast<double*>(dx), g);
  }
}

template <bool Blocked>
void dw_backward_weight(DType dt, const void* dy, const void* x, void* dw, void* db, const Geom& g) {
  if (dt == DType::f32)
    dw_backward_weight_t(static_cast<const float*>(dy), static_cast<const float*>(x), static_cast<float*>(dw),
                         static_cast<float*>(db), g, Blocked);
  else
    dw_backward_weight_t(static_cast<const double*>(dy), static_cast<const double*>(x), static_cast<double*>(dw),
                         static_cast<double*>(db), g, Blocked);
}

// Depthwise NHWC with the fused prologue / epilogue of conv::Fused (float32): the forward pass and
// the weight (+ bias) gradient of conv(prologue(x)) (dw_nhwc.h).
void dw_fused_forward(const float* x, const float* w, const float* b, float* y, const Geom& g,
                      const conv::Fused& fu) {
  const conv::DwPro<float> pro{fu.pre_scale, fu.pre_shift, fu.pre_relu};
  CNNKIT_DW_BY_K(conv::dw_fused_forward_nhwc, float, x, w, b, y, g, pro, fu.residual, fu.post_relu, fu.stats_sum,
                 fu.stats_sumsq);
}
void dw_fused_backward_weight(const float* dy, const float* x, float* dw, float* db, const Geom& g,
                              const conv::Fused& fu) {
  const conv::DwPro<float> pro{fu.pre_scale, fu.pre_shift, fu.pre_relu};
  dw_backward_weight_t(dy, x, dw, db, g, false, pro.any() ? &pro : nullptr);
}

template <typename T>
bool grouped_supported_t(const Geom& g) {
  const int64_t cpg = g.Cg();
  if (g.G == 1 || g.depthwise() || g.Kg() != cpg || (cpg & (cpg - 1)) || cpg < 2 || cpg > 32) return false;
  if (g.C % conv::Vec<T>::n) return false;
  return (g.kh - 1) * g.dh + 1 <= 64;
}
bool grouped_supported(DType dt, const Geom& g) {
  return dt == DType::f32 ? grouped_supported_t<float>(g) : grouped_supported_t<double>(g);
}

#define CNNKIT_BY_CPG(fn, T, ...)                     \
  do {                                                \
    switch (g.Cg()) {                                 \
      case 2: fn<T, 2>(__VA_ARGS__); break;           \
      case 4: fn<T, 4>(__VA_ARGS__); break;           \
      case 8: fn<T, 8>(__VA_ARGS__); break;           \
      case 16: fn<T, 16>(__VA_ARGS__); break;         \
      default: fn<T, 32>(__VA_ARGS__); break;         \
    }                                                 \
  } while (0)

template <typename T>
void grouped_forward_t(const T* x, const T* w, const T* b, T* y, const Geom& g) {
  CNNKIT_BY_CPG(conv::grouped_forward_direct, T, x, w, b, y, g);
}
template <typename T>
void grouped_backward_input_t(const T* dy, const T* w, T* dx, const Geom& g) {
  CNNKIT_BY_CPG(conv::grouped_backward_input_direct, T, dy, w, dx, g);
}
// grouped_weight_partials_direct's work: eight pieces of the output rows (with a batch divisible by
// 8 they cut at image boundaries), but no fewer than 64 output pixels a piece; fewer pieces are
// cut further into `cblocks` blocks of channels. Each piece's partial is a full dw, so on tiny
// planes (g32 C1024@2x2, N = 16: 64 pixels) eight pieces moved 9.4 MB of partials for 38 MFLOP
// (3.4 ms at 1 thread). From the shape alone.
template <typename T>
int64_t grouped_weight_pieces(const Geom& g, int64_t& cblocks) {
  constexpr int64_t VL = conv::Vec<T>::n;
  const int64_t pieces = std::max<int64_t>(1, std::min<int64_t>({8, g.N * g.Ho, g.N * g.Ho * g.Wo / 64}));
  const int64_t nb = (g.Cg() >= 2 * VL ? 2 : 1);  // channel vectors the kernel takes together
  cblocks = std::max<int64_t>(1, std::min<int64_t>(conv::ceil_div(8, pieces), g.C / VL / nb));
  return pieces;
}

// dw from the pieces' partials of grouped_weight_partials_direct (summed over the pieces in order,
// in double).
template <typename T>
void grouped_weight_finish(const T* part, int64_t pieces, T* dw, const Geom& g) {
  constexpr int64_t VL = conv::Vec<T>::n;
  const int64_t k2 = g.kh * g.kw, C = g.C, cpg = g.Cg(), ncv = C / VL, psize = k2 * C * cpg;
  // Walk the partials in their own layout (contiguous streams), scattering into dw.
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t e0 = 0; e0 < psize; e0 += 256)
    conv::sum_pieces(part + e0, pieces, psize, std::min<int64_t>(256, psize - e0), [&](int64_t i, double s) {
      const int64_t e = e0 + i;
      const int64_t l = e % VL, r = (e / VL) % cpg, cv = (e / VL / cpg) % ncv, t = e / VL / cpg / ncv;
      const int64_t ci = cpg < VL ? (l % cpg + r) % cpg : r;  // (rotations: permute_fma_copies)
      dw[((cv * VL + l) * cpg + ci) * k2 + t] = T(s);
    });
}

template <typename T>
void grouped_backward_weight_t(const T* dy, const T* x, T* dw, const Geom& g, const conv::Fused* fu = nullptr) {
  if (conv::grouped_weight_by_blocks(g)) {  // small planes (conv_internal.h)
    CNNKIT_BY_CPG(conv::grouped_weight_blocks_direct, T, dy, x, dw, g, fu);
    return;
  }
  const int64_t k2 = g.kh * g.kw, C = g.C, cpg = g.Cg();
  const int64_t psize = k2 * C * cpg;
  int64_t cblocks;
  const int64_t pieces = grouped_weight_pieces<T>(g, cblocks);
  T* part = conv::scratch<T>(conv::kPartSlot, pieces * psize);
  CNNKIT_BY_CPG(conv::grouped_weight_partials_direct, T, dy, x, part, pieces, cblocks, g, fu);
  grouped_weight_finish(part, pieces, dw, g);
}

void grouped_forward(DType dt, const void* x, const void* w, const void* b, void* y, const Geom& g) {
  if (dt == DType::f32)
    grouped_forward_t(static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(b),
                      static_cast<float*>(y), g);
  else
    grouped_forward_t(static_cast<const double*>(x), static_cast<const double*>(w),
                      static_cast<const double*>(b), static_cast<double*>(y), g);
}
void grouped_backward_input(DType dt, const void* dy, const void* w, void* dx, const Geom& g) {
  if (dt == DType::f32)
    grouped_backward_input_t(static_cast<const float*>(dy), static_cast<const float*>(w), static_cast<float*>(dx), g);
  else
    grouped_backward_input_t(static_cast<const double*>(dy), static_cast<const double*>(w),
                             static_cast<double*>(dx), g);
}
void grouped_backward_weight(DType dt, const void* dy, const void* x, void* dw, void* db, const Geom& g) {
  if (dt == DType::f32)
    grouped_backward_weight_t(static_cast<const float*>(dy), static_cast<const float*>(x), static_cast<float*>(dw), g);
  else
    grouped_backward_weight_t(static_cast<const double*>(dy), static_cast<const double*>(x),
                              static_cast<double*>(dw), g);
  (void)db;  // the bias gradient is the generic reduction (conv_dispatch.cpp)
}

// The fused passes of the grouped kernels (conv::Fused; float32): the forward with prologue and
// epilogue, the weight gradient of conv(prologue(x)).
void grouped_forward_fused(const float* x, const float* w, const float* b, float* y, const Geom& g,
                           const conv::Fused& fu) {
  CNNKIT_BY_CPG(conv::grouped_forward_direct, float, x, w, b, y, g, &fu);
}
void grouped_backward_weight_fused(const float* dy, const float* x, float* dw, const Geom& g, const conv::Fused& fu) {
  grouped_backward_weight_t(dy, x, dw, g, &fu);
}
void grouped_backward_input_fused(const float* dy, const float* w, float* dx, const Geom& g, const conv::Fused& fu) {
  CNNKIT_BY_CPG(conv::grouped_backward_input_direct, float, dy, w, dx, g, &fu);
}

void dw_backward_input_fused(const float* dy, const float* w, float* dx, const Geom& g, const conv::Fused& fu) {
  const conv::GradParts part(g.N, g.C);
  CNNKIT_DW_BY_K(conv::dw_backward_input_fused_nhwc, float, dy, w, dx, g, fu, part);
  part.combine(fu);
}

// conv::Kernels::grouped_backward_onepass (grouped.h): false, having written nothing, where the
// weight gradient's pieces are not runs of whole images, the input gradient's bands not images,
// or a piece is cut into blocks of channels (NHWC, a stride above 1, the direct kernels' shapes).
bool grouped_backward_onepass(const conv::DyApply& ap, const float* w, float* dx, const Geom& g,
                              const conv::Fused& fu) {
  if (!g.nhwc || (g.sh == 1 && g.sw == 1) || conv::grouped_weight_by_blocks(g) || !grouped_supported_t<float>(g))
    return false;
  int64_t cblocks;
  const int64_t pieces = grouped_weight_pieces<float>(g, cblocks);
  if (cblocks != 1 || g.N % pieces || conv::row_band(g.N * g.H, g.H) != g.H) return false;
  const conv::Fused fw{fu.wgrad_scale, fu.wgrad_shift, fu.wgrad_relu, nullptr, false, nullptr, nullptr};
  const conv::GradParts part(g.N, g.C);
  float* pw = conv::scratch<float>(conv::kPartSlot, pieces * g.kh * g.kw * g.C * g.Cg());
  CNNKIT_BY_CPG(conv::grouped_backward_onepass, float, ap, w, fu.wgrad_x, dx, pw, pieces, g, fu, fw, part);
  grouped_weight_finish(pw, pieces, fu.wgrad_dw, g);
  part.combine(fu);
  return true;
}

// conv::Kernels::dw_backward_onepass (dw_nhwc.h's dw_backward_onepass_nhwc): false, having written
// nothing, where the weight gradient's pieces are bands of images (N < 8 off the register-row shapes).
bool dw_backward_onepass(const conv::DyApply& ap, const float* w, const float* wa, float* dx, const Geom& g,
                         const conv::Fused& fu) {
  const bool dw3 = conv::dw3_weight_shape(g);
  if (!dw3 && g.N < 8) return false;
  const conv::DwPro<float> pro{fu.wgrad_scale, fu.wgrad_shift, fu.wgrad_relu};
  const conv::GradParts part(g.N, g.C);
  const int64_t k2 = g.kh * g.kw, K = g.K;
  float* pw = dw3 ? nullptr : conv::scratch<float>(conv::kPartSlot, g.N * K * (k2 + 1));
  float* pb = dw3 ? nullptr : pw + g.N * K * k2;
  CNNKIT_DW_BY_K(conv::dw_backward_onepass_nhwc, float, ap, w, wa, dx, fu.wgrad_dw, pw, pb, g, fu, part,
                 pro.any() ? &pro : nullptr);
  if (!dw3) dw_weight_finish_pieces<float>(pw, pb, g.N, fu.wgrad_dw, nullptr, g, false);
  part.combine(fu);
  return true;
}

bool dw_backward_both(DType dt, const void* dy, const void* x, const void* wa, void* dx, void* dw, void* db,
                      const Geom& g) {
  if (!conv::dw3_both_shape(g)) return false;
  if (dt == DType::f32)
    conv::dw3_backward_both(static_cast<const float*>(dy), static_cast<const float*>(x),
                            static_cast<const float*>(wa), static_cast<float*>(dx), static_cast<float*>(dw),
                            static_cast<float*>(db), g);
  else
    conv::dw3_backward_both(static_cast<const double*>(dy), static_cast<const double*>(x),
                            static_cast<const double*>(wa), static_cast<double*>(dx), static_cast<double*>(dw),
                            static_cast<double*>(db), g);
  return true;
}

void dy_apply_rows(const conv::DyApply& ap, float* out, int64_t rows, int64_t C) {
  const int64_t blk = 256;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t r0 = 0; r0 < rows; r0 += blk) {
    const int64_t n = std::min(blk, rows - r0);
    bn_apply_rows(ap, r0, out + r0 * C, n, C);
  }
}

}  // namespace

extern const conv::Kernels conv_kernels = {
    dw_forward<false>, dw_backward_input<false>, dw_backward_weight<false>,
    grouped_supported, grouped_forward, grouped_backward_input, grouped_backward_weight, transpose,
    conv::small_cin_forward, conv::small_cin_backward_weight,
    dw_forward<true>, dw_backward_input<true>, dw_backward_weight<true>,
    conv::gemm_forward, conv::gemm_backward_input, conv::gemm_backward_weight, conv::bias_grad,
    conv::packed_forward, conv::packed_backward_input, conv::packed_backward_weight, conv::fused_forward,
    conv::fused_backward_weight, conv::fused_forward_any,
    conv::sgemm_shape_of, conv::sgemm_strided, conv::patches_backward_weight,
    dw_fused_forward, dw_fused_backward_weight,
    grouped_forward_fused, grouped_backward_weight_fused,
    conv::grad_epilogue_image, grouped_backward_input_fused, dy_apply_rows, dw_backward_input_fused,
    dw_backward_both, dw_backward_onepass, grouped_backward_onepass,
};

}  // namespace cnnkit::CNNKIT_ISA_NS
