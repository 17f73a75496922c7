// cnnkit common definitions: the ISA levels, the thread count, and the host/device macro used by
// math shared between the CPU kernels and the CUDA kernels.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define CNNKIT_HD __host__ __device__ __forceinline__
#else
#define CNNKIT_HD inline __attribute__((always_inline))
#endif

#define CNNKIT_CAT_(a, b) a##b
#define CNNKIT_CAT(a, b) CNNKIT_CAT_(a, b)
#define CNNKIT_STR_(a) #a
#define CNNKIT_STR(a) CNNKIT_STR_(a)

// Kernel code in headers (templates, inline functions) is compiled once per ISA level. Each copy
// must get its own symbols, or the linker keeps one copy (say, the baseline one) for every level.
// Such headers put their contents in `inline namespace CNNKIT_KERNEL_NS`.
#if defined(CNNKIT_ISA_NS)
#define CNNKIT_KERNEL_NS CNNKIT_ISA_NS
#elif defined(__CUDACC__)
#define CNNKIT_KERNEL_NS cuda_device
#else
#define CNNKIT_KERNEL_NS host_generic
#endif

namespace cnnkit {

// Element type of the arrays a kernel reads and writes; one enum for every family. The float
// kernels (optim, conv, norm, mixing) take f32 or f64; the image kernels also take u8. The values
// are stable (the CUDA launcher sorts tensors by them).
enum class DType : int { f32 = 0, f64 = 1, u8 = 2 };

constexpr int64_t dtype_size(DType dt) { return dt == DType::f32 ? 4 : dt == DType::f64 ? 8 : 1; }

// ISA levels in increasing order; a level runs only if the CPU supports it.
enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument
Isa isa_supported();                         // best level this CPU (and OS) supports
Isa isa_active();                            // level kernels use now
void set_isa(Isa isa);                       // lower (or restore) the active level; throws if unsupported

// The one of three per-ISA tables (scalar, avx2, avx512) that the active level uses.
template <typename T>
const T& by_isa(const T& scalar_table, const T& avx2_table, const T& avx512_table) {
  switch (isa_active()) {
    case Isa::avx512: return avx512_table;
    case Isa::avx2: return avx2_table;
    default: return scalar_table;
  }
}

int num_threads();
void set_num_threads(int n);  // n >= 1

// Kernel errors that the bindings turn into Python ValueError / TypeError.
struct value_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct type_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

}  // namespace cnnkit
