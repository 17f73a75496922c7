// Layer entry points (cnnkit/nn.h): run the kernel that the family's table (cnnkit/registry.h)
// selects at the active ISA level.
#include "cnnkit/nn.h"
#include "cnnkit/registry.h"

namespace cnnkit {
namespace scalar { extern const nn::Kernels nn_kernels; }
namespace avx2 { extern const nn::Kernels nn_kernels; }
namespace avx512 { extern const nn::Kernels nn_kernels; }
}  // namespace cnnkit

namespace cnnkit::nn {

registry::Table& kernel_table() {
  constexpr unsigned f = registry::f32;
  static registry::Table t("nn", {{"nn_pool2d_forward", f}, {"nn_pool2d_backward", f},
                                  {"nn_global_avg_pool_forward", f}, {"nn_global_avg_pool_backward", f},
                                  {"nn_softmax_xent", f}});
  return t;
}

namespace {
enum Op { kPoolForward, kPoolBackward, kGapForward, kGapBackward, kSoftmaxXent };
const Kernels& kernels(Op op) {
  const Isa isa = kernel_table().isa_for(op, registry::f32);
  return registry::of_isa(isa, scalar::nn_kernels, avx2::nn_kernels, avx512::nn_kernels);
}
}  // namespace

void pool2d_forward(const float* x, float* y, int32_t* idx, const PoolGeom& g, int mode) {
  kernels(kPoolForward).pool2d_forward_fn(x, y, idx, g, mode);
}
void pool2d_backward(const float* gy, float* gx, const int32_t* idx, const PoolGeom& g, int mode) {
  kernels(kPoolBackward).pool2d_backward_fn(gy, gx, idx, g, mode);
}
void global_avg_pool_forward(const float* x, float* y, int64_t N, int64_t C, int64_t S, bool nhwc) {
  kernels(kGapForward).global_avg_pool_forward_fn(x, y, N, C, S, nhwc);
}
void global_avg_pool_backward(const float* gy, float* gx, int64_t N, int64_t C, int64_t S, bool nhwc) {
  kernels(kGapBackward).global_avg_pool_backward_fn(gy, gx, N, C, S, nhwc);
}
void softmax_xent(const float* z, const int64_t* labels, const float* soft, int64_t N, int64_t K, double eps,
                  double* loss, float* grad, double scale) {
  kernels(kSoftmaxXent).softmax_xent_fn(z, labels, soft, N, K, eps, loss, grad, scale);
}

}  // namespace cnnkit::nn
