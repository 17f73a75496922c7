// cnnkit fused multi-tensor optimizer updates (C++ API; the Python layer lives in cnnkit.optim).
// One call updates every tensor of a list in place; the work is split across threads by element,
// not by tensor, so 3,000 small tensors cost about what one large tensor of the same total does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cnnkit/common.h"

namespace cnnkit::optim {

enum class Algo : int { sgd = 0, adagrad, rmsprop, adadelta, adam };

// Columns of the per-group hyperparameter table (double, one row per group).
namespace col {
enum Sgd { SGD_LR, SGD_MOMENTUM, SGD_DAMPENING, SGD_WD, SGD_NESTEROV, SGD_MAXIMIZE, SGD_K };
enum Adagrad { ADAGRAD_LR, ADAGRAD_LR_DECAY, ADAGRAD_WD, ADAGRAD_EPS, ADAGRAD_MAXIMIZE, ADAGRAD_K };
enum Rmsprop {
  RMSPROP_LR, RMSPROP_ALPHA, RMSPROP_EPS, RMSPROP_WD, RMSPROP_MOMENTUM, RMSPROP_CENTERED,
  RMSPROP_MAXIMIZE, RMSPROP_K
};
enum Adadelta { ADADELTA_LR, ADADELTA_RHO, ADADELTA_EPS, ADADELTA_WD, ADADELTA_MAXIMIZE, ADADELTA_K };
enum Adam {
  ADAM_LR, ADAM_BETA1, ADAM_BETA2, ADAM_EPS, ADAM_WD, ADAM_AMSGRAD, ADAM_MAXIMIZE, ADAM_DECOUPLED,
  ADAM_K
};
}  // namespace col

int hyper_columns(Algo algo);
// State slots each algorithm uses (a slot may be null when its flag is off):
//   sgd: momentum_buffer | adagrad: sum | rmsprop: square_avg, grad_avg, momentum_buffer
//   adadelta: square_avg, acc_delta | adam: exp_avg, exp_avg_sq, max_exp_avg_sq
int state_slots(Algo algo);

// One tensor of a step: param, grad and state pointers of the same dtype and length n.
struct TensorRef {
  void* p;
  const void* g;
  void* s[3];
  int64_t n;
  DType dtype;
  int32_t group;  // row of the hyperparameter table
  int64_t step;   // 1-based step number of this update (after increment)
  // Adam's bias corrections 1 - beta^step, filled by fill_bias_corrections() on the host (so the
  // CPU and CUDA paths use the same libm pow and give the same bits).
  double bc1, bc2;
};

// Sets t.bc1/t.bc2 for Adam from its group's hyperparameter row (no-op for other algorithms).
void fill_bias_corrections(Algo algo, TensorRef& t, const double* hyper_row);

// A read-only or in-place array view used by the reductions.
struct ArrayRef {
  void* data;
  int64_t n;
  DType dtype;
};

// Updates every tensor in place. hyper: row-major (groups x hyper_columns(algo)).
void multi_tensor_step(Algo algo, const TensorRef* tensors, int64_t count, const double* hyper);

// Global norm over all arrays: fixed blocks of kNormBlock elements, partials in double combined
// in array/block order, so the value does not depend on the thread count. norm_type may be inf.
constexpr int64_t kNormBlock = 16384;
double multi_tensor_norm(const ArrayRef* arrays, int64_t count, double norm_type);
bool multi_tensor_all_finite(const ArrayRef* arrays, int64_t count);
void multi_tensor_scale(const ArrayRef* arrays, int64_t count, double factor);

// The parameters and state arrays of one optimizer, checked once; step() runs one fused update.
//
// Construction takes one TensorRef per parameter with p, s[0..2] (null where a slot is not
// allocated), n, dtype and group set, and throws value_error if a group is negative or if any two
// of the parameter and state arrays share memory. step() throws value_error, before anything is
// written, if a gradient shares memory with a parameter or state array, or if a tensor lacks a
// state slot its group's hyperparameters need; otherwise it fills Adam's bias corrections, runs
// multi_tensor_step over the tensors whose gradient is given and increments their step counts.
// Errors name tensors as the Python layer does: "params[3]", "grads[3]".
class Plan {
 public:
  Plan(Algo algo, std::vector<TensorRef> tensors);

  Algo algo() const { return algo_; }
  int64_t size() const { return static_cast<int64_t>(refs_.size()); }
  int ngroups() const { return ngroups_; }  // 1 + the largest group index
  const TensorRef& tensor(int64_t i) const { return refs_[static_cast<size_t>(i)]; }

  // grads[i]: tensor i's gradient (n elements of its dtype), or null to leave the tensor as it is.
  // hyper: ngroups() rows of hyper_columns(algo) values. steps[i]: tensor i's step count.
  void step(const void* const* grads, const double* hyper, int64_t* steps);

 private:
  struct Interval {
    uintptr_t lo, hi;
    int64_t tensor;
    int slot;  // -1: the parameter itself
  };
  std::string describe(const Interval& v) const;

  Algo algo_;
  int ngroups_ = 0;
  std::vector<TensorRef> refs_;
  std::vector<Interval> intervals_;  // sorted, disjoint
  std::vector<TensorRef> active_;
  std::vector<uintptr_t> checked_;  // per tensor: start of the last gradient found alias-free
};

// Per-ISA kernels (defined once per ISA level in cpp/src/optim/optim_update.cpp).
struct Kernels {
  void (*update[5])(const TensorRef& t, int64_t begin, int64_t len, const double* hyper_row);
  double (*norm_partial)(const ArrayRef& a, int64_t begin, int64_t len, double norm_type);
  bool (*all_finite)(const ArrayRef& a, int64_t begin, int64_t len);
  void (*scale)(const ArrayRef& a, int64_t begin, int64_t len, double factor);
  const char* (*compiled_for)();  // the ISA level the header kernels of this copy were built for
};

// compiled_for() of each ISA table, in the order scalar, avx2, avx512.
void kernel_builds(const char* out[3]);

}  // namespace cnnkit::optim
