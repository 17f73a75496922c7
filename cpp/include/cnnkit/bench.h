// STREAM-like kernels that measure this machine's memory bandwidth with the same threads and
// ISA level the library's kernels use. Every kernel works on float32 arrays of n elements.
//   copy      a = b                      8 B/elem   (read 1, write 1)
//   copy_nt   a = b, non-temporal stores 8 B/elem
//   triad     a = b + s*c               12 B/elem   (read 2, write 1)
//   triad_nt  the same, non-temporal    12 B/elem
//   read      sum(a)                     4 B/elem
//   rw5       c = s*c + b; a -= s*c     20 B/elem   (in place, SGD-momentum shape: read 3, write 2)
//   rw7       c = s*c + b; d = s*d + b; a -= s*c*d   28 B/elem   (in place, Adam shape)
//   rw7_nt    the same with non-temporal stores
// stream_rows moves a GEMM's operand traffic without its arithmetic: every row of an m x k matrix
// read, and the matching row of an m x n matrix written (the row's sum in each entry).
#pragma once

#include <cstdint>
#include <string>

namespace cnnkit::bench {

enum class Stream : int { copy = 0, copy_nt, triad, triad_nt, read, rw5, rw7, rw7_nt, count_ };

Stream stream_from_name(const std::string& name);  // throws value_error
const char* stream_name(Stream k);
int stream_arrays(Stream k);           // how many arrays the kernel touches
int64_t stream_bytes_per_elem(Stream k);

// Runs kernel k `reps` times over arrays[0..stream_arrays(k)) and writes each run's seconds.
void stream_run(Stream k, float* const* arrays, int64_t n, int reps, double* seconds);

// Runs the row stream over a (m x k) and c (m x n), both row-major, `reps` times (rows split over
// the threads) and writes each run's seconds.
void stream_rows(const float* a, int64_t m, int64_t k, float* c, int64_t n, int reps, double* seconds);

struct StreamKernels {
  void (*run[8])(float* const* arrays, int64_t begin, int64_t end, float s, double* sink);
  void (*rows)(const float* a, int64_t k, float* c, int64_t n, int64_t begin, int64_t end);  // rows [begin, end)
};

}  // namespace cnnkit::bench
