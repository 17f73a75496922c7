// Per-thread scratch buffers for the conv kernels: grow-only, 64-byte aligned, kept for the life of
// the thread (OpenMP workers persist), so a training loop that calls a kernel every step does not
// allocate after the first call.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cnnkit/common.h"

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {

// Slot s of the calling thread, at least `count` elements of T; contents are unspecified.
template <typename T>
T* scratch(int slot, size_t count) {
  struct Buf {
    void* p = nullptr;
    size_t bytes = 0;
    ~Buf() { std::free(p); }
  };
  static thread_local Buf bufs[16];
  Buf& b = bufs[slot];
  const size_t need = (count * sizeof(T) + 63) / 64 * 64;
  if (need > b.bytes) {
    std::free(b.p);
    b.p = nullptr;
    b.bytes = 0;
    // From 1 MiB on (whole-tensor slots: a strided residual, a dy not kept), whole 2 MiB pages
    // advised for transparent huge pages, as cnnkit._memory does for the layers' buffers: fewer
    // TLB entries and page boundaries for the streams through them.
    const size_t huge = size_t{2} << 20;
    const bool big = need >= (size_t{1} << 20);
    const size_t bytes = big ? (need + huge - 1) / huge * huge : (need < 64 ? 64 : need);
    void* p = std::aligned_alloc(big ? huge : 64, bytes);
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (big) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: a refusal leaves 4 KiB pages
#endif
    b.p = p;
    b.bytes = bytes;
  }
  return static_cast<T*>(b.p);
}

// Slots. The calling thread's: kAdjointSlot (the transposed weights of an input gradient computed
// as a forward pass), kWeightSlot (a kernel's own weight layout), kXSlot/kYSlot (layout
// transposes), kPartSlot. Each worker's: kColSlot, kAccSlot, kPlaneSlot.
constexpr int kAdjointSlot = 0;
constexpr int kWeightSlot = 1;
constexpr int kColSlot = 2;
constexpr int kAccSlot = 3;
constexpr int kPlaneSlot = 4;
constexpr int kXSlot = 5;
constexpr int kYSlot = 6;
constexpr int kPartSlot = 7;  // calling thread: partial sums of a weight gradient
constexpr int kXbSlot = 8;    // worker: a pixel-major block of an NCHW input
constexpr int kYbSlot = 9;    // worker: the same for an output or gradient
constexpr int kPackASlot = 10;  // worker: the packed A block of cnnkit's own GEMM (sgemm.cpp)
constexpr int kPackBSlot = 11;  // worker: its packed B block
constexpr int kBatchSlot = 12;  // calling thread: the im2col block the threads share (small planes)
constexpr int kResSlot = 13;    // calling thread: a fused input gradient's strided residual laid out whole
constexpr int kDySlot = 14;     // calling thread: a fused input gradient's dy where grad_out is not kept
constexpr int kTnKeepSlot = 15; // worker: sgemm_tn's register blocks between the sub-blocks of a KC block

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The stride, in doubles, of per-unit rows of n double sums that each start on their own cache
// line (from a 64-byte aligned base): units run on different threads and add into their rows as
// they go, so rows that shared a line at their ends made the threads trade it (false sharing).
// Used by GradParts (conv_internal.h), UnitStats (unit_stats.h) and StatParts (conv_gemm.cpp).
inline int64_t line_rows(int64_t n) { return ceil_div(n, 8) * 8; }

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
