"""bn-init: sensitivity to the scale of the initialization, with and without batch norm.

:func:`cnnkit.experiments._runner.small_cnn` (two 3x3 convolutions, 16 and 32 channels) with batch
norm or with none, its convolution and linear weights multiplied by 0.01, 0.1, 1 or 10 after
PyTorch's default initialization, trained with SGD (momentum 0.9, learning rate 0.1) on
scikit-learn's 8x8 digits; the test accuracy after training.

Statistic: the sensitivity of a network is the range (max - min) of its final test accuracy over
the four scales; the claim holds if the range without batch norm exceeds the range with batch
norm (paired per seed, threshold 0, beyond the spread over seeds).
"""
from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from . import _runner as R

NAME = "bn-init"
TITLE = "Initialization scale: final accuracy with and without batch norm"
CLAIMS = ["Batch norm reduces the sensitivity of training to the scale of the weight initialization"]

_SCALES = (0.01, 0.1, 1.0, 10.0)
_NORMS: tuple[Optional[str], ...] = ("batch", None)
_LABEL = {"batch": "batch norm", None: "no normalization"}
_KEY = {"batch": "batch", None: "none"}


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> R.Result:
    """Train every (normalization, scale) pair and compare the accuracy ranges.

    Parameters
    ----------
    seed : int >= 0, default 0
        The first seed (split, initialization, batch order); default settings use three.
    quick : bool, default False
        2 epochs on 500 training images and one seed instead of 10 epochs on the whole training
        split and three seeds.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``scales``; per network ("batch", "none"): ``test_accuracy`` (seeds x
        scales), ``train_accuracy`` (seeds x scales x epochs), ``diverged`` (seeds x scales),
        ``range`` (per seed), ``range_mean``, ``range_spread``; ``range_gain`` (none minus batch,
        per seed). One claim.
    """
    from .. import optim
    t0 = time.perf_counter()
    ss = R.seeds(seed, quick)
    st: dict[str, Any] = {"scales": list(_SCALES), "epochs": 2 if quick else 10, "batch_size": 32, "lr": 0.1,
                          "momentum": 0.9, "widths": [16, 32], "optimizer": "SGD", "seeds": ss, "seed": seed,
                          "quick": quick, "dataset": "digits 8x8, stratified 75/25 split per seed",
                          "train_limit": 500 if quick else None}
    bar = R.progress_bar(len(ss) * len(_NORMS) * len(_SCALES), NAME, progress)
    meas: dict[str, Any] = {"scales": list(_SCALES)}
    for norm in _NORMS:
        meas[_KEY[norm]] = {"test_accuracy": [], "train_accuracy": [], "diverged": []}
    try:
        for s in ss:
            train_set, test_set = R.digits_split(s, train_limit=st["train_limit"])
            for norm in _NORMS:
                m = meas[_KEY[norm]]
                row_test, row_train, row_div = [], [], []
                for scale in _SCALES:
                    model = R.small_cnn(norm, widths=st["widths"], seed=s, init_scale=scale)
                    opt = optim.SGD(model.parameters(), lr=st["lr"], momentum=st["momentum"])
                    h = R.train_epochs(model, opt, train_set, epochs=st["epochs"], batch_size=st["batch_size"],
                                       seed=s, drop_last=True)
                    acc = h["epoch_accuracy"] + [0.0] * (st["epochs"] - len(h["epoch_accuracy"]))
                    # a diverged run's parameters are not finite: it scores as chance-or-worse, counted as 0
                    row_test.append(0.0 if h["diverged"] else R.accuracy(model, test_set))
                    row_train.append(acc)
                    row_div.append(h["diverged"])
                    bar.update(1)
                m["test_accuracy"].append(row_test)
                m["train_accuracy"].append(row_train)
                m["diverged"].append(row_div)
    finally:
        bar.close()
    for norm in _NORMS:
        m = meas[_KEY[norm]]
        acc = np.asarray(m["test_accuracy"])
        m["range"] = list(acc.max(axis=1) - acc.min(axis=1))
        m["range_mean"], m["range_spread"] = R.mean_spread(m["range"])
    gain = [a - b for a, b in zip(meas["none"]["range"], meas["batch"]["range"])]
    meas["range_gain"] = gain
    g, sp = R.mean_spread(gain)
    claims = [R.claim(CLAIMS[0], f"range of test accuracy over init scales {list(_SCALES)}, without batch norm "
                                 f"minus with (mean over {len(ss)} seeds)", g, 0.0, sp if len(ss) > 1 else R.UNKNOWN_SPREAD)]
    return R.Result(NAME, TITLE, st, meas, claims, _figure(meas, st), time.perf_counter() - t0)


def _figure(meas: dict[str, Any], st: dict[str, Any]) -> Any:
    fig, (a0, a1) = R.new_figure(1, 2, title=TITLE)
    for norm, marker in zip(_NORMS, "os"):
        k = _KEY[norm]
        acc = np.asarray(meas[k]["test_accuracy"])
        err = acc.std(axis=0, ddof=1) if acc.shape[0] > 1 else None
        a0.errorbar(_SCALES, acc.mean(axis=0), yerr=err, marker=marker, capsize=3,
                    label=f"{_LABEL[norm]} (range {meas[k]['range_mean']:.2f})")
    a0.set(xscale="log", ylim=(0, 1), xlabel="initialization scale (x PyTorch's default, log scale)",
           ylabel="final test accuracy", title="Mean and spread over seeds")
    a0.legend()
    epochs = np.arange(1, st["epochs"] + 1)
    for norm, ls in zip(_NORMS, ("-", "--")):
        tr = np.asarray(meas[_KEY[norm]]["train_accuracy"]).mean(axis=0)  # scales x epochs
        for i, scale in enumerate(_SCALES):
            a1.plot(epochs, tr[i], ls, color=f"C{i}", label=f"{_LABEL[norm]}, x{scale:g}")
    a1.set(ylim=(0, 1), xlabel="epoch", ylabel="training accuracy",
           title="Solid: batch norm; dashed: none")
    a1.legend(fontsize="small", ncol=2)
    return fig
