// Applying the per-element updates of optim_math.h to a slice of one tensor: per-tensor scalars
// from the group's hyperparameter row, a loop specialised on the flags, and the element math.
// Shared by the CPU kernels (Loop = SerialLoop; cpp/src/optim/optim_update.cpp compiles it once
// per ISA and the compiler vectorises the loops) and the CUDA kernels (Loop = BlockLoop, in
// cuda/fused_optim.cu: thread k of a block takes elements k, k + blockDim.x, ...).
#pragma once

#include <cstdint>
#include <type_traits>

#include "cnnkit/optim.h"
#include "cnnkit/optim_math.h"

namespace cnnkit::optim::apply {
inline namespace CNNKIT_KERNEL_NS {  // one copy per ISA level (see common.h)

using namespace cnnkit::optim::math;

// Which copy this is; the tests check that each ISA table reaches its own copy.
inline const char* compiled_for() { return CNNKIT_STR(CNNKIT_KERNEL_NS); }

struct SerialLoop {
  static CNNKIT_HD int64_t first() { return 0; }
  static CNNKIT_HD int64_t stride() { return 1; }
};
#if defined(__CUDACC__)
struct BlockLoop {
  static __device__ __forceinline__ int64_t first() { return threadIdx.x; }
  static __device__ __forceinline__ int64_t stride() { return blockDim.x; }
};
#endif

#if defined(__CUDA_ARCH__)
#define CNNKIT_UNROLL _Pragma("unroll 4")
#else
#define CNNKIT_UNROLL
#endif
// The pointers are restrict-qualified so the compiler may vectorise (CPU) or batch the loads of
// several unrolled iterations ahead of the stores (GPU).
#define CNNKIT_LOOP(i) CNNKIT_UNROLL for (int64_t i = L::first(); i < n; i += L::stride())

template <typename F>
CNNKIT_HD void with_bool(bool b, F&& f) {
  if (b)
    f(std::true_type{});
  else
    f(std::false_type{});
}

template <typename T>
CNNKIT_HD T* at(void* ptr, int64_t off) { return ptr ? static_cast<T*>(ptr) + off : nullptr; }
template <typename T>
CNNKIT_HD const T* at(const void* ptr, int64_t off) { return static_cast<const T*>(ptr) + off; }

// ---- element loops ------------------------------------------------------------------------

template <class L, typename T, bool WD, bool MOM, bool FIRST, bool NEST>
CNNKIT_HD void sgd_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf, int64_t n,
                        const SgdScalars<T> s) {
  CNNKIT_LOOP(i) {
    T pi = p[i], bi = (MOM && !FIRST) ? buf[i] : T(0);
    sgd_update<T, WD, MOM, FIRST, NEST>(pi, g[i], bi, s);
    p[i] = pi;
    if (MOM) buf[i] = bi;
  }
}

template <class L, typename T, bool WD>
CNNKIT_HD void adagrad_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ sum, int64_t n,
                            const AdagradScalars<T> s) {
  CNNKIT_LOOP(i) {
    T pi = p[i], si = sum[i];
    adagrad_update<T, WD>(pi, g[i], si, s);
    p[i] = pi;
    sum[i] = si;
  }
}

template <class L, typename T, bool WD, bool CEN, bool MOM>
CNNKIT_HD void rmsprop_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ sq,
                            T* __restrict__ ga, T* __restrict__ buf, int64_t n, const RmspropScalars<T> s) {
  CNNKIT_LOOP(i) {
    T pi = p[i], si = sq[i], ai = CEN ? ga[i] : T(0), bi = MOM ? buf[i] : T(0);
    rmsprop_update<T, WD, CEN, MOM>(pi, g[i], si, ai, bi, s);
    p[i] = pi;
    sq[i] = si;
    if (CEN) ga[i] = ai;
    if (MOM) buf[i] = bi;
  }
}

template <class L, typename T, bool WD>
CNNKIT_HD void adadelta_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ sq,
                             T* __restrict__ acc, int64_t n, const AdadeltaScalars<T> s) {
  CNNKIT_LOOP(i) {
    T pi = p[i], si = sq[i], ui = acc[i];
    adadelta_update<T, WD>(pi, g[i], si, ui, s);
    p[i] = pi;
    sq[i] = si;
    acc[i] = ui;
  }
}

template <class L, typename T, bool L2, bool DEC, bool AMS>
CNNKIT_HD void adam_loop(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                         T* __restrict__ v, T* __restrict__ vmax, int64_t n, const AdamScalars<T> s) {
  CNNKIT_LOOP(i) {
    T pi = p[i], mi = m[i], vi = v[i], xi = AMS ? vmax[i] : T(0);
    adam_update<T, L2, DEC, AMS>(pi, g[i], mi, vi, xi, s);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (AMS) vmax[i] = xi;
  }
}

#undef CNNKIT_LOOP

// ---- scalars from the hyperparameter row, flag dispatch ------------------------------------
// Each updates elements [b, b + n) of tensor t with its group's row h.

template <class L, typename T>
CNNKIT_HD void sgd(const TensorRef& t, int64_t b, int64_t n, const double* h) {
  using namespace col;
  const double mom = h[SGD_MOMENTUM];
  const SgdScalars<T> s{T(h[SGD_LR]), T(h[SGD_MAXIMIZE] != 0 ? -1 : 1), T(h[SGD_WD]), T(mom),
                        T(1.0 - h[SGD_DAMPENING])};
  with_bool(h[SGD_WD] != 0, [&](auto WD) {
    with_bool(mom != 0, [&](auto MOM) {
      with_bool(t.step == 1, [&](auto FIRST) {
        with_bool(h[SGD_NESTEROV] != 0, [&](auto NEST) {
          sgd_loop<L, T, WD(), MOM(), FIRST(), NEST()>(at<T>(t.p, b), at<T>(t.g, b), at<T>(t.s[0], b),
                                                       n, s);
        });
      });
    });
  });
}

template <class L, typename T>
CNNKIT_HD void adagrad(const TensorRef& t, int64_t b, int64_t n, const double* h) {
  using namespace col;
  const double clr = h[ADAGRAD_LR] / (1.0 + double(t.step - 1) * h[ADAGRAD_LR_DECAY]);
  const AdagradScalars<T> s{T(clr), T(h[ADAGRAD_MAXIMIZE] != 0 ? -1 : 1), T(h[ADAGRAD_WD]),
                            T(h[ADAGRAD_EPS])};
  with_bool(h[ADAGRAD_WD] != 0, [&](auto WD) {
    adagrad_loop<L, T, WD()>(at<T>(t.p, b), at<T>(t.g, b), at<T>(t.s[0], b), n, s);
  });
}

template <class L, typename T>
CNNKIT_HD void rmsprop(const TensorRef& t, int64_t b, int64_t n, const double* h) {
  using namespace col;
  const double alpha = h[RMSPROP_ALPHA];
  const RmspropScalars<T> s{T(h[RMSPROP_LR]), T(h[RMSPROP_MAXIMIZE] != 0 ? -1 : 1),
                            T(h[RMSPROP_WD]), T(alpha), T(1.0 - alpha), T(h[RMSPROP_EPS]),
                            T(h[RMSPROP_MOMENTUM])};
  with_bool(h[RMSPROP_WD] != 0, [&](auto WD) {
    with_bool(h[RMSPROP_CENTERED] != 0, [&](auto CEN) {
      with_bool(h[RMSPROP_MOMENTUM] > 0, [&](auto MOM) {
        rmsprop_loop<L, T, WD(), CEN(), MOM()>(at<T>(t.p, b), at<T>(t.g, b), at<T>(t.s[0], b),
                                               at<T>(t.s[1], b), at<T>(t.s[2], b), n, s);
      });
    });
  });
}

template <class L, typename T>
CNNKIT_HD void adadelta(const TensorRef& t, int64_t b, int64_t n, const double* h) {
  using namespace col;
  const double rho = h[ADADELTA_RHO];
  const AdadeltaScalars<T> s{T(h[ADADELTA_LR]), T(h[ADADELTA_MAXIMIZE] != 0 ? -1 : 1),
                             T(h[ADADELTA_WD]), T(rho), T(1.0 - rho), T(h[ADADELTA_EPS])};
  with_bool(h[ADADELTA_WD] != 0, [&](auto WD) {
    adadelta_loop<L, T, WD()>(at<T>(t.p, b), at<T>(t.g, b), at<T>(t.s[0], b), at<T>(t.s[1], b), n, s);
  });
}

template <class L, typename T>
CNNKIT_HD void adam(const TensorRef& t, int64_t b, int64_t n, const double* h) {
  using namespace col;
  const double lr = h[ADAM_LR], b1 = h[ADAM_BETA1], b2 = h[ADAM_BETA2], wd = h[ADAM_WD];
  const bool decoupled = h[ADAM_DECOUPLED] != 0;
  // t.bc1/t.bc2 come from fill_bias_corrections() on the host: the same bits on CPU and GPU
  const AdamScalars<T> s{T(h[ADAM_MAXIMIZE] != 0 ? -1 : 1), T(wd), T(1.0 - lr * wd), T(b1),
                         T(1.0 - b1), T(b2), T(1.0 - b2), T(lr / t.bc1), T(sqrt(t.bc2)),
                         T(h[ADAM_EPS])};
  with_bool(!decoupled && wd != 0, [&](auto L2) {
    with_bool(decoupled && wd != 0, [&](auto DEC) {
      with_bool(h[ADAM_AMSGRAD] != 0, [&](auto AMS) {
        if constexpr (!(std::decay_t<decltype(L2)>::value && std::decay_t<decltype(DEC)>::value)) {
          adam_loop<L, T, L2(), DEC(), AMS()>(at<T>(t.p, b), at<T>(t.g, b), at<T>(t.s[0], b),
                                              at<T>(t.s[1], b), at<T>(t.s[2], b), n, s);
        }
      });
    });
  });
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::optim::apply
