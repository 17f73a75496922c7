// Per-ISA optimizer kernels: one contiguous slice [begin, begin+len) of one tensor per call.
// The element math is cnnkit/optim_math.h (shared with CUDA); this file turns the per-group
// hyperparameters into per-tensor scalars, picks the loop specialised on the flags, and lets the
// compiler vectorise it for the ISA this copy is built for (CNNKIT_ISA_NS). Built with
// -ffp-contract=off, so every ISA and every split of the work gives the same bits.
//
// Reductions (global norm, finiteness) accumulate in double over one fixed-size block; their
// order inside a block depends only on the vector width, never on the thread count.
#include <cmath>
#include <type_traits>

#include "cnnkit/optim.h"
#include "cnnkit/optim_math.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit {
namespace CNNKIT_ISA_NS {
namespace {

using namespace cnnkit::optim;
using namespace cnnkit::optim::math;

template <typename F>
inline void with_bool(bool b, F&& f) {
  if (b)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// ---- element loops ------------------------------------------------------------------------

template <typename T, bool WD, bool MOM, bool FIRST, bool NEST>
__attribute__((noinline)) void sgd_loop(T* __restrict p, const T* __restrict g, T* __restrict buf,
                                        int64_t n, const SgdScalars<T> s) {
  if (MOM) {
    for (int64_t i = 0; i < n; ++i) {
      T pi = p[i], bi = FIRST ? T(0) : buf[i];
      sgd_update<T, WD, MOM, FIRST, NEST>(pi, g[i], bi, s);
      p[i] = pi;
      buf[i] = bi;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      T pi = p[i], bi = T(0);
      sgd_update<T, WD, MOM, FIRST, NEST>(pi, g[i], bi, s);
      p[i] = pi;
    }
  }
}

template <typename T, bool WD>
__attribute__((noinline)) void adagrad_loop(T* __restrict p, const T* __restrict g,
                                            T* __restrict sum, int64_t n, const AdagradScalars<T> s) {
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i], si = sum[i];
    adagrad_update<T, WD>(pi, g[i], si, s);
    p[i] = pi;
    sum[i] = si;
  }
}

template <typename T, bool WD, bool CENTERED, bool MOM>
__attribute__((noinline)) void rmsprop_loop(T* __restrict p, const T* __restrict g,
                                            T* __restrict sq, T* __restrict ga, T* __restrict buf,
                                            int64_t n, const RmspropScalars<T> s) {
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i], si = sq[i];
    T ai = CENTERED ? ga[i] : T(0);
    T bi = MOM ? buf[i] : T(0);
    rmsprop_update<T, WD, CENTERED, MOM>(pi, g[i], si, ai, bi, s);
    p[i] = pi;
    sq[i] = si;
    if (CENTERED) ga[i] = ai;
    if (MOM) buf[i] = bi;
  }
}

template <typename T, bool WD>
__attribute__((noinline)) void adadelta_loop(T* __restrict p, const T* __restrict g,
                                             T* __restrict sq, T* __restrict acc, int64_t n,
                                             const AdadeltaScalars<T> s) {
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i], si = sq[i], ui = acc[i];
    adadelta_update<T, WD>(pi, g[i], si, ui, s);
    p[i] = pi;
    sq[i] = si;
    acc[i] = ui;
  }
}

template <typename T, bool L2, bool DEC, bool AMS>
__attribute__((noinline)) void adam_loop(T* __restrict p, const T* __restrict g, T* __restrict m,
                                         T* __restrict v, T* __restrict vmax, int64_t n,
                                         const AdamScalars<T> s) {
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i], mi = m[i], vi = v[i];
    T xi = AMS ? vmax[i] : T(0);
    adam_update<T, L2, DEC, AMS>(pi, g[i], mi, vi, xi, s);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (AMS) vmax[i] = xi;
  }
}

// ---- per-tensor scalars and flag dispatch ---------------------------------------------------

template <typename T>
inline T* at(void* ptr, int64_t off) { return static_cast<T*>(ptr) + off; }
template <typename T>
inline const T* at(const void* ptr, int64_t off) { return static_cast<const T*>(ptr) + off; }

template <typename T>
void sgd_t(const TensorRef& t, int64_t b, int64_t n, const double* h) {
  using namespace col;
  const double mom = h[SGD_MOMENTUM];
  SgdScalars<T> s{T(h[SGD_LR]), T(h[SGD_MAXIMIZE] != 0 ? -1 : 1), T(h[SGD_WD]), T(mom),
                  T(1.0 - h[SGD_DAMPENING])};
  with_bool(h[SGD_WD] != 0, [&](auto WD) {
    with_bool(mom != 0, [&](auto MOM) {
      with_bool(t.step == 1, [&](auto FIRST) {
        with_bool(h[SGD_NESTEROV] != 0, [&](auto NEST) {
          sgd_loop<T, WD(), MOM(), FIRST(), NEST()>(at<T>(t.p, b), at<T>(t.g, b),
                                                    MOM() ? at<T>(t.s[0], b) : nullptr, n, s);
        });
      });
    });
  });
}

template <typename T>
void adagrad_t(const TensorRef& t, int64_t b, int64_t n, const double* h) {
  using namespace col;
  const double clr = h[ADAGRAD_LR] / (1.0 + double(t.step - 1) * h[ADAGRAD_LR_DECAY]);
  AdagradScalars<T> s{T(clr), T(h[ADAGRAD_MAXIMIZE] != 0 ? -1 : 1), T(h[ADAGRAD_WD]),
                      T(h[ADAGRAD_EPS])};
  with_bool(h[ADAGRAD_WD] != 0, [&](auto WD) {
    adagrad_loop<T, WD()>(at<T>(t.p, b), at<T>(t.g, b), at<T>(t.s[0], b), n, s);
  });
}

template <typename T>
void rmsprop_t(const TensorRef& t, int64_t b, int64_t n, const double* h) {
  using namespace col;
  const double alpha = h[RMSPROP_ALPHA];
  RmspropScalars<T> s{T(h[RMSPROP_LR]), T(h[RMSPROP_MAXIMIZE] != 0 ? -1 : 1), T(h[RMSPROP_WD]),
                      T(alpha), T(1.0 - alpha), T(h[RMSPROP_EPS]), T(h[RMSPROP_MOMENTUM])};
  with_bool(h[RMSPROP_WD] != 0, [&](auto WD) {
    with_bool(h[RMSPROP_CENTERED] != 0, [&](auto CEN) {
      with_bool(h[RMSPROP_MOMENTUM] > 0, [&](auto MOM) {
        rmsprop_loop<T, WD(), CEN(), MOM()>(at<T>(t.p, b), at<T>(t.g, b), at<T>(t.s[0], b),
                                            CEN() ? at<T>(t.s[1], b) : nullptr,
                                            MOM() ? at<T>(t.s[2], b) : nullptr, n, s);
      });
    });
  });
}

template <typename T>
void adadelta_t(const TensorRef& t, int64_t b, int64_t n, const double* h) {
  using namespace col;
  const double rho = h[ADADELTA_RHO];
  AdadeltaScalars<T> s{T(h[ADADELTA_LR]), T(h[ADADELTA_MAXIMIZE] != 0 ? -1 : 1),
                       T(h[ADADELTA_WD]), T(rho), T(1.0 - rho), T(h[ADADELTA_EPS])};
  with_bool(h[ADADELTA_WD] != 0, [&](auto WD) {
    adadelta_loop<T, WD()>(at<T>(t.p, b), at<T>(t.g, b), at<T>(t.s[0], b), at<T>(t.s[1], b), n,
                           s);
  });
}

template <typename T>
void adam_t(const TensorRef& t, int64_t b, int64_t n, const double* h) {
  using namespace col;
  const double lr = h[ADAM_LR], b1 = h[ADAM_BETA1], b2 = h[ADAM_BETA2], wd = h[ADAM_WD];
  const double bc1 = t.bc1, bc2 = t.bc2;  // fill_bias_corrections()
  const bool decoupled = h[ADAM_DECOUPLED] != 0;
  AdamScalars<T> s{T(h[ADAM_MAXIMIZE] != 0 ? -1 : 1),
                   T(wd),
                   T(1.0 - lr * wd),
                   T(b1),
                   T(1.0 - b1),
                   T(b2),
                   T(1.0 - b2),
                   T(lr / bc1),
                   T(std::sqrt(bc2)),
                   T(h[ADAM_EPS])};
  with_bool(!decoupled && wd != 0, [&](auto L2) {
    with_bool(decoupled && wd != 0, [&](auto DEC) {
      with_bool(h[ADAM_AMSGRAD] != 0, [&](auto AMS) {
        if constexpr (!(L2() && DEC())) {
          adam_loop<T, L2(), DEC(), AMS()>(at<T>(t.p, b), at<T>(t.g, b), at<T>(t.s[0], b),
                                           at<T>(t.s[1], b), AMS() ? at<T>(t.s[2], b) : nullptr,
                                           n, s);
        }
      });
    });
  });
}

#define CNNKIT_DTYPE_ENTRY(name)                                                    \
  void name(const TensorRef& t, int64_t b, int64_t n, const double* h) {            \
    if (t.dtype == DType::f32)                                                       \
      name##_t<float>(t, b, n, h);                                                   \
    else                                                                             \
      name##_t<double>(t, b, n, h);                                                  \
  }
CNNKIT_DTYPE_ENTRY(sgd)
CNNKIT_DTYPE_ENTRY(adagrad)
CNNKIT_DTYPE_ENTRY(rmsprop)
CNNKIT_DTYPE_ENTRY(adadelta)
CNNKIT_DTYPE_ENTRY(adam)
#undef CNNKIT_DTYPE_ENTRY

// ---- reductions -----------------------------------------------------------------------------

template <typename T>
double norm_partial_t(const T* __restrict x, int64_t n, double p) {
  if (std::isinf(p)) {
    double m = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      double a = std::fabs(double(x[i]));
      m = (a != a || a > m) ? a : m;
      if (m != m) return m;
    }
    return m;
  }
  double acc = 0.0;
  if (p == 2.0) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += double(x[i]) * double(x[i]);
  } else if (p == 1.0) {
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += std::fabs(double(x[i]));
  } else if (p == 0.0) {
    for (int64_t i = 0; i < n; ++i) acc += (x[i] != T(0)) ? 1.0 : 0.0;
  } else {
    for (int64_t i = 0; i < n; ++i) acc += std::pow(std::fabs(double(x[i])), p);
  }
  return acc;
}

double norm_partial(const ArrayRef& a, int64_t b, int64_t n, double p) {
  if (a.dtype == DType::f32) return norm_partial_t(static_cast<const float*>(a.data) + b, n, p);
  return norm_partial_t(static_cast<const double*>(a.data) + b, n, p);
}

template <typename T>
bool all_finite_t(const T* __restrict x, int64_t n) {
  // x - x is 0 for finite x and NaN for inf or NaN; a NaN poisons the sum.
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i] - x[i];
  return acc == T(0);
}

bool all_finite(const ArrayRef& a, int64_t b, int64_t n) {
  if (a.dtype == DType::f32) return all_finite_t(static_cast<const float*>(a.data) + b, n);
  return all_finite_t(static_cast<const double*>(a.data) + b, n);
}

template <typename T>
void scale_t(T* __restrict x, int64_t n, T f) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * f;
}

void scale(const ArrayRef& a, int64_t b, int64_t n, double f) {
  if (a.dtype == DType::f32)
    scale_t(static_cast<float*>(a.data) + b, n, float(f));
  else
    scale_t(static_cast<double*>(a.data) + b, n, f);
}

}  // namespace

extern const optim::Kernels optim_kernels;
const optim::Kernels optim_kernels = {{sgd, adagrad, rmsprop, adadelta, adam},
                                      norm_partial,
                                      all_finite,
                                      scale};

}  // namespace CNNKIT_ISA_NS
}  // namespace cnnkit
