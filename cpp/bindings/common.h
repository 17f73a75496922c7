// Binding helpers: the one check every array argument of a compiled call goes through, and the
// binders of the families. Bindings only marshal: they check arrays (so a misuse can never read
// or write out of bounds), turn them into pointers and sizes, and release the GIL around the
// kernel call. cnnkit's Python layer validates arguments first and owns defaults and allocation.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>

#include "cnnkit/common.h"

namespace cnnkit::bind {
namespace py = pybind11;

// An argument's name as errors print it, optionally indexed ("grads[3]"); built only on error.
class ArgName {
 public:
  ArgName(const char* base) : base_(base) {}  // NOLINT(google-explicit-constructor)
  ArgName(const std::string& base) : base_(base.c_str()) {}  // NOLINT; must outlive the call
  ArgName(const char* base, int64_t index) : base_(base), index_(index) {}
  std::string str() const {
    return index_ < 0 ? std::string(base_) : std::string(base_) + "[" + std::to_string(index_) + "]";
  }

 private:
  const char* base_;
  int64_t index_ = -1;
};

// "(2, 3)" / "(4,)": a shape as NumPy prints it.
inline std::string shape_str(const py::ssize_t* dims, py::ssize_t ndim) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t i = 0; i < ndim; ++i) os << (i ? ", " : "") << dims[i] << (ndim == 1 ? "," : "");
  os << ")";
  return os.str();
}
inline std::string shape_str(const py::array& a) { return shape_str(a.shape(), a.ndim()); }

inline std::string type_str(py::handle h) { return py::str(py::type::of(h).attr("__name__")); }

inline const char* dtype_name(DType d) {
  return d == DType::f32 ? "float32" : d == DType::f64 ? "float64" : "uint8";
}

// The NumPy dtype of a kernel element type.
inline py::dtype numpy_dtype(DType d) {
  return d == DType::f32 ? py::dtype::of<float>() : d == DType::f64 ? py::dtype::of<double>()
                                                                    : py::dtype::of<uint8_t>();
}

// How a kernel uses an array argument (flags).
enum Access : unsigned {
  kRead = 0,
  kWrite = 1u << 0,     // written: must be writeable
  kOptional = 1u << 1,  // None allowed: the pointer is then null
};

// The expected size of an array argument: an element count (any shape), or an exact shape.
struct Extent {
  Extent(int64_t count) : count(count) {}  // NOLINT(google-explicit-constructor)
  Extent(const py::ssize_t* dims, py::ssize_t ndim) : dims(dims), ndim(ndim) {}
  int64_t count = -1;
  const py::ssize_t* dims = nullptr;
  py::ssize_t ndim = 0;
};

// The one array check of the bindings. Returns the data of argument `o` after checking, in this
// order: it is a numpy.ndarray (TypeError), or None when `access` has kOptional (returns null);
// its dtype is `want` (TypeError); it is C-contiguous (ValueError); it has the expected element
// count or shape (ValueError); with kWrite, it is writeable (ValueError). Messages start with the
// argument's name: "out: expected dtype float32, got float64".
inline void* array_data(py::handle o, const ArgName& name, const py::dtype& want, const Extent& extent,
                        unsigned access = kRead) {
  if (o.is_none()) {
    if (access & kOptional) return nullptr;
    throw py::type_error(name.str() + ": expected a numpy.ndarray, got None");
  }
  const auto& api = py::detail::npy_api::get();
  if (!api.PyArray_Check_(o.ptr())) throw py::type_error(name.str() + ": expected a numpy.ndarray, got " + type_str(o));
  const auto* a = py::detail::array_proxy(o.ptr());
  if (!api.PyArray_EquivTypes_(a->descr, want.ptr()))
    throw py::type_error(name.str() + ": expected dtype " + std::string(py::str(want)) + ", got " +
                         std::string(py::str(py::handle(a->descr))));
  if (!(a->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_))
    throw py::value_error(name.str() + ": expected a C-contiguous array");
  if (extent.dims) {
    bool same = a->nd == extent.ndim;
    for (int d = 0; same && d < a->nd; ++d) same = a->dimensions[d] == extent.dims[d];
    if (!same)
      throw py::value_error(name.str() + ": expected shape " + shape_str(extent.dims, extent.ndim) + ", got " +
                            shape_str(a->dimensions, a->nd));
  } else if (extent.count >= 0) {
    int64_t size = 1;
    for (int d = 0; d < a->nd; ++d) size *= a->dimensions[d];
    if (size != extent.count)
      throw py::value_error(name.str() + ": expected " + std::to_string(extent.count) + " elements, got " +
                            std::to_string(size) + " (shape " + shape_str(a->dimensions, a->nd) + ")");
  }
  if ((access & kWrite) && !(a->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_))
    throw py::value_error(name.str() + ": expected a writeable array, got a read-only one");
  return a->data;
}

// Typed forms: an array of C++ element type T, or of kernel element type `dt`.
template <typename T>
T* array_arg(py::handle o, const ArgName& name, const Extent& extent, unsigned access = kRead) {
  return static_cast<T*>(array_data(o, name, py::dtype::of<T>(), extent, access));
}
inline void* array_arg(py::handle o, const ArgName& name, DType dt, const Extent& extent, unsigned access = kRead) {
  return array_data(o, name, numpy_dtype(dt), extent, access);
}

// The kernel element type of array argument `o`: float32 or float64, or also uint8 when
// `allow_u8`; TypeError otherwise (the checks of array_arg follow with this dtype).
inline DType dtype_of(py::handle o, const ArgName& name, bool allow_u8 = false) {
  const auto& api = py::detail::npy_api::get();
  if (o.is_none() || !api.PyArray_Check_(o.ptr()))
    throw py::type_error(name.str() + ": expected a numpy.ndarray, got " + type_str(o));
  const py::dtype dt = py::reinterpret_borrow<py::array>(o).dtype();
  if (dt.byteorder() != '>') {
    if (dt.kind() == 'f' && dt.itemsize() == 4) return DType::f32;
    if (dt.kind() == 'f' && dt.itemsize() == 8) return DType::f64;
    if (allow_u8 && dt.kind() == 'u' && dt.itemsize() == 1) return DType::u8;
  }
  throw py::type_error(name.str() + (allow_u8 ? ": expected a uint8, float32 or float64 array, got dtype "
                                              : ": expected a float32 or float64 array, got dtype ") +
                       std::string(py::str(dt)));
}

// The rows and columns of 2-D array argument `o` (already checked by array_arg); ValueError naming
// it otherwise.
inline void matrix_dims(py::handle o, const char* name, int64_t& rows, int64_t& cols) {
  const auto* a = py::detail::array_proxy(o.ptr());
  if (a->nd != 2)
    throw py::value_error(std::string(name) + ": expected a 2-D array, got " + std::to_string(a->nd) + " dimensions");
  rows = a->dimensions[0];
  cols = a->dimensions[1];
}

// True when [a, a + abytes) and [b, b + bbytes) share a byte (a null pointer, an array not given,
// shares none).
inline bool overlaps(const void* a, int64_t abytes, const void* b, int64_t bbytes) {
  auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return a && b && abytes > 0 && bbytes > 0 && x < y + static_cast<uintptr_t>(bbytes) &&
         y < x + static_cast<uintptr_t>(abytes);
}

void bind_runtime(py::module_& m);
void bind_optim(py::module_& m);
void bind_norm(py::module_& m);
void bind_augment(py::module_& m);
void bind_conv(py::module_& m);
void bind_nn(py::module_& m);
void bind_kernels(py::module_& m);

}  // namespace cnnkit::bind
