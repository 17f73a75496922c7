// Per-element optimizer updates, shared by the CPU kernels (cpp/src/optim/optim_update.cpp, where
// they vectorise) and the CUDA kernels (cuda/fused_optim.cu). The formulas are torch.optim's
// (single-tensor form), written for one element; g is the raw gradient, `sign` is -1 when
// maximising. Scalars arrive precomputed per tensor (bias corrections, decayed step size) in T.
//
//   SGD      g' = sign*g (+ wd*p);  buf = g' on step 1 else momentum*buf + (1-dampening)*g'
//            d = nesterov ? g' + momentum*buf : buf  (d = g' when momentum == 0);  p -= lr*d
//   Adagrad  g' = sign*g (+ wd*p);  s += g'^2;  p -= clr * g' / (sqrt(s) + eps),
//            clr = lr / (1 + (step-1)*lr_decay)
//   RMSprop  g' = sign*g (+ wd*p);  v = alpha*v + (1-alpha)*g'^2
//            centered: a = alpha*a + (1-alpha)*g';  avg = sqrt(v - a^2) + eps  else sqrt(v) + eps
//            momentum > 0: buf = momentum*buf + g'/avg; p -= lr*buf   else p -= lr*g'/avg
//   Adadelta g' = sign*g (+ wd*p);  v = rho*v + (1-rho)*g'^2;  d = sqrt(u + eps)/sqrt(v + eps)*g'
//            u = rho*u + (1-rho)*d^2;  p -= lr*d
//   Adam     AdamW: p *= 1 - lr*wd (before the moments)   Adam: g' = sign*g + wd*p
//            m = b1*m + (1-b1)*g';  v = b2*v + (1-b2)*g'^2;  amsgrad: vmax = max(vmax, v)
//            p -= (lr/bc1) * m / (sqrt(v or vmax)/sqrt(bc2) + eps),  bcK = 1 - bK^step
#pragma once

#include <cmath>

#include "cnnkit/common.h"

namespace cnnkit::optim::math {
inline namespace CNNKIT_KERNEL_NS {  // one copy per ISA level (see common.h)

CNNKIT_HD float k_sqrt(float x) { return sqrtf(x); }
CNNKIT_HD double k_sqrt(double x) { return sqrt(x); }
// max that propagates NaN from either side, like torch.maximum
template <typename T>
CNNKIT_HD T k_max_nan(T a, T b) { return (a != a || a > b) ? a : b; }

template <typename T>
struct SgdScalars { T lr, sign, wd, momentum, damp1; };
template <typename T>
struct AdagradScalars { T clr, sign, wd, eps; };
template <typename T>
struct RmspropScalars { T lr, sign, wd, alpha, alpha1, eps, momentum; };
template <typename T>
struct AdadeltaScalars { T lr, sign, wd, rho, rho1, eps; };
template <typename T>
struct AdamScalars { T sign, wd, decay, b1, b1c, b2, b2c, step_size, bc2_sqrt, eps; };

template <typename T, bool WD, bool MOM, bool FIRST, bool NEST>
CNNKIT_HD void sgd_update(T& p, T g, T& buf, const SgdScalars<T>& s) {
  T pi = p;
  T gi = s.sign * g;
  if (WD) gi = gi + s.wd * pi;
  if (MOM) {
    T b = FIRST ? gi : s.momentum * buf + s.damp1 * gi;
    buf = b;
    gi = NEST ? gi + s.momentum * b : b;
  }
  p = pi - s.lr * gi;
}

template <typename T, bool WD>
CNNKIT_HD void adagrad_update(T& p, T g, T& sum, const AdagradScalars<T>& s) {
  T pi = p;
  T gi = s.sign * g;
  if (WD) gi = gi + s.wd * pi;
  T acc = sum + gi * gi;
  sum = acc;
  p = pi - s.clr * (gi / (k_sqrt(acc) + s.eps));
}

template <typename T, bool WD, bool CENTERED, bool MOM>
CNNKIT_HD void rmsprop_update(T& p, T g, T& sq, T& gavg, T& buf, const RmspropScalars<T>& s) {
  T pi = p;
  T gi = s.sign * g;
  if (WD) gi = gi + s.wd * pi;
  T v = s.alpha * sq + s.alpha1 * (gi * gi);
  sq = v;
  T avg;
  if (CENTERED) {
    T a = s.alpha * gavg + s.alpha1 * gi;
    gavg = a;
    avg = k_sqrt(v - a * a) + s.eps;
  } else {
    avg = k_sqrt(v) + s.eps;
  }
  if (MOM) {
    T b = s.momentum * buf + gi / avg;
    buf = b;
    p = pi - s.lr * b;
  } else {
    p = pi - s.lr * (gi / avg);
  }
}

template <typename T, bool WD>
CNNKIT_HD void adadelta_update(T& p, T g, T& sq, T& acc, const AdadeltaScalars<T>& s) {
  T pi = p;
  T gi = s.sign * g;
  if (WD) gi = gi + s.wd * pi;
  T v = s.rho * sq + s.rho1 * (gi * gi);
  sq = v;
  T d = k_sqrt(acc + s.eps) / k_sqrt(v + s.eps) * gi;
  acc = s.rho * acc + s.rho1 * (d * d);
  p = pi - s.lr * d;
}

template <typename T, bool L2, bool DECOUPLED, bool AMS>
CNNKIT_HD void adam_update(T& p, T g, T& m, T& v, T& vmax, const AdamScalars<T>& s) {
  T pi = p;
  if (DECOUPLED) pi = pi * s.decay;
  T gi = s.sign * g;
  if (L2) gi = gi + s.wd * pi;
  T mi = s.b1 * m + s.b1c * gi;
  T vi = s.b2 * v + s.b2c * (gi * gi);
  m = mi;
  v = vi;
  if (AMS) {
    vi = k_max_nan(vmax, vi);
    vmax = vi;
  }
  T denom = k_sqrt(vi) / s.bc2_sqrt + s.eps;
  p = pi - s.step_size * (mi / denom);
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::optim::math
