// Fused multi-tensor optimizer updates on the GPU: one launch for a whole list of tensors.
// Each block takes one chunk of kChunk elements of one tensor (found from per-tensor chunk offsets);
// the per-element math is cnnkit/optim_math.h, the same code the CPU kernels vectorise, so the
// CPU tests cover it. Compiled with -fmad=false so results match the CPU path bit for bit.
#include <cmath>
#include <type_traits>

#include "cnnkit/optim_math.h"
#include "fused_optim.cuh"

namespace cnnkit::cuda {
namespace {

using namespace cnnkit::optim;
using namespace cnnkit::optim::math;

template <typename F>
__device__ __forceinline__ void with_bool(bool b, F&& f) {
  if (b)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// Element loops over one chunk: thread k takes elements k, k + blockDim.x, ... The pointers are
// __restrict__ so the compiler may batch the loads of several unrolled iterations (more bytes in
// flight per thread) ahead of the stores.
#define CNNKIT_CHUNK_LOOP(i) \
  _Pragma("unroll 4") for (int64_t i = threadIdx.x; i < len; i += blockDim.x)

template <typename T, bool WD, bool MOM, bool FIRST, bool NEST>
__device__ void sgd_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf, int len,
                         const SgdScalars<T> s) {
  CNNKIT_CHUNK_LOOP(i) {
    T pi = p[i], bi = (MOM && !FIRST) ? buf[i] : T(0);
    sgd_update<T, WD, MOM, FIRST, NEST>(pi, g[i], bi, s);
    p[i] = pi;
    if (MOM) buf[i] = bi;
  }
}

template <typename T, bool WD>
__device__ void adagrad_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ sum, int len,
                             const AdagradScalars<T> s) {
  CNNKIT_CHUNK_LOOP(i) {
    T pi = p[i], si = sum[i];
    adagrad_update<T, WD>(pi, g[i], si, s);
    p[i] = pi;
    sum[i] = si;
  }
}

template <typename T, bool WD, bool CEN, bool MOM>
__device__ void rmsprop_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ sq,
                             T* __restrict__ ga, T* __restrict__ buf, int len, const RmspropScalars<T> s) {
  CNNKIT_CHUNK_LOOP(i) {
    T pi = p[i], si = sq[i], ai = CEN ? ga[i] : T(0), bi = MOM ? buf[i] : T(0);
    rmsprop_update<T, WD, CEN, MOM>(pi, g[i], si, ai, bi, s);
    p[i] = pi;
    sq[i] = si;
    if (CEN) ga[i] = ai;
    if (MOM) buf[i] = bi;
  }
}

template <typename T, bool WD>
__device__ void adadelta_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ sq,
                              T* __restrict__ acc, int len, const AdadeltaScalars<T> s) {
  CNNKIT_CHUNK_LOOP(i) {
    T pi = p[i], si = sq[i], ui = acc[i];
    adadelta_update<T, WD>(pi, g[i], si, ui, s);
    p[i] = pi;
    sq[i] = si;
    acc[i] = ui;
  }
}

template <typename T, bool L2, bool DEC, bool AMS>
__device__ void adam_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                          T* __restrict__ v, T* __restrict__ vmax, int len, const AdamScalars<T> s) {
  CNNKIT_CHUNK_LOOP(i) {
    T pi = p[i], mi = m[i], vi = v[i], xi = AMS ? vmax[i] : T(0);
    adam_update<T, L2, DEC, AMS>(pi, g[i], mi, vi, xi, s);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (AMS) vmax[i] = xi;
  }
}

template <typename T>
__device__ T* at(void* ptr, int64_t off) { return ptr ? static_cast<T*>(ptr) + off : nullptr; }
template <typename T>
__device__ const T* at(const void* ptr, int64_t off) { return static_cast<const T*>(ptr) + off; }

template <typename T>
__device__ void sgd_chunk(const TensorRef& t, const Chunk& c, const double* h) {
  using namespace col;
  const double mom = h[SGD_MOMENTUM];
  const SgdScalars<T> s{T(h[SGD_LR]), T(h[SGD_MAXIMIZE] != 0 ? -1 : 1), T(h[SGD_WD]), T(mom),
                        T(1.0 - h[SGD_DAMPENING])};
  with_bool(h[SGD_WD] != 0, [&](auto WD) {
    with_bool(mom != 0, [&](auto MOM) {
      with_bool(t.step == 1, [&](auto FIRST) {
        with_bool(h[SGD_NESTEROV] != 0, [&](auto NEST) {
          sgd_loop<T, WD(), MOM(), FIRST(), NEST()>(at<T>(t.p, c.begin), at<T>(t.g, c.begin),
                                                    at<T>(t.s[0], c.begin), c.len, s);
        });
      });
    });
  });
}

template <typename T>
__device__ void adagrad_chunk(const TensorRef& t, const Chunk& c, const double* h) {
  using namespace col;
  const double clr = h[ADAGRAD_LR] / (1.0 + double(t.step - 1) * h[ADAGRAD_LR_DECAY]);
  const AdagradScalars<T> s{T(clr), T(h[ADAGRAD_MAXIMIZE] != 0 ? -1 : 1), T(h[ADAGRAD_WD]),
                            T(h[ADAGRAD_EPS])};
  with_bool(h[ADAGRAD_WD] != 0, [&](auto WD) {
    adagrad_loop<T, WD()>(at<T>(t.p, c.begin), at<T>(t.g, c.begin), at<T>(t.s[0], c.begin), c.len, s);
  });
}

template <typename T>
__device__ void rmsprop_chunk(const TensorRef& t, const Chunk& c, const double* h) {
  using namespace col;
  const double alpha = h[RMSPROP_ALPHA];
  const RmspropScalars<T> s{T(h[RMSPROP_LR]), T(h[RMSPROP_MAXIMIZE] != 0 ? -1 : 1),
                            T(h[RMSPROP_WD]), T(alpha), T(1.0 - alpha), T(h[RMSPROP_EPS]),
                            T(h[RMSPROP_MOMENTUM])};
  with_bool(h[RMSPROP_WD] != 0, [&](auto WD) {
    with_bool(h[RMSPROP_CENTERED] != 0, [&](auto CEN) {
      with_bool(h[RMSPROP_MOMENTUM] > 0, [&](auto MOM) {
        rmsprop_loop<T, WD(), CEN(), MOM()>(at<T>(t.p, c.begin), at<T>(t.g, c.begin),
                                            at<T>(t.s[0], c.begin), at<T>(t.s[1], c.begin),
                                            at<T>(t.s[2], c.begin), c.len, s);
      });
    });
  });
}

template <typename T>
__device__ void adadelta_chunk(const TensorRef& t, const Chunk& c, const double* h) {
  using namespace col;
  const double rho = h[ADADELTA_RHO];
  const AdadeltaScalars<T> s{T(h[ADADELTA_LR]), T(h[ADADELTA_MAXIMIZE] != 0 ? -1 : 1),
                             T(h[ADADELTA_WD]), T(rho), T(1.0 - rho), T(h[ADADELTA_EPS])};
  with_bool(h[ADADELTA_WD] != 0, [&](auto WD) {
    adadelta_loop<T, WD()>(at<T>(t.p, c.begin), at<T>(t.g, c.begin), at<T>(t.s[0], c.begin),
                           at<T>(t.s[1], c.begin), c.len, s);
  });
}

template <typename T>
__device__ void adam_chunk(const TensorRef& t, const Chunk& c, const double* h) {
  using namespace col;
  const double lr = h[ADAM_LR], b1 = h[ADAM_BETA1], b2 = h[ADAM_BETA2], wd = h[ADAM_WD];
  const double bc1 = t.bc1, bc2 = t.bc2;  // computed on the host: same bits as the CPU path
  const bool decoupled = h[ADAM_DECOUPLED] != 0;
  const AdamScalars<T> s{T(h[ADAM_MAXIMIZE] != 0 ? -1 : 1), T(wd), T(1.0 - lr * wd), T(b1),
                         T(1.0 - b1), T(b2), T(1.0 - b2), T(lr / bc1), T(sqrt(bc2)),
                         T(h[ADAM_EPS])};
  with_bool(!decoupled && wd != 0, [&](auto L2) {
    with_bool(decoupled && wd != 0, [&](auto DEC) {
      with_bool(h[ADAM_AMSGRAD] != 0, [&](auto AMS) {
        if constexpr (!(decltype(L2)::value && decltype(DEC)::value)) {
          adam_loop<T, L2(), DEC(), AMS()>(at<T>(t.p, c.begin), at<T>(t.g, c.begin),
                                           at<T>(t.s[0], c.begin), at<T>(t.s[1], c.begin),
                                           at<T>(t.s[2], c.begin), c.len, s);
        }
      });
    });
  });
}

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
  if constexpr (A == Algo::sgd) sgd_chunk<T>(t, c, h);
  if constexpr (A == Algo::adagrad) adagrad_chunk<T>(t, c, h);
  if constexpr (A == Algo::rmsprop) rmsprop_chunk<T>(t, c, h);
  if constexpr (A == Algo::adadelta) adadelta_chunk<T>(t, c, h);
  if constexpr (A == Algo::adam) adam_chunk<T>(t, c, h);
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
