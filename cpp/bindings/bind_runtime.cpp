// Runtime bindings: ISA level, threads, build facts, the STREAM-like bandwidth kernels.
#include <omp.h>

#include <pybind11/stl.h>

#include <vector>

#include "cnnkit/bench.h"
#include "cnnkit/common.h"
#include "cnnkit/optim.h"
#include "common.h"
#include "cnnkit_build_commit.h"  // (generated at build time: CMakeLists.txt)

#ifdef CNNKIT_WITH_CUDA
namespace cnnkit::cuda {
int device_count();  // cuda/launch.cpp; 0 when no driver or device
}
#endif

namespace cnnkit::bind {

void bind_runtime(py::module_& m) {
  m.def("isa_supported", [] { return std::string(isa_name(isa_supported())); });
  m.def("isa_active", [] { return std::string(isa_name(isa_active())); });
  m.def("set_isa", [](const std::string& name) { set_isa(isa_from_name(name)); }, py::arg("isa"));
  m.def("kernel_builds", [] {
    const char* names[3];
    optim::kernel_builds(names);
    return py::make_tuple(names[0], names[1], names[2]);
  }, "The ISA level each per-ISA kernel table's header code was compiled for (scalar, avx2, avx512).");
  m.def("get_num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("build_facts", [] {
    py::dict d;
    d["version"] = CNNKIT_VERSION;
    d["git_commit"] = CNNKIT_GIT_COMMIT;
    d["compiler"] = CNNKIT_COMPILER;
    d["isa_compiled"] = py::make_tuple("scalar", "avx2", "avx512");
    d["native"] = bool(CNNKIT_NATIVE_BUILD);
    d["openmp"] = true;
    d["openmp_version"] = _OPENMP;
#ifdef CNNKIT_WITH_CUDA
    d["cuda_compiled"] = true;
#else
    d["cuda_compiled"] = false;
#endif
    return d;
  });
  m.def("cuda_device_count", [] {
#ifdef CNNKIT_WITH_CUDA
    return cnnkit::cuda::device_count();
#else
    return 0;
#endif
  });

  m.def(
      "stream_run",
      [](const std::string& kind, const py::list& arrays, int reps) {
        const bench::Stream k = bench::stream_from_name(kind);
        const int need = bench::stream_arrays(k);
        if (static_cast<int>(py::len(arrays)) < need)
          throw py::value_error("arrays: kernel '" + kind + "' needs " + std::to_string(need) +
                                " arrays, got " + std::to_string(py::len(arrays)));
        if (reps < 1) throw py::value_error("reps: expected >= 1, got " + std::to_string(reps));
        std::vector<float*> ptrs;
        int64_t n = -1;
        for (int i = 0; i < need; ++i) {
          // every array has the size of the first
          float* p = array_arg<float>(arrays[i], ArgName("arrays", i), n, kWrite);
          if (n < 0) n = py::reinterpret_borrow<py::array>(arrays[i]).size();
          ptrs.push_back(p);
        }
        std::vector<double> secs(static_cast<size_t>(reps));
        {
          py::gil_scoped_release nogil;
          bench::stream_run(k, ptrs.data(), n, reps, secs.data());
        }
        return py::make_tuple(py::cast(secs), bench::stream_bytes_per_elem(k) * n);
      },
      py::arg("kind"), py::arg("arrays"), py::arg("reps"),
      "Run a STREAM-like kernel; returns (seconds per rep, bytes moved per rep).");
  m.def(
      "stream_rows",
      [](const py::object& a, const py::object& c, int reps) {
        const auto* pa = array_arg<float>(a, "a", -1);
        auto* pc = array_arg<float>(c, "c", -1, kWrite);
        int64_t m, k, mc, n;
        matrix_dims(a, "a", m, k);
        matrix_dims(c, "c", mc, n);
        if (mc != m)
          throw py::value_error("c: expected " + std::to_string(m) + " rows (as a), got " + std::to_string(mc));
        if (reps < 1) throw py::value_error("reps: expected >= 1, got " + std::to_string(reps));
        if (overlaps(pc, m * n * 4, pa, m * k * 4)) throw py::value_error("c: must not overlap a");
        std::vector<double> secs(static_cast<size_t>(reps));
        {
          py::gil_scoped_release nogil;
          bench::stream_rows(pa, m, k, pc, n, reps, secs.data());
        }
        return py::make_tuple(py::cast(secs), 4 * (m * k + m * n));
      },
      py::arg("a"), py::arg("c"), py::arg("reps"),
      "A GEMM's operand traffic without its arithmetic: read every row of a (m x k), write the row's sum into "
      "every entry of the same row of c (m x n); returns (seconds per rep, bytes read + written per rep).");
}

}  // namespace cnnkit::bind
