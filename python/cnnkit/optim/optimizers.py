"""The optimizers: torch.optim's algorithms, names and defaults, one fused call per step.

Every update formula below is per element, with ``g`` the gradient, ``p`` the parameter and
``t`` the 1-based step count of that parameter. ``maximize`` negates ``g`` first.
"""
from __future__ import annotations


from .._validate import check_real
from .optimizer import Optimizer

__all__ = ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW"]


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum (``torch.optim.SGD``).

    ``g <- g + weight_decay*p``; with ``momentum != 0``: ``buf <- g`` on the first step, else
    ``buf <- momentum*buf + (1 - dampening)*g``; ``g <- g + momentum*buf`` (nesterov) or
    ``g <- buf``; then ``p <- p - lr*g``. Plain SGD when ``momentum == 0``.

    Example
    -------
    >>> import numpy as np, cnnkit
    >>> w = np.ones(3, np.float32)
    >>> opt = cnnkit.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> opt.step([np.full(3, 2.0, np.float32)])
    >>> w
    array([0.8, 0.8, 0.8], dtype=float32)
    """

    _algo = "sgd"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _step_after_new_state(self, step, slot):
        # a fresh momentum buffer is set to the gradient on its first step (step count 0 -> 1)
        return 0


class Adagrad(Optimizer):
    r"""Adagrad (``torch.optim.Adagrad``).

    ``g <- g + weight_decay*p``; ``clr = lr / (1 + (t-1)*lr_decay)``; ``sum <- sum + g^2``;
    ``p <- p - clr * g / (sqrt(sum) + eps)``; ``sum`` starts at ``initial_accumulator_value``.
    """

    _algo = "adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False):
        check_real("initial_accumulator_value", initial_accumulator_value, lo=0.0)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))

    def _init_state(self, slot, p, group):
        return float(group["initial_accumulator_value"])


class RMSprop(Optimizer):
    r"""RMSprop (``torch.optim.RMSprop``).

    ``g <- g + weight_decay*p``; ``v <- alpha*v + (1-alpha)*g^2``; centered:
    ``a <- alpha*a + (1-alpha)*g``, ``avg = sqrt(v - a^2) + eps``, else ``avg = sqrt(v) + eps``
    (eps outside the square root); ``momentum > 0``: ``buf <- momentum*buf + g/avg``,
    ``p <- p - lr*buf``; else ``p <- p - lr*g/avg``.
    """

    _algo = "rmsprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))


class Adadelta(Optimizer):
    r"""Adadelta (``torch.optim.Adadelta``).

    ``g <- g + weight_decay*p``; ``v <- rho*v + (1-rho)*g^2``;
    ``d = sqrt(u + eps) / sqrt(v + eps) * g``; ``u <- rho*u + (1-rho)*d^2``; ``p <- p - lr*d``.
    """

    _algo = "adadelta"

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))


class Adam(Optimizer):
    r"""Adam (``torch.optim.Adam``); ``weight_decay`` is L2 (added to the gradient).

    ``g <- g + weight_decay*p``; ``m <- b1*m + (1-b1)*g``; ``v <- b2*v + (1-b2)*g^2``;
    amsgrad: ``vmax <- max(vmax, v)`` used in place of ``v``;
    ``p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`` (eps after the bias correction).
    """

    _algo = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))


class AdamW(Adam):
    r"""AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay.

    ``p <- p*(1 - lr*weight_decay)`` before the moment update, then Adam without L2.
    """

    _algo = "adamw"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)
