// Fused multi-tensor optimizer updates on the GPU: one launch for a whole list of tensors.
// Each block takes one chunk of kChunk elements of one tensor (found from per-tensor chunk offsets);
// the scalars, loops and per-element math are cnnkit/optim_apply.h, the same code the CPU kernels
// vectorise, so the CPU tests cover it. Compiled with -fmad=false so results match the CPU path bit for bit.
#include <cmath>
#include <type_traits>

#include "cnnkit/optim_apply.h"
#include "fused_optim.cuh"

namespace cnnkit::cuda {
namespace {

using namespace cnnkit::optim;

template <Algo A, typename T>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_kernel(const TensorRef* refs, const int64_t* first_chunk, int64_t count,
                        int64_t chunk0, const double* hyper) {
  // Block -> (tensor, chunk): binary search of the per-tensor chunk offsets.
  const int64_t blk = first_chunk[0] + chunk0 + blockIdx.x;  // chunk numbers are list-global
  int64_t lo = 0, hi = count;  // first_chunk[lo] <= blk < first_chunk[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (first_chunk[mid] <= blk) lo = mid; else hi = mid;
  }
  const TensorRef t = refs[lo];
  const int64_t begin = (blk - first_chunk[lo]) * kChunk;
  const Chunk c{begin, static_cast<int32_t>(lo),
                static_cast<int32_t>(t.n - begin < kChunk ? t.n - begin : kChunk)};
  const double* h = hyper + int64_t(t.group) * (A == Algo::sgd        ? col::SGD_K
                                                : A == Algo::adagrad  ? col::ADAGRAD_K
                                                : A == Algo::rmsprop  ? col::RMSPROP_K
                                                : A == Algo::adadelta ? col::ADADELTA_K
                                                                      : col::ADAM_K);
  using apply::BlockLoop;
  if constexpr (A == Algo::sgd) apply::sgd<BlockLoop, T>(t, c.begin, c.len, h);
  if constexpr (A == Algo::adagrad) apply::adagrad<BlockLoop, T>(t, c.begin, c.len, h);
  if constexpr (A == Algo::rmsprop) apply::rmsprop<BlockLoop, T>(t, c.begin, c.len, h);
  if constexpr (A == Algo::adadelta) apply::adadelta<BlockLoop, T>(t, c.begin, c.len, h);
  if constexpr (A == Algo::adam) apply::adam<BlockLoop, T>(t, c.begin, c.len, h);
}

}  // namespace

cudaError_t launch_multi_tensor(Algo algo, DType dtype, const TensorRef* refs,
                                const int64_t* first_chunk, int64_t count, int64_t nchunks,
                                const double* hyper, cudaStream_t stream) {
  constexpr int64_t kMaxGrid = 2147483647;
  for (int64_t off = 0; off < nchunks; off += kMaxGrid) {
    const unsigned grid = static_cast<unsigned>(nchunks - off < kMaxGrid ? nchunks - off : kMaxGrid);
#define CNNKIT_LAUNCH(A)                                                                        \
  (dtype == DType::f32                                                                            \
       ? multi_tensor_kernel<A, float><<<grid, kThreads, 0, stream>>>(refs, first_chunk, count, off, hyper) \
       : multi_tensor_kernel<A, double><<<grid, kThreads, 0, stream>>>(refs, first_chunk, count, off, hyper))
    switch (algo) {
      case Algo::sgd: CNNKIT_LAUNCH(Algo::sgd); break;
      case Algo::adagrad: CNNKIT_LAUNCH(Algo::adagrad); break;
      case Algo::rmsprop: CNNKIT_LAUNCH(Algo::rmsprop); break;
      case Algo::adadelta: CNNKIT_LAUNCH(Algo::adadelta); break;
      case Algo::adam: CNNKIT_LAUNCH(Algo::adam); break;
    }
#undef CNNKIT_LAUNCH
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace cnnkit::cuda
