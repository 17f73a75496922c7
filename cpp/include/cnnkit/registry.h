// Kernel tables for the families with one kernel per operation and ISA level (norm, optim,
// augment, nn layers). The conv family has a richer table of its own (cnnkit/conv.h) with the same
// grammar and the same selection rule.
//
// Every operation of a family is compiled once per ISA level; the table lists one entry per
// (operation, level), best level first. Names follow one grammar:
//
//   <op>_<dtypes>__<isa>      e.g. norm_stats_f32f64__avx512, augment_resize_u8__avx2,
//                                  nn_pool2d_forward_f32__scalar
//
// with <op> the family and operation (what is computed), <dtypes> the element types the kernel
// takes, concatenated (u8, f32, f64), and <isa> the level it was compiled for (where it runs).
// A dispatcher runs the entry that select() returns: the forced entry where it supports the
// problem, else the first entry at the active ISA level that does.
#pragma once

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "cnnkit/common.h"

namespace cnnkit::registry {

// Element types (bit masks).
enum Elem : unsigned { u8 = 1u, f32 = 2u, f64 = 4u };

struct OpSpec {
  const char* op;   // "<family>_<operation>"
  unsigned elems;   // Elem bits the kernel takes
};

struct Entry {
  std::string name;
  Isa isa;
  int op;
  unsigned elems;
};

class Table {
 public:
  Table(const char* family, std::initializer_list<OpSpec> ops);
  const std::string& family() const { return family_; }
  const std::vector<std::string>& ops() const { return ops_; }
  const std::vector<Entry>& entries() const { return entries_; }
  int op_index(const std::string& op) const;  // throws value_error
  // Entry i is operation op and takes every element type in elems.
  bool supports(int i, int op, unsigned elems) const;
  // The entry to run (see above); counts a hit for it. Throws value_error if none supports.
  int select(int op, unsigned elems) const;
  // The ISA level whose kernel table the dispatcher calls for this problem.
  Isa isa_for(int op, unsigned elems) const { return entries_[select(op, elems)].isa; }
  void force(int i);  // -1: none; the entry's ISA level must be one this CPU runs
  int forced() const { return forced_.load(std::memory_order_relaxed); }
  int64_t hits(int i) const;  // times select() returned entry i

 private:
  std::string family_;
  std::vector<std::string> ops_;
  std::vector<Entry> entries_;
  std::atomic<int> forced_{-1};
  std::unique_ptr<std::atomic<int64_t>[]> hits_;
};

}  // namespace cnnkit::registry

namespace cnnkit::registry {
// The copy of a per-ISA kernel table (scalar, avx2, avx512) compiled for `isa`.
template <typename T>
const T& of_isa(Isa isa, const T& scalar_table, const T& avx2_table, const T& avx512_table) {
  switch (isa) {
    case Isa::avx512: return avx512_table;
    case Isa::avx2: return avx2_table;
    default: return scalar_table;
  }
}
}  // namespace cnnkit::registry

// The tables (defined by each family's dispatcher).
namespace cnnkit::norm { registry::Table& kernel_table(); }
namespace cnnkit::optim { registry::Table& kernel_table(); }
namespace cnnkit::augment { registry::Table& kernel_table(); }
namespace cnnkit::nn { registry::Table& kernel_table(); }
