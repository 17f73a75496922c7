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
from typing import Any, Optional, Sequence, Union

import numpy as np

from .. import _core
from .._validate import accepts_dlpack, check_real
from . import _cuda
from ._arrays import check_list, check_param
from ._spec import SPECS

__all__ = ["sgd_", "adagrad_", "rmsprop_", "adadelta_", "adam_", "adamw_"]

# A list of host arrays (NumPy) or of device arrays (``__cuda_array_interface__``).
Arrays = Sequence[Any]
# The 1-based step number: one for every tensor, or one per tensor.
Step = Union[int, Sequence[int], np.ndarray]


def _steps(step: Step, n: int) -> np.ndarray:
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


def _betas(beta1: float, beta2: float) -> tuple:
    """(beta1, beta2), each checked under its own name (the classes take them as ``betas``)."""
    return (check_real("beta1", beta1, lo=0.0, hi=1.0, hi_open=True),
            check_real("beta2", beta2, lo=0.0, hi=1.0, hi_open=True))


def _run(algo: str, params: Arrays, grads: Arrays, states: list[Optional[Arrays]], step: Step,
         group: dict[str, Any], names: Optional[tuple] = None) -> None:
    spec = SPECS[algo]
    names = spec.slots if names is None else names  # the caller's argument names, for messages
    spec.row(group)  # every hyperparameter checked (with its name) before anything reads it
    params = check_list("params", params)
    n = len(params)
    if n and _cuda.is_device_array(params[0]):
        grads = check_list("grads", grads, n)
        states = [None if st is None else check_list(name, st, n)
                  for name, st in zip(names, states)]
        for name, st, need in zip(spec.slots, states, spec.needed(group)):
            if need and st is None:
                raise ValueError(f"{name}: expected a list of arrays (required by the given hyperparameters), got None")
        _cuda.run(spec, params, grads, states, _steps(step, n), group)
        return
    for i, p in enumerate(params):
        check_param(f"params[{i}]", p)
    grads = check_list("grads", grads, n)
    if any(g is None for g in grads):
        raise TypeError("grads: expected an array for every parameter, got None")
    needs = spec.needed(group)
    slot_lists: list[Any] = []
    for (name, st), need in zip(zip(names, states), needs):
        if st is None:
            if need:
                raise ValueError(f"{name}: expected a list of arrays (required by the given hyperparameters), got None")
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


@accepts_dlpack(device_ok=True)
def sgd_(params: Arrays, grads: Arrays, momentum_buffers: Optional[Arrays], *, step: Step, lr: float,
         momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
         nesterov: bool = False, maximize: bool = False) -> None:
    """SGD step; on ``step == 1`` each momentum buffer is set to the gradient.

    ``momentum_buffers`` may be None when ``momentum == 0``.

    Parameters
    ----------
    params : list of ndarray
        Parameters (float32 or float64, C-contiguous, writeable), updated in place; or device
        arrays (CuPy, PyTorch CUDA tensors) when cnnkit was built with CUDA.
    grads : list of ndarray
        One gradient per parameter, same shape and dtype.
    momentum_buffers : list of ndarray or None
        Momentum buffers, one per parameter, updated in place (None when ``momentum == 0``).
    step : int or sequence of int
        The 1-based number of this step: one for every tensor, or one per tensor.
    lr : float
        Learning rate.
    momentum, dampening : float, default 0.0
        Momentum factor and dampening, as :class:`cnnkit.optim.SGD`.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    nesterov : bool, default False
        Nesterov momentum.
    maximize : bool, default False
        Maximise the objective (the gradient is negated first).

    Returns
    -------
    None
        ``params`` and the state lists are updated in place.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.optim.functional import sgd_
    >>> w = np.ones(2, np.float32)
    >>> sgd_([w], [np.full(2, 0.5, np.float32)], None, step=1, lr=0.1)
    >>> w
    array([0.95, 0.95], dtype=float32)
    """
    _run("sgd", params, grads, [momentum_buffers], step, names=("momentum_buffers",), group=
         dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
              nesterov=nesterov, maximize=maximize))


@accepts_dlpack(device_ok=True)
def adagrad_(params: Arrays, grads: Arrays, state_sums: Arrays, *, step: Step, lr: float,
             lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
             maximize: bool = False) -> None:
    """Adagrad step (formulas: :class:`cnnkit.optim.Adagrad`).

    Parameters
    ----------
    params : list of ndarray
        Parameters (float32 or float64, C-contiguous, writeable), updated in place; or device
        arrays (CuPy, PyTorch CUDA tensors) when cnnkit was built with CUDA.
    grads : list of ndarray
        One gradient per parameter, same shape and dtype.
    state_sums : list of ndarray
        Sums of squared gradients, one per parameter (same shape and dtype), updated in place.
    step : int or sequence of int
        The 1-based number of this step: one for every tensor, or one per tensor.
    lr : float
        Learning rate.
    lr_decay : float, default 0.0
        Learning-rate decay per step.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    eps : float, default 1e-10
        Added to the denominator.
    maximize : bool, default False
        Maximise the objective (the gradient is negated first).

    Returns
    -------
    None
        ``params`` and the state lists are updated in place.
    """
    _run("adagrad", params, grads, [state_sums], step, names=("state_sums",), group=
         dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize))


@accepts_dlpack(device_ok=True)
def rmsprop_(params: Arrays, grads: Arrays, square_avgs: Arrays, grad_avgs: Optional[Arrays] = None,
             momentum_buffers: Optional[Arrays] = None, *, step: Step, lr: float, alpha: float,
             eps: float, weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
             maximize: bool = False) -> None:
    """RMSprop step; ``grad_avgs`` needed when centered, ``momentum_buffers`` when momentum > 0.

    Formulas: :class:`cnnkit.optim.RMSprop`.

    Parameters
    ----------
    params : list of ndarray
        Parameters (float32 or float64, C-contiguous, writeable), updated in place; or device
        arrays (CuPy, PyTorch CUDA tensors) when cnnkit was built with CUDA.
    grads : list of ndarray
        One gradient per parameter, same shape and dtype.
    square_avgs : list of ndarray
        Running averages of the squared gradient, one per parameter (same shape and dtype), updated in place.
    grad_avgs : list of ndarray, optional
        Running averages of the gradient (needed when ``centered``), one per parameter, updated in place.
    momentum_buffers : list of ndarray, optional
        Momentum buffers (needed when ``momentum > 0``), one per parameter, updated in place.
    step : int or sequence of int
        The 1-based number of this step: one for every tensor, or one per tensor.
    lr : float
        Learning rate.
    alpha : float
        Smoothing constant.
    eps : float
        Added to the denominator.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    momentum : float, default 0.0
        Momentum factor.
    centered : bool, default False
        Normalise by the gradient's estimated variance.
    maximize : bool, default False
        Maximise the objective (the gradient is negated first).

    Returns
    -------
    None
        ``params`` and the state lists are updated in place.
    """
    _run("rmsprop", params, grads, [square_avgs, grad_avgs, momentum_buffers], step,
         names=("square_avgs", "grad_avgs", "momentum_buffers"), group=
         dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
              centered=centered, maximize=maximize))


@accepts_dlpack(device_ok=True)
def adadelta_(params: Arrays, grads: Arrays, square_avgs: Arrays, acc_deltas: Arrays, *, step: Step,
              lr: float, rho: float, eps: float, weight_decay: float = 0.0,
              maximize: bool = False) -> None:
    """Adadelta step (formulas: :class:`cnnkit.optim.Adadelta`).

    Parameters
    ----------
    params : list of ndarray
        Parameters (float32 or float64, C-contiguous, writeable), updated in place; or device
        arrays (CuPy, PyTorch CUDA tensors) when cnnkit was built with CUDA.
    grads : list of ndarray
        One gradient per parameter, same shape and dtype.
    square_avgs : list of ndarray
        Running averages of the squared gradient, one per parameter (same shape and dtype), updated in place.
    acc_deltas : list of ndarray
        Running averages of the squared update, one per parameter (same shape and dtype), updated in place.
    step : int or sequence of int
        The 1-based number of this step: one for every tensor, or one per tensor.
    lr : float
        Scale of the update.
    rho : float
        Smoothing constant.
    eps : float
        Added inside the square roots.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    maximize : bool, default False
        Maximise the objective (the gradient is negated first).

    Returns
    -------
    None
        ``params`` and the state lists are updated in place.
    """
    _run("adadelta", params, grads, [square_avgs, acc_deltas], step, names=("square_avgs", "acc_deltas"), group=
         dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize))


@accepts_dlpack(device_ok=True)
def adam_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays, *, step: Step, lr: float,
          beta1: float, beta2: float, eps: float, weight_decay: float = 0.0, amsgrad: bool = False,
          max_exp_avg_sqs: Optional[Arrays] = None, maximize: bool = False) -> None:
    """Adam step (L2 weight decay); ``max_exp_avg_sqs`` needed when amsgrad.

    Formulas: :class:`cnnkit.optim.Adam`.

    Parameters
    ----------
    params : list of ndarray
        Parameters (float32 or float64, C-contiguous, writeable), updated in place; or device
        arrays (CuPy, PyTorch CUDA tensors) when cnnkit was built with CUDA.
    grads : list of ndarray
        One gradient per parameter, same shape and dtype.
    exp_avgs : list of ndarray
        First-moment averages, one per parameter (same shape and dtype), updated in place.
    exp_avg_sqs : list of ndarray
        Second-moment averages, one per parameter (same shape and dtype), updated in place.
    step : int or sequence of int
        The 1-based number of this step: one for every tensor, or one per tensor.
    lr : float
        Learning rate.
    beta1, beta2 : float
        Decay rates of the first and second moment averages.
    eps : float
        Added to the denominator after the bias correction.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    amsgrad : bool, default False
        Use the running maximum of the second moment.
    max_exp_avg_sqs : list of ndarray, optional
        Running maxima of the second moment (needed when ``amsgrad``), one per parameter, updated in place.
    maximize : bool, default False
        Maximise the objective (the gradient is negated first).

    Returns
    -------
    None
        ``params`` and the state lists are updated in place.
    """
    _run("adam", params, grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs], step,
         names=("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"), group=
         dict(lr=lr, betas=_betas(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
              maximize=maximize))


@accepts_dlpack(device_ok=True)
def adamw_(params: Arrays, grads: Arrays, exp_avgs: Arrays, exp_avg_sqs: Arrays, *, step: Step, lr: float,
           beta1: float, beta2: float, eps: float, weight_decay: float = 1e-2, amsgrad: bool = False,
           max_exp_avg_sqs: Optional[Arrays] = None, maximize: bool = False) -> None:
    """AdamW step (decoupled weight decay: ``p *= 1 - lr*weight_decay`` first).

    Formulas: :class:`cnnkit.optim.AdamW`.

    Parameters
    ----------
    params : list of ndarray
        Parameters (float32 or float64, C-contiguous, writeable), updated in place; or device
        arrays (CuPy, PyTorch CUDA tensors) when cnnkit was built with CUDA.
    grads : list of ndarray
        One gradient per parameter, same shape and dtype.
    exp_avgs : list of ndarray
        First-moment averages, one per parameter (same shape and dtype), updated in place.
    exp_avg_sqs : list of ndarray
        Second-moment averages, one per parameter (same shape and dtype), updated in place.
    step : int or sequence of int
        The 1-based number of this step: one for every tensor, or one per tensor.
    lr : float
        Learning rate.
    beta1, beta2 : float
        Decay rates of the first and second moment averages.
    eps : float
        Added to the denominator after the bias correction.
    weight_decay : float, default 1e-2
        Decoupled weight decay.
    amsgrad : bool, default False
        Use the running maximum of the second moment.
    max_exp_avg_sqs : list of ndarray, optional
        Running maxima of the second moment (needed when ``amsgrad``), one per parameter, updated in place.
    maximize : bool, default False
        Maximise the objective (the gradient is negated first).

    Returns
    -------
    None
        ``params`` and the state lists are updated in place.
    """
    _run("adamw", params, grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs], step,
         names=("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"), group=
         dict(lr=lr, betas=_betas(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
              maximize=maximize))
