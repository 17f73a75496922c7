// Kernel registry bindings: the tables of cnnkit/<family>.h as Python lists (cnnkit.kernels()).
// Marshalling only: the tables, their predicates and the selection live in the core.
#include <pybind11/stl.h>

#include <string>
#include <tuple>
#include <vector>

#include "cnnkit/conv.h"
#include "cnnkit/registry.h"
#include "common.h"

namespace cnnkit::bind {
namespace {

using EntryRow = std::tuple<std::string, std::string, std::vector<std::string>>;  // name, isa, passes

const char* const kConvPasses[] = {"forward", "input", "weight"};

conv::Pass conv_pass(const std::string& s) {
  for (int i = 0; i < 3; ++i)
    if (s == kConvPasses[i]) return static_cast<conv::Pass>(i);
  throw py::value_error("pass_: expected 'forward', 'input' or 'weight', got '" + s + "'");
}

DType dtype_of(const std::string& s) {
  if (s == "float32") return DType::f32;
  if (s == "float64") return DType::f64;
  throw py::type_error("dtype: expected float32 or float64, got " + s);
}

// The geometry is a _core.ConvGeom (cnnkit.ops.conv._Geom.core(), checked when it was built).
conv::Problem conv_problem(const conv::Geom& g, const std::string& dtype, const std::string& pass) {
  return conv::Problem{g, dtype_of(dtype), conv_pass(pass)};
}

std::vector<EntryRow> conv_rows() {
  std::vector<EntryRow> rows;
  for (int i = 0; i < conv::registry_size(); ++i) {
    const auto e = conv::registry_entry(i);
    std::vector<std::string> passes;
    for (int p = 0; p < 3; ++p)
      if (e.passes & conv::pass_bit(static_cast<conv::Pass>(p))) passes.emplace_back(kConvPasses[p]);
    rows.emplace_back(e.name, isa_name(e.isa), passes);
  }
  return rows;
}

registry::Table& family_table(const std::string& family) {
  if (family == "norm") return norm::kernel_table();
  if (family == "optim") return optim::kernel_table();
  if (family == "augment") return augment::kernel_table();
  if (family == "nn") return nn::kernel_table();
  throw py::value_error("family: expected 'norm', 'optim', 'augment' or 'nn', got '" + family + "'");
}

unsigned elems_of(const std::vector<std::string>& dtypes) {
  unsigned e = 0;
  for (const auto& d : dtypes) {
    if (d == "uint8") e |= registry::u8;
    else if (d == "float32") e |= registry::f32;
    else if (d == "float64") e |= registry::f64;
    else throw py::type_error("dtype: expected uint8, float32 or float64, got " + d);
  }
  return e;
}

}  // namespace

void bind_kernels(py::module_& m) {
  m.def(
      "registry_entries",
      [](const std::string& family) {
        std::vector<EntryRow> rows;
        const auto& t = family_table(family);
        for (const auto& e : t.entries()) rows.emplace_back(e.name, isa_name(e.isa), std::vector<std::string>{t.ops()[e.op]});
        return rows;
      },
      py::arg("family"), "Every entry of a family's kernel table in priority order: (name, isa, (operation,)).");
  m.def(
      "registry_supports",
      [](const std::string& family, int i, const std::string& op, const std::vector<std::string>& dtypes) {
        const auto& t = family_table(family);
        return t.supports(i, t.op_index(op), elems_of(dtypes));
      },
      py::arg("family"), py::arg("index"), py::arg("op"), py::arg("dtypes"));
  m.def(
      "registry_select",
      [](const std::string& family, const std::string& op, const std::vector<std::string>& dtypes) {
        const auto& t = family_table(family);
        return t.select(t.op_index(op), elems_of(dtypes));
      },
      py::arg("family"), py::arg("op"), py::arg("dtypes"));
  m.def("registry_force", [](const std::string& family, int i) { family_table(family).force(i); },
        py::arg("family"), py::arg("index"));
  m.def("registry_forced", [](const std::string& family) { return family_table(family).forced(); },
        py::arg("family"));
  m.def("registry_hits", [](const std::string& family, int i) { return family_table(family).hits(i); },
        py::arg("family"), py::arg("index"));
  m.def("conv_registry", &conv_rows,
        "Every conv kernel entry in priority order: (name, isa, passes).");
  m.def(
      "conv_registry_supports",
      [](int i, const conv::Geom& geom, const std::string& dtype, const std::string& pass) {
        return conv::supports(i, conv_problem(geom, dtype, pass));
      },
      py::arg("index"), py::arg("geom"), py::arg("dtype"), py::arg("pass_"));
  m.def(
      "conv_registry_select",
      [](const conv::Geom& geom, const std::string& dtype, const std::string& pass) {
        return conv::select(conv_problem(geom, dtype, pass));
      },
      py::arg("geom"), py::arg("dtype"), py::arg("pass_"));
  m.def("conv_registry_force", &conv::force, py::arg("index"));
  m.def("conv_registry_forced", &conv::forced);
}

}  // namespace cnnkit::bind
