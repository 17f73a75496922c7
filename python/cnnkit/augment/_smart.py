"""Smart Augmentation (Lemley, Bazrafkan and Corcoran, IEEE Access 2017): a network learns to merge
same-class images into new training samples while the classifier trains.

Two networks train together. Network A (the *generator*) takes ``k`` images of one class stacked
on the channel axis, ``(N, k C, H, W)``, and outputs one image ``z``, ``(N, C, H, W)``. Network B
(the *classifier*) trains on each real batch concatenated with A's outputs (labelled with their
class). Per step, with ``L_B`` B's mean cross-entropy over that concatenated batch (the loss B
descends) and ``L_sim = mean((z - t)^2)``, the mean squared difference between A's output and
another image ``t`` of the same class, A descends

    L_A = alpha * L_B + beta * L_sim,

so A's gradient is ``alpha * dL_B/dz + beta * 2 (z - t) / z.size`` at its output: the first term
reaches A through B's input gradient (``B.backward(..., input_grad=True)``), the second keeps the
merged images close to real ones of their class. B descends ``L_B`` alone.

Defaults: ``k = 2`` inputs, the classification loss weighted 0.3 and the similarity loss 0.7.
The paper combines the two losses of network A with two constants; its full text was not at hand
when this was written, so the values follow the public re-implementation lanPN85/smart-augment
(two input images and a third as the similarity target; 0.7 on the MSE, 0.3 on the classifier's
cross-entropy), which names the weights the other way round (its ``alpha`` is on the MSE). The
names here follow cnnkit's issue: ``alpha`` weighs B's loss, ``beta`` the similarity.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Optional, Sequence, Union

import numpy as np

from .._validate import accepts_dlpack, check_array, check_bool, check_int, check_real, check_seed

__all__ = ["SmartAugmentation", "generator_network", "classifier_network"]

PathLike = Union[str, "os.PathLike[str]"]
_FLOATS = (np.float32, np.float64)
_INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


def generator_network(in_channels: int = 1, k: int = 2, *, width: int = 16, depth: int = 3,
                      seed: Any = 0) -> Any:
    """The default network A: ``depth`` 3x3 convolutions with "same" padding, ReLUs between them,
    from ``k * in_channels`` stacked input channels to ``in_channels`` output channels (no final
    activation: the merged image is not clipped). It keeps the spatial size, as the paper's
    network A does.

    Parameters
    ----------
    in_channels : int >= 1, default 1
        Channels C of one image.
    k : int >= 1, default 2
        Images merged into one (the input has ``k * C`` channels).
    width : int >= 1, default 16
        Channels of the hidden convolutions.
    depth : int >= 2, default 3
        Number of convolutions.
    seed : int, SeedSequence, Generator or None, default 0
        The initialization (PyTorch's default scheme).

    Returns
    -------
    cnnkit.nn.Sequential
        Maps float32 (N, k C, H, W) to (N, C, H, W).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.augment import generator_network
    >>> a = generator_network(1, 2, seed=0)
    >>> a.forward(np.zeros((3, 2, 8, 8), np.float32)).shape
    (3, 1, 8, 8)
    """
    from .. import nn
    c = check_int("in_channels", in_channels, 1, "an int >= 1")
    k = check_int("k", k, 1, "an int >= 1")
    width = check_int("width", width, 1, "an int >= 1")
    depth = check_int("depth", depth, 2, "an int >= 2")
    rng = np.random.default_rng(check_seed("seed", seed))
    layers: list = []
    ch = k * c
    for i in range(depth):
        out = c if i == depth - 1 else width
        layers.append(nn.Conv2d(ch, out, 3, padding=1, rng=rng))
        if i < depth - 1:
            layers.append(nn.ReLU())
        ch = out
    return nn.Sequential(*layers)


def classifier_network(in_channels: int = 1, num_classes: int = 10, *, widths: Sequence[int] = (16, 32),
                       seed: Any = 0) -> Any:
    """The default network B: per width a 3x3 convolution (no bias) and batch norm with a fused
    ReLU, 2x2 max pooling between widths, then global average pooling and a linear classifier.

    Parameters
    ----------
    in_channels : int >= 1, default 1
    num_classes : int >= 2, default 10
    widths : sequence of int >= 1, default (16, 32)
    seed : int, SeedSequence, Generator or None, default 0
        The initialization.

    Returns
    -------
    cnnkit.nn.Sequential
        Logits (N, num_classes) for float32 (N, in_channels, H, W) input (H, W >= 2 per pooling).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit.augment import classifier_network
    >>> b = classifier_network(1, 10, seed=0)
    >>> b.forward(np.zeros((4, 1, 8, 8), np.float32)).shape
    (4, 10)
    """
    from .. import nn
    c = check_int("in_channels", in_channels, 1, "an int >= 1")
    num_classes = check_int("num_classes", num_classes, 2, "an int >= 2")
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or len(widths) == 0:
        raise TypeError(f"widths: expected a non-empty sequence of ints >= 1, got {widths!r}")
    rng = np.random.default_rng(check_seed("seed", seed))
    layers: list = []
    for i, w in enumerate(widths):
        w = check_int("widths", w, 1, "ints >= 1")
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(w, activation="relu")]
        c = w
    layers += [nn.GlobalAvgPool2d(), nn.Linear(c, num_classes, rng=rng)]
    return nn.Sequential(*layers)


def _check_module(name: str, m: Any) -> Any:
    from ..nn import Module
    if not isinstance(m, Module):
        raise TypeError(f"{name}: expected a cnnkit.nn.Module, got {type(m).__name__}")
    return m


def _check_optimizer(name: str, opt: Any, model: Any) -> Any:
    from ..optim import Optimizer
    if not isinstance(opt, Optimizer):
        raise TypeError(f"{name}: expected a cnnkit.optim.Optimizer, got {type(opt).__name__}")
    mine = {id(p) for p in model.parameters()}
    theirs = {id(p) for g in opt.param_groups for p in g["params"]}
    if mine != theirs:
        raise ValueError(f"{name}: expected an optimizer over exactly the network's parameters "
                         f"(model.parameters()), got one over {len(theirs)} other arrays")
    return opt


def _check_labels(name: str, labels: Any, n: int) -> np.ndarray:
    check_array(name, labels, dtypes=_INTS, ndim=1, what="(N,) class indices")
    if labels.shape[0] != n:
        raise ValueError(f"{name}: expected {n} labels, got {labels.shape[0]}")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name}: expected class indices >= 0, got {int(labels.min())}")
    return labels.astype(np.int64, copy=False)


class SmartAugmentation:
    """Smart Augmentation: network A merges ``k`` same-class images into one new training sample;
    network B, the classifier, trains on real batches plus A's outputs; A trains on
    ``alpha * L_B + beta * L_sim`` (see the module docstring for the formulas).

    Parameters
    ----------
    classifier : cnnkit.nn.Module, optional
        Network B: float32 (N, C, H, W) images to (N, K) logits. Default
        :func:`classifier_network` (``in_channels``, ``num_classes``).
    generator : cnnkit.nn.Module, optional
        Network A: float32 (N, k C, H, W) to (N, C, H, W). Default :func:`generator_network`
        (``in_channels``, ``k``).
    in_channels : int >= 1, default 1
        Channels C of one image (used by the default networks and to check inputs).
    num_classes : int >= 2, optional
        Needed when ``classifier`` is not given.
    k : int >= 1, default 2
        Images merged per sample.
    alpha : float >= 0, default 0.3
        Weight of B's loss in A's loss.
    beta : float >= 0, default 0.7
        Weight of the similarity loss (mean squared difference to another image of the class).
    optimizer_a, optimizer_b : cnnkit.optim.Optimizer, optional
        Over ``generator.parameters()`` / ``classifier.parameters()``. Defaults:
        ``Adam(lr=1e-3)`` for A, ``SGD(lr=0.02, momentum=0.9, weight_decay=5e-4)`` for B.
    seed : int >= 0, default 0
        Seeds the default networks' initialization and one Generator that draws the batch order
        and the merged groups (saved in checkpoints).

    Attributes
    ----------
    generator, classifier : cnnkit.nn.Module
    optimizer_a, optimizer_b : cnnkit.optim.Optimizer
    epoch : int
        Epochs trained so far (across :meth:`fit` calls and checkpoints).
    history : dict
        Per epoch: ``loss_b``, ``similarity``, ``loss_a``, ``train_accuracy`` (B on the real
        images seen), ``merged_accuracy`` (B on A's outputs), ``val_accuracy`` (when a validation
        set is given) and ``seconds`` (wall time since the start of the :meth:`fit` call that
        trained the epoch).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import augment, data
    >>> ds = data.load_digits().subset(slice(0, 60))
    >>> sa = augment.SmartAugmentation(num_classes=10, seed=0)
    >>> hist = sa.fit(ds, epochs=1, batch_size=20, progress=False)
    >>> len(hist["loss_b"]), sa.epoch
    (1, 1)
    >>> inputs, merged, labels = sa.sample(ds, 4, seed=0)
    >>> inputs.shape, merged.shape, merged.dtype
    ((4, 2, 1, 8, 8), (4, 1, 8, 8), dtype('float32'))
    """

    def __init__(self, classifier: Any = None, generator: Any = None, *, in_channels: int = 1,
                 num_classes: Optional[int] = None, k: int = 2, alpha: float = 0.3, beta: float = 0.7,
                 optimizer_a: Any = None, optimizer_b: Any = None, seed: int = 0) -> None:
        from .. import nn, optim
        self.in_channels = check_int("in_channels", in_channels, 1, "an int >= 1")
        self.k = check_int("k", k, 1, "an int >= 1")
        self.alpha = check_real("alpha", alpha, lo=0.0)
        self.beta = check_real("beta", beta, lo=0.0)
        self.seed = check_int("seed", seed, 0, "an int >= 0")
        if classifier is None:
            if num_classes is None:
                raise ValueError("num_classes: expected an int >= 2 when no classifier is given, got None")
            num_classes = check_int("num_classes", num_classes, 2, "an int >= 2")
        else:
            _check_module("classifier", classifier)
            if num_classes is not None:
                num_classes = check_int("num_classes", num_classes, 2, "an int >= 2")
        if generator is not None:
            _check_module("generator", generator)
        init_a, init_b, data_seq = np.random.SeedSequence(self.seed).spawn(3)
        self.classifier = classifier if classifier is not None else classifier_network(
            self.in_channels, int(num_classes), seed=np.random.default_rng(init_b))  # type: ignore[arg-type]
        self.generator = generator if generator is not None else generator_network(
            self.in_channels, self.k, seed=np.random.default_rng(init_a))
        self.num_classes = num_classes
        self.optimizer_a = (_check_optimizer("optimizer_a", optimizer_a, self.generator) if optimizer_a is not None
                            else optim.Adam(self.generator.parameters(), lr=1e-3))
        self.optimizer_b = (_check_optimizer("optimizer_b", optimizer_b, self.classifier) if optimizer_b is not None
                            else optim.SGD(self.classifier.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4))
        self.rng = np.random.default_rng(data_seq)
        self.loss = nn.CrossEntropyLoss()
        self.epoch = 0
        self.history: dict[str, list] = {key: [] for key in _HISTORY}

    def __repr__(self) -> str:
        return (f"SmartAugmentation(k={self.k}, alpha={self.alpha}, beta={self.beta}, epoch={self.epoch}, "
                f"generator={type(self.generator).__name__}, classifier={type(self.classifier).__name__})")

    # ---- checks --------------------------------------------------------------------------------
    def _check_images(self, name: str, images: Any, ndim: int = 4) -> np.ndarray:
        what = "(N, C, H, W)" if ndim == 4 else "(N, k, C, H, W)"
        check_array(name, images, dtypes=(np.float32,), ndim=ndim, what=what)
        c_axis = 1 if ndim == 4 else 2
        if images.shape[c_axis] != self.in_channels:
            raise ValueError(f"{name}: expected {self.in_channels} channel(s) on axis {c_axis} {what}, "
                             f"got shape {images.shape}")
        if ndim == 5 and images.shape[1] != self.k:
            raise ValueError(f"{name}: expected k={self.k} images per group on axis 1 {what}, got shape {images.shape}")
        return images

    def _check_dataset(self, name: str, dataset: Any) -> tuple:
        from ..data import ArrayDataset
        if not isinstance(dataset, ArrayDataset):
            raise TypeError(f"{name}: expected a cnnkit.data.ArrayDataset, got {type(dataset).__name__}")
        self._check_images(f"{name}.images", dataset.images)
        labels = _check_labels(f"{name}.labels", dataset.labels, len(dataset))
        if len(dataset) == 0:
            raise ValueError(f"{name}: expected at least one sample, got an empty dataset")
        return dataset.images, labels

    # ---- the merged groups -----------------------------------------------------------------------
    def _draw_groups(self, rng: np.random.Generator, pools: dict, classes: np.ndarray) -> tuple:
        """For each class in ``classes``: k input indices and one target index from its pool
        (distinct when the class has more than k images, else drawn with replacement). Each
        sample's k + 1 images are the first of a random ordering of its class's pool (the order
        of uniform keys): ``Generator.choice(replace=False)`` gives strongly correlated draws in
        consecutive calls with small samples (NumPy 2.4), which this avoids."""
        m = len(classes)
        idx = np.empty((m, self.k + 1), dtype=np.int64)
        for c in np.unique(classes):
            rows = np.flatnonzero(classes == c)
            pool = pools[int(c)]
            if len(pool) > self.k:
                order = np.argsort(rng.random((len(rows), len(pool))), axis=1, kind="stable")[:, :self.k + 1]
            else:
                order = rng.integers(0, len(pool), (len(rows), self.k + 1))
            idx[rows] = pool[order]
        return idx[:, :self.k], idx[:, self.k]

    @staticmethod
    def _pools(labels: np.ndarray) -> dict:
        return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}

    # ---- one step ----------------------------------------------------------------------------------
    @accepts_dlpack
    def gradients(self, images: np.ndarray, labels: np.ndarray, groups: np.ndarray, targets: np.ndarray,
                  group_labels: np.ndarray) -> dict[str, float]:
        """Forward and backward of one step, without updating: write B's gradients of ``L_B`` and
        A's gradients of ``alpha * L_B + beta * L_sim`` into ``classifier.gradients()`` and
        ``generator.gradients()``.

        Parameters
        ----------
        images : float32 ndarray (N, C, H, W)
            A real batch.
        labels : int ndarray (N,)
        groups : float32 ndarray (M, k, C, H, W)
            M groups of k same-class images, merged by A into M new samples (M may be 0: B then
            trains on the real batch alone and A's gradient is zero).
        targets : float32 ndarray (M, C, H, W)
            For each group another image of its class (the similarity loss's target).
        group_labels : int ndarray (M,)
            The groups' classes.

        Returns
        -------
        dict
            ``loss_b`` (B's mean cross-entropy over the N + M samples), ``similarity``
            (``mean((z - t)^2)``), ``loss_a`` (``alpha * loss_b + beta * similarity``),
            ``correct_real`` and ``correct_merged`` (ints: B's correct predictions).

        Examples
        --------
        >>> import numpy as np
        >>> from cnnkit import augment
        >>> sa = augment.SmartAugmentation(num_classes=3, seed=0)
        >>> rng = np.random.default_rng(0)
        >>> x = rng.random((4, 1, 8, 8), dtype=np.float32)
        >>> g = rng.random((2, 2, 1, 8, 8), dtype=np.float32)
        >>> out = sa.gradients(x, np.array([0, 1, 2, 0]), g, g[:, 0], np.array([1, 2]))
        >>> sorted(out)
        ['correct_merged', 'correct_real', 'loss_a', 'loss_b', 'similarity']
        """
        self._check_images("images", images)
        y = _check_labels("labels", labels, len(images))
        self._check_images("groups", groups, ndim=5)
        m = len(groups)
        self._check_images("targets", targets)
        if targets.shape != (m,) + groups.shape[2:]:
            raise ValueError(f"targets: expected shape {(m,) + groups.shape[2:]} (one image per group), "
                             f"got {targets.shape}")
        gy = _check_labels("group_labels", group_labels, m)
        if images.shape[1:] != groups.shape[2:]:
            raise ValueError(f"groups: expected images of shape {images.shape[1:]} (as images), got "
                             f"{groups.shape[2:]}")
        n = len(images)
        if m == 0:  # no merged samples: B trains on the real batch alone, A's gradient is zero
            logits = self.classifier.forward(images)
            loss_b = float(self.loss.forward(logits, y))
            self.classifier.backward(self.loss.backward(), input_grad=False)
            self.generator.zero_grad()
            return {"loss_b": loss_b, "similarity": 0.0, "loss_a": self.alpha * loss_b,
                    "correct_real": int(np.sum(np.argmax(logits, axis=1) == y)), "correct_merged": 0}
        a_in = np.ascontiguousarray(groups.reshape((m, self.k * self.in_channels) + groups.shape[3:]))
        z = self.generator.forward(a_in)
        if z.shape != targets.shape:
            raise ValueError(f"generator: expected an output of shape {targets.shape} (one image per group), "
                             f"got {z.shape}")
        diff = z.astype(np.float64) - targets
        similarity = float(np.mean(diff * diff)) if diff.size else 0.0
        xb = np.concatenate([images, z], axis=0)
        yb = np.concatenate([y, gy])
        logits = self.classifier.forward(xb)
        loss_b = float(self.loss.forward(logits, yb))
        gx = self.classifier.backward(self.loss.backward(), input_grad=True)
        pred = np.argmax(logits, axis=1)
        g_out = self.alpha * gx[n:].astype(np.float64) + self.beta * (2.0 / max(diff.size, 1)) * diff
        self.generator.backward(np.ascontiguousarray(g_out, dtype=np.float32), input_grad=False)
        return {"loss_b": loss_b, "similarity": similarity, "loss_a": self.alpha * loss_b + self.beta * similarity,
                "correct_real": int(np.sum(pred[:n] == y)), "correct_merged": int(np.sum(pred[n:] == gy))}

    @accepts_dlpack
    def step(self, images: np.ndarray, labels: np.ndarray, groups: np.ndarray, targets: np.ndarray,
             group_labels: np.ndarray) -> dict[str, float]:
        """:meth:`gradients`, then one step of each optimizer (skipped, both, when a loss is not
        finite).

        Parameters
        ----------
        images, labels, groups, targets, group_labels
            As :meth:`gradients`.

        Returns
        -------
        dict
            As :meth:`gradients`.
        """
        out = self.gradients(images, labels, groups, targets, group_labels)
        if math.isfinite(out["loss_b"]) and math.isfinite(out["loss_a"]):
            self.optimizer_b.step(self.classifier.gradients())
            self.optimizer_a.step(self.generator.gradients())
        return out

    # ---- training ------------------------------------------------------------------------------------
    def fit(self, dataset: Any, *, epochs: int, batch_size: int = 32, merged: Optional[int] = None,
            val: Any = None, progress: bool = True, checkpoint: Optional[PathLike] = None) -> dict[str, list]:
        """Train A and B together for ``epochs`` more epochs.

        Every batch of real images (reshuffled each epoch from the object's Generator, the last
        short batch kept) is joined by ``merged`` samples of A: sample ``i`` merges k images of
        the class of the batch's image ``i % N`` (k distinct images drawn from the dataset, and a
        further one as the similarity target; with replacement when the class has k images or
        fewer). Calling ``fit`` twice, or resuming from a checkpoint, gives the same result as
        one uninterrupted call.

        Parameters
        ----------
        dataset : cnnkit.data.ArrayDataset
            float32 (N, C, H, W) images and int (N,) labels.
        epochs : int >= 0
            Epochs to train now.
        batch_size : int >= 1, default 32
            Real images per batch.
        merged : int >= 0, optional
            A's samples per batch; default as many as the batch's real images.
        val : cnnkit.data.ArrayDataset, optional
            Evaluated (B, eval mode) after every epoch: ``history["val_accuracy"]``.
        progress : bool, default True
            Show a tqdm bar.
        checkpoint : str or path, optional
            Written with :meth:`save` after every epoch.

        Returns
        -------
        dict
            :attr:`history` (all epochs so far, one entry per epoch per key).
        """
        from .. import data, train
        x_all, y_all = self._check_dataset("dataset", dataset)
        epochs = check_int("epochs", epochs, 0, "an int >= 0")
        batch_size = check_int("batch_size", batch_size, 1, "an int >= 1")
        merged = None if merged is None else check_int("merged", merged, 0, "None or an int >= 0")
        progress = check_bool("progress", progress)
        if val is not None:
            self._check_dataset("val", val)
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint: expected None, a str or a path, got {type(checkpoint).__name__}")
        if self.num_classes is not None and int(y_all.max()) >= self.num_classes:
            raise ValueError(f"dataset.labels: expected class indices below num_classes={self.num_classes}, got "
                             f"{int(y_all.max())}")
        pools = self._pools(y_all)
        loader = data.DataLoader(data.ArrayDataset(x_all, y_all), batch_size, shuffle=True, seed=self.rng)
        val_loader = None if val is None else data.DataLoader(val, 256, shuffle=False)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=epochs * len(loader), desc="smart augmentation", unit="batch", leave=False)
        t0 = time.perf_counter()
        self.generator.train()
        self.classifier.train()
        try:
            for _ in range(epochs):
                sums = dict.fromkeys(("loss_b", "similarity", "loss_a"), 0.0)
                n_real = n_merged = correct_real = correct_merged = steps = 0
                for x, y in loader:
                    m = len(x) if merged is None else merged
                    classes = y[np.arange(m) % len(x)]
                    gi, ti = self._draw_groups(self.rng, pools, classes)
                    out = self.step(x, y, x_all[gi], x_all[ti], classes)
                    for key in sums:
                        sums[key] += out[key]
                    steps += 1
                    correct_real += int(out["correct_real"])
                    correct_merged += int(out["correct_merged"])
                    n_real += len(x)
                    n_merged += m
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=self.epoch, loss_b=f"{out['loss_b']:.3f}",
                                        sim=f"{out['similarity']:.3f}")
                self.epoch += 1
                for key in sums:
                    self.history[key].append(sums[key] / max(steps, 1))
                self.history["train_accuracy"].append(correct_real / max(n_real, 1))
                self.history["merged_accuracy"].append(correct_merged / max(n_merged, 1))
                if val_loader is not None:
                    self.history["val_accuracy"].append(float(train.evaluate(self.classifier, val_loader)["accuracy"]))
                self.history["seconds"].append(time.perf_counter() - t0)
                if checkpoint is not None:
                    self.save(checkpoint)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    # ---- merged samples ------------------------------------------------------------------------------
    @accepts_dlpack
    def merge(self, groups: np.ndarray) -> np.ndarray:
        """A's merged images for groups of k images (A in eval mode; its mode is restored).

        Parameters
        ----------
        groups : float32 or float64 ndarray, (N, k, C, H, W) or one group (k, C, H, W)
            Images of one class per group (any class: A does not see labels).

        Returns
        -------
        ndarray, (N, C, H, W) or (C, H, W)
            A new array of the input images' shape and the input's dtype (computed in float32).

        Examples
        --------
        >>> import numpy as np
        >>> from cnnkit import augment
        >>> sa = augment.SmartAugmentation(num_classes=10, seed=0)
        >>> z = sa.merge(np.zeros((3, 2, 1, 8, 8)))  # 3 groups of k=2 images, float64
        >>> z.shape, z.dtype
        ((3, 1, 8, 8), dtype('float64'))
        """
        check_array("groups", groups, dtypes=_FLOATS, ndim=(4, 5), what="(N, k, C, H, W) or (k, C, H, W)")
        single = groups.ndim == 4
        g = groups[None] if single else groups
        self._check_images("groups", np.ascontiguousarray(g, dtype=np.float32), ndim=5)
        a_in = np.ascontiguousarray(g.reshape((len(g), self.k * self.in_channels) + g.shape[3:]), dtype=np.float32)
        was = self.generator.training
        self.generator.eval()
        try:
            z = self.generator.forward(a_in).astype(groups.dtype, copy=True)
        finally:
            self.generator.train(was)
        return z[0] if single else z

    def sample(self, dataset: Any, n: int = 8, *, classes: Any = None, seed: Any = None) -> tuple:
        """Draw ``n`` groups of k same-class images from ``dataset`` and merge them with A, for
        inspection (the training Generator is not touched).

        Parameters
        ----------
        dataset : cnnkit.data.ArrayDataset
            float32 (N, C, H, W) images and int (N,) labels.
        n : int >= 1, default 8
            Groups to draw.
        classes : int or sequence of int, optional
            The classes to draw from, cycled (default: every class in the dataset, cycled).
        seed : int, SeedSequence, Generator or None, default None
            The draws' seed.

        Returns
        -------
        (ndarray, ndarray, ndarray)
            ``inputs`` float32 (n, k, C, H, W), ``merged`` float32 (n, C, H, W) and ``labels``
            int64 (n,).
        """
        x_all, y_all = self._check_dataset("dataset", dataset)
        n = check_int("n", n, 1, "an int >= 1")
        pools = self._pools(y_all)
        if classes is None:
            cls = np.array(sorted(pools), dtype=np.int64)
        else:
            raw = [classes] if isinstance(classes, (int, np.integer)) else classes
            if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
                raise TypeError(f"classes: expected None, an int or a sequence of ints, got {type(classes).__name__}")
            cls = np.array([check_int("classes", c, 0, "class indices >= 0") for c in raw], dtype=np.int64)
            if cls.size == 0:
                raise ValueError("classes: expected at least one class, got none")
            missing = [int(c) for c in cls if int(c) not in pools]
            if missing:
                raise ValueError(f"classes: expected classes present in the dataset, got {missing[0]} (absent)")
        rng = np.random.default_rng(check_seed("seed", seed))
        labels = cls[np.arange(n) % cls.size]
        gi, _ = self._draw_groups(rng, pools, labels)
        inputs = np.ascontiguousarray(x_all[gi])
        return inputs, self.merge(inputs), labels

    # ---- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything training depends on, as flat arrays (no pickling): both networks
        (``generator/…``, ``classifier/…``), both optimizers (``optimizer_a/…``,
        ``optimizer_b/…``, :func:`cnnkit.optim.flatten_state_dict` form) and ``meta`` (JSON:
        ``k``, ``alpha``, ``beta``, ``epoch``, the Generator's state, :attr:`history`).

        Returns
        -------
        dict of str to ndarray
        """
        from ..optim import flatten_state_dict
        out: dict[str, np.ndarray] = {}
        out.update({f"generator/{k}": v for k, v in self.generator.state_dict().items()})
        out.update({f"classifier/{k}": v for k, v in self.classifier.state_dict().items()})
        out.update({f"optimizer_a/{k}": v for k, v in flatten_state_dict(self.optimizer_a.state_dict()).items()})
        out.update({f"optimizer_b/{k}": v for k, v in flatten_state_dict(self.optimizer_b.state_dict()).items()})
        meta = {"k": self.k, "alpha": self.alpha, "beta": self.beta, "epoch": self.epoch,
                "rng": self.rng.bit_generator.state, "history": self.history}
        out["meta"] = np.array(json.dumps(meta))
        return out

    def load_state_dict(self, state: Any) -> SmartAugmentation:
        """Restore :meth:`state_dict` (or an ``np.load`` of :meth:`save`'s file). ``k``, ``alpha``
        and ``beta`` must match this object's; the networks and optimizers must have the saved
        shapes.

        Parameters
        ----------
        state : mapping of str to ndarray

        Returns
        -------
        SmartAugmentation
            ``self``.

        Raises
        ------
        TypeError, ValueError
            Not a state of this kind, or one of other settings or shapes.
        """
        if not hasattr(state, "keys") or "meta" not in state:
            raise TypeError(f"state: expected the mapping from SmartAugmentation.state_dict(), got "
                            f"{type(state).__name__}")
        meta = json.loads(str(np.asarray(state["meta"])))
        for key in ("k", "alpha", "beta"):
            if meta.get(key) != getattr(self, key):
                raise ValueError(f"state: saved with {key}={meta.get(key)!r}, this object has "
                                 f"{key}={getattr(self, key)!r}")

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: np.asarray(state[k]) for k in state.keys() if k.startswith(prefix)}

        self.generator.load_state_dict(part("generator/"))
        self.classifier.load_state_dict(part("classifier/"))
        self.optimizer_a.load_state_dict(part("optimizer_a/"))
        self.optimizer_b.load_state_dict(part("optimizer_b/"))
        self.rng.bit_generator.state = meta["rng"]
        self.epoch = int(meta["epoch"])
        self.history = {key: list(meta["history"].get(key, [])) for key in _HISTORY}
        return self

    def save(self, path: PathLike) -> None:
        """Write :meth:`state_dict` to an ``.npz`` file.

        Parameters
        ----------
        path : str or path
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or path, got {type(path).__name__}")
        np.savez(path, **self.state_dict())  # type: ignore[arg-type]  # numpy's stub types the keywords as allow_pickle

    def load(self, path: PathLike) -> SmartAugmentation:
        """Read a file written by :meth:`save` (:meth:`load_state_dict`).

        Parameters
        ----------
        path : str or path

        Returns
        -------
        SmartAugmentation
            ``self``.

        Examples
        --------
        >>> import os, tempfile
        >>> from cnnkit import augment
        >>> sa = augment.SmartAugmentation(num_classes=10, seed=0)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     sa.save(os.path.join(d, "sa.npz"))
        ...     augment.SmartAugmentation(num_classes=10, seed=1).load(os.path.join(d, "sa.npz")).epoch
        0
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or path, got {type(path).__name__}")
        with np.load(path, allow_pickle=False) as f:
            return self.load_state_dict({k: f[k] for k in f.files})


_HISTORY = ("loss_b", "similarity", "loss_a", "train_accuracy", "merged_accuracy", "val_accuracy", "seconds")
