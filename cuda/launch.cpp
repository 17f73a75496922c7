// Plain C++ launcher for the CUDA optimizer kernels: builds per-tensor chunk offsets, copies them
// with the tensor table and hyperparameters to the device (one reusable buffer) and launches once
// on the legacy default stream (asynchronous, like any CUDA op). Pointers in the tensor table are device pointers supplied by the caller.
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cnnkit/optim.h"
#include "fused_optim.cuh"

namespace cnnkit::cuda {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

struct Scratch {
  std::mutex mu;
  void* dev = nullptr;
  size_t bytes = 0;
  int device = -1;
};
Scratch g_scratch;

size_t align_up(size_t n) { return (n + 255) & ~size_t(255); }

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

void multi_tensor_step(optim::Algo algo, const optim::TensorRef* refs_in, int64_t count, const double* hyper,
                       int64_t ngroups) {
  // float32 tensors first, then float64: one launch per dtype present.
  std::vector<optim::TensorRef> refs;
  refs.reserve(static_cast<size_t>(count));
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t i = 0; i < count; ++i)
      if (static_cast<int>(refs_in[i].dtype) == pass && refs_in[i].n > 0) refs.push_back(refs_in[i]);
  const int64_t n = static_cast<int64_t>(refs.size());
  if (n == 0) return;
  // Adam's bias corrections, on the host with the CPU path's libm pow (the same bits).
  for (optim::TensorRef& r : refs)
    optim::fill_bias_corrections(algo, r, hyper + int64_t(r.group) * optim::hyper_columns(algo));
  std::vector<int64_t> first_chunk(static_cast<size_t>(n) + 1, 0);
  for (int64_t i = 0; i < n; ++i) first_chunk[i + 1] = first_chunk[i] + (refs[i].n + kChunk - 1) / kChunk;
  int64_t n32 = 0;
  while (n32 < n && refs[n32].dtype == DType::f32) ++n32;

  const size_t refs_bytes = align_up(sizeof(optim::TensorRef) * n);
  const size_t chunk_bytes = align_up(sizeof(int64_t) * (n + 1));
  const size_t hyper_bytes = align_up(sizeof(double) * ngroups * optim::hyper_columns(algo));
  const size_t total = refs_bytes + chunk_bytes + hyper_bytes;

  std::lock_guard<std::mutex> lock(g_scratch.mu);
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaStream_t stream = 0;  // the legacy default stream orders with other blocking streams
  if (g_scratch.bytes < total || g_scratch.device != dev) {
    if (g_scratch.dev) {
      check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      cudaFree(g_scratch.dev);
    }
    g_scratch.dev = nullptr;
    g_scratch.bytes = 0;
    check(cudaMalloc(&g_scratch.dev, total), "cudaMalloc");
    g_scratch.bytes = total;
    g_scratch.device = dev;
  }
  char* base = static_cast<char*>(g_scratch.dev);
  std::vector<char> host(total);
  std::copy_n(reinterpret_cast<const char*>(refs.data()), sizeof(optim::TensorRef) * n, host.data());
  std::copy_n(reinterpret_cast<const char*>(first_chunk.data()), sizeof(int64_t) * (n + 1),
              host.data() + refs_bytes);
  std::copy_n(reinterpret_cast<const char*>(hyper), sizeof(double) * ngroups * optim::hyper_columns(algo),
              host.data() + refs_bytes + chunk_bytes);
  // From pageable memory this copy has left `host` by the time it returns; the launches that read
  // the scratch buffer are ordered after it on the same stream, and so is the next call's copy.
  check(cudaMemcpyAsync(base, host.data(), total, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
  const auto* d_refs = reinterpret_cast<const optim::TensorRef*>(base);
  const auto* d_first = reinterpret_cast<const int64_t*>(base + refs_bytes);
  const auto* d_hyper = reinterpret_cast<const double*>(base + refs_bytes + chunk_bytes);
  if (n32 > 0)
    check(launch_multi_tensor(algo, DType::f32, d_refs, d_first, n32, first_chunk[n32], d_hyper, stream),
          "kernel launch (float32)");
  if (n32 < n)
    // the float64 launch sees the tail of the tables; chunk numbers stay global
    check(launch_multi_tensor(algo, DType::f64, d_refs + n32, d_first + n32, n - n32,
                              first_chunk[n] - first_chunk[n32], d_hyper, stream),
          "kernel launch (float64)");
}

}  // namespace cnnkit::cuda
