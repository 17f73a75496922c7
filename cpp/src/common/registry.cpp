// The generic kernel table of cnnkit/registry.h (compiled once, not per ISA).
#include "cnnkit/registry.h"

namespace cnnkit::registry {

namespace {
std::string elem_token(unsigned elems) {
  std::string s;
  if (elems & u8) s += "u8";
  if (elems & f32) s += "f32";
  if (elems & f64) s += "f64";
  return s;
}
}  // namespace

Table::Table(const char* family, std::initializer_list<OpSpec> ops) : family_(family) {
  for (const OpSpec& o : ops) ops_.emplace_back(o.op);
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::scalar}) {
    int i = 0;
    for (const OpSpec& o : ops) {
      entries_.push_back(Entry{std::string(o.op) + "_" + elem_token(o.elems) + "__" + isa_name(isa), isa, i, o.elems});
      ++i;
    }
  }
  hits_.reset(new std::atomic<int64_t>[entries_.size()]);
  for (size_t i = 0; i < entries_.size(); ++i) hits_[i].store(0);
}

int Table::op_index(const std::string& op) const {
  for (size_t i = 0; i < ops_.size(); ++i)
    if (ops_[i] == op) return static_cast<int>(i);
  throw value_error(family_ + ": no operation '" + op + "'");
}

bool Table::supports(int i, int op, unsigned elems) const {
  if (i < 0 || i >= static_cast<int>(entries_.size()))
    throw value_error(family_ + ": no registry entry " + std::to_string(i));
  const Entry& e = entries_[i];
  return e.op == op && elems != 0 && (e.elems & elems) == elems;
}

int Table::select(int op, unsigned elems) const {
  int pick = -1;
  const int f = forced();
  if (f >= 0 && supports(f, op, elems)) {
    pick = f;
  } else {
    const Isa active = isa_active();
    for (size_t i = 0; i < entries_.size(); ++i)
      if (entries_[i].isa == active && supports(static_cast<int>(i), op, elems)) {
        pick = static_cast<int>(i);
        break;
      }
  }
  if (pick < 0) throw value_error(family_ + ": no kernel supports this problem");
  hits_[pick].fetch_add(1, std::memory_order_relaxed);
  return pick;
}

void Table::force(int i) {
  if (i >= static_cast<int>(entries_.size()))
    throw value_error(family_ + ": no registry entry " + std::to_string(i));
  if (i >= 0 && static_cast<int>(entries_[i].isa) > static_cast<int>(isa_supported()))
    throw value_error(family_ + ": " + entries_[i].name + " needs an ISA level this CPU does not have");
  forced_.store(i < 0 ? -1 : i);
}

int64_t Table::hits(int i) const {
  if (i < 0 || i >= static_cast<int>(entries_.size()))
    throw value_error(family_ + ": no registry entry " + std::to_string(i));
  return hits_[i].load();
}

}  // namespace cnnkit::registry
