// cnnkit._core: the compiled core. Marshalling only; kernels live in cpp/src.
#include "common.h"

PYBIND11_MODULE(_core, m) {
  namespace py = pybind11;
  m.doc() = "cnnkit compiled core (private; use the cnnkit package)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const cnnkit::value_error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const cnnkit::type_error& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });
  cnnkit::bind::bind_runtime(m);
  cnnkit::bind::bind_optim(m);
  cnnkit::bind::bind_norm(m);
  cnnkit::bind::bind_augment(m);
  cnnkit::bind::bind_conv(m);
  cnnkit::bind::bind_nn(m);
  cnnkit::bind::bind_kernels(m);
}
