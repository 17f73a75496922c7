"""Image normalization and augmentation on NumPy batches (uint8 NHWC images, float32 NCHW
network inputs). Randomness lives in Python samplers; compiled kernels are deterministic.

So far: :mod:`cnnkit.augment.functional` with the fused uint8 -> float normalization, the
Pillow-exact point operations (equalize, autocontrast, invert, posterize, solarize), spatial
dropout, Mixup/CutMix/SamplePairing and Cutout/random erasing with their samplers; transform
classes (:class:`Compose`, :class:`MixUp`, :class:`CutMix`, :class:`SamplePairing`,
:class:`Cutout`, :class:`RandomErasing`) with seeding and replay.
"""
from . import functional
from ._mix import SamplePairingSchedule
from .functional import (autocontrast, cutmix, cutout, denormalize, equalize, invert, mixup, posterize,
                         random_fill_noise, sample_cutmix_params, sample_cutout_params, sample_erasing_params,
                         sample_mixup_params, sample_pairing, sample_pairing_params,
                         solarize, spatial_dropout, spatial_dropout_backward, to_float_normalize)
from .transforms import Compose, CutMix, Cutout, MixUp, RandomErasing, SamplePairing, Transform

__all__ = ["functional", "to_float_normalize", "denormalize", "equalize", "autocontrast", "invert",
           "posterize", "solarize", "spatial_dropout", "spatial_dropout_backward", "mixup", "cutmix",
           "sample_mixup_params", "sample_cutmix_params", "sample_pairing", "sample_pairing_params",
           "SamplePairingSchedule", "cutout", "sample_cutout_params", "sample_erasing_params",
           "random_fill_noise", "Transform", "Compose", "MixUp", "CutMix", "SamplePairing", "Cutout",
           "RandomErasing"]
