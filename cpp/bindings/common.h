// Binding helpers: array checks that raise Python errors naming the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <sstream>
#include <string>

#include "cnnkit/optim.h"

namespace cnnkit::bind {
namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) os << (i ? ", " : "") << a.shape(i) << (a.ndim() == 1 ? "," : "");
  os << ")";
  return os.str();
}

inline std::string type_str(py::handle h) { return py::str(py::type::of(h).attr("__name__")); }

// Float dtype of a NumPy array, or throws TypeError naming `what`.
inline optim::DType float_dtype(const py::array& a, const std::string& what) {
  const char kind = a.dtype().kind();
  const auto size = a.itemsize();
  if (kind == 'f' && size == 4 && a.dtype().byteorder() != '>') return optim::DType::f32;
  if (kind == 'f' && size == 8 && a.dtype().byteorder() != '>') return optim::DType::f64;
  throw py::type_error(what + ": expected a float32 or float64 array, got dtype " +
                       std::string(py::str(a.dtype())));
}

inline const char* dtype_name(optim::DType d) { return d == optim::DType::f32 ? "float32" : "float64"; }

inline bool c_contiguous(const py::array& a) {
  return (a.flags() & py::array::c_style) != 0;
}
inline bool writeable(const py::array& a) {
  return (a.flags() & py::detail::npy_api::NPY_ARRAY_WRITEABLE_) != 0;
}

inline bool overlaps(const void* a, int64_t abytes, const void* b, int64_t bbytes) {
  auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return abytes > 0 && bbytes > 0 && x < y + static_cast<uintptr_t>(bbytes) &&
         y < x + static_cast<uintptr_t>(abytes);
}

// The data of `a` as T*, after checking its dtype (exactly T), C-contiguity, element count and
// (when `write`) writeability; errors name the argument.
template <typename T>
T* checked(const py::array& a, const char* name, int64_t count, bool write) {
  if (!py::isinstance<py::array_t<T>>(a) || !c_contiguous(a))
    throw py::type_error(std::string(name) + ": expected a C-contiguous array of the kernel's dtype");
  if (a.size() != count)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(count) + " elements, got " +
                          std::to_string(a.size()));
  if (write && !writeable(a)) throw py::value_error(std::string(name) + ": expected a writeable array");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

void bind_runtime(py::module_& m);
void bind_optim(py::module_& m);
void bind_norm(py::module_& m);
void bind_augment(py::module_& m);
void bind_conv(py::module_& m);
void bind_nn(py::module_& m);
void bind_kernels(py::module_& m);

}  // namespace cnnkit::bind
