"""Smoke test of benchmarks/bench_replay.py: it captures a step's compiled calls and times them."""
import importlib.util
import pathlib
import re

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_replay.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_replay", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_replay_lists_calls_and_the_step(capsys):
    pytest.importorskip("cnnkit.bench.train")
    import cnnkit
    import cnnkit._core as core

    before = {n: getattr(core, n) for n in dir(core) if not n.startswith("_")}
    threads = cnnkit.get_num_threads()
    try:
        assert _load().main(["--reps", "1", "--top", "4", "--threads", "1"]) == 0
    finally:
        cnnkit.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\s*\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+\w", line)]
    assert len(rows) == 4, out
    assert all("conv2d" in r or "norm" in r for r in rows), out
    m = re.search(r"step ([\d.]+) ms; its (\d+) compiled calls ([\d.]+) ms", out)
    assert m and int(m.group(2)) > 50 and 0 < float(m.group(3)) < float(m.group(1)), out
    step_ms = float(m.group(1))
    # the step's Python alone, its compiled calls replaced by their recorded results
    m = re.search(r"Python alone .*: warm ([\d.]+) ms; with 16 MiB .* ([\d.]+) ms", out)
    assert m and 0 < float(m.group(1)) < step_ms and 0 < float(m.group(2)), out
    # the wrappers are gone: every _core function is the original object again
    assert all(getattr(core, n) is f for n, f in before.items())


@pytest.mark.parametrize("flag, value", [("--reps", "0"), ("--threads", "0"), ("--top", "-1"),
                                         ("--evict-mib", "-1")])
def test_replay_rejects_bad_counts(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        _load().main([flag, value])
    assert e.value.code == 2
    assert f"{flag}: expected an int >=" in capsys.readouterr().err


def test_replay_overlap_times_two_groups_both_ways(capsys):
    pytest.importorskip("cnnkit.bench.train")
    import cnnkit
    import cnnkit._core as core

    before = {n: getattr(core, n) for n in dir(core) if not n.startswith("_")}
    threads = cnnkit.get_num_threads()
    try:
        assert _load().main(["--overlap", "0,1:2", "--reps", "2", "--threads", "2"]) == 0
        assert cnnkit.get_num_threads() == 2  # (restored after the single-thread rounds)
    finally:
        cnnkit.set_num_threads(threads)
    out = capsys.readouterr().out
    assert re.search(r"overlap of A = \[0 \w+, 1 \w+\] and B = \[2 \w+\], 2 rounds", out), out
    m = re.search(r"one after the other on 2 threads ([\d.]+) ms; side by side on one thread each ([\d.]+) ms "
                  r"\(A ([\d.]+), B ([\d.]+)\); sequential / side by side ([\d.]+)", out)
    assert m, out
    seq, par, a, b, ratio = (float(v) for v in m.groups())
    assert seq > 0 and par > 0 and 0 < a <= par * 1.01 and 0 < b <= par * 1.01, out
    assert abs(ratio - seq / par) < 0.01 * ratio + 1e-3, out
    assert all(getattr(core, n) is f for n, f in before.items())


@pytest.mark.parametrize("value", ["1", "a:b", "1:", ":2", "1,-2:3", "0:1:2"])
def test_replay_overlap_rejects_bad_groups(value, capsys):
    with pytest.raises(SystemExit) as e:
        _load().main(["--overlap", value])
    assert e.value.code == 2
    assert "--overlap: expected two comma-separated lists of call numbers" in capsys.readouterr().err


def test_replay_overlap_rejects_calls_past_the_step(capsys):
    pytest.importorskip("cnnkit.bench.train")
    import cnnkit

    threads = cnnkit.get_num_threads()
    try:
        with pytest.raises(SystemExit) as e:
            _load().main(["--overlap", "0:100000", "--reps", "1", "--threads", "1"])
    finally:
        cnnkit.set_num_threads(threads)
    assert e.value.code == 2
    assert "--overlap: expected call numbers below" in capsys.readouterr().err
