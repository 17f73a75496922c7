"""``cnnkit experiment NAME --out DIR [--seed S] [--quick] [--no-progress] [--threads T]`` and
``cnnkit experiment all``."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from . import EXPERIMENTS, available, run

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    names = ", ".join(EXPERIMENTS)
    p = argparse.ArgumentParser(
        prog="cnnkit experiment",
        description="Reproduce a claim of the field: train, measure, plot, and judge each claim from the data. "
                    "Writes NAME.png, NAME.json and appends to summary.md in --out.",
        epilog=f"NAME: {names}, or all (every experiment whose module exists).")
    p.add_argument("name", metavar="NAME", choices=list(EXPERIMENTS) + ["all"], help="an experiment, or all")
    p.add_argument("--out", default="experiments", help="output folder (default: experiments)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0; default settings use 3 seeds)")
    p.add_argument("--quick", action="store_true", help="a short run (seconds, one seed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None,
                   help="run at this many threads (default: cnnkit's setting; the numbers do not depend on it)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``cnnkit experiment``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``experiment`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 if an experiment named explicitly is not written yet, 2 on bad arguments.

    Examples
    --------
    >>> from cnnkit.experiments.cli import main
    >>> main(["bn-init", "--seed", "-1"])
    cnnkit experiment: --seed: expected an int >= 0, got -1
    2
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    ns = _parser().parse_args(argv)
    if ns.seed < 0:
        print(f"cnnkit experiment: --seed: expected an int >= 0, got {ns.seed}")
        return 2
    if ns.threads is not None and ns.threads < 1:
        print(f"cnnkit experiment: --threads: expected an int >= 1, got {ns.threads}")
        return 2
    have = available()
    names = list(EXPERIMENTS) if ns.name == "all" else [ns.name]
    missing = [n for n in names if n not in have]
    if missing:
        print(f"not written yet, skipped: {', '.join(missing)}")
    if ns.name != "all" and missing:
        return 1
    for name in names:
        if name in missing:
            continue
        doc = run(name, ns.out, seed=ns.seed, quick=ns.quick, progress=not ns.no_progress, threads=ns.threads)
        print(f"{name}: {doc['seconds']:.1f} s")
        for c in doc["claims"]:
            print(f"  [{c['verdict']}] {c['text']}")
    print(f"wrote {ns.out}/summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
