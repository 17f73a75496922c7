// Interface between the CUDA kernels (fused_optim.cu) and their plain C++ launcher (launch.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cnnkit/optim.h"

namespace cnnkit::cuda {

// One block's work: elements [begin, begin + len) of tensor `tensor`.
struct Chunk {
  int64_t begin;
  int32_t tensor;
  int32_t len;
};
constexpr int32_t kChunk = 4096;  // 16 elements per thread: enough blocks to fill the GPU
constexpr int kThreads = 256;

// Queues the fused update on `stream` (device pointers throughout). Block b updates chunk b of the
// concatenated list; first_chunk[i] is tensor i's first chunk (count + 1 entries).
// All tensors of one launch share `dtype`.
cudaError_t launch_multi_tensor(optim::Algo algo, DType dtype, const optim::TensorRef* refs,
                                const int64_t* first_chunk, int64_t count, int64_t nchunks,
                                const double* hyper, cudaStream_t stream);

}  // namespace cnnkit::cuda
