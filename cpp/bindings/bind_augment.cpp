// Image-kernel bindings: marshalling only; cnnkit.augment validates and allocates. Sizes are
// re-checked so a misuse cannot read or write out of bounds.
#include <string>

#include "cnnkit/augment.h"
#include "common.h"

namespace cnnkit::bind {

void bind_augment(py::module_& m) {
  // Mixing kernels: x (N, S) float32/float64, out like x (not overlapping); partner indices perm
  // (N,) int64 into an array of M images (x itself, or a pool).
  struct MixArrays {
    DType dt;
    const void* x;
    void* out;
  };
  auto mix_arrays = [](const py::array& x, const py::array& out, int64_t N, int64_t S) {
    if (N < 0 || S < 0) throw py::value_error("shape: expected N, S >= 0");
    const DType dt = dtype_of(x, "x");
    const void* px = array_arg(x, "x", dt, N * S);
    void* po = array_arg(out, "out", dt, N * S, kWrite);
    if (overlaps(px, N * S * dtype_size(dt), po, N * S * dtype_size(dt))) throw py::value_error("out: must not overlap x");
    return MixArrays{dt, px, po};
  };
  auto partners = [](const py::array& perm, int64_t N, int64_t M) {
    const int64_t* pp = array_arg<int64_t>(perm, "perm", N);
    for (int64_t i = 0; i < N; ++i)
      if (pp[i] < 0 || pp[i] >= M) throw py::value_error("perm: entries must lie in [0, " + std::to_string(M) + ")");
    return pp;
  };
  m.def(
      "augment_blend",
      [mix_arrays, partners](const py::array& x, const py::array& out, const py::array& perm, const py::array& lam,
                             int64_t N, int64_t S, const py::object& pool, int64_t M) {
        // Partners index x itself, or `pool` (M images of S elements) when given.
        const MixArrays a = mix_arrays(x, out, N, S);
        const void* src = a.x;
        if (pool.is_none()) {
          M = N;
        } else {
          if (M < 1) throw py::value_error("pool: expected at least one image");
          src = array_arg(pool, "pool", a.dt, M * S);
          if (overlaps(src, M * S * dtype_size(a.dt), a.out, N * S * dtype_size(a.dt)))
            throw py::value_error("out: must not overlap pool");
        }
        const int64_t* pp = partners(perm, N, M);
        const double* pl = array_arg<double>(lam, "lam", N);
        py::gil_scoped_release nogil;
        augment::blend(a.dt, a.x, src, pp, pl, a.out, N, S);
      },
      py::arg("x"), py::arg("out"), py::arg("perm"), py::arg("lam"), py::arg("N"), py::arg("S"),
      py::arg("pool") = py::none(), py::arg("M") = 0);
  m.def(
      "augment_fill_boxes",
      [](const py::array& x, const py::array& out, int64_t N, int64_t H, int64_t W, int64_t C, bool nhwc,
         const py::array& boxes, int64_t K, int mode, const py::array& values) {
        if (N < 0 || H < 1 || W < 1 || C < 1 || C > 64 || K < 0 || (mode != 0 && mode != 1))
          throw py::value_error("shape: expected N >= 0, H, W >= 1, 1 <= C <= 64, K >= 0, mode 0 or 1");
        const int64_t S = H * W * C;
        const DType dt = dtype_of(x, "images", /*allow_u8=*/true);
        const void* px = array_arg(x, "images", dt, N * S);
        void* po = array_arg(out, "out", dt, N * S, kWrite);
        const int64_t esz = dtype_size(dt);
        if (px != po && overlaps(px, N * S * esz, po, N * S * esz)) throw py::value_error("out: overlaps images");
        const int64_t* pb = array_arg<int64_t>(boxes, "boxes", N * K * 4);
        for (int64_t i = 0; i < N * K; ++i) {
          const int64_t* b = pb + 4 * i;
          if (b[0] < 0 || b[1] < 0 || b[2] > H || b[3] > W || b[0] > b[2] || b[1] > b[3])
            throw py::value_error("boxes: each (y0, x0, y1, x1) must satisfy 0 <= y0 <= y1 <= H, 0 <= x0 <= x1 <= W");
        }
        const double* pv = array_arg<double>(values, "fill", C);
        py::gil_scoped_release nogil;
        augment::fill_boxes(dt, px, po, N, H, W, C, nhwc, pb, K, mode, pv);
      },
      py::arg("images"), py::arg("out"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("nhwc"),
      py::arg("boxes"), py::arg("K"), py::arg("mode"), py::arg("values"));
  m.def(
      "augment_equalize_cv_lut",
      [](const py::array& hist, int64_t count) {
        if (count < 0) throw py::value_error("count: expected >= 0");
        const int64_t* ph = array_arg<int64_t>(hist, "hist", 256 * count);
        py::array_t<uint8_t> lut(256 * count);
        uint8_t* pl = lut.mutable_data();
        {
          py::gil_scoped_release nogil;
          augment::equalize_cv_lut(ph, pl, count);
        }
        return lut;
      },
      py::arg("hist"), py::arg("count"));
  m.def(
      "augment_paste_boxes",
      [mix_arrays, partners](const py::array& x, const py::array& out, const py::array& perm,
                             const py::array& boxes, int64_t N, int64_t C, int64_t H, int64_t W) {
        if (C < 1 || H < 1 || W < 1) throw py::value_error("shape: expected C, H, W >= 1");
        const MixArrays a = mix_arrays(x, out, N, C * H * W);
        const int64_t* pp = partners(perm, N, N);
        const int64_t* pb = array_arg<int64_t>(boxes, "boxes", 4 * N);
        for (int64_t i = 0; i < N; ++i) {
          const int64_t* b = pb + 4 * i;
          if (b[0] < 0 || b[1] < 0 || b[2] > H || b[3] > W || b[0] > b[2] || b[1] > b[3])
            throw py::value_error("boxes: each (y0, x0, y1, x1) must satisfy 0 <= y0 <= y1 <= H, 0 <= x0 <= x1 <= W");
        }
        py::gil_scoped_release nogil;
        augment::paste_boxes(a.dt, a.x, pp, pb, a.out, N, C, H, W);
      },
      py::arg("x"), py::arg("out"), py::arg("perm"), py::arg("boxes"), py::arg("N"), py::arg("C"), py::arg("H"),
      py::arg("W"));
  m.def(
      "augment_normalize_u8",
      [](const py::array& x, const py::array& out, int64_t N, int64_t P, int64_t C, bool nchw_out,
         const py::array& scale, const py::array& hi, const py::array& lo, bool per_image) {
        if (N < 0 || P < 0 || C < 1) throw py::value_error("shape: expected N, P >= 0 and C >= 1");
        const uint8_t* px = array_arg<uint8_t>(x, "images", N * P * C);
        float* py_ = array_arg<float>(out, "out", N * P * C, kWrite);
        const int64_t k = per_image ? N * C : C;
        const float* ps = array_arg<float>(scale, "scale", k);
        const float* ph = array_arg<float>(hi, "hi", k);
        const float* pl = array_arg<float>(lo, "lo", k);
        py::gil_scoped_release nogil;
        augment::normalize_u8(px, py_, N, P, C, nchw_out, ps, ph, pl, per_image);
      },
      py::arg("images"), py::arg("out"), py::arg("N"), py::arg("P"), py::arg("C"), py::arg("nchw_out"),
      py::arg("scale"), py::arg("hi"), py::arg("lo"), py::arg("per_image"));
  m.def(
      "augment_image_stats_u8",
      [](const py::array& x, int64_t N, int64_t PC) {
        if (N < 0 || PC < 0) throw py::value_error("shape: expected N, PC >= 0");
        const uint8_t* px = array_arg<uint8_t>(x, "images", N * PC);
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
        const uint8_t* px = array_arg<uint8_t>(x, "images", N * P * C);
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
        const uint8_t* px = array_arg<uint8_t>(x, "images", N * P * C);
        uint8_t* po = array_arg<uint8_t>(out, "out", N * P * C, kWrite);
        const uint8_t* pl = array_arg<uint8_t>(lut, "lut", N * C * 256);
        py::gil_scoped_release nogil;
        augment::lut_u8(px, po, N, P, C, pl);
      },
      py::arg("images"), py::arg("out"), py::arg("N"), py::arg("P"), py::arg("C"), py::arg("lut"),
      "out = lut[n, c, images] with lut of shape (N, C, 256).");
  // ---- image ops (cnnkit.augment._ops validates; these re-check sizes and ranges) ----
  auto u8_images = [](const py::array& x, const py::array& y, int64_t N, int64_t H, int64_t W, int64_t C,
                      int64_t OH, int64_t OW) {
    if (N < 0 || H < 1 || W < 1 || C < 1 || OH < 1 || OW < 1)
      throw py::value_error("shape: expected N >= 0 and positive sizes");
    const uint8_t* px = array_arg<uint8_t>(x, "images", N * H * W * C);
    uint8_t* py_ = array_arg<uint8_t>(y, "out", N * OH * OW * C, kWrite);
    if (overlaps(px, N * H * W * C, py_, N * OH * OW * C)) throw py::value_error("out: must not overlap images");
    return std::make_pair(px, py_);
  };
  m.def(
      "augment_apply_ops",
      [u8_images](const py::array& x, const py::array& y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t K,
                  const py::array& codes, const py::array& params, bool bilinear, const py::object& fill) {
        if (K < 0) throw py::value_error("K: expected >= 0");
        auto [px, py_] = u8_images(x, y, N, H, W, C, H, W);
        const int32_t* pc = array_arg<int32_t>(codes, "ops", N * K);
        const double* pp = array_arg<double>(params, "params", N * K * augment::kOpParams);
        for (int64_t i = 0; i < N * K; ++i) {
          if (pc[i] < 0 || pc[i] > int32_t(augment::ImageOp::kVFlip)) throw py::value_error("ops: unknown op code");
          if (pc[i] == int32_t(augment::ImageOp::kPosterize) &&
              !(pp[i * augment::kOpParams] >= 0 && pp[i * augment::kOpParams] <= 8))
            throw py::value_error("magnitudes: posterize bits must lie in [0, 8]");
        }
        const double* pf = array_arg<double>(fill, "fill", C, kOptional);
        py::gil_scoped_release nogil;
        augment::apply_ops_u8(px, py_, N, H, W, C, K, pc, pp, bilinear, pf);
      },
      py::arg("images"), py::arg("out"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("K"),
      py::arg("codes"), py::arg("params"), py::arg("bilinear"), py::arg("fill"));
  m.def(
      "augment_resize",
      [u8_images](const py::array& x, const py::array& y, int64_t N, int64_t H, int64_t W, int64_t C,
                  const py::array& boxes, int64_t OH, int64_t OW, bool antialias) {
        auto [px, py_] = u8_images(x, y, N, H, W, C, OH, OW);
        const int64_t* pb = array_arg<int64_t>(boxes, "boxes", 4 * N);
        for (int64_t i = 0; i < N; ++i) {
          const int64_t* b = pb + 4 * i;
          if (b[0] < 0 || b[1] < 0 || b[2] < 1 || b[3] < 1 || b[0] + b[2] > H || b[1] + b[3] > W)
            throw py::value_error("boxes: expected (top, left, height, width) inside the image");
        }
        py::gil_scoped_release nogil;
        augment::resize_u8(px, py_, N, H, W, C, pb, OH, OW, antialias);
      },
      py::arg("images"), py::arg("out"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("boxes"),
      py::arg("OH"), py::arg("OW"), py::arg("antialias"));
  m.def(
      "augment_remap",
      [u8_images](const py::array& x, const py::array& y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH,
                  int64_t OW, const py::array& iy, const py::array& ix, const py::array& fill) {
        auto [px, py_] = u8_images(x, y, N, H, W, C, OH, OW);
        const int64_t* piy = array_arg<int64_t>(iy, "rows", N * OH);
        const int64_t* pix = array_arg<int64_t>(ix, "cols", N * OW);
        const uint8_t* pf = array_arg<uint8_t>(fill, "fill", C);
        for (int64_t i = 0; i < N * OH; ++i)
          if (piy[i] >= H) throw py::value_error("rows: index out of range");
        for (int64_t i = 0; i < N * OW; ++i)
          if (pix[i] >= W) throw py::value_error("cols: index out of range");
        py::gil_scoped_release nogil;
        augment::remap_u8(px, py_, N, H, W, C, OH, OW, piy, pix, pf);
      },
      py::arg("images"), py::arg("out"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("OH"),
      py::arg("OW"), py::arg("rows"), py::arg("cols"), py::arg("fill"));
  m.def(
      "augment_clahe",
      [u8_images](const py::array& x, const py::array& y, int64_t N, int64_t H, int64_t W, int64_t C,
                  int64_t tiles_x, int64_t tiles_y, double clip_limit) {
        if (tiles_x < 1 || tiles_y < 1) throw py::value_error("tile_grid_size: expected positive tile counts");
        auto [px, py_] = u8_images(x, y, N, H, W, C, H, W);
        py::gil_scoped_release nogil;
        augment::clahe_u8(px, py_, N, H, W, C, tiles_x, tiles_y, clip_limit);
      },
      py::arg("images"), py::arg("out"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("tiles_x"),
      py::arg("tiles_y"), py::arg("clip_limit"));
}

}  // namespace cnnkit::bind
