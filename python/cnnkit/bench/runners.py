"""Benchmark families behind ``cnnkit bench <family> [args]``.

Each family is a module of this package with a ``main(argv) -> int``, so the benchmarks run from
an installed package (no repository needed). ``benchmarks/bench_<family>.py`` in the repository
are thin wrappers around the same functions.
"""
from __future__ import annotations

import importlib
import sys

__all__ = ["FAMILIES", "run"]

FAMILIES = {"optim": "cnnkit.bench.optim", "norm": "cnnkit.bench.norm",
            "augment": "cnnkit.bench.augment", "conv": "cnnkit.bench.conv",
            "train": "cnnkit.bench.train", "explain": "cnnkit.bench.explain",
            "torch": "cnnkit.bench.torch", "gemm": "cnnkit.bench.gemm"}


def run(family: str, argv: list[str]) -> int:
    """Run benchmark ``family`` with command-line arguments ``argv``; returns the exit status.

    Parameters
    ----------
    family : str
        A key of ``FAMILIES``: "optim", "norm", "augment", "conv", "train", "explain", "torch"
        or "gemm".
    argv : list of str
        The benchmark's own arguments (a leading ``--`` is dropped).

    Returns
    -------
    int
        The exit status (2 for an unknown family).
    """
    if family not in FAMILIES:
        print(f"family: expected one of {', '.join(sorted(FAMILIES))}, got {family!r}",
              file=sys.stderr)
        return 2
    argv = list(argv)
    if argv[:1] == ["--"]:  # `cnnkit bench optim -- --quick`
        argv = argv[1:]
    module = importlib.import_module(FAMILIES[family])
    return int(module.main(argv))
