"""The claims of the field, reproduced on a CPU in minutes: ``cnnkit experiment NAME``.

Each experiment is a module (file name: the experiment's name with "-" replaced by "_") with
``NAME``, ``TITLE``, ``CLAIMS`` and ``run(seed=0, quick=False, progress=True)``; it trains small
networks on scikit-learn's digits (or runs optimizers on analytic functions), measures, builds a
figure and judges every claim from the data with one rule (:func:`cnnkit.experiments._runner.judge`:
the statistic must beat its threshold by more than its spread over seeds). :func:`run` writes
``NAME.png``, ``NAME.json`` and a section of ``summary.md``; :func:`run_all` runs every
experiment whose module exists.

Modules are imported lazily: ``EXPERIMENTS`` maps each name to its module's import path.
"""
from __future__ import annotations

import importlib
import os
import time
from typing import Any, Optional, Union

from .._validate import check_bool, check_int

__all__ = ["EXPERIMENTS", "available", "load", "run", "run_all"]

#: Every experiment's name -> the module that implements it (imported on first use).
EXPERIMENTS: dict[str, str] = {name: f"{__name__}.{name.replace('-', '_')}" for name in (
    "bn-lr-stress", "bn-init", "bn-small-batch", "bn-train-test", "bn-weight-decay", "optimizers", "gd-variants",
    "samplepairing", "regularization", "group-conv", "depthwise-separable", "equalization", "policy-search",
    "smart-augmentation")}


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    if name not in EXPERIMENTS:
        raise ValueError(f"name: expected one of {', '.join(EXPERIMENTS)}, got {name!r}")
    return name


def available() -> list[str]:
    """The experiments whose module exists (in :data:`EXPERIMENTS` order).

    Returns
    -------
    list of str
        Names; the others are listed in ``EXPERIMENTS`` but not written yet.

    Examples
    --------
    >>> from cnnkit import experiments
    >>> set(experiments.available()) <= set(experiments.EXPERIMENTS)
    True
    """
    here = os.path.dirname(__file__)
    return [n for n, mod in EXPERIMENTS.items() if os.path.exists(os.path.join(here, mod.rsplit(".", 1)[1] + ".py"))]


def load(name: str) -> Any:
    """Import an experiment's module.

    Parameters
    ----------
    name : str
        A key of :data:`EXPERIMENTS`.

    Returns
    -------
    module
        With ``NAME``, ``TITLE``, ``CLAIMS`` and ``run``.

    Raises
    ------
    ModuleNotFoundError
        The experiment is listed but its module is not written yet.
    """
    return importlib.import_module(EXPERIMENTS[_check_name(name)])


def run(name: str, out: Union[str, os.PathLike], *, seed: int = 0, quick: bool = False,
        progress: bool = True, threads: Optional[int] = None) -> dict[str, Any]:
    """Run one experiment and write ``NAME.png``, ``NAME.json`` and a section of ``summary.md`` in
    ``out``.

    Parameters
    ----------
    name : str
        A key of :data:`EXPERIMENTS`.
    out : str or path
        The output folder (created if needed).
    seed : int >= 0, default 0
        The first seed (default settings repeat over ``seed``, ``seed + 1``, ``seed + 2``).
    quick : bool, default False
        A short run (seconds; one seed; verdicts are usually "inconclusive").
    progress : bool, default True
        Show tqdm progress bars.
    threads : int >= 1, optional
        Run at this many threads (:func:`cnnkit.set_num_threads`; restored afterwards). The
        networks are small, so one thread is often as fast, and much faster on a busy machine.
        The numbers do not depend on it. Default: leave the setting alone.

    Returns
    -------
    dict
        The JSON written to ``NAME.json`` (settings, measurements, claims with verdicts, seconds).

    Examples
    --------
    >>> import tempfile
    >>> from cnnkit import experiments
    >>> with tempfile.TemporaryDirectory() as d:  # doctest: +SKIP
    ...     doc = experiments.run("bn-init", d, quick=True, progress=False)
    >>> [c["verdict"] for c in doc["claims"]]  # doctest: +SKIP
    ['inconclusive']
    """
    from . import _runner
    _check_name(name)
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a str or path, got {type(out).__name__}")
    seed = check_int("seed", seed, 0, "an int >= 0")
    quick = check_bool("quick", quick)
    progress = check_bool("progress", progress)
    threads = None if threads is None else check_int("threads", threads, 1, "None or an int >= 1")
    module = load(name)
    from .. import get_num_threads, set_num_threads
    before = get_num_threads()
    try:
        if threads is not None:
            set_num_threads(threads)
        t0 = time.perf_counter()
        result = module.run(seed=seed, quick=quick, progress=progress)
        if not result.seconds:
            result.seconds = time.perf_counter() - t0
        result.settings.setdefault("seed", seed)
        result.settings.setdefault("quick", quick)
        return _runner.finish(result, out, seed=seed, quick=quick)
    finally:
        set_num_threads(before)


def run_all(out: Union[str, os.PathLike], *, seed: int = 0, quick: bool = False,
            progress: bool = True, threads: Optional[int] = None) -> dict[str, Optional[dict[str, Any]]]:
    """Run every experiment whose module exists, in :data:`EXPERIMENTS` order.

    Parameters
    ----------
    out : str or path
        The output folder.
    seed : int >= 0, default 0
    quick : bool, default False
    progress : bool, default True
    threads : int >= 1, optional
        As :func:`run`.

    Returns
    -------
    dict
        Name -> the JSON written (:func:`run`), or None for an experiment whose module does not
        exist yet.
    """
    have = set(available())
    return {name: run(name, out, seed=seed, quick=quick, progress=progress, threads=threads) if name in have else None
            for name in EXPERIMENTS}
