"""``optimizers``: the trajectories of seven optimizers on four two-dimensional test functions.

SGD, momentum, Nesterov, AdaGrad, RMSprop, Adadelta and Adam (:mod:`cnnkit.optim`, each
stepping one float64 parameter array of shape (2,)) run on

* an ill-conditioned ravine, ``f = (x^2 + B y^2) / 2`` with ``B = 20`` (``y`` is the steep,
  across-ravine coordinate; the minimum is the origin),
* Rosenbrock's valley, ``f = (1 - x)^2 + 100 (y - x^2)^2`` (minimum at (1, 1)),
* a saddle, ``f = x^2 - y^2``, started close to the ridge ``y = 0`` (no minimum),
* Beale's function, ``f = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2``
  (minimum 0 at (3, 0.5)).

The trajectories are deterministic (fixed start points, exact gradients); only the noisy
effective-step runs of claims 3 and 4 draw from ``seed`` (and repeat over 3 seeds by default).
The claims and their statistics:

1. Momentum damps the oscillation across the ravine: over a sweep of learning rates where plain
   gradient descent zigzags (``lr * B`` in (1, 2)), the across-ravine amplitude (mean ``|y|``
   over the run) of SGD with momentum 0.9 against plain SGD at the same learning rate; the
   statistic is the fraction of learning rates where momentum's amplitude is the smaller. (On
   an exact quadratic, heavy-ball momentum 0.9 is under-damped along the steep axis: its
   oscillation decays by ``sqrt(0.9)`` per step whatever the learning rate, while plain gradient
   descent's decays by ``|1 - lr B|``, faster unless ``lr B > 1 + sqrt(0.9)``.)
2. Nesterov overshoots less than momentum: over learning rates where both are stable
   (``lr * B <= 1.3``), the largest excursion past the minimum along the steep axis
   (``max(0, -min y) / y0``); the statistic is the fraction where Nesterov's is the smaller.
3. AdaGrad's effective step shrinks towards zero and 4. RMSprop's does not: the effective
   learning rate ``||step|| / ||gradient||``, late (median over the last 10 % of the steps) over
   early (median over the first 10 %), in decades, with Gaussian gradient noise (``NOISE``, seeded,
   repeated over seeds) at the ravine's minimum, the stochastic regime the claim is about. The
   same ratio on the exact-gradient runs is reported too (``effective_lr_exact``): there the sum
   of squared gradients converges as the gradient vanishes, so AdaGrad's step stops shrinking.
5. Adaptive methods and momentum leave the saddle sooner than SGD: steps until the iterate is
   farther than ``ESCAPE_RADIUS`` from the saddle point; the statistic is the fraction of the six
   other optimizers that escape in fewer steps than SGD.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from .._validate import check_bool, check_int
from ._runner import Result, claim, mean_spread, new_figure, progress_bar, seeds

__all__ = ["NAME", "TITLE", "CLAIMS", "OPTIMIZERS", "FUNCTIONS", "ESCAPE_RADIUS", "trajectory", "run"]

NAME = "optimizers"
TITLE = "Optimizer trajectories on a ravine, Rosenbrock's valley, a saddle and Beale's function"
CLAIMS = [
    "Momentum damps the oscillation across a ravine.",
    "Nesterov momentum overshoots less than classical momentum.",
    "AdaGrad's effective step size decays towards zero.",
    "RMSprop's effective step size does not decay towards zero.",
    "Adaptive methods and momentum leave a saddle point sooner than SGD.",
]

#: Curvature of the ravine's steep axis (the shallow axis has curvature 1).
RAVINE_B = 20.0
#: Distance from the saddle point that counts as having left it.
ESCAPE_RADIUS = 2.0
#: Gradient noise (standard deviation per coordinate) and steps of the noisy effective-step runs.
NOISE = 1.0
NOISY_STEPS = 2000
#: Momentum factor of the momentum and Nesterov runs.
MOMENTUM = 0.9

#: The optimizers: name -> (cnnkit.optim class name, fixed keyword arguments).
OPTIMIZERS: dict[str, tuple[str, dict]] = {
    "SGD": ("SGD", {}),
    "Momentum": ("SGD", {"momentum": MOMENTUM}),
    "Nesterov": ("SGD", {"momentum": MOMENTUM, "nesterov": True}),
    "AdaGrad": ("Adagrad", {}),
    "RMSprop": ("RMSprop", {}),
    "Adadelta": ("Adadelta", {}),
    "Adam": ("Adam", {}),
}


def _ravine(p: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = p
    return 0.5 * (x * x + RAVINE_B * y * y), np.array([x, RAVINE_B * y])


def _rosenbrock(p: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = p
    r = y - x * x
    return (1 - x) ** 2 + 100 * r * r, np.array([-2 * (1 - x) - 400 * x * r, 200 * r])


def _saddle(p: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = p
    return x * x - y * y, np.array([2 * x, -2 * y])


def _beale(p: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = p
    t1, t2, t3 = 1.5 - x + x * y, 2.25 - x + x * y * y, 2.625 - x + x * y ** 3
    gx = 2 * (t1 * (y - 1) + t2 * (y * y - 1) + t3 * (y ** 3 - 1))
    gy = 2 * x * (t1 + 2 * t2 * y + 3 * t3 * y * y)
    return t1 * t1 + t2 * t2 + t3 * t3, np.array([gx, gy])


#: The test functions: name -> dict with ``f`` (p -> (value, gradient)), ``start``, ``minimum``
#: (None for the saddle), the plot window ``box`` (xmin, xmax, ymin, ymax), ``lr`` per optimizer
#: and ``steps`` (default settings; --quick runs a quarter).
FUNCTIONS: dict[str, dict[str, Any]] = {
    "ravine": dict(f=_ravine, start=(-8.0, 1.5), minimum=(0.0, 0.0), box=(-9.0, 2.0, -2.0, 2.0), steps=400,
                   lr={"SGD": 1.25 / RAVINE_B, "Momentum": 1.25 / RAVINE_B, "Nesterov": 1.25 / RAVINE_B,
                       "AdaGrad": 1.0, "RMSprop": 0.05, "Adadelta": 1.0, "Adam": 0.1}),
    "rosenbrock": dict(f=_rosenbrock, start=(-1.2, 1.0), minimum=(1.0, 1.0), box=(-2.0, 2.0, -1.0, 3.0),
                       steps=4000,
                       lr={"SGD": 1e-3, "Momentum": 1e-3, "Nesterov": 1e-3, "AdaGrad": 0.1, "RMSprop": 1e-2,
                           "Adadelta": 1.0, "Adam": 2e-2}),
    "saddle": dict(f=_saddle, start=(1.0, 1e-3), minimum=None, box=(-1.2, 1.2, -2.2, 2.2), steps=400,
                   lr={"SGD": 0.05, "Momentum": 0.05, "Nesterov": 0.05, "AdaGrad": 0.5, "RMSprop": 0.05,
                       "Adadelta": 1.0, "Adam": 0.05}),
    "beale": dict(f=_beale, start=(1.0, 1.5), minimum=(3.0, 0.5), box=(-1.0, 4.5, -1.5, 2.0), steps=3000,
                  lr={"SGD": 1e-3, "Momentum": 1e-3, "Nesterov": 1e-3, "AdaGrad": 0.5, "RMSprop": 1e-2,
                      "Adadelta": 1.0, "Adam": 2e-2}),
}


def trajectory(function: Callable[[np.ndarray], tuple[float, np.ndarray]], start: tuple[float, float],
               optimizer: str, lr: float, steps: int, *,
               stop: Optional[Callable[[np.ndarray], bool]] = None, noise: float = 0.0,
               rng: Optional[np.random.Generator] = None) -> dict[str, np.ndarray]:
    """Run one optimizer from ``start`` on a two-dimensional function with exact gradients.

    Parameters
    ----------
    function : callable
        ``function(p) -> (value, gradient)`` for a float64 point ``p`` of shape (2,).
    start : (float, float)
        The starting point.
    optimizer : str
        A key of :data:`OPTIMIZERS` ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop",
        "Adadelta", "Adam").
    lr : float > 0
        The learning rate.
    steps : int >= 0
        The number of optimizer steps.
    stop : callable, optional
        ``stop(p) -> bool``, checked after every step: True ends the run early. A run also ends
        when the point or the value stops being finite.
    noise : float >= 0, default 0
        Standard deviation of Gaussian noise added to each gradient coordinate (a stand-in for
        stochastic gradients); 0: exact gradients.
    rng : numpy.random.Generator, optional
        Draws the noise (needed when ``noise > 0``).

    Returns
    -------
    dict
        ``path``: float64 (T + 1, 2), the points (start first); ``loss``: float64 (T + 1,), the
        values there; ``grad_norm``: float64 (T,), the norm of the gradient passed to each step
        (noise included);
        ``step_norm``: float64 (T,), the length of each step. ``T <= steps``.

    Examples
    --------
    >>> from cnnkit.experiments.optimizers import FUNCTIONS, trajectory
    >>> t = trajectory(FUNCTIONS["ravine"]["f"], (-8.0, 1.5), "SGD", 0.05, 10)
    >>> t["path"].shape, bool(t["loss"][-1] < t["loss"][0])
    ((11, 2), True)
    """
    from .. import optim
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    steps = check_int("steps", steps, 0, "an int >= 0")
    cls_name, kwargs = OPTIMIZERS[optimizer]
    if noise < 0 or (noise > 0 and rng is None):
        raise ValueError(f"noise: expected 0, or > 0 with an rng, got {noise!r} (rng {rng!r})")
    p = np.array(start, dtype=np.float64)
    opt = getattr(optim, cls_name)([p], lr=lr, **kwargs)
    path, loss, gnorm, snorm = [p.copy()], [], [], []
    with np.errstate(over="ignore", invalid="ignore"):
        value, g = function(p)
        loss.append(value)
        for _ in range(steps):
            before = p.copy()
            if noise > 0 and rng is not None:
                g = g + noise * rng.standard_normal(2)
            opt.step([g])
            path.append(p.copy())
            gnorm.append(float(np.hypot(*g)))
            snorm.append(float(np.hypot(*(p - before))))
            value, g = function(p)
            loss.append(value)
            if not (np.all(np.isfinite(p)) and np.isfinite(value)) or (stop is not None and stop(p)):
                break
    return {"path": np.array(path), "loss": np.array(loss, dtype=np.float64),
            "grad_norm": np.array(gnorm), "step_norm": np.array(snorm)}


def _ravine_sweep(lr_b: np.ndarray, steps: int) -> dict[str, list]:
    """Across-ravine amplitude (mean |y|) and overshoot past y = 0 for SGD, momentum and
    Nesterov at learning rates ``lr_b / B``."""
    out: dict[str, list] = {"lr_times_B": [float(v) for v in lr_b]}
    y0 = FUNCTIONS["ravine"]["start"][1]
    for name in ("SGD", "Momentum", "Nesterov"):
        amp, over = [], []
        for v in lr_b:
            y = trajectory(_ravine, FUNCTIONS["ravine"]["start"], name, float(v) / RAVINE_B, steps)["path"][:, 1]
            amp.append(float(np.mean(np.abs(y))) if np.all(np.isfinite(y)) else float("inf"))
            over.append(float(max(0.0, -np.min(y)) / y0) if np.all(np.isfinite(y)) else float("inf"))
        out[f"{name}_amplitude"] = amp
        out[f"{name}_overshoot"] = over
    return out


def _effective_lr(t: dict[str, np.ndarray]) -> tuple[float, float]:
    """(early, late) effective learning rate ``||step|| / ||gradient||``: medians over the first
    and over the last 10 % of the steps."""
    with np.errstate(divide="ignore", invalid="ignore"):
        eff = t["step_norm"] / t["grad_norm"]
    eff = eff[np.isfinite(eff)]
    k = max(1, len(eff) // 10)
    return float(np.median(eff[:k])), float(np.median(eff[-k:]))


def _escape_steps(t: dict[str, np.ndarray]) -> float:
    """Steps until the path is farther than :data:`ESCAPE_RADIUS` from the saddle (inf: never)."""
    r = np.hypot(t["path"][:, 0], t["path"][:, 1])
    hit = np.nonzero(r > ESCAPE_RADIUS)[0]
    return float(hit[0]) if hit.size else float("inf")


def _plot(fig_axes: tuple[Any, np.ndarray], runs: dict[str, dict[str, dict]], colors: dict[str, Any]) -> None:
    from matplotlib.colors import LogNorm
    fig, axes = fig_axes
    for col, (fname, spec) in enumerate(FUNCTIONS.items()):
        ax, lax = axes[col], axes[len(FUNCTIONS) + col]
        x0, x1, y0, y1 = spec["box"]
        gx, gy = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
        z = spec["f"](np.stack([gx, gy]))[0]  # the functions broadcast over a grid
        if fname == "saddle":
            ax.contour(gx, gy, z, levels=20, cmap="Greys", linewidths=0.6)
        else:
            zmin = 1e-3 if fname != "ravine" else 1e-2
            levels = np.logspace(np.log10(max(z.min(), zmin)), np.log10(z.max()), 18)
            ax.contour(gx, gy, np.maximum(z, zmin), levels=levels, norm=LogNorm(), cmap="Greys", linewidths=0.6)
        for oname, t in runs[fname].items():
            path = t["path"].copy()
            outside = ((path[:, 0] < x0 - 1) | (path[:, 0] > x1 + 1) | (path[:, 1] < y0 - 1) | (path[:, 1] > y1 + 1))
            path[outside] = np.nan
            ax.plot(path[:, 0], path[:, 1], "-", lw=1.1, color=colors[oname], label=oname)
            steps = np.arange(len(t["loss"]))
            if spec["minimum"] is None:
                lax.plot(steps, t["loss"], color=colors[oname], label=oname)
            else:
                lax.plot(steps, np.maximum(t["loss"], 1e-16), color=colors[oname], label=oname)
        ax.plot(*spec["start"], "ko", ms=5)
        if spec["minimum"] is not None:
            ax.plot(*spec["minimum"], "k*", ms=10)
        ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x", ylabel="y", title=f"{fname}: paths")
        if fname == "saddle":
            lax.set(xlabel="step", ylabel="f(x, y)", title=f"{fname}: loss (no minimum)")
            lax.set_ylim(-ESCAPE_RADIUS ** 2 * 2, 1.5)
        else:
            lax.set(xlabel="step", ylabel="f(x, y) - f(minimum)", title=f"{fname}: loss", yscale="log",
                    xscale="symlog")
            lax.set_ylim(1e-12, None)
            lax.set_xlim(0, len(next(iter(runs[fname].values()))["loss"]))
        if col == 0:
            ax.legend(fontsize=7, loc="lower right")
            lax.legend(fontsize=7, loc="lower left")


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> Result:
    """Run the ``optimizers`` experiment: trajectories, measurements, claims and the figure.

    Parameters
    ----------
    seed : int >= 0, default 0
        Seeds the gradient noise of the effective-step runs (the trajectories are deterministic).
    quick : bool, default False
        A quarter of the steps and a coarser learning-rate sweep (about a second).
    progress : bool, default True
        Show a tqdm progress bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: per function and optimizer the final loss, the steps taken and the
        path (``paths``, float lists (T + 1, 2), subsampled to at most 400 points); the ravine
        sweep (``ravine_sweep``: ``lr_times_B``, amplitudes and overshoots per method, and
        ``nesterov_sweep`` for the stable range); ``effective_lr_noisy`` (log10 late/early per
        seed, mean and spread, per adaptive method) and ``effective_lr_exact`` (per function);
        ``saddle_escape_steps`` per optimizer. ``claims``:
        the five claims of :data:`CLAIMS`. ``figure``: 2 x 4 panels (paths over contours, loss
        against step).

    Examples
    --------
    >>> from cnnkit.experiments import optimizers
    >>> r = optimizers.run(quick=True, progress=False)  # doctest: +SKIP
    >>> [c.verdict for c in r.claims]  # doctest: +SKIP
    ['not reproduced', 'reproduced', 'reproduced', 'reproduced', 'reproduced']
    """
    seed = check_int("seed", seed, 0, "an int >= 0")
    quick = check_bool("quick", quick)
    progress = check_bool("progress", progress)
    t_start = time.perf_counter()
    scale = 4 if quick else 1
    bar = progress_bar(len(FUNCTIONS) * len(OPTIMIZERS) + 2, NAME, progress)

    # 1. every optimizer on every function
    runs: dict[str, dict[str, dict]] = {}
    for fname, spec in FUNCTIONS.items():
        runs[fname] = {}
        stop = (lambda p: bool(np.hypot(*p) > 3 * ESCAPE_RADIUS)) if fname == "saddle" else None
        for oname in OPTIMIZERS:
            runs[fname][oname] = trajectory(spec["f"], spec["start"], oname, spec["lr"][oname],
                                            spec["steps"] // scale, stop=stop)
            bar.update()

    # 2. the ravine sweeps: zigzag regime for momentum vs SGD, the stable range for Nesterov
    sweep_steps = FUNCTIONS["ravine"]["steps"] // scale
    zigzag = np.linspace(1.05, 1.95, 4 if quick else 10)
    sweep = _ravine_sweep(zigzag, sweep_steps)
    bar.update()
    stable = np.linspace(0.1, 1.3, 4 if quick else 13)
    nsweep = _ravine_sweep(stable, sweep_steps)
    bar.update()
    bar.close()

    amp_sgd, amp_mom = np.array(sweep["SGD_amplitude"]), np.array(sweep["Momentum_amplitude"])
    frac_damped = float(np.mean(amp_mom < amp_sgd))
    over_mom, over_nes = np.array(nsweep["Momentum_overshoot"]), np.array(nsweep["Nesterov_overshoot"])
    frac_less = float(np.mean(over_nes < over_mom))

    # effective learning rates: deterministic, on the three functions with a minimum ...
    adaptive = ("AdaGrad", "RMSprop", "Adadelta", "Adam")
    eff_exact: dict[str, dict] = {}
    for fname in ("ravine", "rosenbrock", "beale"):
        eff_exact[fname] = {}
        for oname in adaptive:
            early, late = _effective_lr(runs[fname][oname])
            eff_exact[fname][oname] = {"early": early, "late": late,
                                       "log10_late_over_early": float(np.log10(late / early))}
    # ... and with noisy gradients at the ravine's minimum (the stochastic regime the claim is about)
    noisy_steps = NOISY_STEPS // scale
    eff_noisy: dict[str, list] = {o: [] for o in adaptive}
    for s in seeds(seed, quick):
        for oname in adaptive:
            t = trajectory(_ravine, (0.0, 0.0), oname, FUNCTIONS["ravine"]["lr"][oname], noisy_steps,
                           noise=NOISE, rng=np.random.default_rng(s))
            early, late = _effective_lr(t)
            eff_noisy[oname].append(float(np.log10(late / early)))
    eff: dict[str, dict[str, Any]] = {}
    for oname, values in eff_noisy.items():
        mean, spread = mean_spread(values)
        eff[oname] = {"mean": mean, "spread": spread, "log10_late_over_early": values}
    spread_or_none = (lambda o: eff[o]["spread"]) if len(seeds(seed, quick)) > 1 else (lambda o: None)

    escape = {oname: _escape_steps(runs["saddle"][oname]) for oname in OPTIMIZERS}
    others = [o for o in OPTIMIZERS if o != "SGD"]
    frac_sooner = float(np.mean([escape[o] < escape["SGD"] for o in others]))

    claims = [
        claim(CLAIMS[0], f"fraction of learning rates (lr*B in [1.05, 1.95], SGD zigzags) where momentum "
              f"{MOMENTUM}'s across-ravine amplitude (mean |y|) is below plain SGD's at the same lr",
              frac_damped, 0.5),
        claim(CLAIMS[1], "fraction of learning rates (lr*B in [0.1, 1.3], both stable) where Nesterov's largest "
              "overshoot past the minimum along the steep axis is below classical momentum's", frac_less, 0.5),
        claim(CLAIMS[2], f"decades by which AdaGrad's effective learning rate ||step||/||grad|| shrinks from the "
              f"first to the last 10% of {noisy_steps} steps with gradient noise {NOISE} at the ravine's minimum: "
              f"-log10(late / early) (over 0.5: more than about 3x)", -eff["AdaGrad"]["mean"], 0.5,
              spread_or_none("AdaGrad")),
        claim(CLAIMS[3], "log10(late / early) of RMSprop's effective learning rate in the same noisy runs "
              "(above -0.5: shrank less than about 3x)", eff["RMSprop"]["mean"], -0.5, spread_or_none("RMSprop")),
        claim(CLAIMS[4], f"fraction of the six other optimizers that get farther than {ESCAPE_RADIUS} from the "
              f"saddle in fewer steps than SGD (all six needed)", frac_sooner, 5.5 / 6),
    ]

    colors = {o: c for o, c in zip(OPTIMIZERS, ["#000000", "#1f77b4", "#17becf", "#d62728", "#ff7f0e",
                                                "#9467bd", "#2ca02c"])}
    fig_axes = new_figure(2, len(FUNCTIONS), title=TITLE, width=4.2, height=3.8)
    _plot(fig_axes, runs, colors)

    def _sub(path: np.ndarray) -> list:
        idx = np.unique(np.linspace(0, len(path) - 1, min(len(path), 400)).astype(int))
        return path[idx].tolist()

    measurements = {
        "final_loss": {f: {o: float(t["loss"][-1]) for o, t in r.items()} for f, r in runs.items()},
        "steps_taken": {f: {o: int(len(t["loss"]) - 1) for o, t in r.items()} for f, r in runs.items()},
        "distance_to_minimum": {f: {o: float(np.hypot(*(t["path"][-1] - np.array(FUNCTIONS[f]["minimum"]))))
                                    for o, t in r.items()} for f, r in runs.items()
                                if FUNCTIONS[f]["minimum"] is not None},
        "ravine_sweep": sweep,
        "nesterov_sweep": nsweep,
        "fraction_momentum_damps": frac_damped,
        "fraction_nesterov_overshoots_less": frac_less,
        "effective_lr_noisy": eff,
        "effective_lr_exact": eff_exact,
        "saddle_escape_steps": escape,
        "fraction_escape_sooner_than_sgd": frac_sooner,
        "paths": {f: {o: _sub(t["path"]) for o, t in r.items()} for f, r in runs.items()},
    }
    settings = {
        "seed": seed, "quick": quick, "momentum": MOMENTUM, "ravine_B": RAVINE_B, "escape_radius": ESCAPE_RADIUS,
        "functions": {f: {"start": list(s["start"]), "minimum": None if s["minimum"] is None else list(s["minimum"]),
                          "steps": s["steps"] // scale, "lr": dict(s["lr"])} for f, s in FUNCTIONS.items()},
        "noise": NOISE, "noisy_steps": noisy_steps, "seeds": seeds(seed, quick),
        "zigzag_lr_times_B": zigzag.tolist(), "stable_lr_times_B": stable.tolist(),
        "optimizer_kwargs": {o: {"class": c, **kw} for o, (c, kw) in OPTIMIZERS.items()},
    }
    return Result(NAME, TITLE, settings, measurements, claims, fig_axes[0], time.perf_counter() - t_start)
