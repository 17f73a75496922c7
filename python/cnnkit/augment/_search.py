"""AutoAugment-style policy search on a proxy task: :func:`search_policy`.

A *policy* is a table of sub-policies, each two ``(op, probability, magnitude_bin)`` entries over
AutoAugment's 14-op space (:data:`cnnkit.augment._policy.AUTOAUGMENT_OPS`), probabilities from
11 values ``0.0, 0.1, ..., 1.0`` and magnitude bins 0..9 (None for AutoContrast, Equalize and
Invert), the form of the published tables (:data:`cnnkit.augment.POLICIES`), so a found policy
goes straight into ``AutoAugment(policy=...)``.

Three methods, each given ``budget`` child models to train:

* ``"reinforce"``: a :class:`PolicyController` (an independent softmax per decision: per
  sub-policy slot the op, the probability bin and the magnitude bin) samples a policy; a small
  proxy CNN trains briefly with it (:func:`evaluate_policy`) and its validation accuracy is the
  reward; the controller takes one REINFORCE step with a moving-average baseline.
* ``"random"``: the same sampler with the logits frozen at zero: uniform policies.
* ``"randaugment_grid"``: RandAugment's two numbers ``(N, M)`` on a grid.

Differences from AutoAugment (Cubuk et al., 2019), which searched with a one-layer LSTM
controller (100 hidden units) emitting the 30 decisions of a 5-sub-policy policy
autoregressively, trained with PPO (learning rate 0.00035, entropy penalty 1e-5) on 15,000 child
Wide-ResNet-40-2 models, each trained 120 epochs on 4,000 CIFAR-10 images:

* the controller here is factorized: every decision has its own logits and is independent of
  the others (no autoregression, so it cannot learn that one op goes well with another);
* the update is plain REINFORCE (one Adam step on ``(R - b) * grad log p``, b an exponential
  moving average of the rewards, plus a small entropy bonus) after every child, not PPO's
  clipped surrogate over batches of children;
* the budget is tens of children, each a two-convolution CNN trained for a few seconds on a few
  hundred images; the op space is torchvision's 14 ops (the paper also had Cutout and
  SamplePairing);
* as in the paper, the returned policy concatenates the ``top_k`` best policies sampled (5
  policies of 5 sub-policies: 25 sub-policies, the size of the published tables); "random"
  returns the same selection from its uniform samples, so the two differ only in how the
  policies were sampled.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from .._validate import accepts_dlpack, check_bool, check_choice, check_int, check_real, check_seed
from ._policy import _AUTOAUGMENT_BINS, _NO_MAGNITUDE, AUTOAUGMENT_OPS, PolicyTable, _as_table

__all__ = ["METHODS", "PROBABILITY_BINS", "ProxyConfig", "PolicyController", "evaluate_policy", "search_policy",
           "randaugment_grid", "uniform_entropy"]

#: The search methods of :func:`search_policy`.
METHODS = ("reinforce", "random", "randaugment_grid")
#: The 11 probabilities a searched entry can take (AutoAugment's discretization).
PROBABILITY_BINS = tuple(i / 10 for i in range(11))
_NEEDS_MAG = np.array([op not in _NO_MAGNITUDE for op in AUTOAUGMENT_OPS])
_RA_BINS = 31  # torchvision's RandAugment default num_magnitude_bins


# --------------------------------------------------------------------------------------------
# the proxy child
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """How a child model is built and trained (:func:`evaluate_policy`).

    Attributes
    ----------
    epochs : int, default 15
        Training epochs (SGD with momentum, cosine-annealed learning rate).
    batch_size : int, default 32
        Mini-batch size (the last short batch is dropped: batch norm).
    lr : float, default 0.1
        Initial learning rate.
    momentum : float, default 0.9
    weight_decay : float, default 5e-4
    widths : tuple of int, default (16, 32)
        Channels of the default network's two 3x3 convolutions (each with batch norm and ReLU,
        2x2 max pooling between them, then global average pooling and a linear classifier).
    build : callable, optional
        ``build(seed, in_channels, num_classes) -> cnnkit.nn.Module`` replaces the default
        network (it must return logits).
    """

    epochs: int = 15
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    widths: tuple = (16, 32)
    build: Optional[Callable[[int, int, int], Any]] = None

    def __post_init__(self) -> None:
        _check_proxy(self)


def _proxy(proxy: Any) -> ProxyConfig:
    if proxy is None:
        return ProxyConfig()
    if isinstance(proxy, ProxyConfig):
        cfg = proxy
    elif isinstance(proxy, Mapping):
        names = {f.name for f in dataclasses.fields(ProxyConfig)}
        unknown = sorted(set(proxy) - names)
        if unknown:
            raise ValueError(f"proxy: unknown keys {unknown} (expected some of {sorted(names)})")
        cfg = ProxyConfig(**proxy)
    else:
        raise TypeError(f"proxy: expected None, a ProxyConfig or a dict of its fields, got {type(proxy).__name__}")
    return cfg  # validated on construction


def _check_proxy(cfg: ProxyConfig) -> None:
    """Validate every field of a ProxyConfig (its ``__post_init__``)."""
    check_int("proxy.epochs", cfg.epochs, 0, "an int >= 0")
    check_int("proxy.batch_size", cfg.batch_size, 2, "an int >= 2")
    check_real("proxy.lr", cfg.lr, lo=0.0, lo_open=True)
    check_real("proxy.momentum", cfg.momentum, lo=0.0, hi=1.0)
    check_real("proxy.weight_decay", cfg.weight_decay, lo=0.0)
    if not isinstance(cfg.widths, (tuple, list)):
        raise TypeError(f"proxy.widths: expected a non-empty tuple of ints, got {type(cfg.widths).__name__}")
    if len(cfg.widths) == 0:
        raise ValueError(f"proxy.widths: expected a non-empty tuple of ints, got {cfg.widths!r}")
    for w in cfg.widths:
        check_int("proxy.widths", w, 1, "positive ints")
    if cfg.build is not None and not callable(cfg.build):
        raise TypeError(f"proxy.build: expected None or a callable, got {type(cfg.build).__name__}")


def _default_net(seed: int, in_channels: int, num_classes: int, widths: Sequence[int]) -> Any:
    from .. import nn
    rng = np.random.default_rng(seed)
    layers: list = []
    c = in_channels
    for i, w in enumerate(widths):
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.Conv2d(c, int(w), 3, 1, 1, bias=False, rng=rng), nn.BatchNorm2d(int(w), activation="relu")]
        c = int(w)
    layers += [nn.GlobalAvgPool2d(), nn.Linear(c, num_classes, rng=rng)]
    return nn.Sequential(*layers)


def _dataset(name: str, ds: Any) -> Any:
    from .. import data
    from .._validate import check_u8_images
    if not isinstance(ds, data.ArrayDataset):
        raise TypeError(f"{name}: expected a cnnkit.data.ArrayDataset of uint8 NHWC images, got {type(ds).__name__}")
    check_u8_images(f"{name}.images", ds.images, colour=True)
    if ds.images.ndim != 4 or len(ds) < 2:
        raise ValueError(f"{name}: expected at least 2 uint8 (N, H, W, C) images, got shape {ds.images.shape}")
    if ds.labels.ndim != 1:
        raise ValueError(f"{name}.labels: expected int class labels (N,), got shape {ds.labels.shape}")
    return ds


def _augmenter(policy: Any, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 NHWC batch -> float32 NCHW in [0, 1], through the policy's augmentation."""
    from . import functional as F
    from .transforms import AutoAugment, RandAugment
    if policy is None:
        return lambda x: F.to_float_normalize(x)
    t: Any
    if isinstance(policy, Mapping):
        t = RandAugment(**dict(policy), seed=seed)
    else:
        t = AutoAugment(policy=policy, seed=seed)
    return lambda x: F.to_float_normalize(t(x))


def _check_policy_arg(policy: Any) -> Any:
    if policy is None:
        return None
    if isinstance(policy, Mapping):
        from .transforms import RandAugment
        try:
            RandAugment(**dict(policy))
        except TypeError as e:
            raise TypeError(f"policy: expected RandAugment's keyword arguments, got {dict(policy)!r} ({e})") from None
        return dict(policy)
    return policy if isinstance(policy, str) else _as_table(policy)


def evaluate_policy(policy: Any, train: Any, val: Any, *, proxy: Any = None, seed: int = 0) -> float:
    """Train a fresh child model with an augmentation policy and return its validation accuracy
    (the search's reward; with a larger ``proxy`` also the way to test a found policy).

    The child (``proxy.build`` or the default two-convolution CNN, initialized from ``seed``)
    trains with SGD (momentum, weight decay, cosine-annealed learning rate) on ``train``, each
    batch augmented by the policy and scaled to [0, 1]; ``val`` is scaled to [0, 1] without
    augmentation. The seed also sets the batch order and the augmentation's draws, so the same
    seed gives the same number.

    Parameters
    ----------
    policy : None, str, sequence of sub-policies, or dict
        None: no augmentation; a published name or a policy table: ``AutoAugment(policy=...)``;
        a dict: ``RandAugment(**policy)`` (what ``method="randaugment_grid"`` returns).
    train, val : cnnkit.data.ArrayDataset
        uint8 NHWC images (``load_digits(as_uint8=True)``), int labels.
    proxy : ProxyConfig or dict, optional
        The child and its training (default ``ProxyConfig()``).
    seed : int >= 0, default 0
        Initialization, batch order and augmentation.

    Returns
    -------
    float
        The validation accuracy, in [0, 1].

    Examples
    --------
    >>> from cnnkit import data
    >>> from cnnkit.augment._search import evaluate_policy
    >>> ds = data.load_digits(as_uint8=True)
    >>> acc = evaluate_policy("cifar10", ds.subset(slice(0, 64)), ds.subset(slice(64, 128)),
    ...                       proxy={"epochs": 1, "widths": (4,)}, seed=0)
    >>> 0.0 <= acc <= 1.0
    True
    """
    from .. import data, optim, train as _train
    from . import functional as F
    policy = _check_policy_arg(policy)
    train = _dataset("train", train)
    val = _dataset("val", val)
    cfg = _proxy(proxy)
    seed = check_int("seed", seed, 0, "an int >= 0")
    C = int(train.images.shape[-1])
    K = int(max(train.labels.max(), val.labels.max())) + 1
    model = cfg.build(seed, C, K) if cfg.build is not None else _default_net(seed, C, K, cfg.widths)
    opt = optim.SGD(model.parameters(), lr=float(cfg.lr), momentum=float(cfg.momentum),
                    weight_decay=float(cfg.weight_decay))
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, max(int(cfg.epochs), 1))
    loader = data.DataLoader(train, min(int(cfg.batch_size), len(train)), seed=seed, augment=_augmenter(policy, seed),
                             drop_last=True)
    _train.fit(model, opt, loader, epochs=int(cfg.epochs), scheduler=sched, progress=False)
    val_loader = data.DataLoader(data.ArrayDataset(F.to_float_normalize(val.images), val.labels), 512, shuffle=False)
    return float(_train.evaluate(model, val_loader)["accuracy"])


# --------------------------------------------------------------------------------------------
# the controller
# --------------------------------------------------------------------------------------------
def _check_choice(choice: Any, S: Optional[int] = None) -> np.ndarray:
    """``choice`` as an int array (S, 2, 3) of in-range indices (op, probability bin, magnitude
    bin per slot); ``S`` checked when given."""
    want = f"an int array of shape ({'S' if S is None else S}, 2, 3)"
    if not isinstance(choice, (np.ndarray, list, tuple)):
        raise TypeError(f"choice: expected {want}, got {type(choice).__name__}")
    c = np.asarray(choice)
    if c.dtype.kind not in "iu":
        raise TypeError(f"choice: expected {want}, got dtype {c.dtype}")
    if c.ndim != 3 or c.shape[1:] != (2, 3) or (S is not None and c.shape[0] != S):
        raise ValueError(f"choice: expected {want}, got shape {c.shape}")
    for k, n in enumerate((len(AUTOAUGMENT_OPS), len(PROBABILITY_BINS), _AUTOAUGMENT_BINS)):
        if c.size and (c[..., k].min() < 0 or c[..., k].max() >= n):
            raise ValueError(f"choice: expected indices in [0, {n}) in column {k}, got "
                             f"{int(c[..., k].min())}..{int(c[..., k].max())}")
    return c


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class PolicyController:
    """A factorized categorical distribution over policies, trained with REINFORCE.

    For each of ``num_sub_policies`` sub-policies and each of its two slots, three independent
    softmax distributions: over the 14 ops (:data:`cnnkit.augment._policy.AUTOAUGMENT_OPS`), the
    11 probabilities ``0.0, ..., 1.0`` and the 10 magnitude bins. All logits start at zero (the
    uniform distribution). A sampled policy's log-probability is the sum of its decisions'
    log-probabilities; the magnitude of an op without one (AutoContrast, Equalize, Invert) is
    still sampled (and recorded in ``choice``) but is not part of the policy, so it is left out
    of the log-probability and its gradient.

    :meth:`update` takes one REINFORCE step, ascending
    ``(R - b) * grad log p(choice) + entropy_weight * grad H``, with Adam
    (:class:`cnnkit.optim.Adam`, ``maximize=True``); the baseline ``b`` is an exponential moving
    average of the rewards (``b <- d*b + (1 - d)*R``, starting at the first reward, whose
    advantage is therefore 0).

    Parameters
    ----------
    num_sub_policies : int >= 1, default 5
        Sub-policies per sampled policy (AutoAugment: 5).
    lr : float > 0, default 0.05
        Adam's learning rate on the logits.
    baseline_decay : float in [0, 1), default 0.8
        ``d``, the moving average's decay.
    entropy_weight : float >= 0, default 1e-5
        Weight of the entropy bonus (AutoAugment's value).
    learn : bool, default True
        False freezes the logits at zero: :meth:`update` only tracks the baseline (the
        ``"random"`` search).
    seed : int, SeedSequence or None, default None
        Seeds the sampling Generator.

    Attributes
    ----------
    logits : dict of str to ndarray
        ``"op"`` (S, 2, 14), ``"probability"`` (S, 2, 11), ``"magnitude"`` (S, 2, 10), float64.
    baseline : float or None
        The moving average of the rewards (None before the first update).
    rng : numpy.random.Generator
        The sampling Generator.

    Examples
    --------
    >>> from cnnkit.augment import PolicyController
    >>> ctrl = PolicyController(2, seed=0)
    >>> policy, choice = ctrl.sample()
    >>> len(policy), len(policy[0]), choice.shape
    (2, 2, (2, 2, 3))
    >>> info = ctrl.update(choice, 0.5)
    >>> sorted(info)
    ['advantage', 'baseline', 'entropy', 'reward']
    """

    def __init__(self, num_sub_policies: int = 5, *, lr: float = 0.05, baseline_decay: float = 0.8,
                 entropy_weight: float = 1e-5, learn: bool = True, seed: Any = None) -> None:
        from .. import optim
        S = check_int("num_sub_policies", num_sub_policies, 1, "an int >= 1")
        self.lr = check_real("lr", lr, lo=0.0, lo_open=True)
        self.baseline_decay = check_real("baseline_decay", baseline_decay, lo=0.0, hi=1.0, hi_open=True)
        self.entropy_weight = check_real("entropy_weight", entropy_weight, lo=0.0)
        self.learn = check_bool("learn", learn)
        self.num_sub_policies = S
        self.logits = {"op": np.zeros((S, 2, len(AUTOAUGMENT_OPS))),
                       "probability": np.zeros((S, 2, len(PROBABILITY_BINS))),
                       "magnitude": np.zeros((S, 2, _AUTOAUGMENT_BINS))}
        self.baseline: Optional[float] = None
        self.rng = np.random.default_rng(check_seed("seed", seed))
        self._opt = optim.Adam(list(self.logits.values()), lr=self.lr, maximize=True)

    # ---- distribution --------------------------------------------------------------------
    def probabilities(self) -> dict[str, np.ndarray]:
        """The softmax of every logit table.

        Returns
        -------
        dict of str to ndarray
            Same keys and shapes as :attr:`logits`; each last axis sums to 1 (float64).
        """
        return {k: _softmax(v) for k, v in self.logits.items()}

    def entropy(self) -> float:
        """The entropy of the policy distribution, in nats: the sum over every decision (op,
        probability and magnitude of every slot; the magnitude counted for every op).

        Returns
        -------
        float
            At initialization ``2 S (ln 14 + ln 11 + ln 10)``.
        """
        return float(sum(-(p * np.log(p)).sum() for p in self.probabilities().values()))

    def sample(self) -> tuple[PolicyTable, np.ndarray]:
        """Draw one policy.

        Returns
        -------
        policy : tuple of tuples
            ``num_sub_policies`` sub-policies of two ``(op, probability, magnitude_bin)``.
        choice : int64 ndarray (S, 2, 3)
            The indices drawn: op, probability bin, magnitude bin (also for ops without one).
        """
        S = self.num_sub_policies
        choice = np.empty((S, 2, 3), dtype=np.int64)
        for k, (key, p) in enumerate(self.probabilities().items()):
            c = p.cumsum(axis=-1)
            u = self.rng.random((S, 2, 1))
            choice[..., k] = np.minimum((u >= c).sum(axis=-1), p.shape[-1] - 1)
        return self.policy_of(choice), choice

    @staticmethod
    @accepts_dlpack
    def policy_of(choice: np.ndarray) -> PolicyTable:
        """The policy table a ``choice`` array stands for.

        Parameters
        ----------
        choice : int ndarray (S, 2, 3)
            Op index, probability bin, magnitude bin per slot.

        Returns
        -------
        tuple of tuples
            The table (magnitude None for ops without one).
        """
        c = _check_choice(choice)
        out = []
        for sub in c:
            out.append(tuple((AUTOAUGMENT_OPS[o], PROBABILITY_BINS[p], int(m) if _NEEDS_MAG[o] else None)
                             for o, p, m in sub.tolist()))
        return tuple(out)

    def mode(self) -> PolicyTable:
        """The most likely policy (the argmax of every decision).

        Returns
        -------
        tuple of tuples
            A policy table.
        """
        choice = np.stack([np.argmax(v, axis=-1) for v in self.logits.values()], axis=-1)
        return self.policy_of(choice)

    @accepts_dlpack
    def log_prob(self, choice: np.ndarray) -> float:
        """``log p(choice)`` (magnitudes of ops without one left out).

        Parameters
        ----------
        choice : int ndarray (S, 2, 3)

        Returns
        -------
        float
        """
        choice = _check_choice(choice, self.num_sub_policies)
        lp = 0.0
        for k, p in enumerate(self.probabilities().values()):
            logp = np.log(np.take_along_axis(p, choice[..., k:k + 1], axis=-1))[..., 0]
            if k == 2:
                logp = np.where(_NEEDS_MAG[choice[..., 0]], logp, 0.0)
            lp += float(logp.sum())
        return lp

    @accepts_dlpack
    def grad_log_prob(self, choice: np.ndarray) -> list[np.ndarray]:
        """The gradient of :meth:`log_prob` with respect to each logit table:
        ``onehot(choice) - softmax(logits)`` per decision.

        Parameters
        ----------
        choice : int ndarray (S, 2, 3)

        Returns
        -------
        list of ndarray
            One array per :attr:`logits` table (same order and shapes), float64.
        """
        choice = _check_choice(choice, self.num_sub_policies)
        grads = []
        for k, p in enumerate(self.probabilities().values()):
            g = -p
            np.put_along_axis(g, choice[..., k:k + 1], np.take_along_axis(g, choice[..., k:k + 1], axis=-1) + 1.0,
                              axis=-1)
            if k == 2:
                g = g * _NEEDS_MAG[choice[..., 0]][..., None]
            grads.append(g)
        return grads

    def grad_entropy(self) -> list[np.ndarray]:
        """The gradient of :meth:`entropy` with respect to each logit table:
        ``-p * (log p + H)`` per softmax, H its entropy.

        Returns
        -------
        list of ndarray
            One array per :attr:`logits` table.
        """
        out = []
        for p in self.probabilities().values():
            logp = np.log(p)
            H = -(p * logp).sum(axis=-1, keepdims=True)
            out.append(-p * (logp + H))
        return out

    @accepts_dlpack
    def update(self, choice: np.ndarray, reward: float) -> dict[str, float]:
        """One REINFORCE step for a sampled ``choice`` that earned ``reward``.

        Parameters
        ----------
        choice : int ndarray (S, 2, 3)
            From :meth:`sample`.
        reward : float
            The child's reward (validation accuracy).

        Returns
        -------
        dict of str to float
            ``reward``, ``advantage`` (``R - b`` with the baseline before the step),
            ``baseline`` (after) and ``entropy`` (after the step).
        """
        choice = _check_choice(choice, self.num_sub_policies)
        r = check_real("reward", reward)
        advantage = 0.0 if self.baseline is None else r - self.baseline
        self.baseline = r if self.baseline is None else (self.baseline_decay * self.baseline
                                                         + (1.0 - self.baseline_decay) * r)
        if self.learn:
            grads = [advantage * g + self.entropy_weight * h
                     for g, h in zip(self.grad_log_prob(choice), self.grad_entropy())]
            self._opt.step(grads)
        return {"reward": r, "advantage": float(advantage), "baseline": float(self.baseline),
                "entropy": self.entropy()}


# --------------------------------------------------------------------------------------------
# the search
# --------------------------------------------------------------------------------------------
def randaugment_grid(budget: int) -> list[tuple[int, int]]:
    """The ``(N, M)`` pairs ``method="randaugment_grid"`` evaluates with ``budget`` children:
    ``N`` in (1, 2, 3) and ``max(1, budget // 3)`` magnitudes spread evenly over torchvision's
    31 bins (0..30; 15 alone), magnitude-major, cut to ``budget`` pairs.

    Parameters
    ----------
    budget : int >= 1

    Returns
    -------
    list of (int, int)
        ``(num_ops, magnitude)`` pairs.

    Examples
    --------
    >>> from cnnkit.augment._search import randaugment_grid
    >>> randaugment_grid(6)
    [(1, 0), (2, 0), (3, 0), (1, 30), (2, 30), (3, 30)]
    """
    budget = check_int("budget", budget, 1, "an int >= 1")
    k = max(1, budget // 3)
    mags = [15] if k == 1 else sorted({int(round(v)) for v in np.linspace(0, _RA_BINS - 1, k)})
    return [(n, m) for m in mags for n in (1, 2, 3)][:budget]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


def _top_k(history: list[dict[str, Any]], k: int) -> PolicyTable:
    order = sorted(range(len(history)), key=lambda i: (-history[i]["reward"], i))[:k]
    return tuple(sub for i in order for sub in history[i]["policy"])


def search_policy(train: Any, val: Any, *, method: str = "reinforce", budget: int = 40, proxy: Any = None,
                  seed: int = 0, num_sub_policies: int = 5, top_k: int = 5,
                  controller: Optional[Mapping[str, Any]] = None,
                  reward_fn: Optional[Callable[[Any], float]] = None,
                  progress: bool = True) -> tuple[Union[PolicyTable, dict[str, int]], list[dict[str, Any]]]:
    """Search an augmentation policy on a proxy task (AutoAugment's idea, on a CPU in minutes).

    Every method trains ``budget`` children (:func:`evaluate_policy`: a small CNN trained
    briefly on ``train`` with the candidate, its accuracy on ``val`` is the reward). Child ``i``
    of every method uses the same training seed, so the methods differ only in the candidates.
    With the same ``seed``, "reinforce" and "random" also sample from the same stream of random
    numbers (common random numbers): their first candidates coincide and they part only as the
    controller's distribution moves away from uniform, so a difference between them is due to
    the learning, not to luck in sampling.

    * ``"reinforce"``: a :class:`PolicyController` samples each candidate (``num_sub_policies``
      sub-policies) and takes a REINFORCE step on its reward. Returns the concatenation of the
      ``top_k`` best candidates (AutoAugment: the best 5 policies of 5 sub-policies).
    * ``"random"``: the same sampler, uniform (never updated); the same ``top_k`` selection.
    * ``"randaugment_grid"``: RandAugment's ``(N, M)`` on :func:`randaugment_grid` ``(budget)``;
      returns the best as a dict ``{"num_ops": N, "magnitude": M, "num_magnitude_bins": 31}``,
      ready for ``RandAugment(**policy)`` (uniform ops at one magnitude are not an AutoAugment
      table: RandAugment includes Identity, has no Invert, and applies N ops, not two).

    See the module docstring (:mod:`cnnkit.augment._search`) for how this differs from
    AutoAugment's LSTM controller trained with PPO.

    Parameters
    ----------
    train, val : cnnkit.data.ArrayDataset or None
        The proxy task: uint8 NHWC images and int labels (``val`` gives the reward). May be None
        with ``reward_fn``.
    method : {"reinforce", "random", "randaugment_grid"}, default "reinforce"
    budget : int >= 1, default 40
        Child models trained.
    proxy : ProxyConfig or dict, optional
        The child and its training (default ``ProxyConfig()``: 15 epochs of a 16/32-channel CNN).
    seed : int >= 0, default 0
        Seeds the controller's sampling and the children; same seed, same result.
    num_sub_policies : int >= 1, default 5
        Sub-policies per candidate.
    top_k : int >= 1, default 5
        Candidates concatenated into the returned policy.
    controller : dict, optional
        Keyword arguments of :class:`PolicyController` (``lr``, ``baseline_decay``,
        ``entropy_weight``).
    reward_fn : callable, optional
        ``reward_fn(candidate) -> float`` replaces the child training (tests, or a custom
        reward); ``train``, ``val`` and ``proxy`` are then unused.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    policy : tuple of tuples, or dict
        A policy table of ``top_k * num_sub_policies`` sub-policies (``AutoAugment(policy=...)``),
        or for "randaugment_grid" the RandAugment arguments (above).
    history : list of dict
        One dict per child, in order: ``child`` (index), ``policy`` (the candidate), ``reward``
        (float); for "reinforce"/"random" also the controller's state after the child:
        ``advantage``, ``baseline``, ``entropy`` (nats) and ``op_probabilities`` (14 floats: the
        op distribution averaged over slots, in ``AUTOAUGMENT_OPS`` order).

    Examples
    --------
    >>> from cnnkit import augment
    >>> toy = lambda p: sum(op == "Rotate" for sub in p for op, _, _ in sub) / 10
    >>> policy, history = augment.search_policy(None, None, budget=20, reward_fn=toy, seed=0,
    ...                                         top_k=2, progress=False)
    >>> len(policy), len(history), sorted(history[0])
    (10, 20, ['advantage', 'baseline', 'child', 'entropy', 'op_probabilities', 'policy', 'reward'])
    """
    method = check_choice("method", method, METHODS)
    budget = check_int("budget", budget, 1, "an int >= 1")
    seed = check_int("seed", seed, 0, "an int >= 0")
    S = check_int("num_sub_policies", num_sub_policies, 1, "an int >= 1")
    top_k = check_int("top_k", top_k, 1, "an int >= 1")
    progress = check_bool("progress", progress)
    if reward_fn is not None and not callable(reward_fn):
        raise TypeError(f"reward_fn: expected None or a callable, got {type(reward_fn).__name__}")
    if controller is not None and not isinstance(controller, Mapping):
        raise TypeError(f"controller: expected None or a dict of PolicyController arguments, "
                        f"got {type(controller).__name__}")
    if reward_fn is None:
        train, val = _dataset("train", train), _dataset("val", val)
        cfg = _proxy(proxy)
    else:  # unused with reward_fn, but what is given must still be valid
        for name, ds in (("train", train), ("val", val)):
            if ds is not None:
                _dataset(name, ds)
        _proxy(proxy)
    child_seeds = [int(s) for s in np.random.SeedSequence([seed, 0x5EA]).generate_state(budget, dtype=np.uint32)]

    def reward(candidate: Any, i: int) -> float:
        if reward_fn is not None:
            r = reward_fn(candidate)
            return check_real("reward_fn", r)
        return evaluate_policy(candidate, train, val, proxy=cfg, seed=child_seeds[i] % (2 ** 31))

    history: list[dict[str, Any]] = []
    bar = _bar(budget, f"policy search ({method})", progress)
    try:
        if method == "randaugment_grid":
            for i, (n, m) in enumerate(randaugment_grid(budget)):
                config = {"num_ops": n, "magnitude": m, "num_magnitude_bins": _RA_BINS}
                history.append({"child": i, "policy": config, "reward": reward(config, i)})
                bar.update(1)
                bar.set_postfix(best=max(h["reward"] for h in history))
            best = max(range(len(history)), key=lambda j: (history[j]["reward"], -j))
            return dict(history[best]["policy"]), history
        ctrl = PolicyController(S, seed=np.random.SeedSequence([seed, 0xC7]), learn=method == "reinforce",
                                **dict(controller or {}))
        for i in range(budget):
            cand, choice = ctrl.sample()
            r = reward(cand, i)
            info = ctrl.update(choice, r)
            history.append({"child": i, "policy": cand, "reward": info["reward"], "advantage": info["advantage"],
                            "baseline": info["baseline"], "entropy": info["entropy"],
                            "op_probabilities": ctrl.probabilities()["op"].mean(axis=(0, 1)).tolist()})
            bar.update(1)
            bar.set_postfix(reward=f"{r:.3f}", baseline=f"{info['baseline']:.3f}")
        return _top_k(history, top_k), history
    finally:
        bar.close()


def uniform_entropy(num_sub_policies: int) -> float:
    """The entropy (nats) of the uniform policy distribution: ``2 S (ln 14 + ln 11 + ln 10)``.

    Parameters
    ----------
    num_sub_policies : int >= 1

    Returns
    -------
    float
    """
    S = check_int("num_sub_policies", num_sub_policies, 1, "an int >= 1")
    return 2 * S * (math.log(len(AUTOAUGMENT_OPS)) + math.log(len(PROBABILITY_BINS)) + math.log(_AUTOAUGMENT_BINS))
