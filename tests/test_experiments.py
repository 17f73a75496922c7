"""cnnkit.experiments: the runner (judge, claims, files), the registry and the CLI.

The experiments themselves are tested in tests/test_experiments_<group>.py; here a fake
experiment module stands in so the files and the CLI are checked in milliseconds.
"""
from __future__ import annotations

import json
import math
import os
import sys
import types

import numpy as np
import pytest

from cnnkit import experiments
from cnnkit.cli import main as cnnkit_main
from cnnkit.experiments import _runner as R
from cnnkit.experiments import cli as xcli

NAMES = ["bn-lr-stress", "bn-init", "bn-small-batch", "bn-train-test", "bn-weight-decay", "optimizers",
         "gd-variants", "samplepairing", "regularization", "group-conv", "depthwise-separable", "equalization",
         "policy-search", "smart-augmentation"]


# ---- the judge on synthetic numbers -------------------------------------------------------
def _noisy(rng, mean, sd, n=5):
    """n measurements with exactly this sample mean and standard deviation."""
    z = rng.standard_normal(n)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + sd * z


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_judge_synthetic_claims(seed):
    rng = np.random.default_rng(seed)
    # a claim that holds: the effect (0.3) is far above the threshold (0.05) and the noise (0.02)
    with_bn, without = _noisy(rng, 0.95, 0.01), _noisy(rng, 0.65, 0.01)
    d, s = R.mean_spread(with_bn - without)
    assert R.judge(d, 0.05, s) == "reproduced"
    # a claim that fails: the effect has the wrong sign, beyond the noise
    d, s = R.mean_spread(without - with_bn)
    assert R.judge(d, 0.05, s) == "not reproduced"
    # inside the noise: a true effect of 0.06 against a threshold of 0.05 with a spread of 0.2
    d, s = R.mean_spread(_noisy(rng, 0.06, 0.2))
    assert R.judge(d, 0.05, s) == "inconclusive"
    d, s = R.mean_spread(_noisy(rng, 0.04, 0.2))
    assert R.judge(d, 0.05, s) == "inconclusive"


def test_judge_edges():
    assert R.judge(1.0, 0.0) == "reproduced"
    assert R.judge(-1.0, 0.0) == "not reproduced"
    assert R.judge(0.0, 0.0) == "inconclusive"
    assert R.judge(0.0, 0.0, 0.0) == "inconclusive"
    assert R.judge(1.0, 0.0, 1.0) == "inconclusive"       # exceeds by exactly the spread: not more
    assert R.judge(1.0, 0.0, 0.999) == "reproduced"
    assert R.judge(-1.0, 0.0, 0.999) == "not reproduced"
    assert R.judge(float("nan"), 0.0) == "inconclusive"
    assert R.judge(1.0, 0.0, float("nan")) == "inconclusive"
    with pytest.raises(ValueError, match="spread"):
        R.judge(1.0, 0.0, -0.1)
    with pytest.raises(TypeError, match="difference"):
        R.judge("1", 0.0)


def test_claim_and_mean_spread():
    c = R.claim("BN helps", "accuracy gain", np.float32(0.25), 0.0, np.float64(0.05))
    assert c.verdict == "reproduced" and c.verdict in R.VERDICTS
    j = c.to_json()
    assert j == {"text": "BN helps", "statistic": "accuracy gain", "value": 0.25, "threshold": 0.0,
                 "spread": pytest.approx(0.05), "verdict": "reproduced"}
    json.dumps(j, allow_nan=False)
    assert R.claim("x", "y", float("nan"), 0.0).to_json()["value"] is None
    m, s = R.mean_spread([2.0])
    assert (m, s) == (2.0, R.UNKNOWN_SPREAD)   # one seed: no spread to beat
    vals = np.random.default_rng(3).standard_normal(7)
    m, s = R.mean_spread(vals)
    assert m == pytest.approx(float(np.mean(vals)), rel=1e-12)
    assert s == pytest.approx(math.sqrt(np.sum((vals - vals.mean()) ** 2) / 6), rel=1e-12)
    with pytest.raises(ValueError, match="values"):
        R.mean_spread([])


def test_seeds():
    assert R.seeds(4, True) == [4]
    assert R.seeds(4, False) == [4, 5, 6]
    assert R.seeds(0, False, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="n"):
        R.seeds(0, False, 2)
    with pytest.raises(TypeError, match="quick"):
        R.seeds(0, "yes")


def test_figure_problems():
    fig, axes = R.new_figure(1, 2, title="T")
    axes[0].plot([1, 2]); axes[1].plot([1, 2])
    axes[0].set_xlabel("x"); axes[0].set_ylabel("y")
    assert R.figure_problems(fig) == ["axes 1: no x label", "axes 1: no y label"]
    axes[1].set(xlabel="x", ylabel="y")
    assert R.figure_problems(fig) == []


def test_small_cnn_init_scale_and_norms():
    base = R.small_cnn(None, seed=3)
    scaled = R.small_cnn(None, seed=3, init_scale=0.1)
    for (n, a), (_, b) in zip(base.named_parameters(), scaled.named_parameters()):
        want = a * 0.1 if n.endswith("weight") else a
        np.testing.assert_allclose(b, want, rtol=1e-6, err_msg=n)
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    for norm in ("batch", "group", None):
        assert R.small_cnn(norm, seed=0).forward(x).shape == (4, 10)
    with pytest.raises(ValueError, match="norm"):
        R.small_cnn("layer")


# ---- the registry, files and CLI with a fake experiment ------------------------------------
def test_registry_lists_every_experiment():
    assert list(experiments.EXPERIMENTS) == NAMES
    assert set(experiments.available()) <= set(NAMES)
    with pytest.raises(ValueError, match="name"):
        experiments.load("nope")
    with pytest.raises(TypeError, match="name"):
        experiments.load(3)


def _fake_module(calls):
    mod = types.ModuleType("cnnkit_fake_experiment")
    mod.NAME, mod.TITLE, mod.CLAIMS = "fake", "A fake experiment", ["x beats y"]

    def run(seed=0, quick=False, progress=True):
        calls.append((seed, quick, progress))
        rng = np.random.default_rng(seed)
        xs = rng.random(5)
        fig, axes = R.new_figure(title=mod.TITLE)
        axes[0].plot(xs, label="x"); axes[0].set(xlabel="step", ylabel="value"); axes[0].legend()
        d, s = R.mean_spread(xs)
        return R.Result("fake", mod.TITLE, {"seed": seed, "quick": quick}, {"xs": xs, "n": np.int64(5)},
                        [R.claim("x beats y", "mean of x", d, 0.0, s)], fig, 0.0)

    mod.run = run
    return mod


@pytest.fixture()
def fake(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "cnnkit_fake_experiment", _fake_module(calls))
    monkeypatch.setitem(experiments.EXPERIMENTS, "fake", "cnnkit_fake_experiment")
    monkeypatch.setattr(experiments, "available", lambda: ["fake"])
    monkeypatch.setattr(xcli, "available", lambda: ["fake"])
    return calls


def test_run_writes_files(fake, tmp_path):
    doc = experiments.run("fake", tmp_path, seed=3, quick=True, progress=False)
    assert fake == [(3, True, False)]
    assert sorted(os.listdir(tmp_path)) == ["fake.json", "fake.png", "summary.md"]
    on_disk = json.loads((tmp_path / "fake.json").read_text())
    assert on_disk == doc
    for key in ("name", "title", "settings", "measurements", "claims", "seconds", "seed", "quick", "threads",
                "version", "figure"):
        assert key in doc, key
    assert doc["seed"] == 3 and doc["quick"] is True and doc["seconds"] > 0
    assert doc["measurements"]["n"] == 5 and len(doc["measurements"]["xs"]) == 5
    assert set(doc["claims"][0]) == {"text", "statistic", "value", "threshold", "spread", "verdict"}
    assert (tmp_path / "fake.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    assert "## fake: A fake experiment" in summary and "![fake](fake.png)" in summary
    assert doc["claims"][0]["verdict"] in summary
    experiments.run("fake", tmp_path, seed=3, quick=True, progress=False)  # appends
    assert (tmp_path / "summary.md").read_text().count("## fake") == 2
    with pytest.raises(ValueError, match="seed"):
        experiments.run("fake", tmp_path, seed=-1)
    with pytest.raises(TypeError, match="out"):
        experiments.run("fake", 3)


def test_same_seed_same_json(fake, tmp_path):
    a = experiments.run("fake", tmp_path / "a", seed=1, quick=True, progress=False)
    b = experiments.run("fake", tmp_path / "b", seed=1, quick=True, progress=False)
    c = experiments.run("fake", tmp_path / "c", seed=2, quick=True, progress=False)
    assert a["measurements"] == b["measurements"] and a["claims"] == b["claims"]
    assert a["measurements"] != c["measurements"]


def test_cli_writes_files(fake, tmp_path, capsys):
    out = tmp_path / "o"
    assert cnnkit_main(["experiment", "fake", "--out", str(out), "--seed", "2", "--quick", "--no-progress"]) == 0
    assert sorted(os.listdir(out)) == ["fake.json", "fake.png", "summary.md"]
    assert fake == [(2, True, False)]
    assert "fake:" in capsys.readouterr().out
    assert json.loads((out / "fake.json").read_text())["seed"] == 2


def test_cli_all_says_which_are_missing(fake, tmp_path, capsys):
    out = tmp_path / "all"
    assert xcli.main(["all", "--out", str(out), "--quick", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "not written yet, skipped: " + ", ".join(NAMES) in text
    assert sorted(os.listdir(out)) == ["fake.json", "fake.png", "summary.md"]


def test_cli_bad_arguments(fake, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        xcli.main(["nope", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert xcli.main(["fake", "--seed", "-1", "--out", str(tmp_path)]) == 2
    monkeypatch.setattr(xcli, "available", lambda: [])
    assert xcli.main(["bn-init", "--out", str(tmp_path)]) == 1
    assert "not written yet" in capsys.readouterr().out
    assert not (tmp_path / "summary.md").exists()


def test_cli_help_lists_every_experiment(capsys):
    with pytest.raises(SystemExit) as e:
        cnnkit_main(["experiment", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: cnnkit experiment ")
    for flag in ("--out", "--seed", "--quick", "--no-progress", "--threads"):
        assert flag in text
    for name in NAMES:
        assert name in text.replace("depthwise- separable", "depthwise-separable")
    with pytest.raises(SystemExit):
        cnnkit_main(["--help"])
    assert "cnnkit experiment --help" in " ".join(capsys.readouterr().out.split())


def test_threads_set_for_the_run_and_restored(fake, tmp_path):
    import cnnkit
    before = cnnkit.get_num_threads()
    doc = experiments.run("fake", tmp_path, quick=True, progress=False, threads=1)
    assert doc["threads"] == 1 and cnnkit.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        experiments.run("fake", tmp_path, threads=0)
    assert xcli.main(["fake", "--threads", "0", "--out", str(tmp_path)]) == 2
