// Per-ISA optimizer kernels: one contiguous slice [begin, begin+len) of one tensor per call.
// The scalars, flag dispatch, loops and element math are cnnkit/optim_apply.h and optim_math.h
// (shared with CUDA); this file instantiates them for the ISA this copy is built for
// (CNNKIT_ISA_NS), where the compiler vectorises the loops. Built with -ffp-contract=off, so every
// ISA and every split of the work gives the same bits.
//
// Reductions (global norm, finiteness) accumulate in double over one fixed-size block; their
// order inside a block depends only on the vector width, never on the thread count.
#include <cmath>
#include <type_traits>

#include "cnnkit/optim.h"
#include "cnnkit/optim_apply.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit {
namespace CNNKIT_ISA_NS {
namespace {

using namespace cnnkit::optim;
using namespace cnnkit::optim::math;

#define CNNKIT_DTYPE_ENTRY(name)                                              \
  void name(const TensorRef& t, int64_t b, int64_t n, const double* h) {      \
    if (t.dtype == DType::f32)                                                 \
      apply::name<apply::SerialLoop, float>(t, b, n, h);                       \
    else                                                                       \
      apply::name<apply::SerialLoop, double>(t, b, n, h);                      \
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
                                      scale,
                                      apply::compiled_for};

}  // namespace CNNKIT_ISA_NS
}  // namespace cnnkit
