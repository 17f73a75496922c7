// Runtime state: which ISA level the kernels dispatch to, and how many OpenMP threads they use.
// The ISA level is chosen once, at first use, from the CPU's features, lowered by CNNKIT_ISA.
#include "cnnkit/common.h"

#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <mutex>

namespace cnnkit {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

Isa isa_from_name(const std::string& name) {
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  throw value_error("isa: expected one of 'avx512', 'avx2', 'scalar', got '" + name + "'");
}

Isa isa_supported() {
  static const Isa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma"))
      return Isa::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
    return Isa::scalar;
  }();
  return best;
}

namespace {
std::atomic<int> g_isa{-1};
std::atomic<int> g_threads{0};

int initial_isa() {
  Isa best = isa_supported();
  const char* env = std::getenv("CNNKIT_ISA");
  if (env && *env) {
    Isa want;
    try {
      want = isa_from_name(env);
    } catch (const std::exception&) {
      return static_cast<int>(best);  // an unknown name is ignored; build_info shows the level used
    }
    if (static_cast<int>(want) < static_cast<int>(best)) return static_cast<int>(want);
  }
  return static_cast<int>(best);
}

int initial_threads() {
  const char* env = std::getenv("CNNKIT_NUM_THREADS");
  if (env && *env) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
  int n = omp_get_max_threads();
  return n >= 1 ? n : 1;
}
}  // namespace

Isa isa_active() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    int init = initial_isa();
    g_isa.compare_exchange_strong(v, init);
    v = g_isa.load();
  }
  return static_cast<Isa>(v);
}

void set_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(isa_supported()))
    throw value_error(std::string("isa: this CPU supports at most '") + isa_name(isa_supported()) +
                      "', got '" + isa_name(isa) + "'");
  g_isa.store(static_cast<int>(isa));
}

// 1 inside a parallel region: a kernel called from a parallel loop (the units of images of
// backward_input_fused(), conv_dispatch.cpp) runs on its caller's thread, whatever the nesting
// settings.
int num_threads() {
  if (omp_in_parallel()) return 1;
  int v = g_threads.load(std::memory_order_relaxed);
  if (v <= 0) {
    int init = initial_threads();
    g_threads.compare_exchange_strong(v, init);
    v = g_threads.load();
  }
  return v;
}

void set_num_threads(int n) {
  if (n < 1) throw value_error("n: expected a thread count >= 1, got " + std::to_string(n));
  g_threads.store(n);
}

}  // namespace cnnkit
