// Multi-tensor drivers: split the elements of all tensors of a list evenly across the OpenMP
// threads (each thread walks a contiguous range of the concatenated list, which may span many
// small tensors), and call the per-ISA kernel on each piece. Element-wise updates do not depend on
// the split; reductions use fixed blocks of kNormBlock elements combined in list order.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <iterator>
#include <string>
#include <vector>

#include "cnnkit/optim.h"
#include "cnnkit/registry.h"

namespace cnnkit {
namespace scalar { extern const optim::Kernels optim_kernels; }
namespace avx2 { extern const optim::Kernels optim_kernels; }
namespace avx512 { extern const optim::Kernels optim_kernels; }
}  // namespace cnnkit

namespace cnnkit::optim {

registry::Table& kernel_table() {
  constexpr unsigned f = registry::f32 | registry::f64;
  static registry::Table t("optim", {{"optim_sgd", f}, {"optim_adagrad", f}, {"optim_rmsprop", f},
                                     {"optim_adadelta", f}, {"optim_adam", f}, {"optim_norm", f},
                                     {"optim_all_finite", f}, {"optim_scale", f}});
  return t;
}

namespace {

// Operations of the table: the five updates (in Algo order), then the list reductions.
enum Op { kNorm = 5, kAllFinite = 6, kScale = 7 };

// The kernels for operation op over a list whose element types are `elems` (registry::Elem bits).
const Kernels& kernels(int op, unsigned elems) {
  const Isa isa = kernel_table().isa_for(op, elems ? elems : unsigned(registry::f32));
  return registry::of_isa(isa, scalar::optim_kernels, avx2::optim_kernels, avx512::optim_kernels);
}
template <typename Ref, typename Count>
unsigned elems_of(const Ref* refs, Count count, DType Ref::*dtype) {
  unsigned e = 0;
  for (Count i = 0; i < count; ++i) e |= refs[i].*dtype == DType::f32 ? registry::f32 : registry::f64;
  return e;
}

// Below this many elements in all, one thread does the work (a parallel region costs more).
constexpr int64_t kSerialBelow = 1 << 15;
// Thread ranges start on multiples of this many elements (a 64-byte line of float32).
constexpr int64_t kAlign = 16;

// Calls fn(index, begin, len) for pieces covering every element of every item; items are split
// across threads by element count.
template <typename SizeFn, typename Fn>
void for_each_piece(int64_t count, SizeFn size_of, Fn fn) {
  if (count <= 0) return;
  std::vector<int64_t> prefix(static_cast<size_t>(count) + 1, 0);
  for (int64_t i = 0; i < count; ++i) prefix[i + 1] = prefix[i] + size_of(i);
  const int64_t total = prefix[count];
  if (total == 0) return;
  int nt = num_threads();
  if (total < kSerialBelow || nt <= 1) {
    for (int64_t i = 0; i < count; ++i)
      if (size_of(i) > 0) fn(i, int64_t(0), size_of(i));
    return;
  }
  const int64_t* const pre = prefix.data();
#pragma omp parallel num_threads(nt)
  {
    // Each thread works from its own copies: the callback and anything it captured by reference
    // would otherwise be read, per tensor, from the master thread's stack, whose cache lines the
    // master keeps writing (calls, spills): false sharing that cost ~0.1 us per tensor.
    Fn f = fn;
    const int64_t* const pf = pre;
    const int64_t cnt = count;
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    int64_t lo = total * t / T, hi = total * (t + 1) / T;
    lo = (t == 0) ? 0 : (lo / kAlign) * kAlign;
    hi = (t == T - 1) ? total : (hi / kAlign) * kAlign;
    if (lo < hi) {
      int64_t i = std::upper_bound(pf, pf + cnt + 1, lo) - pf - 1;
      for (; i < cnt && pf[i] < hi; ++i) {
        const int64_t b = std::max(lo, pf[i]) - pf[i];
        const int64_t e = std::min(hi, pf[i + 1]) - pf[i];
        if (e > b) f(i, b, e - b);
      }
    }
  }
}

}  // namespace

void kernel_builds(const char* out[3]) {
  out[0] = scalar::optim_kernels.compiled_for();
  out[1] = avx2::optim_kernels.compiled_for();
  out[2] = avx512::optim_kernels.compiled_for();
}

int hyper_columns(Algo algo) {
  switch (algo) {
    case Algo::sgd: return col::SGD_K;
    case Algo::adagrad: return col::ADAGRAD_K;
    case Algo::rmsprop: return col::RMSPROP_K;
    case Algo::adadelta: return col::ADADELTA_K;
    case Algo::adam: return col::ADAM_K;
  }
  return 0;
}

int state_slots(Algo algo) {
  switch (algo) {
    case Algo::sgd: return 1;
    case Algo::adagrad: return 1;
    case Algo::rmsprop: return 3;
    case Algo::adadelta: return 2;
    case Algo::adam: return 3;
  }
  return 0;
}

void fill_bias_corrections(Algo algo, TensorRef& t, const double* h) {
  if (algo != Algo::adam) return;
  t.bc1 = 1.0 - std::pow(h[col::ADAM_BETA1], double(t.step));
  t.bc2 = 1.0 - std::pow(h[col::ADAM_BETA2], double(t.step));
}

void multi_tensor_step(Algo algo, const TensorRef* tensors, int64_t count, const double* hyper) {
  const Kernels& k = kernels(static_cast<int>(algo), elems_of(tensors, count, &TensorRef::dtype));
  auto fn = k.update[static_cast<int>(algo)];
  const int K = hyper_columns(algo);
  for_each_piece(
      count, [&](int64_t i) { return tensors[i].n; },
      [=](int64_t i, int64_t b, int64_t n) {  // by value: see for_each_piece
        const TensorRef& t = tensors[i];
        fn(t, b, n, hyper + int64_t(t.group) * K);
      });
}

double multi_tensor_norm(const ArrayRef* arrays, int64_t count, double p) {
  const Kernels& k = kernels(kNorm, elems_of(arrays, count, &ArrayRef::dtype));
  std::vector<int64_t> first_block(static_cast<size_t>(count) + 1, 0);
  for (int64_t i = 0; i < count; ++i)
    first_block[i + 1] = first_block[i] + (arrays[i].n + kNormBlock - 1) / kNormBlock;
  const int64_t nblocks = first_block[count];
  std::vector<double> partial(static_cast<size_t>(nblocks), 0.0);
  const int nt = (nblocks * kNormBlock < kSerialBelow) ? 1 : num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    int64_t i = std::upper_bound(first_block.begin(), first_block.end(), blk) - first_block.begin() - 1;
    const int64_t b = (blk - first_block[i]) * kNormBlock;
    partial[blk] = k.norm_partial(arrays[i], b, std::min(kNormBlock, arrays[i].n - b), p);
  }
  if (std::isinf(p)) {
    double m = 0.0;
    for (double v : partial) m = (v != v || v > m) ? v : m;
    return m;
  }
  double acc = 0.0;
  for (double v : partial) acc += v;
  if (p == 2.0) return std::sqrt(acc);
  if (p == 1.0 || p == 0.0) return acc;
  return std::pow(acc, 1.0 / p);
}

bool multi_tensor_all_finite(const ArrayRef* arrays, int64_t count) {
  auto finite = kernels(kAllFinite, elems_of(arrays, count, &ArrayRef::dtype)).all_finite;
  int bad = 0;
  int* const flag = &bad;  // written only when a non-finite value is found
  for_each_piece(
      count, [&](int64_t i) { return arrays[i].n; },
      [=](int64_t i, int64_t b, int64_t n) {
        if (!finite(arrays[i], b, n)) {
#pragma omp atomic write
          *flag = 1;
        }
      });
  return bad == 0;
}

void multi_tensor_scale(const ArrayRef* arrays, int64_t count, double factor) {
  const Kernels& k = kernels(kScale, elems_of(arrays, count, &ArrayRef::dtype));
  auto scale = k.scale;
  for_each_piece(
      count, [&](int64_t i) { return arrays[i].n; },
      [=](int64_t i, int64_t b, int64_t n) { scale(arrays[i], b, n, factor); });
}

// ---- Plan --------------------------------------------------------------------------------------
namespace {

std::string tensor_name(const char* what, int64_t i) { return std::string(what) + "[" + std::to_string(i) + "]"; }

// Which state slots a group's hyperparameters need.
std::array<bool, 3> needed_slots(Algo algo, const double* h) {
  using namespace col;
  switch (algo) {
    case Algo::sgd: return {h[SGD_MOMENTUM] != 0, false, false};
    case Algo::adagrad: return {true, false, false};
    case Algo::rmsprop: return {true, h[RMSPROP_CENTERED] != 0, h[RMSPROP_MOMENTUM] > 0};
    case Algo::adadelta: return {true, true, false};
    case Algo::adam: return {true, true, h[ADAM_AMSGRAD] != 0};
  }
  return {false, false, false};
}

}  // namespace

Plan::Plan(Algo algo, std::vector<TensorRef> tensors) : algo_(algo), refs_(std::move(tensors)) {
  const int nslots = state_slots(algo_);
  for (size_t i = 0; i < refs_.size(); ++i) {
    TensorRef& r = refs_[i];
    if (r.group < 0) throw value_error(tensor_name("group_index", int64_t(i)) + ": expected >= 0");
    ngroups_ = std::max(ngroups_, r.group + 1);
    r.g = nullptr;
    r.step = 0;
    const auto bytes = static_cast<uintptr_t>(r.n * dtype_size(r.dtype));
    const auto add = [&](const void* p, int slot) {
      const auto lo = reinterpret_cast<uintptr_t>(p);
      if (bytes > 0) intervals_.push_back({lo, lo + bytes, static_cast<int64_t>(i), slot});
    };
    add(r.p, -1);
    for (int s = 0; s < 3; ++s) {
      if (s >= nslots) r.s[s] = nullptr;
      if (r.s[s]) add(r.s[s], s);
    }
  }
  std::sort(intervals_.begin(), intervals_.end(), [](const Interval& a, const Interval& b) { return a.lo < b.lo; });
  for (size_t k = 1; k < intervals_.size(); ++k)
    if (intervals_[k].lo < intervals_[k - 1].hi)
      throw value_error(describe(intervals_[k - 1]) + " and " + describe(intervals_[k]) +
                        " share memory; every parameter and state array must be distinct");
  active_.reserve(refs_.size());
  checked_.assign(refs_.size(), 0);
}

std::string Plan::describe(const Interval& v) const {
  if (v.slot < 0) return tensor_name("params", v.tensor);
  return "the optimizer state (slot " + std::to_string(v.slot) + ") of " + tensor_name("params", v.tensor);
}

void Plan::step(const void* const* grads, const double* hyper, int64_t* steps) {
  const int K = hyper_columns(algo_);
  std::vector<std::array<bool, 3>> need(static_cast<size_t>(ngroups_));
  for (int gi = 0; gi < ngroups_; ++gi) need[gi] = needed_slots(algo_, hyper + int64_t(gi) * K);
  active_.clear();
  int last_group = -1;
  int64_t last_step = -1;
  double bc1 = 0, bc2 = 0;
  for (size_t i = 0; i < refs_.size(); ++i) {
    if (grads[i] == nullptr) continue;
    const TensorRef& r = refs_[i];
    const auto lo = reinterpret_cast<uintptr_t>(grads[i]);
    const auto hi = lo + static_cast<uintptr_t>(r.n * dtype_size(r.dtype));
    // A gradient buffer reused from the last step (the usual case) was already found to share no
    // memory with the (fixed) parameter and state arrays.
    if (hi > lo && checked_[i] != lo) {
      auto it = std::lower_bound(intervals_.begin(), intervals_.end(), hi,
                                 [](const Interval& v, uintptr_t x) { return v.lo < x; });
      if (it != intervals_.begin() && std::prev(it)->hi > lo)
        throw value_error(tensor_name("grads", int64_t(i)) + ": shares memory with " + describe(*std::prev(it)) +
                          "; a gradient must not alias a parameter or optimizer state");
      checked_[i] = lo;
    }
    for (int k = 0; k < 3; ++k)
      if (need[r.group][k] && r.s[k] == nullptr)
        throw value_error(tensor_name("params", int64_t(i)) + ": optimizer state slot " + std::to_string(k) +
                          " is needed by the group's hyperparameters but was not allocated");
    TensorRef a = r;
    a.g = grads[i];
    a.step = steps[i] + 1;
    if (a.group != last_group || a.step != last_step) {  // tensors of a group share a step
      fill_bias_corrections(algo_, a, hyper + int64_t(r.group) * K);
      last_group = a.group;
      last_step = a.step;
      bc1 = a.bc1;
      bc2 = a.bc2;
    } else {
      a.bc1 = bc1;
      a.bc2 = bc2;
    }
    active_.push_back(a);
  }
  multi_tensor_step(algo_, active_.data(), static_cast<int64_t>(active_.size()), hyper);
  for (size_t i = 0; i < refs_.size(); ++i)
    if (grads[i] != nullptr) steps[i] += 1;
}

}  // namespace cnnkit::optim
