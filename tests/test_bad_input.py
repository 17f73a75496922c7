"""Bad inputs derived from every public signature: each must raise TypeError or ValueError naming
the argument, before any input is modified.

The walk covers the public API of cnnkit's array layers: cnnkit's own ``__all__`` and those of
``cnnkit.ops``, ``cnnkit.nn``, ``cnnkit.optim`` (with ``functional`` and ``lr_scheduler``) and
``cnnkit.augment`` (with ``functional``): every function, every class's constructor, and the main
method of each class (``forward`` and ``backward`` for layers, ``forward`` for the loss,
``__call__`` for transforms, ``step`` for optimizers). :data:`EXAMPLES` gives one valid call of each (every parameter given a valid value
where it has one); for each parameter the test then substitutes, one at a time:

* wrong types: ``object()``, a string (a name that is no choice, for string parameters), None
  where the annotation does not allow it, a float for an int;
* NaN and infinities for floats; -1 and 0 for ints;
* for arrays: int64, float16 and complex64 dtypes, an empty batch, the other layout (NCHW <->
  NHWC) for 4-D arrays, and a non-contiguous view with the same values.

A substitution must raise TypeError or ValueError whose message names the parameter, with every
input array unchanged. Accepted instead: an empty batch that returns (an empty result is legal),
or raises naming any argument (the other arrays no longer match it); the other layout raising
naming any argument; a non-contiguous view giving the same result (and the same in-place updates)
as the contiguous array. Anything else that is accepted needs an entry in :data:`VALID` saying why
the value is legitimately valid.
"""
from __future__ import annotations

import importlib
import inspect
import math
import re

import numpy as np
import pytest

import cnnkit
import cnnkit.augment.functional as AF
import cnnkit.optim.functional as OF
from cnnkit import augment as A
from cnnkit import nn, ops, optim

F32 = np.float32


def f32(*shape, seed=0, positive=False):
    a = np.random.default_rng(seed).standard_normal(shape).astype(F32)
    return np.abs(a) + F32(0.5) if positive else a


def u8(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def gen(seed=0):
    return np.random.default_rng(seed)


X = (2, 3, 5, 6)          # NCHW float batch: N, C, H, W all different, so a layout swap shows
IMG = (2, 5, 6, 3)        # NHWC uint8 batch


def _bn_stats():
    x = f32(*X)
    _, m, s = ops.batch_norm_train(x, f32(3, seed=1), f32(3, seed=2), None, None)
    return m, s


def _gn_stats():
    _, m, s = ops.group_norm(f32(2, 4, 5, 6), 2, return_stats=True)
    return m, s


def _opt(cls=optim.SGD, **kw):
    return cls([f32(4, 3)], lr=0.1, **kw)


def _bound(make, method):
    """A method of a fresh object: (bound method, its qualified test name)."""
    return lambda: getattr(make(), method)


# name -> (factory of the callable, factory of the valid keyword arguments). A callable is made
# fresh for every call (objects with state: layers, transforms, optimizers).
EXAMPLES = {
    # ---- cnnkit / cnnkit.ops -------------------------------------------------------------------
    "cnnkit.set_num_threads": (lambda: cnnkit.set_num_threads, lambda: dict(n=cnnkit.get_num_threads())),
    "cnnkit.kernels": (lambda: cnnkit.kernels, lambda: dict(family="conv")),
    "cnnkit.ops.conv2d": (lambda: ops.conv2d, lambda: dict(
        x=f32(*X), weight=f32(4, 3, 3, 3, seed=1), bias=f32(4, seed=2), stride=1, padding=1, dilation=1, groups=1,
        layout="NCHW", out=np.empty((2, 4, 5, 6), F32))),
    "cnnkit.ops.conv2d_backward": (lambda: ops.conv2d_backward, lambda: dict(
        grad_output=f32(2, 4, 5, 6, seed=3), x=f32(*X), weight=f32(4, 3, 3, 3, seed=1), stride=1, padding=1,
        dilation=1, groups=1, layout="NCHW", needs=("input", "weight", "bias"))),
    "cnnkit.ops.conv2d_output_shape": (lambda: ops.conv2d_output_shape, lambda: dict(
        x_shape=X, weight_shape=(4, 3, 3, 3), stride=1, padding=1, dilation=1, groups=1, layout="NCHW")),
    "cnnkit.ops.conv2d_algorithm": (lambda: ops.conv2d_algorithm, lambda: dict(
        x_shape=X, weight_shape=(4, 3, 3, 3), stride=1, padding=1, dilation=1, groups=1, layout="NCHW",
        pass_="forward")),
    "cnnkit.ops.depthwise_separable_conv2d": (lambda: ops.depthwise_separable_conv2d, lambda: dict(
        x=f32(*X), dw_weight=f32(3, 1, 3, 3, seed=1), pw_weight=f32(4, 3, 1, 1, seed=2), dw_bias=f32(3, seed=3),
        pw_bias=f32(4, seed=4), stride=1, padding=1, dilation=1, layout="NCHW", out=np.empty((2, 4, 5, 6), F32),
        workspace={})),
    "cnnkit.ops.depthwise_separable_conv2d_backward": (lambda: ops.depthwise_separable_conv2d_backward, lambda: dict(
        grad_output=f32(2, 4, 5, 6, seed=5), x=f32(*X), dw_weight=f32(3, 1, 3, 3, seed=1),
        pw_weight=f32(4, 3, 1, 1, seed=2), dw_bias=f32(3, seed=3), stride=1, padding=1, dilation=1, layout="NCHW",
        workspace={})),
    "cnnkit.ops.batch_norm_train": (lambda: ops.batch_norm_train, lambda: dict(
        x=f32(*X), weight=f32(3, seed=1), bias=f32(3, seed=2), running_mean=np.zeros(3, F32),
        running_var=np.ones(3, F32), momentum=0.1, eps=1e-5, activation="relu", residual=f32(*X, seed=3),
        layout="NCHW", virtual_batch_size=1, out=np.empty(X, F32), return_stats=True)),
    "cnnkit.ops.batch_norm_infer": (lambda: ops.batch_norm_infer, lambda: dict(
        x=f32(*X), weight=f32(3, seed=1), bias=f32(3, seed=2), running_mean=f32(3, seed=3),
        running_var=f32(3, seed=4, positive=True), eps=1e-5, activation="relu", residual=f32(*X, seed=5),
        layout="NCHW", out=np.empty(X, F32))),
    "cnnkit.ops.batch_norm_backward": (lambda: ops.batch_norm_backward, lambda: dict(
        grad_output=f32(*X, seed=6), x=f32(*X), weight=f32(3, seed=1), save_mean=_bn_stats()[0],
        save_invstd=_bn_stats()[1], bias=f32(3, seed=2), activation="relu", layout="NCHW",
        needs=("input", "weight", "bias"), out=np.empty(X, F32))),
    "cnnkit.ops.group_norm": (lambda: ops.group_norm, lambda: dict(
        x=f32(2, 4, 5, 6), num_groups=2, weight=f32(4, seed=1), bias=f32(4, seed=2), eps=1e-5, activation="relu",
        layout="NCHW", return_stats=False, out=np.empty((2, 4, 5, 6), F32))),
    "cnnkit.ops.group_norm_backward": (lambda: ops.group_norm_backward, lambda: dict(
        grad_output=f32(2, 4, 5, 6, seed=6), x=f32(2, 4, 5, 6), num_groups=2, weight=f32(4, seed=1),
        save_mean=_gn_stats()[0], save_invstd=_gn_stats()[1], bias=f32(4, seed=2), layout="NCHW",
        needs=("input", "weight", "bias"), out=np.empty((2, 4, 5, 6), F32))),
    "cnnkit.ops.fold_batch_norm": (lambda: ops.fold_batch_norm, lambda: dict(
        conv_weight=f32(4, 3, 3, 3), conv_bias=f32(4, seed=1), bn_weight=f32(4, seed=2), bn_bias=f32(4, seed=3),
        running_mean=f32(4, seed=4), running_var=f32(4, seed=5, positive=True), eps=1e-5)),
    # ---- cnnkit.nn -----------------------------------------------------------------------------
    "cnnkit.nn.Capture": (lambda: nn.Capture, lambda: dict(name="0")),
    "cnnkit.nn.Conv2d": (lambda: nn.Conv2d, lambda: dict(
        in_channels=3, out_channels=4, kernel_size=3, stride=1, padding=1, dilation=1, groups=1, bias=True,
        layout="NCHW", rng=gen())),
    "cnnkit.nn.Conv2d.forward": (_bound(lambda: nn.Conv2d(3, 4, 3, padding=1, rng=gen()), "forward"),
                                 lambda: dict(x=f32(*X))),
    "cnnkit.nn.DepthwiseSeparableConv2d": (lambda: nn.DepthwiseSeparableConv2d, lambda: dict(
        in_channels=3, out_channels=4, kernel_size=3, stride=1, padding=1, bias=True, layout="NCHW", rng=gen())),
    "cnnkit.nn.DepthwiseSeparableConv2d.forward": (
        _bound(lambda: nn.DepthwiseSeparableConv2d(3, 4, rng=gen()), "forward"), lambda: dict(x=f32(*X))),
    "cnnkit.nn.BatchNorm2d": (lambda: nn.BatchNorm2d, lambda: dict(
        num_features=3, eps=1e-5, momentum=0.1, affine=True, activation="relu", layout="NCHW")),
    "cnnkit.nn.BatchNorm2d.forward": (_bound(lambda: nn.BatchNorm2d(3), "forward"),
                                      lambda: dict(x=f32(*X), residual=f32(*X, seed=1))),
    "cnnkit.nn.GroupNorm": (lambda: nn.GroupNorm, lambda: dict(
        num_groups=3, num_channels=3, eps=1e-5, affine=True, activation="relu", layout="NCHW")),
    "cnnkit.nn.GroupNorm.forward": (_bound(lambda: nn.GroupNorm(3, 3), "forward"), lambda: dict(x=f32(*X))),
    "cnnkit.nn.ReLU.forward": (_bound(nn.ReLU, "forward"), lambda: dict(x=f32(*X))),
    "cnnkit.nn.MaxPool2d": (lambda: nn.MaxPool2d, lambda: dict(
        kernel_size=2, stride=2, padding=1, ceil_mode=False, layout="NCHW")),
    "cnnkit.nn.MaxPool2d.forward": (_bound(lambda: nn.MaxPool2d(2), "forward"), lambda: dict(x=f32(*X))),
    "cnnkit.nn.AvgPool2d": (lambda: nn.AvgPool2d, lambda: dict(
        kernel_size=2, stride=2, padding=1, ceil_mode=False, count_include_pad=True, layout="NCHW")),
    "cnnkit.nn.AvgPool2d.forward": (_bound(lambda: nn.AvgPool2d(2), "forward"), lambda: dict(x=f32(*X))),
    "cnnkit.nn.GlobalAvgPool2d": (lambda: nn.GlobalAvgPool2d, lambda: dict(layout="NCHW")),
    "cnnkit.nn.GlobalAvgPool2d.forward": (_bound(nn.GlobalAvgPool2d, "forward"), lambda: dict(x=f32(*X))),
    "cnnkit.nn.Flatten": (lambda: nn.Flatten, lambda: dict(layout="NCHW")),
    "cnnkit.nn.Flatten.forward": (_bound(nn.Flatten, "forward"), lambda: dict(x=f32(*X))),
    "cnnkit.nn.Linear": (lambda: nn.Linear, lambda: dict(in_features=6, out_features=4, bias=True, rng=gen())),
    "cnnkit.nn.Linear.forward": (_bound(lambda: nn.Linear(6, 4, rng=gen()), "forward"), lambda: dict(x=f32(2, 6))),
    "cnnkit.nn.Dropout": (lambda: nn.Dropout, lambda: dict(p=0.5, seed=0)),
    "cnnkit.nn.Dropout.forward": (_bound(lambda: nn.Dropout(seed=0), "forward"), lambda: dict(x=f32(*X))),
    "cnnkit.nn.SpatialDropout2d": (lambda: nn.SpatialDropout2d, lambda: dict(p=0.5, layout="NCHW", seed=0)),
    "cnnkit.nn.SpatialDropout2d.forward": (_bound(lambda: nn.SpatialDropout2d(seed=0), "forward"),
                                           lambda: dict(x=f32(*X))),
    "cnnkit.nn.ResidualBlock": (lambda: nn.ResidualBlock, lambda: dict(
        in_channels=3, out_channels=4, stride=1, groups=1, norm="batch", layout="NCHW", rng=gen())),
    "cnnkit.nn.ResidualBlock.forward": (_bound(lambda: nn.ResidualBlock(3, 4, rng=gen()), "forward"),
                                        lambda: dict(x=f32(*X))),
    "cnnkit.nn.BottleneckBlock": (lambda: nn.BottleneckBlock, lambda: dict(
        in_channels=3, out_channels=8, width=4, stride=1, groups=2, norm="batch", layout="NCHW", rng=gen())),
    "cnnkit.nn.BottleneckBlock.forward": (
        _bound(lambda: nn.BottleneckBlock(3, 8, 4, groups=2, rng=gen()), "forward"), lambda: dict(x=f32(*X))),
    "cnnkit.nn.Sequential.forward": (_bound(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, rng=gen()), nn.ReLU()),
                                            "forward"), lambda: dict(x=f32(*X))),
    "cnnkit.nn.CrossEntropyLoss": (lambda: nn.CrossEntropyLoss, lambda: dict(
        weight=np.ones(5), ignore_index=-100, reduction="mean", label_smoothing=0.1)),
    "cnnkit.nn.CrossEntropyLoss.forward": (_bound(nn.CrossEntropyLoss, "forward"), lambda: dict(
        logits=f32(2, 5), target=np.array([1, 4]))),
    # ---- cnnkit.optim --------------------------------------------------------------------------
    **{f"cnnkit.optim.{cls.__name__}": (lambda cls=cls: cls, lambda kw=kw: dict(params=[f32(4, 3)], lr=0.1, **kw))
       for cls, kw in ((optim.SGD, dict(momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True,
                                        maximize=False)),
                       (optim.Adagrad, dict(lr_decay=0.0, weight_decay=0.01, initial_accumulator_value=0.1,
                                            eps=1e-10, maximize=False)),
                       (optim.RMSprop, dict(alpha=0.99, eps=1e-8, weight_decay=0.01, momentum=0.9,
                                            centered=True, maximize=False)),
                       (optim.Adadelta, dict(rho=0.9, eps=1e-6, weight_decay=0.01, maximize=False)),
                       (optim.Adam, dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=True,
                                         maximize=False)),
                       (optim.AdamW, dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=True,
                                          maximize=False)))},
    **{f"cnnkit.optim.{cls.__name__}.step": (_bound(lambda cls=cls: _opt(cls), "step"),
                                             lambda: dict(grads=[f32(4, 3, seed=1)], found_inf=False))
       for cls in (optim.SGD, optim.Adagrad, optim.RMSprop, optim.Adadelta, optim.Adam, optim.AdamW)},
    "cnnkit.optim.clip_grad_norm_": (lambda: optim.clip_grad_norm_, lambda: dict(
        grads=[f32(4, 3)], max_norm=1.0, norm_type=2.0, error_if_nonfinite=True)),
    "cnnkit.optim.global_norm": (lambda: optim.global_norm, lambda: dict(grads=[f32(4, 3)], norm_type=2.0)),
    "cnnkit.optim.found_inf": (lambda: optim.found_inf, lambda: dict(grads=[f32(4, 3)])),
    "cnnkit.optim.flatten_state_dict": (lambda: optim.flatten_state_dict, lambda: dict(
        state_dict=_opt(optim.Adam).state_dict())),
    "cnnkit.optim.StepLR": (lambda: optim.StepLR, lambda: dict(optimizer=_opt(), step_size=2, gamma=0.1,
                                                               last_epoch=-1)),
    "cnnkit.optim.ExponentialLR": (lambda: optim.ExponentialLR, lambda: dict(optimizer=_opt(), gamma=0.9)),
    "cnnkit.optim.CosineAnnealingLR": (lambda: optim.CosineAnnealingLR, lambda: dict(
        optimizer=_opt(), T_max=10, eta_min=0.001)),
    "cnnkit.optim.LinearLR": (lambda: optim.LinearLR, lambda: dict(
        optimizer=_opt(), start_factor=0.5, end_factor=1.0, total_iters=5)),
    "cnnkit.optim.OneCycleLR": (lambda: optim.OneCycleLR, lambda: dict(
        optimizer=_opt(momentum=0.9), max_lr=0.1, total_steps=10, pct_start=0.3, anneal_strategy="cos",
        cycle_momentum=True, base_momentum=0.85, max_momentum=0.95, div_factor=25.0, final_div_factor=1e4,
        three_phase=False)),
    "cnnkit.optim.ExponentialRangeLR": (lambda: optim.ExponentialRangeLR, lambda: dict(
        optimizer=_opt(), start_lr=1e-4, end_lr=1.0, num_steps=10)),
    "cnnkit.optim.functional.sgd_": (lambda: OF.sgd_, lambda: dict(
        params=[f32(4, 3)], grads=[f32(4, 3, seed=1)], momentum_buffers=[np.zeros((4, 3), F32)], step=1, lr=0.1,
        momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=False, maximize=False)),
    "cnnkit.optim.functional.adagrad_": (lambda: OF.adagrad_, lambda: dict(
        params=[f32(4, 3)], grads=[f32(4, 3, seed=1)], state_sums=[np.zeros((4, 3), F32)], step=1, lr=0.1,
        lr_decay=0.0, weight_decay=0.01, eps=1e-10, maximize=False)),
    "cnnkit.optim.functional.rmsprop_": (lambda: OF.rmsprop_, lambda: dict(
        params=[f32(4, 3)], grads=[f32(4, 3, seed=1)], square_avgs=[np.zeros((4, 3), F32)],
        grad_avgs=[np.zeros((4, 3), F32)], momentum_buffers=[np.zeros((4, 3), F32)], step=1, lr=0.1, alpha=0.99,
        eps=1e-8, weight_decay=0.01, momentum=0.9, centered=True, maximize=False)),
    "cnnkit.optim.functional.adadelta_": (lambda: OF.adadelta_, lambda: dict(
        params=[f32(4, 3)], grads=[f32(4, 3, seed=1)], square_avgs=[np.zeros((4, 3), F32)],
        acc_deltas=[np.zeros((4, 3), F32)], step=1, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.01, maximize=False)),
    **{f"cnnkit.optim.functional.{fn.__name__}": (lambda fn=fn: fn, lambda: dict(
        params=[f32(4, 3)], grads=[f32(4, 3, seed=1)], exp_avgs=[np.zeros((4, 3), F32)],
        exp_avg_sqs=[np.zeros((4, 3), F32)], step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
        amsgrad=True, max_exp_avg_sqs=[np.zeros((4, 3), F32)], maximize=False)) for fn in (OF.adam_, OF.adamw_)},
    # ---- cnnkit.augment (functions) ------------------------------------------------------------
    "cnnkit.augment.to_float_normalize": (lambda: A.to_float_normalize, lambda: dict(
        images=u8(*IMG), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4), mode="channel", layout="NCHW",
        out=np.empty((2, 3, 5, 6), F32))),
    "cnnkit.augment.denormalize": (lambda: A.denormalize, lambda: dict(
        x=f32(*X), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4), layout="NCHW", to_uint8=True)),
    "cnnkit.augment.equalize": (lambda: A.equalize, lambda: dict(images=u8(*IMG), mode="pil",
                                                                 out=np.empty(IMG, np.uint8))),
    "cnnkit.augment.autocontrast": (lambda: A.autocontrast, lambda: dict(images=u8(*IMG), out=np.empty(IMG, np.uint8))),
    "cnnkit.augment.invert": (lambda: A.invert, lambda: dict(images=u8(*IMG), out=np.empty(IMG, np.uint8))),
    "cnnkit.augment.posterize": (lambda: A.posterize, lambda: dict(images=u8(*IMG), bits=4,
                                                                   out=np.empty(IMG, np.uint8))),
    "cnnkit.augment.solarize": (lambda: A.solarize, lambda: dict(images=u8(*IMG), threshold=128,
                                                                 out=np.empty(IMG, np.uint8))),
    "cnnkit.augment.spatial_dropout": (lambda: A.spatial_dropout, lambda: dict(
        x=f32(*X), p=0.5, rng=gen(), training=True, layout="NCHW", out=np.empty(X, F32))),
    "cnnkit.augment.spatial_dropout_backward": (lambda: A.spatial_dropout_backward, lambda: dict(
        grad_output=f32(*X), scale=np.full((2, 3), 2.0), layout="NCHW", out=np.empty(X, F32))),
    "cnnkit.augment.mixup": (lambda: A.mixup, lambda: dict(
        x=f32(*X), labels=np.array([0, 2]), lam=0.7, perm=np.array([1, 0]), num_classes=3, label_smoothing=0.1,
        out=np.empty(X, F32))),
    "cnnkit.augment.cutmix": (lambda: A.cutmix, lambda: dict(
        x=f32(*X), labels=np.array([0, 2]), boxes=np.array([[0, 0, 2, 3], [1, 1, 4, 4]]), perm=np.array([1, 0]),
        num_classes=3, label_smoothing=0.1, out=np.empty(X, F32))),
    "cnnkit.augment.sample_mixup_params": (lambda: A.sample_mixup_params, lambda: dict(
        rng=gen(), batch_size=4, alpha=1.0, mode="elem", p=0.5)),
    "cnnkit.augment.sample_cutmix_params": (lambda: A.sample_cutmix_params, lambda: dict(
        rng=gen(), batch_shape=X, alpha=1.0, mode="elem", p=0.5)),
    "cnnkit.augment.sample_pairing": (lambda: A.sample_pairing, lambda: dict(
        x=f32(*X), partners=np.array([0, 2]), pool=f32(3, 3, 5, 6, seed=1), applied=np.array([True, False]),
        out=np.empty(X, F32))),
    "cnnkit.augment.sample_pairing_params": (lambda: A.sample_pairing_params, lambda: dict(
        rng=gen(), batch_size=4, pool_size=3, p=0.5, same_on_batch=False)),
    "cnnkit.augment.SamplePairingSchedule": (lambda: A.SamplePairingSchedule, lambda: dict(
        warmup=3, on=2, off=1, fine_tune_from=9)),
    "cnnkit.augment.cutout": (lambda: A.cutout, lambda: dict(
        images=u8(*IMG), boxes=np.array([[[0, 0, 2, 3]], [[1, 1, 4, 4]]]), fill=(1, 2, 3), layout="NHWC",
        out=np.empty(IMG, np.uint8))),
    "cnnkit.augment.sample_cutout_params": (lambda: A.sample_cutout_params, lambda: dict(
        rng=gen(), batch_size=2, image_size=(5, 6), size=2, num_holes=2, p=0.5, same_on_batch=False)),
    "cnnkit.augment.sample_erasing_params": (lambda: A.sample_erasing_params, lambda: dict(
        rng=gen(), batch_size=2, image_size=(5, 6), scale=(0.02, 0.33), ratio=(0.3, 3.3), p=0.5,
        same_on_batch=False)),
    "cnnkit.augment.random_fill_noise": (lambda: A.random_fill_noise, lambda: dict(
        rng=gen(), images=u8(*IMG), layout="NHWC")),
    "cnnkit.augment.augmentation_space": (lambda: A.augmentation_space, lambda: dict(
        method="randaugment", num_bins=31, image_size=(5, 6), all_ops=True)),
    "cnnkit.augment.sample_autoaugment_params": (lambda: A.sample_autoaugment_params, lambda: dict(
        rng=gen(), batch_size=2, image_size=(5, 6), policy="cifar10", same_on_batch=False)),
    "cnnkit.augment.sample_randaugment_params": (lambda: A.sample_randaugment_params, lambda: dict(
        rng=gen(), batch_size=2, image_size=(5, 6), num_ops=2, magnitude=9, num_magnitude_bins=31,
        same_on_batch=False)),
    "cnnkit.augment.sample_trivialaugment_params": (lambda: A.sample_trivialaugment_params, lambda: dict(
        rng=gen(), batch_size=2, num_magnitude_bins=31, same_on_batch=False)),
    "cnnkit.augment.sample_augmix_params": (lambda: A.sample_augmix_params, lambda: dict(
        rng=gen(), batch_size=2, image_size=(5, 6), severity=3, mixture_width=2, chain_depth=2, alpha=1.0,
        all_ops=True, same_on_batch=False)),
    "cnnkit.augment.augmix": (lambda: A.augmix, lambda: dict(
        images=u8(*IMG), params=A.sample_augmix_params(gen(), 2, (5, 6), mixture_width=2), interpolation="bilinear",
        fill=(1, 2, 3))),
    "cnnkit.augment.sample_affine_params": (lambda: A.sample_affine_params, lambda: dict(
        rng=gen(), batch_size=2, image_size=(5, 6), degrees=10.0, translate=(0.1, 0.1), scale=(0.9, 1.1),
        shear=5.0, same_on_batch=False)),
    "cnnkit.augment.sample_color_jitter_params": (lambda: A.sample_color_jitter_params, lambda: dict(
        rng=gen(), batch_size=2, brightness=0.2, contrast=0.2, saturation=0.2, same_on_batch=False)),
    "cnnkit.augment.functional.apply_ops": (lambda: AF.apply_ops, lambda: dict(
        images=u8(*IMG), ops=np.array([[1, 6], [5, 10]]), magnitudes=np.array([[0.1, 0.2], [10.0, 4.0]]),
        interpolation="bilinear", fill=(1, 2, 3), out=np.empty(IMG, np.uint8))),
    **{f"cnnkit.augment.functional.{fn.__name__}": (lambda fn=fn: fn, lambda: dict(
        images=u8(*IMG), factor=np.array([0.5, 1.5]), out=np.empty(IMG, np.uint8)))
       for fn in (AF.adjust_brightness, AF.adjust_contrast, AF.adjust_saturation, AF.adjust_sharpness)},
    **{f"cnnkit.augment.functional.{fn.__name__}": (lambda fn=fn: fn, lambda: dict(
        images=u8(*IMG), out=np.empty(IMG, np.uint8))) for fn in (AF.hflip, AF.vflip)},
    "cnnkit.augment.functional.affine": (lambda: AF.affine, lambda: dict(
        images=u8(*IMG), angle=10.0, translate=(1, 2), scale=1.1, shear=(5.0, 0.0), center=(2.0, 3.0),
        interpolation="bilinear", fill=(1, 2, 3), out=np.empty(IMG, np.uint8))),
    "cnnkit.augment.functional.rotate": (lambda: AF.rotate, lambda: dict(
        images=u8(*IMG), angle=10.0, interpolation="bilinear", fill=(1, 2, 3), center=(2.0, 3.0),
        out=np.empty(IMG, np.uint8))),
    **{f"cnnkit.augment.functional.{fn.__name__}": (lambda fn=fn, arg=arg: fn, lambda arg=arg: {
        "images": u8(*IMG), arg: 0.3, "interpolation": "bilinear", "fill": (1, 2, 3),
        "out": np.empty(IMG, np.uint8)}) for fn, arg in ((AF.shear_x, "factor"), (AF.shear_y, "factor"),
                                                           (AF.translate_x, "pixels"), (AF.translate_y, "pixels"))},
    "cnnkit.augment.functional.resized_crop": (lambda: AF.resized_crop, lambda: dict(
        images=u8(*IMG), boxes=np.array([[0, 0, 3, 4], [1, 1, 4, 5]]), size=(4, 4), antialias=True,
        out=np.empty((2, 4, 4, 3), np.uint8))),
    "cnnkit.augment.functional.pad_crop": (lambda: AF.pad_crop, lambda: dict(
        images=u8(*IMG), offsets=np.array([[0, 1], [2, 3]]), padding=2, fill=(1, 2, 3), padding_mode="constant",
        out=np.empty(IMG, np.uint8))),
    "cnnkit.augment.functional.clahe": (lambda: AF.clahe, lambda: dict(
        images=u8(*IMG), clip_limit=2.0, tile_grid_size=(2, 2), out=np.empty(IMG, np.uint8))),
    "cnnkit.augment.functional.sample_resized_crop_params": (lambda: AF.sample_resized_crop_params, lambda: dict(
        rng=gen(), batch_size=2, image_size=(5, 6), scale=(0.08, 1.0), ratio=(0.75, 1.33), same_on_batch=False)),
    "cnnkit.augment.functional.sample_pad_crop_params": (lambda: AF.sample_pad_crop_params, lambda: dict(
        rng=gen(), batch_size=2, padding=2, same_on_batch=False)),
    "cnnkit.augment.functional.sample_flip_params": (lambda: AF.sample_flip_params, lambda: dict(
        rng=gen(), batch_size=2, p=0.5, same_on_batch=False)),
}

# ---- fused convolution, nn.fusion ------------------------------------------------------------------
EXAMPLES.update({
    "cnnkit.ops.conv2d_fused": (lambda: ops.conv2d_fused, lambda: dict(
        x=f32(*X), weight=f32(4, 3, 3, 3, seed=1), bias=f32(4, seed=2), stride=1, padding=1, dilation=1,
        groups=1, layout="NCHW", pre_scale=f32(3, seed=3), pre_shift=f32(3, seed=4), pre_relu=True,
        residual=f32(2, 4, 5, 6, seed=5), post_relu=True, stats=False, out=np.empty((2, 4, 5, 6), F32),
        workspace={})),
    "cnnkit.ops.conv2d_fused_backward": (lambda: ops.conv2d_fused_backward, lambda: dict(
        grad_output=f32(2, 4, 5, 6, seed=6), x=f32(*X), weight=f32(4, 3, 3, 3, seed=1), stride=1, padding=1,
        dilation=1, groups=1, layout="NCHW", pre_scale=f32(3, seed=3), pre_shift=f32(3, seed=4), pre_relu=True,
        post_relu=True, y=f32(2, 4, 5, 6, seed=7), needs=("input", "weight", "bias", "pre_scale", "pre_shift"),
        conv_input=np.maximum(f32(*X) * f32(3, seed=3)[:, None, None] + f32(3, seed=4)[:, None, None], F32(0)),
        workspace={}, out=(np.empty(X, F32), np.empty((4, 3, 3, 3), F32), np.empty(4, F32), None, None, None,
                           None))),
    "cnnkit.nn.fusion": (lambda: nn.fusion, lambda: dict(enabled=True)),
})


# ---- cnnkit.augment: Smart Augmentation, policy search -------------------------------------------
def _smart(**kw):
    return A.SmartAugmentation(in_channels=1, num_classes=3, k=2, seed=0, **kw)


def _smart_batch():
    """images (4, 1, 6, 6), labels, groups (2, k=2, 1, 6, 6), targets (2, 1, 6, 6), group labels."""
    return dict(images=f32(4, 1, 6, 6, seed=1), labels=np.array([0, 1, 2, 1]), groups=f32(2, 2, 1, 6, 6, seed=2),
                targets=f32(2, 1, 6, 6, seed=3), group_labels=np.array([2, 0]))


def _u8_dataset(n=6, seed=0):
    from cnnkit.data import ArrayDataset
    return ArrayDataset(u8(n, 6, 6, 3, seed=seed), np.arange(n) % 2)


def _choice():
    return A.PolicyController(2, seed=0).sample()[1]


EXAMPLES.update({
    "cnnkit.augment.generator_network": (lambda: A.generator_network, lambda: dict(
        in_channels=1, k=2, width=4, depth=2, seed=0)),
    "cnnkit.augment.classifier_network": (lambda: A.classifier_network, lambda: dict(
        in_channels=1, num_classes=3, widths=(4, 8), seed=0)),
    "cnnkit.augment.SmartAugmentation": (lambda: A.SmartAugmentation, lambda: dict(
        classifier=A.classifier_network(1, 3, widths=(4,), seed=0), generator=A.generator_network(1, 2, width=4),
        in_channels=1, num_classes=3, k=2, alpha=0.3, beta=0.7, optimizer_a=None, optimizer_b=None, seed=0)),
    "cnnkit.augment.SmartAugmentation.gradients": (_bound(_smart, "gradients"), _smart_batch),
    "cnnkit.augment.SmartAugmentation.step": (_bound(_smart, "step"), _smart_batch),
    "cnnkit.augment.SmartAugmentation.merge": (_bound(_smart, "merge"), lambda: dict(
        groups=f32(2, 2, 1, 6, 6, seed=2))),
    "cnnkit.augment.PolicyController": (lambda: A.PolicyController, lambda: dict(
        num_sub_policies=2, lr=0.05, baseline_decay=0.8, entropy_weight=1e-5, learn=True, seed=0)),
    "cnnkit.augment.PolicyController.update": (_bound(lambda: A.PolicyController(2, seed=0), "update"),
                                               lambda: dict(choice=_choice(), reward=0.5)),
    "cnnkit.augment.PolicyController.log_prob": (_bound(lambda: A.PolicyController(2, seed=0), "log_prob"),
                                                 lambda: dict(choice=_choice())),
    "cnnkit.augment.PolicyController.policy_of": (lambda: A.PolicyController.policy_of,
                                                  lambda: dict(choice=_choice())),
    "cnnkit.augment.ProxyConfig": (lambda: A.ProxyConfig, lambda: dict(
        epochs=1, batch_size=4, lr=0.1, momentum=0.9, weight_decay=5e-4, widths=(4, 8),
        build=lambda seed, c, k: A.classifier_network(c, k, widths=(4,), seed=seed))),
    "cnnkit.augment.search_policy": (lambda: A.search_policy, lambda: dict(
        train=_u8_dataset(), val=_u8_dataset(seed=1), method="reinforce", budget=2,
        proxy=dict(epochs=0, batch_size=2, widths=(2,)), seed=0, num_sub_policies=2, top_k=1,
        controller=dict(lr=0.1), reward_fn=lambda p: float(len(p)), progress=False)),
    "cnnkit.augment.policy_to_json": (lambda: A.policy_to_json, lambda: dict(
        policy=[[("Invert", 0.1, None), ("Contrast", 0.2, 6)]], indent=2)),
    "cnnkit.augment.policy_from_json": (lambda: A.policy_from_json, lambda: dict(
        text='[[["Invert", 0.1, null], ["Contrast", 0.2, 6]]]')),
})


# ---- cnnkit.nn: backward(grad) after a forward (grad checked against the last output) ------------
def _after_forward(make, x_shape=X):
    def bound():
        m = make()
        m.forward(f32(*x_shape))
        return m.backward
    return bound


for _name, (_make, _xs, _ys) in {
        "Conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1, rng=gen()), X, (2, 4, 5, 6)),
        "DepthwiseSeparableConv2d": (lambda: nn.DepthwiseSeparableConv2d(3, 4, rng=gen()), X, (2, 4, 5, 6)),
        "BatchNorm2d": (lambda: nn.BatchNorm2d(3), X, X), "GroupNorm": (lambda: nn.GroupNorm(3, 3), X, X),
        "ReLU": (nn.ReLU, X, X), "MaxPool2d": (lambda: nn.MaxPool2d(2), X, (2, 3, 2, 3)),
        "AvgPool2d": (lambda: nn.AvgPool2d(2), X, (2, 3, 2, 3)), "GlobalAvgPool2d": (nn.GlobalAvgPool2d, X, (2, 3)),
        "Flatten": (nn.Flatten, X, (2, 90)), "Linear": (lambda: nn.Linear(6, 4, rng=gen()), (2, 6), (2, 4)),
        "Dropout": (lambda: nn.Dropout(seed=0), X, X), "SpatialDropout2d": (lambda: nn.SpatialDropout2d(seed=0), X, X),
        "ResidualBlock": (lambda: nn.ResidualBlock(3, 4, rng=gen()), X, (2, 4, 5, 6)),
        "Sequential": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, rng=gen()), nn.ReLU()), X, (2, 4, 3, 4)),
}.items():
    EXAMPLES[f"cnnkit.nn.{_name}.backward"] = (_after_forward(_make, _xs), lambda ys=_ys: dict(grad=f32(*ys, seed=9)))


# ---- cnnkit.augment transform classes: the constructor, and __call__ on valid images ----------
_TRANSFORMS = {
    "Compose": (dict(transforms=[A.RandomHorizontalFlip(seed=0)], seed=0), "u8"),
    "MixUp": (dict(alpha=1.0, mode="elem", p=0.5, num_classes=3, label_smoothing=0.1, seed=0), "f32"),
    "CutMix": (dict(alpha=1.0, mode="elem", p=0.5, num_classes=3, label_smoothing=0.1, seed=0), "f32"),
    "SamplePairing": (dict(p=0.5, pool=f32(3, 3, 5, 6, seed=1), same_on_batch=False, seed=0), "f32"),
    "Cutout": (dict(size=2, num_holes=2, fill=(1, 2, 3), p=0.5, same_on_batch=False, layout="NHWC", seed=0), "u8"),
    "RandomErasing": (dict(p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=(1, 2, 3), same_on_batch=False,
                           layout="NHWC", seed=0), "u8"),
    "AutoAugment": (dict(policy="cifar10", interpolation="bilinear", fill=(1, 2, 3), same_on_batch=False, seed=0),
                    "u8"),
    "RandAugment": (dict(num_ops=2, magnitude=9, num_magnitude_bins=31, interpolation="bilinear", fill=(1, 2, 3),
                         same_on_batch=False, seed=0), "u8"),
    "TrivialAugmentWide": (dict(num_magnitude_bins=31, interpolation="bilinear", fill=(1, 2, 3),
                                same_on_batch=False, seed=0), "u8"),
    "AugMix": (dict(severity=3, mixture_width=2, chain_depth=2, alpha=1.0, all_ops=True, interpolation="bilinear",
                    fill=(1, 2, 3), same_on_batch=False, seed=0), "u8"),
    "Normalize": (dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4), seed=0), "u8"),
    "Equalize": (dict(mode="cv", p=0.5, same_on_batch=False, seed=0), "u8"),
    "CLAHE": (dict(clip_limit=2.0, tile_grid_size=(2, 2), p=0.5, same_on_batch=False, seed=0), "u8"),
    "SpatialDropout": (dict(p=0.5, training=True, layout="NCHW", seed=0), "f32"),
    "RandomHorizontalFlip": (dict(p=0.5, same_on_batch=False, seed=0), "u8"),
    "RandomVerticalFlip": (dict(p=0.5, same_on_batch=False, seed=0), "u8"),
    "RandomResizedCrop": (dict(size=(4, 4), scale=(0.08, 1.0), ratio=(0.75, 1.33), antialias=True,
                               same_on_batch=False, seed=0), "u8"),
    "RandomCrop": (dict(padding=2, fill=(1, 2, 3), padding_mode="constant", same_on_batch=False, seed=0), "u8"),
    "RandomAffine": (dict(degrees=10.0, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5.0,
                          interpolation="bilinear", fill=(1, 2, 3), center=(2.0, 3.0), same_on_batch=False,
                          seed=0), "u8"),
    "ColorJitter": (dict(brightness=0.2, contrast=0.2, saturation=0.2, same_on_batch=False, seed=0), "u8"),
}
for _name, (_kw, _kind) in _TRANSFORMS.items():
    _cls = getattr(A, _name)
    EXAMPLES[f"cnnkit.augment.{_name}"] = (lambda cls=_cls: cls, lambda kw=_kw: dict(kw))
    EXAMPLES[f"cnnkit.augment.{_name}.__call__"] = (
        lambda cls=_cls, kw=_kw: cls(**kw).__call__,
        (lambda: dict(images=u8(*IMG))) if _kind == "u8" else (lambda: dict(images=f32(*X))))

# Public callables this test does not call, and why.
NOT_CALLED = {
    "cnnkit.build_info": "no parameters", "cnnkit.get_num_threads": "no parameters",
    "cnnkit.nn.Module": "no parameters (the abstract base)", "cnnkit.nn.ReLU": "no parameters",
    "cnnkit.nn.Sequential": "*modules only (each checked to be a Module; forward is called below)",
    "cnnkit.optim.Optimizer": "abstract base: the concrete optimizers are called",
    "cnnkit.optim.LRScheduler": "abstract base: the concrete schedulers are called",
    "cnnkit.augment.Transform": "abstract base: the concrete transforms are called",
    "cnnkit.nn.fusion_enabled": "no parameters",
    "cnnkit.ops.FusedConvGrads": "a result NamedTuple (conv2d_fused_backward's), not an entry point",
}

PACKAGES = ["cnnkit", "cnnkit.ops", "cnnkit.nn", "cnnkit.optim", "cnnkit.optim.functional",
            "cnnkit.optim.lr_scheduler", "cnnkit.augment", "cnnkit.augment.functional"]
# Subpackages outside this test (their own bad-input tests live beside them): explain, data,
# models, train, bench.


def _public():
    """{qualified name: object} for the callables of PACKAGES' __all__ (first name wins)."""
    found, seen = {}, set()
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            found[f"{pkg}.{name}"] = obj
    return found


def _canonical(obj):
    """The EXAMPLES key of an object (it may be listed under another package path)."""
    for key, (make, _) in EXAMPLES.items():
        if not key.endswith((".forward", ".step", ".__call__")):
            try:
                if make() is obj:
                    return key
            except Exception:  # pragma: no cover - a broken example shows up in its own test
                pass
    return None


def test_every_public_callable_has_an_example():
    missing = []
    for name, obj in _public().items():
        if name in NOT_CALLED or _canonical(obj) is not None:
            continue
        missing.append(name)
    assert not missing, f"public callables without a valid example in EXAMPLES (or a NOT_CALLED reason): {missing}"
    for name, obj in _public().items():
        if inspect.isclass(obj) and name not in NOT_CALLED:
            key = _canonical(obj)
            methods = [m for m in ("forward", "step", "__call__") if f"{key}.{m}" in EXAMPLES]
            main = "forward" if issubclass(obj, nn.Module) or hasattr(obj, "backward") and hasattr(obj, "forward") \
                else "step" if issubclass(obj, optim.Optimizer) else "__call__" if issubclass(obj, A.Transform) \
                else None
            if main is not None:
                assert methods, f"{key}: no example of its main method {main}"


# ---- the substitutions --------------------------------------------------------------------------

# Substitutions that are legitimately valid, with the reason. 0 and -1 are checked against these
# per parameter name (the same name means the same thing across the package); other cases per
# (callable, parameter, case).
ZERO_OK = {
    "padding": "no padding", "momentum": "no momentum", "dampening": "no dampening",
    "weight_decay": "no decay", "lr_decay": "no decay", "initial_accumulator_value": "torch's default",
    "seed": "seed 0", "warmup": "no warm-up", "off": "never off", "num_ops": "RandAugment with no op",
    "magnitude": "bin 0", "threshold": "solarize every value", "eta_min": "torch's default",
    "label_smoothing": "no smoothing", "p": "never applied", "fine_tune_from": "fine-tune from the start",
    "brightness": "no jitter", "contrast": "no jitter", "saturation": "no jitter", "degrees": "no rotation",
    "shear": "no shear", "angle": "no rotation", "pixels": "no shift", "clip_limit": "no clipping (OpenCV's)",
    "ignore_index": "any int may mark ignored labels", "lam": "all partner", "chain_depth": "<= 0: random depth",
    "ops": "op code 0 is Identity", "found_inf": "False", "error_if_nonfinite": "False",
    "lr": "a zero learning rate freezes the parameters (torch allows it)",
    "max_norm": "clip to norm 0, as torch", "rho": "torch allows rho 0",
    "total_iters": "no warm-up: the end factor at once", "last_epoch": "the first epoch",
    "epochs": "no training (the initial network is evaluated)", "indent": "json.dumps: newlines only",
}
NEGATIVE_OK = {
    "chain_depth": "<= 0 draws a random depth", "ignore_index": "torch's default is -100",
    "last_epoch": "-1: a fresh schedule", "angle": "rotations are signed", "degrees": "a signed range",
    "shear": "signed", "pixels": "shifts are signed", "magnitudes": "signed magnitudes",
}
VALID = {
    ("cnnkit.optim.clip_grad_norm_", "max_norm", "inf"): "inf: no clipping, as torch",
    ("cnnkit.optim.clip_grad_norm_", "norm_type", "inf"): "the max norm",
    ("cnnkit.optim.global_norm", "norm_type", "inf"): "the max norm",
    ("cnnkit.optim.clip_grad_norm_", "grads", "list short"): "no gradients: norm 0, as torch",
    ("cnnkit.optim.global_norm", "grads", "list short"): "no gradients: norm 0",
    ("cnnkit.optim.found_inf", "grads", "list short"): "no gradients: nothing is inf",
    ("cnnkit.optim.functional.sgd_", "momentum", "zero"): "plain SGD",
    ("cnnkit.nn.Capture", "name", "unknown"): "any layer name: checked when the capture is made",
    ("cnnkit.nn.CrossEntropyLoss", "weight", "dtype int64"): "integer class weights are weights",
    ("cnnkit.nn.CrossEntropyLoss", "weight", "dtype float16"): "converted to float64",
    ("cnnkit.nn.Dropout.forward", "x", "layout"): "element-wise: no layout",
    ("cnnkit.nn.Flatten.forward", "x", "layout"): "no channel count to check: flattens any 4-D array",
    ("cnnkit.nn.SpatialDropout2d.forward", "x", "layout"): "no channel count to check against",
    ("cnnkit.augment.MixUp.__call__", "images", "layout"): "element-wise over whole images: no layout",
    ("cnnkit.augment.CutMix.__call__", "images", "layout"): "documented NCHW; no channel count to check against",
    ("cnnkit.augment.SamplePairing", "pool", "layout"): "a pool of any image shape (checked against the batch)",
    ("cnnkit.augment.cutout", "fill", "tuple short"): "one value for every channel",
    ("cnnkit.augment.spatial_dropout_backward", "scale", "dtype float16"): "scale values, converted",
    ("cnnkit.augment.classifier_network", "widths", "tuple short"): "one convolution is a valid network",
    ("cnnkit.augment.ProxyConfig", "widths", "tuple short"): "one convolution is a valid network",
}
for _fn in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_sharpness"):
    VALID[(f"cnnkit.augment.functional.{_fn}", "factor", "dtype float16")] = "factors, converted to float64"
    VALID[(f"cnnkit.augment.functional.{_fn}", "factor", "dtype int64")] = "integer factors"
VALID[("cnnkit.augment.functional.apply_ops", "magnitudes", "dtype float16")] = "magnitudes, converted"
for _t in ("AugMix", "AutoAugment", "RandAugment", "TrivialAugmentWide", "RandomAffine", "RandomCrop", "Cutout"):
    VALID[(f"cnnkit.augment.{_t}", "fill", "tuple short")] = "one value for every channel"
VALID[("cnnkit.augment.RandomErasing", "value", "tuple short")] = "one value for every channel"
VALID[("cnnkit.augment.functional.apply_ops", "magnitudes", "dtype int64")] = "integer magnitudes"
VALID[("cnnkit.augment.SpatialDropout.__call__", "images", "layout")] = "no channel count to check against"
VALID[("cnnkit.augment.random_fill_noise", "images", "layout")] = "noise of the images' shape, any layout"
for _m in ("MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "ReLU"):
    VALID[(f"cnnkit.nn.{_m}.forward", "x", "layout")] = "no channel count to check against (pools any C)"
# Weights are (C_out, C_in/groups, kH, kW) in both layouts: there is no other layout to pass.
for _fn, _w in (("conv2d", "weight"), ("conv2d_backward", "weight"), ("depthwise_separable_conv2d", "dw_weight"),
                ("depthwise_separable_conv2d", "pw_weight"), ("depthwise_separable_conv2d_backward", "dw_weight"),
                ("depthwise_separable_conv2d_backward", "pw_weight"), ("fold_batch_norm", "conv_weight"),
                ("conv2d_fused", "weight"), ("conv2d_fused_backward", "weight")):
    VALID[(f"cnnkit.ops.{_fn}", _w, "layout")] = "weights have one layout"


def _allowed(fn, param, case):
    if case in ("zero", "negative"):
        table = ZERO_OK if case == "zero" else NEGATIVE_OK
        if param == "eps":  # eps 0 is valid for the optimizers (torch's checks: eps >= 0), not for norms
            return fn.startswith("cnnkit.optim") and case == "zero"
        if param == "alpha":  # RMSprop's smoothing constant may be 0; Beta(alpha) parameters may not
            return case == "zero" and ("RMSprop" in fn or "rmsprop" in fn)
        if param in ("lr", "max_norm", "rho") and not fn.startswith("cnnkit.optim"):
            return False
        return bool(table.get(param))
    return (fn, param, case) in VALID


def _optional(p, value):
    ann = str(p.annotation)
    return p.default is None or "None" in ann or "Optional" in ann or ann in ("Any", "'Any'")


def _noncontiguous(a):
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype) if a.ndim else None
    if big is None or a.shape[-1] == 0:
        return None
    big[..., ::2] = a
    return big[..., ::2]


def _other_layout(a):
    if a.ndim != 4:
        return None
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2) if a.dtype == np.uint8 else a.transpose(0, 2, 3, 1))


def _cases(p, v):
    """(label, value) substitutions for parameter p whose valid value is v."""
    out = [("object", object())]
    if isinstance(v, str):
        out.append(("unknown", "no-such-name"))
    else:
        out.append(("str", "bad"))
    if v is not None and not _optional(p, v):
        out.append(("None", None))
    if isinstance(v, float):
        out += [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)]
    if isinstance(v, int) and not isinstance(v, bool):
        out += [("negative", -1), ("zero", 0), ("float", v + 0.5)]
    if isinstance(v, np.ndarray):
        for dt in (np.int64, np.float16, np.complex64):
            if v.dtype != dt:
                # (an `out` example is np.empty: its garbage may not cast cleanly; only the dtype
                # matters here)
                with np.errstate(invalid="ignore", over="ignore"):
                    out.append((f"dtype {np.dtype(dt)}", v.astype(dt)))
        if v.ndim >= 1 and v.shape[0] > 0:
            out.append(("empty", v[:0]))
        lay = _other_layout(v)
        if lay is not None:
            out.append(("layout", lay))
        nc = _noncontiguous(v)
        if nc is not None:
            out.append(("noncontig", nc))
    if isinstance(v, list) and v and isinstance(v[0], np.ndarray):  # a list of arrays (optim)
        out += [("list dtype float16", [a.astype(np.float16) for a in v]),
                ("list noncontig", [_noncontiguous(a) for a in v]),
                ("list short", [])]
    if isinstance(v, tuple) and v and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in v):
        out.append(("tuple short", v[:1]))
        if any(isinstance(e, float) for e in v):
            out.append(("tuple nan", tuple(math.nan for _ in v)))
    return out


def _arrays(obj, path="args"):
    """(path, array) for every ndarray inside obj (dicts, lists, tuples)."""
    if isinstance(obj, np.ndarray):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _arrays(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _arrays(v, f"{path}[{i}]")


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return True  # objects (modules, schedulers): not compared


def _names(msg, names):
    return any(re.search(rf"(^|[^A-Za-z0-9_]){re.escape(n)}([^A-Za-z0-9_]|$)", msg) for n in names)


def _aliases(param):
    # the message may name the argument by an element or a field of it
    return {param, param.rstrip("s")} if param in ("params", "grads", "transforms") else {param}


def _run_case(key, make_fn, kwargs, param, label, value):
    """None if the case behaves, else a line describing the defect."""
    fn = make_fn()
    kw = dict(kwargs)
    kw[param] = value
    before = [(p, a.copy()) for p, a in _arrays(kw)]
    all_params = set(inspect.signature(fn).parameters)
    try:
        result = fn(**kw)
    except (TypeError, ValueError) as e:
        msg = str(e)
        changed = [p for (p, a0), (_, a1) in zip(before, _arrays(kw)) if not _same(a0, a1)]
        if changed:
            return f"{key}({param}={label}): raised but modified {changed} first"
        lenient = label in ("empty", "layout") or _allowed(key, param, label)  # other arguments may now clash
        names = set(all_params) | _aliases(param) if lenient else _aliases(param)
        if not _names(msg, names):
            return f"{key}({param}={label}): {type(e).__name__} does not name {param!r}: {msg!r}"
        return None
    except Exception as e:  # noqa: BLE001 - anything else is the defect being looked for
        return f"{key}({param}={label}): {type(e).__name__}: {e}"
    if label == "empty":
        return None  # an empty batch may be legal: it returned
    if label in ("noncontig", "list noncontig"):
        ref_kwargs = EXAMPLES[key][1]()
        ref = make_fn()(**ref_kwargs)
        if not _same(result, ref):
            return f"{key}({param}={label}): a non-contiguous view gives a different result"
        if not _same(kw, ref_kwargs):
            return f"{key}({param}={label}): a non-contiguous view is updated differently in place"
        return None
    if _allowed(key, param, label):
        return None
    return f"{key}({param}={label}): accepted without an error"


def _examples():
    return sorted(EXAMPLES)


@pytest.mark.parametrize("key", _examples())
def test_bad_input(key):
    make_fn, make_kwargs = EXAMPLES[key]
    fn = make_fn()
    kwargs = make_kwargs()
    sig = inspect.signature(fn)
    unknown = set(kwargs) - set(sig.parameters)
    assert not unknown, f"{key}: the example names no such parameters {unknown}"
    fn(**make_kwargs())  # the example itself is valid
    problems = []
    for param, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or param not in kwargs:
            continue
        for label, value in _cases(p, kwargs[param]):
            line = _run_case(key, make_fn, make_kwargs(), param, label, value)
            if line:
                problems.append(line)
    assert not problems, "\n".join(problems)
