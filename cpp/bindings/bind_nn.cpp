// Layer-kernel bindings for cnnkit.nn: marshalling and size checks only.
#include <string>

#include "cnnkit/nn.h"
#include "common.h"

namespace cnnkit::bind {
namespace {

// The checks every pooling geometry passes before a kernel sees it.
nn::PoolGeom checked_geom(const nn::PoolGeom& g) {
  if (g.N < 0 || g.C < 1 || g.H < 1 || g.W < 1 || g.OH < 1 || g.OW < 1 || g.kh < 1 || g.kw < 1 || g.sh < 1 ||
      g.sw < 1 || g.ph < 0 || g.pw < 0 || 2 * g.ph > g.kh || 2 * g.pw > g.kw || (g.OH - 1) * g.sh >= g.H + g.ph ||
      (g.OW - 1) * g.sw >= g.W + g.pw || g.H * g.W > (int64_t(1) << 31))
    throw py::value_error("pool2d: inconsistent geometry");
  return g;
}

void check_mode(int mode) {
  if (mode < 0 || mode > 2) throw py::value_error("mode: expected 0 (max), 1 or 2 (average)");
}

}  // namespace

void bind_nn(py::module_& m) {
  py::class_<nn::PoolGeom>(m, "PoolGeom",
                           "A checked 2-D pooling geometry (cnnkit::nn::PoolGeom): N images of C channels, "
                           "H x W in, OH x OW out, window kh x kw, stride sh x sw, padding ph x pw; NHWC when "
                           "nhwc. Built once per forward by cnnkit.nn's pooling layers and reused by backward.")
      .def(py::init([](int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool nhwc) {
             return checked_geom(nn::PoolGeom{N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, nhwc});
           }),
           py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("OH"), py::arg("OW"), py::arg("kh"),
           py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("nhwc"))
      .def_readonly("N", &nn::PoolGeom::N)
      .def_readonly("C", &nn::PoolGeom::C)
      .def_readonly("H", &nn::PoolGeom::H)
      .def_readonly("W", &nn::PoolGeom::W)
      .def_readonly("OH", &nn::PoolGeom::OH)
      .def_readonly("OW", &nn::PoolGeom::OW)
      .def_readonly("kh", &nn::PoolGeom::kh)
      .def_readonly("kw", &nn::PoolGeom::kw)
      .def_readonly("sh", &nn::PoolGeom::sh)
      .def_readonly("sw", &nn::PoolGeom::sw)
      .def_readonly("ph", &nn::PoolGeom::ph)
      .def_readonly("pw", &nn::PoolGeom::pw)
      .def_readonly("nhwc", &nn::PoolGeom::nhwc)
      .def(py::pickle(  // layers keep their last geometry; copying or pickling a layer copies it
          [](const nn::PoolGeom& g) {
            return py::make_tuple(g.N, g.C, g.H, g.W, g.OH, g.OW, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.nhwc);
          },
          [](const py::tuple& t) {
            if (t.size() != 13) throw py::value_error("PoolGeom: expected a state of 13 values");
            int64_t v[12];
            for (int i = 0; i < 12; ++i) v[i] = t[i].cast<int64_t>();
            return checked_geom(
                nn::PoolGeom{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], t[12].cast<bool>()});
          }))
      .def("__repr__", [](const nn::PoolGeom& g) {
        return "PoolGeom(N=" + std::to_string(g.N) + ", C=" + std::to_string(g.C) + ", H=" + std::to_string(g.H) +
               ", W=" + std::to_string(g.W) + ", OH=" + std::to_string(g.OH) + ", OW=" + std::to_string(g.OW) +
               ", kh=" + std::to_string(g.kh) + ", kw=" + std::to_string(g.kw) + ", sh=" + std::to_string(g.sh) +
               ", sw=" + std::to_string(g.sw) + ", ph=" + std::to_string(g.ph) + ", pw=" + std::to_string(g.pw) +
               ", nhwc=" + (g.nhwc ? "True" : "False") + ")";
      });
  m.def(
      "pool2d_forward",
      [](const py::array& x, const py::array& y, const py::object& idx, const nn::PoolGeom& g, int mode) {
        check_mode(mode);
        const int64_t N = g.N, C = g.C, H = g.H, W = g.W, OH = g.OH, OW = g.OW;
        const float* px = array_arg<float>(x, "x", N * C * H * W);
        float* py_ = array_arg<float>(y, "y", N * C * OH * OW, kWrite);
        int32_t* pi = nullptr;
        if (mode == 0) pi = array_arg<int32_t>(idx, "idx", N * C * OH * OW, kWrite);
        if (overlaps(px, N * C * H * W * 4, py_, N * C * OH * OW * 4)) throw py::value_error("y: must not overlap x");
        py::gil_scoped_release nogil;
        nn::pool2d_forward(px, py_, pi, g, mode);
      },
      py::arg("x"), py::arg("y"), py::arg("idx"), py::arg("geom"), py::arg("mode"));
  m.def(
      "pool2d_backward",
      [](const py::array& gy, const py::array& gx, const py::object& idx, const nn::PoolGeom& g, int mode) {
        check_mode(mode);
        const int64_t N = g.N, C = g.C, H = g.H, W = g.W, OH = g.OH, OW = g.OW;
        const float* pgy = array_arg<float>(gy, "grad", N * C * OH * OW);
        float* pgx = array_arg<float>(gx, "gx", N * C * H * W, kWrite);
        const int32_t* pi = nullptr;
        if (mode == 0) {
          pi = array_arg<int32_t>(idx, "idx", N * C * OH * OW);
          for (int64_t i = 0; i < N * C * OH * OW; ++i)
            if (pi[i] < 0 || pi[i] >= H * W) throw py::value_error("idx: position out of range");
        }
        py::gil_scoped_release nogil;
        nn::pool2d_backward(pgy, pgx, pi, g, mode);
      },
      py::arg("grad"), py::arg("gx"), py::arg("idx"), py::arg("geom"), py::arg("mode"));
  m.def(
      "global_avg_pool_forward",
      [](const py::array& x, const py::array& y, int64_t N, int64_t C, int64_t S, bool nhwc) {
        if (N < 0 || C < 1 || S < 1) throw py::value_error("shape: expected N >= 0, C >= 1, S >= 1");
        const float* px = array_arg<float>(x, "x", N * C * S);
        float* py_ = array_arg<float>(y, "y", N * C, kWrite);
        py::gil_scoped_release nogil;
        nn::global_avg_pool_forward(px, py_, N, C, S, nhwc);
      },
      py::arg("x"), py::arg("y"), py::arg("N"), py::arg("C"), py::arg("S"), py::arg("nhwc"));
  m.def(
      "global_avg_pool_backward",
      [](const py::array& gy, const py::array& gx, int64_t N, int64_t C, int64_t S, bool nhwc) {
        if (N < 0 || C < 1 || S < 1) throw py::value_error("shape: expected N >= 0, C >= 1, S >= 1");
        const float* pg = array_arg<float>(gy, "grad", N * C);
        float* px = array_arg<float>(gx, "gx", N * C * S, kWrite);
        py::gil_scoped_release nogil;
        nn::global_avg_pool_backward(pg, px, N, C, S, nhwc);
      },
      py::arg("grad"), py::arg("gx"), py::arg("N"), py::arg("C"), py::arg("S"), py::arg("nhwc"));
  m.def(
      "softmax_xent",
      [](const py::array& z, const py::object& labels, const py::object& soft, int64_t N, int64_t K, double eps,
         const py::object& grad, double scale) {
        if (N < 0 || K < 1) throw py::value_error("logits: expected N >= 0 and K >= 1");
        const float* pz = array_arg<float>(z, "logits", N * K);
        const int64_t* pl = nullptr;
        const float* ps = nullptr;
        if (!labels.is_none()) {
          pl = array_arg<int64_t>(labels, "labels", N);
          for (int64_t i = 0; i < N; ++i)
            if (pl[i] < 0 || pl[i] >= K) throw py::value_error("labels: class index out of range");
        } else {
          ps = array_arg<float>(soft, "soft", N * K);
        }
        float* pg = array_arg<float>(grad, "grad", N * K, kWrite | kOptional);
        py::array_t<double> loss(N);
        double* pls = loss.mutable_data();
        {
          py::gil_scoped_release nogil;
          nn::softmax_xent(pz, pl, ps, N, K, eps, pls, pg, scale);
        }
        return loss;
      },
      py::arg("logits"), py::arg("labels"), py::arg("soft"), py::arg("N"), py::arg("K"), py::arg("eps"),
      py::arg("grad"), py::arg("scale"));
}

}  // namespace cnnkit::bind
