"""cnnkit experiment optimizers / gd-variants: the quick runs, their files, figures and
reproducibility, and the pieces they measure with (against float64 closed forms)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cnnkit.experiments import _runner as R
from cnnkit.experiments import gd_variants, optimizers

CLAIM_KEYS = {"text", "statistic", "value", "threshold", "spread", "verdict"}


@pytest.fixture(scope="module")
def opt_quick():
    return optimizers.run(seed=0, quick=True, progress=False)


@pytest.fixture(scope="module")
def gd_quick():
    return gd_variants.run(seed=0, quick=True, progress=False)


# ---- the files and their keys --------------------------------------------------------------
@pytest.mark.parametrize("which", ["optimizers", "gd-variants"])
def test_quick_run_writes_documented_files(which, opt_quick, gd_quick, tmp_path):
    result = opt_quick if which == "optimizers" else gd_quick
    module = optimizers if which == "optimizers" else gd_variants
    assert result.name == module.NAME == which
    doc = R.finish(result, tmp_path)
    assert (tmp_path / f"{which}.png").stat().st_size > 10_000
    on_disk = json.loads((tmp_path / f"{which}.json").read_text())
    assert on_disk == doc
    assert {"name", "title", "settings", "measurements", "claims", "seconds", "seed", "quick"} <= set(doc)
    assert doc["seed"] == 0 and doc["quick"] is True
    assert [c["text"] for c in doc["claims"]] == module.CLAIMS
    for c in doc["claims"]:
        assert set(c) == CLAIM_KEYS
        assert c["verdict"] in R.VERDICTS
        assert c["verdict"] == R.judge(c["value"], c["threshold"], c["spread"])
    assert which in (tmp_path / "summary.md").read_text()


def test_optimizers_measurement_keys(opt_quick):
    m = opt_quick.measurements
    assert {"final_loss", "steps_taken", "distance_to_minimum", "ravine_sweep", "nesterov_sweep",
            "effective_lr_noisy", "effective_lr_exact", "saddle_escape_steps", "paths"} <= set(m)
    assert set(m["final_loss"]) == set(optimizers.FUNCTIONS)
    for f in optimizers.FUNCTIONS:
        assert set(m["final_loss"][f]) == set(optimizers.OPTIMIZERS)
        for path in m["paths"][f].values():
            assert np.asarray(path).shape[1] == 2
    for key in ("SGD_amplitude", "Momentum_amplitude", "Nesterov_overshoot"):
        assert len(m["ravine_sweep"][key]) == len(m["ravine_sweep"]["lr_times_B"])
    # the statistics of the claims are the measured numbers
    amp = np.array(m["ravine_sweep"]["Momentum_amplitude"]) < np.array(m["ravine_sweep"]["SGD_amplitude"])
    assert opt_quick.claims[0].value == pytest.approx(amp.mean())
    assert opt_quick.claims[2].value == pytest.approx(-m["effective_lr_noisy"]["AdaGrad"]["mean"])


def test_gd_variants_measurement_keys(gd_quick):
    m = gd_quick.measurements
    assert set(m["fixed"]) == set(m["timed"]) == set(gd_variants.VARIANTS)
    for v in gd_variants.VARIANTS:
        (fixed,), (timed,) = m["fixed"][v], m["timed"][v]  # one seed when quick
        assert len(fixed["epoch_loss"]) == gd_quick.settings["fixed_epochs"]
        assert len(fixed["first_updates_loss"]) == gd_variants.FIRST_UPDATES + 1
        assert {"updates", "epochs", "seconds", "loss", "loss_at_budget", "test_accuracy"} <= set(timed)
        assert timed["train_seconds"] >= gd_quick.settings["budget_seconds"]
        assert len(timed["updates"]) == len(timed["seconds"]) == len(timed["loss"])
        assert np.all(np.diff(timed["seconds"]) >= 0)
    assert m["fixed"]["batch"][0]["gradient_noise"] == 0.0  # the full batch has no noise
    assert m["fixed"]["batch"][0]["fraction_updates_raising_loss"] == 0.0  # small-lr full-batch GD descends
    assert "machine" in m["note"]


# ---- the figures ---------------------------------------------------------------------------
def test_optimizers_figure(opt_quick):
    fig = opt_quick.figure
    assert R.figure_problems(fig) == []
    assert fig._suptitle.get_text() == optimizers.TITLE
    axes = fig.axes
    assert len(axes) == 2 * len(optimizers.FUNCTIONS)
    for ax in axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        assert len(ax.get_lines()) >= len(optimizers.OPTIMIZERS)
    contours, losses = axes[:4], axes[4:]
    assert all(ax.collections for ax in contours)  # the contour lines
    assert [ax.get_yscale() for ax in losses] == ["log", "log", "linear", "log"]  # saddle: no minimum
    assert [t.get_text() for t in contours[0].get_legend().get_texts()] == list(optimizers.OPTIMIZERS)


def test_gd_variants_figure(gd_quick):
    fig = gd_quick.figure
    assert R.figure_problems(fig) == []
    assert fig._suptitle.get_text() == gd_variants.TITLE
    ax_epochs, ax_time = fig.axes
    assert "epoch" in ax_epochs.get_xlabel() and "time" in ax_time.get_xlabel()
    for ax in (ax_epochs, ax_time):
        assert ax.get_xscale() == ax.get_yscale() == "log"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert all(any(v in lab for lab in labels) for v in gd_variants.VARIANTS)


# ---- reproducibility -------------------------------------------------------------------------
def test_optimizers_reproducible(opt_quick, threads):  # same numbers at 1 and 2 threads too
    again = optimizers.run(seed=0, quick=True, progress=False)
    assert json.dumps(R.jsonable(again.measurements)) == json.dumps(R.jsonable(opt_quick.measurements))
    assert [c.to_json() for c in again.claims] == [c.to_json() for c in opt_quick.claims]
    other = optimizers.run(seed=1, quick=True, progress=False)  # the seed moves only the noisy runs
    assert other.measurements["paths"] == opt_quick.measurements["paths"]
    assert other.measurements["effective_lr_noisy"] != opt_quick.measurements["effective_lr_noisy"]


def test_gd_variants_reproducible_apart_from_timing(gd_quick, threads):
    again = gd_variants.run(seed=0, quick=True, progress=False)

    def untimed(r):
        m = r.measurements
        return json.dumps(R.jsonable({k: m[k] for k in ("fixed", "noise_statistic_per_seed",
                                                       "gradient_noise_same_parameters")}))
    assert untimed(again) == untimed(gd_quick)
    assert again.claims[0].to_json() == gd_quick.claims[0].to_json()
    assert again.measurements["timed"]["batch"][0]["seconds"] != gd_quick.measurements["timed"]["batch"][0]["seconds"]


# ---- the measuring pieces against closed forms -------------------------------------------------
@pytest.mark.parametrize("name", list(optimizers.FUNCTIONS))
def test_function_gradients_match_finite_differences(name):
    f = optimizers.FUNCTIONS[name]["f"]
    rng = np.random.default_rng(7)
    for p in rng.uniform(-1.5, 1.5, (5, 2)):
        _, g = f(p)
        h = 1e-6
        fd = [(f(p + h * e)[0] - f(p - h * e)[0]) / (2 * h) for e in np.eye(2)]
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_trajectory_sgd_and_momentum_match_closed_forms():
    rng = np.random.default_rng(3)
    start = tuple(rng.uniform(-5, 5, 2))
    lr, steps = 0.07, 40
    t = optimizers.trajectory(optimizers.FUNCTIONS["ravine"]["f"], start, "SGD", lr, steps)
    k = np.arange(steps + 1)[:, None]
    ref = np.array(start) * (1 - lr * np.array([1.0, optimizers.RAVINE_B])) ** k  # p_t = (1 - lr*h)^t p_0
    np.testing.assert_allclose(t["path"], ref, rtol=1e-12, atol=1e-12)
    # heavy ball on the quadratic: v <- mu v + h p (v_1 = h p_0); p <- p - lr v
    t = optimizers.trajectory(optimizers.FUNCTIONS["ravine"]["f"], start, "Momentum", lr, steps)
    h, p, v, path = np.array([1.0, optimizers.RAVINE_B]), np.array(start), np.zeros(2), [np.array(start)]
    for i in range(steps):
        v = h * p if i == 0 else optimizers.MOMENTUM * v + h * p
        p = p - lr * v
        path.append(p)
    np.testing.assert_allclose(t["path"], np.array(path), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t["step_norm"], np.hypot(*np.diff(t["path"], axis=0).T), rtol=1e-12)


def test_trajectory_stops_and_escape_count():
    t = optimizers.trajectory(optimizers.FUNCTIONS["saddle"]["f"], (1.0, 1e-3), "SGD", 0.05, 1000,
                              stop=lambda p: bool(np.hypot(*p) > 3.0))
    r = np.hypot(*t["path"].T)
    assert r[-1] > 3.0 and np.all(r[:-1] <= 3.0)
    first = int(np.argmax(r > optimizers.ESCAPE_RADIUS))
    assert optimizers._escape_steps(t) == first and r[first - 1] <= optimizers.ESCAPE_RADIUS
    # y grows by exactly (1 + 2 lr) per step on x^2 - y^2
    np.testing.assert_allclose(t["path"][:, 1], 1e-3 * 1.1 ** np.arange(len(r)), rtol=1e-12)


def test_trajectory_rejects_bad_input():
    f = optimizers.FUNCTIONS["ravine"]["f"]
    with pytest.raises(ValueError, match="optimizer"):
        optimizers.trajectory(f, (0.0, 0.0), "LBFGS", 0.1, 3)
    with pytest.raises(ValueError, match="noise"):
        optimizers.trajectory(f, (0.0, 0.0), "SGD", 0.1, 3, noise=1.0)
    with pytest.raises(ValueError, match="steps"):
        optimizers.trajectory(f, (0.0, 0.0), "SGD", 0.1, -1)


def test_gradient_noise_estimate_against_sampling_formula():
    # relative variance of a batch mean drawn without replacement: (N - B) / (B (N - 1)) * var / |mean|^2
    from cnnkit import nn
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    model, loss_fn = gd_variants._mlp(0), nn.CrossEntropyLoss()
    per = np.array([gd_variants._grad(model, loss_fn, x[i:i + 1], y[i:i + 1]) for i in range(200)])
    full = per.mean(0)
    var = np.sum((per - full) ** 2, axis=1).mean() / np.sum(full ** 2)  # population relative variance
    np.testing.assert_allclose(gd_variants._grad(model, loss_fn, x, y), full, rtol=1e-4, atol=1e-6)
    assert gd_variants._gradient_noise(model, loss_fn, x, y, 200, rng) == 0.0
    for b in (1, 20):
        est = np.mean([gd_variants._gradient_noise(model, loss_fn, x, y, b, np.random.default_rng(s))
                       for s in range(4)])
        expect = var * (200 - b) / (b * (200 - 1))
        assert abs(est - expect) < 0.25 * expect  # 256 batches: a few percent of sampling error
