// Conv bindings: marshalling only. cnnkit.ops.conv validates arguments, resolves padding and owns
// allocation; these re-check every array against the geometry so a misuse can never read or write
// out of bounds.
#include <string>
#include <utility>

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
  m.def("conv_winograd", &conv::winograd, py::arg("geom"), py::arg("pass_"));
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
  m.def(
      "conv_backward",
      [](const py::object& dy, const py::object& x, const py::object& w, const py::object& dx, const py::object& dw,
         const py::object& db, const conv::Geom& g) {
        const DType dt = dtype_of(dy, "grad_out");
        const void* pdy = array_arg(dy, "grad_out", dt, g.N * g.K * g.Ho * g.Wo);
        const void* px = array_arg(x, "x", dt, g.N * g.C * g.H * g.W);
        const void* pw = array_arg(w, "weight", dt, wcount(g));
        void* pdx = array_arg(dx, "grad_input", dt, g.N * g.C * g.H * g.W, kWrite | kOptional);
        void* pdw = array_arg(dw, "grad_weight", dt, wcount(g), kWrite | kOptional);
        void* pdb = array_arg(db, "grad_bias", dt, g.K, kWrite | kOptional);
        // (the outputs written in one pass over the images must not overlap an input or each other)
        const int64_t e = dtype_size(dt);
        const std::pair<const void*, int64_t> in[] = {
            {pdy, g.N * g.K * g.Ho * g.Wo * e}, {px, g.N * g.C * g.H * g.W * e}, {pw, wcount(g) * e}};
        const std::pair<const void*, int64_t> out[] = {
            {pdx, g.N * g.C * g.H * g.W * e}, {pdw, wcount(g) * e}, {pdb, g.K * e}};
        const char* in_name[] = {"grad_out", "x", "weight"};
        const char* out_name[] = {"grad_input", "grad_weight", "grad_bias"};
        for (int o = 0; o < 3; ++o) {
          for (int i = 0; i < 3; ++i)
            if (out[o].first && overlaps(out[o].first, out[o].second, in[i].first, in[i].second))
              throw py::value_error(std::string(out_name[o]) + ": must not overlap " + in_name[i]);
          for (int i = o + 1; i < 3; ++i)
            if (out[o].first && out[i].first && overlaps(out[o].first, out[o].second, out[i].first, out[i].second))
              throw py::value_error(std::string(out_name[o]) + ": must not overlap " + out_name[i]);
        }
        py::gil_scoped_release nogil;
        return conv::backward(dt, pdy, px, pw, pdx, pdw, pdb, g);  // (true: in one pass)
      },
      py::arg("grad_out"), py::arg("x"), py::arg("weight"), py::arg("grad_input"), py::arg("grad_weight"),
      py::arg("grad_bias"), py::arg("geom"));
  m.def(
      "conv2d_fused",
      [](const py::object& x, const py::object& w, const py::object& y, const conv::Geom& g, const py::object& b,
         const py::object& pre_scale, const py::object& pre_shift, bool pre_relu, const py::object& residual,
         bool post_relu, const py::object& stats_sum, const py::object& stats_sumsq) {
        const int64_t xn = g.N * g.C * g.H * g.W, yn = g.N * g.K * g.Ho * g.Wo;
        const auto* px = array_arg<float>(x, "x", xn);
        const auto* pw = array_arg<float>(w, "weight", wcount(g));
        auto* py_ = array_arg<float>(y, "out", yn, kWrite);
        const auto* pb = array_arg<float>(b, "bias", g.K, kOptional);
        const auto* ps = array_arg<float>(pre_scale, "pre_scale", g.C, kOptional);
        const auto* pt = array_arg<float>(pre_shift, "pre_shift", g.C, kOptional);
        const auto* pr = array_arg<float>(residual, "residual", yn, kOptional);
        auto* s1 = array_arg<double>(stats_sum, "stats_sum", g.K, kWrite | kOptional);
        auto* s2 = array_arg<double>(stats_sumsq, "stats_sumsq", g.K, kWrite | kOptional);
        const int64_t yb = yn * 4;
        if (overlaps(py_, yb, px, xn * 4) || overlaps(py_, yb, pw, wcount(g) * 4) || (pr && overlaps(py_, yb, pr, yb)))
          throw py::value_error("out: must not overlap x, weight or residual");
        const conv::Fused fu{ps, pt, pre_relu, pr, post_relu, s1, s2};
        const char* name;
        {
          py::gil_scoped_release nogil;
          name = conv::forward_fused(px, pw, pb, py_, g, fu);
        }
        return std::string(name);
      },
      py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("geom"), py::arg("bias"), py::arg("pre_scale"),
      py::arg("pre_shift"), py::arg("pre_relu"), py::arg("residual"), py::arg("post_relu"), py::arg("stats_sum"),
      py::arg("stats_sumsq"),
      "Forward convolution with the fused prologue (x -> max(pre_scale[c]*x + pre_shift[c], 0)) and epilogue "
      "(bias, per-channel shifted sums of y = conv + bias about y's first value, residual, ReLU) on cnnkit's own "
      "GEMM; returns the registry name of the entry that ran.");
  m.def(
      "conv2d_fused_backward_weight",
      [](const py::object& dy, const py::object& x, const py::object& dw, const py::object& db, const conv::Geom& g,
         const py::object& pre_scale, const py::object& pre_shift, bool pre_relu) {
        const int64_t xn = g.N * g.C * g.H * g.W, yn = g.N * g.K * g.Ho * g.Wo;
        const auto* pdy = array_arg<float>(dy, "grad_out", yn);
        const auto* px = array_arg<float>(x, "x", xn);
        auto* pdw = array_arg<float>(dw, "grad_weight", wcount(g), kWrite | kOptional);
        auto* pdb = array_arg<float>(db, "grad_bias", g.K, kWrite | kOptional);
        const auto* ps = array_arg<float>(pre_scale, "pre_scale", g.C, kOptional);
        const auto* pt = array_arg<float>(pre_shift, "pre_shift", g.C, kOptional);
        if ((pdw && (overlaps(pdw, wcount(g) * 4, px, xn * 4) || overlaps(pdw, wcount(g) * 4, pdy, yn * 4))) ||
            (pdb && (overlaps(pdb, g.K * 4, px, xn * 4) || overlaps(pdb, g.K * 4, pdy, yn * 4))))
          throw py::value_error("grad_weight, grad_bias: must not overlap x or grad_out");
        const conv::Fused fu{ps, pt, pre_relu, nullptr, false, nullptr, nullptr};
        const char* name;
        {
          py::gil_scoped_release nogil;
          name = conv::backward_weight_fused(pdy, px, pdw, pdb, g, fu);
        }
        return std::string(name);
      },
      py::arg("grad_out"), py::arg("x"), py::arg("grad_weight"), py::arg("grad_bias"), py::arg("geom"),
      py::arg("pre_scale"), py::arg("pre_shift"), py::arg("pre_relu"),
      "Weight and bias gradients of conv(max(pre_scale[c]*x + pre_shift[c], 0)) (the ReLU with pre_relu) on the "
      "GEMM path, the prologue applied while x is laid out; returns the registry name of the entry that ran "
      "(ValueError where the registry runs a direct kernel).");
  m.def(
      "conv2d_backward_weight_bn",
      [](const py::object& grad, const py::object& z, const py::object& mean, const py::object& A,
         const py::object& B, const py::object& D, const py::object& x, const py::object& dw, const py::object& db,
         const conv::Geom& g) {
        const int64_t xn = g.N * g.C * g.H * g.W, yn = g.N * g.K * g.Ho * g.Wo;
        const auto* pg = array_arg<float>(grad, "grad", yn);
        const auto* pz = array_arg<float>(z, "z", yn);
        const auto* pm = array_arg<double>(mean, "mean", g.K);
        const auto* pa = array_arg<double>(A, "A", g.K);
        const auto* pb = array_arg<double>(B, "B", g.K);
        const auto* pd = array_arg<double>(D, "D", g.K);
        const auto* px = array_arg<float>(x, "x", xn);
        auto* pdw = array_arg<float>(dw, "grad_weight", wcount(g), kWrite | kOptional);
        auto* pdb = array_arg<float>(db, "grad_bias", g.K, kWrite | kOptional);
        const int64_t wb = wcount(g) * 4;
        if ((pdw && (overlaps(pdw, wb, px, xn * 4) || overlaps(pdw, wb, pg, yn * 4) || overlaps(pdw, wb, pz, yn * 4))) ||
            (pdb && (overlaps(pdb, g.K * 4, px, xn * 4) || overlaps(pdb, g.K * 4, pg, yn * 4) ||
                     overlaps(pdb, g.K * 4, pz, yn * 4))))
          throw py::value_error("grad_weight, grad_bias: must not overlap x, grad or z");
        const char* name;
        {
          py::gil_scoped_release nogil;
          name = conv::backward_weight_bn_apply(pg, pz, pm, pa, pb, pd, px, pdw, pdb, g);
        }
        return std::string(name);
      },
      py::arg("grad"), py::arg("z"), py::arg("mean"), py::arg("A"), py::arg("B"), py::arg("D"), py::arg("x"),
      py::arg("grad_weight"), py::arg("grad_bias"), py::arg("geom"),
      "Weight and bias gradients of a convolution whose output z a training-mode batch norm took, from the gradient "
      "at the norm's output (grad, already masked by its ReLU) and the coefficients of the norm backward's apply pass "
      "(float64 per output channel: dy = A*grad - B - (z - mean)*D, as norm_backward_apply evaluates it), without "
      "writing dy; the stem kernel only (ValueError where the registry runs another); returns the entry's name.");
  m.def(
      "conv2d_fused_backward_input",
      [](const py::object& dy, const py::object& w, const py::object& dx, const conv::Geom& g, const py::object& x,
         const py::object& scale, const py::object& shift, bool relu, const py::object& center,
         const py::object& residual, const py::object& mask, int64_t residual_stride, const py::object& dy_apply,
         const py::object& grad_weight, const py::object& weight_geom) -> py::tuple {
        const int64_t xn = g.N * g.C * g.H * g.W, yn = g.N * g.K * g.Ho * g.Wo;
        // weight_geom: the weight gradient's own geometry (a strided 1x1; backward_input_fused checks it)
        conv::Geom wgeom = g;
        const bool wg_given = !weight_geom.is_none();
        if (wg_given) {
          if (!py::isinstance<conv::Geom>(weight_geom))
            throw py::type_error("weight_geom: expected a ConvGeom or None");
          if (grad_weight.is_none()) throw py::value_error("weight_geom: given without grad_weight");
          wgeom = weight_geom.cast<conv::Geom>();
        }
        const int64_t wxn = wgeom.N * wgeom.C * wgeom.H * wgeom.W;  // the weight gradient's input
        if (residual_stride < 1)
          throw py::value_error("residual_stride: expected an int >= 1, got " + std::to_string(residual_stride));
        const int64_t rstr = residual_stride, rn = g.N * g.C * ((g.H + rstr - 1) / rstr) * ((g.W + rstr - 1) / rstr);
        // dy_apply (g, z, mean, A, B, D[, mask_affine, pooled]): grad_out is written with the norm's
        // apply pass of them (norm_backward_apply's; with pooled, g holds one value per sample and
        // channel; with mask_affine = concat(scale, shift), g masked by fma(scale, z, shift) > 0)
        const bool apply = !dy_apply.is_none();
        py::tuple ap_t;
        if (apply) {
          if (!py::isinstance<py::tuple>(dy_apply) || (py::len(dy_apply) != 6 && py::len(dy_apply) != 8))
            throw py::type_error("dy_apply: expected a tuple (g, z, mean, A, B, D) or (g, z, mean, A, B, D, "
                                 "mask_affine, pooled), or None");
          ap_t = py::reinterpret_borrow<py::tuple>(dy_apply);
        }
        const bool ap_ext = apply && py::len(ap_t) == 8;
        if (ap_ext && !py::isinstance<py::bool_>(ap_t[7]))
          throw py::type_error("dy_apply[7] (pooled): expected a bool");
        const bool ap_pooled = ap_ext && ap_t[7].cast<bool>();
        // grad_out None with dy_apply and grad_weight: the apply pass's values are not kept
        const bool keep = !(apply && !grad_weight.is_none() && dy.is_none());
        if (keep && dy.is_none())
          throw py::type_error("grad_out: expected a float32 array (None only with dy_apply and grad_weight), got None");
        const auto* pdy = keep ? array_arg<float>(dy, "grad_out", yn, apply ? unsigned(kWrite) : unsigned(kRead))
                               : nullptr;
        const int64_t agn = ap_pooled ? g.N * g.K : yn;  // the values of the apply pass's g
        const float* ag = apply ? array_arg<float>(ap_t[0], "dy_apply g", agn) : nullptr;
        const float* amask = ap_ext ? array_arg<float>(ap_t[6], "dy_apply mask_affine", 2 * g.K, kOptional) : nullptr;
        const float* az = apply ? array_arg<float>(ap_t[1], "dy_apply z", yn) : nullptr;
        const double* am = apply ? array_arg<double>(ap_t[2], "dy_apply mean", g.K) : nullptr;
        const double* aA = apply ? array_arg<double>(ap_t[3], "dy_apply A", g.K) : nullptr;
        const double* aB = apply ? array_arg<double>(ap_t[4], "dy_apply B", g.K) : nullptr;
        const double* aD = apply ? array_arg<double>(ap_t[5], "dy_apply D", g.K) : nullptr;
        const auto* pw = array_arg<float>(w, "weight", wcount(g));
        auto* pdx = array_arg<float>(dx, "grad_input", xn, kWrite);
        // x and center None: no gradient epilogue (the plain input gradient; nothing else of it given)
        const bool epi = !x.is_none() || !center.is_none();
        if (!epi && (!scale.is_none() || !shift.is_none() || relu || !residual.is_none() || !mask.is_none()))
          throw py::value_error("x, center: None (no gradient epilogue) only without scale, shift, relu, residual and "
                                "mask");
        const auto* px = epi ? array_arg<float>(x, "x", xn) : nullptr;
        const auto* ps = array_arg<float>(scale, "scale", g.C, kOptional);
        const auto* pt = array_arg<float>(shift, "shift", g.C, kOptional);
        const auto* pc = epi ? array_arg<double>(center, "center", g.C) : nullptr;
        const auto* pr = array_arg<float>(residual, "residual", rn, kOptional);
        const auto* pm = array_arg<float>(mask, "mask", xn, kOptional);
        if (pm && !relu) throw py::value_error("mask: expected None with relu=False, got an array");
        // (grad_input may be grad_out itself where the kernel allows it: backward_input_fused checks)
        if (overlaps(pdx, xn * 4, px, xn * 4) || (overlaps(pdx, xn * 4, pdy, yn * 4) && !(pdx == pdy && xn == yn)) ||
            overlaps(pdx, xn * 4, pw, wcount(g) * 4) || (pr && overlaps(pdx, xn * 4, pr, rn * 4)) ||
            (pm && overlaps(pdx, xn * 4, pm, xn * 4)))
          throw py::value_error("grad_input: must not overlap x, grad_out, weight, residual or mask");
        // (grad_input may be dy_apply's g itself where the kernel allows it: backward_input_fused checks)
        if (apply && ((overlaps(pdx, xn * 4, ag, agn * 4) && !(pdx == ag && agn == xn)) ||
                      overlaps(pdx, xn * 4, az, yn * 4)))
          throw py::value_error("grad_input: must not overlap dy_apply's z, nor its g other than as g itself");
        if (apply && (overlaps(pdy, yn * 4, ag, agn * 4) || overlaps(pdy, yn * 4, az, yn * 4) ||
                      (amask && overlaps(pdy, yn * 4, amask, 2 * g.K * 4)) ||
                      overlaps(pdy, yn * 4, px, xn * 4) || overlaps(pdy, yn * 4, pw, wcount(g) * 4) ||
                      (pr && overlaps(pdy, yn * 4, pr, rn * 4)) || (pm && overlaps(pdy, yn * 4, pm, xn * 4))))
          throw py::value_error("grad_out: written with dy_apply, must not overlap its g or z, x, weight, residual or mask");
        std::vector<float> co;
        conv::DyApply dya{};
        if (apply) dya = conv::make_dy_apply(ag, az, am, aA, aB, aD, g.K, co, ap_pooled ? g.Ho * g.Wo : 0, amask);
        py::array_t<double> s1(epi ? g.C : 0), s2(epi ? g.C : 0);
        conv::Fused fu{};
        fu.residual = pr;
        fu.res_stride = rstr;
        fu.gx = px;
        fu.gscale = ps;
        fu.gshift = pt;
        fu.grelu = relu;
        fu.gmask = pm;
        fu.center = pc;
        fu.grad_sum = epi ? s1.mutable_data() : nullptr;
        fu.grad_sumxc = epi ? s2.mutable_data() : nullptr;
        fu.dy_apply = apply ? &dya : nullptr;
        // grad_weight (dw, x, scale, shift, relu): the convolution's weight gradient from the same dy
        // and its input prologue(x), written by the same call
        if (!grad_weight.is_none()) {
          if (!py::isinstance<py::tuple>(grad_weight) || py::len(grad_weight) != 5)
            throw py::type_error("grad_weight: expected a tuple (grad_weight, x, scale, shift, relu) or None");
          const auto gw_t = py::reinterpret_borrow<py::tuple>(grad_weight);
          float* pgw = array_arg<float>(gw_t[0], "grad_weight[0] (the weight gradient)", wcount(g), kWrite);
          const float* pwx = array_arg<float>(gw_t[1], "grad_weight[1] (the convolution's input)", wxn);
          const float* pws = array_arg<float>(gw_t[2], "grad_weight[2] (scale)", g.C, kOptional);
          const float* pwt = array_arg<float>(gw_t[3], "grad_weight[3] (shift)", g.C, kOptional);
          if (!pws != !pwt) throw py::value_error("grad_weight: scale and shift go together (both or neither)");
          if (!py::isinstance<py::bool_>(gw_t[4]))
            throw py::type_error("grad_weight[4] (relu): expected a bool");
          const int64_t wb = wcount(g) * 4;
          if (overlaps(pgw, wb, pdy, yn * 4) || overlaps(pgw, wb, pdx, xn * 4) || overlaps(pgw, wb, px, xn * 4) ||
              overlaps(pgw, wb, pwx, wxn * 4) || overlaps(pgw, wb, pw, wb) || (pr && overlaps(pgw, wb, pr, rn * 4)) ||
              (pm && overlaps(pgw, wb, pm, xn * 4)) || (ag && overlaps(pgw, wb, ag, agn * 4)) ||
              (az && overlaps(pgw, wb, az, yn * 4)))
            throw py::value_error("grad_weight: the weight gradient must not overlap any other array");
          if (overlaps(pdx, xn * 4, pwx, wxn * 4) || (apply && overlaps(pdy, yn * 4, pwx, wxn * 4)))
            throw py::value_error("grad_weight: the convolution's input must not overlap grad_input or the written "
                                  "grad_out");
          fu.wgrad_dw = pgw;
          fu.wgrad_x = pwx;
          fu.wgrad_scale = pws;
          fu.wgrad_shift = pwt;
          fu.wgrad_relu = gw_t[4].cast<bool>();
          if (wg_given) fu.wgrad_geom = &wgeom;
        }
        const char* name;
        {
          py::gil_scoped_release nogil;
          name = conv::backward_input_fused(pdy, pw, pdx, g, fu);
        }
        if (!epi) return py::make_tuple(std::string(name), py::none(), py::none());
        return py::make_tuple(std::string(name), s1, s2);
      },
      py::arg("grad_out"), py::arg("weight"), py::arg("grad_input"), py::arg("geom"), py::arg("x"), py::arg("scale"),
      py::arg("shift"), py::arg("relu"), py::arg("center"), py::arg("residual") = py::none(),
      py::arg("mask") = py::none(), py::arg("residual_stride") = 1, py::arg("dy_apply") = py::none(),
      py::arg("grad_weight") = py::none(), py::arg("weight_geom") = py::none(),
      "Input gradient of conv(prologue(x)) (+ residual), written masked by the prologue's ReLU "
      "(fma(scale, x, shift) > 0 with relu; with mask, a stored ReLU output: mask > 0), with the sums of it and "
      "of it * (x - center) per channel (float64): returns (name, sum, sumxc), name the kernel that ran the "
      "convolution (the adjoint GEMM pass, or the plain input-gradient kernel over units of images). "
      "residual_stride s > 1: the residual holds only the pixels (h, w) with h and w multiples of s, as an "
      "(N, ceil(H/s), ceil(W/s), C) array (NCHW likewise), zero elsewhere. dy_apply (g, z, mean, A, B, D): "
      "grad_out is the output to write with a batch norm's backward apply pass A*g - B - (z - mean)*D (float64 "
      "per channel, as norm_backward_apply evaluates it), evaluated by the NHWC 1x1 pass a block of rows at a "
      "time as it reads them (elsewhere written whole first); grad_out may then be None (with grad_weight: the pass's "
      "values are not kept). dy_apply (g, z, mean, A, B, D, mask_affine, pooled): the same with "
      "norm_backward_apply's mask_affine (None, or concat(scale, shift): g masked by fma(scale, z, shift) > 0) and "
      "pooled (g holds one value per sample and channel, the gradient at every pixel). grad_weight (dw, x_in, scale, shift, relu): also writes "
      "the convolution's weight gradient (no bias) from the same grad_out and its input "
      "max(fma(scale, x_in, shift), 0) (scale and shift optional, the max with relu), with the bits of "
      "conv2d_fused_backward_weight on them: the NHWC 1x1 pass reduces each block of rows while it is in cache. "
      "weight_geom (with grad_weight): the weight gradient's own geometry, a 1x1 convolution at a stride above 1 "
      "without padding whose output pixels are geom's input (geom: the same convolution at stride 1 on those "
      "pixels, NHWC), x_in its whole input: the call gives the input gradient at the strided pixels only. "
      "x and center None: no gradient epilogue (scale, shift, residual and mask None, relu False): the plain "
      "input gradient, returning (name, None, None). grad_input may be grad_out itself (written over it) for a "
      "depthwise convolution at stride 1 whose output is the input's size (NHWC), without grad_weight; "
      "elsewhere that is a ValueError.");
  m.def(
      "sgemm",
      [](const py::object& a, const py::object& b, const py::object& c, bool trans_a, bool trans_b, bool accumulate,
         const py::object& isa) {
        const auto* pa = array_arg<float>(a, "a", -1);
        const auto* pb = array_arg<float>(b, "b", -1);
        auto* pc = array_arg<float>(c, "c", -1, kWrite);
        int64_t ar, ac, br, bc, cr, cc;
        matrix_dims(a, "a", ar, ac);
        matrix_dims(b, "b", br, bc);
        matrix_dims(c, "c", cr, cc);
        const int64_t M = trans_a ? ac : ar, K = trans_a ? ar : ac;
        const int64_t Kb = trans_b ? bc : br, N = trans_b ? br : bc;
        if (K != Kb || cr != M || cc != N)
          throw py::value_error("c: shapes do not match (a " + std::to_string(ar) + "x" + std::to_string(ac) + ", b " +
                                std::to_string(br) + "x" + std::to_string(bc) + ", c " + std::to_string(cr) + "x" +
                                std::to_string(cc) + ")");
        const Isa level = isa.is_none() ? isa_active() : isa_from_name(py::cast<std::string>(isa));
        if (overlaps(pc, M * N * 4, pa, ar * ac * 4) || overlaps(pc, M * N * 4, pb, br * bc * 4))
          throw py::value_error("c: must not overlap a or b");
        py::gil_scoped_release nogil;
        conv::sgemm(level, M, N, K, pa, trans_a ? 1 : K, trans_a ? M : 1, pb, trans_b ? 1 : N, trans_b ? K : 1, pc, N,
                    accumulate);
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a") = false, py::arg("trans_b") = false,
      py::arg("accumulate") = false, py::arg("isa") = py::none(),
      "c = [c +] op(a) @ op(b) in float32 with cnnkit's own packed GEMM at ISA level `isa` (default: the active "
      "one); op transposes when trans_a / trans_b. The bits do not depend on the thread count.");
  m.def(
      "sgemm_shape",
      [](const std::string& isa) {
        int mr, nr, kc, mc, nc;
        conv::sgemm_shape(isa_from_name(isa), &mr, &nr, &kc, &mc, &nc);
        py::dict d;
        d["mr"] = mr;
        d["nr"] = nr;
        d["kc"] = kc;
        d["mc"] = mc;
        d["nc"] = nc;
        return d;
      },
      py::arg("isa"), "The register block (mr x nr) and cache blocks (kc, mc, nc) of the sgemm at ISA level `isa`.");
}

}  // namespace cnnkit::bind
