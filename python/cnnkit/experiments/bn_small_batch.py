"""bn-small-batch: batch norm, group norm and ghost batch norm at batch sizes 2 to 128.

:func:`cnnkit.experiments._runner.small_cnn` (two 3x3 convolutions, 16 and 32 channels) trained on
scikit-learn's 8x8 digits for a fixed number of epochs with SGD (momentum 0.9) and the linear
scaling rule (learning rate 0.1 * B / 32), at batch sizes B = 2, 4, ..., 128; test accuracy in
eval mode (batch norm then uses its running statistics, as at deployment).

Ghost batch norm (Hoffer et al., 2017) normalizes each consecutive chunk of 16 samples of a batch
with the chunk's own statistics (``cnnkit.ops.batch_norm_train(virtual_batch_size=16)`` and its
backward); the running statistics move once per batch with the average of the chunks'. For
B <= 16 it is batch norm itself, so those points are batch norm's measurements, not re-run.

Statistics (paired per seed, threshold 0, beyond the spread over seeds): the degradation of a
network is its accuracy at B = 32 minus its accuracy at B = 2; the first claim holds if batch
norm degrades more than group norm; the second if group norm beats batch norm at B = 2.

On this machine (three seeds, 4 epochs) neither claim reproduced: batch norm was best at B = 2
(0.955 test accuracy, group norm 0.88), and every network lost accuracy at large batches, which
get fewer steps in the same epochs. A likely reason: on 8x8 images a batch of 2 still pools 128
values per channel in the first layer and 32 in the second, so the batch statistics are not
very noisy; the claim comes from large networks whose late layers have few positions.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import _runner as R
from ..nn import BatchNorm2d

NAME = "bn-small-batch"
TITLE = "Small batches: batch norm vs group norm vs ghost batch norm"
CLAIMS = ["Batch norm degrades at small batches where group norm does not",
          "At batch size 2, group norm reaches a higher test accuracy than batch norm"]

_NETS = ("batch", "group", "ghost")
_LABEL = {"batch": "batch norm", "group": "group norm (4 groups)", "ghost": "ghost batch norm (16 per chunk)"}
_GHOST = 16
_REF, _SMALL = 32, 2


class _GhostBatchNorm2d(BatchNorm2d):
    """Batch norm (fused ReLU, NCHW) whose training statistics come from consecutive chunks of
    ``virtual_batch_size`` samples (the whole batch when it is not larger than a chunk or not a
    multiple of it); eval mode uses the running statistics as batch norm does.

    Parameters
    ----------
    num_features : int
        C, the channel count.
    virtual_batch_size : int
        Samples per chunk.
    """

    def __init__(self, num_features: int, virtual_batch_size: int):
        super().__init__(num_features, activation="relu")
        self.virtual_batch_size = int(virtual_batch_size)

    def _v(self, n: int) -> Any:
        v = self.virtual_batch_size
        return v if (n > v and n % v == 0) else None

    def forward(self, x: np.ndarray, residual: Any = None) -> np.ndarray:
        """Normalize ``x`` (training: per chunk; eval: running statistics).

        Parameters
        ----------
        x : float32 ndarray (N, C, H, W)
        residual : None
            Not supported (must be None).

        Returns
        -------
        float32 ndarray
            x's shape.
        """
        from .. import ops
        if not self.training or residual is not None:
            return super().forward(x, residual)
        p, b = self.params, self.buffers
        self._x, self._residual = x, None
        b["num_batches_tracked"] += 1
        y, self._mean, self._invstd = ops.batch_norm_train(
            x, p["weight"], p["bias"], b["running_mean"], b["running_var"], momentum=0.1 if self.momentum is None else self.momentum, eps=self.eps,
            activation="relu", virtual_batch_size=self._v(len(x)), out=self._buf("y", x.shape))
        self._trained, self._y = True, y
        return y

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
        """Gradients through the chunked normalization.

        Parameters
        ----------
        grad : float32 ndarray
            The gradient of the last forward's output.
        input_grad : bool
            Unused: the input gradient is always computed.

        Returns
        -------
        float32 ndarray
            The gradient with respect to the last forward's x.
        """
        from .. import ops
        if not self._trained:
            return super().backward(grad, input_grad)
        gi, gw, gb = ops.batch_norm_backward(
            np.ascontiguousarray(grad, dtype=np.float32), self._x, self.params["weight"], self._mean, self._invstd,
            y=self._y, bias=self.params["bias"], activation="relu", virtual_batch_size=self._v(len(self._x)),
            out=self._buf("gx", self._x.shape))
        self.grads["weight"][...] = gw
        self.grads["bias"][...] = gb
        return gi


def _model(net: str, seed: int, widths: list[int]) -> Any:
    if net == "ghost":
        return R.small_cnn("batch", widths=widths, seed=seed, norm_layer=lambda c: _GhostBatchNorm2d(c, _GHOST))
    return R.small_cnn(net, widths=widths, seed=seed)


def run(seed: int = 0, quick: bool = False, progress: bool = True) -> R.Result:
    """Train each network at each batch size and compare the small-batch degradation.

    Parameters
    ----------
    seed : int >= 0, default 0
        The first seed (split, initialization, batch order); default settings use three.
    quick : bool, default False
        Batch sizes 2, 32 and 128, 400 training images, 2 epochs and one seed, instead of
        2..128, the whole training split, 4 epochs and three seeds.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    cnnkit.experiments._runner.Result
        ``measurements``: ``batch_sizes``; per network ("batch", "group", "ghost"):
        ``test_accuracy`` (seeds x batch sizes), ``mean``, ``spread`` (per batch size),
        ``degradation`` (per seed: accuracy at 32 minus at 2); ``degradation_gain`` (batch
        minus group, per seed), ``gn_minus_bn_at_2`` (per seed). Two claims.
    """
    from .. import optim
    t0 = time.perf_counter()
    ss = R.seeds(seed, quick)
    sizes = [2, 32, 128] if quick else [2, 4, 8, 16, 32, 64, 128]
    st: dict[str, Any] = {"batch_sizes": sizes, "epochs": 2 if quick else 4, "lr_at_32": 0.1,
                          "lr_rule": "0.1 * B / 32", "momentum": 0.9, "widths": [16, 32], "ghost_batch": _GHOST,
                          "train_limit": 400 if quick else None, "optimizer": "SGD", "seeds": ss, "seed": seed,
                          "quick": quick, "dataset": "digits 8x8, stratified 75/25 split per seed"}
    todo = [(s, net, b) for s in ss for net in _NETS for b in sizes if not (net == "ghost" and b <= _GHOST)]
    bar = R.progress_bar(len(todo), NAME, progress)
    acc: dict[tuple[int, str, int], float] = {}
    try:
        splits = {s: R.digits_split(s, train_limit=st["train_limit"]) for s in ss}
        for s, net, b in todo:
            train_set, test_set = splits[s]
            model = _model(net, s, st["widths"])
            opt = optim.SGD(model.parameters(), lr=st["lr_at_32"] * b / 32, momentum=st["momentum"])
            h = R.train_epochs(model, opt, train_set, epochs=st["epochs"], batch_size=b, seed=s, drop_last=True)
            acc[s, net, b] = 0.0 if h["diverged"] else R.accuracy(model, test_set)
            bar.update(1)
    finally:
        bar.close()
    for s in ss:  # ghost batch norm with chunks no smaller than the batch is batch norm
        for b in sizes:
            if b <= _GHOST:
                acc[s, "ghost", b] = acc[s, "batch", b]
    meas: dict[str, Any] = {"batch_sizes": sizes}
    for net in _NETS:
        table = np.array([[acc[s, net, b] for b in sizes] for s in ss])
        ms = [R.mean_spread(table[:, j]) for j in range(len(sizes))]
        meas[net] = {"test_accuracy": table, "mean": [m for m, _ in ms], "spread": [sp for _, sp in ms],
                     "degradation": list(table[:, sizes.index(_REF)] - table[:, sizes.index(_SMALL)])}
    gain = [a - b for a, b in zip(meas["batch"]["degradation"], meas["group"]["degradation"])]
    at2 = [acc[s, "group", _SMALL] - acc[s, "batch", _SMALL] for s in ss]
    meas["degradation_gain"], meas["gn_minus_bn_at_2"] = gain, at2
    n = len(ss)
    g, gs = R.mean_spread(gain)
    d2, d2s = R.mean_spread(at2)
    claims = [
        R.claim(CLAIMS[0], f"(accuracy at B=32 - at B=2) of batch norm minus that of group norm (mean over {n} seeds)",
                g, 0.0, gs if n > 1 else R.UNKNOWN_SPREAD),
        R.claim(CLAIMS[1], f"test accuracy at B=2, group norm minus batch norm (mean over {n} seeds)",
                d2, 0.0, d2s if n > 1 else R.UNKNOWN_SPREAD)]
    return R.Result(NAME, TITLE, st, meas, claims, _figure(meas, sizes), time.perf_counter() - t0)


def _figure(meas: dict[str, Any], sizes: list[int]) -> Any:
    fig, axes = R.new_figure(1, 1, title=TITLE, width=6.5)
    ax = axes[0]
    for net, marker in zip(_NETS, "os^"):
        m = meas[net]
        ax.errorbar(sizes, m["mean"], yerr=m["spread"], marker=marker, capsize=3, label=_LABEL[net])
    ax.set(xscale="log", ylim=(0, 1), xlabel="batch size (log scale)", ylabel="test accuracy (eval mode)",
           title="Same epochs, learning rate 0.1 * B / 32; mean and spread over seeds")
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.legend()
    return fig
