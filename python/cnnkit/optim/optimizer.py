"""Stateful optimizer shell over the fused multi-tensor kernels.

An :class:`Optimizer` gathers its parameters (NumPy arrays, updated in place), keeps the
per-parameter state arrays, and makes exactly one compiled call per :meth:`Optimizer.step` for
all parameters of all groups. Parameter groups, hyperparameter names and ``state_dict`` layout
follow ``torch.optim``.
"""
from __future__ import annotations

import json
import numbers
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .. import _core
from .._validate import as_arrays, dlpack_methods
from ._arrays import check_list, check_param
from ._spec import SPECS, AlgoSpec

__all__ = ["Optimizer", "flatten_state_dict"]

_REQUIRED = object()


class Optimizer:
    """Base class: subclasses set ``_algo`` and call ``super().__init__(params, defaults)``.

    Users construct a subclass (:class:`~cnnkit.optim.SGD`, :class:`~cnnkit.optim.Adam`, ...);
    ``param_groups`` (list of dict) and ``defaults`` (dict) are public, as in ``torch.optim``.

    Parameters
    ----------
    params : list of ndarray, or list of dict
        The arrays to optimise (float32 or float64, C-contiguous, writeable), or parameter
        groups: dicts with a ``"params"`` list and any hyperparameter overriding the defaults.
    defaults : dict
        Hyperparameters for groups that do not set them.
    """

    _algo: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dlpack_methods(cls, ("__init__", "step"))

    def __init__(self, params: Union[Iterable[np.ndarray], Iterable[Mapping[str, Any]]],
                 defaults: Mapping[str, Any]) -> None:
        self._spec: AlgoSpec = SPECS[self._algo]
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self._params: list[np.ndarray] = []
        self._group_of: list[int] = []
        self._states: list[list] = [[] for _ in self._spec.slots]
        self._steps = np.zeros(0, dtype=np.int64)
        self._plan: Any = None
        self._needs: list = []
        if isinstance(params, np.ndarray):
            raise TypeError("params: expected a list of arrays or of parameter groups (dicts), "
                            "got a single ndarray; wrap it in a list")
        groups: list[Any] | None = list(params) if isinstance(params, Iterable) else None
        if groups is None:
            raise TypeError(f"params: expected a list of arrays or dicts, got {type(params).__name__}")
        if len(groups) == 0:
            raise ValueError("params: optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # ---- groups and state -----------------------------------------------------------------
    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (as ``torch.optim``).

        Parameters
        ----------
        param_group : dict
            ``"params"``: an array or a list of arrays not yet in the optimizer (one dtype), and
            any hyperparameters overriding ``defaults`` for this group.

        Raises
        ------
        TypeError, ValueError
            For a malformed group, a repeated array or an unknown hyperparameter; the optimizer
            is left unchanged.
        """
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group: expected a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        if "params" not in group:
            raise ValueError("param_group: expected a 'params' entry")
        ps = as_arrays("param_group['params']", group["params"])  # torch tensors: views of their memory
        ps = [ps] if isinstance(ps, np.ndarray) else check_list("param_group['params']", ps)
        if not ps:
            raise ValueError("param_group['params']: expected at least one array")
        base = len(self._params)
        for i, p in enumerate(ps):
            check_param(f"params[{base + i}]", p)
        if len({p.dtype for p in ps}) != 1:
            raise TypeError("params: every parameter of a group must share one dtype, got "
                            f"{sorted({str(p.dtype) for p in ps})}")
        seen = {id(p) for p in self._params}
        for i, p in enumerate(ps):
            if id(p) in seen:
                raise ValueError(f"params[{base + i}]: appears more than once in the optimizer")
            seen.add(id(p))
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"param_group: unknown hyperparameters {sorted(unknown)} for "
                             f"{type(self).__name__}")
        for k, v in self.defaults.items():
            if v is _REQUIRED and k not in group:
                raise ValueError(f"param_group: {k!r} must be given for {type(self).__name__}")
            group.setdefault(k, v)
        if "betas" in group:
            if not isinstance(group["betas"], (tuple, list)):
                raise TypeError(f"betas: expected a pair (beta1, beta2), got {group['betas']!r}")
            group["betas"] = tuple(group["betas"])
        group["params"] = ps
        self._spec.row(group)  # validate before adding anything
        gi = len(self.param_groups)
        # Build the new plan first (it checks that no two arrays share memory); commit after.
        pending = self._prepare(
            params=self._params + ps, group_of=self._group_of + [gi] * len(ps),
            groups=self.param_groups + [group],
            states=[list(slot) + [None] * len(ps) for slot in self._states],
            steps=np.concatenate([self._steps, np.zeros(len(ps), np.int64)]), force=True)
        self.param_groups.append(group)
        self._params = self._params + ps
        self._group_of = self._group_of + [gi] * len(ps)
        self._commit(pending)

    def _init_state(self, slot: int, p: np.ndarray, group: Mapping[str, Any]) -> float:
        """Initial value of a state slot (0; subclasses override), broadcast into the array."""
        return 0.0

    def _prepare(self, *, params=None, group_of=None, groups=None, states=None, steps=None,
                 force=False):
        """State slots the groups' hyperparameters need and a plan over them, without changing
        the optimizer; None when nothing changed. Costs one check per group in that case, so it
        can run every step. Commit the result with :meth:`_commit` once the step succeeded."""
        params = self._params if params is None else params
        group_of = self._group_of if group_of is None else group_of
        groups = self.param_groups if groups is None else groups
        needs = [tuple(self._spec.needed(g)) for g in groups]
        if not force and self._plan is not None and needs == self._needs:
            return None
        states = [list(slot) for slot in (self._states if states is None else states)]
        steps = (self._steps if steps is None else steps).copy()
        missing = [(s, i) for i in range(len(params))
                   for s, need in enumerate(needs[group_of[i]])
                   if need and states[s][i] is None]
        for (s, i), view in zip(missing, self._arena_views(missing, params)):
            view[...] = self._init_state(s, params[i], groups[group_of[i]])
            states[s][i] = view
            steps[i] = self._step_after_new_state(int(steps[i]), s)
        plan = _core.OptimPlan(self._spec.core, params, states, np.asarray(group_of, dtype=np.int32))
        return needs, states, steps, plan

    def _commit(self, pending: Any) -> None:
        if pending is not None:
            self._needs, self._states, self._steps, self._plan = pending

    def _ensure_state(self) -> None:
        self._commit(self._prepare())

    def _arena_views(self, missing: list, params: list) -> list:
        """Views for new state arrays, carved from one allocation per (slot, dtype).

        One large allocation gets transparent huge pages (NumPy advises them for big arrays), so
        the state of a model made of many small tensors does not pay a TLB miss per 4 KiB page,
        and each state slot is one pass over contiguous memory. Views start on 64-byte lines.
        """
        views: list = [None] * len(missing)
        buckets: dict = {}
        for k, (s, i) in enumerate(missing):
            buckets.setdefault((s, params[i].dtype), []).append(k)
        for (s, dtype), ks in buckets.items():
            line = 64 // dtype.itemsize
            offsets, total = [], 0
            for k in ks:
                offsets.append(total)
                size = params[missing[k][1]].size
                total += -(-size // line) * line
            arena = np.zeros(max(total, 1), dtype=dtype)
            for k, off in zip(ks, offsets):
                p = params[missing[k][1]]
                views[k] = arena[off:off + p.size].reshape(p.shape)
        return views

    def _step_after_new_state(self, step: int, slot: int) -> int:
        """Hook: the step count of a parameter whose state slot was just allocated."""
        return step

    # ---- the step --------------------------------------------------------------------------
    def _hyper(self) -> np.ndarray:
        return np.array([self._spec.row(g) for g in self.param_groups], dtype=np.float64)

    def step(self, grads: Sequence[Optional[np.ndarray]], *, found_inf: Optional[bool] = None) -> None:
        """Update every parameter in place from ``grads`` with one fused compiled call.

        Parameters
        ----------
        grads : list of ndarray or None
            One gradient per parameter, in the order of the groups' ``params`` (the order of
            ``parameters()``); each the same shape and dtype as its parameter and C-contiguous.
            ``None`` skips that parameter (its state and step count are left as they are).
        found_inf : bool, optional
            When true the step is skipped entirely (e.g. from :func:`cnnkit.optim.found_inf`).

        Returns
        -------
        None
            The parameters and state arrays are updated in place.
        """
        if type(grads) is not list and type(grads) is not tuple:  # one cheap check per step
            grads = check_list("grads", grads)
        hyper = self._hyper()
        if found_inf is not None and _flag(found_inf):
            return
        pending = self._prepare()  # new state slots are committed only if the step succeeds
        if pending is None:
            self._plan.step(grads, hyper, self._steps)
        else:
            pending[3].step(grads, hyper, pending[2])
            self._commit(pending)

    def zero_state(self) -> None:
        """Reset every state array and step count to the values of a fresh optimizer."""
        for i, p in enumerate(self._params):
            group = self.param_groups[self._group_of[i]]
            for s in range(len(self._states)):
                if self._states[s][i] is not None:
                    self._states[s][i][...] = self._init_state(s, p, group)
        self._steps[:] = 0

    def parameters(self) -> list[np.ndarray]:
        """The parameter arrays, in step order.

        Returns
        -------
        list of ndarray
            The optimizer's own arrays (not copies), in the order :meth:`step` expects gradients.
        """
        return list(self._params)

    # ---- state_dict ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{'state': {i: {'step': int, <slot>: ndarray}}, 'param_groups': [...]}`` (copies).

        Parameters that have taken no step have no entry, as in ``torch.optim``. Use
        :func:`flatten_state_dict` to save it with ``np.savez``.

        Returns
        -------
        dict
            ``'state'``: parameter index -> its step count and state arrays (copies);
            ``'param_groups'``: each group's hyperparameters, ``'params'`` as indices.
        """
        state = {}
        for i in range(len(self._params)):
            if self._steps[i] == 0:
                continue
            entry = {"step": int(self._steps[i])}
            for s, name in enumerate(self._spec.slots):
                if self._states[s][i] is not None:
                    entry[name] = self._states[s][i].copy()
            state[i] = entry
        groups, start = [], 0
        for g in self.param_groups:
            d = {k: v for k, v in g.items() if k != "params"}
            d["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore state from :meth:`state_dict` (or its :func:`flatten_state_dict` form, e.g.
        an ``np.load`` of a saved file). Everything is checked before anything is changed.

        Parameters
        ----------
        state_dict : dict or mapping
            From :meth:`state_dict` of an optimizer of the same class with the same groups and
            parameter shapes, or its flat form.

        Raises
        ------
        TypeError, ValueError
            If it does not match this optimizer; nothing is changed then.
        """
        sd = _unflatten(state_dict)
        groups = sd["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict: expected {len(self.param_groups)} parameter groups, "
                             f"got {len(groups)}")
        for gi, (mine, theirs) in enumerate(zip(self.param_groups, groups)):
            if len(theirs["params"]) != len(mine["params"]):
                raise ValueError(f"state_dict['param_groups'][{gi}]: expected "
                                 f"{len(mine['params'])} params, got {len(theirs['params'])}")
        new_groups = []
        for mine, theirs in zip(self.param_groups, groups):
            g = dict(mine)
            g.update({k: (tuple(v) if k == "betas" else v) for k, v in theirs.items() if k != "params"})
            self._spec.row(g)
            new_groups.append(g)
        # map saved ids to positions
        order = [pid for g in groups for pid in g["params"]]
        pos = {int(pid): k for k, pid in enumerate(order)}
        staged = {}
        for pid, entry in sd["state"].items():
            if int(pid) not in pos:
                raise ValueError(f"state_dict['state']: unknown parameter id {pid!r}")
            i = pos[int(pid)]
            p = self._params[i]
            arrays = {}
            for name, value in entry.items():
                if name == "step":
                    continue
                if name not in self._spec.slots:
                    raise ValueError(f"state_dict['state'][{pid}]: unknown state {name!r}")
                a = np.asarray(value)
                if a.shape != p.shape or a.dtype != p.dtype:
                    raise ValueError(f"state_dict['state'][{pid}][{name!r}]: expected "
                                     f"{p.dtype} {p.shape}, got {a.dtype} {a.shape}")
                arrays[name] = a
            # torch's SGD keeps no step: a saved buffer means "initialised"
            step = int(np.asarray(entry.get("step", 1 if arrays else 0)))
            if step < 0:
                raise ValueError(f"state_dict['state'][{pid}]['step']: expected >= 0, got {step}")
            staged[i] = (step, arrays)
        # commit
        for g, new in zip(self.param_groups, new_groups):
            g.clear()
            g.update(new)
        self.zero_state()
        self._ensure_state()
        for i, (step, arrays) in staged.items():
            self._steps[i] = step
            for name, a in arrays.items():
                s = self._spec.slots.index(name)
                if self._states[s][i] is None:
                    self._states[s][i] = self._arena_views([(s, i)], self._params)[0]
                    self._plan = None
                np.copyto(self._states[s][i], a)
        if self._plan is None:
            self._ensure_state()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"


dlpack_methods(Optimizer, ("__init__", "step"))


def _flag(found_inf: Any) -> bool:
    """``found_inf`` as a bool: a bool, 0 or 1, or a 0-d bool/int array (what an amp-style scaler
    keeps); TypeError for anything else (a string is truthy, but is no flag)."""
    if isinstance(found_inf, np.ndarray) and found_inf.shape == () and found_inf.dtype.kind in "biu":
        found_inf = found_inf.item()
    if isinstance(found_inf, (bool, np.bool_)) or (isinstance(found_inf, numbers.Integral) and found_inf in (0, 1)):
        return bool(found_inf)
    raise TypeError(f"found_inf: expected a bool (or 0/1), got {type(found_inf).__name__} {found_inf!r}")


def flatten_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A ``state_dict`` as a flat ``{name: ndarray}`` mapping for ``np.savez`` (no pickling).

    ``opt.load_state_dict(np.load(path))`` reads it back.

    Parameters
    ----------
    state_dict : dict
        From :meth:`Optimizer.state_dict`.

    Returns
    -------
    dict of str to ndarray
        ``'param_groups'`` (the groups as a JSON string array) and ``'state/<i>/<name>'``.

    Examples
    --------
    >>> import numpy as np, cnnkit
    >>> w = np.ones(2, np.float32)
    >>> opt = cnnkit.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> opt.step([np.ones(2, np.float32)])
    >>> sorted(cnnkit.optim.flatten_state_dict(opt.state_dict()))
    ['param_groups', 'state/0/momentum_buffer', 'state/0/step']
    """
    if not isinstance(state_dict, Mapping) or "param_groups" not in state_dict or "state" not in state_dict:
        raise TypeError(f"state_dict: expected the dict from Optimizer.state_dict() (with 'state' and "
                        f"'param_groups'), got {type(state_dict).__name__}")
    out = {"param_groups": np.array(json.dumps(state_dict["param_groups"], default=_jsonable))}
    for pid, entry in state_dict["state"].items():
        for name, value in entry.items():
            out[f"state/{int(pid)}/{name}"] = np.asarray(value)
    return out


def _jsonable(x: Any) -> Any:
    """NumPy scalars (accepted as hyperparameters) as plain Python values."""
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"state_dict: cannot save {type(x).__name__} {x!r} in a flat state dict")


def _unflatten(sd: Mapping[str, Any]) -> dict[str, Any]:
    if not hasattr(sd, "keys") or "param_groups" not in sd:
        raise TypeError("state_dict: expected a dict from state_dict() or flatten_state_dict()")
    groups = sd["param_groups"]
    if isinstance(groups, np.ndarray):
        groups = json.loads(str(groups))
        state: dict = {}
        for key in sd.keys():
            if key.startswith("state/"):
                _, pid, name = key.split("/", 2)
                state.setdefault(int(pid), {})[name] = np.asarray(sd[key])
        return {"state": state, "param_groups": groups}
    if "state" not in sd:
        raise TypeError("state_dict: expected a 'state' entry")
    return {"state": dict(sd["state"]), "param_groups": list(groups)}
