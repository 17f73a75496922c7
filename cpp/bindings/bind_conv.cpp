// Conv bindings: marshalling only. cnnkit.ops.conv validates arguments, resolves padding and owns
// allocation; these re-check every array against the geometry so a misuse can never read or write
// out of bounds.
#include <string>

#include "cnnkit/conv.h"
#include "common.h"

namespace cnnkit::bind {
namespace {

conv::Geom make_geom(const py::tuple& t) {
  if (t.size() != 17) throw py::value_error("geometry: expected 17 integers");
  int64_t v[16];
  for (int i = 0; i < 16; ++i) v[i] = t[i].cast<int64_t>();
  conv::Geom g{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13],
               v[14], v[15], t[16].cast<bool>()};
  if (g.N < 0 || g.C < 1 || g.H < 1 || g.W < 1 || g.K < 1 || g.Ho < 0 || g.Wo < 0 || g.G < 1 || g.kh < 1 ||
      g.kw < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.C % g.G || g.K % g.G)
    throw py::value_error("geometry: inconsistent convolution geometry");
  return g;
}

int64_t wcount(const conv::Geom& g) { return g.K * g.Cg() * g.kh * g.kw; }

}  // namespace

void bind_conv(py::module_& m) {
  m.def(
      "conv_set_blas",
      [](uintptr_t sgemm, uintptr_t dgemm, uintptr_t set_threads) {
        conv::set_blas(reinterpret_cast<conv::SgemmFn>(sgemm), reinterpret_cast<conv::DgemmFn>(dgemm),
                       reinterpret_cast<conv::BlasThreadsFn>(set_threads));
      },
      py::arg("sgemm"), py::arg("dgemm"), py::arg("set_threads"),
      "Register cblas_sgemm / cblas_dgemm / openblas_set_num_threads by address.");
  m.def("conv_have_blas", &conv::have_blas);
  m.def(
      "conv_algorithm", [](const py::tuple& geom, int pass) { return std::string(conv::algorithm(make_geom(geom), pass)); },
      py::arg("geom"), py::arg("pass_"));
  m.def(
      "conv_forward",
      [](const py::object& x, const py::object& w, const py::object& b, const py::object& y, const py::tuple& geom) {
        const auto g = make_geom(geom);
        const DType dt = dtype_of(x, "x");
        const void* px = array_arg(x, "x", dt, g.N * g.C * g.H * g.W);
        const void* pw = array_arg(w, "weight", dt, wcount(g));
        const void* pb = array_arg(b, "bias", dt, g.K, kOptional);
        void* py_ = array_arg(y, "out", dt, g.N * g.K * g.Ho * g.Wo, kWrite);
        py::gil_scoped_release nogil;
        conv::forward(dt, px, pw, pb, py_, g);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("geom"));
  m.def(
      "conv_backward_input",
      [](const py::object& dy, const py::object& w, const py::object& dx, const py::tuple& geom) {
        const auto g = make_geom(geom);
        const DType dt = dtype_of(dy, "grad_out");
        const void* pdy = array_arg(dy, "grad_out", dt, g.N * g.K * g.Ho * g.Wo);
        const void* pw = array_arg(w, "weight", dt, wcount(g));
        void* pdx = array_arg(dx, "grad_input", dt, g.N * g.C * g.H * g.W, kWrite);
        py::gil_scoped_release nogil;
        conv::backward_input(dt, pdy, pw, pdx, g);
      },
      py::arg("grad_out"), py::arg("weight"), py::arg("grad_input"), py::arg("geom"));
  m.def(
      "conv_backward_weight",
      [](const py::object& dy, const py::object& x, const py::object& dw, const py::object& db,
         const py::tuple& geom) {
        const auto g = make_geom(geom);
        const DType dt = dtype_of(dy, "grad_out");
        const void* pdy = array_arg(dy, "grad_out", dt, g.N * g.K * g.Ho * g.Wo);
        const void* px = array_arg(x, "x", dt, g.N * g.C * g.H * g.W);
        void* pdw = array_arg(dw, "grad_weight", dt, wcount(g), kWrite | kOptional);
        void* pdb = array_arg(db, "grad_bias", dt, g.K, kWrite | kOptional);
        py::gil_scoped_release nogil;
        conv::backward_weight(dt, pdy, px, pdw, pdb, g);
      },
      py::arg("grad_out"), py::arg("x"), py::arg("grad_weight"), py::arg("grad_bias"), py::arg("geom"));
}

}  // namespace cnnkit::bind
