"""The runner every :mod:`cnnkit.experiments` module shares.

An experiment module defines ``NAME``, ``TITLE``, ``CLAIMS`` (the claims in words) and
``run(seed=0, quick=False, progress=True) -> Result``; ``run`` trains, measures, builds the
figure and judges the claims, but writes nothing. :func:`finish` writes ``NAME.png``,
``NAME.json`` and a section of ``summary.md``.

The judge rule
--------------
A claim is tested by one statistic, oriented so that *larger means the claim holds*
(``difference``), against a ``threshold``; ``spread`` is its noise (a sample standard deviation
over seeds, or None when the statistic is deterministic). :func:`judge` says "reproduced" when
``difference > threshold`` by more than the spread, "not reproduced" when it is below the
threshold by more than the spread, and "inconclusive" otherwise.

Shared training pieces
----------------------
:func:`digits_split` (scikit-learn's 8x8 digits, a stratified split), :func:`small_cnn` (a
two-convolution CNN with batch norm, group norm or no normalization, and a scalable
initialization), :func:`train_epochs` (``cnnkit.train.fit`` on a seeded loader, then the test
accuracy) and :func:`accuracy`. :func:`new_figure` makes a matplotlib figure without pyplot
(no global state), and :func:`figure_problems` lists what a figure lacks (a title, axis labels),
for the tests.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .._validate import check_bool, check_choice, check_int, check_real, is_real

__all__ = ["VERDICTS", "UNKNOWN_SPREAD", "Claim", "Result", "judge", "claim", "mean_spread", "seeds", "finish", "progress_bar",
           "new_figure", "figure_problems", "digits_split", "small_cnn", "train_epochs", "accuracy", "jsonable"]

#: The three verdicts a claim can get.
VERDICTS = ("reproduced", "not reproduced", "inconclusive")

#: The spread to give :func:`claim` when a random statistic was measured once (a quick run, one
#: seed): there is no noise estimate, so the judge says "inconclusive" (written as null in JSON).
UNKNOWN_SPREAD = math.inf


# --------------------------------------------------------------------------------------------
# claims and the judge
# --------------------------------------------------------------------------------------------
def judge(difference: float, threshold: float, spread: Optional[float] = None) -> str:
    """The verdict on a claim whose statistic is ``difference`` (larger: the claim holds).

    Parameters
    ----------
    difference : float
        The statistic, oriented so that a larger value supports the claim (e.g. accuracy with
        batch norm minus accuracy without).
    threshold : float
        The value the statistic must exceed for the claim to hold.
    spread : float >= 0 or None, default None
        The statistic's noise (sample standard deviation over seeds). None: no noise (a
        deterministic measurement), the comparison alone decides.

    Returns
    -------
    str
        "reproduced" if ``difference > threshold`` and (``spread`` is None or
        ``difference - threshold > spread``); "not reproduced" if ``difference < threshold`` and
        (``spread`` is None or ``threshold - difference > spread``); "inconclusive" otherwise
        (equal, inside the noise, or a NaN).

    Examples
    --------
    >>> from cnnkit.experiments._runner import judge
    >>> judge(0.30, 0.05, spread=0.02), judge(-0.2, 0.05, spread=0.02), judge(0.06, 0.05, spread=0.02)
    ('reproduced', 'not reproduced', 'inconclusive')
    """
    for name, v in (("difference", difference), ("threshold", threshold), ("spread", spread)):
        if not (is_real(v) or (name == "spread" and v is None)):
            raise TypeError(f"{name}: expected a real number, got {type(v).__name__} {v!r}")
    d, t = float(difference), float(threshold)
    s = None if spread is None else float(spread)
    if s is not None and s < 0:
        raise ValueError(f"spread: expected None or a float >= 0, got {spread!r}")
    if math.isnan(d) or math.isnan(t) or (s is not None and math.isnan(s)):
        return "inconclusive"
    if d > t and (s is None or d - t > s):
        return "reproduced"
    if d < t and (s is None or t - d > s):
        return "not reproduced"
    return "inconclusive"


@dataclasses.dataclass
class Claim:
    """A claim of the field, the statistic that tests it and the verdict.

    Attributes
    ----------
    text : str
        The claim in words.
    statistic : str
        What is measured, in words, oriented so that larger supports the claim.
    value : float
        The measured statistic (a mean over seeds where it is random).
    threshold : float
        The value the statistic must exceed.
    spread : float or None
        The statistic's noise (sample standard deviation over seeds), None if deterministic.
    verdict : str
        "reproduced", "not reproduced" or "inconclusive" (:func:`judge`).
    """

    text: str
    statistic: str
    value: float
    threshold: float
    spread: Optional[float]
    verdict: str

    def to_json(self) -> dict[str, Any]:
        """The claim as a JSON-able dict.

        Returns
        -------
        dict
            Keys ``text``, ``statistic``, ``value``, ``threshold``, ``spread``, ``verdict``
            (non-finite floats become None).
        """
        return jsonable(dataclasses.asdict(self))


def claim(text: str, statistic: str, value: float, threshold: float, spread: Optional[float] = None) -> Claim:
    """A :class:`Claim` judged by :func:`judge`.

    Parameters
    ----------
    text : str
        The claim in words.
    statistic : str
        What is measured, in words (larger supports the claim).
    value : float
        The measured statistic.
    threshold : float
        The value it must exceed.
    spread : float >= 0 or None, default None
        Its noise over seeds; None if deterministic.

    Returns
    -------
    Claim
        With ``verdict = judge(value, threshold, spread)``.

    Examples
    --------
    >>> from cnnkit.experiments._runner import claim
    >>> claim("BN helps", "accuracy gain", 0.2, 0.0, 0.05).verdict
    'reproduced'
    """
    if not isinstance(text, str) or not isinstance(statistic, str):
        raise TypeError(f"text, statistic: expected str, got {type(text).__name__}, {type(statistic).__name__}")
    verdict = judge(value, threshold, spread)
    return Claim(text, statistic, float(value), float(threshold), None if spread is None else float(spread), verdict)


def mean_spread(values: Union[Sequence[float], np.ndarray]) -> tuple[float, float]:
    """Mean and spread (sample standard deviation, ``ddof=1``) of measurements. One value has
    no spread to beat: its spread is :data:`UNKNOWN_SPREAD` (infinite), so a verdict that rests on
    a single seed is "inconclusive" (quick runs).

    Parameters
    ----------
    values : sequence of float or 1-D ndarray, at least one value
        One measurement per seed.

    Returns
    -------
    (float, float)
        The mean and the spread.

    Examples
    --------
    >>> from cnnkit.experiments._runner import mean_spread
    >>> mean_spread([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("values: expected at least one value, got none")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else UNKNOWN_SPREAD


def seeds(seed: int, quick: bool, n: int = 3) -> list[int]:
    """The seeds an experiment repeats over: ``[seed]`` when quick, else ``n`` consecutive ones.

    Parameters
    ----------
    seed : int >= 0
        The first seed (the one ``--seed`` gives).
    quick : bool
        The ``--quick`` setting.
    n : int >= 3, default 3
        How many seeds at default settings (a verdict needs a spread: at least 3).

    Returns
    -------
    list of int
        ``[seed]`` or ``[seed, seed + 1, ..., seed + n - 1]``.

    Examples
    --------
    >>> from cnnkit.experiments._runner import seeds
    >>> seeds(5, True), seeds(5, False)
    ([5], [5, 6, 7])
    """
    seed = check_int("seed", seed, 0, "an int >= 0")
    quick = check_bool("quick", quick)
    n = check_int("n", n, 3, "an int >= 3")
    return [seed] if quick else [seed + i for i in range(n)]


# --------------------------------------------------------------------------------------------
# results and files
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    """What an experiment's ``run`` returns; :func:`finish` writes it.

    Attributes
    ----------
    name : str
        The experiment's name ("bn-lr-stress"); the files are ``NAME.png`` and ``NAME.json``.
    title : str
        A one-line title (the figure's suptitle and the summary's heading).
    settings : dict
        The settings (epochs, batch sizes, seeds, ``seed``, ``quick``, ...), JSON-able.
    measurements : dict
        Every measured number (floats and lists of floats), JSON-able.
    claims : list of Claim
        The judged claims.
    figure : matplotlib.figure.Figure
        The figure (titled, labelled axes, legends).
    seconds : float
        Wall time of the run.
    """

    name: str
    title: str
    settings: dict
    measurements: dict
    claims: list
    figure: Any
    seconds: float


def jsonable(x: Any) -> Any:
    """``x`` with NumPy scalars and arrays turned into Python numbers and lists, tuples into lists,
    and non-finite floats into None (so ``json.dump`` writes strict JSON).

    Parameters
    ----------
    x : any
        Nested dicts, lists, tuples, NumPy arrays and scalars, str, bool, int, float, None.

    Returns
    -------
    any
        The same structure in plain Python types.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.experiments._runner import jsonable
    >>> jsonable({"a": np.arange(2), "b": (np.float32(0.5), float("nan"))})
    {'a': [0, 1], 'b': [0.5, None]}
    """
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, Claim):
        return x.to_json()
    return x


def _threads() -> int:
    try:
        from .. import get_num_threads
        return int(get_num_threads())
    except Exception:  # noqa: BLE001 - the count is informative only
        return 0


def _version() -> str:
    try:
        from .. import __version__
        return str(__version__)
    except Exception:  # noqa: BLE001
        return "unknown"


def _fmt(v: Optional[float]) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4g}"


def finish(result: Result, out_dir: Union[str, os.PathLike], *, seed: Optional[int] = None,
           quick: Optional[bool] = None) -> dict[str, Any]:
    """Write ``NAME.png`` (dpi 120), ``NAME.json`` and append a section to ``summary.md`` in
    ``out_dir`` (created if needed).

    Parameters
    ----------
    result : Result
        What the experiment's ``run`` returned.
    out_dir : str or path
        The output folder.
    seed : int, optional
        The seed the run used (default ``result.settings["seed"]``).
    quick : bool, optional
        Whether it was a quick run (default ``result.settings["quick"]``).

    Returns
    -------
    dict
        The JSON written: ``name``, ``title``, ``settings``, ``measurements``, ``claims`` (each
        :meth:`Claim.to_json`), ``seconds``, ``seed``, ``quick``, ``threads``, ``version``,
        ``figure`` (the PNG's file name).

    Examples
    --------
    >>> import tempfile, os
    >>> from matplotlib.figure import Figure
    >>> from cnnkit.experiments._runner import Result, claim, finish
    >>> fig = Figure(); ax = fig.add_subplot(); _ = ax.set(title="t", xlabel="x", ylabel="y")
    >>> r = Result("demo", "A demo", {"seed": 0, "quick": True}, {"x": [1.0]},
    ...            [claim("c", "s", 1.0, 0.0)], fig, 0.1)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = finish(r, d)
    ...     sorted(os.listdir(d)), out["claims"][0]["verdict"]
    (['demo.json', 'demo.png', 'summary.md'], 'reproduced')
    """
    if not isinstance(result, Result):
        raise TypeError(f"result: expected a cnnkit.experiments._runner.Result, got {type(result).__name__}")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir: expected a str or path, got {type(out_dir).__name__}")
    seed = result.settings.get("seed") if seed is None else seed
    quick = result.settings.get("quick") if quick is None else quick
    os.makedirs(out_dir, exist_ok=True)
    png = f"{result.name}.png"
    result.figure.savefig(os.path.join(out_dir, png), dpi=120)
    doc = jsonable({
        "name": result.name, "title": result.title, "settings": result.settings,
        "measurements": result.measurements, "claims": [c.to_json() for c in result.claims],
        "seconds": float(result.seconds), "seed": seed, "quick": quick, "threads": _threads(),
        "version": _version(), "figure": png,
    })
    with open(os.path.join(out_dir, f"{result.name}.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, allow_nan=False)
        f.write("\n")
    lines = [f"## {result.name}: {result.title}", "",
             f"seed {seed}, quick {bool(quick)}, {result.seconds:.1f} s, threads {doc['threads']}, "
             f"cnnkit {doc['version']}", ""]
    for c in result.claims:
        if c.spread is None:
            spread = ""
        elif math.isinf(c.spread):
            spread = " (one seed: no spread, no verdict)"
        else:
            spread = f" ± {_fmt(c.spread)}"
        lines.append(f"- **{c.verdict}**: {c.text} — {c.statistic} = {_fmt(c.value)}{spread} "
                     f"(threshold {_fmt(c.threshold)})")
    lines += ["", f"![{result.name}]({png})", "", ""]
    with open(os.path.join(out_dir, "summary.md"), "a", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return doc


# --------------------------------------------------------------------------------------------
# progress and figures
# --------------------------------------------------------------------------------------------
class _NoBar:
    """A progress bar that shows nothing."""

    def update(self, n: int = 1) -> None:
        """Do nothing.

        Parameters
        ----------
        n : int
            Ignored.
        """

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing.

        Parameters
        ----------
        *args, **kwargs
            Ignored.
        """

    def close(self) -> None:
        """Do nothing."""


def progress_bar(total: Optional[int], desc: str, enabled: bool = True) -> Any:
    """A tqdm progress bar, or an object with the same ``update``/``set_postfix``/``close`` that
    shows nothing.

    Parameters
    ----------
    total : int or None
        The number of steps (None: unknown).
    desc : str
        The bar's label.
    enabled : bool, default True
        False: the silent bar.

    Returns
    -------
    tqdm.tqdm or a silent stand-in
        Call ``.update(n)`` per step and ``.close()`` at the end.
    """
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


def new_figure(nrows: int = 1, ncols: int = 1, *, title: str, width: float = 5.0,
               height: float = 4.0) -> tuple[Any, np.ndarray]:
    """A matplotlib figure (no pyplot, no global state) with a grid of axes and a suptitle.

    Parameters
    ----------
    nrows, ncols : int >= 1
        The grid.
    title : str
        The figure's title (``suptitle``).
    width, height : float
        Inches per panel.

    Returns
    -------
    (matplotlib.figure.Figure, ndarray of Axes)
        The figure and its axes, shape (nrows, ncols) flattened to 1-D.

    Examples
    --------
    >>> from cnnkit.experiments._runner import new_figure
    >>> fig, axes = new_figure(1, 2, title="demo")
    >>> len(axes), fig._suptitle.get_text()
    (2, 'demo')
    """
    from matplotlib.figure import Figure
    nrows = check_int("nrows", nrows, 1, "an int >= 1")
    ncols = check_int("ncols", ncols, 1, "an int >= 1")
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.suptitle(title)
    return fig, axes


def figure_problems(figure: Any) -> list[str]:
    """What a figure lacks: a title (its own or every panel's), x and y labels on every visible
    panel that has data (images excepted).

    Parameters
    ----------
    figure : matplotlib.figure.Figure

    Returns
    -------
    list of str
        One line per problem; empty when the figure is complete.
    """
    problems = []
    sup = figure._suptitle.get_text() if getattr(figure, "_suptitle", None) is not None else ""
    axes = [ax for ax in figure.axes if ax.get_visible()]
    if not axes:
        problems.append("no axes")
    for i, ax in enumerate(axes):
        if ax.images and not ax.lines and not ax.collections:
            continue  # an image panel: no axes to label
        if not sup and not ax.get_title():
            problems.append(f"axes {i}: no title and no figure title")
        if not ax.get_xlabel():
            problems.append(f"axes {i}: no x label")
        if not ax.get_ylabel():
            problems.append(f"axes {i}: no y label")
    if not sup and not any(ax.get_title() for ax in axes):
        problems.append("no title")
    return problems


# --------------------------------------------------------------------------------------------
# shared training pieces: digits, a small CNN, training
# --------------------------------------------------------------------------------------------
_DIGITS: dict = {}


def digits_split(seed: int = 0, *, size: int = 8, test_size: float = 0.25,
                 train_limit: Optional[int] = None) -> tuple[Any, Any]:
    """scikit-learn's digits (1797 images, ten classes) split into stratified train and test sets.

    Parameters
    ----------
    seed : int >= 0, default 0
        The split's seed.
    size : int >= 1, default 8
        Image side (8 is native; other sizes are resized bilinearly).
    test_size : float in (0, 1), default 0.25
        Test fraction.
    train_limit : int, optional
        Keep only the first ``train_limit`` training samples (a reduced training set).

    Returns
    -------
    (cnnkit.data.ArrayDataset, cnnkit.data.ArrayDataset)
        Train and test; images float32 (N, 1, size, size) in [0, 1], labels int64 (N,).

    Examples
    --------
    >>> from cnnkit.experiments._runner import digits_split
    >>> train, test = digits_split(0)
    >>> len(train) + len(test), train.images.shape[1:]
    (1797, (1, 8, 8))
    """
    from .. import data
    size = check_int("size", size, 1, "a positive int")
    if size not in _DIGITS:
        _DIGITS[size] = data.load_digits(size=size)
    train, test = data.train_test_split(_DIGITS[size], test_size, seed=seed)
    if train_limit is not None:
        train = train.subset(slice(0, check_int("train_limit", train_limit, 10, "an int >= 10")))
    return train, test


def _norm_layer(norm: Optional[str], c: int, momentum: Optional[float]) -> Any:
    from .. import nn
    if norm == "batch":
        return nn.BatchNorm2d(c, momentum=momentum, activation="relu")
    if norm == "group":
        return nn.GroupNorm(min(4, c), c, activation="relu")
    return nn.ReLU()


def small_cnn(norm: Optional[str] = "batch", *, widths: Sequence[int] = (16, 32), in_channels: int = 1,
              num_classes: int = 10, seed: int = 0, init_scale: float = 1.0, bn_momentum: Optional[float] = 0.1,
              norm_layer: Optional[Callable[[int], Any]] = None) -> Any:
    """A plain CNN for 8x8 inputs: per width a 3x3 convolution, the normalization with a ReLU,
    and (between widths) 2x2 max pooling; then global average pooling and a linear classifier.

    Parameters
    ----------
    norm : "batch", "group" or None, default "batch"
        Batch norm, group norm (min(4, C) groups) or none (then the convolutions have biases and
        a plain ReLU follows).
    widths : sequence of int, default (16, 32)
        Channels of each convolution.
    in_channels : int, default 1
    num_classes : int, default 10
    seed : int, default 0
        The initialization (PyTorch's default scheme from ``numpy.random.default_rng(seed)``).
    init_scale : float > 0, default 1.0
        Every convolution and linear weight is multiplied by this after initialization.
    bn_momentum : float in [0, 1] or None, default 0.1
        Batch norm's running-statistics factor.
    norm_layer : callable, optional
        ``norm_layer(C) -> Module`` replaces the normalization (it must apply the ReLU itself);
        ``norm`` is then ignored except for the convolution biases (none unless ``norm`` is None).

    Returns
    -------
    cnnkit.nn.Sequential
        Logits (N, num_classes) for float32 (N, in_channels, H, W) input.

    Examples
    --------
    >>> from cnnkit.experiments._runner import small_cnn
    >>> small_cnn("group", widths=(8, 16), seed=0).num_parameters()
    1442
    """
    from .. import nn
    check_choice("norm", norm, ("batch", "group", None))
    scale = check_real("init_scale", init_scale, lo=0.0, lo_open=True)
    rng = np.random.default_rng(check_int("seed", seed, 0, "an int >= 0"))
    layers: list = []
    c = check_int("in_channels", in_channels, 1, "a positive int")
    for i, w in enumerate(widths):
        w = check_int("widths", w, 1, "positive ints")
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.Conv2d(c, w, 3, 1, 1, bias=norm is None, rng=rng))
        layers.append(norm_layer(w) if norm_layer is not None else _norm_layer(norm, w, bn_momentum))
        c = w
    layers += [nn.GlobalAvgPool2d(), nn.Linear(c, num_classes, rng=rng)]
    model = nn.Sequential(*layers)
    if scale != 1.0:
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.params["weight"][...] *= scale
    return model


def accuracy(model: Any, dataset: Any, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on ``dataset`` in eval mode (the mode is restored).

    Parameters
    ----------
    model : cnnkit.nn.Module
    dataset : cnnkit.data.ArrayDataset
    batch_size : int, default 256

    Returns
    -------
    float
        The fraction classified correctly, in [0, 1].
    """
    from .. import data, train
    return float(train.evaluate(model, data.DataLoader(dataset, batch_size, shuffle=False))["accuracy"])


def train_epochs(model: Any, optimizer: Any, train_set: Any, *, epochs: int, batch_size: int, seed: int = 0,
                 test_set: Any = None, scheduler: Any = None, scheduler_interval: str = "epoch",
                 callbacks: Sequence[Callable[[int, dict], Any]] = (), drop_last: bool = False) -> dict[str, Any]:
    """Train with :func:`cnnkit.train.fit` on a seeded, shuffled loader (no progress bar: the
    experiment shows its own), then measure the test accuracy.

    Parameters
    ----------
    model : cnnkit.nn.Module
    optimizer : cnnkit.optim.Optimizer
    train_set : cnnkit.data.ArrayDataset
    epochs : int >= 0
    batch_size : int >= 1
    seed : int, default 0
        The loader's shuffling seed.
    test_set : cnnkit.data.ArrayDataset, optional
        Evaluated after every epoch (``val_accuracy``) and at the end (``test_accuracy``).
    scheduler : cnnkit.optim.lr_scheduler.LRScheduler, optional
    scheduler_interval : {"epoch", "step"}
    callbacks : sequence of callables
        As :func:`cnnkit.train.fit`.
    drop_last : bool, default False
        Drop a short final batch (batch norm needs more than one value per channel).

    Returns
    -------
    dict
        :func:`cnnkit.train.fit`'s history, plus ``test_accuracy`` (float or None) and
        ``diverged`` (bool: training stopped on a non-finite loss).
    """
    from .. import data, train
    loader = data.DataLoader(train_set, batch_size, shuffle=True, drop_last=drop_last, seed=seed)
    val = None if test_set is None else data.DataLoader(test_set, 256, shuffle=False)
    hist = train.fit(model, optimizer, loader, epochs=epochs, scheduler=scheduler,
                     scheduler_interval=scheduler_interval, val_loader=val, callbacks=callbacks, progress=False)
    hist["diverged"] = bool(hist["stopped"] and hist["stopped"].startswith("non-finite"))
    hist["test_accuracy"] = None if test_set is None else accuracy(model, test_set)
    return hist
