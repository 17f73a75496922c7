"""Per-algorithm facts shared by the optimizer classes and the functional API.

Each spec names the compiled kernel, the hyperparameter columns it reads (in the order of the
C++ table in ``cpp/include/cnnkit/optim.h``), the state slots it keeps, and which slots a group's
hyperparameters need. Hyperparameter checks live here too, so a bad value is reported the same
way whichever API received it.
"""
from __future__ import annotations

import collections.abc
from dataclasses import dataclass
from typing import Callable, Mapping

from .._validate import check_bool, check_real

__all__ = ["AlgoSpec", "SPECS"]


def _nonneg(name):
    return lambda v: check_real(name, v, lo=0.0)


def _unit(name):  # [0, 1)
    return lambda v: check_real(name, v, lo=0.0, hi=1.0, hi_open=True)


def _real(name):
    return lambda v: check_real(name, v)


def _flag(name):
    return lambda v: check_bool(name, v)


@dataclass(frozen=True)
class AlgoSpec:
    """What the compiled kernel ``core`` needs from a parameter group."""

    core: str
    columns: tuple  # (group key, checker) in kernel column order; "beta1"/"beta2" come from betas
    slots: tuple  # state names in kernel slot order
    needed: Callable[[Mapping], tuple]  # group -> which slots are needed
    decoupled: bool = False
    cross_check: Callable[[Mapping], None] | None = None

    def row(self, group: Mapping) -> list:
        """Validated hyperparameter row for one group (bools as 0/1)."""
        out = []
        for key, check in self.columns:
            if key == "decoupled":
                out.append(1.0 if self.decoupled else 0.0)
            elif key in ("beta1", "beta2"):
                out.append(check(_betas(group)[0 if key == "beta1" else 1]))
            else:
                out.append(float(check(group[key])))
        if self.cross_check is not None:
            self.cross_check(group)
        return out


def _betas(group):
    b = group["betas"]
    if ((type(b) is not tuple and type(b) is not list  # (the common kinds without the ABC's isinstance hook)
            and (not isinstance(b, collections.abc.Sequence) or isinstance(b, str))) or len(b) != 2):
        raise TypeError(f"betas: expected a pair (beta1, beta2), got {b!r}")
    return b


def _sgd_cross(group):
    if group["nesterov"] and (float(group["momentum"]) <= 0 or float(group["dampening"]) != 0):
        raise ValueError(
            "nesterov: Nesterov momentum requires momentum > 0 and dampening == 0, got "
            f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")


SPECS = {
    "sgd": AlgoSpec(
        core="sgd",
        columns=(("lr", _nonneg("lr")), ("momentum", _nonneg("momentum")),
                 ("dampening", _real("dampening")), ("weight_decay", _nonneg("weight_decay")),
                 ("nesterov", _flag("nesterov")), ("maximize", _flag("maximize"))),
        slots=("momentum_buffer",),
        needed=lambda g: (float(g["momentum"]) != 0,),
        cross_check=_sgd_cross),
    "adagrad": AlgoSpec(
        core="adagrad",
        columns=(("lr", _nonneg("lr")), ("lr_decay", _nonneg("lr_decay")),
                 ("weight_decay", _nonneg("weight_decay")), ("eps", _nonneg("eps")),
                 ("maximize", _flag("maximize"))),
        slots=("sum",),
        needed=lambda g: (True,)),
    "rmsprop": AlgoSpec(
        core="rmsprop",
        columns=(("lr", _nonneg("lr")), ("alpha", _unit("alpha")), ("eps", _nonneg("eps")),
                 ("weight_decay", _nonneg("weight_decay")), ("momentum", _nonneg("momentum")),
                 ("centered", _flag("centered")), ("maximize", _flag("maximize"))),
        slots=("square_avg", "grad_avg", "momentum_buffer"),
        needed=lambda g: (True, bool(g["centered"]), float(g["momentum"]) > 0)),
    "adadelta": AlgoSpec(
        core="adadelta",
        columns=(("lr", _nonneg("lr")), ("rho", _unit("rho")), ("eps", _nonneg("eps")),
                 ("weight_decay", _nonneg("weight_decay")), ("maximize", _flag("maximize"))),
        slots=("square_avg", "acc_delta"),
        needed=lambda g: (True, True)),
    "adam": AlgoSpec(
        core="adam",
        columns=(("lr", _nonneg("lr")), ("beta1", _unit("betas[0]")), ("beta2", _unit("betas[1]")),
                 ("eps", _nonneg("eps")), ("weight_decay", _nonneg("weight_decay")),
                 ("amsgrad", _flag("amsgrad")), ("maximize", _flag("maximize")),
                 ("decoupled", None)),
        slots=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        needed=lambda g: (True, True, bool(g["amsgrad"]))),
}
SPECS["adamw"] = AlgoSpec(core="adam", columns=SPECS["adam"].columns, slots=SPECS["adam"].slots,
                          needed=SPECS["adam"].needed, decoupled=True)
