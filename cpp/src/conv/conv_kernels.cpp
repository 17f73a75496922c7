// Direct conv kernels, compiled once per ISA level (namespace cnnkit::<isa>).
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "conv_internal.h"
#include "scratch.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit::CNNKIT_ISA_NS {
namespace {
using conv::DType;
using conv::Geom;

// NCHW <-> NHWC: src (N, A, B) -> dst (N, B, A), in 32x32 tiles.
template <typename T>
void transpose_t(const T* src, T* dst, int64_t N, int64_t A, int64_t B) {
  constexpr int64_t t = 32;
  const int64_t ta = conv::ceil_div(A, t), tb = conv::ceil_div(B, t);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < N * ta * tb; ++u) {
    const int64_t n = u / (ta * tb), a0 = (u / tb % ta) * t, b0 = (u % tb) * t;
    const T* s = src + n * A * B;
    T* d = dst + n * A * B;
    const int64_t a1 = std::min(A, a0 + t), b1 = std::min(B, b0 + t);
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t a = a0; a < a1; ++a) d[b * A + a] = s[a * B + b];
  }
}

void transpose(DType dt, const void* src, void* dst, int64_t N, int64_t A, int64_t B) {
  if (dt == DType::f32)
    transpose_t(static_cast<const float*>(src), static_cast<float*>(dst), N, A, B);
  else
    transpose_t(static_cast<const double*>(src), static_cast<double*>(dst), N, A, B);
}

void dw_backward_weight_tmp(DType dt, const void* dy, const void* x, void* dw, void* db, const Geom& g) {
  if (dw) conv::gemm_backward_weight(dt, dy, x, dw, g);
  if (db) conv::bias_grad(dt, dy, db, g);
}

}  // namespace

extern const conv::Kernels conv_kernels = {
    conv::gemm_forward, conv::gemm_backward_input, dw_backward_weight_tmp,
    conv::gemm_forward, dw_backward_weight_tmp, transpose,
};

}  // namespace cnnkit::CNNKIT_ISA_NS
