"""Image normalization and augmentation on NumPy batches (uint8 NHWC images, float32 NCHW
network inputs). Randomness lives in Python samplers; compiled kernels are deterministic.

:mod:`cnnkit.augment.functional` holds the deterministic batched functions: the fused uint8 ->
float normalization, the Pillow-exact point operations (equalize, autocontrast, invert, posterize,
solarize), spatial dropout, Mixup/CutMix/SamplePairing and Cutout/random erasing with their
samplers, and the image ops the policies use.

Automatic augmentation (torchvision semantics): the AutoAugment / RandAugment / TrivialAugmentWide
/ AugMix samplers (:func:`sample_autoaugment_params`, ...), :func:`augmix`, the augmentation
spaces (:func:`augmentation_space`) and the published AutoAugment tables (:data:`POLICIES`), plus
the samplers of :class:`RandomAffine` and :class:`ColorJitter`.

Transform classes, each with its own seeded Generator and replay through ``last_params``:
:class:`Compose`, :class:`MixUp`, :class:`CutMix`, :class:`SamplePairing`, :class:`Cutout`,
:class:`RandomErasing`, :class:`AutoAugment`, :class:`RandAugment`, :class:`TrivialAugmentWide`,
:class:`AugMix`, :class:`Normalize`, :class:`Equalize`, :class:`CLAHE`, :class:`SpatialDropout`,
:class:`RandomHorizontalFlip`, :class:`RandomVerticalFlip`, :class:`RandomResizedCrop`,
:class:`RandomCrop`, :class:`RandomAffine` and :class:`ColorJitter`.

Learned augmentation: :class:`SmartAugmentation` (Lemley et al. 2017), a network that learns to
merge same-class images into new training samples while the classifier trains
(:func:`generator_network` and :func:`classifier_network` are its default networks).
AutoAugment-style policy search on a proxy task: :func:`search_policy` (a REINFORCE-trained
:class:`PolicyController`, uniform random search, or RandAugment's grid) returns a table for
``AutoAugment(policy=...)``, saved and read with :func:`policy_to_json` / :func:`policy_from_json`.
"""
from . import functional
from ._mix import SamplePairingSchedule
from ._smart import SmartAugmentation, classifier_network, generator_network
from ._policy import (POLICIES, augmentation_space, policy_from_json, policy_to_json, augmix, sample_affine_params, sample_augmix_params,
                      sample_autoaugment_params, sample_color_jitter_params, sample_randaugment_params,
                      sample_trivialaugment_params)
from ._search import PolicyController, ProxyConfig, search_policy
from .functional import (autocontrast, cutmix, cutout, denormalize, equalize, invert, mixup, posterize,
                         random_fill_noise, sample_cutmix_params, sample_cutout_params, sample_erasing_params,
                         sample_mixup_params, sample_pairing, sample_pairing_params,
                         solarize, spatial_dropout, spatial_dropout_backward, to_float_normalize)
from .transforms import (CLAHE, AugMix, AutoAugment, ColorJitter, Compose, CutMix, Cutout, Equalize, MixUp,
                         Normalize, RandAugment, RandomAffine, RandomCrop, RandomErasing, RandomHorizontalFlip,
                         RandomResizedCrop, RandomVerticalFlip, SamplePairing, SpatialDropout, Transform,
                         TrivialAugmentWide)

__all__ = ["functional", "to_float_normalize", "denormalize", "equalize", "autocontrast", "invert",
           "posterize", "solarize", "spatial_dropout", "spatial_dropout_backward", "mixup", "cutmix",
           "sample_mixup_params", "sample_cutmix_params", "sample_pairing", "sample_pairing_params",
           "SamplePairingSchedule", "cutout", "sample_cutout_params", "sample_erasing_params",
           "random_fill_noise", "POLICIES", "augmentation_space", "sample_autoaugment_params",
           "sample_randaugment_params", "sample_trivialaugment_params", "sample_augmix_params", "augmix",
           "sample_affine_params", "sample_color_jitter_params", "Transform", "Compose", "MixUp", "CutMix",
           "SamplePairing", "Cutout", "RandomErasing", "AutoAugment", "RandAugment", "TrivialAugmentWide",
           "AugMix", "Normalize", "Equalize", "CLAHE", "SpatialDropout", "RandomHorizontalFlip",
           "RandomVerticalFlip", "RandomResizedCrop", "RandomCrop", "RandomAffine", "ColorJitter",
           "SmartAugmentation", "generator_network", "classifier_network",
           "search_policy", "PolicyController", "ProxyConfig", "policy_to_json", "policy_from_json"]
