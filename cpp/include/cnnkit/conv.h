// cnnkit 2-D convolution (C++ API; the Python layer is cnnkit.ops.conv).
//
//   y[n, k, oh, ow] = b[k] + sum_{c in group(k), i, j} w[k, c - c0(k), i, j]
//                                  * x[n, c, oh*sh + i*dh - pt, ow*sw + j*dw - pl]
//
// with x read as zero outside [0, H) x [0, W) (the zero padding), group(k) the Cg = C/G input
// channels of the group of output channel k, and c0(k) its first channel. Backward:
//   dx = the adjoint of that map applied to dy, dw[k, c, i, j] = sum_{n, oh, ow} dy * x[...],
//   db[k] = sum_{n, oh, ow} dy[n, k, oh, ow].
// x, y, dy and dx are NCHW or NHWC (nhwc), w is always (K, C/G, kh, kw) and b, db are (K,).
//
// Every reduction is split into pieces that depend on the shape alone and combined in a fixed
// order, so results are the same bits at any thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "cnnkit/common.h"

namespace cnnkit::conv {

struct Geom;

// The batch-norm backward's apply pass evaluated where a weight gradient reads dy, so that the
// gradient at the norm's input is never written: dy = a[k]*g - b[k] - ((z - hi[k]) - lo[k])*d[k]
// per output channel k, the float expression of the norm kernels' apply pass (norm_kernels.cpp,
// backward_apply_t) on the same float coefficients, so the same values: g the gradient at the
// norm's output (already masked by its ReLU), z the norm's input (this convolution's output), hi +
// lo the batch mean split in two floats, a = w*invstd, b = a*sum(g)/count, d = a*invstd^2*sum(g*(z -
// mean))/count.
// With pooled_s > 0, g holds one value per sample and output channel instead (a global average
// pool's adjoint: the gradient at every pixel of that sample and channel, never broadcast in
// memory), row r of dy taking sample r / pooled_s's; with mask, g is masked by fma(mask[k], z,
// mask[K + k]) > 0 (a +0 where not: the ReLU of the norm's output as a convolution's fused prologue
// or the pool's computed it, recomputed from z) instead of coming masked. The values of
// norm_backward_apply's pass with pooled and mask_affine.
struct DyApply {
  const float* g;
  const float* z;
  const float* a;
  const float* b;
  const float* hi;
  const float* lo;
  const float* d;
  int64_t pooled_s = 0;
  const float* mask = nullptr;
};

// The fused prologue and epilogue of a float32 forward pass (forward_fused()):
//   a = x, then a = pre_scale[c] * a + pre_shift[c] (when pre_scale), then max(a, 0) (pre_relu),
//       applied to x before the zero padding (padded positions are 0 after the prologue);
//   y = conv(a) + bias; stats_sum[k] = sum (y - s_k), stats_sumsq[k] = sum (y - s_k)^2 over n, oh, ow
//       in double, s_k = y[0, k, 0, 0] (the first value of the reduction, as the norm kernels);
//   out = y (+ residual), then max(out, 0) (post_relu).
// Every pointer may be null; stats only with residual null and post_relu false.
struct Fused {
  const float* pre_scale;
  const float* pre_shift;
  bool pre_relu;
  const float* residual;
  bool post_relu;
  double* stats_sum;
  double* stats_sumsq;
  // The gradient epilogue (backward_input_fused(), nothing above set): the output o here is the
  // gradient at a prologue's output a = max(fma(gscale[c], gx, gshift[c]), 0) (the ReLU with
  // grelu), gx that prologue's input (the output's shape and layout). o becomes
  // o * [fma(gscale, gx, gshift) > 0] (masked where grelu), and grad_sum[c] = sum of o,
  // grad_sumxc[c] = sum of o * (gx - center[c]) over n, h, w in double (the two sums the batch-norm
  // backward needs, in a fixed order).
  const float* gx = nullptr;
  const float* gscale = nullptr;
  const float* gshift = nullptr;
  bool grelu = false;
  const double* center = nullptr;
  double* grad_sum = nullptr;
  double* grad_sumxc = nullptr;
  // With grelu: the mask from a stored ReLU output at the positions of o instead (o * [gmask > 0]:
  // a batch norm whose output was written, e.g. a residual block's last), gscale/gshift unused
  // for it; gx still the norm's input for the second sum. The residual above may come with it:
  // o = conv + residual, then masked (a block's input gradient plus its shortcut's).
  const float* gmask = nullptr;
  // The residual of the gradient epilogue given at the strided pixels only (res_stride s > 1): an
  // (N, ceil(H / s), ceil(W / s), C) array (NCHW likewise) holding its values at the pixels (h, w)
  // with h and w multiples of s, zero elsewhere (a stride-s 1x1 shortcut's input gradient, which
  // is zero between them, kept compact instead of written and read whole).
  int64_t res_stride = 1;
  // The input gradient's dy given as a batch norm's backward apply pass (DyApply) instead, the dy
  // pointer passed being where that pass is written: the NHWC 1x1 rows pass evaluates it a block of
  // rows at a time as it reads dy (writing those rows for the weight gradient); every other path
  // writes it whole first (dy_apply_rows).
  const DyApply* dy_apply = nullptr;
  // The input gradient's pass also writes the convolution's weight gradient (wgrad_dw, K x C, no
  // bias) from the same dy (after dy_apply) and the convolution's input wgrad_x through the
  // prologue max(fma(wgrad_scale[c], x, wgrad_shift[c]), 0) (the scale/shift pair optional, the
  // ReLU with wgrad_relu): the NHWC 1x1 rows pass reduces each block of rows into the weight
  // gradient's partials while the block is in cache, with the pieces, order and bits of the
  // weight gradient's own pass (backward_weight_fused()), which every other path runs after it.
  float* wgrad_dw = nullptr;
  const float* wgrad_x = nullptr;
  const float* wgrad_scale = nullptr;
  const float* wgrad_shift = nullptr;
  bool wgrad_relu = false;
  // With dy_apply and wgrad_dw: nothing reads dy after the call (the dy pointer is the calling
  // thread's scratch), so the rows pass may evaluate each unit's rows into a block of the worker's
  // instead of dy's own rows (no pass over memory writes them).
  bool dy_discard = false;
  // The weight gradient's own geometry where it is not the call's: a 1x1 convolution at a stride
  // above 1 without padding (a projection shortcut), wgrad_x its whole input, whose input gradient
  // the call computes at the strided pixels only (the call's geometry: the same convolution at
  // stride 1 on those pixels, N x Ho x Wo). The rows pass gathers each unit's strided rows of
  // wgrad_x; the pieces, order and bits are the strided weight gradient's own pass's.
  const Geom* wgrad_geom = nullptr;
};

struct Geom {
  int64_t N, C, H, W;           // input
  int64_t K, Ho, Wo;            // output channels and size
  int64_t G;                    // groups
  int64_t kh, kw, sh, sw, dh, dw;
  int64_t pt, pl;               // top/left zero padding (bottom/right follow from Ho, Wo); may be
                                // negative internally (the adjoint of a wide padding)
  bool nhwc;

  int64_t Cg() const { return C / G; }
  int64_t Kg() const { return K / G; }
  bool depthwise() const { return G == C && K % C == 0; }
};

// CBLAS-style GEMM entry points (scipy-openblas32's cblas_sgemm/dgemm), set once from Python.
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                         float, float*, int);
using DgemmFn = void (*)(int, int, int, int, int, int, double, const double*, int, const double*, int,
                         double, double*, int);
using BlasThreadsFn = void (*)(int);
void set_blas(SgemmFn s, DgemmFn d, BlasThreadsFn set_threads);
bool have_blas();

// y must not alias x/w/b. b may be null.
void forward(DType dt, const void* x, const void* w, const void* b, void* y, const Geom& g);
// dx is overwritten.
void backward_input(DType dt, const void* dy, const void* w, void* dx, const Geom& g);
// dw (may be null) and db (may be null) are overwritten.
void backward_weight(DType dt, const void* dy, const void* x, void* dw, void* db, const Geom& g);
// Both: dx as backward_input (where not null), then dw and db as backward_weight (where not null),
// the same bits; in one pass over the images where a kernel has one (Kernels::dw_backward_both),
// and then returns true. None of dx, dw, db may overlap an input or each other (the binding
// checks).
bool backward(DType dt, const void* dy, const void* x, const void* w, void* dx, void* dw, void* db, const Geom& g);

// The forward pass with the fused prologue / epilogue of `fu` (float32; the GEMM path on cnnkit's
// own sgemm, the depthwise NHWC kernels, or the direct grouped kernels where the registry runs
// them; the stem kernel with the statistics epilogue only). Returns the registry name of the entry
// that ran; throws value_error where the registry would run another direct kernel for the plain
// forward pass (depthwise NCHW), for a prologue, residual or ReLU on the stem kernel, or for an
// unsupported combination (stats with residual or post_relu).
const char* forward_fused(const float* x, const float* w, const float* b, float* y, const Geom& g, const Fused& fu);

// The weight (dw) and bias (db) gradients of conv(prologue(x)) with the prologue of `fu`
// (pre_scale, pre_shift, pre_relu; the other fields must be null/false), float32, recomputing the
// normalized input while the GEMM path (or the direct grouped kernel) lays x out (it is never
// stored whole). dw and db may be null. Returns the registry name of the entry that ran; throws
// value_error where the registry would run another direct kernel (depthwise NCHW, stem) for the
// plain weight gradient. On conv2d_dw_f32_nhwc the prologue is applied as the kernel reads x: the
// same bits as the plain weight gradient of the prologue's output.
const char* backward_weight_fused(const float* dy, const float* x, float* dw, float* db, const Geom& g,
                                  const Fused& fu);

// A DyApply of the norm's output gradient g_out and input z from its float64 mean and apply
// coefficients A, B, D per channel (K), converted to float as its apply pass converts them, into
// `store` (which must outlive the result); pooled_s and mask as in DyApply.
DyApply make_dy_apply(const float* g_out, const float* z, const double* mean, const double* A, const double* B,
                      const double* D, int64_t K, std::vector<float>& store, int64_t pooled_s = 0,
                      const float* mask = nullptr);

// The weight (dw) and bias (db) gradients with dy the batch-norm backward's apply pass (DyApply:
// the gradient at the norm's input, never written), from the norm's float64 statistics and
// coefficients per output channel (mean, A, B, D of its apply pass, converted to float as that pass
// converts them). Only where the registry runs the stem kernel for the weight gradient; throws
// value_error elsewhere (the caller writes dy with the norm's pass and runs the plain gradient).
const char* backward_weight_bn_apply(const float* g_out, const float* z, const double* mean, const double* A,
                                     const double* B, const double* D, const float* x, float* dw, float* db,
                                     const Geom& g);

// The input gradient dx of conv(prologue(x)) at stride 1 with the gradient epilogue of `fu` (gx,
// gscale, gshift, grelu, center, grad_sum, grad_sumxc; the forward fields null): dx is written
// already masked by the prologue's ReLU, with the batch-norm backward's two sums, as the adjoint's
// forward pass on the GEMM path. Throws value_error where that pass would not run on a GEMM entry
// (depthwise, grouped, small-plane scatter, stride > 1). Without the epilogue (gx, center and the
// sums null, and with them gscale, gshift, grelu, gmask and residual) dx is the plain input
// gradient, dy given by dy_apply and the weight gradient written by the same pass where fu asks
// for them.
const char* backward_input_fused(const float* dy, const float* w, float* dx, const Geom& g, const Fused& fu);

// cnnkit's own sgemm at ISA level `isa` (tests and benchmarks): C (M x N, row-major, row stride
// ldc) = [C +] A . B with A (i, k) at a[i*ars + k*acs] and B (k, j) at b[k*brs + j*bcs], on
// cnnkit's threads; the bits do not depend on the thread count.
void sgemm(Isa isa, int64_t M, int64_t N, int64_t K, const float* a, int64_t ars, int64_t acs, const float* b,
           int64_t brs, int64_t bcs, float* c, int64_t ldc, bool accumulate);
// Its register block (mr x nr) and cache blocks (kc, mc, nc) at that level.
void sgemm_shape(Isa isa, int* mr, int* nr, int* kc, int* mc, int* nc);

// ---- the kernel registry (conv_dispatch.cpp) ---------------------------------------------------
// One table lists every kernel variant, at every ISA level, in priority order; the entry points
// above run the first entry that is compiled for the active ISA level, implements the pass and
// supports the problem (or the forced entry, for tests). Names follow one grammar:
//
//   conv2d_<algorithm>_<dtype>_<layout>[_<how>]__<isa>
//
//   algorithm  dw (depthwise: G == C, K = m*C), grouped (direct, Cg == Kg in {2, 4, 8, 16, 32}),
//              stem (dense, C <= 4 input channels), gemm (im2col / col2im + BLAS GEMM: anything)
//   dtype      f32 | f64
//   layout     nchw | nhwc (of x, y, dy and dx; the weight is always (K, C/G, kh, kw))
//   how        blocked (NCHW planes transposed block by block in cache around the NHWC kernel),
//              transposed (whole NCHW tensors transposed to NHWC around the NHWC kernel)
//   isa        scalar | avx2 | avx512 (the copy of the code compiled for that level)
//
// What comes before the double underscore says what is computed, what follows says where. Kernel
// size (3x3, 5x5, 7x7), channel multiplier and channels per group are specialised inside an entry.
// The input gradient at stride 1 is the forward pass of the adjoint convolution (dy convolved with
// the flipped, transposed weights, padding (k-1)*d - p): for that pass an entry is asked about,
// and runs, the forward problem of the adjoint geometry.
enum class Pass : int { forward = 0, input = 1, weight = 2 };
constexpr unsigned pass_bit(Pass p) { return 1u << static_cast<int>(p); }

struct Problem {
  Geom g;
  DType dt;
  Pass pass;
};

struct EntryInfo {
  const char* name;
  Isa isa;
  unsigned passes;  // pass_bit() of each pass the entry implements
};

int registry_size();
EntryInfo registry_entry(int i);  // 0 <= i < registry_size(), in priority order
// Whether entry i implements the pass and supports the problem (geometry and dtype).
bool supports(int i, const Problem& p);
// The entry the entry points run for this problem: the forced one where it supports the problem,
// else the first supporting entry at the active ISA level (the GEMM entries support everything).
int select(const Problem& p);
// Prefer entry i (at its own ISA level) wherever it supports the problem (-1: none); other
// problems are dispatched as usual. Process-wide; for tests.
void force(int i);
int forced();
// Name of the entry select() gives a float32 problem: pass 0 forward, 1 input grad, 2 weight grad.
const char* algorithm(const Geom& g, int pass);
// Whether that entry runs the pass of that float32 problem by Winograd F(2x2, 3x3): the packed
// NHWC entry's forward pass and the input gradient at stride 1, its adjoint's forward, and the
// weight gradient (the patches entry's, the packed entry's fused form), directly or between NCHW
// transposes (the transposed entry).
bool winograd(const Geom& g, int pass);

// ---- per-ISA direct kernels --------------------------------------------------------------------
// Depthwise (G == C, K = m*C): the kernels handle any kernel size, stride, dilation and padding
// (specialised for 3x3, 5x5 and 7x7 at stride 1 and 2).
using DwForwardFn = void (*)(DType, const void* x, const void* w, const void* b, void* y, const Geom&);
using DwBackwardInputFn = void (*)(DType, const void* dy, const void* w, void* dx, const Geom&);
using DwBackwardWeightFn = void (*)(DType, const void* dy, const void* x, void* dw, void* db,
                                    const Geom&);
// Grouped with few channels per group (Cg == Kg in {2, 4, 8, 16, 32}), either layout: forward, input
// gradient (used at stride > 1; stride 1 is the adjoint forward) and weight gradient (no bias).
using GroupedForwardFn = DwForwardFn;
using GroupedBackwardInputFn = DwBackwardInputFn;
using GroupedBackwardWeightFn = DwBackwardWeightFn;
struct Kernels {
  DwForwardFn dw_forward;
  DwBackwardInputFn dw_backward_input;
  DwBackwardWeightFn dw_backward_weight;
  bool (*grouped_supported)(DType, const Geom&);
  GroupedForwardFn grouped_forward;
  GroupedBackwardInputFn grouped_backward_input;
  GroupedBackwardWeightFn grouped_backward_weight;
  // NCHW <-> NHWC transposes (x: N, A, B -> N, B, A).
  void (*transpose)(DType, const void* src, void* dst, int64_t N, int64_t A, int64_t B);
  // Dense, C <= 4 input channels, NHWC float32, K % 16 == 0 and K <= 64 (a stem): forward and
  // weight (+ bias) gradient.
  // The forward pass takes the shifted statistics of y (conv::Fused's stats_sum / stats_sumsq; both
  // or neither, null for the plain pass).
  void (*small_cin_forward)(const float* x, const float* w, const float* b, float* y, const Geom&, double* sum,
                            double* sumsq);
  // The weight gradient reads dy through ap (null: dy as given; else dy is unused, see DyApply).
  void (*small_cin_backward_weight)(const float* dy, const float* x, float* dw, float* db, const Geom&,
                                    const DyApply* ap);
  // Depthwise, NCHW, K == C, C % 16 == 0, planes <= 2^20 pixels (dw_nchw_blocked_shape): the
  // blocked kernels (the dw_* functions above never take them).
  DwForwardFn dw_forward_blocked;
  DwBackwardInputFn dw_backward_input_blocked;
  DwBackwardWeightFn dw_backward_weight_blocked;
  // The GEMM path (conv_gemm.cpp): any geometry; the weight gradient writes dw only.
  DwForwardFn gemm_forward;
  DwBackwardInputFn gemm_backward_input;
  void (*gemm_backward_weight)(DType, const void* dy, const void* x, void* dw, const Geom&);
  void (*bias_grad)(DType, const void* dy, void* db, const Geom&);
  // The GEMM path on cnnkit's own packed sgemm (float32): the conv2d_gemm_f32_*_packed entries,
  // and the fused forward pass (forward_fused()).
  DwForwardFn packed_forward;
  DwBackwardInputFn packed_backward_input;
  void (*packed_backward_weight)(DType, const void* dy, const void* x, void* dw, const Geom&);
  void (*fused_forward)(const float* x, const float* w, const float* b, float* y, const Geom&, const Fused&);
  // The weight gradient of conv(prologue(x)) (the prologue of Fused; the other fields unused), on
  // the own sgemm (own) or OpenBLAS.
  void (*fused_backward_weight)(const float* dy, const float* x, float* dw, const Geom&, const Fused&, bool own);
  // The forward pass of the GEMM path with any Fused (own sgemm or OpenBLAS): the adjoint pass of
  // backward_input_fused().
  void (*fused_forward_any)(const float* x, const float* w, const float* b, float* y, const Geom&, const Fused&,
                            bool own);
  // The register block of the level's sgemm microkernel (mr x nr) and its cache blocks.
  void (*sgemm_shape)(int* mr, int* nr, int* kc, int* mc, int* nc);
  // C (M x N, row-major, ldc) = [C +] A . B, A (i, k) at a[i*ars + k*acs], B (k, j) at b[k*brs + j*bcs],
  // over cnnkit's threads (bits independent of the thread count).
  void (*sgemm)(int64_t M, int64_t N, int64_t K, const float* a, int64_t ars, int64_t acs, const float* b,
                int64_t brs, int64_t bcs, float* c, int64_t ldc, bool accumulate);
  // The weight gradient of the conv2d_gemm_f32_nhwc_patches entry (conv_gemm.cpp).
  void (*patches_backward_weight)(DType, const void* dy, const void* x, void* dw, const Geom&);
  // Depthwise NHWC, float32 (the conv2d_dw_f32_nhwc entry's problems): the forward pass with any
  // Fused forward fields, and the weight (dw, db; either may be null) gradient of
  // conv(prologue(x)) with the prologue of Fused (dw_nhwc.h).
  void (*dw_fused_forward)(const float* x, const float* w, const float* b, float* y, const Geom&, const Fused&);
  void (*dw_fused_backward_weight)(const float* dy, const float* x, float* dw, float* db, const Geom&, const Fused&);
  // The direct grouped kernels with the Fused prologue (and, forward, the epilogue: statistics,
  // residual, post ReLU), float32, either layout; the weight gradient writes dw only.
  void (*grouped_forward_fused)(const float* x, const float* w, const float* b, float* y, const Geom&, const Fused&);
  void (*grouped_backward_weight_fused)(const float* dy, const float* x, float* dw, const Geom&, const Fused&);
  // The gradient epilogue of Fused (gx, gscale, gshift, grelu, center; the sums unused) over one
  // image: o (its P pixels of C channels, NHWC or NCHW) masked in place (by mask > 0 where mask,
  // the image's part of gmask, is given), s1[c] = sum of o and s2[c] = sum of o * (gx - center[c])
  // in double (conv_gemm.cpp; backward_input_fused()'s units).
  void (*grad_epilogue_image)(float* o, const float* gx, const float* mask, int64_t C, int64_t P, bool nhwc,
                              const Fused&, double* s1, double* s2);
  // The fused input gradient of an NHWC problem of the direct grouped kernels at a stride above 1
  // (float32): dx as grouped_backward_input, then, on each dx row while it is in cache, the
  // residual and the gradient epilogue of Fused; the sums per band of rows, added in band order
  // into grad_sum and grad_sumxc (grouped.h).
  void (*grouped_backward_input_fused)(const float* dy, const float* w, float* dx, const Geom&, const Fused&);
  // out (rows x C, pixel-major) = the apply pass of ap, in parallel (the norm kernels' arithmetic).
  void (*dy_apply_rows)(const DyApply& ap, float* out, int64_t rows, int64_t C);
  // The fused input gradient of a depthwise NHWC problem with multiplier 1 at stride 1 (float32):
  // dx as the adjoint's forward pass (w: the adjoint's weights), then, on each dx row while it is
  // in cache, the residual and the gradient epilogue of Fused; the sums per image, added in image
  // order into grad_sum and grad_sumxc (dw_nhwc.h).
  void (*dw_backward_input_fused)(const float* dy, const float* w, float* dx, const Geom&, const Fused&);
  // Both gradients of a depthwise NHWC problem in one pass over the images (dw_nhwc.h's
  // dw3_backward_both: 3x3, stride 1, the shapes of the conv2d_dw_*_nhwc entry's register-row weight
  // gradient): dx (wa: the adjoint's weights) and dw, db (either may be null), with the bits of
  // the two passes. Returns false, having written nothing, where it does not take the shape.
  bool (*dw_backward_both)(DType, const void* dy, const void* x, const void* wa, void* dx, void* dw, void* db,
                           const Geom&);
  // The fused input gradient of a depthwise NHWC problem with multiplier 1 (float32; stride 1 with
  // the output the input's size, or a stride above 1), its dy given as a norm's apply pass
  // (Fused::dy_apply, not kept) and its weight gradient (Fused::wgrad_*) in the same call, in one
  // pass over the images (dw_nhwc.h's dw_backward_onepass_nhwc; w: the weights, wa: the adjoint's
  // at stride 1, else null; dx may be the apply pass's g at stride 1): the bits of the apply pass,
  // the weight gradient and the input gradient run one after the other. Returns false, having
  // written nothing, where it does not take the shape.
  bool (*dw_backward_onepass)(const DyApply& ap, const float* w, const float* wa, float* dx, const Geom&,
                              const Fused&);
  // The same for a grouped NHWC problem of the direct kernels at a stride above 1 (grouped.h's
  // grouped_backward_onepass; w: the weights): false, having written nothing, where the weight
  // gradient's pieces or the input gradient's bands are not whole images.
  bool (*grouped_backward_onepass)(const DyApply& ap, const float* w, float* dx, const Geom&, const Fused&);
};

}  // namespace cnnkit::conv
