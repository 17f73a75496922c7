"""Image normalization and augmentation on NumPy batches (uint8 NHWC images, float32 NCHW
network inputs). Randomness lives in Python samplers; compiled kernels are deterministic.

So far: :mod:`cnnkit.augment.functional` with the fused uint8 -> float normalization, the
Pillow-exact point operations (equalize, autocontrast, invert, posterize, solarize), spatial
dropout, and Mixup/CutMix with their samplers; transform classes (:class:`Compose`,
:class:`MixUp`, :class:`CutMix`) with seeding and replay.
"""
from . import functional
from .functional import (autocontrast, cutmix, denormalize, equalize, invert, mixup, posterize,
                         sample_cutmix_params, sample_mixup_params, solarize, spatial_dropout,
                         spatial_dropout_backward, to_float_normalize)
from .transforms import Compose, CutMix, MixUp, Transform

__all__ = ["functional", "to_float_normalize", "denormalize", "equalize", "autocontrast", "invert",
           "posterize", "solarize", "spatial_dropout", "spatial_dropout_backward", "mixup", "cutmix",
           "sample_mixup_params", "sample_cutmix_params", "Transform", "Compose", "MixUp", "CutMix"]
