// Image-kernel bindings: marshalling only; cnnkit.augment validates and allocates. Sizes are
// re-checked so a misuse cannot read or write out of bounds.
#include <string>

#include "cnnkit/augment.h"
#include "common.h"

namespace cnnkit::bind {
namespace {

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

}  // namespace

void bind_augment(py::module_& m) {
  m.def(
      "augment_normalize_u8",
      [](const py::array& x, const py::array& out, int64_t N, int64_t P, int64_t C, bool nchw_out,
         const py::array& scale, const py::array& hi, const py::array& lo, bool per_image) {
        if (N < 0 || P < 0 || C < 1) throw py::value_error("shape: expected N, P >= 0 and C >= 1");
        const uint8_t* px = checked<uint8_t>(x, "images", N * P * C, false);
        float* py_ = checked<float>(out, "out", N * P * C, true);
        const int64_t k = per_image ? N * C : C;
        const float* ps = checked<float>(scale, "scale", k, false);
        const float* ph = checked<float>(hi, "hi", k, false);
        const float* pl = checked<float>(lo, "lo", k, false);
        py::gil_scoped_release nogil;
        augment::normalize_u8(px, py_, N, P, C, nchw_out, ps, ph, pl, per_image);
      },
      py::arg("images"), py::arg("out"), py::arg("N"), py::arg("P"), py::arg("C"), py::arg("nchw_out"),
      py::arg("scale"), py::arg("hi"), py::arg("lo"), py::arg("per_image"));
  m.def(
      "augment_image_stats_u8",
      [](const py::array& x, int64_t N, int64_t PC) {
        if (N < 0 || PC < 0) throw py::value_error("shape: expected N, PC >= 0");
        const uint8_t* px = checked<uint8_t>(x, "images", N * PC, false);
        py::array_t<int64_t> s(N), q(N);
        py::array_t<uint8_t> lo(N), hi(N);
        int64_t* ps = s.mutable_data();
        int64_t* pq = q.mutable_data();
        uint8_t* pl = lo.mutable_data();
        uint8_t* ph = hi.mutable_data();
        {
          py::gil_scoped_release nogil;
          augment::image_stats_u8(px, N, PC, ps, pq, pl, ph);
        }
        return py::make_tuple(s, q, lo, hi);
      },
      py::arg("images"), py::arg("N"), py::arg("PC"),
      "Exact per-image sum, sum of squares, min and max of uint8 images.");
  m.def(
      "augment_histogram_u8",
      [](const py::array& x, int64_t N, int64_t P, int64_t C) {
        if (N < 0 || P < 0 || C < 1) throw py::value_error("shape: expected N, P >= 0 and C >= 1");
        const uint8_t* px = checked<uint8_t>(x, "images", N * P * C, false);
        py::array_t<int64_t> h({N, C, int64_t(256)});
        int64_t* ph = h.mutable_data();
        {
          py::gil_scoped_release nogil;
          augment::histogram_u8(px, N, P, C, ph);
        }
        return h;
      },
      py::arg("images"), py::arg("N"), py::arg("P"), py::arg("C"),
      "Per-image, per-channel histograms, shape (N, C, 256).");
  m.def(
      "augment_lut_u8",
      [](const py::array& x, const py::array& out, int64_t N, int64_t P, int64_t C, const py::array& lut) {
        if (N < 0 || P < 0 || C < 1) throw py::value_error("shape: expected N, P >= 0 and C >= 1");
        const uint8_t* px = checked<uint8_t>(x, "images", N * P * C, false);
        uint8_t* po = checked<uint8_t>(out, "out", N * P * C, true);
        const uint8_t* pl = checked<uint8_t>(lut, "lut", N * C * 256, false);
        py::gil_scoped_release nogil;
        augment::lut_u8(px, po, N, P, C, pl);
      },
      py::arg("images"), py::arg("out"), py::arg("N"), py::arg("P"), py::arg("C"), py::arg("lut"),
      "out = lut[n, c, images] with lut of shape (N, C, 256).");
}

}  // namespace cnnkit::bind
