"""Drop-in ``torch.optim`` optimizers whose CPU step is one fused cnnkit call per parameter group.

``SGD``, ``Adam``, ``AdamW``, ``RMSprop``, ``Adagrad`` and ``Adadelta`` subclass torch's own
classes: the constructor (arguments, defaults, checks and error messages), parameter groups,
``zero_grad``, ``add_param_group``, ``state_dict``/``load_state_dict``, hooks and
``torch.optim.lr_scheduler`` are torch's. Only ``step`` differs: for each parameter group it
gathers the parameters that cnnkit can update and runs their whole update as ONE compiled
multi-tensor call of :mod:`cnnkit.optim.functional` (``sgd_``, ``adam_``, ``adamw_``,
``rmsprop_``, ``adagrad_``, ``adadelta_``), on NumPy views that share memory with ``p``,
``p.grad`` and the state tensors (no copy in or out). The state lives in ``optimizer.state``
under torch's keys, types and layouts (``'step'`` a 0-d float tensor, ``'exp_avg'``,
``'exp_avg_sq'``, ``'max_exp_avg_sq'``, ``'momentum_buffer'``, ``'sum'``, ``'square_avg'``,
``'acc_delta'``, ``'grad_avg'``), created lazily exactly when torch creates it, so a state dict
saved from either optimizer loads into the other and training continues identically.

After a step in which every parameter of a group with a gradient took the cnnkit path, the
group's views and compiled plan are kept for the next steps (only the gradients are viewed anew),
until anything they were made from changes: a parameter replaced (``p.data = ...``), a state
tensor replaced, resized or written by torch, ``load_state_dict``, the group's parameter list or
options, a gradient appearing or in another layout (the full checks then run again). The
``'step'`` tensors of such a group are 0-d views of one buffer (same values and dtype), so the
step counts advance in one operation.

Fallback rule
-------------
torch's own ``step`` runs (for exactly those parameters, with the group's hyperparameters):

* for a whole group when it sets an option cnnkit lacks (``fused``, ``capturable``,
  ``differentiable``), when a hyperparameter is a tensor (tensor ``lr`` or ``betas``) or a
  value the cnnkit kernels do not take (for example RMSprop's ``alpha >= 1``), when a parameter
  appears twice in it, or, for SGD, when a ``GradScaler`` set ``grad_scale``/``found_inf``;
* for a single parameter when it or its gradient is not a CPU float32/float64 dense tensor
  (CUDA, half precision, complex, sparse gradients), when parameter, gradient and state do not
  share one layout (contiguous or channels-last with identical strides), or when its state
  lacks a tensor torch expects (torch then raises its own error).

``foreach`` is accepted and ignored on the cnnkit path (it is already one multi-tensor call).
Parameters without a gradient are skipped, as torch skips them.

Examples
--------
>>> import torch
>>> from cnnkit.torch.optim import Adam
>>> w = torch.nn.Parameter(torch.ones(3))
>>> opt = Adam([w], lr=0.1)
>>> w.grad = torch.tensor([1.0, -1.0, 2.0])
>>> opt.step()
>>> w.detach()
tensor([0.9000, 1.1000, 0.9000])
>>> sorted(opt.state_dict()["state"][0])
['exp_avg', 'exp_avg_sq', 'step']
"""
from __future__ import annotations

import operator
from typing import Any, Callable, ClassVar, Optional

import numpy as np
import torch

from .. import _core
from ..optim import functional as _F
from ..optim._spec import SPECS

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"]

_F32, _F64, _STRIDED = torch.float32, torch.float64, torch.strided
# Hyperparameters per algorithm that must be plain Python numbers for the cnnkit path.
_HYPER = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay"),
    "adam": ("lr", "eps", "weight_decay"),
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum"),
    "adagrad": ("lr", "lr_decay", "eps", "weight_decay"),
    "adadelta": ("lr", "rho", "eps", "weight_decay"),
}
_increment_version = getattr(torch.autograd.graph, "increment_version", None)


def _scalar_dtype() -> torch.dtype:
    """dtype of a fresh ``'step'`` tensor, as torch picks it (``_get_scalar_dtype()``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _dense(t: torch.Tensor) -> bool:
    """True if ``t`` covers exactly ``numel`` consecutive elements (contiguous or channels-last)."""
    if t.is_contiguous():
        return True
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return t.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def _like(s: Any, p: torch.Tensor, stride: tuple) -> bool:
    """True if state tensor ``s`` can be updated element by element alongside ``p``.

    (Cheap attribute checks only: this runs for every state tensor at every step.)"""
    return (isinstance(s, torch.Tensor) and s.layout is _STRIDED and s.dtype is p.dtype and s.is_cpu
            and s.stride() == stride and s.shape == p.shape and not s.is_neg())


def _step_ok(s: Any) -> bool:
    return isinstance(s, torch.Tensor) and s.is_cpu and s.numel() == 1


def _view(t: torch.Tensor) -> np.ndarray:
    """A NumPy array sharing ``t``'s memory (flat when ``t`` is channels-last)."""
    if t.requires_grad:
        t = t.detach()
    if t.is_contiguous():
        return t.numpy()
    return t.as_strided((t.numel(),), (1,)).numpy()


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _torch_step_of(base: Any) -> Callable[..., Any]:
    """``base.step`` without torch's profiling/hook wrapper (the hooks already ran once)."""
    fn = base.step
    while getattr(fn, "hooked", False):
        fn = fn.__wrapped__
    return fn


class _CnnkitStep:
    """The shared ``step``: the cnnkit path per group, torch's own step for the rest."""

    _algo: ClassVar[str]
    _torch_base: ClassVar[type]
    # declared for the type checker; torch.optim.Optimizer provides them
    param_groups: list
    state: Any

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Perform one optimization step (in place).

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss; called once, with gradients enabled.

        Returns
        -------
        Any
            The closure's return value, or None without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fallback: list = []
        plans = self.__dict__.setdefault("_cnnkit_plans", {})
        with torch.no_grad():
            for group in self.param_groups:
                row = self._group_row(group)
                if row is None:
                    fallback.append(group)
                    continue
                keys = self._state_keys(group)
                plan = plans.get(id(group))
                if plan is not None and plan.group is group and plan.keys == keys:
                    grads = plan.grads(self.state)
                    if grads is not None:  # nothing changed since the plan was made
                        _run_plan(plan, grads, row)
                        continue
                fast: list = []
                slow: list = []
                for p in group["params"]:
                    if p.grad is not None:
                        (fast if self._param_supported(p, keys) else slow).append(p)
                if fast:
                    self._cnnkit_step(group, fast)
                if slow:
                    fallback.append(dict(group, params=slow))
                self._replan(plans, group, keys, fast if fast and not slow else None)
        if fallback:
            self._torch_step(fallback)
        return loss

    # ---- which groups and parameters cnnkit takes -----------------------------------------

    def _group_supported(self, group: dict) -> bool:
        return self._group_row(group) is not None

    def _group_row(self, group: dict) -> Optional[list]:
        """The group's checked hyperparameter row for the kernel, or None if torch must step it."""
        if group.get("fused") or group.get("capturable") or group.get("differentiable"):
            return None
        algo = self._algo
        if not all(_real(group[k]) for k in _HYPER[algo]):
            return None
        if algo == "adam":
            betas = group["betas"]
            if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(_real(b) for b in betas)):
                return None
            if group.get("decoupled_weight_decay"):
                algo = "adamw"
        if algo == "sgd" and (getattr(self, "grad_scale", None) is not None
                              or getattr(self, "found_inf", None) is not None):
            return None
        try:
            row = SPECS[algo].row(group)  # the values the kernels accept (torch may accept more)
        except (TypeError, ValueError, KeyError):
            return None
        params = group["params"]
        return row if len({id(p) for p in params}) == len(params) else None

    def _param_supported(self, p: torch.Tensor, keys: tuple) -> bool:
        g = p.grad
        dt = p.dtype
        if (g is None or (dt is not _F32 and dt is not _F64) or p.layout is not _STRIDED
                or g.layout is not _STRIDED or g.dtype is not dt or not p.is_cpu or not g.is_cpu):
            return False
        stride = p.stride()
        if g.stride() != stride or g.shape != p.shape or not _dense(p) or p.is_neg() or g.is_neg():
            return False
        state = self.state.get(p)
        if self._algo == "sgd":  # no state, or a momentum buffer (None before the first step)
            buf = state.get("momentum_buffer") if state and keys else None
            return buf is None or _like(buf, p, stride)
        if not state:
            return self._algo != "adagrad"  # torch's Adagrad creates its state in __init__
        return _step_ok(state.get("step")) and all(_like(state.get(k), p, stride) for k in keys)

    def _state_keys(self, group: dict) -> tuple:
        """State tensors this group's update reads (all present once the state exists)."""
        algo = self._algo
        if algo == "sgd":
            return ("momentum_buffer",) if group["momentum"] != 0 else ()
        if algo == "adam":
            return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())
        if algo == "rmsprop":
            return (("square_avg",) + (("momentum_buffer",) if group["momentum"] > 0 else ())
                    + (("grad_avg",) if group["centered"] else ()))
        if algo == "adagrad":
            return ("sum",)
        return ("square_avg", "acc_delta")

    # ---- the two paths ----------------------------------------------------------------------

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        """``self.state[p]``, created on a parameter's first step exactly as torch does."""
        state = self.state[p]
        if len(state) == 0 and self._algo != "sgd":
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            for key in self._state_keys(group):
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _cnnkit_step(self, group: dict, params: list) -> None:
        P = [_view(p) for p in params]
        G = [_view(p.grad) for p in params]
        algo = self._algo
        common = dict(lr=group["lr"], weight_decay=group["weight_decay"], maximize=group["maximize"])
        if algo == "sgd":
            bufs: Optional[list] = None
            steps: Any = 1
            if group["momentum"] != 0:
                bufs, first = [], []
                for p in params:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    first.append(buf is None)
                    if buf is None:  # torch: buf = clone(grad) on the first step; the kernel writes it
                        buf = state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format)
                    bufs.append(_view(buf))
                steps = np.where(first, 1, 2)
            _F.sgd_(P, G, bufs, step=steps, momentum=group["momentum"], dampening=group["dampening"],
                    nesterov=group["nesterov"], **common)
        else:
            states = [self._init_state(p, group) for p in params]
            step_t = [s["step"] for s in states]
            steps = np.array([int(s.item()) + 1 for s in step_t], dtype=np.int64)

            def slot(key: str) -> list:
                return [_view(s[key]) for s in states]

            if algo == "adam":
                fn = _F.adamw_ if group.get("decoupled_weight_decay") else _F.adam_
                beta1, beta2 = group["betas"]
                fn(P, G, slot("exp_avg"), slot("exp_avg_sq"), step=steps, beta1=beta1, beta2=beta2,
                   eps=group["eps"], amsgrad=group["amsgrad"],
                   max_exp_avg_sqs=slot("max_exp_avg_sq") if group["amsgrad"] else None, **common)
            elif algo == "rmsprop":
                _F.rmsprop_(P, G, slot("square_avg"),
                            slot("grad_avg") if group["centered"] else None,
                            slot("momentum_buffer") if group["momentum"] > 0 else None,
                            step=steps, alpha=group["alpha"], eps=group["eps"],
                            momentum=group["momentum"], centered=group["centered"], **common)
            elif algo == "adagrad":
                _F.adagrad_(P, G, slot("sum"), step=steps, lr_decay=group["lr_decay"], eps=group["eps"],
                            **common)
            else:
                _F.adadelta_(P, G, slot("square_avg"), slot("acc_delta"), step=steps, rho=group["rho"],
                             eps=group["eps"], **common)
            torch._foreach_add_(step_t, 1.0)
        if _increment_version is not None:  # tell autograd the parameters changed in place
            _increment_version(params)

    def _replan(self, plans: dict, group: dict, keys: tuple, fast: Optional[list]) -> None:
        """After a full (checked) step of ``group``: cache its plan when every parameter with a
        gradient took the cnnkit path, else drop it. Plans of groups no longer present go too."""
        plans.pop(id(group), None)
        live = {id(g) for g in self.param_groups}
        for k in [k for k in plans if k not in live]:
            del plans[k]
        if fast is not None:
            plan = _GroupPlan.make(self, group, keys, fast)
            if plan is not None:
                plans[id(group)] = plan

    def _torch_step(self, groups: list) -> None:
        """torch's own step over ``groups`` (whole groups or copies holding some parameters)."""
        saved = self.param_groups
        self.param_groups = groups
        try:
            _torch_step_of(self._torch_base)(self)
        finally:
            self.param_groups = saved


class _GroupPlan:
    """One parameter group's cnnkit path, prepared after a fully checked step and reused while
    nothing it was made from changes.

    It keeps the NumPy views of the parameters and state tensors and the compiled
    ``_core.OptimPlan`` built from them (which checked them once), and the key that makes it
    stale: the optimizer's ``state`` object, the group's parameter list (identity), per parameter
    its ``data_ptr``/shape/strides (``p.data = t`` changes them) and its state dict, per state
    tensor its identity and ``_version`` (``resize_``, ``set_`` and torch's in-place updates bump
    it; cnnkit writes through NumPy and does not). The ``'step'`` tensors of a cached group are
    rehomed, with their values, into 0-d views of one buffer, so reading and advancing them is one
    NumPy operation instead of ``.item()`` and ``_foreach_add_`` per tensor. Gradients are new
    tensors at every step (``zero_grad(set_to_none=True)``): their views are made and checked
    against the parameter's (dtype, shape, strides) each step; anything else that differs sends
    the group through the full checked path, which makes a new plan.
    """

    __slots__ = ("group", "keys", "state", "all_params", "others", "params", "rows", "plan",
                 "func", "step_buf", "step_np", "step_ver", "sgd_step")
    group: dict
    keys: tuple
    state: Any
    all_params: tuple
    others: list
    params: list
    rows: list
    plan: Any  # _core.OptimPlan
    func: str  # the cnnkit.optim.functional function it stands in for
    step_buf: Optional[torch.Tensor]  # the 'step' values (None for SGD)
    step_np: Optional[np.ndarray]
    step_ver: int
    sgd_step: int

    @classmethod
    def make(cls, opt: Any, group: dict, keys: tuple, fast: list) -> Optional["_GroupPlan"]:
        algo = opt._algo
        name = "adamw" if algo == "adam" and group.get("decoupled_weight_decay") else algo
        spec = SPECS[name]
        state = opt.state
        sdicts = [state.get(p) for p in fast]
        self = cls()
        self.step_buf = self.step_np = None
        self.step_ver = 0
        self.sgd_step = 1 if keys else 0
        if algo != "sgd":
            ts = [sd["step"] for sd in sdicts]
            dt = ts[0].dtype
            if not all(t.dim() == 0 and t.dtype is dt and t.is_cpu and not t.requires_grad for t in ts) \
                    or not dt.is_floating_point:
                return None
            buf = torch.stack(ts)
            for sd, view in zip(sdicts, buf.unbind()):
                sd["step"] = view
            self.step_buf, self.step_np, self.step_ver = buf, buf.numpy(), buf._version
        P = [_view(p) for p in fast]
        slots: list = [[_view(sd[k]) for sd in sdicts] if k in keys else None for k in spec.slots]
        try:
            self.plan = _core.OptimPlan(spec.core, P, slots, np.zeros(len(P), dtype=np.int32))
        except (TypeError, ValueError):
            return None
        self.group, self.keys, self.state, self.func = group, keys, state, _FUNC[name]
        self.all_params = tuple(group["params"])
        self.others = [p for p in self.all_params if p.grad is None]
        self.params = fast
        rows = []
        for p, pv, sd in zip(fast, P, sdicts):
            sts = tuple((k, sd[k]) for k in keys)
            # (None, None) for channels-last: its gradient is checked with torch, then viewed flat
            nshape, nstrides = (pv.shape, pv.strides) if p.is_contiguous() else (None, None)
            rows.append((p, p.data_ptr(), p.shape, p.stride(), pv.dtype, nshape, nstrides, sd, sts,
                         tuple(t._version for _, t in sts)))
        self.rows = rows
        return self

    def grads(self, state: Any) -> Optional[list]:
        """This step's gradient views, or None when the plan is stale (or a gradient must fall back)."""
        if state is not self.state or (self.step_buf is not None and self.step_buf._version != self.step_ver):
            return None
        gp = self.group["params"]
        if len(gp) != len(self.all_params) or not all(map(_is, gp, self.all_params)):
            return None
        for p in self.others:
            if p.grad is not None:
                return None
        out: list = []
        for p, ptr, shape, stride, dt, nshape, nstrides, sd, sts, vers in self.rows:
            if p.data_ptr() != ptr or p.stride() != stride or p.shape != shape or state.get(p) is not sd:
                return None
            for (k, t), v in zip(sts, vers):
                if sd.get(k) is not t or t._version != v:
                    return None
            g = p.grad
            if g is None:
                out.append(None)
                continue
            if nshape is None:  # channels-last parameter: the full check, then a flat view
                if (g.layout is not _STRIDED or g.dtype is not p.dtype or not g.is_cpu or g.is_neg()
                        or g.stride() != stride or g.shape != shape):
                    return None
                out.append(_view(g))
                continue
            try:
                ga = g.numpy()  # raises for CUDA, sparse, negative-bit and grad-requiring tensors
            except (TypeError, RuntimeError):
                return None
            if ga.dtype != dt or ga.strides != nstrides or ga.shape != nshape:
                return None
            out.append(ga)
        return out


_is = operator.is_
_FUNC = {"sgd": "sgd_", "adam": "adam_", "adamw": "adamw_", "rmsprop": "rmsprop_",
         "adagrad": "adagrad_", "adadelta": "adadelta_"}


def _run_plan(plan: _GroupPlan, grads: list, row: list) -> None:
    """One compiled multi-tensor update of a cached group (the checked twin of the
    :mod:`cnnkit.optim.functional` call its plan was made after), then its step counts."""
    hyper = np.array([row], dtype=np.float64)
    if plan.step_np is None:  # SGD: 0-based step 1 once momentum buffers exist (0 without momentum)
        plan.plan.step(grads, hyper, np.full(len(grads), plan.sgd_step, dtype=np.int64))
    else:
        steps = plan.step_np.astype(np.int64)  # as int(step.item()): steps taken before this one
        plan.plan.step(grads, hyper, steps)  # advances steps[i] where grads[i] is not None
        plan.step_np[...] = steps
    if _increment_version is not None:  # tell autograd the parameters changed in place
        _increment_version(plan.params if all(g is not None for g in grads)
                           else [p for p, g in zip(plan.params, grads) if g is not None])


# The classes' docstrings are set from this template after the class statements: written into the
# class bodies, the static API reference (griffe, which cannot see torch's constructors) fails its
# strict build on every documented constructor parameter.
_DOC = """{summary}

A subclass of ``torch.optim.{name}``: same constructor arguments, defaults and errors, parameter
groups, state dict and scheduler support; ``step`` runs one fused cnnkit call per parameter
group on CPU float32/float64 tensors and torch's own step otherwise (the rule:
:mod:`cnnkit.torch.optim`).

Parameters
----------
params : iterable of Tensor or dict
    Parameters, or parameter groups (dicts with a ``'params'`` entry and any option below).
{params}
{flags} : bool or None
    As torch's; set, any but ``foreach`` selects torch's own step.

Examples
--------
>>> import torch
>>> from cnnkit.torch.optim import {name}
>>> w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
>>> opt = {name}([w]{example})
>>> w.grad = torch.tensor([0.5, -0.5], dtype=torch.float64)
>>> opt.step()
>>> bool((w.detach() != 1).all())
True
"""


class SGD(_CnnkitStep, torch.optim.SGD):
    _algo = "sgd"
    _torch_base = torch.optim.SGD


class Adam(_CnnkitStep, torch.optim.Adam):
    _algo = "adam"
    _torch_base = torch.optim.Adam


class AdamW(_CnnkitStep, torch.optim.AdamW):
    _algo = "adam"
    _torch_base = torch.optim.AdamW


class RMSprop(_CnnkitStep, torch.optim.RMSprop):
    _algo = "rmsprop"
    _torch_base = torch.optim.RMSprop


class Adagrad(_CnnkitStep, torch.optim.Adagrad):
    _algo = "adagrad"
    _torch_base = torch.optim.Adagrad


class Adadelta(_CnnkitStep, torch.optim.Adadelta):
    _algo = "adadelta"
    _torch_base = torch.optim.Adadelta


_ADAM_PARAMS = """lr : float, default 1e-3
    Learning rate.
betas : tuple of float, default (0.9, 0.999)
    Decay rates of the first and second moment averages.
eps : float, default 1e-8
    Added to the denominator.
weight_decay : float, default {wd}
    {wd_text}
amsgrad : bool, default False
    Use the running maximum of the second moment (state ``'max_exp_avg_sq'``).
maximize : bool, default False
    Maximise the objective."""

SGD.__doc__ = _DOC.format(
    summary="Stochastic gradient descent with optional (Nesterov) momentum, state ``'momentum_buffer'``.",
    name="SGD", flags="foreach, differentiable, fused", example=", lr=0.1, momentum=0.9", params="""lr : float, default 1e-3
    Learning rate.
momentum : float, default 0
    Momentum factor.
dampening : float, default 0
    Dampening for momentum.
weight_decay : float, default 0
    L2 penalty added to the gradient.
nesterov : bool, default False
    Nesterov momentum.
maximize : bool, default False
    Maximise the objective.""")
Adam.__doc__ = _DOC.format(
    summary="Adam, state ``'step'``, ``'exp_avg'``, ``'exp_avg_sq'`` (and ``'max_exp_avg_sq'``).",
    name="Adam", flags="foreach, capturable, differentiable, fused", example=", lr=0.1", params=_ADAM_PARAMS.format(
        wd="0", wd_text="L2 penalty added to the gradient (decoupled with decoupled_weight_decay).")
    + "\ndecoupled_weight_decay : bool, default False\n    Decay as AdamW does.")
AdamW.__doc__ = _DOC.format(
    summary="AdamW (decoupled weight decay), state as :class:`Adam`'s.",
    name="AdamW", flags="foreach, capturable, differentiable, fused", example=", lr=0.1", params=_ADAM_PARAMS.format(
        wd="1e-2", wd_text="Decoupled weight decay: ``p *= 1 - lr * weight_decay`` first."))
RMSprop.__doc__ = _DOC.format(
    summary="RMSprop, state ``'step'``, ``'square_avg'`` (and ``'momentum_buffer'``, ``'grad_avg'``).",
    name="RMSprop", flags="foreach, capturable, differentiable", example=", lr=0.1", params="""lr : float, default 1e-2
    Learning rate.
alpha : float, default 0.99
    Smoothing constant.
eps : float, default 1e-8
    Added to the denominator.
weight_decay : float, default 0
    L2 penalty added to the gradient.
momentum : float, default 0
    Momentum factor.
centered : bool, default False
    Normalise by the estimated variance of the gradient.
maximize : bool, default False
    Maximise the objective.""")
Adagrad.__doc__ = _DOC.format(
    summary="Adagrad, state ``'step'`` and ``'sum'`` (created by the constructor, as torch does).",
    name="Adagrad", flags="foreach, differentiable, fused", example=", lr=0.1", params="""lr : float, default 1e-2
    Learning rate.
lr_decay : float, default 0
    Learning-rate decay per step.
weight_decay : float, default 0
    L2 penalty added to the gradient.
initial_accumulator_value : float, default 0
    Initial value of ``'sum'``.
eps : float, default 1e-10
    Added to the denominator.
maximize : bool, default False
    Maximise the objective.""")
Adadelta.__doc__ = _DOC.format(
    summary="Adadelta, state ``'step'``, ``'square_avg'`` and ``'acc_delta'``.",
    name="Adadelta", flags="foreach, capturable, differentiable", example="", params="""lr : float, default 1.0
    Scale of the update.
rho : float, default 0.9
    Smoothing constant.
eps : float, default 1e-6
    Added inside the square roots.
weight_decay : float, default 0
    L2 penalty added to the gradient.
maximize : bool, default False
    Maximise the objective.""")
