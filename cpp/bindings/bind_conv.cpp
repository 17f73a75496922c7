// Conv bindings: marshalling only. cnnkit.ops.conv validates arguments, resolves padding and owns
// allocation; these re-check every array against the geometry so a misuse can never read or write
// out of bounds.
#include <string>

#include "cnnkit/conv.h"
#include "common.h"

namespace cnnkit::bind {
namespace {

// The checks every geometry passes before a kernel sees it (cnnkit.ops.conv checks the same, with
// friendlier messages, before it builds one).
conv::Geom checked_geom(const conv::Geom& g) {
  if (g.N < 0 || g.C < 1 || g.H < 1 || g.W < 1 || g.K < 1 || g.Ho < 0 || g.Wo < 0 || g.G < 1 || g.kh < 1 ||
      g.kw < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.C % g.G || g.K % g.G)
    throw py::value_error("geometry: inconsistent convolution geometry");
  return g;
}

int64_t wcount(const conv::Geom& g) { return g.K * g.Cg() * g.kh * g.kw; }

}  // namespace

void bind_conv(py::module_& m) {
  py::class_<conv::Geom>(m, "ConvGeom",
                         "A checked convolution geometry (cnnkit::conv::Geom): input N, C, H, W; output "
                         "channels K and size Ho, Wo; groups G; kernel kh, kw; stride sh, sw; dilation dh, dw; "
                         "top/left padding pt, pl; NHWC when nhwc. Built once by cnnkit.ops.conv and passed "
                         "to every pass.")
      .def(py::init([](int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo, int64_t G,
                       int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt,
                       int64_t pl, bool nhwc) {
             return checked_geom(conv::Geom{N, C, H, W, K, Ho, Wo, G, kh, kw, sh, sw, dh, dw, pt, pl, nhwc});
           }),
           py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("K"), py::arg("Ho"), py::arg("Wo"),
           py::arg("G"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("dh"), py::arg("dw"),
           py::arg("pt"), py::arg("pl"), py::arg("nhwc"))
      .def_readonly("N", &conv::Geom::N)
      .def_readonly("C", &conv::Geom::C)
      .def_readonly("H", &conv::Geom::H)
      .def_readonly("W", &conv::Geom::W)
      .def_readonly("K", &conv::Geom::K)
      .def_readonly("Ho", &conv::Geom::Ho)
      .def_readonly("Wo", &conv::Geom::Wo)
      .def_readonly("G", &conv::Geom::G)
      .def_readonly("kh", &conv::Geom::kh)
      .def_readonly("kw", &conv::Geom::kw)
      .def_readonly("sh", &conv::Geom::sh)
      .def_readonly("sw", &conv::Geom::sw)
      .def_readonly("dh", &conv::Geom::dh)
      .def_readonly("dw", &conv::Geom::dw)
      .def_readonly("pt", &conv::Geom::pt)
      .def_readonly("pl", &conv::Geom::pl)
      .def_readonly("nhwc", &conv::Geom::nhwc)
      .def("__repr__", [](const conv::Geom& g) {
        return "ConvGeom(N=" + std::to_string(g.N) + ", C=" + std::to_string(g.C) + ", H=" + std::to_string(g.H) +
               ", W=" + std::to_string(g.W) + ", K=" + std::to_string(g.K) + ", Ho=" + std::to_string(g.Ho) +
               ", Wo=" + std::to_string(g.Wo) + ", G=" + std::to_string(g.G) + ", kh=" + std::to_string(g.kh) +
               ", kw=" + std::to_string(g.kw) + ", sh=" + std::to_string(g.sh) + ", sw=" + std::to_string(g.sw) +
               ", dh=" + std::to_string(g.dh) + ", dw=" + std::to_string(g.dw) + ", pt=" + std::to_string(g.pt) +
               ", pl=" + std::to_string(g.pl) + ", nhwc=" + (g.nhwc ? "True" : "False") + ")";
      });
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
      "conv_algorithm", [](const conv::Geom& g, int pass) { return std::string(conv::algorithm(g, pass)); },
      py::arg("geom"), py::arg("pass_"));
  m.def(
      "conv_forward",
      [](const py::object& x, const py::object& w, const py::object& b, const py::object& y, const conv::Geom& g) {
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
      [](const py::object& dy, const py::object& w, const py::object& dx, const conv::Geom& g) {
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
         const conv::Geom& g) {
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
