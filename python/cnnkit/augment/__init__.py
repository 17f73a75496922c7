"""Image normalization and augmentation on NumPy batches (uint8 NHWC images, float32 NCHW
network inputs). Randomness lives in Python samplers; compiled kernels are deterministic.

So far: :mod:`cnnkit.augment.functional` with the fused uint8 -> float normalization and the
Pillow-exact point operations (equalize, autocontrast, invert, posterize, solarize).
"""
from . import functional
from .functional import (autocontrast, denormalize, equalize, invert, posterize, solarize,
                         spatial_dropout, spatial_dropout_backward, to_float_normalize)

__all__ = ["functional", "to_float_normalize", "denormalize", "equalize", "autocontrast", "invert",
           "posterize", "solarize", "spatial_dropout", "spatial_dropout_backward"]
