// Conv entry points: pick the algorithm for a geometry and forward to the kernels of the active ISA
// level (direct depthwise, grouped and stem kernels) or to the GEMM path.
//
//   depthwise (G == C, K = m*C)         direct kernels, both layouts, all three passes (NCHW, m = 1,
//                                       C % 16 != 0, planes <= 100 pixels: NHWC kernels between transposes)
//   grouped, 2..32 channels per group   direct kernels (NCHW rows transposed in registers; NCHW
//                                       with rows narrower than 16 via full-tensor NHWC transposes)
//   stems: float32 NHWC, G == 1,        the direct kernel of small_cin.h for the forward and weight
//   C <= 4, K in {16, 32, 48, 64},      passes; their input gradient is GEMM (the adjoint has K >= 16
//   kh*kw <= 49                         input channels; at stride > 1 GEMM + col2im)
//   everything else                     im2col + OpenBLAS GEMM
// The input gradient at stride 1 is the forward pass of the adjoint convolution (dy convolved with
// the flipped, transposed weights, padding (k-1)*d - p), so it takes the forward kernels.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "conv_internal.h"
#include "scratch.h"

namespace cnnkit {
namespace scalar { extern const conv::Kernels conv_kernels; }
namespace avx2 { extern const conv::Kernels conv_kernels; }
namespace avx512 { extern const conv::Kernels conv_kernels; }
}  // namespace cnnkit

namespace cnnkit::conv {
namespace {

const Kernels& kernels() { return by_isa(scalar::conv_kernels, avx2::conv_kernels, avx512::conv_kernels); }

size_t elem(DType dt) { return dt == DType::f32 ? 4 : 8; }

// Grouped direct kernel: few channels per group, where GEMMs per group would be tiny.
bool grouped_direct(const Geom& g, DType dt = DType::f32) { return kernels().grouped_supported(dt, g); }

// A stem: few input channels, where im2col leaves the GEMM only kh*kw*C columns.
bool small_cin_direct(const Geom& g, DType dt) {
  return dt == DType::f32 && g.nhwc && g.G == 1 && g.C <= 4 && g.K % 16 == 0 && g.K <= 64 && g.kh * g.kw <= 49;
}

// NCHW arrays with narrow rows go to the grouped kernels through full-tensor NHWC transposes
// (tiles across whole planes); wider rows are transposed row by row inside the kernels.
bool grouped_via_nhwc(const Geom& g) { return !g.nhwc && (g.W < 16 || g.Wo < 16); }

// Depthwise on small NCHW planes: the per-plane kernels spend more on setting up a plane than on
// the taps, so these run as NHWC kernels between SIMD layout transposes.
// (Channel counts that are whole vectors take the kernels' own blocked path instead.)
bool dw_via_nhwc(const Geom& g) {
  return !g.nhwc && g.depthwise() && g.K == g.C && g.C % 16 && g.H * g.W <= 100 && g.Ho * g.Wo <= 100;
}

void* scratch_of(DType dt, int slot, int64_t count) {
  return dt == DType::f32 ? static_cast<void*>(scratch<float>(slot, count))
                          : static_cast<void*>(scratch<double>(slot, count));
}

// NCHW geometries whose direct kernels run in NHWC between full-tensor transposes.
bool via_nhwc(const Geom& g, DType dt) { return dw_via_nhwc(g) || (grouped_direct(g, dt) && grouped_via_nhwc(g)); }

Geom as_nhwc_geom(const Geom& g) {
  Geom t = g;
  t.nhwc = true;
  return t;
}

// The convolution whose forward pass is the input gradient of g (stride 1 only).
Geom adjoint(const Geom& g) {
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

// w'[g*Cg + c, ko, i, j] = w[g*Kg + ko, c, kh-1-i, kw-1-j]: shape (C, Kg, kh, kw).
template <typename T>
const T* adjoint_weights(const T* w, const Geom& g) {
  const int64_t Cg = g.Cg(), Kg = g.Kg(), k2 = g.kh * g.kw;
  T* out = scratch<T>(kAdjointSlot, g.C * Kg * k2);
  for (int64_t gi = 0; gi < g.G; ++gi)
    for (int64_t ko = 0; ko < Kg; ++ko)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t t = 0; t < k2; ++t)
          out[((gi * Cg + c) * Kg + ko) * k2 + (k2 - 1 - t)] = w[((gi * Kg + ko) * Cg + c) * k2 + t];
  return out;
}

void* as_nhwc(DType dt, const void* src, int64_t N, int64_t C, int64_t HW, int slot) {
  void* dst = dt == DType::f32 ? static_cast<void*>(scratch<float>(slot, N * C * HW))
                               : static_cast<void*>(scratch<double>(slot, N * C * HW));
  kernels().transpose(dt, src, dst, N, C, HW);
  return dst;
}

// Every GEMM dimension and leading dimension is at most one of these; OpenBLAS takes 32-bit ints.
void check_dims(const Geom& g) {
  const int64_t lim = INT32_MAX;
  if (g.H * g.W > lim || g.Ho * g.Wo > lim || g.C * g.kh * g.kw > lim || g.K * g.kh * g.kw > lim)
    throw value_error("conv: an image plane or a patch has more than 2^31 - 1 elements");
}

}  // namespace

const char* algorithm(const Geom& g, int pass) {
  if (pass == 1 && g.sh == 1 && g.sw == 1) {
    const Geom a = adjoint(g);
    if (a.depthwise())
      return g.nhwc ? "dw_direct_nhwc_adjoint"
             : dw_via_nhwc(a) ? "dw_direct_nhwc_adjoint+transpose"
             : dw_nchw_blocked_shape(a) ? "dw_direct_nchw_blocked_adjoint" : "dw_direct_nchw_adjoint";
    if (!grouped_direct(a)) return "gemm_adjoint";
    return g.nhwc ? "grouped_direct_nhwc_adjoint"
                  : grouped_via_nhwc(a) ? "grouped_direct_nhwc_adjoint+transpose" : "grouped_direct_nchw_adjoint";
  }
  if (g.depthwise())
    return g.nhwc ? "dw_direct_nhwc"
           : dw_via_nhwc(g) ? "dw_direct_nhwc+transpose"
           : dw_nchw_blocked_shape(g) ? "dw_direct_nchw_blocked" : "dw_direct_nchw";
  if (grouped_direct(g))
    return g.nhwc ? "grouped_direct_nhwc" : grouped_via_nhwc(g) ? "grouped_direct_nhwc+transpose" : "grouped_direct_nchw";
  if (pass != 1 && small_cin_direct(g, DType::f32)) return "small_cin_direct_nhwc";
  if (pass == 1) return "gemm_col2im";  // (unreachable for grouped_direct shapes)
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0;
  return pointwise ? "gemm" : "gemm_im2col";
}

void forward(DType dt, const void* x, const void* w, const void* b, void* y, const Geom& g) {
  check_dims(g);
  if (g.N == 0 || g.K == 0 || g.Ho * g.Wo == 0) return;
  if (via_nhwc(g, dt)) {
    const void* xt = as_nhwc(dt, x, g.N, g.C, g.H * g.W, kXSlot);
    void* yt = scratch_of(dt, kYSlot, g.N * g.K * g.Ho * g.Wo);
    forward(dt, xt, w, b, yt, as_nhwc_geom(g));
    kernels().transpose(dt, yt, y, g.N, g.Ho * g.Wo, g.K);
    return;
  }
  if (g.depthwise()) return kernels().dw_forward(dt, x, w, b, y, g);
  if (grouped_direct(g, dt)) return kernels().grouped_forward(dt, x, w, b, y, g);  // either layout
  if (small_cin_direct(g, dt))
    return kernels().small_cin_forward(static_cast<const float*>(x), static_cast<const float*>(w),
                                       static_cast<const float*>(b), static_cast<float*>(y), g);
  gemm_forward(dt, x, w, b, y, g);
}

void backward_input(DType dt, const void* dy, const void* w, void* dx, const Geom& g) {
  check_dims(g);
  if (g.N == 0 || g.C == 0 || g.H * g.W == 0) return;
  if (g.sh == 1 && g.sw == 1) {
    const Geom a = adjoint(g);
    const void* wa = dt == DType::f32 ? static_cast<const void*>(adjoint_weights(static_cast<const float*>(w), g))
                                      : static_cast<const void*>(adjoint_weights(static_cast<const double*>(w), g));
    return forward(dt, dy, wa, nullptr, dx, a);
  }
  if (via_nhwc(g, dt)) {
    const void* dyt = as_nhwc(dt, dy, g.N, g.K, g.Ho * g.Wo, kXSlot);
    void* dxt = scratch_of(dt, kYSlot, g.N * g.C * g.H * g.W);
    backward_input(dt, dyt, w, dxt, as_nhwc_geom(g));
    kernels().transpose(dt, dxt, dx, g.N, g.H * g.W, g.C);
    return;
  }
  if (g.depthwise()) return kernels().dw_backward_input(dt, dy, w, dx, g);
  if (grouped_direct(g, dt)) return kernels().grouped_backward_input(dt, dy, w, dx, g);
  gemm_backward_input(dt, dy, w, dx, g);
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
  if (via_nhwc(g, dt) && (dw || g.depthwise())) {
    // The grouped path keeps its bias gradient on the NCHW dy (the generic reduction below).
    const void* xt = as_nhwc(dt, x, g.N, g.C, g.H * g.W, kXSlot);
    const void* dyt = as_nhwc(dt, dy, g.N, g.K, g.Ho * g.Wo, kYSlot);
    backward_weight(dt, dyt, xt, dw, g.depthwise() ? db : nullptr, as_nhwc_geom(g));
    if (!g.depthwise() && db) bias_grad(dt, dy, db, g);
    return;
  }
  if (g.depthwise()) return kernels().dw_backward_weight(dt, dy, x, dw, db, g);
  if (small_cin_direct(g, dt))
    return kernels().small_cin_backward_weight(static_cast<const float*>(dy), static_cast<const float*>(x),
                                               static_cast<float*>(dw), static_cast<float*>(db), g);
  if (grouped_direct(g, dt) && dw) {
    kernels().grouped_backward_weight(dt, dy, x, dw, nullptr, g);
  } else if (dw) {
    gemm_backward_weight(dt, dy, x, dw, g);
  }
  if (db) bias_grad(dt, dy, db, g);
}

}  // namespace cnnkit::conv
