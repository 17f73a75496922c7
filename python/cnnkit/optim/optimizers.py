"""The optimizers: torch.optim's algorithms, names and defaults, one fused call per step.

Every update formula below is per element, with ``g`` the gradient, ``p`` the parameter and
``t`` the 1-based step count of that parameter. ``maximize`` negates ``g`` first.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Union

import numpy as np

from .._validate import check_real
from .optimizer import Optimizer

__all__ = ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW"]

# What every optimizer's ``params`` accepts: arrays, or parameter-group dicts.
Params = Union[Iterable[np.ndarray], Iterable[Mapping[str, Any]]]


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum (``torch.optim.SGD``).

    ``g <- g + weight_decay*p``; with ``momentum != 0``: ``buf <- g`` on the first step, else
    ``buf <- momentum*buf + (1 - dampening)*g``; ``g <- g + momentum*buf`` (nesterov) or
    ``g <- buf``; then ``p <- p - lr*g``. Plain SGD when ``momentum == 0``.

    Parameters
    ----------
    params : list of ndarray, or list of dict
        The arrays to optimise, updated in place (float32 or float64, C-contiguous, writeable;
        one dtype per group), or parameter groups: dicts with a ``"params"`` list and any of the
        hyperparameters below, overriding them for that group.
    lr : float, default 1e-3
        Learning rate.
    momentum : float, default 0.0
        Momentum factor (0 keeps no momentum buffer).
    dampening : float, default 0.0
        Dampening of the momentum buffer's gradient term.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``, as in torch).
    maximize : bool, default False
        Maximise the objective: the gradient is negated first.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> w = np.ones(3, np.float32)
    >>> opt = cnnkit.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> opt.step([np.full(3, 2.0, np.float32)])
    >>> w
    array([0.8, 0.8, 0.8], dtype=float32)
    """

    _algo = "sgd"

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _step_after_new_state(self, step: int, slot: int) -> int:
        # a fresh momentum buffer is set to the gradient on its first step (step count 0 -> 1)
        return 0


class Adagrad(Optimizer):
    r"""Adagrad (``torch.optim.Adagrad``).

    ``g <- g + weight_decay*p``; ``clr = lr / (1 + (t-1)*lr_decay)``; ``sum <- sum + g^2``;
    ``p <- p - clr * g / (sqrt(sum) + eps)``; ``sum`` starts at ``initial_accumulator_value``.

    Parameters
    ----------
    params : list of ndarray, or list of dict
        The arrays to optimise, updated in place (float32 or float64, C-contiguous, writeable;
        one dtype per group), or parameter groups: dicts with a ``"params"`` list and any of the
        hyperparameters below, overriding them for that group.
    lr : float, default 1e-2
        Learning rate.
    lr_decay : float, default 0.0
        Learning-rate decay per step.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    initial_accumulator_value : float, default 0.0
        Starting value (>= 0) of the sum of squared gradients.
    eps : float, default 1e-10
        Added to the denominator.
    maximize : bool, default False
        Maximise the objective: the gradient is negated first.
    """

    _algo = "adagrad"

    def __init__(self, params: Params, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False) -> None:
        check_real("initial_accumulator_value", initial_accumulator_value, lo=0.0)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))

    def _init_state(self, slot: int, p: np.ndarray, group: Mapping[str, Any]) -> float:
        return float(group["initial_accumulator_value"])


class RMSprop(Optimizer):
    r"""RMSprop (``torch.optim.RMSprop``).

    ``g <- g + weight_decay*p``; ``v <- alpha*v + (1-alpha)*g^2``; centered:
    ``a <- alpha*a + (1-alpha)*g``, ``avg = sqrt(v - a^2) + eps``, else ``avg = sqrt(v) + eps``
    (eps outside the square root); ``momentum > 0``: ``buf <- momentum*buf + g/avg``,
    ``p <- p - lr*buf``; else ``p <- p - lr*g/avg``.

    Parameters
    ----------
    params : list of ndarray, or list of dict
        The arrays to optimise, updated in place (float32 or float64, C-contiguous, writeable;
        one dtype per group), or parameter groups: dicts with a ``"params"`` list and any of the
        hyperparameters below, overriding them for that group.
    lr : float, default 1e-2
        Learning rate.
    alpha : float, default 0.99
        Smoothing constant of the squared-gradient average.
    eps : float, default 1e-8
        Added to the denominator (outside the square root).
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    momentum : float, default 0.0
        Momentum factor.
    centered : bool, default False
        Normalise by an estimate of the gradient's variance instead of its second moment.
    maximize : bool, default False
        Maximise the objective: the gradient is negated first.
    """

    _algo = "rmsprop"

    def __init__(self, params: Params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))


class Adadelta(Optimizer):
    r"""Adadelta (``torch.optim.Adadelta``).

    ``g <- g + weight_decay*p``; ``v <- rho*v + (1-rho)*g^2``;
    ``d = sqrt(u + eps) / sqrt(v + eps) * g``; ``u <- rho*u + (1-rho)*d^2``; ``p <- p - lr*d``.

    Parameters
    ----------
    params : list of ndarray, or list of dict
        The arrays to optimise, updated in place (float32 or float64, C-contiguous, writeable;
        one dtype per group), or parameter groups: dicts with a ``"params"`` list and any of the
        hyperparameters below, overriding them for that group.
    lr : float, default 1.0
        Scale applied to the update.
    rho : float, default 0.9
        Smoothing constant of both running averages.
    eps : float, default 1e-6
        Added inside both square roots.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    maximize : bool, default False
        Maximise the objective: the gradient is negated first.
    """

    _algo = "adadelta"

    def __init__(self, params: Params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))


class Adam(Optimizer):
    r"""Adam (``torch.optim.Adam``); ``weight_decay`` is L2 (added to the gradient).

    ``g <- g + weight_decay*p``; ``m <- b1*m + (1-b1)*g``; ``v <- b2*v + (1-b2)*g^2``;
    amsgrad: ``vmax <- max(vmax, v)`` used in place of ``v``;
    ``p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`` (eps after the bias correction).

    Parameters
    ----------
    params : list of ndarray, or list of dict
        The arrays to optimise, updated in place (float32 or float64, C-contiguous, writeable;
        one dtype per group), or parameter groups: dicts with a ``"params"`` list and any of the
        hyperparameters below, overriding them for that group.
    lr : float, default 1e-3
        Learning rate.
    betas : tuple of 2 floats, default (0.9, 0.999)
        Decay rates ``(b1, b2)`` of the first and second moment averages.
    eps : float, default 1e-8
        Added to the denominator after the bias correction.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient.
    amsgrad : bool, default False
        Use the running maximum of the second moment (AMSGrad).
    maximize : bool, default False
        Maximise the objective: the gradient is negated first.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> w = np.zeros(2, np.float32)
    >>> opt = cnnkit.optim.Adam([w], lr=0.1)
    >>> opt.step([np.array([1.0, -1.0], np.float32)])
    >>> np.round(w, 4)  # Adam's first step moves each weight by about lr, against the gradient
    array([-0.1,  0.1], dtype=float32)
    """

    _algo = "adam"

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))


class AdamW(Adam):
    r"""AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay.

    ``p <- p*(1 - lr*weight_decay)`` before the moment update, then Adam without L2.

    Parameters
    ----------
    params : list of ndarray, or list of dict
        The arrays to optimise, updated in place (float32 or float64, C-contiguous, writeable;
        one dtype per group), or parameter groups: dicts with a ``"params"`` list and any of the
        hyperparameters below, overriding them for that group.
    lr : float, default 1e-3
        Learning rate.
    betas : tuple of 2 floats, default (0.9, 0.999)
        Decay rates ``(b1, b2)`` of the first and second moment averages.
    eps : float, default 1e-8
        Added to the denominator after the bias correction.
    weight_decay : float, default 1e-2
        Decoupled weight decay: ``p *= 1 - lr*weight_decay`` before the update.
    amsgrad : bool, default False
        Use the running maximum of the second moment (AMSGrad).
    maximize : bool, default False
        Maximise the objective: the gradient is negated first.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> w = np.ones(2, np.float32)
    >>> opt = cnnkit.optim.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> opt.step([np.zeros(2, np.float32)])  # a zero gradient: only the decay acts
    >>> w
    array([0.95, 0.95], dtype=float32)
    """

    _algo = "adamw"

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)
