// std::vector for code compiled once per ISA level (the CNNKIT_ISA_SOURCES of CMakeLists.txt).
//
// The out-of-line members of std::vector<float> (_M_default_append, _M_fill_assign, ...) are weak
// symbols: every object file that instantiates them carries a copy, and the linker keeps the first
// one it meets for the whole library. A copy compiled with -mavx512f could so replace the baseline
// one, and which copy wins would depend on the order the objects are listed in. An allocator type
// in the ISA level's own namespace puts that namespace into every mangled name, so each level's
// vectors get their own symbols and nothing is shared (tests/test_build.py checks the objects).
#pragma once

#include <cstddef>
#include <new>
#include <vector>

#include "cnnkit/common.h"

namespace cnnkit::isa_alloc {
inline namespace CNNKIT_KERNEL_NS {

template <typename T>
struct Allocator {
  using value_type = T;
  Allocator() noexcept = default;
  template <typename U>
  Allocator(const Allocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p); }
  template <typename U>
  bool operator==(const Allocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const Allocator<U>&) const noexcept { return false; }
};

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::isa_alloc

namespace cnnkit {
template <typename T>
using isa_vector = std::vector<T, isa_alloc::Allocator<T>>;
}  // namespace cnnkit
