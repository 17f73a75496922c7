// Pieces shared by the conv dispatcher and the GEMM-based path (compiled once, not per ISA).
#pragma once

#include "cnnkit/conv.h"

namespace cnnkit::conv {

// The GEMM path (im2col / col2im around OpenBLAS GEMM calls); any geometry.
void gemm_forward(DType dt, const void* x, const void* w, const void* b, void* y, const Geom& g);
// The input gradient by GEMM + col2im (any stride; used when the adjoint forward does not apply).
void gemm_backward_input(DType dt, const void* dy, const void* w, void* dx, const Geom& g);
void gemm_backward_weight(DType dt, const void* dy, const void* x, void* dw, const Geom& g);
// db[k] = sum over n, oh, ow of dy (deterministic; accumulated in double).
void bias_grad(DType dt, const void* dy, void* db, const Geom& g);

// Depthwise on small NCHW planes with channels a multiple of 16: the blocked kernels.
inline bool dw_nchw_blocked_shape(const Geom& g) {
  return !g.nhwc && g.K == g.C && g.G == g.C && g.C % 16 == 0 && g.H * g.W <= 256 && g.Ho * g.Wo <= 256;
}

// Number of pieces a loop of `work` items is cut into, from the shape alone (never from the
// thread count), so that reductions give the same bits at any thread count.
inline int64_t pieces_for(int64_t items, int64_t min_per_piece, int64_t want = 32) {
  int64_t p = items / (min_per_piece > 0 ? min_per_piece : 1);
  if (p > want) p = want;
  return p < 1 ? 1 : p;
}

}  // namespace cnnkit::conv
