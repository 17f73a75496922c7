"""Learning-rate schedulers with the semantics of ``torch.optim.lr_scheduler``.

Every scheduler here takes the same constructor arguments, with the same
defaults, as its PyTorch namesake and produces the same learning rates step by
step (the recursive ("chainable") update formulas are reproduced, not only the
closed forms), so a training loop written against PyTorch carries over
unchanged::

    opt = cnnkit.optim.SGD(params, lr=0.1, momentum=0.9)
    sched = CosineAnnealingLR(opt, T_max=100)
    for epoch in range(100):
        train_one_epoch(opt)
        sched.step()

The optimizer is duck-typed: any object with a ``param_groups`` attribute that
is a list of dicts, each holding at least ``'lr'`` (and, for
:class:`OneCycleLR` momentum cycling, ``'momentum'`` or ``'betas'``), works.

Construction mirrors PyTorch: with ``last_epoch=-1`` every param group gets an
``'initial_lr'`` entry (kept if already present) that becomes the scheduler's
``base_lrs``; the constructor then performs the initial step, so on return
``group['lr']`` holds the epoch-0 learning rate and ``last_epoch == 0``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional, Sequence, Union

from .._validate import check_bool, check_choice, check_int, check_real

__all__ = [
    "LRScheduler",
    "StepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "OneCycleLR",
    "ExponentialRangeLR",
]


# --------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------


def _check_last_epoch(last_epoch: Any) -> int:
    return check_int("last_epoch", last_epoch, -1, "an int >= -1")


def _check_optimizer(optimizer: Any) -> List[Dict[str, Any]]:
    """Check the duck-typed optimizer and return its ``param_groups``."""
    if not hasattr(optimizer, "param_groups"):
        raise TypeError(
            "optimizer: expected an object with a 'param_groups' attribute (a list of dicts with "
            f"an 'lr' key), got {type(optimizer).__name__} without one"
        )
    groups = optimizer.param_groups
    if not isinstance(groups, list):
        raise TypeError(
            "optimizer.param_groups: expected a non-empty list of dicts, got "
            f"{type(groups).__name__}"
        )
    if not groups:
        raise ValueError("optimizer.param_groups: expected a non-empty list of dicts, got []")
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            raise TypeError(
                f"optimizer.param_groups[{i}]: expected a dict, got {type(group).__name__}"
            )
        if "lr" not in group:
            raise ValueError(
                f"optimizer.param_groups[{i}]: expected an 'lr' key, got keys "
                f"{sorted(map(str, group))}"
            )
        check_real(f"optimizer.param_groups[{i}]['lr']", group["lr"])
    return groups


def _per_group(
    name: str,
    value: Any,
    n_groups: int,
    lo: Optional[float] = None,
    hi: Optional[float] = None,
    lo_open: bool = False,
) -> List[float]:
    """Broadcast a scalar to one value per param group, or check a sequence's length."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_groups:
            raise ValueError(
                f"{name}: expected a scalar or one value per param group "
                f"({n_groups}), got {len(value)} values"
            )
        return [
            check_real(f"{name}[{i}]", v, lo=lo, hi=hi, lo_open=lo_open)
            for i, v in enumerate(value)
        ]
    return [check_real(name, value, lo=lo, hi=hi, lo_open=lo_open)] * n_groups


# --------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------


class LRScheduler:
    """Base class of the learning-rate schedulers.

    Subclasses implement :meth:`get_lr`, which computes the learning rate of
    every param group at ``self.last_epoch`` (usually from the current
    ``group['lr']``, like PyTorch's chainable form), and optionally
    :meth:`_closed_form_lr`, used by ``step(epoch)``.

    Parameters
    ----------
    optimizer : object
        Anything with ``param_groups``, a non-empty list of dicts each holding
        a real ``'lr'``.
    last_epoch : int, default -1
        Index of the last epoch seen. ``-1`` starts a fresh schedule and sets
        ``group['initial_lr'] = group['lr']`` where absent; any other value
        resumes one and requires ``'initial_lr'`` in every group.

    Attributes
    ----------
    optimizer : object
        The wrapped optimizer.
    base_lrs : list of float
        ``group['initial_lr']`` of every group.
    last_epoch : int
        Index of the current epoch; 0 right after a fresh construction.

    Raises
    ------
    TypeError, ValueError
        If ``optimizer`` or ``last_epoch`` is malformed, or ``last_epoch != -1``
        and a group lacks ``'initial_lr'``.
    """

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        groups = _check_optimizer(optimizer)
        last_epoch = _check_last_epoch(last_epoch)
        if last_epoch != -1:
            for i, group in enumerate(groups):
                if "initial_lr" not in group:
                    raise ValueError(
                        f"last_epoch={last_epoch} resumes a schedule, which needs "
                        f"'initial_lr' in every param group, but "
                        f"optimizer.param_groups[{i}] has none; restore the "
                        "optimizer's state first or pass last_epoch=-1"
                    )
        self._prepare_groups(groups, last_epoch)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        self.base_lrs: List[float] = [float(g["initial_lr"]) for g in groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def _prepare_groups(self, groups: List[Dict[str, Any]], last_epoch: int) -> None:
        """Hook run after the optimizer is validated and before 'initial_lr' is set."""

    def get_lr(self) -> List[float]:
        """Learning rate of every param group at ``self.last_epoch``.

        Called by :meth:`step` after it has advanced ``last_epoch``; to read the
        current learning rates use :meth:`get_last_lr`.

        Returns
        -------
        list of float
            One learning rate per param group.
        """
        raise NotImplementedError

    def _closed_form_lr(self) -> List[float]:
        return self.get_lr()

    def step(self, epoch: Optional[int] = None) -> None:
        """Advance the schedule by one epoch and write the new ``group['lr']``.

        Parameters
        ----------
        epoch : int, optional
            Deprecated in PyTorch and kept for compatibility: jump to ``epoch``
            and use the scheduler's closed form (where it has one) instead of
            the recursive update.
        """
        groups = self.optimizer.param_groups
        if epoch is not None:
            epoch = check_int("epoch", epoch, 0, "an int >= 0")
        self._step_count += 1
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            values = self._closed_form_lr()
        if len(values) != len(groups):
            raise ValueError(
                f"optimizer.param_groups changed length: the scheduler computed "
                f"{len(values)} learning rates for {len(groups)} groups"
            )
        for group, lr in zip(groups, values):
            group["lr"] = float(lr)
        self._last_lr: List[float] = [float(g["lr"]) for g in groups]

    def get_last_lr(self) -> List[float]:
        """Learning rates of the param groups as set by the latest :meth:`step`.

        Returns
        -------
        list of float
            One learning rate per param group.
        """
        return list(self._last_lr)

    def state_dict(self) -> Dict[str, Any]:
        """Scheduler state: a deep copy of every attribute except ``optimizer``.

        Per-group values kept in the param groups themselves (``'initial_lr'``,
        and ``'max_lr'`` etc. for :class:`OneCycleLR`) belong to the
        optimizer's state, as in PyTorch.

        Returns
        -------
        dict
            Attribute name -> value (deep copies).
        """
        return {
            k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "optimizer"
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`.

        Parameters
        ----------
        state_dict : dict
            A dict produced by :meth:`state_dict` of the same scheduler class.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"state_dict: expected a dict, got {type(state_dict).__name__}"
            )
        self.__dict__.update(
            {k: copy.deepcopy(v) for k, v in state_dict.items() if k != "optimizer"}
        )

    def _current_lrs(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]


# --------------------------------------------------------------------------
# schedulers
# --------------------------------------------------------------------------


class StepLR(LRScheduler):
    r"""Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    .. math:: \eta_t = \eta_0 \, \gamma^{\lfloor t / \mathrm{step\_size} \rfloor}

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups`` (see :class:`LRScheduler`).
    step_size : int
        Period of the decay, positive.
    gamma : float, default 0.1
        Multiplicative factor, positive and finite.
    last_epoch : int, default -1
        See :class:`LRScheduler`.

    Examples
    --------
    >>> class Opt:
    ...     param_groups = [{"lr": 0.1}]
    >>> s = StepLR(Opt(), step_size=2, gamma=0.5)
    >>> [round(s.get_last_lr()[0], 6) for _ in range(5) if s.step() is None]
    [0.1, 0.05, 0.05, 0.025, 0.025]
    """

    def __init__(
        self, optimizer: Any, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size = check_int("step_size", step_size, 1, "a positive int")
        self.gamma = check_real("gamma", gamma, lo=0.0, lo_open=True)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        """Learning rate of every param group at ``self.last_epoch`` (see :meth:`LRScheduler.get_lr`).

        Returns
        -------
        list of float
            One learning rate per param group.
        """
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self) -> List[float]:
        return [
            base * self.gamma ** (self.last_epoch // self.step_size)
            for base in self.base_lrs
        ]


class ExponentialLR(LRScheduler):
    r"""Multiply the learning rate by ``gamma`` every epoch.

    .. math:: \eta_t = \eta_0 \, \gamma^t

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups`` (see :class:`LRScheduler`).
    gamma : float
        Multiplicative factor, positive and finite.
    last_epoch : int, default -1
        See :class:`LRScheduler`.

    Examples
    --------
    >>> class Opt:
    ...     param_groups = [{"lr": 1.0}]
    >>> s = ExponentialLR(Opt(), gamma=0.5); s.step(); s.get_last_lr()
    [0.5]
    """

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = check_real("gamma", gamma, lo=0.0, lo_open=True)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        """Learning rate of every param group at ``self.last_epoch`` (see :meth:`LRScheduler.get_lr`).

        Returns
        -------
        list of float
            One learning rate per param group.
        """
        if self._is_initial:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self) -> List[float]:
        return [base * self.gamma**self.last_epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from the base learning rate to ``eta_min`` over ``T_max`` epochs.

    The learning rate follows

    .. math::
        \eta_t = \eta_{min} + \tfrac12 (\eta_0 - \eta_{min})
                 \left(1 + \cos\frac{\pi t}{T_{max}}\right)

    and, as in PyTorch, keeps following the cosine (rising again) after
    ``T_max``. Like PyTorch the value is computed recursively from the current
    ``group['lr']``:

    .. math::
        \eta_t = \eta_{min} + (\eta_{t-1} - \eta_{min})
                 \frac{1 + \cos(\pi t / T_{max})}{1 + \cos(\pi (t-1) / T_{max})}

    with an additive step at ``t - 1 \equiv T_{max} \pmod{2T_{max}}``, where the
    ratio is undefined. Numbers therefore match PyTorch's to rounding.

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups`` (see :class:`LRScheduler`).
    T_max : int
        Half period in epochs, positive.
    eta_min : float, default 0.0
        Minimum learning rate, finite and non-negative.
    last_epoch : int, default -1
        See :class:`LRScheduler`.

    Examples
    --------
    >>> class Opt:
    ...     param_groups = [{"lr": 1.0}]
    >>> s = CosineAnnealingLR(Opt(), T_max=2); s.step(); round(s.get_last_lr()[0], 12)
    0.5
    """

    def __init__(
        self, optimizer: Any, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = check_int("T_max", T_max, 1, "a positive int")
        self.eta_min = check_real("eta_min", eta_min, lo=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        """Learning rate of every param group at ``self.last_epoch`` (see :meth:`LRScheduler.get_lr`).

        Returns
        -------
        list of float
            One learning rate per param group.
        """
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and t > 0:
            return self._closed_form_lr()
        if (t - 1 - T) % (2 * T) == 0:
            # Past the minimum: ratio form would divide by 1 + cos(pi) = 0.
            return [
                lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
                for lr, base in zip(self._current_lrs(), self.base_lrs)
            ]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (lr - eta_min) + eta_min for lr in self._current_lrs()]

    def _closed_form_lr(self) -> List[float]:
        c = 1 + math.cos(math.pi * self.last_epoch / self.T_max)
        return [
            self.eta_min + (base - self.eta_min) * c / 2 for base in self.base_lrs
        ]


class LinearLR(LRScheduler):
    r"""Scale the learning rate by a factor moving linearly over ``total_iters`` epochs.

    .. math::
        \eta_t = \eta_0 \left(s + (e - s)\,\frac{\min(t, T)}{T}\right)

    with ``s = start_factor``, ``e = end_factor``, ``T = total_iters``; the
    usual warm-up is ``LinearLR(opt, start_factor=0.1, total_iters=k)``. As in
    PyTorch, each step rescales the current ``group['lr']`` by the ratio of
    successive factors.

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups`` (see :class:`LRScheduler`).
    start_factor : float, default 1/3
        Factor at epoch 0, in (0, 1].
    end_factor : float, default 1.0
        Factor from epoch ``total_iters`` on, in [0, 1].
    total_iters : int, default 5
        Number of epochs of the ramp, positive.
    last_epoch : int, default -1
        See :class:`LRScheduler`.

    Examples
    --------
    >>> class Opt:
    ...     param_groups = [{"lr": 1.0}]
    >>> s = LinearLR(Opt(), start_factor=0.5, total_iters=2)
    >>> [s.get_last_lr()[0] for _ in range(3) if s.step() is None]
    [0.75, 1.0, 1.0]
    """

    def __init__(
        self,
        optimizer: Any,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        self.start_factor = check_real(
            "start_factor", start_factor, lo=0.0, hi=1.0, lo_open=True
        )
        self.end_factor = check_real("end_factor", end_factor, lo=0.0, hi=1.0)
        self.total_iters = check_int("total_iters", total_iters, 1, "a positive int")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        """Learning rate of every param group at ``self.last_epoch`` (see :meth:`LRScheduler.get_lr`).

        Returns
        -------
        list of float
            One learning rate per param group.
        """
        t, s, e, T = self.last_epoch, self.start_factor, self.end_factor, self.total_iters
        if t == 0:
            return [lr * s for lr in self._current_lrs()]
        if self._is_initial or t > T:
            return self._current_lrs()
        mult = 1.0 + (e - s) / (T * s + (t - 1) * (e - s))
        return [lr * mult for lr in self._current_lrs()]

    def _closed_form_lr(self) -> List[float]:
        s, e, T = self.start_factor, self.end_factor, self.total_iters
        return [
            base * (s + (e - s) * min(T, self.last_epoch) / T) for base in self.base_lrs
        ]


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (Smith & Topsøe, 2018), stepped once per batch.

    The learning rate rises from ``initial_lr = max_lr / div_factor`` to
    ``max_lr`` over the first ``pct_start * total_steps - 1`` steps, then falls
    to ``min_lr = initial_lr / final_div_factor`` at step ``total_steps - 1``.
    With ``three_phase=True`` it rises, falls back to ``initial_lr`` over the
    same number of steps, and only then anneals to ``min_lr``. Each phase
    interpolates with

    .. math::
        \text{cos:}\ \ e + \tfrac12 (s - e)(1 + \cos \pi p) \qquad
        \text{linear:}\ \ s + (e - s)\,p

    where ``p`` in [0, 1] is the position inside the phase. When
    ``cycle_momentum`` is set the momentum moves inversely, between
    ``max_momentum`` and ``base_momentum``: ``group['betas'][0]`` for groups
    that have ``'betas'`` (Adam-like; stored back as a tuple), otherwise
    ``group['momentum']``.

    The constructor overwrites ``'initial_lr'`` and adds ``'max_lr'``,
    ``'min_lr'`` (and ``'max_momentum'``, ``'base_momentum'``) to every param
    group, as PyTorch does. Stepping beyond ``total_steps`` raises
    ``ValueError``. Where a phase has zero length (e.g. ``total_steps=10,
    pct_start=0.1``), PyTorch divides by zero; here the phase is taken as
    complete (its end value).

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups`` (see :class:`LRScheduler`).
    max_lr : float or sequence of float
        Peak learning rate, positive; one per group or one for all.
    total_steps : int, optional
        Number of steps in the cycle. If None, ``epochs * steps_per_epoch``.
    epochs, steps_per_epoch : int, optional
        Used when ``total_steps`` is None; both then required and positive.
    pct_start : float, default 0.3
        Fraction of the cycle spent increasing the learning rate, in [0, 1].
    anneal_strategy : {'cos', 'linear'}, default 'cos'
    cycle_momentum : bool, default True
        Cycle the momentum; every group then needs ``'momentum'`` or ``'betas'``.
    base_momentum, max_momentum : float or sequence of float, default 0.85, 0.95
        Momentum bounds, finite; one per group or one for all.
    div_factor : float, default 25.0
        ``initial_lr = max_lr / div_factor``, positive.
    final_div_factor : float, default 1e4
        ``min_lr = initial_lr / final_div_factor``, positive.
    three_phase : bool, default False
    last_epoch : int, default -1
        See :class:`LRScheduler`. When resuming, the groups must already hold
        the keys listed above.

    Examples
    --------
    >>> class Opt:
    ...     param_groups = [{"lr": 0.0, "momentum": 0.9}]
    >>> s = OneCycleLR(Opt(), max_lr=1.0, total_steps=10)
    >>> round(s.get_last_lr()[0], 12), s.optimizer.param_groups[0]["momentum"]
    (0.04, 0.95)
    """

    def __init__(
        self,
        optimizer: Any,
        max_lr: Union[float, Sequence[float]],
        total_steps: Optional[int] = None,
        epochs: Optional[int] = None,
        steps_per_epoch: Optional[int] = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: Union[float, Sequence[float]] = 0.85,
        max_momentum: Union[float, Sequence[float]] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        if total_steps is not None:
            total = check_int("total_steps", total_steps, 1, "a positive int")
        elif epochs is not None and steps_per_epoch is not None:
            total = check_int("epochs", epochs, 1, "a positive int") * check_int(
                "steps_per_epoch", steps_per_epoch, 1, "a positive int"
            )
        else:
            raise ValueError(
                "total_steps: expected total_steps, or both epochs and steps_per_epoch; got "
                f"total_steps={total_steps!r}, epochs={epochs!r}, "
                f"steps_per_epoch={steps_per_epoch!r}"
            )
        self.total_steps = total
        pct = check_real("pct_start", pct_start, lo=0.0, hi=1.0)
        self._anneal_strategy = check_choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
        self.cycle_momentum = check_bool("cycle_momentum", cycle_momentum)
        three_phase = check_bool("three_phase", three_phase)
        self._div_factor = check_real("div_factor", div_factor, lo=0.0, lo_open=True)
        self._final_div_factor = check_real(
            "final_div_factor", final_div_factor, lo=0.0, lo_open=True
        )
        # Arguments needing the optimizer are checked in _prepare_groups.
        self._max_lr_arg = max_lr
        self._momentum_args = (base_momentum, max_momentum)

        self._schedule_phases: List[Dict[str, Any]]
        if three_phase:
            self._schedule_phases = [
                {"end_step": float(pct * total) - 1, "start_lr": "initial_lr",
                 "end_lr": "max_lr", "start_momentum": "max_momentum",
                 "end_momentum": "base_momentum"},
                {"end_step": float(2 * pct * total) - 2, "start_lr": "max_lr",
                 "end_lr": "initial_lr", "start_momentum": "base_momentum",
                 "end_momentum": "max_momentum"},
                {"end_step": float(total - 1), "start_lr": "initial_lr",
                 "end_lr": "min_lr", "start_momentum": "max_momentum",
                 "end_momentum": "max_momentum"},
            ]  # fmt: skip
        else:
            self._schedule_phases = [
                {"end_step": float(pct * total) - 1, "start_lr": "initial_lr",
                 "end_lr": "max_lr", "start_momentum": "max_momentum",
                 "end_momentum": "base_momentum"},
                {"end_step": float(total - 1), "start_lr": "max_lr",
                 "end_lr": "min_lr", "start_momentum": "base_momentum",
                 "end_momentum": "max_momentum"},
            ]  # fmt: skip
        super().__init__(optimizer, last_epoch)

    def _prepare_groups(self, groups: List[Dict[str, Any]], last_epoch: int) -> None:
        n = len(groups)
        max_lrs = _per_group("max_lr", self._max_lr_arg, n, lo=0.0, lo_open=True)
        base_moms: Any = None
        max_moms: Any = None
        if self.cycle_momentum:
            for i, group in enumerate(groups):
                if "betas" not in group and "momentum" not in group:
                    raise ValueError(
                        "cycle_momentum=True needs 'momentum' or 'betas' in every "
                        f"param group, but optimizer.param_groups[{i}] has neither "
                        f"(keys {sorted(map(str, group))}); pass cycle_momentum=False"
                    )
            base_moms = _per_group("base_momentum", self._momentum_args[0], n)
            max_moms = _per_group("max_momentum", self._momentum_args[1], n)
        required = ["initial_lr", "max_lr", "min_lr"]
        if self.cycle_momentum:
            required += ["max_momentum", "base_momentum"]
        if last_epoch != -1:
            for i, group in enumerate(groups):
                missing = [k for k in required if k not in group]
                if missing:
                    raise ValueError(
                        f"last_epoch={last_epoch} resumes a schedule, which needs "
                        f"{missing} in optimizer.param_groups[{i}]; restore the "
                        "optimizer's state first or pass last_epoch=-1"
                    )
        del self._max_lr_arg, self._momentum_args
        # All checks passed: from here on the groups are modified.
        self._use_beta1 = [self.cycle_momentum and "betas" in g for g in groups]
        if last_epoch == -1:
            for i, group in enumerate(groups):
                group["initial_lr"] = max_lrs[i] / self._div_factor
                group["max_lr"] = max_lrs[i]
                group["min_lr"] = group["initial_lr"] / self._final_div_factor
                if self.cycle_momentum:
                    self._set_momentum(group, self._use_beta1[i], max_moms[i])
                    group["max_momentum"] = max_moms[i]
                    group["base_momentum"] = base_moms[i]

    @staticmethod
    def _set_momentum(group: Dict[str, Any], use_beta1: bool, value: float) -> None:
        if use_beta1:
            group["betas"] = (value, *tuple(group["betas"])[1:])
        else:
            group["momentum"] = value

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self._anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> List[float]:
        """Learning rate of every param group at ``self.last_epoch`` (see :meth:`LRScheduler.get_lr`).

        Returns
        -------
        list of float
            One learning rate per param group.
        """
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"OneCycleLR stepped {step} times, but total_steps is "
                f"{self.total_steps}"
            )
        lrs = []
        phases = self._schedule_phases
        for i, group in enumerate(self.optimizer.param_groups):
            start_step = 0.0
            for k, phase in enumerate(phases):
                end_step = phase["end_step"]
                if step <= end_step or k == len(phases) - 1:
                    span = end_step - start_step
                    pct = (step - start_step) / span if span != 0 else 1.0
                    lrs.append(
                        self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    )
                    if self.cycle_momentum:
                        mom = self._anneal(
                            group[phase["start_momentum"]],
                            group[phase["end_momentum"]],
                            pct,
                        )
                        self._set_momentum(group, self._use_beta1[i], mom)
                    break
                start_step = end_step
        return lrs


class ExponentialRangeLR(LRScheduler):
    r"""Learning-rate range test: grow the learning rate geometrically.

    Every param group's learning rate goes from ``start_lr`` at epoch 0 to
    ``end_lr`` at epoch ``num_steps - 1``, multiplied by the constant factor
    ``(end_lr / start_lr) ** (1 / (num_steps - 1))`` at every step:

    .. math::
        \eta_t = \eta_{start}^{\,1 - t/(n-1)}\ \eta_{end}^{\,t/(n-1)}

    (this form gives both endpoints exactly). Steps beyond ``num_steps - 1``
    continue the progression. Record the loss after each step and pick a
    learning rate somewhat below the one where the loss is lowest.

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups`` (see :class:`LRScheduler`).
    start_lr : float
        Learning rate at epoch 0, positive and finite.
    end_lr : float
        Learning rate at epoch ``num_steps - 1``, positive and finite.
    num_steps : int
        Number of learning rates tried, at least 2.
    last_epoch : int, default -1
        See :class:`LRScheduler`.

    Examples
    --------
    >>> class Opt:
    ...     param_groups = [{"lr": 0.1}]
    >>> s = ExponentialRangeLR(Opt(), start_lr=1e-4, end_lr=1.0, num_steps=5)
    >>> [f"{s.get_last_lr()[0]:.0e}" for _ in range(5) if s.step() is None]
    ['1e-03', '1e-02', '1e-01', '1e+00', '1e+01']
    """

    def __init__(
        self,
        optimizer: Any,
        start_lr: float,
        end_lr: float,
        num_steps: int,
        last_epoch: int = -1,
    ) -> None:
        self.start_lr = check_real("start_lr", start_lr, lo=0.0, lo_open=True)
        self.end_lr = check_real("end_lr", end_lr, lo=0.0, lo_open=True)
        self.num_steps = check_int("num_steps", num_steps, 2, "an int >= 2")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        """Learning rate of every param group at ``self.last_epoch`` (see :meth:`LRScheduler.get_lr`).

        Returns
        -------
        list of float
            One learning rate per param group.
        """
        t = self.last_epoch / (self.num_steps - 1)
        lr = self.start_lr ** (1.0 - t) * self.end_lr**t
        return [lr] * len(self.optimizer.param_groups)
