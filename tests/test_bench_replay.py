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


def _main(argv):
    """main(argv)'s status; the thread count restored after, and every _core function checked to be
    the original object again (the replay's wrappers gone)."""
    pytest.importorskip("cnnkit.bench.train")
    import cnnkit
    import cnnkit._core as core

    before = {n: getattr(core, n) for n in dir(core) if not n.startswith("_")}
    threads = cnnkit.get_num_threads()
    try:
        status = _load().main(argv)
        after = cnnkit.get_num_threads()
    finally:
        cnnkit.set_num_threads(threads)
    assert all(getattr(core, n) is f for n, f in before.items())
    return status, after


def test_replay_lists_calls_and_the_step(capsys):
    assert _main(["--reps", "1", "--top", "4", "--threads", "1"])[0] == 0
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


@pytest.mark.parametrize("flag, value", [("--reps", "0"), ("--threads", "0"), ("--top", "-1"),
                                         ("--evict-mib", "-1")])
def test_replay_rejects_bad_counts(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        _load().main([flag, value])
    assert e.value.code == 2
    assert f"{flag}: expected an int >=" in capsys.readouterr().err


def test_replay_overlap_times_two_groups_both_ways(capsys):
    # (the thread count back at --threads after the single-thread rounds)
    assert _main(["--overlap", "0,1:2", "--reps", "2", "--threads", "2"]) == (0, 2)
    out = capsys.readouterr().out
    assert re.search(r"overlap of A = \[0 \w+, 1 \w+\] and B = \[2 \w+\], 2 rounds", out), out
    m = re.search(r"one after the other on 2 threads ([\d.]+) ms; side by side on one thread each ([\d.]+) ms "
                  r"\(A ([\d.]+), B ([\d.]+)\); sequential / side by side ([\d.]+)", out)
    assert m, out
    seq, par, a, b, ratio = (float(v) for v in m.groups())
    assert seq > 0 and par > 0 and 0 < a <= par * 1.01 and 0 < b <= par * 1.01, out
    assert abs(ratio - seq / par) < 0.01 * ratio + 1e-3, out


@pytest.mark.parametrize("value", ["1", "a:b", "1:", ":2", "1,-2:3", "0:1:2"])
def test_replay_overlap_rejects_bad_groups(value, capsys):
    with pytest.raises(SystemExit) as e:
        _load().main(["--overlap", value])
    assert e.value.code == 2
    assert "--overlap: expected two comma-separated lists of call numbers" in capsys.readouterr().err


def test_replay_overlap_rejects_calls_past_the_step(capsys):
    with pytest.raises(SystemExit) as e:
        _main(["--overlap", "0:100000", "--reps", "1", "--threads", "1"])
    assert e.value.code == 2
    assert "--overlap: expected call numbers below" in capsys.readouterr().err
