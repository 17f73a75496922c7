"""Type stubs for ``cnnkit._core``, the compiled extension (pybind11; sources in cpp/bindings/).

Private: the public, documented, validating API is the ``cnnkit`` package. The bindings check each
array's dtype, contiguity, writeability and element count (raising TypeError / ValueError) and
release the GIL around every kernel; sizes (N, C, H, W, ...) are passed explicitly.

First drafted with pybind11-stubgen, then written by hand. tests/test_typing.py fails when the
extension and this file disagree on the public names or on any signature's parameter names.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, SupportsFloat, SupportsIndex, SupportsInt, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

_Int: TypeAlias = SupportsInt | SupportsIndex
_Float: TypeAlias = SupportsFloat | SupportsIndex
_Array: TypeAlias = NDArray[Any]
# An argument the binding reads with `is_none()` first: an array or None (optional buffers).
_OptArray: TypeAlias = NDArray[Any] | None

# --- runtime (bind_runtime.cpp) ---------------------------------------------------------------

def isa_supported() -> str: ...
def isa_active() -> str: ...
def set_isa(isa: str) -> None: ...
def kernel_builds() -> tuple[str, str, str]:
    """The ISA level each per-ISA kernel table's header code was compiled for (scalar, avx2, avx512)."""
def get_num_threads() -> int: ...
def set_num_threads(n: _Int) -> None: ...
def build_facts() -> dict[str, Any]: ...
def cuda_device_count() -> int: ...
def stream_run(kind: str, arrays: list[NDArray[np.float32]], reps: _Int) -> tuple[list[float], int]:
    """Run a STREAM-like kernel; returns (seconds per rep, bytes moved per rep)."""
def stream_rows(a: NDArray[np.float32], c: NDArray[np.float32], reps: _Int) -> tuple[list[float], int]:
    """A GEMM's operand traffic without its arithmetic: read every row of a, write its sum into c's row."""

# --- optimizers (bind_optim.cpp) --------------------------------------------------------------

class OptimPlan:
    """Parameter and state arrays of one optimizer, checked once; step() runs one fused multi-tensor update."""

    def __init__(self, algo: str, params: list[_Array], states: list[list[_Array]],
                 group_index: ArrayLike) -> None: ...
    def __len__(self) -> int: ...
    def step(self, grads: Sequence[_Array], hyper: ArrayLike, steps: ArrayLike) -> None: ...

def cuda_multi_tensor_step(algo: str, tensors: list[Any], hyper: ArrayLike) -> None: ...
def hyper_columns(algo: str) -> int: ...
def global_norm(arrays: Sequence[_Array], norm_type: _Float) -> float: ...
def all_finite(arrays: Sequence[_Array]) -> bool: ...
def scale_(arrays: Sequence[_Array], factor: _Float) -> None: ...

# --- convolution (bind_conv.cpp); geom is the ConvGeom built by cnnkit.ops.conv ----------------

class ConvGeom:
    """A checked convolution geometry (cnnkit::conv::Geom), built once by cnnkit.ops.conv."""
    N: int
    C: int
    H: int
    W: int
    K: int
    Ho: int
    Wo: int
    G: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    nhwc: bool
    def __init__(self, N: _Int, C: _Int, H: _Int, W: _Int, K: _Int, Ho: _Int, Wo: _Int, G: _Int, kh: _Int,
                 kw: _Int, sh: _Int, sw: _Int, dh: _Int, dw: _Int, pt: _Int, pl: _Int, nhwc: bool) -> None: ...


def conv_set_blas(sgemm: _Int, dgemm: _Int, set_threads: _Int) -> None:
    """Register cblas_sgemm / cblas_dgemm / openblas_set_num_threads by address."""
def conv_have_blas() -> bool: ...
def conv_algorithm(geom: ConvGeom, pass_: _Int) -> str: ...
def conv_winograd(geom: ConvGeom, pass_: _Int) -> bool: ...
def conv_forward(x: _Array, weight: _Array, bias: _OptArray, out: _Array, geom: ConvGeom) -> None: ...
def conv_backward_input(grad_out: _Array, weight: _Array, grad_input: _Array, geom: ConvGeom) -> None: ...
def conv_backward_weight(grad_out: _Array, x: _Array, grad_weight: _OptArray, grad_bias: _OptArray,
                         geom: ConvGeom) -> None: ...
def conv_backward(grad_out: _Array, x: _Array, weight: _Array, grad_input: _OptArray, grad_weight: _OptArray,
                  grad_bias: _OptArray, geom: ConvGeom) -> bool: ...
def conv2d_fused(x: _Array, weight: _Array, out: _Array, geom: ConvGeom, bias: _OptArray,
                 pre_scale: _OptArray, pre_shift: _OptArray, pre_relu: bool, residual: _OptArray,
                 post_relu: bool, stats_sum: _OptArray, stats_sumsq: _OptArray) -> str:
    """Fused forward convolution on cnnkit's own GEMM; returns the registry entry's name."""
def conv2d_fused_backward_input(grad_out: _OptArray, weight: _Array, grad_input: _Array, geom: ConvGeom,
                                x: _OptArray, scale: _OptArray, shift: _OptArray, relu: bool,
                                center: ArrayLike | None,
                                residual: _OptArray = None,
                                mask: _OptArray = None,
                                residual_stride: int = 1,
                                dy_apply: tuple[_Array, _Array, ArrayLike, ArrayLike, ArrayLike, ArrayLike]
                                | tuple[_Array, _Array, ArrayLike, ArrayLike, ArrayLike, ArrayLike, _OptArray, bool]
                                | None = None,
                                grad_weight: tuple[_Array, _Array, _OptArray, _OptArray, bool] | None = None,
                                weight_geom: ConvGeom | None = None,
                                ) -> tuple[str, NDArray[np.float64] | None, NDArray[np.float64] | None]:
    """Masked input gradient of conv(prologue(x)) (+ residual, given at the pixels of multiples of
    residual_stride only when that is above 1; mask: a stored ReLU output's) with the batch-norm
    backward's sums; (name, sum, sumxc). dy_apply (g, z, mean, A, B, D): grad_out is written with
    a batch norm's backward apply pass A*g - B - (z - mean)*D first (NHWC). grad_weight (dw, x_in,
    scale, shift, relu): the convolution's weight gradient from the same grad_out and
    max(fma(scale, x_in, shift), 0) too, with conv2d_fused_backward_weight's bits; with both,
    grad_out may be None (the apply pass's values are not kept): a depthwise NHWC convolution (at
    a stride, or at stride 1 of the output's size) then runs the three in one pass over the images
    (the same bits), and at stride 1 grad_input may be dy_apply's g itself. weight_geom: the weight
    gradient's own geometry, a 1x1 at a stride above 1 without padding whose output pixels are
    geom's input (geom: the same convolution at stride 1 on them; x_in the whole input): the input
    gradient at the strided pixels only. x and center None: no gradient epilogue (the plain input
    gradient; scale, shift, residual, mask None, relu False), returning (name, None, None)."""
def conv2d_fused_backward_weight(grad_out: _Array, x: _Array, grad_weight: _OptArray, grad_bias: _OptArray,
                                 geom: ConvGeom, pre_scale: _OptArray, pre_shift: _OptArray, pre_relu: bool) -> str:
    """Weight/bias gradients of conv(prologue(x)) on the GEMM path; returns the registry entry's name."""
def conv2d_backward_weight_bn(grad: _Array, z: _Array, mean: _Array, A: _Array, B: _Array, D: _Array, x: _Array,
                              grad_weight: _OptArray, grad_bias: _OptArray, geom: ConvGeom) -> str:
    """Weight/bias gradients with dy the batch-norm backward's apply pass A*grad - B - (z - mean)*D
    evaluated as read (the stem kernel only); returns the registry entry's name."""
def sgemm(a: _Array, b: _Array, c: _Array, trans_a: bool = False, trans_b: bool = False,
          accumulate: bool = False, isa: str | None = None) -> None:
    """c = [c +] op(a) @ op(b), float32, cnnkit's own packed GEMM at ISA level `isa`."""
def sgemm_shape(isa: str) -> dict[str, int]: ...

# --- normalisation (bind_norm.cpp); statistics are float64 -----------------------------------

def norm_update_running(running_mean: _OptArray, running_var: _OptArray, mean: ArrayLike, var: ArrayLike,
                        momentum: _Float, unbias: _Float) -> None: ...
def norm_invstd(var: _Array, eps: _Float, batch: bool = ...) -> NDArray[np.float64]:
    """1/sqrt(var + eps) in float64; ValueError for a negative, NaN or inf var (batch: a batch's own
    variance, only a negative one refused, a NaN giving a NaN)."""
def norm_train_finish(mean: ArrayLike, var: ArrayLike, eps: _Float, running_mean: _OptArray,
                      running_var: _OptArray, momentum: _Float, unbias: _Float, weight: _OptArray,
                      bias: _OptArray, limit: _Float) -> tuple[NDArray[np.float64], NDArray[np.float32] | None]:
    """(invstd, prologue) of a training-mode batch norm: norm_invstd (batch=True),
    norm_update_running, then with limit >= 0 norm_prologue_coefs (else None)."""
def norm_finish_sums(y: _Array, sum: ArrayLike, sumsq: ArrayLike, N: _Int, C: _Int, S: _Int,
                     nhwc: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(mean, biased var), float64, from the shifted sums of a fused convolution's statistics epilogue."""
def norm_prologue_coefs(mean: ArrayLike, invstd: ArrayLike, weight: _OptArray, bias: _OptArray,
                        limit: _Float) -> NDArray[np.float32] | None:
    """float32 concat(scale, shift) of a batch norm's output as the next convolution's prologue, or
    None when a channel's |mean| * invstd exceeds limit (or is NaN)."""
def norm_backward_coefs(invstd: ArrayLike, weight: _OptArray, count: _Float, sum_g: ArrayLike,
                        sum_gx: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(A, B, D) of the batch-norm backward's apply pass, float64."""
def norm_stats(x: _Array, N: _Int, C: _Int, S: _Int, nhwc: bool,
               per_sample: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...
def norm_apply(x: _Array, out: _Array, residual: _OptArray, N: _Int, C: _Int, S: _Int, nhwc: bool,
               per_sample: bool, mean: ArrayLike, invstd: ArrayLike, weight: _OptArray, bias: _OptArray,
               relu: bool, residual_affine: _OptArray = None, residual_relu: bool = False) -> None: ...
def norm_backward_reduce(grad_out: _Array, x: _Array, mask: _OptArray, N: _Int, C: _Int, S: _Int, nhwc: bool,
                         per_sample: bool, mean: ArrayLike, mask_affine: _OptArray = None,
                         pooled: bool = False,
                         grad_residual: _OptArray = None) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...
def norm_backward_apply(grad_out: _Array, x: _Array, mask: _OptArray, grad_input: _Array,
                        grad_residual: _OptArray, N: _Int, C: _Int, S: _Int, nhwc: bool, per_sample: bool,
                        mean: ArrayLike, A: ArrayLike, B: ArrayLike, D: ArrayLike,
                        mask_affine: _OptArray = None, pooled: bool = False) -> None: ...
def norm_affine_pool(x: _Array, out: _Array, N: _Int, C: _Int, S: _Int, nhwc: bool, affine: _Array,
                     relu: bool, mean: ArrayLike | None = None, sums: _OptArray = None) -> None: ...

# --- layers (bind_nn.cpp) ---------------------------------------------------------------------

class PoolGeom:
    """A checked 2-D pooling geometry (cnnkit::nn::PoolGeom), built by cnnkit.nn's pooling layers."""
    N: int
    C: int
    H: int
    W: int
    OH: int
    OW: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    nhwc: bool
    def __init__(self, N: _Int, C: _Int, H: _Int, W: _Int, OH: _Int, OW: _Int, kh: _Int, kw: _Int, sh: _Int,
                 sw: _Int, ph: _Int, pw: _Int, nhwc: bool) -> None: ...
def pool2d_forward(x: _Array, y: _Array, idx: _OptArray, geom: PoolGeom, mode: _Int) -> None: ...
def pool2d_backward(grad: _Array, gx: _Array, idx: _OptArray, geom: PoolGeom, mode: _Int) -> None: ...
def global_avg_pool_forward(x: _Array, y: _Array, N: _Int, C: _Int, S: _Int, nhwc: bool) -> None: ...
def global_avg_pool_backward(grad: _Array, gx: _Array, N: _Int, C: _Int, S: _Int, nhwc: bool) -> None: ...
def softmax_xent(logits: _Array, labels: _OptArray, soft: _OptArray, N: _Int, K: _Int, eps: _Float,
                 grad: _OptArray, scale: _Float) -> NDArray[np.float64]: ...

# --- augmentation (bind_augment.cpp) ----------------------------------------------------------

def augment_blend(x: _Array, out: _Array, perm: _Array, lam: _Array, N: _Int, S: _Int, pool: _OptArray = None,
                  M: _Int = 0) -> None: ...
def augment_fill_boxes(images: _Array, out: _Array, N: _Int, H: _Int, W: _Int, C: _Int, nhwc: bool,
                       boxes: _Array, K: _Int, mode: _Int, values: _Array) -> None: ...
def augment_equalize_cv_lut(hist: _Array, count: _Int) -> NDArray[np.uint8]: ...
def augment_paste_boxes(x: _Array, out: _Array, perm: _Array, boxes: _Array, N: _Int, C: _Int, H: _Int,
                        W: _Int) -> None: ...
def augment_normalize_u8(images: _Array, out: _Array, N: _Int, P: _Int, C: _Int, nchw_out: bool,
                         scale: _Array, hi: _Array, lo: _Array, per_image: bool) -> None: ...
def augment_image_stats_u8(images: _Array, N: _Int, PC: _Int) -> tuple[
        NDArray[np.int64], NDArray[np.int64], NDArray[np.uint8], NDArray[np.uint8]]:
    """Exact per-image sum, sum of squares, min and max of uint8 images."""
def augment_histogram_u8(images: _Array, N: _Int, P: _Int, C: _Int) -> NDArray[np.int64]:
    """Per-image, per-channel histograms, shape (N, C, 256)."""
def augment_lut_u8(images: _Array, out: _Array, N: _Int, P: _Int, C: _Int, lut: _Array) -> None:
    """out = lut[n, c, images] with lut of shape (N, C, 256)."""
def augment_apply_ops(images: _Array, out: _Array, N: _Int, H: _Int, W: _Int, C: _Int, K: _Int, codes: _Array,
                      params: _Array, bilinear: bool, fill: _OptArray) -> None: ...
def augment_resize(images: _Array, out: _Array, N: _Int, H: _Int, W: _Int, C: _Int, boxes: _Array, OH: _Int,
                   OW: _Int, antialias: bool) -> None: ...
def augment_remap(images: _Array, out: _Array, N: _Int, H: _Int, W: _Int, C: _Int, OH: _Int, OW: _Int,
                  rows: _Array, cols: _Array, fill: _Array) -> None: ...
def augment_clahe(images: _Array, out: _Array, N: _Int, H: _Int, W: _Int, C: _Int, tiles_x: _Int, tiles_y: _Int,
                  clip_limit: _Float) -> None: ...


# --- kernel registries (bind_kernels.cpp); read through cnnkit.kernels(family) ------------------

def conv_registry() -> list[tuple[str, str, list[str]]]:
    """Every conv kernel entry in priority order: (name, isa, passes)."""
def conv_registry_supports(index: _Int, geom: ConvGeom, dtype: str, pass_: str) -> bool: ...
def conv_registry_select(geom: ConvGeom, dtype: str, pass_: str) -> int: ...
def conv_registry_force(index: _Int) -> None: ...
def conv_registry_forced() -> int: ...
def registry_entries(family: str) -> list[tuple[str, str, list[str]]]: ...
def registry_supports(family: str, index: _Int, op: str, dtypes: Sequence[str]) -> bool: ...
def registry_select(family: str, op: str, dtypes: Sequence[str]) -> int: ...
def registry_force(family: str, index: _Int) -> None: ...
def registry_forced(family: str) -> int: ...
def registry_hits(family: str, index: _Int) -> int: ...
