"""Automatic augmentation policies (AutoAugment, RandAugment, TrivialAugmentWide, AugMix) and the
random-parameter samplers of the geometric / colour transform classes.

Every sampler draws from a ``numpy.random.Generator`` and returns a dict of per-image arrays; the
images are then changed by deterministic batched functions of :mod:`cnnkit.augment.functional`.
The policy samplers return ``{"ops": (N, K) int64, "magnitudes": (N, K) float64}``: codes into
``functional.OPS`` and magnitudes in torchvision's ``autoaugment._apply_op`` convention, ready for
``functional.apply_ops(images, ops, magnitudes)``. An op that is not applied is ``Identity``
(code 0, magnitude 0).

Semantics follow torchvision (``torchvision.transforms.autoaugment``, v0.28):

* Magnitude bins are torchvision's ``_augmentation_space`` values, computed in float32 the way
  torch's CPU ``linspace`` kernel computes them (``start + step*i`` for the first half and
  ``end - step*(steps-1-i)`` for the second, each with one rounding, as the fused multiply-add
  torch's kernel uses), then returned as Python floats; Posterize bins are ints
  (``top - round_half_even(float32(i) / float32((bins - 1) / d))``). With a single bin torch
  divides 0 by 0 for Posterize; here the one bin is the first bin's value (8, or 4 for AugMix).
* Signed ops (shear, translate, rotate, brightness, colour, contrast, sharpness) get a negative
  magnitude with probability 1/2.
* AutoAugment: one of the policy's 25 sub-policies uniformly per image; each of its two ops is
  applied with its probability (``u < p``, u uniform in [0, 1)); magnitudes from 10 bins.
* RandAugment: ``num_ops`` ops drawn uniformly (with replacement) from the 14-op space (Identity
  included, Invert not), all at bin ``magnitude`` of ``num_magnitude_bins``.
* TrivialAugmentWide: one op uniformly from the wide 14-op space, its bin uniformly.
* AugMix: per image ``(m0, m1) ~ Dirichlet(alpha, alpha)`` (so ``m0 ~ Beta(alpha, alpha)`` weighs
  the original), chain weights ``m1 * Dirichlet(alpha, ..., alpha)``, each chain ``chain_depth``
  ops deep (1 to 3 uniformly when ``chain_depth <= 0``), each op uniform over the AugMix space
  with its bin uniform in ``[0, severity)`` of 10 bins.

``same_on_batch=True`` makes one draw and gives it to every image.
"""
from __future__ import annotations

import functools
import json
import math
import numbers
from fractions import Fraction
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from .._validate import accepts_dlpack, check_bool, check_choice, check_int, check_real, check_rng
from ._cutout import _image_size
from ._mix import _alpha, _batch_size, _check_rng

__all__ = ["OPS", "POLICIES", "AUTOAUGMENT_OPS", "check_policy", "policy_to_json", "policy_from_json",
           "augmentation_space", "sample_autoaugment_params", "sample_randaugment_params",
           "sample_trivialaugment_params", "sample_augmix_params", "augmix", "sample_affine_params",
           "sample_color_jitter_params"]

# The op codes of functional.apply_ops (functional.OPS); the tests check that the two agree.
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert", "HFlip", "VFlip")
_CODE = {name: i for i, name in enumerate(OPS)}
IDENTITY = 0

# The published AutoAugment sub-policies (Cubuk et al. 2019), as torchvision lists them:
# (op, probability, magnitude bin or None) pairs.
POLICIES = {
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
    "svhn": (
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ),
}

_METHODS = ("autoaugment", "randaugment", "trivialaugment", "augmix")
_AUTOAUGMENT_BINS = 10  # torchvision's AutoAugment calls _augmentation_space(10, ...)
_AUGMIX_BINS = 10       # AugMix's _PARAMETER_MAX
_SIGNED = frozenset(("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
                     "Sharpness"))

# ---- policy tables: validation and JSON ----------------------------------------------------------

#: The 14 ops of AutoAugment's search space, in the order of its augmentation space (the order
#: of ``augmentation_space("autoaugment", 10)``); ``AutoContrast``, ``Equalize`` and ``Invert``
#: have no magnitude (bin None in a policy table).
AUTOAUGMENT_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
                   "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
_NO_MAGNITUDE = frozenset(("AutoContrast", "Equalize", "Invert"))

#: A policy table: sub-policies of two ``(op name, probability, magnitude bin or None)`` entries.
PolicyTable = Tuple[Tuple[Tuple[str, float, Optional[int]], ...], ...]


def check_policy(policy: Any, name: str = "policy") -> PolicyTable:
    """Validate an AutoAugment policy table and return it as nested tuples.

    A table is a non-empty sequence of sub-policies; each sub-policy is a sequence of exactly two
    entries ``(op, probability, magnitude_bin)``: ``op`` one of :data:`AUTOAUGMENT_OPS`,
    ``probability`` a number in [0, 1], ``magnitude_bin`` an int in [0, 9] (AutoAugment's 10
    bins), or None for the ops without a magnitude (AutoContrast, Equalize, Invert) and only
    for them. Lists are accepted wherever tuples are (the JSON-decoded form).

    Parameters
    ----------
    policy : sequence of sub-policies
        The table, as :data:`POLICIES` stores the published ones.
    name : str, default "policy"
        The argument's name in error messages.

    Returns
    -------
    tuple of tuples
        ``((op, float probability, int bin or None), (...)), ...``.

    Raises
    ------
    TypeError
        ``policy`` is a str, or not a sequence.
    ValueError
        An entry is malformed; the message names it (``policy[3][1]: ...``).

    Examples
    --------
    >>> from cnnkit.augment._policy import check_policy
    >>> check_policy([[["Rotate", 0.5, 3], ["Equalize", 1, None]]])
    ((('Rotate', 0.5, 3), ('Equalize', 1.0, None)),)
    >>> check_policy([[["Rotate", 1.5, 3], ["Equalize", 1, None]]])
    Traceback (most recent call last):
    ...
    ValueError: policy[0][0]: expected a probability in [0, 1], got 1.5
    """
    if isinstance(policy, (str, bytes)) or not isinstance(policy, Sequence):
        raise TypeError(f"{name}: expected a published policy name or a sequence of sub-policies, "
                        f"got {type(policy).__name__}")
    if len(policy) == 0:
        raise ValueError(f"{name}: expected at least one sub-policy, got none")
    out = []
    for i, sub in enumerate(policy):
        if isinstance(sub, (str, bytes)) or not isinstance(sub, Sequence) or len(sub) != 2:
            raise ValueError(f"{name}[{i}]: expected a sub-policy of 2 (op, probability, magnitude_bin) entries, "
                             f"got {sub!r}")
        entries = []
        for j, entry in enumerate(sub):
            where = f"{name}[{i}][{j}]"
            if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 3:
                raise ValueError(f"{where}: expected an (op, probability, magnitude_bin) triple, got {entry!r}")
            op, p, b = entry
            if not isinstance(op, str) or op not in AUTOAUGMENT_OPS:
                raise ValueError(f"{where}: unknown op {op!r} (expected one of {', '.join(AUTOAUGMENT_OPS)})")
            if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{where}: expected a probability in [0, 1], got {p!r}")
            if op in _NO_MAGNITUDE:
                if b is not None:
                    raise ValueError(f"{where}: {op} has no magnitude, expected magnitude_bin None, got {b!r}")
            elif b is None:
                raise ValueError(f"{where}: {op} needs a magnitude_bin in [0, {_AUTOAUGMENT_BINS - 1}], got None")
            elif (isinstance(b, (bool, np.bool_)) or not isinstance(b, numbers.Integral)
                  or not 0 <= int(b) < _AUTOAUGMENT_BINS):
                raise ValueError(f"{where}: expected a magnitude_bin in [0, {_AUTOAUGMENT_BINS - 1}], got {b!r}")
            entries.append((op, float(p), None if b is None else int(b)))
        out.append(tuple(entries))
    return tuple(out)


def policy_to_json(policy: Union[str, Sequence[Any]], *, indent: Optional[int] = None) -> str:
    """A policy table as JSON text (a list of sub-policies, each a list of two
    ``[op, probability, magnitude_bin]`` lists, ``null`` for no magnitude).

    Parameters
    ----------
    policy : str or sequence of sub-policies
        A published name ("imagenet", "cifar10", "svhn") or a table (:func:`check_policy`).
    indent : int >= 0, optional
        As ``json.dumps`` (0: newlines only; None: one line).

    Returns
    -------
    str
        JSON that :func:`policy_from_json` reads back to the same table.

    Examples
    --------
    >>> from cnnkit.augment import policy_from_json, policy_to_json
    >>> text = policy_to_json([[("Invert", 0.1, None), ("Contrast", 0.2, 6)]])
    >>> text
    '[[["Invert", 0.1, null], ["Contrast", 0.2, 6]]]'
    >>> policy_from_json(text)
    ((('Invert', 0.1, None), ('Contrast', 0.2, 6)),)
    """
    table = _as_table(policy)
    indent = None if indent is None else check_int("indent", indent, 0, "None or an int >= 0")
    return json.dumps([[list(e) for e in sub] for sub in table], indent=indent)


def policy_from_json(text: Union[str, bytes]) -> PolicyTable:
    """Read a policy table written by :func:`policy_to_json` (validated by :func:`check_policy`).

    Parameters
    ----------
    text : str or bytes
        The JSON text.

    Returns
    -------
    tuple of tuples
        The table, ready for ``AutoAugment(policy=...)``.

    Examples
    --------
    >>> from cnnkit.augment import POLICIES, policy_from_json, policy_to_json
    >>> policy_from_json(policy_to_json("cifar10")) == POLICIES["cifar10"]
    True
    """
    if not isinstance(text, (str, bytes)):
        raise TypeError(f"text: expected JSON text (str or bytes), got {type(text).__name__}")
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"text: expected JSON, got a decoding error: {e}") from None
    if not isinstance(decoded, list):
        raise ValueError(f"text: expected a JSON list of sub-policies, got {type(decoded).__name__}")
    return check_policy(decoded)


def _as_table(policy: Any) -> Any:
    """A published name (checked) or a validated table (nested tuples, hashable)."""
    if isinstance(policy, str):
        return POLICIES[check_choice("policy", policy, tuple(POLICIES))]
    return check_policy(policy)


# ---- magnitude bins ------------------------------------------------------------------------------

def _f32(v):
    return np.float32(v)


def _fma32(a, b, c):
    """float32(a*b + c) with one rounding (the fused multiply-add torch's linspace kernel uses)."""
    return _f32(float(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))))


def _linspace_f32(start, end, steps):
    """torch.linspace(start, end, steps) in float32 (CPU kernel), as Python floats."""
    start, end = _f32(start), _f32(end)
    if steps == 1:
        return (float(start),)
    step = _f32(end - start) / _f32(steps - 1)
    half = steps // 2
    return tuple(float(_fma32(step, _f32(i), start)) if i < half else float(_fma32(-step, _f32(steps - 1 - i), end))
                 for i in range(steps))


def _posterize_bins(top, divisions, steps):
    """top - round(arange(steps) / ((steps - 1) / divisions)) in float32, half to even, as ints."""
    if steps == 1:
        return (int(top),)
    q = np.arange(steps).astype(np.float32) / np.float32((steps - 1) / divisions)
    return tuple(int(top) - int(v) for v in np.rint(q))


def _check_bins(num_bins, name="num_magnitude_bins"):
    return check_int(name, num_bins, 1, "an int >= 1")


@functools.lru_cache(maxsize=64)
def _space(method, num_bins, image_size, all_ops):
    H, W = image_size if image_size is not None else (0, 0)
    lin = functools.partial(_linspace_f32, steps=num_bins)
    none = ()
    if method == "trivialaugment":
        s = {"Identity": none, "ShearX": lin(0.0, 0.99), "ShearY": lin(0.0, 0.99), "TranslateX": lin(0.0, 32.0),
             "TranslateY": lin(0.0, 32.0), "Rotate": lin(0.0, 135.0), "Brightness": lin(0.0, 0.99),
             "Color": lin(0.0, 0.99), "Contrast": lin(0.0, 0.99), "Sharpness": lin(0.0, 0.99),
             "Posterize": _posterize_bins(8, 6, num_bins), "Solarize": lin(255.0, 0.0), "AutoContrast": none,
             "Equalize": none}
    elif method == "augmix":
        s = {"ShearX": lin(0.0, 0.3), "ShearY": lin(0.0, 0.3), "TranslateX": lin(0.0, W / 3.0),
             "TranslateY": lin(0.0, H / 3.0), "Rotate": lin(0.0, 30.0), "Posterize": _posterize_bins(4, 4, num_bins),
             "Solarize": lin(255.0, 0.0), "AutoContrast": none, "Equalize": none}
        if all_ops:
            s.update({"Brightness": lin(0.0, 0.9), "Color": lin(0.0, 0.9), "Contrast": lin(0.0, 0.9),
                      "Sharpness": lin(0.0, 0.9)})
    else:  # autoaugment, randaugment
        s = {"Identity": none} if method == "randaugment" else {}
        s.update({"ShearX": lin(0.0, 0.3), "ShearY": lin(0.0, 0.3), "TranslateX": lin(0.0, 150.0 / 331.0 * W),
                  "TranslateY": lin(0.0, 150.0 / 331.0 * H), "Rotate": lin(0.0, 30.0), "Brightness": lin(0.0, 0.9),
                  "Color": lin(0.0, 0.9), "Contrast": lin(0.0, 0.9), "Sharpness": lin(0.0, 0.9),
                  "Posterize": _posterize_bins(8, 4, num_bins), "Solarize": lin(255.0, 0.0), "AutoContrast": none,
                  "Equalize": none})
        if method == "autoaugment":
            s["Invert"] = none
    return {name: (bins, name in _SIGNED) for name, bins in s.items()}


def augmentation_space(method: str, num_bins: int, image_size: Optional[Tuple[int, int]] = None, *,
                       all_ops: bool = True) -> dict[str, tuple[tuple[Any, ...], bool]]:
    """torchvision's augmentation space of ``method``: ``{op name: (bins, signed)}``.

    ``bins`` is a tuple of the ``num_bins`` magnitudes (Python floats; ints for Posterize), empty
    for ops without a magnitude. ``method``: "autoaugment", "randaugment", "trivialaugment" or
    "augmix" (``all_ops=False`` drops Brightness, Color, Contrast, Sharpness). ``image_size``
    ``(H, W)`` sets the translation range (needed except for "trivialaugment").

    Parameters
    ----------
    method : {"autoaugment", "randaugment", "trivialaugment", "augmix"}
        Whose space.
    num_bins : int
        Number of magnitude bins.
    image_size : tuple of 2 ints, optional
        (H, W); required except for "trivialaugment".
    all_ops : bool, default True
        For "augmix": include Brightness, Color, Contrast and Sharpness.

    Returns
    -------
    dict
        Op name -> (tuple of ``num_bins`` magnitudes, or empty; whether the op is signed).

    Examples
    --------
    >>> from cnnkit.augment import augmentation_space
    >>> augmentation_space("randaugment", 31, (224, 224))["Posterize"][0][:4]
    (8, 8, 8, 8)
    """
    check_choice("method", method, _METHODS)
    num_bins = _check_bins(num_bins, "num_bins")
    if image_size is None:
        if method != "trivialaugment":
            raise ValueError(f"image_size: expected (H, W) for method={method!r}, got None")
    else:
        image_size = _image_size(image_size)
    return dict(_space(method, num_bins, image_size, check_bool("all_ops", all_ops)))


@functools.lru_cache(maxsize=64)
def _tables(method, num_bins, image_size, all_ops):
    """The space as arrays: codes (S,), magnitudes (S, num_bins) (0 for ops without one), signed (S,)."""
    space = _space(method, num_bins, image_size, all_ops)
    codes = np.array([_CODE[name] for name in space], dtype=np.int64)
    mags = np.zeros((len(space), num_bins))
    for row, (bins, _) in enumerate(space.values()):
        if bins:
            mags[row] = bins
    signed = np.array([sg for _, sg in space.values()])
    for a in (codes, mags, signed):
        a.setflags(write=False)
    return codes, mags, signed


def _same_on_batch(sampler, rng, N, *args, **kwargs):
    one = sampler(rng, 1, *args, **kwargs)
    return {k: np.repeat(v, N, axis=0) for k, v in one.items()}


def _draw(rng, codes, mags, signed, idx, bins):
    """ops and signed magnitudes for space rows ``idx`` at bins ``bins`` (arrays of one shape)."""
    negative = rng.integers(0, 2, size=idx.shape).astype(bool)
    m = mags[idx, bins]
    m = np.where(signed[idx] & negative, -m, m)
    return codes[idx], m


# ---- the policy samplers ---------------------------------------------------------------------------

def sample_autoaugment_params(rng: np.random.Generator, batch_size: int, image_size: Tuple[int, int],
                              policy: Union[str, Sequence[Any]] = "imagenet", *,
                              same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """AutoAugment parameters: ``{"ops": (N, 2) int64, "magnitudes": (N, 2) float64,
    "policy": (N,) int64}`` (``policy``: the sub-policy drawn for each image).

    ``policy``: "imagenet", "cifar10" or "svhn" (the published tables, as torchvision has them),
    or a table of the same form (:func:`check_policy`; e.g. one found by
    :func:`cnnkit.augment.search_policy`), any number of sub-policies. Per image a sub-policy
    uniformly; each of its two ops applied with its probability (else Identity); magnitudes from torchvision's 10 bins with ``image_size = (H, W)`` setting the
    translation range; signed ops negated with probability 1/2.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    image_size : tuple of 2 ints
        (H, W) of the images (sets the translation range).
    policy : {"imagenet", "cifar10", "svhn"} or sequence of sub-policies, default "imagenet"
        The published policy, or a policy table.
    same_on_batch : bool, default False
        One draw, repeated for every image.

    Returns
    -------
    dict of str to ndarray
        ``ops`` (N, 2) int64 op codes, ``magnitudes`` (N, 2) float64, ``policy`` (N,) int64.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    policy = policy if isinstance(policy, str) and policy in POLICIES else _as_table(policy)
    image_size = _image_size(image_size)
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    if same_on_batch:
        return _same_on_batch(sample_autoaugment_params, rng, N, image_size, policy)
    codes, mags, signed = _tables("autoaugment", _AUTOAUGMENT_BINS, image_size, True)
    rows, probs, bins = _policy_arrays(policy)
    pid = rng.integers(0, len(rows), size=N)
    u = rng.random((N, 2))
    idx, b = rows[pid], bins[pid]
    ops, m = _draw(rng, codes, mags, signed, idx, np.maximum(b, 0))
    applied = u < probs[pid]
    ops = np.where(applied, ops, IDENTITY)
    m = np.where(applied & (b >= 0), m, 0.0)
    return {"ops": ops.astype(np.int64), "magnitudes": m.astype(np.float64), "policy": pid.astype(np.int64)}


@functools.lru_cache(maxsize=256)
def _policy_arrays(policy):
    """A policy (a published name or a validated, hashable table) as arrays (S, 2): rows into the
    AutoAugment space, probabilities, bins (-1: None)."""
    names = list(_space("autoaugment", _AUTOAUGMENT_BINS, (1, 1), True))
    table = POLICIES[policy] if isinstance(policy, str) else policy
    rows = np.array([[names.index(op) for op, _, _ in sub] for sub in table], dtype=np.int64)
    probs = np.array([[p for _, p, _ in sub] for sub in table])
    bins = np.array([[-1 if b is None else b for _, _, b in sub] for sub in table], dtype=np.int64)
    return rows, probs, bins


def _nonneg_int(name, v):
    return check_int(name, v, 0, "an int >= 0")


def sample_randaugment_params(rng: np.random.Generator, batch_size: int, image_size: Tuple[int, int],
                              num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31, *,
                              same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """RandAugment parameters: ``{"ops": (N, num_ops) int64, "magnitudes": (N, num_ops) float64}``.

    Each image gets ``num_ops`` ops drawn uniformly (with replacement) from torchvision's 14-op
    space (Identity, ShearX/Y, TranslateX/Y, Rotate, Brightness, Color, Contrast, Sharpness,
    Posterize, Solarize, AutoContrast, Equalize), all at bin ``magnitude`` (in
    ``[0, num_magnitude_bins - 1]``); signed ops negated with probability 1/2.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    image_size : tuple of 2 ints
        (H, W) of the images (sets the translation range).
    num_ops : int, default 2
        Ops per image (>= 0).
    magnitude : int, default 9
        The bin, in [0, num_magnitude_bins - 1].
    num_magnitude_bins : int, default 31
        Number of bins.
    same_on_batch : bool, default False
        One draw, repeated for every image.

    Returns
    -------
    dict of str to ndarray
        ``ops`` (N, num_ops) int64 op codes, ``magnitudes`` (N, num_ops) float64.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    image_size = _image_size(image_size)
    K = _nonneg_int("num_ops", num_ops)
    B = _check_bins(num_magnitude_bins)
    check_int("magnitude", magnitude, 0, f"an int in [0, {B - 1}]")
    if magnitude >= B:
        raise ValueError(f"magnitude: expected an int in [0, {B - 1}] (num_magnitude_bins={B}), got {magnitude!r}")
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    if same_on_batch:
        return _same_on_batch(sample_randaugment_params, rng, N, image_size, K, magnitude, B)
    codes, mags, signed = _tables("randaugment", B, image_size, True)
    idx = rng.integers(0, len(codes), size=(N, K))
    ops, m = _draw(rng, codes, mags, signed, idx, np.full((N, K), int(magnitude)))
    return {"ops": ops.astype(np.int64), "magnitudes": m.astype(np.float64)}


def sample_trivialaugment_params(rng: np.random.Generator, batch_size: int, num_magnitude_bins: int = 31, *,
                                 same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """TrivialAugmentWide parameters: ``{"ops": (N, 1) int64, "magnitudes": (N, 1) float64}``.

    One op uniformly from the wide 14-op space, its bin uniformly in ``[0, num_magnitude_bins)``,
    signed ops negated with probability 1/2. The wide space's ranges do not depend on the image
    size (translation up to 32 pixels).

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    num_magnitude_bins : int, default 31
        Number of bins.
    same_on_batch : bool, default False
        One draw, repeated for every image.

    Returns
    -------
    dict of str to ndarray
        ``ops`` (N, 1) int64 op codes, ``magnitudes`` (N, 1) float64.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    B = _check_bins(num_magnitude_bins)
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    if same_on_batch:
        return _same_on_batch(sample_trivialaugment_params, rng, N, B)
    codes, mags, signed = _tables("trivialaugment", B, None, True)
    idx = rng.integers(0, len(codes), size=(N, 1))
    bins = rng.integers(0, B, size=(N, 1))
    ops, m = _draw(rng, codes, mags, signed, idx, bins)
    return {"ops": ops.astype(np.int64), "magnitudes": m.astype(np.float64)}


def sample_augmix_params(rng: np.random.Generator, batch_size: int, image_size: Tuple[int, int], severity: int = 3,
                         mixture_width: int = 3, chain_depth: int = -1, alpha: float = 1.0, all_ops: bool = True, *,
                         same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """AugMix parameters (torchvision's ``AugMix``), with ``W = mixture_width`` chains of at most
    ``D`` ops (``D = chain_depth`` if > 0, else 3):

    * ``"ops"``: (N, W, D) int64 codes, chains shorter than D padded with Identity;
    * ``"magnitudes"``: (N, W, D) float64 (0 in the padding);
    * ``"depth"``: (N, W) int64, each chain's depth (``chain_depth``, or uniform in 1..3);
    * ``"orig_weight"``: (N,) float32, ``m0`` (column 0 of Dirichlet(alpha, alpha), i.e.
      Beta(alpha, alpha));
    * ``"weights"``: (N, W) float32, ``float32(d_i) * float32(m1)`` with ``d ~ Dirichlet(alpha, ...)``
      (the product in float32, as torchvision's ``combined_weights``).

    Each op is uniform over the AugMix space (9 ops, 13 with ``all_ops``), its bin uniform in
    ``[0, severity)`` of 10 bins (``severity`` in [1, 10]); signed ops negated with probability 1/2.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    image_size : tuple of 2 ints
        (H, W) of the images (sets the translation range).
    severity : int, default 3
        Bins are drawn in [0, severity), severity in [1, 10].
    mixture_width : int, default 3
        W, the number of chains.
    chain_depth : int, default -1
        Ops per chain; <= 0: uniform in 1..3.
    alpha : float, default 1.0
        Dirichlet / Beta concentration.
    all_ops : bool, default True
        Use the 13-op space (False: 9 ops).
    same_on_batch : bool, default False
        One draw, repeated for every image.

    Returns
    -------
    dict of str to ndarray
        The five arrays above.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    image_size = _image_size(image_size)
    check_int("severity", severity, 1, f"an int in [1, {_AUGMIX_BINS}]")
    if severity > _AUGMIX_BINS:
        raise ValueError(f"severity: expected an int in [1, {_AUGMIX_BINS}], got {severity!r}")
    Wd = _batch_size(mixture_width, "mixture_width")
    check_int("chain_depth", chain_depth, -(2**62), "an int (<= 0: random depth 1..3)")
    alpha = _alpha(alpha)
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    if same_on_batch:
        return _same_on_batch(sample_augmix_params, rng, N, image_size, severity, Wd, chain_depth, alpha, all_ops)
    codes, mags, signed = _tables("augmix", _AUGMIX_BINS, image_size, check_bool("all_ops", all_ops))
    D = int(chain_depth) if chain_depth > 0 else 3
    m = rng.dirichlet([alpha, alpha], size=N)
    d = rng.dirichlet([alpha] * Wd, size=N)
    depth = np.full((N, Wd), D, dtype=np.int64) if chain_depth > 0 else rng.integers(1, 4, size=(N, Wd))
    idx = rng.integers(0, len(codes), size=(N, Wd, D))
    bins = rng.integers(0, int(severity), size=(N, Wd, D))
    ops, mg = _draw(rng, codes, mags, signed, idx, bins)
    live = np.arange(D) < depth[..., None]
    m0, m1 = m[:, 0].astype(np.float32), m[:, 1].astype(np.float32)
    return {"ops": np.where(live, ops, IDENTITY).astype(np.int64),
            "magnitudes": np.where(live, mg, 0.0).astype(np.float64),
            "depth": depth.astype(np.int64),
            "orig_weight": m0,
            "weights": d.astype(np.float32) * m1[:, None]}


@accepts_dlpack
def augmix(images: np.ndarray, params: dict[str, Any], *, interpolation: str = "bilinear",
           fill: Any = None) -> np.ndarray:
    r"""AugMix (Hendrycks et al. 2020) with parameters from :func:`sample_augmix_params`.

    ``mix = m0 * x + sum_i w_i * chain_i(x)`` accumulated in float32 in chain order (as
    torchvision: ``m0*x`` first, then ``+= w_i * chain_i``), then truncated to uint8 (torch's
    float -> uint8 cast) after clamping to [0, 255]. Chain ``i`` of every image is one batched
    ``functional.apply_ops`` call.

    Parameters
    ----------
    images : uint8 ndarray, (N, H, W, C) or one (H, W, C) image (then the params' N is 1)
        NHWC images, C in {1, 3}.
    params : dict
        "ops", "magnitudes" (N, W, D), "orig_weight" (N,), "weights" (N, W).
    interpolation : {"bilinear", "nearest"}, default "bilinear"
        Resampling (bilinear is torchvision's AugMix default).
    fill : float or sequence of float, optional
        Fill of uncovered areas (see ``functional.affine``).

    Returns
    -------
    ndarray
        uint8, shaped like ``images``.
    """
    from . import functional as F  # at call time, so functional may one day re-export this module

    x, single = F._images_u8(images)
    N = x.shape[0]
    if not isinstance(params, dict):
        raise TypeError(f"params: expected the dict from sample_augmix_params, got {type(params).__name__}")
    missing = [k for k in ("ops", "magnitudes", "orig_weight", "weights") if k not in params]
    if missing:
        raise ValueError(f"params: missing {missing} (expected the dict from sample_augmix_params)")
    ops, mags = np.asarray(params["ops"]), np.asarray(params["magnitudes"], dtype=np.float64)
    if ops.ndim != 3 or ops.shape[0] != N or ops.dtype.kind not in "iu" or mags.shape != ops.shape:
        raise ValueError(f"params: expected integer 'ops' and float 'magnitudes' of shape ({N}, W, D), got "
                         f"{ops.shape} {ops.dtype} and {mags.shape}")
    Wd = ops.shape[1]
    m0 = np.asarray(params["orig_weight"], dtype=np.float32)
    w = np.asarray(params["weights"], dtype=np.float32)
    if m0.shape != (N,) or w.shape != (N, Wd):
        raise ValueError(f"params: expected 'orig_weight' of shape ({N},) and 'weights' of shape ({N}, {Wd}), got "
                         f"{m0.shape} and {w.shape}")
    mix = m0[:, None, None, None] * x.astype(np.float32)
    for i in range(Wd):
        chain = F.apply_ops(x, np.ascontiguousarray(ops[:, i]), np.ascontiguousarray(mags[:, i]),
                            interpolation=interpolation, fill=fill)
        mix += w[:, i, None, None, None] * chain.astype(np.float32)
    out = np.clip(mix, 0, 255).astype(np.uint8)
    return out[0] if single else out


# ---- samplers of the geometric and colour transforms ----------------------------------------------

def _range(name, value, *, center=None, sym_ok=True, lo_bound=None, sizes=(2,)):
    """A number v -> (center - v, center + v) (v >= 0), or a sequence of one of ``sizes``."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not sym_ok:
            raise TypeError(f"{name}: expected a sequence of {sizes[0]} numbers, got {value!r}")
        check_real(name, value, lo=0.0)
        c = 0.0 if center is None else center
        r: Any = [c - float(value), c + float(value)]
        if lo_bound is not None:
            r[0] = max(r[0], lo_bound)
        return tuple(r)
    try:
        r = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number or a sequence of {' or '.join(map(str, sizes))} numbers, "
                        f"got {value!r}") from None
    if len(r) not in sizes or not all(math.isfinite(v) for v in r):
        raise ValueError(f"{name}: expected {' or '.join(map(str, sizes))} finite numbers, got {value!r}")
    if any(r[k] > r[k + 1] for k in range(0, len(r), 2)):
        raise ValueError(f"{name}: expected (min, max) pairs with min <= max, got {value!r}")
    if lo_bound is not None and min(r) < lo_bound:
        raise ValueError(f"{name}: expected values >= {lo_bound}, got {value!r}")
    return r


def _affine_ranges(degrees, translate, scale, shear):
    """torchvision RandomAffine's argument checks: the ranges, or None for an unused part."""
    deg = _range("degrees", degrees)
    if translate is not None:
        try:
            translate = tuple(float(t) for t in translate)
        except (TypeError, ValueError):
            raise TypeError(f"translate: expected (a, b) fractions in [0, 1], got {translate!r}") from None
        if len(translate) != 2 or not all(0.0 <= t <= 1.0 for t in translate):
            raise ValueError(f"translate: expected (a, b) fractions in [0, 1], got {translate!r}")
    if scale is not None:
        try:
            scale = tuple(float(s) for s in scale)
        except (TypeError, ValueError):
            raise TypeError(f"scale: expected (a, b) positive numbers, got {scale!r}") from None
        if len(scale) != 2 or not all(s > 0 for s in scale) or scale[0] > scale[1]:
            raise ValueError(f"scale: expected (a, b) with 0 < a <= b, got {scale!r}")
    if shear is not None:
        shear = _range("shear", shear, sizes=(2, 4))
    return deg, translate, scale, shear


def sample_affine_params(rng: np.random.Generator, batch_size: int, image_size: Tuple[int, int], degrees: Any,
                         translate: Optional[Tuple[float, float]] = None, scale: Optional[Tuple[float, float]] = None,
                         shear: Any = None, *, same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """torchvision ``RandomAffine.get_params`` per image: ``{"angle": (N,), "translate": (N, 2) int64
    (tx, ty), "scale": (N,), "shear": (N, 2)}`` (floats are float64).

    ``angle ~ U(degrees)`` (a number d means (-d, d)); ``tx = round_half_even(U(-a*W, a*W))``,
    ``ty`` likewise with ``b*H`` for ``translate = (a, b)``; ``scale ~ U(scale)`` (1 if None);
    ``shear``: a number s means x-shear in (-s, s), a pair an x range, four numbers x and y ranges.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    image_size : tuple of 2 ints
        (H, W) of the images.
    degrees : float or tuple of 2 floats
        Rotation range.
    translate : tuple of 2 floats, optional
        (a, b): largest translation as fractions of W and H.
    scale : tuple of 2 floats, optional
        Scale range (None: 1).
    shear : float or sequence of 2 or 4 floats, optional
        Shear range(s) in degrees (above).
    same_on_batch : bool, default False
        One draw, repeated for every image.

    Returns
    -------
    dict of str to ndarray
        ``angle`` (N,), ``translate`` (N, 2) int64, ``scale`` (N,), ``shear`` (N, 2).
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    H, W = _image_size(image_size)
    deg, tr, sc, sh = _affine_ranges(degrees, translate, scale, shear)
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    if same_on_batch:
        return _same_on_batch(sample_affine_params, rng, N, (H, W), degrees, translate, scale, shear)
    angle = rng.uniform(deg[0], deg[1], size=N)
    if tr is not None:
        max_dx, max_dy = tr[0] * W, tr[1] * H
        t = np.stack([np.rint(rng.uniform(-max_dx, max_dx, size=N)), np.rint(rng.uniform(-max_dy, max_dy, size=N))],
                     axis=-1).astype(np.int64)
    else:
        t = np.zeros((N, 2), np.int64)
    s = rng.uniform(sc[0], sc[1], size=N) if sc is not None else np.ones(N)
    shr = np.zeros((N, 2))
    if sh is not None:
        shr[:, 0] = rng.uniform(sh[0], sh[1], size=N)
        if len(sh) == 4:
            shr[:, 1] = rng.uniform(sh[2], sh[3], size=N)
    return {"angle": angle, "translate": t, "scale": s, "shear": shr}


_JITTER = ("brightness", "contrast", "saturation")


def _jitter_ranges(brightness, contrast, saturation):
    """torchvision ColorJitter's ranges: None where the factor is fixed at 1 (not applied)."""
    out = {}
    for name, v in zip(_JITTER, (brightness, contrast, saturation)):
        r = _range(name, v, center=1.0, lo_bound=0.0)
        out[name] = None if r[0] == r[1] == 1.0 else r
    return out


def sample_color_jitter_params(rng: np.random.Generator, batch_size: int, brightness: Any = 0, contrast: Any = 0,
                               saturation: Any = 0, *, same_on_batch: bool = False) -> dict[str, np.ndarray]:
    """Colour-jitter factors, uniform per image: ``{"brightness": (N,), "contrast": (N,),
    "saturation": (N,)}`` (float64), only for the adjustments in use.

    Each argument is a number v (factor in ``[max(0, 1 - v), 1 + v]``) or a ``(min, max)`` pair
    (non-negative), as torchvision's ``ColorJitter``; 0 (or (1, 1)) leaves it out.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness.
    batch_size : int
        N, the number of images.
    brightness, contrast, saturation : float or tuple of 2 floats, default 0
        Jitter strength or range of each adjustment.
    same_on_batch : bool, default False
        One draw, repeated for every image.

    Returns
    -------
    dict of str to ndarray
        (N,) float64 factors for the adjustments in use.
    """
    _check_rng(rng)
    N = _batch_size(batch_size)
    ranges = _jitter_ranges(brightness, contrast, saturation)
    same_on_batch = check_bool("same_on_batch", same_on_batch)
    if same_on_batch:
        return _same_on_batch(sample_color_jitter_params, rng, N, brightness, contrast, saturation)
    return {name: rng.uniform(r[0], r[1], size=N) for name, r in ranges.items() if r is not None}
