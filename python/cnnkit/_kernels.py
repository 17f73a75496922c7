"""The kernel registries: one table per kernel family, read from the compiled core.

Every family (``cnnkit.kernels()`` lists them) has one C++ table of kernel variants in priority
order. An entry has a name of one grammar, ``<op>_<algorithm>_<dtype>_<layout>[_<how>]__<isa>``
(what is computed before the double underscore, where it runs after it), the ISA level it was
compiled for and the passes it implements. The dispatcher runs the first entry compiled for the
active ISA level that supports the problem; tests iterate the table and can force an entry.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, overload

from . import _core

__all__ = ["kernels", "KernelEntry", "KernelTable"]


@dataclass(frozen=True)
class _Family:
    rows: Callable[[], list]                   # () -> [(name, isa, passes)]
    problem: Callable[..., tuple]              # (**problem) -> core problem args
    supports: Callable[..., bool]              # (index, *core problem) -> bool
    select: Callable[..., int]                 # (*core problem) -> index
    force: Callable[[int], None]
    forced: Callable[[], int]
    doc: str


def _conv_problem(*args: Any, **kwargs: Any) -> tuple:
    from .ops.conv import _registry_problem
    return _registry_problem(*args, **kwargs)


_DTYPES = ("uint8", "float32", "float64")


def _op_problem(op: str, dtype: Any = "float32") -> tuple:
    """(op, [dtype names]) for the one-kernel-per-operation families; dtype may be a list."""
    if not isinstance(op, str):
        raise TypeError(f"op: expected a str, got {type(op).__name__}")
    import numpy as np
    names = []
    for d in (dtype if isinstance(dtype, (list, tuple)) else [dtype]):
        try:
            name = np.dtype(d).name
        except TypeError:
            raise TypeError(f"dtype: expected one of {_DTYPES}, got {d!r}") from None
        if name not in _DTYPES:
            raise TypeError(f"dtype: expected one of {_DTYPES}, got {name}")
        names.append(name)
    return op, names


def _op_family(name: str) -> _Family:
    return _Family(lambda: _core.registry_entries(name), _op_problem,
                   lambda i, op, dts: _core.registry_supports(name, i, op, dts),
                   lambda op, dts: _core.registry_select(name, op, dts),
                   lambda i: _core.registry_force(name, i), lambda: _core.registry_forced(name),
                   "problem: (op, dtype='float32'): the operation's name (an entry's passes[0]) "
                   "and the element type(s)")


_FAMILIES: dict[str, _Family] = {
    "conv": _Family(_core.conv_registry, _conv_problem, _core.conv_registry_supports,
                    _core.conv_registry_select, _core.conv_registry_force,
                    _core.conv_registry_forced,
                    "problem: (x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, "
                    "layout='NCHW', pass_='forward', dtype=numpy.float32), as "
                    "cnnkit.ops.conv2d_algorithm"),
    **{name: _op_family(name) for name in ("norm", "optim", "augment", "nn")},
}


@dataclass(frozen=True)
class KernelEntry:
    """One kernel variant of a family's table.

    Attributes
    ----------
    family : str
        The family (``"conv"``, ...).
    name : str
        ``<op>_<algorithm>_<dtype>_<layout>[_<how>]__<isa>``.
    isa : str
        The ISA level the entry was compiled for: ``"scalar"``, ``"avx2"`` or ``"avx512"``.
    passes : tuple of str
        What it implements: conv, the passes (``"forward"``, ``"input"``, ``"weight"``); the
        other families, the one operation (``"norm_stats"``, ...).
    index : int
        Its position in the table (the priority order).
    """

    family: str
    name: str
    isa: str
    passes: tuple
    index: int

    def supports(self, *problem: Any, **kw: Any) -> bool:
        """Whether this entry implements the pass and supports the problem (family's arguments)."""
        f = _FAMILIES[self.family]
        return bool(f.supports(self.index, *f.problem(*problem, **kw)))


class KernelTable(Sequence):
    """A family's kernel table, in priority order; index it by position or by name.

    Examples
    --------
    >>> import cnnkit
    >>> table = cnnkit.kernels("conv")
    >>> e = table.select((2, 9, 9, 32), (32, 1, 3, 3), padding=1, groups=32, layout="NHWC")
    >>> e.name.startswith("conv2d_dw_f32_nhwc__")
    True
    >>> table[e.name] is e
    True
    """

    def __init__(self, family: str) -> None:
        if not isinstance(family, str):
            raise TypeError(f"family: expected a str, got {type(family).__name__}")
        if family not in _FAMILIES:
            raise ValueError(f"family: expected one of {sorted(_FAMILIES)}, got {family!r}")
        self.family = family
        self._f = _FAMILIES[family]
        self._entries = tuple(KernelEntry(family, name, isa, tuple(passes), i)
                              for i, (name, isa, passes) in enumerate(self._f.rows()))
        self._by_name = {e.name: e for e in self._entries}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[KernelEntry]:
        return iter(self._entries)

    def __getitem__(self, key: Any) -> Any:
        """The entry at position ``key`` (an int or a slice) or named ``key`` (a str).

        Parameters
        ----------
        key : int, slice or str

        Returns
        -------
        KernelEntry or tuple of KernelEntry

        Raises
        ------
        KeyError
            For a name the family does not have.
        """
        if isinstance(key, str):
            try:
                return self._by_name[key]
            except KeyError:
                raise KeyError(f"{self.family}: no kernel named {key!r}") from None
        return self._entries[key]

    def __repr__(self) -> str:
        return f"KernelTable({self.family!r}, {len(self)} entries)"

    def names(self) -> list:
        """Every entry's name, in priority order.

        Returns
        -------
        list of str
        """
        return [e.name for e in self._entries]

    def select(self, *problem: Any, **kw: Any) -> KernelEntry:
        """The entry the dispatcher runs for this problem at the active ISA level (or the forced
        entry, where it supports the problem).

        Parameters
        ----------
        *problem, **kw
            The family's problem arguments (see :func:`cnnkit.kernels`' notes).

        Returns
        -------
        KernelEntry
        """
        return self._entries[int(self._f.select(*self._f.problem(*problem, **kw)))]

    def supports(self, entry: "KernelEntry | str", *problem: Any, **kw: Any) -> bool:
        """Whether ``entry`` supports the problem.

        Parameters
        ----------
        entry : KernelEntry or str
            An entry of this table or its name.
        *problem, **kw
            The family's problem arguments (see :func:`cnnkit.kernels`' notes).

        Returns
        -------
        bool
        """
        return self._entry(entry).supports(*problem, **kw)

    def hits(self, entry: "KernelEntry | str") -> int:
        """How many times the dispatcher has run ``entry`` so far. Counted for the
        one-kernel-per-operation families (not conv, which has no counter).

        Parameters
        ----------
        entry : KernelEntry or str
            An entry of this table or its name.

        Returns
        -------
        int
        """
        e = self._entry(entry)
        if self.family == "conv":
            raise ValueError("entry: the conv table keeps no counts")
        return int(_core.registry_hits(self.family, e.index))

    def forced(self) -> KernelEntry | None:
        """The entry forced now, or None.

        Returns
        -------
        KernelEntry or None
        """
        i = int(self._f.forced())
        return None if i < 0 else self._entries[i]

    @contextlib.contextmanager
    def force(self, entry: "KernelEntry | str") -> Iterator[KernelEntry]:
        """Within the block, run ``entry`` wherever it supports a problem, at its own ISA level;
        other problems dispatch as usual. Process-wide; for tests. The previous setting is
        restored afterwards.

        Parameters
        ----------
        entry : KernelEntry or str
            An entry of this table or its name.

        Yields
        ------
        KernelEntry
            The forced entry.
        """
        e = self._entry(entry)
        before = int(self._f.forced())
        self._f.force(e.index)
        try:
            yield e
        finally:
            self._f.force(before)

    def _entry(self, entry: Any) -> KernelEntry:
        if isinstance(entry, KernelEntry):
            if entry.family != self.family:
                raise ValueError(f"entry: expected a {self.family} kernel, got {entry.family}'s "
                                 f"{entry.name}")
            return entry
        if isinstance(entry, str):
            return self[entry]
        raise TypeError(f"entry: expected a KernelEntry or a name, got {type(entry).__name__}")


_TABLES: dict[str, KernelTable] = {}


@overload
def kernels(family: None = None) -> tuple[str, ...]: ...
@overload
def kernels(family: str) -> KernelTable: ...
def kernels(family: str | None = None) -> "tuple[str, ...] | KernelTable":
    """A family's kernel table, or the names of the families.

    Parameters
    ----------
    family : str or None
        ``None`` lists the families; a family name returns its table.

    Returns
    -------
    tuple of str or KernelTable
        The family names, or the family's :class:`KernelTable` (entries in priority order).

    Notes
    -----
    The problem arguments of ``select`` and ``supports`` per family:

    * conv: ``(x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
      layout="NCHW", pass_="forward", dtype=numpy.float32)``, as
      :func:`cnnkit.ops.conv2d_algorithm`. Entries are named
      ``conv2d_<algorithm>_<dtype>_<layout>[_<how>]__<isa>``; ``passes`` lists the passes
      (``"forward"``, ``"input"``, ``"weight"``) an entry implements.
    * norm, optim, augment, nn: ``(op, dtype="float32")`` with ``op`` an operation (the single
      element of an entry's ``passes``, e.g. ``"norm_stats"``) and ``dtype`` one element type or
      a list of them. These families compile one kernel per operation and ISA level; entries
      are named ``<op>_<dtypes>__<isa>`` (``norm_stats_f32f64__avx512``).

    Examples
    --------
    >>> import cnnkit
    >>> cnnkit.kernels()
    ('conv', 'norm', 'optim', 'augment', 'nn')
    >>> sorted({e.isa for e in cnnkit.kernels("conv")})
    ['avx2', 'avx512', 'scalar']
    """
    if family is None:
        return tuple(_FAMILIES)
    if family not in _TABLES:
        _TABLES[family] = KernelTable(family)
    return _TABLES[family]
