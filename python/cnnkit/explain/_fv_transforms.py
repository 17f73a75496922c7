"""Transformation robustness for feature visualization: random pads, crops, zooms and rotations
applied before every step, each differentiable with an exact backward (Olah et al., 2017;
Lucid's ``lucid.optvis.transform``).

Every transform is three parts, as kornia and albumentations split augmentation: ``sample(rng,
n, size)`` draws per-image parameters from a seeded ``numpy.random.Generator``, ``apply(x,
params)`` is deterministic given them, and ``backward(grad, params)`` is the adjoint of
``apply``'s derivative (all on planar (N, C, H, W) arrays of any float dtype).

Every transform here is a resampling along an affine map from output to input pixel coordinates
with a constant fill outside the input: :class:`Pad` (translation by -p, the border filled with
``value``), :class:`Jitter` (a crop d pixels smaller at a random offset in [0, d]),
:class:`RandomScale` (a zoom by s about the centre, at the same size) and :class:`RandomRotate`
(a rotation by theta degrees about the centre). Samples fall between pixels for the last two and
are read bilinearly: ``y = sum_k w_k x[p_k]`` over the four neighbours ``p_k`` of the source
point, with ``fill`` standing in for a neighbour outside the input; the backward scatters
``w_k g`` back to the neighbours inside. :class:`Compose` chains the maps and reads the input once
along their composition (one bilinear read instead of one per transform: the same result as the
steps in turn for pads and crops, which move by whole pixels, as long as no crop before a zoom
cuts into the image (the standard list pads more than it crops first), and a single
interpolation where a zoom is followed by a rotation).

Lucid's random scale resizes the image (the size changes with the scale); here it zooms about the
centre at a fixed size, filling the uncovered border, so the model sees one input shape every
step and keeps its buffers. Lucid's rotation fills with 0; here every fill is the pad value 0.5.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Transform", "Pad", "Jitter", "RandomScale", "RandomRotate", "Compose", "standard_transforms",
           "sampling_plan", "warp", "warp_backward"]

#: Lucid's standard list, in pixels for a 224-pixel image
STANDARD_PAD, STANDARD_JITTER, STANDARD_JITTER2 = 12, 8, 4
STANDARD_SCALES = tuple(1 + (i - 5) / 50 for i in range(11))
STANDARD_ANGLES = tuple(range(-10, 11)) + 5 * (0,)   # Lucid's list: 0 degrees six times


class Plan:
    """Where every output pixel reads: ``idx`` (N, 4, K) int64 flat input indices (clipped into
    range), ``w`` (N, 4, K) their bilinear weights (0 for neighbours outside the input), ``fillw``
    (N, K) the weight of the fill, for K = Ho * Wo output pixels; ``in_hw``, ``out_hw``."""

    def __init__(self, idx: np.ndarray, w: np.ndarray, fillw: np.ndarray, in_hw: Tuple[int, int],
                 out_hw: Tuple[int, int], fill: float) -> None:
        self.idx, self.w, self.fillw = idx, w, fillw
        self.in_hw = (int(in_hw[0]), int(in_hw[1]))
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.fill = float(fill)
        self._flat: dict = {}
        self._w: dict = {}

    def flat_index(self, c: int) -> np.ndarray:
        """(N, C, 4, K) indices into the flattened (N, C, H, W) input, computed once per C."""
        if c not in self._flat:
            n = self.idx.shape[0]
            hw = self.in_hw[0] * self.in_hw[1]
            base = (np.arange(n * c, dtype=np.int64) * hw).reshape(n, c, 1, 1)
            self._flat[c] = base + self.idx[:, None, :, :]
        return self._flat[c]

    def weights(self, dtype: Any) -> np.ndarray:
        """``w`` as (N, 1, 4, K) in ``dtype``."""
        key = np.dtype(dtype)
        if key not in self._w:
            self._w[key] = self.w[:, None].astype(key)
        return self._w[key]


_GRIDS: dict = {}


def _grid(out_hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    if out_hw not in _GRIDS:
        gi, gj = np.meshgrid(np.arange(out_hw[0], dtype=np.float64), np.arange(out_hw[1], dtype=np.float64),
                             indexing="ij")
        if len(_GRIDS) > 16:
            _GRIDS.clear()
        _GRIDS[out_hw] = (gi.ravel(), gj.ravel())
    return _GRIDS[out_hw]


def sampling_plan(A: np.ndarray, in_hw: Tuple[int, int], out_hw: Tuple[int, int], fill: float = 0.5) -> Plan:
    """The bilinear sampling plan for the maps ``A`` (N, 2, 3): output pixel (i, j) of image n
    reads the input at ``A[n] @ (i, j, 1)`` (row, column). Pads and crops map whole pixels to
    whole pixels exactly (their maps have integer entries), so they read without interpolation."""
    H, W = in_hw
    ii, jj = _grid((int(out_hw[0]), int(out_hw[1])))
    A = np.asarray(A, np.float64)
    n, k = A.shape[0], ii.size
    idx = np.empty((n, 4, k), np.int64)
    w = np.empty((n, 4, k))
    fillw = np.zeros((n, k))
    for b in range(n):      # one image at a time: small temporaries (a K-element row each)
        sy = A[b, 0, 0] * ii + A[b, 0, 1] * jj + A[b, 0, 2]
        sx = A[b, 1, 0] * ii + A[b, 1, 1] * jj + A[b, 1, 2]
        ly, lx = np.floor(sy), np.floor(sx)
        fy, fx = sy - ly, sx - lx
        y0, x0 = ly.astype(np.int64), lx.astype(np.int64)
        # the neighbours (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1), separably
        ok_y = ((y0 >= 0) & (y0 < H), (y0 >= -1) & (y0 < H - 1))
        ok_x = ((x0 >= 0) & (x0 < W), (x0 >= -1) & (x0 < W - 1))
        row = (np.clip(y0, 0, H - 1) * W, np.clip(y0 + 1, 0, H - 1) * W)
        col = (np.clip(x0, 0, W - 1), np.clip(x0 + 1, 0, W - 1))
        wy, wx = (1 - fy, fy), (1 - fx, fx)
        for c, (a, e) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            np.add(row[a], col[e], out=idx[b, c])
            wc = np.multiply(wy[a], wx[e], out=w[b, c])
            out = ~(ok_y[a] & ok_x[e])
            fillw[b] += np.where(out, wc, 0.0)
            wc[out] = 0.0
    return Plan(idx, w, fillw, in_hw, out_hw, fill)


def warp(x: np.ndarray, plan: Plan, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Read planar images x (N, C, H, W) along ``plan``: (N, C, Ho, Wo) in x's dtype."""
    n, c = x.shape[:2]
    Ho, Wo = plan.out_hw
    vals = np.ravel(x)[plan.flat_index(c)]               # (N, C, 4, K)
    vals *= plan.weights(x.dtype)
    acc = vals.sum(axis=2)
    acc += (plan.fillw * plan.fill).astype(x.dtype, copy=False)[:, None, :]
    if out is None:
        return acc.reshape(n, c, Ho, Wo)
    out[...] = acc.reshape(n, c, Ho, Wo)
    return out


def warp_backward(grad: np.ndarray, plan: Plan) -> np.ndarray:
    """The adjoint of :func:`warp`: the gradient (N, C, H, W) of ``sum(grad * warp(x))`` with
    respect to x (the fill gets none), in grad's dtype (summed in float64)."""
    n, c = grad.shape[:2]
    H, W = plan.in_hw
    g = np.asarray(grad, np.float64).reshape(n, c, 1, -1) * plan.weights(np.float64)
    out = np.bincount(plan.flat_index(c).ravel(), weights=g.ravel(), minlength=n * c * H * W)
    return out.reshape(n, c, H, W).astype(grad.dtype, copy=False)


def _affine(n: int, a: np.ndarray, t: np.ndarray) -> np.ndarray:
    A = np.zeros((n, 2, 3))
    A[:, :, :2] = a
    A[:, :, 2] = t
    return A


def _compose(A1: np.ndarray, A2: np.ndarray) -> np.ndarray:
    """The map p -> A1(A2(p)) (both output-to-input maps, A2 applied first to output coords)."""
    out = np.empty_like(A1)
    out[:, :, :2] = A1[:, :, :2] @ A2[:, :, :2]
    out[:, :, 2] = (A1[:, :, :2] @ A2[:, :, 2, None])[:, :, 0] + A1[:, :, 2]
    return out


class Transform:
    """A random differentiable image transform (see the module docstring). Subclasses give
    :meth:`sample`, :meth:`output_size` and :meth:`affine`."""

    fill = 0.5

    def sample(self, rng: np.random.Generator, n: int, size: Tuple[int, int]) -> Any:
        """Per-image parameters for n images of ``size`` (H, W)."""
        raise NotImplementedError

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """(H, W) of the output for an input of ``size``."""
        return (int(size[0]), int(size[1]))

    def affine(self, params: Any, size: Tuple[int, int]) -> np.ndarray:
        """(N, 2, 3): output (row, col, 1) -> input (row, col)."""
        raise NotImplementedError

    def plan(self, params: Any, size: Tuple[int, int]) -> Plan:
        return sampling_plan(self.affine(params, size), size, self.output_size(size), self.fill)

    def apply(self, x: np.ndarray, params: Any) -> np.ndarray:
        """The transformed batch (deterministic given ``params``)."""
        return warp(x, self.plan(params, x.shape[2:]))

    def backward(self, grad: np.ndarray, params: Any, size: Tuple[int, int]) -> np.ndarray:
        """The gradient with respect to the input (of ``size``) of ``sum(grad * apply(x))``."""
        return warp_backward(grad, self.plan(params, size))


def _check_pixels(name: str, v: Any) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= 0, got {type(v).__name__}")
    if v < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {v}")
    return int(v)


class Pad(Transform):
    """Pad ``pad`` pixels on every side with the constant ``value`` (no randomness)."""

    def __init__(self, pad: int, value: float = 0.5) -> None:
        self.pad = _check_pixels("pad", pad)
        self.fill = float(value)

    def sample(self, rng: np.random.Generator, n: int, size: Tuple[int, int]) -> Any:
        return n

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        return (size[0] + 2 * self.pad, size[1] + 2 * self.pad)

    def affine(self, params: Any, size: Tuple[int, int]) -> np.ndarray:
        return _affine(params, np.eye(2), np.array([-self.pad, -self.pad], float))

    def apply(self, x: np.ndarray, params: Any) -> np.ndarray:
        p = self.pad
        return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=x.dtype.type(self.fill))

    def backward(self, grad: np.ndarray, params: Any, size: Tuple[int, int]) -> np.ndarray:
        p = self.pad
        return np.ascontiguousarray(grad[:, :, p:p + size[0], p:p + size[1]])

    def __repr__(self) -> str:
        return f"Pad({self.pad}, value={self.fill})"


class Jitter(Transform):
    """A crop ``d`` pixels smaller than the image at a random offset (row and column each uniform
    in 0..d), per image (Lucid's ``jitter(d)``)."""

    def __init__(self, d: int) -> None:
        self.d = _check_pixels("d", d)

    def sample(self, rng: np.random.Generator, n: int, size: Tuple[int, int]) -> Any:
        return rng.integers(0, self.d + 1, size=(n, 2))

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        if min(size) <= self.d:
            raise ValueError(f"size: a {size[0]}x{size[1]} image is too small for jitter({self.d})")
        return (size[0] - self.d, size[1] - self.d)

    def affine(self, params: Any, size: Tuple[int, int]) -> np.ndarray:
        return _affine(len(params), np.eye(2), np.asarray(params, float))

    def apply(self, x: np.ndarray, params: Any) -> np.ndarray:
        Ho, Wo = self.output_size(x.shape[2:])
        out = np.empty(x.shape[:2] + (Ho, Wo), x.dtype)
        for i, (oy, ox) in enumerate(params):
            out[i] = x[i, :, oy:oy + Ho, ox:ox + Wo]
        return out

    def backward(self, grad: np.ndarray, params: Any, size: Tuple[int, int]) -> np.ndarray:
        Ho, Wo = grad.shape[2:]
        out = np.zeros(grad.shape[:2] + tuple(size), grad.dtype)
        for i, (oy, ox) in enumerate(params):
            out[i, :, oy:oy + Ho, ox:ox + Wo] = grad[i]
        return out

    def __repr__(self) -> str:
        return f"Jitter({self.d})"


def _centre_map(n: int, lin: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Output -> input map ``c + lin (p - c)`` about the centre c of a ``size`` image; lin (N, 2, 2)."""
    c = np.array([(size[0] - 1) / 2.0, (size[1] - 1) / 2.0])
    return _affine(n, lin, c - lin @ c)


class RandomScale(Transform):
    """A zoom about the centre by a factor drawn uniformly from ``scales`` per image, at the same
    size (bilinear; the uncovered border of a zoom-out gets ``fill``)."""

    def __init__(self, scales: Sequence[float]) -> None:
        s = np.asarray(list(scales), np.float64)
        if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError(f"scales: expected a non-empty sequence of positive numbers, got {scales!r}")
        self.scales = s

    def sample(self, rng: np.random.Generator, n: int, size: Tuple[int, int]) -> Any:
        return self.scales[rng.integers(0, self.scales.size, size=n)]

    def affine(self, params: Any, size: Tuple[int, int]) -> np.ndarray:
        s = np.asarray(params, np.float64)
        lin = np.eye(2)[None] / s[:, None, None]
        return _centre_map(len(s), lin, size)

    def __repr__(self) -> str:
        return f"RandomScale({list(self.scales)})"


class RandomRotate(Transform):
    """A rotation about the centre by an angle in degrees drawn uniformly from ``angles`` per
    image (bilinear; the corners get ``fill``)."""

    def __init__(self, angles: Sequence[float]) -> None:
        a = np.asarray(list(angles), np.float64)
        if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
            raise ValueError(f"angles: expected a non-empty sequence of angles in degrees, got {angles!r}")
        self.angles = a

    def sample(self, rng: np.random.Generator, n: int, size: Tuple[int, int]) -> Any:
        return self.angles[rng.integers(0, self.angles.size, size=n)]

    def affine(self, params: Any, size: Tuple[int, int]) -> np.ndarray:
        t = np.deg2rad(np.asarray(params, np.float64))
        c, s = np.cos(t), np.sin(t)
        # the output pixel p shows the input at R(-theta)(p - c) + c (rows down, columns right)
        lin = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)
        return _centre_map(len(t), lin, size)

    def __repr__(self) -> str:
        return f"RandomRotate({list(self.angles)})"


class Compose(Transform):
    """The transforms in order, read in one bilinear pass along the composed map (see the module
    docstring); ``params`` is the list of each transform's parameters. Every transform must share
    one ``fill``."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        ts = list(transforms)
        for i, t in enumerate(ts):
            if not isinstance(t, Transform):
                raise TypeError(f"transforms[{i}]: expected a cnnkit feature-visualization Transform, "
                                f"got {type(t).__name__}")
        fills = {t.fill for t in ts}
        if len(fills) > 1:
            raise ValueError(f"transforms: every transform must share one fill value, got {sorted(fills)}")
        self.transforms = ts
        self.fill = fills.pop() if fills else 0.5

    def sample(self, rng: np.random.Generator, n: int, size: Tuple[int, int]) -> Any:
        out = []
        for t in self.transforms:
            out.append(t.sample(rng, n, size))
            size = t.output_size(size)
        return out

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        for t in self.transforms:
            size = t.output_size(size)
        return (int(size[0]), int(size[1]))

    def affine(self, params: Any, size: Tuple[int, int]) -> np.ndarray:
        A = None
        for t, p in zip(self.transforms, params):
            At = t.affine(p, size)
            A = At if A is None else _compose(A, At)
            size = t.output_size(size)
        if A is None:
            raise ValueError("transforms: an empty composition has no map")
        return A

    def plan(self, params: Any, size: Tuple[int, int]) -> Optional[Plan]:  # type: ignore[override]
        if not self.transforms:
            return None
        return super().plan(params, size)

    def apply(self, x: np.ndarray, params: Any) -> np.ndarray:
        return x if not self.transforms else super().apply(x, params)

    def backward(self, grad: np.ndarray, params: Any, size: Tuple[int, int]) -> np.ndarray:
        return grad if not self.transforms else super().backward(grad, params, size)

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def standard_transforms(size: Tuple[int, int]) -> Compose:
    """Lucid's standard list: pad 12 (constant 0.5), jitter 8, random scale 0.9..1.1 in steps of
    0.02, random rotate by a whole number of degrees in -10..10 (0 six times in the list, as
    Lucid's), jitter 4. The pixel amounts are for 224-pixel images and
    scale with the image: ``max(1, round(p * min(H, W) / 224))`` (at 64 pixels: pad 3, jitter 2
    and 1; at 32: pad 2, jitter 1 and 1); the scales and angles do not depend on the size."""
    f = min(size) / 224.0

    def px(p):
        return max(1, int(round(p * f)))

    return Compose([Pad(px(STANDARD_PAD), 0.5), Jitter(px(STANDARD_JITTER)), RandomScale(STANDARD_SCALES),
                    RandomRotate(STANDARD_ANGLES), Jitter(px(STANDARD_JITTER2))])

