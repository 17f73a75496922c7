// Timing drivers for the STREAM-like kernels (the array split into one contiguous slice per thread,
// starting on 64-byte multiples) and the row stream (the rows split likewise); each repetition is
// timed around the parallel region.
#include <omp.h>

#include "cnnkit/bench.h"
#include "cnnkit/common.h"

namespace cnnkit {
namespace scalar { extern const bench::StreamKernels stream_kernels; }
namespace avx2 { extern const bench::StreamKernels stream_kernels; }
namespace avx512 { extern const bench::StreamKernels stream_kernels; }
}  // namespace cnnkit

namespace cnnkit::bench {

namespace {
const char* const kNames[] = {"copy", "copy_nt", "triad", "triad_nt", "read", "rw5", "rw7", "rw7_nt"};
const int kArrays[] = {2, 2, 3, 3, 1, 3, 4, 4};
const int64_t kBytes[] = {8, 8, 12, 12, 4, 20, 28, 28};
}  // namespace

Stream stream_from_name(const std::string& name) {
  for (int i = 0; i < static_cast<int>(Stream::count_); ++i)
    if (name == kNames[i]) return static_cast<Stream>(i);
  throw value_error("kind: expected one of copy, copy_nt, triad, triad_nt, read, rw5, rw7, rw7_nt, got '" +
                    name + "'");
}
const char* stream_name(Stream k) { return kNames[static_cast<int>(k)]; }
int stream_arrays(Stream k) { return kArrays[static_cast<int>(k)]; }
int64_t stream_bytes_per_elem(Stream k) { return kBytes[static_cast<int>(k)]; }

void stream_run(Stream k, float* const* arrays, int64_t n, int reps, double* seconds) {
  const StreamKernels& ks = by_isa(scalar::stream_kernels, avx2::stream_kernels, avx512::stream_kernels);
  auto fn = ks.run[static_cast<int>(k)];
  const int nt = num_threads();
  double sink = 0.0;
  for (int r = 0; r < reps; ++r) {
    const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(nt) reduction(+ : sink)
    {
      const int t = omp_get_thread_num(), T = omp_get_num_threads();
      int64_t lo = (n * t / T) / 16 * 16, hi = (t == T - 1) ? n : (n * (t + 1) / T) / 16 * 16;
      double local = 0.0;
      if (lo < hi) fn(arrays, lo, hi, 0.5f, &local);
      sink += local;
    }
    seconds[r] = omp_get_wtime() - t0;
  }
  volatile double keep = sink;
  (void)keep;
}

void stream_rows(const float* a, int64_t m, int64_t k, float* c, int64_t n, int reps, double* seconds) {
  const StreamKernels& ks = by_isa(scalar::stream_kernels, avx2::stream_kernels, avx512::stream_kernels);
  const int nt = num_threads();
  for (int r = 0; r < reps; ++r) {
    const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), T = omp_get_num_threads();
      const int64_t lo = m * t / T, hi = m * (t + 1) / T;
      if (lo < hi) ks.rows(a, k, c, n, lo, hi);
    }
    seconds[r] = omp_get_wtime() - t0;
  }
}

}  // namespace cnnkit::bench
