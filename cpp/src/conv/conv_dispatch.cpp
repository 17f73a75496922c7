// Conv entry points and the kernel registry: one table lists every kernel variant (direct
// depthwise, grouped and stem kernels, the GEMM path) at every ISA level, in priority order, with
// the passes it implements and the problems it supports; forward(), backward_input() and
// backward_weight() run the first entry that supports the problem at the active ISA level.
// The grammar of the names is documented in cnnkit/conv.h. In priority order:
//
//   dw_*_nchw_blocked      depthwise, NCHW, m = 1, C % 16 == 0, planes <= 2^20 pixels
//   dw_*_nchw_transposed   depthwise, NCHW, m = 1, C % 16 != 0, planes <= 100 pixels: the NHWC
//                          kernels between full-tensor SIMD transposes
//   dw_*_nchw, dw_*_nhwc   any other depthwise geometry (G == C, K = m*C)
//   (inside dw_*_nhwc and dw_*_nchw_blocked, 3x3 stride-1 problems with C % 16 == 0 on planes of at
//   most 64 pixels, and NCHW forward / NHWC weight gradient up to 256, run the register-row
//   kernels dw3_* of dw_nhwc.h)
//   grouped_*_nchw_transposed  grouped direct kernels (Cg == Kg in {2, 4, 8, 16, 32}, C a multiple
//                          of the vector length, dilated kernel height <= 64) on NCHW rows narrower
//                          than 16: NHWC kernels between full-tensor transposes (not the weight
//                          pass where grouped_weight_by_blocks(), which reads NCHW directly)
//   grouped_*_nchw, grouped_*_nhwc   the same geometries otherwise (NCHW rows transposed in
//                          registers inside the kernel)
//   stem_f32_nhwc          float32 NHWC, G == 1, C <= 4, K in {16, 32, 48, 64}, kh*kw <= 49:
//                          forward and weight passes
//   gemm_f32_*_packed      float32 dense convolutions (G == 1) with a reduction of 64 or more
//                          (C*kh*kw) that the stem kernel does not take: the GEMM path on cnnkit's
//                          own packed sgemm (sgemm.cpp) in place of OpenBLAS (packed_shape(): the
//                          measured rule); NHWC also every 1x1 at stride 1 without padding with
//                          32 channels or more on both sides (16 at AVX2), and its weight pass at
//                          any channel count (nhwc_1x1_rows(): kernels that read x and dy in place);
//                          and the weight pass of a 1x1 at a stride without padding (16+ channels
//                          at AVX2, 32+ elsewhere: backward_weight_1x1_strided gathers the rows)
//                          (inside its NHWC forward pass, and so the stride-1 input gradient, the
//                          3x3 stride-1 problems with 32+ channels on both sides and 2048+ output
//                          pixels run by Winograd F(2x2, 3x3): winograd.h, winograd_shape(),
//                          winograd() says which)
//   gemm_f32_nhwc_patches  the weight pass of float32 dense NHWC problems with 16+ channels
//                          that are not a 1x1 the packed entry takes and not small_planes(): the
//                          own sgemm reading the patches of x through a pointer table (no im2col
//                          matrix); Winograd F(2x2, 3x3) where winograd_weight_shape()
//   gemm_f32_nchw_transposed  the same on NCHW arrays with output planes under 256 pixels
//                          (kh*kw > 1, or 1x1 where small_planes()), and at any plane size where
//                          the NHWC pass runs by Winograd (winograd_nchw()): the NHWC packed entry
//                          between full-tensor transposes
//   gemm_*                 everything else: im2col + OpenBLAS GEMM (col2im for the input gradient)
//
// The input gradient at stride 1 is the forward pass of the adjoint convolution (dy convolved with
// the flipped, transposed weights, padding (k-1)*d - p), so it takes the forward entries; except
// for float32 dense kh x kw > 1 problems on small planes (scatter_input()), where the packed
// entries compute it as one GEMM with the weights as they are plus col2im.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "conv_internal.h"
#include "scratch.h"

namespace cnnkit {
namespace scalar { extern const conv::Kernels conv_kernels; }
namespace avx2 { extern const conv::Kernels conv_kernels; }
namespace avx512 { extern const conv::Kernels conv_kernels; }
}  // namespace cnnkit

namespace cnnkit::conv {

SgemmFn g_blas_sgemm = nullptr;
DgemmFn g_blas_dgemm = nullptr;

void set_blas(SgemmFn s, DgemmFn d, BlasThreadsFn set_threads) {
  if (set_threads) set_threads(1);  // cnnkit's own OpenMP loops give the parallelism
  g_blas_sgemm = s;
  g_blas_dgemm = d;
}
bool have_blas() { return g_blas_sgemm && g_blas_dgemm; }

namespace {

const Kernels& kernels_of(Isa isa) {
  switch (isa) {
    case Isa::avx512: return avx512::conv_kernels;
    case Isa::avx2: return avx2::conv_kernels;
    default: return scalar::conv_kernels;
  }
}

size_t elem(DType dt) { return dt == DType::f32 ? 4 : 8; }

// ---- predicates --------------------------------------------------------------------------------

// A stem: few input channels, where im2col leaves the GEMM only kh*kw*C columns.
bool stem_shape(const Geom& g) {
  return g.nhwc && g.G == 1 && g.C <= 4 && g.K % 16 == 0 && g.K <= 64 && g.kh * g.kw <= 49;
}

// Depthwise on small NCHW planes: the per-plane kernels spend more on setting up a plane than on
// the taps, so these run as NHWC kernels between SIMD layout transposes.
// (Channel counts that are whole vectors take the blocked kernels instead.)
bool dw_via_nhwc(const Geom& g) {
  return !g.nhwc && g.depthwise() && g.K == g.C && g.C % 16 && g.H * g.W <= 100 && g.Ho * g.Wo <= 100;
}

// NCHW arrays with narrow rows go to the grouped kernels through full-tensor NHWC transposes
// (tiles across whole planes); wider rows are transposed row by row inside the kernels.
bool grouped_via_nhwc(const Geom& g) { return !g.nhwc && (g.W < 16 || g.Wo < 16); }

// ---- helpers of the entries --------------------------------------------------------------------

void* scratch_of(DType dt, int slot, int64_t count) {
  return dt == DType::f32 ? static_cast<void*>(scratch<float>(slot, count))
                          : static_cast<void*>(scratch<double>(slot, count));
}

Geom as_nhwc_geom(const Geom& g) {
  Geom t = g;
  t.nhwc = true;
  return t;
}

bool unit_stride(const Geom& g) { return g.sh == 1 && g.sw == 1; }

// Where cnnkit's own packed sgemm runs the GEMM path instead of OpenBLAS: every dense (G == 1)
// convolution the stem kernel does not take. Measured on the Zen 4 development machine (one
// thread, same process, interleaved; sgemm alone): the own kernels match or beat OpenBLAS on the
// shapes the dense conv GEMMs have (NHWC 1x1: 1024x64x256 115 vs 100 GFLOP/s, 1024x24x144 83 vs
// 80; NCHW 1x1: 64x3136x256 and 24x3136x144 within 5%; 3x3 im2col 455x64x576 108 vs 96), but lose
// on the small GEMMs of grouped convolutions in NCHW (16x196x144: 75 vs 113), and the direct
// grouped kernels beat both GEMMs on g32 C512@14 and C1024@7 (conv fwd+bwd), so grouped
// convolutions keep their direct kernels and OpenBLAS. Reductions shorter than 64 (Cg*kh*kw; for
// the input gradient at stride 1, that of the adjoint) stay with OpenBLAS too: the input gradient
// of the 1x1 144->24 layer (a 24-long reduction) ran 4.5 vs 3.4 ms (1 thread, N = 8).
bool packed_shape(const Geom& g, Pass p) {
  return g.G == 1 && g.Cg() * g.kh * g.kw >= 64 && !(stem_shape(g) && p != Pass::input);
}

// Float32 dense problems whose stride-1 input gradient runs as GEMM (+ col2im) on the whole batch
// (conv_gemm.cpp, batched_backward_input) instead of as the adjoint's forward pass, which would
// first lay out the flipped, transposed weights (9.4 MB for 3x3 512->512) on one thread.
// (For 1x1 kernels the GEMM writes dx directly, with w as it is; the adjoint would transpose w.)
bool scatter_input(const Geom& g) {
  const int64_t k2 = g.kh * g.kw;
  return small_planes(g) && g.Cg() * k2 >= 64 && g.Kg() * k2 >= 64;
}

// w'[g*Cg + c, ko, i, j] = w[g*Kg + ko, c, kh-1-i, kw-1-j]: shape (C, Kg, kh, kw). The output
// channels shared among the threads above 64 Ki values (g32 C1024@7: 2.4% of the 1-thread input
// gradient, serially).
template <typename T>
const T* adjoint_weights(const T* w, const Geom& g) {
  const int64_t Cg = g.Cg(), Kg = g.Kg(), k2 = g.kh * g.kw;
  T* out = scratch<T>(kAdjointSlot, g.C * Kg * k2);
#pragma omp parallel for num_threads(num_threads()) if (g.C * Kg * k2 >= (int64_t(1) << 16))
  for (int64_t o = 0; o < g.G * Kg; ++o) {
    const int64_t gi = o / Kg, ko = o - gi * Kg;
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t t = 0; t < k2; ++t)
        out[((gi * Cg + c) * Kg + ko) * k2 + (k2 - 1 - t)] = w[(o * Cg + c) * k2 + t];
  }
  return out;
}

void* as_nhwc(const Kernels& k, DType dt, const void* src, int64_t N, int64_t C, int64_t HW, int slot) {
  void* dst = scratch_of(dt, slot, N * C * HW);
  k.transpose(dt, src, dst, N, C, HW);
  return dst;
}

// Every GEMM dimension and leading dimension is at most one of these; OpenBLAS takes 32-bit ints.
void check_dims(const Geom& g) {
  const int64_t lim = INT32_MAX;
  if (g.H * g.W > lim || g.Ho * g.Wo > lim || g.C * g.kh * g.kw > lim || g.K * g.kh * g.kw > lim)
    throw value_error("conv: an image plane or a patch has more than 2^31 - 1 elements");
}

// ---- the variants (one row of the table per ISA level) ----------------------------------------

struct Args {  // the arrays of one pass (those the pass does not use are null)
  const void* x;
  const void* w;
  const void* b;
  void* y;
  const void* dy;
  void* dx;
  void* dw;
  void* db;
};

struct Variant {
  const char* what;  // the name before "__<isa>"
  DType dt;
  unsigned passes;
  bool (*supported)(const Kernels&, const Geom&, DType, Pass);
  void (*run)(const Kernels&, DType, Pass, const Args&, const Geom&);
};

constexpr unsigned kAll = pass_bit(Pass::forward) | pass_bit(Pass::input) | pass_bit(Pass::weight);
constexpr unsigned kFwdWeight = pass_bit(Pass::forward) | pass_bit(Pass::weight);

// Direct kernels called in the problem's own layout.
void run_dw(const Kernels& k, DType dt, Pass p, const Args& a, const Geom& g) {
  if (p == Pass::forward) return k.dw_forward(dt, a.x, a.w, a.b, a.y, g);
  if (p == Pass::input) return k.dw_backward_input(dt, a.dy, a.w, a.dx, g);
  k.dw_backward_weight(dt, a.dy, a.x, a.dw, a.db, g);
}
void run_dw_blocked(const Kernels& k, DType dt, Pass p, const Args& a, const Geom& g) {
  if (p == Pass::forward) return k.dw_forward_blocked(dt, a.x, a.w, a.b, a.y, g);
  if (p == Pass::input) return k.dw_backward_input_blocked(dt, a.dy, a.w, a.dx, g);
  k.dw_backward_weight_blocked(dt, a.dy, a.x, a.dw, a.db, g);
}
void run_grouped(const Kernels& k, DType dt, Pass p, const Args& a, const Geom& g) {
  if (p == Pass::forward) return k.grouped_forward(dt, a.x, a.w, a.b, a.y, g);
  if (p == Pass::input) return k.grouped_backward_input(dt, a.dy, a.w, a.dx, g);
  if (a.dw) k.grouped_backward_weight(dt, a.dy, a.x, a.dw, nullptr, g);
  if (a.db) k.bias_grad(dt, a.dy, a.db, g);
}
void run_stem(const Kernels& k, DType, Pass p, const Args& a, const Geom& g) {
  if (p == Pass::forward)
    return k.small_cin_forward(static_cast<const float*>(a.x), static_cast<const float*>(a.w),
                               static_cast<const float*>(a.b), static_cast<float*>(a.y), g, nullptr, nullptr);
  k.small_cin_backward_weight(static_cast<const float*>(a.dy), static_cast<const float*>(a.x),
                              static_cast<float*>(a.dw), static_cast<float*>(a.db), g, nullptr);
}
void run_packed(const Kernels& k, DType dt, Pass p, const Args& a, const Geom& g) {
  if (p == Pass::forward) return k.packed_forward(dt, a.x, a.w, a.b, a.y, g);
  if (p == Pass::input) return k.packed_backward_input(dt, a.dy, a.w, a.dx, g);
  if (a.dw) k.packed_backward_weight(dt, a.dy, a.x, a.dw, g);
  if (a.db) k.bias_grad(dt, a.dy, a.db, g);
}
void run_gemm(const Kernels& k, DType dt, Pass p, const Args& a, const Geom& g) {
  if (p == Pass::forward) return k.gemm_forward(dt, a.x, a.w, a.b, a.y, g);
  if (p == Pass::input) return k.gemm_backward_input(dt, a.dy, a.w, a.dx, g);
  if (a.dw) k.gemm_backward_weight(dt, a.dy, a.x, a.dw, g);
  if (a.db) k.bias_grad(dt, a.dy, a.db, g);
}

// NCHW problems run by an NHWC kernel between full-tensor transposes (scratch of this file, apart
// from the kernels' own).
template <void (*Run)(const Kernels&, DType, Pass, const Args&, const Geom&), bool Depthwise>
void run_transposed(const Kernels& k, DType dt, Pass p, const Args& a, const Geom& g) {
  const Geom t = as_nhwc_geom(g);
  if (p == Pass::forward) {
    Args b = a;
    b.x = as_nhwc(k, dt, a.x, g.N, g.C, g.H * g.W, kXSlot);
    b.y = scratch_of(dt, kYSlot, g.N * g.K * g.Ho * g.Wo);
    Run(k, dt, p, b, t);
    k.transpose(dt, b.y, a.y, g.N, g.Ho * g.Wo, g.K);
  } else if (p == Pass::input) {
    Args b = a;
    b.dy = as_nhwc(k, dt, a.dy, g.N, g.K, g.Ho * g.Wo, kXSlot);
    b.dx = scratch_of(dt, kYSlot, g.N * g.C * g.H * g.W);
    Run(k, dt, p, b, t);
    k.transpose(dt, b.dx, a.dx, g.N, g.H * g.W, g.C);
  } else if (Depthwise || a.dw) {
    // The grouped kernels keep their bias gradient on the NCHW dy (the generic reduction).
    Args b = a;
    b.x = as_nhwc(k, dt, a.x, g.N, g.C, g.H * g.W, kXSlot);
    b.dy = as_nhwc(k, dt, a.dy, g.N, g.K, g.Ho * g.Wo, kYSlot);
    if (!Depthwise) b.db = nullptr;
    Run(k, dt, p, b, t);
    if (!Depthwise && a.db) k.bias_grad(dt, a.dy, a.db, g);
  } else if (a.db) {
    k.bias_grad(dt, a.dy, a.db, g);
  }
}

bool sup_dw_blocked(const Kernels&, const Geom& g, DType, Pass) { return dw_nchw_blocked_shape(g); }
bool sup_dw_transposed(const Kernels&, const Geom& g, DType, Pass) { return dw_via_nhwc(g); }
bool sup_dw_nchw(const Kernels&, const Geom& g, DType, Pass) { return !g.nhwc && g.depthwise(); }
bool sup_dw_nhwc(const Kernels&, const Geom& g, DType, Pass) { return g.nhwc && g.depthwise(); }
// (The weight pass by channel blocks reads NCHW planes directly: grouped_weight_by_blocks().)
bool sup_grouped_transposed(const Kernels& k, const Geom& g, DType dt, Pass p) {
  return k.grouped_supported(dt, g) && grouped_via_nhwc(g) && !(p == Pass::weight && grouped_weight_by_blocks(g));
}
bool sup_grouped_nchw(const Kernels& k, const Geom& g, DType dt, Pass) { return !g.nhwc && k.grouped_supported(dt, g); }
bool sup_grouped_nhwc(const Kernels& k, const Geom& g, DType dt, Pass) { return g.nhwc && k.grouped_supported(dt, g); }
bool sup_stem(const Kernels&, const Geom& g, DType, Pass) { return stem_shape(g); }
// NCHW runs one GEMM per image, with the output plane as its N dimension: on planes under 256
// pixels the own GEMM lost to OpenBLAS (2 threads, N = 16: weight gradient of 3x3 512@2x2 0.45x,
// of 3x3 256@4x4 0.64x; 1x1 128->256@8x8 (N = 64) 0.6x in every pass), and at 256 or more it
// was level or ahead (3x3 64@16x16 1.01-1.07x, 1x1 256->64@16x16 0.99-1.25x).
// NCHW problems whose NHWC form runs by Winograd F(2x2, 3x3) (winograd_shape(), and for the weight
// pass winograd_weight_shape()): run in NHWC between full-tensor transposes (the packed entry's
// NHWC passes through the transposed entry) at any plane size. Measured against the NCHW patches
// GEMM (Intel AVX-512 host, 2 threads, N = 32, calls alternating in one process, median of the
// pairs' ratios), forward / input / weight gradient: 3x3 64@56 1.72 / 1.44 / 1.87x, 128@28
// 1.98 / 1.58 / 1.82x, 32->64@32 1.24 / 1.86 / 1.63x; at AVX2 on the same host 64@56
// 1.67 / 1.52 / 1.41x, 32->64@32 1.29 / 1.72 / 1.31x.
bool winograd_nchw(const Geom& g, Pass p) {
  const Geom t = as_nhwc_geom(g);
  return !g.nhwc && (p == Pass::weight ? winograd_weight_shape(t) : winograd_shape(t));
}
bool sup_packed_nchw(const Kernels&, const Geom& g, DType, Pass p) {
  return !g.nhwc && packed_shape(g, p) && g.Ho * g.Wo >= 256 && !winograd_nchw(g, p);
}
// NHWC 1x1 convolutions at stride 1 without padding run on the own kernels that read x and dy in
// place (conv_gemm.cpp, forward_1x1_nhwc / backward_weight_1x1_nhwc) at any channel count (the
// stem kernel keeps its few-channel problems): no packing of A is left for OpenBLAS to win on
// with a short reduction. (The input gradient at stride 1 is asked about as the adjoint's
// forward, itself such a 1x1.)
// Measured (1 thread, CPU time, N = 64 at 32x32, against OpenBLAS): 32->32 forward 1.42 vs 2.26 ms,
// weight gradient 1.61 vs 2.72; 32->64 forward 2.65 vs 3.99; but with 16 channels on either side
// OpenBLAS stays ahead in the forward pass (16->32 0.72 vs 0.65, 32->16 0.72 vs 0.65), so those
// keep it there (and in the adjoint's: the plain input gradient) at AVX-512 (those figures are the
// Zen 4 machine's; the fused input gradient takes the rows pass from 16: fused_input_entry()). At
// AVX2 (Zen 3, in-process A/B alternating calls, N = 64 at 32x32) the in-place kernels are ahead
// with 16 channels too, at 1 and 2 threads: forward 0.71-0.74x, input gradient 0.70-0.78x, the
// fused forms 0.78-0.84x (statistics, prologue and statistics, the gradient epilogue with a
// prologue mask or a residual and stored mask); so there the bound is 16 channels.
int rows_min_channels(const Kernels& k) { return &k == &kernels_of(Isa::avx2) ? 16 : 32; }
// A dense NHWC 1x1 convolution at stride 1 without padding (its output plane the input's): the
// problems whose passes the rows kernels run on the rows of x and dy as they are.
bool nhwc_1x1_unit(const Geom& g) {
  return g.nhwc && g.G == 1 && g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0 &&
         g.Ho == g.H && g.Wo == g.W;
}
// At a stride above 1 (no padding) the forward pass gathers the strided pixels into L1 blocks for
// the same kernels (32->64 at stride 2 from 32x32 left OpenBLAS's im2col path), and the input
// gradient writes each row of dx once, the product into its strided pixels and zeros between
// (backward_input_1x1_strided_nhwc; in place of zeroing dx, a column block and a scatter-add).
bool nhwc_1x1_rows(const Kernels& k, const Geom& g, Pass p) {
  const bool one = g.nhwc && g.G == 1 && g.kh == 1 && g.kw == 1 && g.pt == 0 && g.pl == 0 &&
                   !(stem_shape(g) && p != Pass::input);
  if (one && nhwc_1x1_unit(g))
    return p == Pass::weight || std::min(g.C, g.K) >= rows_min_channels(k);
  // (the weight pass gathers each block of strided rows: backward_weight_1x1_strided)
  return one && g.Ho == (g.H - 1) / g.sh + 1 && g.Wo == (g.W - 1) / g.sw + 1 &&
         std::min(g.C, g.K) >= (p == Pass::weight ? rows_min_channels(k) : 32);
}
bool sup_packed_nhwc(const Kernels& k, const Geom& g, DType, Pass p) {
  return g.nhwc && (packed_shape(g, p) || nhwc_1x1_rows(k, g, p));
}
// The fused forms with only an output epilogue (bias, residual, ReLU) of the NHWC 1x1 stride-1
// problems that nhwc_1x1_rows() leaves to OpenBLAS in their plain form (16 channels on one side at
// AVX-512, fewer at AVX2) run on the in-place kernels too, which apply that epilogue to each
// register block as they store it, where the OpenBLAS path makes passes over y. Measured (N = 64
// at 32x32, 1 thread, CPU time, interleaved, min of 150-200 calls): 16->32 with a residual 0.77 against 1.08 ms (load 2; 0.99
// against 1.26 at load 5-7). With a prologue or statistics (passes on both paths) OpenBLAS stays
// ahead (load 5-7): 32->16 with statistics 0.93 against 0.79, 16->32 prologue and statistics 1.62
// against 1.45, the 16->32 gradient epilogue 1.32 against 1.12.
bool fused_1x1_rows(const Geom& g, const Fused& fu) {
  return nhwc_1x1_unit(g) && !stem_shape(g) && !fu.pre_scale && !fu.pre_relu && !fu.stats_sum && !fu.grad_sum;
}
// Smaller planes: the NHWC entry's whole-batch GEMMs between layout transposes, in place of one
// OpenBLAS GEMM per image that re-read all the weights (2 threads, N = 16, median ms, forward /
// input / weight gradient: 3x3 512@2x2 6.0 / 8.0 / 7.3 -> 2.7 / 2.2 / 1.9; 256@4x4 2.8 / 3.3 /
// 4.6 -> 1.8 / 1.7 / 1.9).
// 1x1 convolutions keep the per-image OpenBLAS GEMMs unless small_planes() (N = 64, 128->256 at
// 8x8, 1 thread: forward 3.5 against 5.4 ms through the transposes; at stride 2 from 16x16, 4.7
// against 11.5).
// NCHW problems whose NHWC form runs by Winograd (winograd_nchw()) take the transposes at any
// plane size.
bool sup_packed_nchw_transposed(const Kernels&, const Geom& g, DType, Pass p) {
  return !g.nhwc && g.G == 1 && packed_shape(g, p) &&
         ((g.Ho * g.Wo < 256 && (g.kh * g.kw > 1 || small_planes(g))) || winograd_nchw(g, p));
}
// The NHWC weight gradient with 16+ channels a group, not a plain 1x1 (x read as it is) and not on
// small planes (the whole-batch GEMMs): the transposed patches read through a pointer table
// (sgemm_patches_t) instead of an im2col matrix that the sgemm then packs again (3x3 64@56, N = 4,
// 1 thread, best of 15 at load 5: 11.2-15.2 ms against 16.0).
bool sup_patches_nhwc(const Kernels& k, const Geom& g, DType, Pass p) {
  const bool plain_1x1 = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0 &&
                         g.Ho == g.H && g.Wo == g.W;
  return g.nhwc && p == Pass::weight && packed_shape(g, p) && g.Cg() >= 16 && !plain_1x1 && !small_planes(g) &&
         !nhwc_1x1_rows(k, g, p);
}
void run_patches(const Kernels& k, DType dt, Pass, const Args& a, const Geom& g) {
  if (a.dw) k.patches_backward_weight(dt, a.dy, a.x, a.dw, g);
  if (a.db) k.bias_grad(dt, a.dy, a.db, g);
}
bool sup_gemm_nchw(const Kernels&, const Geom& g, DType, Pass) { return !g.nhwc; }
bool sup_gemm_nhwc(const Kernels&, const Geom& g, DType, Pass) { return g.nhwc; }

#define CNNKIT_CONV_DW(dt, DT)                                                                              \
  {"conv2d_dw_" dt "_nchw_blocked", DT, kAll, sup_dw_blocked, run_dw_blocked},                              \
  {"conv2d_dw_" dt "_nchw_transposed", DT, kAll, sup_dw_transposed, run_transposed<run_dw, true>},          \
  {"conv2d_dw_" dt "_nchw", DT, kAll, sup_dw_nchw, run_dw},                                                 \
  {"conv2d_dw_" dt "_nhwc", DT, kAll, sup_dw_nhwc, run_dw}
#define CNNKIT_CONV_GROUPED(dt, DT)                                                                         \
  {"conv2d_grouped_" dt "_nchw_transposed", DT, kAll, sup_grouped_transposed,                               \
   run_transposed<run_grouped, false>},                                                                     \
  {"conv2d_grouped_" dt "_nchw", DT, kAll, sup_grouped_nchw, run_grouped},                                  \
  {"conv2d_grouped_" dt "_nhwc", DT, kAll, sup_grouped_nhwc, run_grouped}

// Priority order within one ISA level (the dtype is part of the problem, so the order between the
// float32 and float64 rows does not matter).
const Variant kVariants[] = {
    CNNKIT_CONV_DW("f32", DType::f32),
    {"conv2d_gemm_f32_nchw_packed", DType::f32, kAll, sup_packed_nchw, run_packed},
    {"conv2d_gemm_f32_nhwc_patches", DType::f32, pass_bit(Pass::weight), sup_patches_nhwc, run_patches},
    {"conv2d_gemm_f32_nhwc_packed", DType::f32, kAll, sup_packed_nhwc, run_packed},
    {"conv2d_gemm_f32_nchw_transposed", DType::f32, kAll, sup_packed_nchw_transposed,
     run_transposed<run_packed, false>},
    CNNKIT_CONV_GROUPED("f32", DType::f32),
    CNNKIT_CONV_DW("f64", DType::f64),
    CNNKIT_CONV_GROUPED("f64", DType::f64),
    {"conv2d_stem_f32_nhwc", DType::f32, kFwdWeight, sup_stem, run_stem},
    {"conv2d_gemm_f32_nchw", DType::f32, kAll, sup_gemm_nchw, run_gemm},
    {"conv2d_gemm_f32_nhwc", DType::f32, kAll, sup_gemm_nhwc, run_gemm},
    {"conv2d_gemm_f64_nchw", DType::f64, kAll, sup_gemm_nchw, run_gemm},
    {"conv2d_gemm_f64_nhwc", DType::f64, kAll, sup_gemm_nhwc, run_gemm},
};
#undef CNNKIT_CONV_DW
#undef CNNKIT_CONV_GROUPED

struct Entry {
  std::string name;
  Isa isa;
  const Variant* v;
};

// Every variant at every ISA level: the best level first (an entry runs only at its own level).
const std::vector<Entry>& table() {
  static const std::vector<Entry> t = [] {
    std::vector<Entry> out;
    for (Isa isa : {Isa::avx512, Isa::avx2, Isa::scalar})
      for (const Variant& v : kVariants) out.push_back(Entry{std::string(v.what) + "__" + isa_name(isa), isa, &v});
    return out;
  }();
  return t;
}

std::atomic<int> g_forced{-1};

// For the input gradient at stride 1 the entries are asked about the adjoint's forward problem.
Problem effective(const Problem& p) {
  if (p.pass == Pass::input && unit_stride(p.g) && !(p.dt == DType::f32 && scatter_input(p.g))) return Problem{adjoint(p.g), p.dt, Pass::forward};
  return p;
}

bool supports_effective(const Entry& e, const Problem& q) {
  return (e.v->passes & pass_bit(q.pass)) && e.v->dt == q.dt && e.v->supported(kernels_of(e.isa), q.g, q.dt, q.pass);
}

int select_effective(const Problem& q) {
  const auto& t = table();
  const int f = g_forced.load(std::memory_order_relaxed);
  if (f >= 0 && supports_effective(t[f], q)) return f;
  const Isa active = isa_active();
  for (size_t i = 0; i < t.size(); ++i)
    if (t[i].isa == active && supports_effective(t[i], q)) return static_cast<int>(i);
  throw value_error("conv: no kernel supports this problem");  // unreachable: GEMM takes anything
}

void run(const Problem& q, const Args& a) {
  const Entry& e = table()[select_effective(q)];
  e.v->run(kernels_of(e.isa), q.dt, q.pass, a, q.g);
}

}  // namespace

int registry_size() { return static_cast<int>(table().size()); }

EntryInfo registry_entry(int i) {
  if (i < 0 || i >= registry_size()) throw value_error("conv: no registry entry " + std::to_string(i));
  const Entry& e = table()[i];
  return EntryInfo{e.name.c_str(), e.isa, e.v->passes};
}

bool supports(int i, const Problem& p) {
  if (i < 0 || i >= registry_size()) throw value_error("conv: no registry entry " + std::to_string(i));
  return supports_effective(table()[i], effective(p));
}

int select(const Problem& p) { return select_effective(effective(p)); }

void force(int i) {
  if (i >= registry_size()) throw value_error("conv: no registry entry " + std::to_string(i));
  if (i >= 0 && static_cast<int>(table()[i].isa) > static_cast<int>(isa_supported()))
    throw value_error("conv: " + table()[i].name + " needs an ISA level this CPU does not have");
  g_forced.store(i < 0 ? -1 : i);
}

int forced() { return g_forced.load(); }

const char* algorithm(const Geom& g, int pass) {
  if (pass < 0 || pass > 2) throw value_error("pass: expected 0, 1 or 2, got " + std::to_string(pass));
  return table()[select(Problem{g, DType::f32, static_cast<Pass>(pass)})].name.c_str();
}

bool winograd(const Geom& g, int pass) {
  if (pass < 0 || pass > 2) throw value_error("pass: expected 0, 1 or 2, got " + std::to_string(pass));
  // Whether pass p of a runs on the own GEMM's NHWC passes (directly, or between the transposed
  // entry's transposes) at a shape that takes Winograd there.
  auto runs = [](const Geom& a, Pass p, bool (*takes)(const Geom&)) {
    const auto run = table()[select(Problem{a, DType::f32, p})].v->run;
    if (run == run_packed || (p == Pass::weight && run == run_patches)) return takes(a);
    return run == run_transposed<run_packed, false> && takes(as_nhwc_geom(a));
  };
  if (pass == 2) return runs(g, Pass::weight, winograd_weight_shape);
  if (pass == 1 && (!unit_stride(g) || scatter_input(g))) return false;  // (not the adjoint's forward)
  return runs(pass == 1 ? adjoint(g) : g, Pass::forward, winograd_shape);
}

// Whether the entry is a direct kernel with a fused form (forward_fused(), backward_weight_fused()):
// the depthwise NHWC kernels and the direct grouped kernels (also between NCHW transposes).
namespace {
bool direct_fused(const Entry& e) {
  return e.v->supported == sup_dw_nhwc || e.v->run == run_grouped || e.v->run == run_transposed<run_grouped, false>;
}

// Whether backward_weight_fused() has a form for the weight-gradient entry e (else it raises, and
// the fused input gradient raises before writing anything).
bool fused_weight_form(const Entry& e) {
  return direct_fused(e) || e.v->run == run_packed || e.v->run == run_patches || e.v->run == run_gemm ||
         e.v->run == run_transposed<run_packed, false>;
}

void no_fused_weight(const Entry& e) {
  throw value_error(std::string("conv2d_fused backward: no fused weight gradient for this problem (the registry "
                                "runs ") + e.name + ")");
}
}  // namespace

const char* forward_fused(const float* x, const float* w, const float* b, float* y, const Geom& g, const Fused& fu) {
  check_dims(g);
  if (fu.stats_sum && (fu.residual || fu.post_relu))
    throw value_error("conv2d_fused: statistics are computed only without residual and post_relu");
  if (!fu.stats_sum != !fu.stats_sumsq)
    throw value_error("conv2d_fused: stats_sum and stats_sumsq go together");
  if (!fu.pre_scale != !fu.pre_shift)
    throw value_error("conv2d_fused: pre_scale and pre_shift go together");
  // The fused pass runs where the plain forward pass runs: the depthwise NHWC and the direct
  // grouped kernels have fused forms; otherwise the GEMM path, where the registry would run a GEMM
  // entry (packed or OpenBLAS); the depthwise NCHW and stem kernels have none.
  const auto& t = table();
  const Entry& plain = t[select_effective(Problem{g, DType::f32, Pass::forward})];
  if (direct_fused(plain) && (g.N == 0 || g.K == 0 || g.Ho * g.Wo == 0)) {
    if (fu.stats_sum)
      for (int64_t k = 0; k < g.K; ++k) fu.stats_sum[k] = fu.stats_sumsq[k] = 0;
    return plain.name.c_str();
  }
  if (plain.v->supported == sup_dw_nhwc) {
    // Depthwise NHWC: the direct kernels' fused form (dw_nhwc.h), every combination.
    kernels_of(plain.isa).dw_fused_forward(x, w, b, y, g, fu);
    return plain.name.c_str();
  }
  // The direct grouped kernels (grouped.h): the prologue as input rows are read, the epilogue on
  // each output row; the transposed NCHW entry runs them between layout transposes as its plain pass.
  if (plain.v->run == run_grouped || plain.v->run == run_transposed<run_grouped, false>) {
    const Kernels& k = kernels_of(plain.isa);
    if (plain.v->run == run_grouped) {
      k.grouped_forward_fused(x, w, b, y, g, fu);
      return plain.name.c_str();
    }
    const int64_t HW = g.H * g.W, P = g.Ho * g.Wo;
    Fused ft = fu;
    if (fu.residual)
      ft.residual = static_cast<const float*>(as_nhwc(k, DType::f32, fu.residual, g.N, g.K, P, kAccSlot));
    const float* xt = static_cast<const float*>(as_nhwc(k, DType::f32, x, g.N, g.C, HW, kXSlot));
    float* yt = static_cast<float*>(scratch_of(DType::f32, kYSlot, g.N * g.K * P));
    k.grouped_forward_fused(xt, w, b, yt, as_nhwc_geom(g), ft);
    k.transpose(DType::f32, yt, y, g.N, P, g.K);
    return plain.name.c_str();
  }
  // The stem kernel (a few input channels, NHWC): the statistics epilogue per unit of output rows
  // (small_cin.h); no prologue, residual or ReLU (a network's first convolution reads the image).
  // (On the GEMM path instead, the packed pass ran these problems 2.7x slower than the stem kernel
  // plus a separate statistics pass, 3->32 3x3 NHWC at 32x32, N = 64.)
  if (plain.v->run == run_stem && !fu.pre_scale && !fu.pre_relu && !fu.residual && !fu.post_relu) {
    if (g.N == 0 || g.K == 0 || g.Ho * g.Wo == 0) {
      if (fu.stats_sum)
        for (int64_t k = 0; k < g.K; ++k) fu.stats_sum[k] = fu.stats_sumsq[k] = 0;
      return plain.name.c_str();
    }
    kernels_of(plain.isa).small_cin_forward(x, w, b, y, g, fu.stats_sum, fu.stats_sumsq);
    return plain.name.c_str();
  }
  if (plain.v->run != run_gemm && plain.v->run != run_packed && plain.v->run != run_transposed<run_packed, false>)
    throw value_error(std::string("conv2d_fused: no fused kernel for this problem (the registry runs ") + plain.name +
                      ")");
  // It follows the plain pass's entry: OpenBLAS where the registry runs OpenBLAS (NCHW planes under
  // 256 pixels: the per-image own GEMMs lost there), the NHWC packed pass between transposes for
  // the transposed entry, the packed entry of the layout otherwise.
  const bool blas = plain.v->run == run_gemm && !fused_1x1_rows(g, fu),
             transposed = plain.v->run == run_transposed<run_packed, false>;
  const Entry* e = &plain;
  if (!blas && !transposed) {
    const std::string want = std::string(g.nhwc ? "conv2d_gemm_f32_nhwc_packed__" : "conv2d_gemm_f32_nchw_packed__") +
                             isa_name(plain.isa);
    for (const Entry& c : t)
      if (c.name == want) e = &c;
  }
  if (g.N == 0 || g.K == 0 || g.Ho * g.Wo == 0) {
    if (fu.stats_sum)
      for (int64_t k = 0; k < g.K; ++k) fu.stats_sum[k] = fu.stats_sumsq[k] = 0;
    return e->name.c_str();
  }
  const Kernels& k = kernels_of(e->isa);
  if (!transposed) {
    k.fused_forward_any(x, w, b, y, g, fu, !blas);
    return e->name.c_str();
  }
  const int64_t HW = g.H * g.W, P = g.Ho * g.Wo;
  Fused ft = fu;
  if (fu.residual)
    ft.residual = static_cast<const float*>(as_nhwc(k, DType::f32, fu.residual, g.N, g.K, P, kAccSlot));
  const float* xt = static_cast<const float*>(as_nhwc(k, DType::f32, x, g.N, g.C, HW, kXSlot));
  float* yt = static_cast<float*>(scratch_of(DType::f32, kYSlot, g.N * g.K * P));
  k.fused_forward_any(xt, w, b, yt, as_nhwc_geom(g), ft, true);
  k.transpose(DType::f32, yt, y, g.N, P, g.K);
  return e->name.c_str();
}

const char* backward_weight_fused(const float* dy, const float* x, float* dw, float* db, const Geom& g,
                                  const Fused& fu) {
  check_dims(g);
  if (fu.residual || fu.post_relu || fu.stats_sum || fu.stats_sumsq)
    throw value_error("conv2d_fused backward: only the prologue applies to the weight gradient");
  if (!fu.pre_scale != !fu.pre_shift)
    throw value_error("conv2d_fused backward: pre_scale and pre_shift go together");
  const auto& t = table();
  const Entry& e = t[select_effective(Problem{g, DType::f32, Pass::weight})];
  if (!fused_weight_form(e)) no_fused_weight(e);
  if (direct_fused(e) && (g.N == 0 || g.Ho * g.Wo == 0 || g.K == 0)) {
    if (dw) std::fill(dw, dw + g.K * g.Cg() * g.kh * g.kw, 0.0f);
    if (db) std::fill(db, db + g.K, 0.0f);
    return e.name.c_str();
  }
  if (e.v->supported == sup_dw_nhwc) {
    // Depthwise NHWC: the direct kernels with the prologue applied as they read x (dw_nhwc.h).
    kernels_of(e.isa).dw_fused_backward_weight(dy, x, dw, db, g, fu);
    return e.name.c_str();
  }
  // The direct grouped kernels: the prologue applied as x's rows are read (as run_grouped and
  // run_transposed: the bias gradient is the generic reduction on dy as given).
  if (e.v->run == run_grouped || e.v->run == run_transposed<run_grouped, false>) {
    const Kernels& k = kernels_of(e.isa);
    if (dw && e.v->run == run_grouped) {
      k.grouped_backward_weight_fused(dy, x, dw, g, fu);
    } else if (dw) {
      const void* xt = as_nhwc(k, DType::f32, x, g.N, g.C, g.H * g.W, kXSlot);
      const void* dyt = as_nhwc(k, DType::f32, dy, g.N, g.K, g.Ho * g.Wo, kYSlot);
      k.grouped_backward_weight_fused(static_cast<const float*>(dyt), static_cast<const float*>(xt), dw,
                                      as_nhwc_geom(g), fu);
    }
    if (db) k.bias_grad(DType::f32, dy, db, g);
    return e.name.c_str();
  }
  // The patches entry reads x as it is: without a prologue its own pass, the plain weight
  // gradient's (the same bits); with a prologue its problems run the own packed pass.
  if (e.v->run == run_patches && !fu.pre_scale && !fu.pre_relu) {
    backward_weight(DType::f32, dy, x, dw, db, g);
    return e.name.c_str();
  }
  const bool own = e.v->run == run_packed || e.v->run == run_patches,
             transposed = e.v->run == run_transposed<run_packed, false>;
  const int64_t wcount = g.K * g.Cg() * g.kh * g.kw;
  if (g.N == 0 || g.Ho * g.Wo == 0 || g.K == 0) {
    if (dw) std::fill(dw, dw + wcount, 0.0f);
    if (db) std::fill(db, db + g.K, 0.0f);
    return e.name.c_str();
  }
  const Kernels& k = kernels_of(e.isa);
  if (dw) {
    if (transposed) {  // as run_transposed: the NHWC packed pass on transposed x and dy
      const Geom tg = as_nhwc_geom(g);
      const void* xt = as_nhwc(k, DType::f32, x, g.N, g.C, g.H * g.W, kXSlot);
      const void* dyt = as_nhwc(k, DType::f32, dy, g.N, g.K, g.Ho * g.Wo, kYSlot);
      k.fused_backward_weight(static_cast<const float*>(dyt), static_cast<const float*>(xt), dw, tg, fu, true);
    } else {
      k.fused_backward_weight(dy, x, dw, g, fu, own);
    }
  }
  if (db) k.bias_grad(DType::f32, dy, db, g);
  return e.name.c_str();
}

DyApply make_dy_apply(const float* g_out, const float* z, const double* mean, const double* A, const double* B,
                      const double* D, int64_t K, std::vector<float>& store, int64_t pooled_s, const float* mask) {
  // as norm_kernels.cpp's backward_apply_t converts them
  store.assign(size_t(5 * K), 0.0f);
  float *a = store.data(), *b = a + K, *hi = b + K, *lo = hi + K, *d = lo + K;
  for (int64_t k = 0; k < K; ++k) {
    hi[k] = float(mean[k]);
    lo[k] = float(mean[k] - double(hi[k]));
    a[k] = float(A[k]);
    b[k] = float(B[k]);
    d[k] = float(D[k]);
  }
  return DyApply{g_out, z, a, b, hi, lo, d, pooled_s, mask};
}

const char* backward_weight_bn_apply(const float* g_out, const float* z, const double* mean, const double* A,
                                     const double* B, const double* D, const float* x, float* dw, float* db,
                                     const Geom& g) {
  check_dims(g);
  const Entry& e = table()[select_effective(Problem{g, DType::f32, Pass::weight})];
  if (e.v->run != run_stem)
    throw value_error(std::string("conv2d_backward_weight_bn: only the stem kernel reads the norm's apply pass (the "
                                  "registry runs ") + e.name + ")");
  if (g.N == 0 || g.Ho * g.Wo == 0 || g.K == 0) {
    if (dw) std::fill(dw, dw + g.K * g.Cg() * g.kh * g.kw, 0.0f);
    if (db) std::fill(db, db + g.K, 0.0f);
    return e.name.c_str();
  }
  std::vector<float> co;
  const DyApply ap = make_dy_apply(g_out, z, mean, A, B, D, g.K, co);
  kernels_of(e.isa).small_cin_backward_weight(nullptr, x, dw, db, g, &ap);
  return e.name.c_str();
}

// Image n of a fused input gradient: dx += the residual, then the gradient epilogue (mask, and
// the image's two sums into part.s1(n), part.s2(n)).
static void image_epilogue(const Kernels& k, float* dx, const Geom& g, const Fused& fu, int64_t n,
                           const GradParts& part) {
  const int64_t P = g.H * g.W, img = g.C * P;
  float* o = dx + n * img;
  if (fu.residual)
    for (int64_t i = 0; i < img; ++i) o[i] += fu.residual[n * img + i];
  k.grad_epilogue_image(o, fu.gx + n * img, fu.gmask ? fu.gmask + n * img : nullptr, g.C, P, g.nhwc, fu,
                        part.s1(n), part.s2(n));
}

// The fused input gradient of problems the adjoint GEMM pass does not take (depthwise, grouped,
// stride > 1, the small-plane scatter): units of whole images, each the plain input gradient of
// its images (whose kernels run on the unit's thread alone: num_threads() is 1 inside a parallel
// region) followed by the gradient epilogue of every image while the unit's dx is still in cache.
// The units (about 256 KiB of dx, at least 8 of them) and the per-image sums, added in image
// order, follow from the shape alone, so the bits do not depend on the thread count; dx's values
// are the plain kernels' (thread-invariant themselves). Returns the plain kernel's name.
static int64_t units_per(const Geom& g) {  // (backward_input_units' images a unit)
  const int64_t img = g.C * g.H * g.W;
  return std::clamp<int64_t>((int64_t(1) << 16) / std::max<int64_t>(1, img), 1, std::max<int64_t>(1, g.N / 8));
}
static const char* backward_input_units(const float* dy, const float* w, float* dx, const Geom& g, const Fused& fu) {
  const int64_t img = g.C * g.H * g.W, oimg = g.K * g.Ho * g.Wo;
  const int64_t per = units_per(g);
  const int64_t units = ceil_div(g.N, per);
  Geom gu = g, gl = g;
  gu.N = std::min(per, g.N);
  gl.N = g.N - (units - 1) * per;
  // The entries the units run (chosen here, so that nothing throws inside the parallel region).
  const auto& t = table();
  const Entry& e = t[select_effective(effective(Problem{gu, DType::f32, Pass::input}))];
  (void)select_effective(effective(Problem{gl, DType::f32, Pass::input}));
  const Kernels& k = kernels_of(isa_active());
  const GradParts part(g.N, g.C);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u) {
    const int64_t n0 = u * per;
    backward_input(DType::f32, dy + n0 * oimg, w, dx + n0 * img, u == units - 1 ? gl : gu);
    for (int64_t n = n0; n < std::min(g.N, n0 + per); ++n) image_epilogue(k, dx, g, fu, n, part);
  }
  part.combine(fu);
  return e.name.c_str();
}

// A residual given at the strided pixels only (Fused::res_stride) laid out whole, zero between
// them (kResSlot), for the paths that read it whole.
static const float* expand_residual(const float* res, int64_t s, const Geom& g) {
  const int64_t Hr = ceil_div(g.H, s), Wr = ceil_div(g.W, s), C = g.C;
  float* out = scratch<float>(kResSlot, g.N * C * g.H * g.W);
  const int64_t rows = g.nhwc ? g.N * g.H : g.N * C * g.H;  // rows of W pixels (NHWC: of W * C values)
  const int64_t px = g.nhwc ? C : 1, len = g.W * px;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = r % g.H, q = r / g.H;  // q: the image (NHWC) or the image's channel plane (NCHW)
    float* o = out + r * len;
    std::fill(o, o + len, 0.0f);
    if (h % s) continue;
    const float* src = res + ((q * Hr + h / s) * Wr) * px;
    for (int64_t j = 0; j < Wr; ++j) std::copy(src + j * px, src + (j + 1) * px, o + j * s * px);
  }
  return out;
}

// The entry whose pass the fused input gradient runs (backward_input_fused: the adjoint's forward
// with the gradient epilogue, and the weight gradient in the same pass where that is the same
// level's packed entry), for the adjoint geometry a: the adjoint's forward entry, except at
// AVX-512 for an NHWC 1x1 stride-1 problem with 16 to 31 channels on a side, whose plain forward
// stays with OpenBLAS (rows_min_channels) but whose fused form runs on the rows pass: OpenBLAS's
// form makes separate passes over dy (the norm's apply, written whole), dx (the residual, the
// epilogue) and x (the weight gradient's prologue), the rows pass one. Measured (Zen 4, N = 64 at
// 32x32, the apply pass, the weight gradient and the epilogue, alternating calls): 32->16 (dx of
// 32 channels, a residual) 1.25x on 2 threads and 1.23x on 1, 16->32 1.04x and 1.06x;
// resnext_small's step 1.026x and 1.023x. (Before the rows pass prefetched its C blocks, 6f37d1d,
// the same change measured 0.98-1.04x on 1 thread.)
static const Entry& fused_input_entry(const Geom& a) {
  const auto& t = table();
  const Entry& e = t[select_effective(Problem{a, DType::f32, Pass::forward})];
  const bool rows16 = nhwc_1x1_unit(a) && std::min(a.C, a.K) >= 16 && !stem_shape(a) && !small_planes(a);
  if (e.isa != Isa::avx512 || e.v->run != run_gemm || !rows16 || g_forced.load(std::memory_order_relaxed) >= 0)
    return e;
  for (const Entry& p : t)
    if (p.isa == e.isa && p.v->dt == DType::f32 && p.v->supported == sup_packed_nhwc) return p;
  return e;
}

// Whether backward_input_fused runs on the NHWC 1x1 rows pass (forward_1x1_nhwc, the adjoint's
// forward reading dy in place).
static bool rows_input_pass(const Geom& g) {
  if (!(nhwc_1x1_unit(g) && g.K > 0 && g.Ho * g.Wo > 0 && g.N * g.C * g.H * g.W > 0))
    return false;
  const Geom a = adjoint(g);
  return !small_planes(a) && fused_input_entry(a).v->run == run_packed;
}

// fu's dy_apply written whole into dy (the rows pass evaluates it per block instead): fu without it.
static Fused apply_whole(const float* dy, const Geom& g, const Fused& fu) {
  kernels_of(isa_active()).dy_apply_rows(*fu.dy_apply, const_cast<float*>(dy), g.N * g.Ho * g.Wo, g.K);
  Fused fw = fu;
  fw.dy_apply = nullptr;
  return fw;
}

const char* backward_input_fused(const float* dy, const float* w, float* dx, const Geom& g, const Fused& fu) {
  check_dims(g);
  if (fu.res_stride < 1) throw value_error("conv2d_fused backward: the residual's stride must be at least 1");
  if (fu.pre_scale || fu.pre_shift || fu.pre_relu || fu.post_relu || fu.stats_sum || fu.stats_sumsq)
    throw value_error("conv2d_fused backward: only the gradient epilogue (and a residual) applies to the input "
                      "gradient");
  if (fu.gmask && !fu.grelu) throw value_error("conv2d_fused backward: a stored mask needs relu");
  // (without the gradient epilogue: the plain input gradient, with dy_apply and the weight gradient)
  const bool epi = fu.gx || fu.center || fu.grad_sum || fu.grad_sumxc || fu.gscale || fu.gshift || fu.grelu ||
                   fu.gmask || fu.residual;
  if (epi && (!fu.gx || !fu.center || !fu.grad_sum || !fu.grad_sumxc))
    throw value_error("conv2d_fused backward: the gradient epilogue needs x, center and both sums");
  if (!fu.gscale != !fu.gshift) throw value_error("conv2d_fused backward: scale and shift go together");
  if (fu.dy_apply && !g.nhwc) throw value_error("dy_apply: the apply pass reads NHWC rows; expected layout NHWC");
  if (dx == dy && dy) {
    // In place: only the depthwise kernel at stride 1 of the same size (dw_nhwc.h) reads each dy
    // row before the dx row over it is written (or takes a copy of the image first).
    const bool dw1 = g.nhwc && g.depthwise() && g.K == g.C && unit_stride(g) && g.Ho == g.H && g.Wo == g.W &&
                     !fu.wgrad_dw &&
                     table()[select_effective(effective(Problem{g, DType::f32, Pass::input}))].v->run == run_dw;
    if (!dw1)
      throw value_error("grad_input: in place over grad_out only for a depthwise convolution (NHWC, stride 1, the "
                        "output the input's size) on the depthwise kernel, without grad_weight");
  }
  if (fu.wgrad_geom) {
    const Geom& s = *fu.wgrad_geom;
    check_dims(s);
    if (!fu.wgrad_dw) throw value_error("conv2d_fused backward: a weight gradient's geometry needs the weight gradient");
    if (!nhwc_1x1_unit(g) || s.sh < 1 || s.sw < 1 || !one_by_one(s) || unit_stride(s) || s.nhwc != g.nhwc ||
        s.N != g.N || s.C != g.C || s.K != g.K || s.Ho != g.H || s.Wo != g.W || s.dh != 1 || s.dw != 1)
      throw value_error("conv2d_fused backward: the weight gradient's geometry must be a 1x1 convolution at a stride "
                        "above 1 without padding whose output pixels are the call's (a 1x1 at stride 1, NHWC)");
  }
  const Geom& wg = fu.wgrad_geom ? *fu.wgrad_geom : g;  // the weight gradient's geometry
  // Without the epilogue the rows pass runs where it is the plain input gradient's own entry (the
  // plain pass's bits: not at AVX-512's 16-31 channels, whose plain pass stays with OpenBLAS).
  const bool rows_plain = epi || (rows_input_pass(g) && !scatter_input(g) &&
                                  &fused_input_entry(adjoint(g)) ==
                                      &table()[select_effective(Problem{adjoint(g), DType::f32, Pass::forward})]);
  // dx over the apply pass's g: where every path reads g whole (or an image of it whole) before it
  // writes dx there, a depthwise convolution at stride 1 of the same size (never the 1x1 rows pass,
  // which reads g a block of rows at a time).
  const bool dw_same = g.nhwc && g.depthwise() && g.K == g.C && unit_stride(g) && g.Ho == g.H && g.Wo == g.W;
  if (fu.dy_apply && dx == fu.dy_apply->g && !dw_same)
    throw value_error("grad_input: over dy_apply's g only for a depthwise convolution (NHWC, stride 1, the output "
                      "the input's size)");
  const bool dw_strided = g.nhwc && g.depthwise() && g.K == g.C && !unit_stride(g);
  if (!dy && (dw_same || dw_strided) && epi && fu.dy_apply && fu.wgrad_dw && !fu.wgrad_geom && fu.res_stride == 1 &&
      g.N * g.C * g.H * g.W > 0) {
    // The norm's apply pass, the weight gradient and the input gradient in one pass over the images
    // where both gradients run on the same level's depthwise kernels (dw_nhwc.h), with the bits of
    // the three passes below (at a stride: backward_input_units' kernel on its units' geometry and
    // its epilogue at the active level).
    const Entry& ie = table()[select_effective(effective(Problem{g, DType::f32, Pass::input}))];
    const Entry& we = table()[select_effective(Problem{g, DType::f32, Pass::weight})];
    Geom gu = g;
    gu.N = std::min(units_per(g), g.N);
    const Entry& ue = table()[select_effective(effective(Problem{gu, DType::f32, Pass::input}))];
    if (ie.v->run == run_dw && we.v->supported == sup_dw_nhwc && ie.isa == we.isa &&
        (dw_same || (&ue == &ie && ie.isa == isa_active())) &&
        kernels_of(ie.isa).dw_backward_onepass(*fu.dy_apply, w, dw_same ? adjoint_weights(w, g) : nullptr, dx, g, fu))
      return ie.name.c_str();
  }
  if (!dy && g.nhwc && g.G > 1 && !g.depthwise() && !unit_stride(g) && epi && fu.dy_apply && fu.wgrad_dw &&
      !fu.wgrad_geom && fu.res_stride == 1 && g.N * g.C * g.H * g.W > 0) {
    // The same for a strided grouped convolution on the direct grouped kernels (grouped.h), where
    // their passes below run on the same level (the input gradient's fused rows, the weight
    // gradient's partials).
    const Entry& ie = table()[select_effective(Problem{g, DType::f32, Pass::input})];
    const Entry& we = table()[select_effective(Problem{g, DType::f32, Pass::weight})];
    if (ie.v->run == run_grouped && we.v->run == run_grouped && ie.isa == we.isa &&
        kernels_of(ie.isa).grouped_backward_onepass(*fu.dy_apply, w, dx, g, fu))
      return ie.name.c_str();
  }
  if (!dy) {  // dy not kept: the apply pass into a scratch of this thread (or blocks of the rows pass)
    if (!fu.dy_apply || !fu.wgrad_dw)
      throw value_error("grad_out: None (not kept) only with dy_apply and a weight gradient in the same call");
    Fused fd = fu;
    fd.dy_discard = true;
    return backward_input_fused(scratch<float>(kDySlot, g.N * g.K * g.Ho * g.Wo), w, dx, g, fd);
  }
  if (fu.wgrad_dw) {
    if (!fu.wgrad_x) throw value_error("conv2d_fused backward: the weight gradient needs the convolution's input");
    if (!fu.wgrad_scale != !fu.wgrad_shift)
      throw value_error("conv2d_fused backward: the weight gradient's scale and shift go together");
    // In the rows pass where the weight gradient's own pass is the same ISA's NHWC 1x1 kernel
    // (backward_weight_1x1_nhwc, whose pieces and bits the rows pass keeps); else its own pass.
    const Entry& we = table()[select_effective(Problem{wg, DType::f32, Pass::weight})];
    const bool in_rows = rows_plain && rows_input_pass(g) && !scatter_input(g) && we.v->run == run_packed &&
                         !small_planes(g) && !small_planes(wg) && we.isa == fused_input_entry(adjoint(g)).isa;
    if (!in_rows) {
      // The weight gradient first, from dy as the apply pass writes it whole; then the input
      // gradient. Where the registry has no fused form for it, this raises before anything is written.
      if (!fused_weight_form(we)) no_fused_weight(we);
      Fused fi = fu.dy_apply ? apply_whole(dy, g, fu) : fu;
      const Fused fw{fu.wgrad_scale, fu.wgrad_shift, fu.wgrad_relu, nullptr, false, nullptr, nullptr};
      backward_weight_fused(dy, fu.wgrad_x, fu.wgrad_dw, nullptr, wg, fw);
      fi.wgrad_dw = nullptr;
      fi.wgrad_x = nullptr;
      fi.wgrad_scale = fi.wgrad_shift = nullptr;
      fi.wgrad_relu = false;
      fi.wgrad_geom = nullptr;
      return backward_input_fused(dy, w, dx, g, fi);
    }
  }
  if (!epi && !(rows_plain && (fu.dy_apply || fu.wgrad_dw))) {
    // The plain input gradient (dy written whole first where it comes as the apply pass).
    const Entry& e = table()[select_effective(effective(Problem{g, DType::f32, Pass::input}))];
    if (fu.dy_apply) apply_whole(dy, g, fu);
    backward_input(DType::f32, dy, w, dx, g);
    return e.name.c_str();
  }
  if (fu.dy_apply && !rows_input_pass(g)) return backward_input_fused(dy, w, dx, g, apply_whole(dy, g, fu));
  if (fu.residual && fu.res_stride > 1 && g.N * g.C * g.H * g.W > 0) {
    // The compact residual is added by the NHWC 1x1 rows pass (forward_1x1_nhwc, the adjoint's
    // forward) at its strided pixels; every other path reads it laid out whole.
    if (!rows_input_pass(g)) {
      Fused fw = fu;
      fw.residual = expand_residual(fu.residual, fu.res_stride, g);
      fw.res_stride = 1;
      return backward_input_fused(dy, w, dx, g, fw);
    }
  }
  if (g.N == 0 || g.C == 0 || g.H * g.W == 0 || g.K == 0 || g.Ho * g.Wo == 0) {
    // No convolution terms: dx = the residual (or 0), through the epilogue image by image.
    const int64_t img = g.C * g.H * g.W;
    const GradParts part(g.N, g.C);
    const Kernels& k = kernels_of(isa_active());
    for (int64_t n = 0; n < g.N; ++n) {
      std::fill(dx + n * img, dx + (n + 1) * img, 0.0f);
      if (img) image_epilogue(k, dx, g, fu, n, part);
    }
    part.combine(fu);
    return table()[select_effective(effective(Problem{g, DType::f32, Pass::input}))].name.c_str();
  }
  if (!unit_stride(g) && g.nhwc) {
    // The direct grouped kernel with the epilogue on each dx row as it is finished (in L1): in
    // units the epilogue re-read each unit's dx from L2 and x from memory after the kernel, with
    // nothing to overlap (g8 32->32 s2 at 32x32, N = 64: the epilogue 0.7 of 1.45 ms, 2 threads).
    const Entry& e = table()[select_effective(Problem{g, DType::f32, Pass::input})];
    if (e.v->run == run_grouped) {
      kernels_of(e.isa).grouped_backward_input_fused(dy, w, dx, g, fu);
      return e.name.c_str();
    }
  }
  if (g.nhwc && g.depthwise() && g.K == g.C && unit_stride(g)) {
    // Depthwise at stride 1: the adjoint's depthwise forward with the epilogue on each dx row as
    // it is written (in L1), the next row's operands prefetched, instead of units of images whose
    // epilogue re-read dx from L2 and x from memory after the kernel. The same bits (dw_nhwc.h).
    const Entry& e = table()[select_effective(effective(Problem{g, DType::f32, Pass::input}))];
    if (e.v->run == run_dw) {
      kernels_of(e.isa).dw_backward_input_fused(dy, adjoint_weights(w, g), dx, g, fu);
      return e.name.c_str();
    }
  }
  if (!unit_stride(g) || scatter_input(g)) return backward_input_units(dy, w, dx, g, fu);
  const Geom a = adjoint(g);
  const Entry& e = fused_input_entry(a);
  const bool own = e.v->run == run_packed, blas = e.v->run == run_gemm,
             transposed = e.v->run == run_transposed<run_packed, false>;
  // (The transposed entry would need the residual and the mask transposed too: units instead.)
  if ((!own && !blas && !transposed) || (transposed && (fu.residual || fu.gmask)))
    return backward_input_units(dy, w, dx, g, fu);
  const float* wa = adjoint_weights(w, g);
  const Kernels& k = kernels_of(e.isa);
  if (!transposed) {
    k.fused_forward_any(dy, wa, nullptr, dx, a, fu, own);
    return e.name.c_str();
  }
  // As run_transposed: the NHWC packed pass between layout transposes (x too, for the mask).
  const int64_t HW = g.H * g.W;
  Fused ft = fu;
  ft.gx = static_cast<const float*>(as_nhwc(k, DType::f32, fu.gx, g.N, g.C, HW, kXSlot));
  const void* dyt = as_nhwc(k, DType::f32, dy, g.N, g.K, g.Ho * g.Wo, kYSlot);
  float* out = static_cast<float*>(scratch_of(DType::f32, kAccSlot, g.N * g.C * HW));
  k.fused_forward_any(static_cast<const float*>(dyt), wa, nullptr, out, as_nhwc_geom(a), ft, true);
  k.transpose(DType::f32, out, dx, g.N, HW, g.C);
  return e.name.c_str();
}

void sgemm(Isa isa, int64_t M, int64_t N, int64_t K, const float* a, int64_t ars, int64_t acs, const float* b,
           int64_t brs, int64_t bcs, float* c, int64_t ldc, bool accumulate) {
  if (static_cast<int>(isa) > static_cast<int>(isa_supported()))
    throw value_error(std::string("sgemm: this CPU does not run ") + isa_name(isa));
  kernels_of(isa).sgemm(M, N, K, a, ars, acs, b, brs, bcs, c, ldc, accumulate);
}

void sgemm_shape(Isa isa, int* mr, int* nr, int* kc, int* mc, int* nc) {
  kernels_of(isa).sgemm_shape(mr, nr, kc, mc, nc);
}

void forward(DType dt, const void* x, const void* w, const void* b, void* y, const Geom& g) {
  check_dims(g);
  if (g.N == 0 || g.K == 0 || g.Ho * g.Wo == 0) return;
  run(Problem{g, dt, Pass::forward}, Args{x, w, b, y, nullptr, nullptr, nullptr, nullptr});
}

void backward_input(DType dt, const void* dy, const void* w, void* dx, const Geom& g) {
  check_dims(g);
  if (g.N == 0 || g.C == 0 || g.H * g.W == 0) return;
  if (unit_stride(g) && !(dt == DType::f32 && scatter_input(g))) {  // the adjoint's forward pass
    const Geom a = adjoint(g);
    const Problem q{a, dt, Pass::forward};
    const int i = select_effective(q);  // before the weights are transposed: may throw
    const void* wa = dt == DType::f32 ? static_cast<const void*>(adjoint_weights(static_cast<const float*>(w), g))
                                      : static_cast<const void*>(adjoint_weights(static_cast<const double*>(w), g));
    if (a.N == 0 || a.K == 0 || a.Ho * a.Wo == 0) return;
    const Entry& e = table()[i];
    return e.v->run(kernels_of(e.isa), dt, Pass::forward, Args{dy, wa, nullptr, dx, nullptr, nullptr, nullptr, nullptr}, a);
  }
  run(Problem{g, dt, Pass::input}, Args{nullptr, w, nullptr, nullptr, dy, dx, nullptr, nullptr});
}

bool backward(DType dt, const void* dy, const void* x, const void* w, void* dx, void* dw, void* db, const Geom& g) {
  check_dims(g);
  if (dx && (dw || db) && g.nhwc && g.depthwise() && g.K == g.C && unit_stride(g) && g.N > 0 && g.C > 0 &&
      g.H * g.W > 0 && g.Ho * g.Wo > 0) {
    // One pass where both gradients' own entries are the same level's depthwise NHWC kernels.
    const Entry& ie = table()[select_effective(effective(Problem{g, dt, Pass::input}))];
    const Entry& we = table()[select_effective(Problem{g, dt, Pass::weight})];
    if (ie.v->supported == sup_dw_nhwc && we.v->supported == sup_dw_nhwc && ie.isa == we.isa) {
      const void* wa = dt == DType::f32 ? static_cast<const void*>(adjoint_weights(static_cast<const float*>(w), g))
                                        : static_cast<const void*>(adjoint_weights(static_cast<const double*>(w), g));
      if (kernels_of(ie.isa).dw_backward_both(dt, dy, x, wa, dx, dw, db, g)) return true;
    }
  }
  if (dx) backward_input(dt, dy, w, dx, g);
  if (dw || db) backward_weight(dt, dy, x, dw, db, g);
  return false;
}

void backward_weight(DType dt, const void* dy, const void* x, void* dw, void* db, const Geom& g) {
  check_dims(g);
  if (g.K == 0) return;
  const int64_t wcount = g.K * g.Cg() * g.kh * g.kw;
  if (g.N == 0 || g.Ho * g.Wo == 0) {  // empty reduction
    if (dw) std::memset(dw, 0, wcount * elem(dt));
    if (db) std::memset(db, 0, g.K * elem(dt));
    return;
  }
  run(Problem{g, dt, Pass::weight}, Args{x, nullptr, nullptr, nullptr, dy, nullptr, dw, db});
}

}  // namespace cnnkit::conv
