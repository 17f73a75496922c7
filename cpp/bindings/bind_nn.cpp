// Layer-kernel bindings for cnnkit.nn: marshalling and size checks only.
#include <string>

#include "cnnkit/nn.h"
#include "common.h"

namespace cnnkit::bind {
namespace {

nn::PoolGeom geom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t kh, int64_t kw,
                  int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool nhwc, int mode) {
  if (mode < 0 || mode > 2) throw py::value_error("mode: expected 0 (max), 1 or 2 (average)");
  if (N < 0 || C < 1 || H < 1 || W < 1 || OH < 1 || OW < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 ||
      pw < 0 || 2 * ph > kh || 2 * pw > kw || (OH - 1) * sh >= H + ph || (OW - 1) * sw >= W + pw ||
      H * W > (int64_t(1) << 31))
    throw py::value_error("pool2d: inconsistent geometry");
  return {N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, nhwc};
}

}  // namespace

void bind_nn(py::module_& m) {
  m.def(
      "pool2d_forward",
      [](const py::array& x, const py::array& y, const py::object& idx, int64_t N, int64_t C, int64_t H, int64_t W,
         int64_t OH, int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool nhwc,
         int mode) {
        const nn::PoolGeom g = geom(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, nhwc, mode);
        const float* px = array_arg<float>(x, "x", N * C * H * W);
        float* py_ = array_arg<float>(y, "y", N * C * OH * OW, kWrite);
        int32_t* pi = nullptr;
        if (mode == 0) pi = array_arg<int32_t>(idx, "idx", N * C * OH * OW, kWrite);
        if (overlaps(px, N * C * H * W * 4, py_, N * C * OH * OW * 4)) throw py::value_error("y: must not overlap x");
        py::gil_scoped_release nogil;
        nn::pool2d_forward(px, py_, pi, g, mode);
      },
      py::arg("x"), py::arg("y"), py::arg("idx"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
      py::arg("OH"), py::arg("OW"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("nhwc"), py::arg("mode"));
  m.def(
      "pool2d_backward",
      [](const py::array& gy, const py::array& gx, const py::object& idx, int64_t N, int64_t C, int64_t H, int64_t W,
         int64_t OH, int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool nhwc,
         int mode) {
        const nn::PoolGeom g = geom(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, nhwc, mode);
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
      py::arg("grad"), py::arg("gx"), py::arg("idx"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
      py::arg("OH"), py::arg("OW"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("nhwc"), py::arg("mode"));
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
