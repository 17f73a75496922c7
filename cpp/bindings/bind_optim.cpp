// Optimizer bindings. OptimPlan holds the parameter and state arrays of one optimizer (checked
// once, at construction, then kept by an optim::Plan); each step() only checks and collects the
// gradients, so a step over 3,000 tensors costs microseconds of marshalling, then one compiled
// call (optim::Plan::step) with the GIL released.
#include <memory>
#include <string>
#include <vector>

#include "cnnkit/optim.h"
#include "common.h"

#ifdef CNNKIT_WITH_CUDA
namespace cnnkit::cuda {
void multi_tensor_step(optim::Algo algo, const optim::TensorRef* refs, int64_t count, const double* hyper,
                       int64_t ngroups);  // cuda/launch.cpp
}
#endif

namespace cnnkit::bind {
namespace {

optim::Algo algo_from_name(const std::string& s) {
  if (s == "sgd") return optim::Algo::sgd;
  if (s == "adagrad") return optim::Algo::adagrad;
  if (s == "rmsprop") return optim::Algo::rmsprop;
  if (s == "adadelta") return optim::Algo::adadelta;
  if (s == "adam") return optim::Algo::adam;
  throw py::value_error("algo: expected one of sgd, adagrad, rmsprop, adadelta, adam, got '" + s + "'");
}

std::string idx(const char* name, size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

// Marshals one optimizer's parameter and state arrays into an optim::Plan (which checks that
// they share no memory), and each step's gradients into pointers for Plan::step (which checks the
// gradients against them, fills Adam's bias corrections and runs the fused update).
class OptimPlan {
 public:
  OptimPlan(const std::string& algo, const py::list& params, const py::list& states,
            const py::array_t<int32_t, py::array::c_style>& group_index) {
    const optim::Algo a = algo_from_name(algo);
    const size_t n = py::len(params);
    const int nslots = optim::state_slots(a);
    if (static_cast<int>(py::len(states)) != nslots)
      throw py::value_error("states: expected " + std::to_string(nslots) + " slot lists for '" + algo +
                            "', got " + std::to_string(py::len(states)));
    if (static_cast<size_t>(group_index.size()) != n)
      throw py::value_error("group_index: expected " + std::to_string(n) + " entries, got " +
                            std::to_string(group_index.size()));
    std::vector<optim::TensorRef> refs(n);
    keep_.reserve(n * (1 + nslots));
    for (size_t i = 0; i < n; ++i) {
      const ArgName pname("params", int64_t(i));
      optim::TensorRef& r = refs[i];
      r.dtype = dtype_of(params[i], pname);
      r.p = array_arg(params[i], pname, r.dtype, -1, kWrite);
      py::array p = py::reinterpret_borrow<py::array>(params[i]);
      r.n = p.size();
      r.g = nullptr;
      r.group = group_index.at(i);
      r.step = 0;
      params_.push_back(p);
      keep_.push_back(p);
      for (int s = 0; s < 3; ++s) r.s[s] = nullptr;
      for (int s = 0; s < nslots; ++s) {
        py::object slot = states[s];
        if (slot.is_none()) continue;
        py::object o = py::reinterpret_borrow<py::list>(slot)[i];
        if (o.is_none()) continue;
        const std::string what = "states[" + std::to_string(s) + "][" + std::to_string(i) + "]";
        r.s[s] = array_arg(o, what, r.dtype, r.n, kWrite);
        keep_.push_back(o);
      }
    }
    plan_ = std::make_unique<optim::Plan>(a, std::move(refs));
    grads_.assign(n, nullptr);
  }

  int64_t size() const { return plan_->size(); }

  void step(const py::sequence& grads, const py::array_t<double, py::array::c_style>& hyper,
            py::array_t<int64_t, py::array::c_style>& steps) {
    const size_t n = static_cast<size_t>(plan_->size());
    const int K = optim::hyper_columns(plan_->algo());
    const int ngroups = plan_->ngroups();
    if (static_cast<size_t>(py::len(grads)) != n)
      throw py::value_error("grads: expected " + std::to_string(n) + " gradients (one per parameter), got " +
                            std::to_string(py::len(grads)));
    if (hyper.ndim() != 2 || hyper.shape(0) < ngroups || hyper.shape(1) != K)
      throw py::value_error("hyper: expected shape (" + std::to_string(ngroups) + ", " + std::to_string(K) + ")");
    const double* H = hyper.data();
    int64_t* S = array_arg<int64_t>(steps, "steps", static_cast<int64_t>(n), kWrite);
    py::object seq = py::reinterpret_steal<py::object>(PySequence_Fast(grads.ptr(), "grads: expected a sequence"));
    if (!seq) throw py::error_already_set();
    PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
    const auto& api = py::detail::npy_api::get();
    for (size_t i = 0; i < n; ++i) {
      PyObject* o = items[i];
      grads_[i] = nullptr;
      if (o == Py_None) continue;
      if (!api.PyArray_Check_(o))
        throw py::type_error(idx("grads", i) + ": expected a numpy.ndarray, got " + type_str(o));
      const auto* ga = py::detail::array_proxy(o);
      const auto* pa = py::detail::array_proxy(params_[i].ptr());
      // Fast path (this loop runs per tensor per step): the same dtype object and shape as the
      // parameter, C-contiguous; otherwise array_arg's full check names what differs.
      bool same = ga->descr == pa->descr && ga->nd == pa->nd &&
                  (ga->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_);
      for (int d = 0; same && d < ga->nd; ++d) same = ga->dimensions[d] == pa->dimensions[d];
      if (!same)
        array_arg(o, ArgName("grads", int64_t(i)), plan_->tensor(int64_t(i)).dtype,
                  Extent(pa->dimensions, pa->nd));
      if (!(pa->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_))
        throw py::value_error(idx("params", i) + ": expected a writeable array, got a read-only one");
      grads_[i] = ga->data;
    }
    py::gil_scoped_release nogil;
    plan_->step(grads_.data(), H, S);
  }

 private:
  std::unique_ptr<optim::Plan> plan_;
  std::vector<py::array> params_;
  std::vector<py::object> keep_;
  std::vector<const void*> grads_;  // per step: each tensor's gradient, or null
};

std::vector<optim::ArrayRef> array_refs(const py::sequence& arrays, const char* name, bool need_write,
                                         std::vector<py::array>& keep) {
  std::vector<optim::ArrayRef> out;
  const size_t n = py::len(arrays);
  out.reserve(n);
  keep.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    py::handle o = arrays[i];
    const ArgName what(name, int64_t(i));
    optim::ArrayRef r;
    r.dtype = dtype_of(o, what);
    r.data = array_arg(o, what, r.dtype, -1, need_write ? kWrite : kRead);
    py::array a = py::reinterpret_borrow<py::array>(o);
    r.n = a.size();
    out.push_back(r);
    keep.push_back(a);
  }
  return out;
}

}  // namespace

void bind_optim(py::module_& m) {
  py::class_<OptimPlan>(m, "OptimPlan",
                        "Parameter and state arrays of one optimizer, checked once; step() runs one "
                        "fused multi-tensor update.")
      .def(py::init<const std::string&, const py::list&, const py::list&,
                    const py::array_t<int32_t, py::array::c_style>&>(),
           py::arg("algo"), py::arg("params"), py::arg("states"), py::arg("group_index"))
      .def("__len__", &OptimPlan::size)
      .def("step", &OptimPlan::step, py::arg("grads"), py::arg("hyper"), py::arg("steps"));

  m.def(
      "cuda_multi_tensor_step",
      [](const std::string& algo, const py::list& tensors, const py::array_t<double, py::array::c_style>& hyper) {
#ifdef CNNKIT_WITH_CUDA
        const optim::Algo a = algo_from_name(algo);
        const int K = optim::hyper_columns(a);
        if (hyper.ndim() != 2 || hyper.shape(1) != K)
          throw py::value_error("hyper: expected shape (groups, " + std::to_string(K) + ")");
        std::vector<optim::TensorRef> refs;
        for (py::handle h : tensors) {
          // (p, g, s0, s1, s2, n, dtype (0 f32, 1 f64), group, step), device addresses as ints
          auto t = h.cast<py::tuple>();
          optim::TensorRef r;
          r.p = reinterpret_cast<void*>(t[0].cast<uintptr_t>());
          r.g = reinterpret_cast<const void*>(t[1].cast<uintptr_t>());
          for (int k = 0; k < 3; ++k) r.s[k] = reinterpret_cast<void*>(t[2 + k].cast<uintptr_t>());
          r.n = t[5].cast<int64_t>();
          r.dtype = t[6].cast<int>() == 0 ? DType::f32 : DType::f64;
          r.group = t[7].cast<int32_t>();
          r.step = t[8].cast<int64_t>();
          if (r.group < 0 || r.group >= hyper.shape(0)) throw py::value_error("tensors: group out of range");
          refs.push_back(r);
        }
        py::gil_scoped_release nogil;
        cuda::multi_tensor_step(a, refs.data(), static_cast<int64_t>(refs.size()), hyper.data(), hyper.shape(0));
#else
        (void)algo;
        (void)tensors;
        (void)hyper;
        throw std::runtime_error("cnnkit was built without CUDA (CNNKIT_CUDA=OFF or no nvcc at build time)");
#endif
      },
      py::arg("algo"), py::arg("tensors"), py::arg("hyper"));

  m.def(
      "hyper_columns", [](const std::string& a) { return optim::hyper_columns(algo_from_name(a)); },
      py::arg("algo"));

  m.def(
      "global_norm",
      [](const py::sequence& arrays, double norm_type) {
        std::vector<py::array> keep;
        auto refs = array_refs(arrays, "grads", false, keep);
        py::gil_scoped_release nogil;
        return optim::multi_tensor_norm(refs.data(), static_cast<int64_t>(refs.size()), norm_type);
      },
      py::arg("arrays"), py::arg("norm_type"));
  m.def(
      "all_finite",
      [](const py::sequence& arrays) {
        std::vector<py::array> keep;
        auto refs = array_refs(arrays, "grads", false, keep);
        py::gil_scoped_release nogil;
        return optim::multi_tensor_all_finite(refs.data(), static_cast<int64_t>(refs.size()));
      },
      py::arg("arrays"));
  m.def(
      "scale_",
      [](const py::sequence& arrays, double factor) {
        std::vector<py::array> keep;
        auto refs = array_refs(arrays, "grads", true, keep);
        py::gil_scoped_release nogil;
        optim::multi_tensor_scale(refs.data(), static_cast<int64_t>(refs.size()), factor);
      },
      py::arg("arrays"), py::arg("factor"));
}

}  // namespace cnnkit::bind
