// Pieces shared by the conv dispatcher, the direct kernels and the GEMM-based path.
#pragma once

#include <cstdint>
#include <vector>

#include "cnnkit/conv.h"
#include "scratch.h"

namespace cnnkit::conv {

// The BLAS entry points registered by set_blas() (conv_dispatch.cpp; one copy for every ISA level).
extern SgemmFn g_blas_sgemm;
extern DgemmFn g_blas_dgemm;

inline namespace CNNKIT_KERNEL_NS {
// put(i, s) for i in [0, n): s = the sum in double, in piece order, of src[p * stride + i] over the
// pieces p (s starts at 0). Runs of 16 values at a time, piece by piece, so that the loads are
// contiguous and the adds vectors; each value's sum is the same chain as the scalar loop
// `for p: s += double(src[p * stride + i])` (the same bits). Walking one value at a time through
// the pieces instead read them a stride apart, one scalar at a time (the dense 3x3 weight
// gradient's 16 pieces of 64 x 576: a tenth of the pass).
template <typename T, typename F>
inline void sum_pieces(const T* src, int64_t pieces, int64_t stride, int64_t n, F&& put) {
  constexpr int64_t B = 16;
  int64_t i0 = 0;
  for (; i0 + B <= n; i0 += B) {
    double s[B] = {};
    for (int64_t p = 0; p < pieces; ++p) {
      const T* q = src + p * stride + i0;
#pragma GCC unroll 16
      for (int64_t i = 0; i < B; ++i) s[i] += double(q[i]);
    }
    for (int64_t i = 0; i < B; ++i) put(i0 + i, s[i]);
  }
  for (int64_t i = i0; i < n; ++i) {
    double s = 0;
    for (int64_t p = 0; p < pieces; ++p) s += double(src[p * stride + i]);
    put(i, s);
  }
}

// The GEMM path (im2col / col2im around OpenBLAS GEMM calls, conv_gemm.cpp); any geometry. Compiled
// once per ISA level like the direct kernels (the copies are named by conv::Kernels).
void gemm_forward(DType dt, const void* x, const void* w, const void* b, void* y, const Geom& g);
// The input gradient by GEMM + col2im (any stride; used when the adjoint forward does not apply).
void gemm_backward_input(DType dt, const void* dy, const void* w, void* dx, const Geom& g);
void gemm_backward_weight(DType dt, const void* dy, const void* x, void* dw, const Geom& g);
// db[k] = sum over n, oh, ow of dy (deterministic; accumulated in double).
void bias_grad(DType dt, const void* dy, void* db, const Geom& g);
// The same three passes with cnnkit's own packed sgemm (sgemm.cpp) in place of OpenBLAS; float32.
void packed_forward(DType dt, const void* x, const void* w, const void* b, void* y, const Geom& g);
void packed_backward_input(DType dt, const void* dy, const void* w, void* dx, const Geom& g);
void packed_backward_weight(DType dt, const void* dy, const void* x, void* dw, const Geom& g);
// The weight gradient of an NHWC problem with 16+ channels a group (not a plain 1x1) on the own
// sgemm with its B operand packed straight from x (no im2col matrix); float32.
void patches_backward_weight(DType dt, const void* dy, const void* x, void* dw, const Geom& g);
// The forward pass with the fused prologue and epilogue of cnnkit::conv::Fused (own sgemm).
void fused_forward(const float* x, const float* w, const float* b, float* y, const Geom& g, const Fused& fu);
// The weight gradient of conv(prologue(x)) (own: cnnkit's sgemm, else OpenBLAS).
void fused_backward_weight(const float* dy, const float* x, float* dw, const Geom& g, const Fused& fu, bool own);
void fused_forward_any(const float* x, const float* w, const float* b, float* y, const Geom& g, const Fused& fu,
                       bool own);
// The gradient epilogue of fu over one image's input gradient o (Kernels::grad_epilogue_image).
void grad_epilogue_image(float* o, const float* gx, const float* mask, int64_t C, int64_t P, bool nhwc,
                         const Fused& fu, double* s1, double* s2);
// The same on nr pixel-major rows of C channels (NHWC) that start at element off of the input
// gradient: fu's residual there added first (where given), then the mask and sums from fu's gx
// (and gmask) there; cont: the sums continue from s1, s2 (rows that follow the rows that started
// them: the same sums as over all of them in one call).
void grad_epilogue_rows(float* o, int64_t off, int64_t C, int64_t nr, const Fused& fu, double* s1, double* s2,
                        bool cont);
}  // namespace CNNKIT_KERNEL_NS

// The convolution whose forward pass is the input gradient of g (stride 1 only).
inline Geom adjoint(const Geom& g) {
  Geom a = g;
  a.C = g.K;
  a.K = g.C;
  a.H = g.Ho;
  a.W = g.Wo;
  a.Ho = g.H;
  a.Wo = g.W;
  a.pt = (g.kh - 1) * g.dh - g.pt;
  a.pl = (g.kw - 1) * g.dw - g.pl;
  return a;
}

// The per-unit sums of a fused input gradient's units (images or bands of rows): s1(u)[c] the sum
// of o, s2(u)[c] the sum of o * (x - center), zeroed. Each unit's rows start on their own cache
// line (line_rows(): the strided grouped path adds into its band's sums after every dx row; with
// rows of C doubles from a 16-byte aligned start, neighbouring bands shared the lines at their
// ends: cold replays, the calls alternating, resnext_small's s2 grouped input gradients 1.03-1.06x
// faster aligned). Owned here rather than in kPartSlot: the units-of-images path runs other
// kernels in between. The layout does not change any sum.
class GradParts {
 public:
  GradParts(int64_t units, int64_t C)
      : units_(units), C_(C), ld_(line_rows(C)), buf_(static_cast<size_t>(2 * units * ld_ + 8), 0.0) {
    const auto a = reinterpret_cast<std::uintptr_t>(buf_.data());
    p_ = buf_.data() + ((64 - a % 64) % 64) / sizeof(double);
  }
  GradParts(const GradParts&) = delete;  // (p_ points into buf_)
  GradParts& operator=(const GradParts&) = delete;
  double* s1(int64_t u) const { return p_ + 2 * u * ld_; }
  double* s2(int64_t u) const { return p_ + (2 * u + 1) * ld_; }
  // grad_sum, grad_sumxc of fu: the units added in order.
  void combine(const Fused& fu) const {
    for (int64_t c = 0; c < C_; ++c) {
      double a = 0, b = 0;
      for (int64_t u = 0; u < units_; ++u) {
        a += s1(u)[c];
        b += s2(u)[c];
      }
      fu.grad_sum[c] = a;
      fu.grad_sumxc[c] = b;
    }
  }

 private:
  int64_t units_, C_, ld_;
  std::vector<double> buf_;
  double* p_;
};

// Depthwise on NCHW planes with channels a multiple of 16 (multiplier 1): the blocked kernels,
// which transpose each (image, 16-channel) block of planes in cache around the NHWC kernels. They
// beat the per-plane kernels at every size measured (7x7 to 112x112); the block's buffers grow
// with the plane, so planes over 2^20 pixels keep the per-plane kernels.
inline bool dw_nchw_blocked_shape(const Geom& g) {
  return !g.nhwc && g.K == g.C && g.G == g.C && g.C % 16 == 0 && g.H * g.W <= (int64_t(1) << 20) &&
         g.Ho * g.Wo <= (int64_t(1) << 20);
}

// Dense convolutions on small output planes (under 256 pixels) with long reductions (C*kh*kw of
// 1024 or more) or large weights (2^18 values or more): the deep layers of ImageNet networks at
// small inputs. There the GEMM of one image or of one L2-sized row chunk (at most 64 rows) is a
// thin GEMM that re-packs the whole weight tensor for a handful of rows, after a scalar re-layout
// of the weights (1x1 512->2048 at 2x2, N = 16, 1 thread: 8.1 ms forward, 2.7 in whole-batch
// GEMMs), so the packed (own sgemm) entries run every pass as GEMMs over the whole batch, cut into
// tiles of the output (conv_gemm.cpp, batched_*). The rest keep the row chunks: at C*kh*kw = 576
// and 288 with 37K weights (N = 64, 8x8, 1 thread) the whole-batch GEMMs were 1.2-1.35x slower
// (the im2col block leaves L2).
// A 1x1 kernel without padding at any stride (output pixel (oh, ow) reads input pixel
// (oh*sh, ow*sw)), on G == 1: the problems conv_gemm.cpp's forward_1x1_nhwc takes (sh, sw > 0).
inline bool one_by_one(const Geom& g) {
  return g.G == 1 && g.kh == 1 && g.kw == 1 && g.pt == 0 && g.pl == 0 && g.Ho == (g.H - 1) / g.sh + 1 &&
         g.Wo == (g.W - 1) / g.sw + 1;
}

inline bool small_planes(const Geom& g) {
  const int64_t kk = g.Cg() * g.kh * g.kw;
  return g.G == 1 && g.Ho * g.Wo < 256 && (kk >= 1024 || g.K * kk >= (int64_t(1) << 18));
}

// The float32 dense NHWC 3x3 problems at stride 1 without dilation whose forward pass (and so
// the input gradient, the adjoint's forward) the packed entry runs by Winograd F(2x2, 3x3)
// (winograd.h): 32 or more channels on both sides, output planes of two or more rows and
// columns that small_planes() leaves to the row chunks, 2048 or more output pixels over the batch
// (below, the weights' transform and the short GEMMs cost more than the products saved: one
// thread, 1024 pixels, 128->128 0.90x, 64->64 1.14x; 512 pixels 0.80x; 256 pixels 0.70-0.72x; at
// 2048-2304 pixels 1.01-1.35x). Measured against the patches GEMM
// (Intel AVX-512 host, 2 threads, N = 32 unless said, calls alternating in one process, median of
// the pairs' ratios), forward: 64@56 1.48x, 128@28 2.0x, 256@16 1.83x, 256@28 (N = 16) 1.59x,
// 32@56 1.13x, 32->64@32 1.22x; at AVX2 on the same host 64@56 1.60x, 32->64@32 1.39x.
inline bool winograd_shape(const Geom& g) {
  return g.nhwc && g.G == 1 && g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 &&
         g.C >= 32 && g.K >= 32 && g.Ho >= 2 && g.Wo >= 2 && g.N * g.Ho * g.Wo >= 2048 && !small_planes(g);
}
// The weight gradients of those that the patches entry runs by Winograd too: K*C at most
// 128 x 128 (each piece's partial, 16 K*C floats, at most 1 MiB, stays in L2 while it is summed
// into). Measured as above: 64@56 1.86x, 128@28 1.53x, 32@56 1.49x, 32->64@32 1.36x; AVX2 64@56
// 1.41x, 32->64@32 1.28x. (Above the bound not measured.)
inline bool winograd_weight_shape(const Geom& g) { return winograd_shape(g) && g.C * g.K <= 128 * 128; }

// The grouped weight gradient by channel blocks (grouped.h, grouped_weight_blocks_direct) in
// place of per-image chunks with float partials of the whole dw per piece: 16 or more channels per
// group and output planes under 256 pixels. A group's channels of a pixel lie C floats apart, so
// per-image chunks read each pixel's slice from its own line, 2 KiB apart at C = 512: a few sets
// of L1 hold them all; the blocks copy them together first.
// Measured on an Intel AVX-512 core (2 FMA pipes; 2 threads, N = 32, NHWC, processes alternating):
// g32 C1024@14 14.7-17.2 ms against 22.4-25.6, g32 C512@14 3.6-4.2 against 4.7-4.9, g16 C256@14
// 1.9-2.2 against 2.2, g16 C256@7 0.48-0.58 against 0.74-0.75; on 28x28 planes the per-image
// chunks won (g32 C512@28 22.4-24.3 against 25.0-26.2, g8 C128@28 3.3 against 4.1). Zen 4 had
// favoured the chunks where the weights were small (g16 C256@7 1.9 vs 2.3 ms, 1 thread) and on
// g32 C512@14 (10.5-16 vs 14-21), before both loops took one pointer a tap; not measured since.
// It reads NCHW planes directly (a block's planes are contiguous), so the NCHW weight pass on
// these shapes skips the full-tensor transposes (conv_dispatch.cpp).
inline bool grouped_weight_by_blocks(const Geom& g) { return g.Cg() >= 16 && g.Ho * g.Wo < 256; }

// Number of pieces a loop of `work` items is cut into, from the shape alone (never from the
// thread count), so that reductions give the same bits at any thread count.
inline int64_t pieces_for(int64_t items, int64_t min_per_piece, int64_t want = 32) {
  int64_t p = items / (min_per_piece > 0 ? min_per_piece : 1);
  if (p > want) p = want;
  return p < 1 ? 1 : p;
}

}  // namespace cnnkit::conv
