// Per-(sample, channel) means of f(c, x) over the S positions of an (N, C, S) tensor, NCHW or NHWC,
// for code compiled once per ISA level: the global average pool (f the identity) and a batch
// norm's output pooled without being written (f its affine map and ReLU). Each sum runs in double
// over the positions in order (a SIMD reduction of the row in NCHW: its lanes fixed by the ISA
// level), one sample per work item, so the result does not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/isa_vector.h"

namespace cnnkit {
inline namespace CNNKIT_KERNEL_NS {

// out[n*C + c] = T(sum over s of f(c, x[n, c, s]) * (1/S)), on nt threads.
template <typename T, typename F>
void channel_means(const T* x, int64_t N, int64_t C, int64_t S, bool nhwc, int nt, F f, T* out) {
  const double inv = 1.0 / double(S);
  if (!nhwc) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < N * C; ++r) {
      const T* __restrict p = x + r * S;
      const int64_t c = r % C;
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < S; ++i) s += double(f(c, p[i]));
      out[r] = T(s * inv);
    }
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    isa_vector<double> acc(static_cast<size_t>(C));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      double* __restrict a = acc.data();
      std::fill(a, a + C, 0.0);
      for (int64_t i = 0; i < S; ++i) {
        const T* __restrict p = x + (n * S + i) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) a[c] += double(f(c, p[c]));
      }
      for (int64_t c = 0; c < C; ++c) out[n * C + c] = T(a[c] * inv);
    }
  }
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit
