// Per-ISA STREAM-like kernels and the row stream (see cnnkit/bench.h): one thread's slice [begin, end).
// The _nt variants use non-temporal (streaming) stores on lines aligned to 64 bytes.
#include <immintrin.h>

#include "cnnkit/bench.h"

namespace cnnkit {
namespace CNNKIT_ISA_NS {
namespace {

// Number of leading elements before a's 64-byte line boundary (capped at the range).
inline int64_t peel(const float* a, int64_t begin, int64_t end) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(a + begin);
  int64_t k = static_cast<int64_t>(((64 - (addr & 63)) & 63) / sizeof(float));
  return (k > end - begin) ? end - begin : k;
}

void k_copy(float* const* x, int64_t b, int64_t e, float, double*) {
  float* __restrict a = x[0];
  const float* __restrict s = x[1];
  for (int64_t i = b; i < e; ++i) a[i] = s[i];
}

void k_copy_nt(float* const* x, int64_t b, int64_t e, float s_, double* sink) {
#if defined(__AVX512F__) || defined(__AVX2__)
  float* __restrict a = x[0];
  const float* __restrict s = x[1];
  int64_t i = b, h = b + peel(a, b, e);
  for (; i < h; ++i) a[i] = s[i];
#if defined(__AVX512F__)
  for (; i + 16 <= e; i += 16) _mm512_stream_ps(a + i, _mm512_loadu_ps(s + i));
#else
  for (; i + 8 <= e; i += 8) _mm256_stream_ps(a + i, _mm256_loadu_ps(s + i));
#endif
  for (; i < e; ++i) a[i] = s[i];
  _mm_sfence();
#else
  k_copy(x, b, e, s_, sink);
#endif
}

void k_triad(float* const* x, int64_t b, int64_t e, float q, double*) {
  float* __restrict a = x[0];
  const float* __restrict s = x[1];
  const float* __restrict c = x[2];
  for (int64_t i = b; i < e; ++i) a[i] = s[i] + q * c[i];
}

void k_triad_nt(float* const* x, int64_t b, int64_t e, float q, double* sink) {
#if defined(__AVX512F__) || defined(__AVX2__)
  float* __restrict a = x[0];
  const float* __restrict s = x[1];
  const float* __restrict c = x[2];
  int64_t i = b, h = b + peel(a, b, e);
  for (; i < h; ++i) a[i] = s[i] + q * c[i];
#if defined(__AVX512F__)
  const __m512 vq = _mm512_set1_ps(q);
  for (; i + 16 <= e; i += 16)
    _mm512_stream_ps(a + i, _mm512_add_ps(_mm512_loadu_ps(s + i), _mm512_mul_ps(vq, _mm512_loadu_ps(c + i))));
#else
  const __m256 vq = _mm256_set1_ps(q);
  for (; i + 8 <= e; i += 8)
    _mm256_stream_ps(a + i, _mm256_add_ps(_mm256_loadu_ps(s + i), _mm256_mul_ps(vq, _mm256_loadu_ps(c + i))));
#endif
  for (; i < e; ++i) a[i] = s[i] + q * c[i];
  _mm_sfence();
#else
  k_triad(x, b, e, q, sink);
#endif
}

void k_read(float* const* x, int64_t b, int64_t e, float, double* sink) {
  const float* __restrict a = x[0];
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = b; i < e; ++i) acc += a[i];
  *sink += acc;
}

void k_rw5(float* const* x, int64_t b, int64_t e, float q, double*) {
  float* __restrict a = x[0];
  const float* __restrict g = x[1];
  float* __restrict c = x[2];
  for (int64_t i = b; i < e; ++i) {
    float ci = q * c[i] + g[i];
    c[i] = ci;
    a[i] = a[i] - q * ci;
  }
}

void k_rw7(float* const* x, int64_t b, int64_t e, float q, double*) {
  float* __restrict a = x[0];
  const float* __restrict g = x[1];
  float* __restrict c = x[2];
  float* __restrict d = x[3];
  for (int64_t i = b; i < e; ++i) {
    float ci = q * c[i] + g[i];
    float di = q * d[i] + g[i];
    c[i] = ci;
    d[i] = di;
    a[i] = a[i] - q * ci * di;
  }
}


// rw7 with non-temporal stores of all three updated arrays (64-byte aligned body).
void k_rw7_nt(float* const* x, int64_t b, int64_t e, float q, double* sink) {
#if defined(__AVX512F__)
  float* __restrict a = x[0];
  const float* __restrict g = x[1];
  float* __restrict c = x[2];
  float* __restrict d = x[3];
  int64_t i = b, h = b + peel(a, b, e);
  if (((reinterpret_cast<uintptr_t>(a) ^ reinterpret_cast<uintptr_t>(c)) & 63) ||
      ((reinterpret_cast<uintptr_t>(a) ^ reinterpret_cast<uintptr_t>(d)) & 63)) {
    k_rw7(x, b, e, q, sink);
    return;
  }
  k_rw7(x, i, h, q, sink);
  i = h;
  const __m512 vq = _mm512_set1_ps(q);
  for (; i + 16 <= e; i += 16) {
    __m512 gi = _mm512_loadu_ps(g + i);
    __m512 ci = _mm512_add_ps(_mm512_mul_ps(vq, _mm512_load_ps(c + i)), gi);
    __m512 di = _mm512_add_ps(_mm512_mul_ps(vq, _mm512_load_ps(d + i)), gi);
    __m512 ai = _mm512_sub_ps(_mm512_load_ps(a + i), _mm512_mul_ps(_mm512_mul_ps(vq, ci), di));
    _mm512_stream_ps(c + i, ci);
    _mm512_stream_ps(d + i, di);
    _mm512_stream_ps(a + i, ai);
  }
  k_rw7(x, i, e, q, sink);
  _mm_sfence();
#else
  k_rw7(x, b, e, q, sink);
#endif
}

// Rows [b, e) of a (k floats each) read; row i of c (n floats) gets row i's sum in every entry.
void k_rows(const float* a, int64_t k, float* c, int64_t n, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    const float* __restrict r = a + i * k;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < k; ++j) acc += r[j];
    float* __restrict o = c + i * n;
    for (int64_t j = 0; j < n; ++j) o[j] = acc;
  }
}

}  // namespace

extern const bench::StreamKernels stream_kernels;
const bench::StreamKernels stream_kernels = {{k_copy, k_copy_nt, k_triad, k_triad_nt, k_read, k_rw5, k_rw7, k_rw7_nt}, k_rows};

}  // namespace CNNKIT_ISA_NS
}  // namespace cnnkit
