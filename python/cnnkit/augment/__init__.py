"""Image normalization and augmentation on NumPy batches (uint8 NHWC images, float32 NCHW
network inputs). Randomness lives in Python samplers; compiled kernels are deterministic.

So far: :mod:`cnnkit.augment.functional` with the fused uint8 -> float normalization.
"""
from . import functional
from .functional import denormalize, to_float_normalize

__all__ = ["functional", "to_float_normalize", "denormalize"]
