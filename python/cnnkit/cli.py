"""The ``cnnkit`` command: ``cnnkit demo``, ``cnnkit explain``, ``cnnkit info``, ``cnnkit bench <family>`` and ``cnnkit experiment NAME``.

``cnnkit demo``, ``cnnkit explain`` and ``cnnkit bench <family>`` hand the rest of the command
line to their own parsers, so ``cnnkit bench conv --help`` lists the conv benchmark's flags;
``cnnkit explain features ...`` goes to the feature-visualization report
(:mod:`cnnkit.explain.features_report`).
"""
from __future__ import annotations

import argparse
import json
import sys

from ._text import plain
from .bench.runners import FAMILIES


def _bench(family: str, rest: list[str]) -> int:
    from .bench import runners
    return runners.run(family, rest)


def main(argv: list[str] | None = None) -> int:
    """Run the ``cnnkit`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default ``sys.argv[1:]``): ``demo ...``,
        ``explain ...``, ``explain features ...``, ``info``, ``bench FAMILY ...`` or
        ``experiment NAME ...``.

    Returns
    -------
    int
        The exit status (0 on success, 2 on bad arguments).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "demo":  # its own options, parsed by cnnkit.demo
        from . import demo
        return demo.run(argv[1:])
    if argv[:2] == ["explain", "features"]:  # its own options, parsed by cnnkit.explain.features_report
        from .explain import features_report
        return features_report.run(argv[2:])
    if argv and argv[0] == "explain":  # its own options, parsed by cnnkit.explain.report
        from .explain import report
        return report.run(argv[1:])
    if argv and argv[0] == "experiment":  # its own options, parsed by cnnkit.experiments.cli
        from .experiments import cli as experiment_cli
        return experiment_cli.main(argv[1:])
    if len(argv) > 1 and argv[0] == "bench" and argv[1] in FAMILIES:  # its own options, -h included
        return _bench(argv[1], argv[2:])
    parser = argparse.ArgumentParser(prog="cnnkit", description=plain(__doc__.split("\n\n")[0]),
                                     epilog="cnnkit demo --help, cnnkit explain --help, cnnkit explain features "
                                            "--help, cnnkit bench FAMILY --help and cnnkit experiment --help "
                                            "list each command's own "
                                            "flags.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="print build_info() as JSON")
    d = sub.add_parser("demo", help="train a small CNN on the bundled digits and write a report", add_help=False)
    d.add_argument("args", nargs=argparse.REMAINDER, help="see cnnkit demo --help")
    e = sub.add_parser("explain", help="train on shapes with distractors, explain, score the maps", add_help=False)
    e.add_argument("args", nargs=argparse.REMAINDER,
                   help="see cnnkit explain --help; cnnkit explain features --help: feature visualization and "
                        "neuron groups")
    x = sub.add_parser("experiment", help="reproduce a claim of the field: train, plot, judge from the data",
                       add_help=False)
    x.add_argument("args", nargs=argparse.REMAINDER, help="see cnnkit experiment --help")
    families = ", ".join(sorted(FAMILIES))
    b = sub.add_parser("bench", help="run a kernel family's benchmark and print its table",
                       description="Run a kernel family's benchmark and print its table.",
                       epilog=f"Each benchmark has its own flags: cnnkit bench FAMILY --help lists them "
                              f"(FAMILY: {families}).")
    b.add_argument("family", choices=sorted(FAMILIES), metavar="FAMILY", help=f"one of {families}")
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    ns = parser.parse_args(argv)
    if ns.cmd == "info":
        from . import build_info
        print(json.dumps(build_info(), indent=2))
        return 0
    return _bench(ns.family, ns.args)


if __name__ == "__main__":
    sys.exit(main())
