// Normalization bindings: marshalling only. cnnkit.ops.norm validates shapes, dtypes and
// arguments and owns allocation; these re-check sizes so a misuse can never read out of bounds.
#include <cmath>
#include <string>

#include "cnnkit/norm.h"
#include "common.h"

namespace cnnkit::bind {
namespace {

using F64 = py::array_t<double, py::array::c_style>;

struct Geo {
  norm::Shape sh;
  bool ps;
  int64_t total() const { return sh.N * sh.C * sh.S; }
  int64_t stat_count() const { return ps ? sh.N * sh.C : sh.C; }
};

Geo geo(int64_t N, int64_t C, int64_t S, bool nhwc, bool ps) {
  if (N < 1 || C < 1 || S < 1) throw py::value_error("shape: N, C and S must be >= 1");
  return Geo{norm::Shape{N, C, S, nhwc}, ps};
}

const double* f64(const F64& a, const char* name, int64_t count) { return array_arg<double>(a, name, count); }

using F64C = py::array_t<double, py::array::c_style | py::array::forcecast>;

// An optional per-channel parameter of any real dtype as float64 (None: null); TypeError for a
// non-array, ValueError for a wrong size.
const double* widen(const py::object& o, const char* name, int64_t count, F64C& keep) {
  if (o.is_none()) return nullptr;
  dtype_of(o, name);
  keep = F64C::ensure(o);
  return array_arg<double>(keep, name, count);
}

// 1/sqrt(var + eps) in float64; ValueError naming the first negative, NaN or infinite variance (a
// running variance). batch: a batch's own variance ("var"), where only a negative one is refused
// and a NaN (from a NaN or infinite input) gives a NaN invstd, as torch propagates it.
F64 invstd_of(const py::array& var, double eps, bool batch) {
  const char* name = batch ? "var" : "running_var";
  const DType dt = dtype_of(var, name);
  py::array v = py::array::ensure(var, py::array::c_style);
  const int64_t n = v.size();
  const void* pv = array_arg(v, name, dt, n);
  F64 out(n);
  double* o = out.mutable_data();
  int64_t bad;
  {
    py::gil_scoped_release nogil;
    bad = norm::invstd(dt, pv, n, eps, o, batch);
  }
  if (bad >= 0) {
    const double x =
        dt == DType::f32 ? double(static_cast<const float*>(pv)[bad]) : static_cast<const double*>(pv)[bad];
    const char* expected = batch ? ": expected values >= 0, got " : ": expected finite values >= 0, got ";
    throw py::value_error(name + std::string(expected) + std::to_string(x) + " at index " + std::to_string(bad));
  }
  return out;
}

// norm::update_running on the running statistics (either may be None) from a batch's mean and var.
void update_running_of(const py::object& rm, const py::object& rv, const F64& mean, const F64& var,
                       double momentum, double unbias) {
  const int64_t n = mean.size();
  const double* pm = f64(mean, "mean", n);
  const double* pv = f64(var, "var", n);
  const DType dm = rm.is_none() ? DType::f32 : dtype_of(rm, "running_mean");
  const DType dv = rv.is_none() ? DType::f32 : dtype_of(rv, "running_var");
  void* prm = array_arg(rm, "running_mean", dm, n, kWrite | kOptional);
  void* prv = array_arg(rv, "running_var", dv, n, kWrite | kOptional);
  py::gil_scoped_release nogil;
  if (prm) norm::update_running(dm, prm, pm, n, momentum, 1.0);
  if (prv) norm::update_running(dv, prv, pv, n, momentum, unbias);
}

// float32 concat(scale, shift) of a norm's output as a convolution's prologue, or None (a channel's
// |mean| * invstd above limit, or NaN).
py::object prologue_of(const F64& mean, const F64& invstd, const py::object& w, const py::object& b, double limit) {
  const int64_t C = mean.size();
  const double* pm = f64(mean, "mean", C);
  const double* pi = f64(invstd, "invstd", C);
  F64C w64, b64;  // float32 parameters widened exactly, as .astype(numpy.float64)
  const double* pw = widen(w, "weight", C, w64);
  const double* pb = widen(b, "bias", C, b64);
  py::array_t<float> out(2 * C);
  if (!norm::prologue_coefs(C, pm, pi, pw, pb, limit, out.mutable_data())) return py::none();
  return std::move(out);
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def("norm_update_running", &update_running_of, py::arg("running_mean"), py::arg("running_var"), py::arg("mean"),
        py::arg("var"), py::arg("momentum"), py::arg("unbias"),
        "running <- (1 - momentum) * running + momentum * stat (the variance times unbias), in double.");
  m.def("norm_invstd", &invstd_of, py::arg("var"), py::arg("eps"), py::arg("batch") = false,
        "1/sqrt(var + eps) in float64; ValueError for a negative, NaN or inf var (batch: a batch's own "
        "variance, only a negative one refused, a NaN giving a NaN).");
  m.def(
      "norm_train_finish",
      [](const F64& mean, const F64& var, double eps, const py::object& rm, const py::object& rv, double momentum,
         double unbias, const py::object& w, const py::object& b, double limit) {
        // a training-mode batch norm's per-channel steps after its batch statistics, in one call:
        // invstd (checked first: nothing is written for a bad variance), the running statistics,
        // and with limit >= 0 the prologue coefficients (None where the bound declines them)
        F64 inv = invstd_of(var, eps, true);  // (the batch's variance: a NaN propagates)
        update_running_of(rm, rv, mean, var, momentum, unbias);
        py::object pre = limit >= 0.0 ? prologue_of(mean, inv, w, b, limit) : py::object(py::none());
        return py::make_tuple(inv, pre);
      },
      py::arg("mean"), py::arg("var"), py::arg("eps"), py::arg("running_mean"), py::arg("running_var"),
      py::arg("momentum"), py::arg("unbias"), py::arg("weight"), py::arg("bias"), py::arg("limit"),
      "(invstd, prologue) of a training-mode batch norm: norm_invstd (batch=True), norm_update_running, then "
      "with limit >= 0 norm_prologue_coefs (else None).");

  m.def(
      "norm_finish_sums",
      [](const py::object& y, const F64& sum, const F64& sumsq, int64_t N, int64_t C, int64_t S, bool nhwc) {
        // the batch statistics of a convolution's output from its epilogue's sums about the output's
        // first value per channel (y[0, 0, 0, c] NHWC, y[0, c, 0, 0] NCHW)
        const Geo g = geo(N, C, S, nhwc, false);
        const auto* py_ = array_arg<float>(y, "y", g.total());
        const double* s1 = f64(sum, "sum", C);
        const double* s2 = f64(sumsq, "sumsq", C);
        F64 mean(C), var(C);
        norm::finish_sums(py_, nhwc ? 1 : S, s1, s2, C, double(N * S), mean.mutable_data(), var.mutable_data());
        return py::make_tuple(mean, var);
      },
      py::arg("y"), py::arg("sum"), py::arg("sumsq"), py::arg("N"), py::arg("C"), py::arg("S"), py::arg("nhwc"),
      "(mean, biased var), float64, from the shifted sums of a fused convolution's statistics epilogue.");
  m.def("norm_prologue_coefs", &prologue_of, py::arg("mean"), py::arg("invstd"), py::arg("weight"), py::arg("bias"),
        py::arg("limit"),
        "float32 concat(scale, shift) of a batch norm's output as the next convolution's prologue, or None when "
        "a channel's |mean| * invstd exceeds limit (or is NaN).");
  m.def(
      "norm_backward_coefs",
      [](const F64& invstd, const py::object& w, double count, const F64& sg, const F64& sgx) {
        const int64_t C = invstd.size();
        const double* pi = f64(invstd, "invstd", C);
        F64C w64;
        const double* pw = widen(w, "weight", C, w64);
        const double* p1 = f64(sg, "sum_g", C);
        const double* p2 = f64(sgx, "sum_gx", C);
        F64 A(C), B(C), D(C);
        norm::backward_coefs(C, pi, pw, count, p1, p2, A.mutable_data(), B.mutable_data(), D.mutable_data());
        return py::make_tuple(A, B, D);
      },
      py::arg("invstd"), py::arg("weight"), py::arg("count"), py::arg("sum_g"), py::arg("sum_gx"),
      "(A, B, D) of the batch-norm backward's apply pass, float64.");

  m.def(
      "norm_stats",
      [](const py::object& x, int64_t N, int64_t C, int64_t S, bool nhwc, bool ps) {
        const Geo g = geo(N, C, S, nhwc, ps);
        const DType dt = dtype_of(x, "x");
        const void* px = array_arg(x, "x", dt, g.total());
        F64 mean(g.stat_count()), var(g.stat_count());
        double* pm = mean.mutable_data();
        double* pv = var.mutable_data();
        {
          py::gil_scoped_release nogil;
          norm::stats(dt, px, g.sh, g.ps, pm, pv);
        }
        return py::make_tuple(mean, var);
      },
      py::arg("x"), py::arg("N"), py::arg("C"), py::arg("S"), py::arg("nhwc"), py::arg("per_sample"));

  m.def(
      "norm_apply",
      [](const py::object& x, const py::object& y, const py::object& r, int64_t N, int64_t C, int64_t S,
         bool nhwc, bool ps, const F64& mean, const F64& invstd, const py::object& w, const py::object& b,
         bool relu, const py::object& residual_affine, bool residual_relu) {
        const Geo g = geo(N, C, S, nhwc, ps);
        const DType dt = dtype_of(x, "x");
        const void* px = array_arg(x, "x", dt, g.total());
        void* py_ = array_arg(y, "out", dt, g.total(), kWrite);
        const void* pr = array_arg(r, "residual", dt, g.total(), kOptional);
        const void* pra = array_arg(residual_affine, "residual_affine", dt, 2 * C, kOptional);
        if (pra && !pr) throw py::value_error("residual_affine: expected None without a residual, got an array");
        if (residual_relu && !pra) throw py::value_error("residual_relu: expected False without residual_affine");
        const void* pw = array_arg(w, "weight", dt, C, kOptional);
        const void* pb = array_arg(b, "bias", dt, C, kOptional);
        const double* pm = f64(mean, "mean", g.stat_count());
        const double* pi = f64(invstd, "invstd", g.stat_count());
        py::gil_scoped_release nogil;
        norm::apply(dt, px, py_, pr, g.sh, g.ps, pm, pi, pw, pb, relu, pra, residual_relu);
      },
      py::arg("x"), py::arg("out"), py::arg("residual"), py::arg("N"), py::arg("C"), py::arg("S"),
      py::arg("nhwc"), py::arg("per_sample"), py::arg("mean"), py::arg("invstd"), py::arg("weight"),
      py::arg("bias"), py::arg("relu"), py::arg("residual_affine") = py::none(), py::arg("residual_relu") = false);

  m.def(
      "norm_backward_reduce",
      [](const py::object& dy, const py::object& x, const py::object& mask, int64_t N, int64_t C, int64_t S,
         bool nhwc, bool ps, const F64& mean, const py::object& mask_affine, bool pooled,
         const py::object& grad_residual) {
        const Geo g = geo(N, C, S, nhwc, ps);
        const DType dt = dtype_of(x, "x");
        const void* pd = array_arg(dy, "grad_out", dt, pooled ? N * C : g.total());
        const void* px = array_arg(x, "x", dt, g.total());
        const void* pk = array_arg(mask, "y", dt, g.total(), kOptional);
        const void* pa = array_arg(mask_affine, "mask_affine", dt, 2 * C, kOptional);
        void* pr = array_arg(grad_residual, "grad_residual", dt, g.total(), kWrite | kOptional);
        if (pk && pa) throw py::value_error("mask_affine: expected None when mask is given");
        if (pr && pooled) throw py::value_error("grad_residual: expected None with pooled=True");
        const size_t bytes = g.total() * dtype_size(dt);
        if (pr && (overlaps(pr, bytes, pd, bytes) || overlaps(pr, bytes, px, bytes) ||
                   (pk && overlaps(pr, bytes, pk, bytes))))
          throw py::value_error("grad_residual: must not overlap grad_out, x or mask");
        const double* pm = f64(mean, "mean", g.stat_count());
        F64 sg(g.stat_count()), sgx(g.stat_count());
        double* a = sg.mutable_data();
        double* b = sgx.mutable_data();
        {
          py::gil_scoped_release nogil;
          norm::backward_reduce(dt, pd, px, pk, pa, pooled, pr, g.sh, g.ps, pm, a, b);
        }
        return py::make_tuple(sg, sgx);
      },
      py::arg("grad_out"), py::arg("x"), py::arg("mask"), py::arg("N"), py::arg("C"), py::arg("S"),
      py::arg("nhwc"), py::arg("per_sample"), py::arg("mean"), py::arg("mask_affine") = py::none(),
      py::arg("pooled") = false, py::arg("grad_residual") = py::none(),
      "Sums of g and g*(x - mean), g = grad_out masked by mask > 0, or by fma(a[c], x, b[c]) > 0 with "
      "mask_affine = concat(a, b) (x's dtype, 2*C values); pooled: grad_out holds N*C values, "
      "g[n, c, s] = grad_out[n*C + c] at every s. grad_residual (optional, not with pooled) receives g.");

  m.def(
      "norm_backward_apply",
      [](const py::object& dy, const py::object& x, const py::object& mask, const py::object& dx,
         const py::object& gres, int64_t N, int64_t C, int64_t S, bool nhwc, bool ps, const F64& mean,
         const F64& A, const F64& B, const F64& D, const py::object& mask_affine, bool pooled) {
        const Geo g = geo(N, C, S, nhwc, ps);
        const DType dt = dtype_of(x, "x");
        const void* pd = array_arg(dy, "grad_out", dt, pooled ? N * C : g.total());
        const void* px = array_arg(x, "x", dt, g.total());
        const void* pk = array_arg(mask, "y", dt, g.total(), kOptional);
        const void* pma = array_arg(mask_affine, "mask_affine", dt, 2 * C, kOptional);
        if (pk && pma) throw py::value_error("mask_affine: expected None when mask is given");
        void* po = array_arg(dx, "grad_input", dt, g.total(), kWrite);
        void* pg = array_arg(gres, "grad_residual", dt, g.total(), kWrite | kOptional);
        const int64_t k = g.stat_count();
        const double *pm = f64(mean, "mean", k), *pa = f64(A, "A", k), *pb = f64(B, "B", k), *pc = f64(D, "D", k);
        // grad_input may be grad_out or x itself (each value read before it is written, at the same
        // position), not overlap them otherwise; grad_residual overlaps nothing
        const size_t es = dtype_size(dt), tb = g.total() * es, db = (pooled ? N * C : g.total()) * es;
        auto part = [&](const void* a, size_t an, const void* b, size_t bn) {
          return overlaps(a, an, b, bn) && !(a == b && an == bn);
        };
        if (part(po, tb, pd, db) || part(po, tb, px, tb) || (pk && overlaps(po, tb, pk, tb)) ||
            (pma && overlaps(po, tb, pma, 2 * C * es)))
          throw py::value_error("grad_input: must be grad_out or x itself or not overlap them, and not overlap mask "
                                "or mask_affine");
        if (pg && (overlaps(pg, tb, pd, db) || overlaps(pg, tb, px, tb) || overlaps(pg, tb, po, tb) ||
                   (pk && overlaps(pg, tb, pk, tb)) || (pma && overlaps(pg, tb, pma, 2 * C * es))))
          throw py::value_error("grad_residual: must not overlap grad_out, x, grad_input, mask or mask_affine");
        py::gil_scoped_release nogil;
        norm::backward_apply(dt, pd, px, pk, pma, pooled, po, pg, g.sh, g.ps, pm, pa, pb, pc);
      },
      py::arg("grad_out"), py::arg("x"), py::arg("mask"), py::arg("grad_input"), py::arg("grad_residual"),
      py::arg("N"), py::arg("C"), py::arg("S"), py::arg("nhwc"), py::arg("per_sample"), py::arg("mean"),
      py::arg("A"), py::arg("B"), py::arg("D"), py::arg("mask_affine") = py::none(), py::arg("pooled") = false,
      "dx = A*g - B - (x - mean)*D per channel, g masked as in norm_backward_reduce (pooled as there); "
      "grad_residual (optional) receives g. grad_input may be grad_out (not pooled) or x itself: in place.");

  m.def(
      "norm_affine_pool",
      [](const py::object& x, const py::object& out, int64_t N, int64_t C, int64_t S, bool nhwc,
         const py::object& affine, bool relu, const py::object& mean, const py::object& sums) {
        const Geo g = geo(N, C, S, nhwc, false);
        const DType dt = dtype_of(x, "x");
        const void* px = array_arg(x, "x", dt, g.total());
        const void* pa = array_arg(affine, "affine", dt, 2 * C);
        void* po = array_arg(out, "out", dt, N * C, kWrite);
        if (mean.is_none() != sums.is_none()) throw py::value_error("mean, sums: both or neither");
        const double* pm = mean.is_none() ? nullptr : array_arg<double>(mean, "mean", C);
        double* ps = sums.is_none() ? nullptr : array_arg<double>(sums, "sums", 2 * N * C, kWrite);
        const size_t ob = N * C * dtype_size(dt), xb = g.total() * dtype_size(dt);
        if (overlaps(po, ob, px, xb)) throw py::value_error("out: must not overlap x");
        if (ps && (overlaps(ps, 2 * N * C * 8, px, xb) || overlaps(ps, 2 * N * C * 8, po, ob) ||
                   overlaps(ps, 2 * N * C * 8, pa, 2 * C * dtype_size(dt)) || overlaps(ps, 2 * N * C * 8, pm, C * 8)))
          throw py::value_error("sums: must not overlap x, out, affine or mean");
        py::gil_scoped_release nogil;
        norm::affine_pool(dt, px, pa, relu, g.sh, po, pm, ps, ps ? ps + N * C : nullptr);
      },
      py::arg("x"), py::arg("out"), py::arg("N"), py::arg("C"), py::arg("S"), py::arg("nhwc"), py::arg("affine"),
      py::arg("relu"), py::arg("mean") = py::none(), py::arg("sums") = py::none(),
      "out[n, c] = mean over s of act(fma(a[c], x, b[c])) (affine = concat(a, b), x's dtype; act the ReLU with "
      "relu), summed in double: a batch norm's output, global-average-pooled without being written. With mean "
      "(float64, C) and sums (float64, 2*N*C values, written): sums[0, n, c] = the count of positions act keeps "
      "(fma(a, x, b) > 0 with relu, all without) and sums[1, n, c] = the sum over them of x - mean[c] in double, "
      "in position order (the norm backward's two sums for a gradient constant over the positions).");
}

}  // namespace cnnkit::bind
