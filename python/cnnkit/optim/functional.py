"""Functional multi-tensor optimizer updates: one fused compiled call per list, in place.

Each function updates ``params`` and the state lists in place, exactly as one step of the
matching class in :mod:`cnnkit.optim` (see there for the formulas). ``step`` is the 1-based
step number of this update: an int for every tensor, or one int per tensor. State arrays must
match their parameter's shape and dtype and be C-contiguous and writeable.

Device arrays (anything with ``__cuda_array_interface__``: CuPy, PyTorch CUDA tensors) run the
same update as one fused CUDA launch when cnnkit was built with CUDA.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import _core
from . import _cuda
from ._arrays import check_list, check_param
from ._spec import SPECS

__all__ = ["sgd_", "adagrad_", "rmsprop_", "adadelta_", "adam_", "adamw_"]


def _steps(step, n):
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"step: expected an int >= 1 or a list of them, got {step!r}")
    if isinstance(step, (numbers.Integral, np.integer)):
        s = np.full(n, int(step), dtype=np.int64)
    else:
        s = np.asarray(step)
        if s.dtype.kind not in "iu" or s.shape != (n,):
            raise TypeError(f"step: expected an int or {n} ints (one per tensor), got {step!r}")
        s = s.astype(np.int64)
    if n and s.min() < 1:
        raise ValueError(f"step: expected step numbers >= 1 (1-based), got {int(s.min())}")
    return s - 1  # the kernel counts steps taken before this one


def _run(algo, params, grads, states, step, group):
    spec = SPECS[algo]
    params = check_list("params", params)
    n = len(params)
    if n and _cuda.is_device_array(params[0]):
        grads = check_list("grads", grads, n)
        states = [None if st is None else check_list(name, st, n)
                  for name, st in zip(spec.slots, states)]
        for name, st, need in zip(spec.slots, states, spec.needed(group)):
            if need and st is None:
                raise ValueError(f"{name}: required by the given hyperparameters, got None")
        _cuda.run(spec, params, grads, states, _steps(step, n), group)
        return
    for i, p in enumerate(params):
        check_param(f"params[{i}]", p)
    grads = check_list("grads", grads, n)
    if any(g is None for g in grads):
        raise TypeError("grads: expected an array for every parameter, got None")
    needs = spec.needed(group)
    slot_lists = []
    for (name, st), need in zip(zip(spec.slots, states), needs):
        if st is None:
            if need:
                raise ValueError(f"{name}: required by the given hyperparameters, got None")
            slot_lists.append(None)
            continue
        st = check_list(name, st, n)
        for i, (a, p) in enumerate(zip(st, params)):
            check_param(f"{name}[{i}]", a)
            if a.shape != p.shape or a.dtype != p.dtype:
                raise ValueError(f"{name}[{i}]: expected {p.dtype} {p.shape} (as params[{i}]), "
                                 f"got {a.dtype} {a.shape}")
        slot_lists.append(st)
    hyper = np.array([spec.row(group)], dtype=np.float64)
    steps = _steps(step, n)
    if n == 0:
        return
    plan = _core.OptimPlan(spec.core, params, slot_lists, np.zeros(n, dtype=np.int32))
    plan.step(grads, hyper, steps)


def sgd_(params, grads, momentum_buffers, *, step, lr, momentum=0.0, dampening=0.0,
         weight_decay=0.0, nesterov=False, maximize=False):
    """SGD step; on ``step == 1`` each momentum buffer is set to the gradient.

    ``momentum_buffers`` may be None when ``momentum == 0``."""
    _run("sgd", params, grads, [momentum_buffers], step,
         dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
              nesterov=nesterov, maximize=maximize))


def adagrad_(params, grads, state_sums, *, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
             maximize=False):
    """Adagrad step."""
    _run("adagrad", params, grads, [state_sums], step,
         dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize))


def rmsprop_(params, grads, square_avgs, grad_avgs=None, momentum_buffers=None, *, step, lr,
             alpha, eps, weight_decay=0.0, momentum=0.0, centered=False, maximize=False):
    """RMSprop step; ``grad_avgs`` needed when centered, ``momentum_buffers`` when momentum > 0."""
    _run("rmsprop", params, grads, [square_avgs, grad_avgs, momentum_buffers], step,
         dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
              centered=centered, maximize=maximize))


def adadelta_(params, grads, square_avgs, acc_deltas, *, step, lr, rho, eps, weight_decay=0.0,
              maximize=False):
    """Adadelta step."""
    _run("adadelta", params, grads, [square_avgs, acc_deltas], step,
         dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize))


def adam_(params, grads, exp_avgs, exp_avg_sqs, *, step, lr, beta1, beta2, eps, weight_decay=0.0,
          amsgrad=False, max_exp_avg_sqs=None, maximize=False):
    """Adam step (L2 weight decay); ``max_exp_avg_sqs`` needed when amsgrad."""
    _run("adam", params, grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs], step,
         dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
              maximize=maximize))


def adamw_(params, grads, exp_avgs, exp_avg_sqs, *, step, lr, beta1, beta2, eps, weight_decay=1e-2,
           amsgrad=False, max_exp_avg_sqs=None, maximize=False):
    """AdamW step (decoupled weight decay: ``p *= 1 - lr*weight_decay`` first)."""
    _run("adamw", params, grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs], step,
         dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
              maximize=maximize))
