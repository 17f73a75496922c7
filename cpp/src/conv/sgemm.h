// cnnkit's own float32 GEMM (sgemm.cpp): packed panels, a register-blocked microkernel per ISA
// level, cache blocking. Compiled once per ISA level like the conv kernels (namespace
// cnnkit::conv::<isa>); the conv GEMM path (conv_gemm.cpp) calls it inside its own parallel loops.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cnnkit/common.h"

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {

// A strided matrix operand: element (r, c) at p[r * rs + c * cs].
struct Operand {
  const float* p;
  int64_t rs, cs;
};

// A per-reduction-index transform applied while an operand is packed (the fused batch-norm
// prologue): v -> scale[k] * v + shift[k], then max(v, 0) when relu. scale and shift are both set
// or both null.
struct Prologue {
  const float* scale;
  const float* shift;
  bool relu;
};

// The microkernel of this ISA level: MR x NR register block, KC x NC x MC cache blocks.
struct SgemmShape {
  int mr, nr, kc, mc, nc;
};
SgemmShape sgemm_shape();

// C (M x N, row stride ldc, unit column stride) = [C +] A (M x K) . B (K x N), single-threaded.
// Every element of C is one sum over k in increasing order, in blocks of KC (each block a plain
// FMA chain added to the running value), so its bits depend on K and the ISA level only, never on
// where the element lies or how callers cut M and N. pa transforms A's columns, pb B's rows.
void sgemm(int64_t M, int64_t N, int64_t K, Operand A, Operand B, float* C, int64_t ldc, bool accumulate,
           const Prologue* pa = nullptr, const Prologue* pb = nullptr);

// The same over C cut into fixed tiles run on cnnkit's OpenMP threads, or, for a tall A read in
// place, over units of rows against B packed once (sgemm_rows()); bits as sgemm() either way.
void sgemm_parallel(int64_t M, int64_t N, int64_t K, Operand A, Operand B, float* C, int64_t ldc, bool accumulate);

// The A operand of a convolution's NHWC forward pass read in place (an implicit im2col, the
// "indirect GEMM" of XNNPACK): row r of A (r counts output pixels over the batch, image-major)
// is the patch of that pixel, kh*kw runs of cg channels in (i, j, c) order, each run read from x
// where the tap lies inside the image and from `zeros` (cg zeros) in the padding.
// NCHW (sgemm_patches with nchw): ldp = 1, ldc = H*W, ldn = C*H*W.
struct Patches {
  const float* x;  // image 0, pixel (0, 0), the first channel of the group
  const float* zeros;
  int64_t H, W, ldp;  // input plane; ldp: floats from one pixel to the next (all channels)
  int64_t Ho, Wo, kh, kw, sh, sw, dh, dw, pt, pl, cg;
  int64_t ldn = 0;  // floats from one image to the next (0: H*W*ldp)
  int64_t ldc = 1;  // floats from one channel to the next (NCHW only; NHWC reads runs of channels)
};

// Floats of the packed B that sgemm_patches() reads (B: K x N, K = kh*kw*cg); its panels' width
// depends on N and the layout (nchw as sgemm_patches() will be called).
int64_t sgemm_patches_b_size(int64_t K, int64_t N, bool nchw = false);
void sgemm_patches_pack_b(int64_t K, int64_t N, Operand B, float* dst, bool nchw = false);
// C (M x N, row stride ldc) = A . B, A the rows [r0, r0+M) of the patches of a, B packed by
// sgemm_patches_pack_b(). Bits: those of sgemm() on the im2col matrix (same KC blocks, same
// chains), so this path and the im2col path agree exactly.
// nchw: x in NCHW (a.ldc, a.ldn set) and C column-major (C(i, j) at C[j*ldc + i]: an NCHW output
// plane of pixels i, channels j).
void sgemm_patches(const Patches& a, int64_t r0, int64_t M, int64_t N, const float* bp, float* C, int64_t ldc,
                   bool nchw = false);

// C (M x N) = [C +] A (M x K) . B (K x N), A(i, k) = column i of the patch of pixel r0 + k (the
// transposed im2col matrix of the NHWC weight gradient, M = kh*kw*cg), packed straight from x:
// the bits of sgemm() on that matrix.
void sgemm_patches_t(int64_t M, int64_t N, int64_t K, const Patches& a, int64_t r0, Operand B, float* C, int64_t ldc,
                     bool accumulate);

// NHWC 1x1 convolutions: operands read in place (no packing of A), B resident, register blocks
// sized by N (up to 4 vectors wide). Bits: those of sgemm() on the same operands (one FMA chain
// per element and KC block of the reduction, started at zero, then added to C).
// B (K x N) packed once for sgemm_rows(): sgemm_rows_b_size(K, N) floats.
int64_t sgemm_rows_b_size(int64_t K, int64_t N);
void sgemm_rows_pack_b(int64_t K, int64_t N, Operand B, float* dst);
// The epilogue sgemm_rows() applies to each register block of C while it is still in registers
// (after the reduction's last KC block): C[i, j] = max(C[i, j] + bias[j] + res[i, j], 0), each
// part optional, added in that order (one rounding each, as a pass over C would).
struct RowsEpilogue {
  const float* bias = nullptr;  // N values
  const float* res = nullptr;   // M x N, row stride ldres
  int64_t ldres = 0;
  bool relu = false;
};

// Memory a caller will read after sgemm_rows(), brought into L2 while its kernels run: up to
// two cache lines a reduction step of the first panel's kernel calls, the regions from the last
// one added. Each region's pointer and count advance as its lines are requested (what is left
// when the product ends is not requested). Only a hint: nothing is read into any result. (The
// dense weight gradient and the grouped forward's rows take shares of regions the same way.)
struct RowsPrefetch {
  static constexpr int kMax = 6;
  const char* p[kMax] = {};
  int64_t lines[kMax] = {};
  int n = 0;
  int64_t budget = -1;  // lines that may still be requested (-1: no limit)
  int64_t share = -1;   // lines one take() gives at most (-1: no limit)
  int64_t lines_left() const {  // lines not yet requested, over all regions
    int64_t t = 0;
    for (int i = 0; i < n; ++i) t += lines[i];
    return t;
  }
  // Lines not yet requested within the budget, split evenly over `takes` take() calls (rounded
  // up): a share that spreads them over all the calls instead of the first ones.
  int64_t even_share(int64_t takes) const {
    const int64_t l = budget >= 0 ? std::min(budget, lines_left()) : lines_left();
    return (l + std::max<int64_t>(1, takes) - 1) / std::max<int64_t>(1, takes);
  }
  void add(const float* base, int64_t count) { add_bytes(base, count * int64_t(sizeof(float))); }
  void add_bytes(const void* base, int64_t bytes) {
    if (!base || bytes <= 0 || n == kMax) return;
    p[n] = static_cast<const char*>(base);
    lines[n++] = (bytes + 63) / 64;
  }
  // The next lines to request, at most max (and the share) of the last region with lines left,
  // within the budget: their start, and their count in *got (0 and nullptr when none are left).
  const char* take(int64_t max, int64_t* got) {
    *got = 0;
    while (n > 0 && lines[n - 1] == 0) --n;
    if (n == 0 || budget == 0) return nullptr;
    int64_t l = std::min(max, lines[n - 1]);
    if (share >= 0) l = std::min(l, share);
    if (budget > 0) {
      l = std::min(l, budget);
      budget -= l;
    }
    const char* start = p[n - 1];
    p[n - 1] += 64 * l;
    lines[n - 1] -= l;
    *got = l;
    return start;
  }
};

// C (M x N, row stride ldc) = pa(A) . B, A (M x K) row-major with row stride lda (read in place;
// with a prologue, R rows at a time through it into an L1 block), B packed by sgemm_rows_pack_b();
// then the epilogue ep on each register block as it is stored. pre: memory to prefetch meanwhile.
void sgemm_rows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* bp, float* C, int64_t ldc,
                const Prologue* pa = nullptr, const RowsEpilogue* ep = nullptr, RowsPrefetch* pre = nullptr);
// C (M x N) (+)= P^T . pq(Q): P (K x M) and Q (K x N) row-major with row strides lp, lq, both read
// in place (the weight gradient dW = dY^T . x of an NHWC 1x1 convolution: K pixels). pq: a
// per-column prologue on Q (each column j through scale[j], shift[j], ReLU), applied while a KC
// block of Q is laid out in panels. The bits of sgemm() with A = P^T, B = pq(Q).
// pre: memory to prefetch meanwhile, as sgemm_rows() takes it (into L2, from the first panel's
// kernel calls).
void sgemm_tn(int64_t M, int64_t N, int64_t K, const float* P, int64_t lp, const float* Q, int64_t lq, float* C,
              int64_t ldc, bool accumulate, const Prologue* pq = nullptr, RowsPrefetch* pre = nullptr);
// The elements sgemm_tn() computes for an M x N result (its register blocks, padded): a caller
// that may compute C or C^T takes the orientation with fewer.
int64_t sgemm_tn_padded(int64_t M, int64_t N);
// How many of their kernel calls take lines of a RowsPrefetch: sgemm_rows() for an M x N result
// over a reduction of K, sgemm_tn() likewise (pq: its prologue on Q). A caller that spreads
// its lines over the calls sets RowsPrefetch::share from it.
int64_t sgemm_rows_takes(int64_t M, int64_t N, int64_t K);
int64_t sgemm_tn_takes(int64_t M, int64_t N, int64_t K, const Prologue* pq = nullptr);

// The two as conv::Kernels members (plain arguments).
void sgemm_shape_of(int* mr, int* nr, int* kc, int* mc, int* nc);
void sgemm_strided(int64_t M, int64_t N, int64_t K, const float* a, int64_t ars, int64_t acs, const float* b,
                   int64_t brs, int64_t bcs, float* c, int64_t ldc, bool accumulate);

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
