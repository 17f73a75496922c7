"""Pictures of attributions: heat-map overlays and a grid of images by method."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from .._validate import accepts_dlpack, check_real
from . import cam, gradients, perturbation

__all__ = ["overlay", "plot", "METHODS", "as_maps"]


#: every attribution method by name (the CLI, :func:`plot`'s callers and the tests iterate it)
METHODS: Dict[str, Callable] = {
    "saliency": gradients.saliency,
    "gradient_x_input": gradients.gradient_x_input,
    "smoothgrad": gradients.smoothgrad,
    "integrated_gradients": gradients.integrated_gradients,
    "guided_backprop": gradients.guided_backprop,
    "deconvnet": gradients.deconvnet,
    "grad_cam": cam.grad_cam,
    "grad_cam_pp": cam.grad_cam_pp,
    "xgrad_cam": cam.xgrad_cam,
    "layer_cam": cam.layer_cam,
    "hires_cam": cam.hires_cam,
    "eigen_cam": cam.eigen_cam,
    "score_cam": cam.score_cam,
    "guided_grad_cam": cam.guided_grad_cam,
    "occlusion": perturbation.occlusion,
    "rise": perturbation.rise,
}


@accepts_dlpack
def as_maps(attr: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """(N, H, W) maps from an attribution: (N, H, W) as is, (N, C, H, W) / (N, H, W, C) by the
    maximum of |a| over channels (how input-space attributions are shown).

    Parameters
    ----------
    attr : array_like
        (N, H, W) maps, or a 4-D attribution of the input's shape.
    layout : "NCHW" or "NHWC"
        The layout of a 4-D ``attr``.

    Returns
    -------
    float32 ndarray (N, H, W)

    Raises
    ------
    ValueError
        ``attr`` is neither 3-D nor 4-D.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain
    >>> a = np.zeros((1, 3, 2, 2), np.float32); a[0, 1, 0, 0] = -2.0
    >>> explain.as_maps(a).tolist()
    [[[2.0, 0.0], [0.0, 0.0]]]
    """
    a = np.asarray(attr)
    if a.ndim == 3:
        return a.astype(np.float32, copy=False)
    if a.ndim == 4:
        return np.abs(a).max(axis=1 if layout == "NCHW" else 3).astype(np.float32)
    raise ValueError(f"maps: expected (N, H, W) or a 4-D attribution, got shape {a.shape}")


def _images_rgb(images: np.ndarray) -> np.ndarray:
    """float (N, H, W, 3) in [0, 1] from uint8 or float images, NCHW/NHWC, 1 or 3 channels."""
    im = np.asarray(images)
    if im.ndim == 3:
        im = im[..., None]
    if im.ndim != 4:
        raise ValueError(f"images: expected (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {im.shape}")
    if im.shape[1] in (1, 3) and im.shape[3] not in (1, 3):
        im = im.transpose(0, 2, 3, 1)
    if im.shape[3] not in (1, 3):
        raise ValueError(f"images: expected 1 or 3 channels, got shape {im.shape}")
    f = im.astype(np.float64) / 255.0 if im.dtype == np.uint8 else im.astype(np.float64)
    lo = f.reshape(f.shape[0], -1).min(axis=1)[:, None, None, None]
    hi = f.reshape(f.shape[0], -1).max(axis=1)[:, None, None, None]
    if im.dtype != np.uint8:   # float images may be normalized: show each at its own range
        f = np.where(hi > lo, (f - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
    if f.shape[3] == 1:
        f = np.repeat(f, 3, axis=3)
    return np.clip(f, 0, 1)


@accepts_dlpack
def overlay(images: np.ndarray, maps: np.ndarray, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Heat maps blended over images: ``(1 - alpha) * image + alpha * cmap(map)``, each map
    min-max scaled first.

    Parameters
    ----------
    images : (N, H, W), (N, C, H, W) or (N, H, W, C) with 1 or 3 channels, uint8 or float
        (float images are shown at their own range).
    maps : (N, H, W), or an attribution of the images' shape (max |a| over channels)
    cmap : a matplotlib colormap name
    alpha : float in [0, 1]

    Returns
    -------
    uint8 ndarray (N, H, W, 3)

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain
    >>> images = np.zeros((2, 8, 8, 3), np.uint8)
    >>> maps = np.random.default_rng(0).random((2, 8, 8))
    >>> pictures = explain.overlay(images, maps, alpha=0.4)
    >>> pictures.shape, pictures.dtype
    ((2, 8, 8, 3), dtype('uint8'))
    """
    import matplotlib
    from ._resize import minmax_normalize
    alpha = check_real("alpha", alpha, lo=0.0, hi=1.0)
    rgb = _images_rgb(images)
    m = np.asarray(maps)
    if m.ndim == 4:
        m = as_maps(m, "NCHW" if m.shape[1] in (1, 3) and m.shape[3] not in (1, 3) else "NHWC")
    if m.ndim != 3 or m.shape != rgb.shape[:3]:
        raise ValueError(f"maps: expected shape {rgb.shape[:3]} to match the images, got {np.shape(maps)}")
    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"cmap: no matplotlib colormap {cmap!r}") from None
    heat = cm(minmax_normalize(np.nan_to_num(m.astype(np.float64))))[..., :3]
    out = (1 - alpha) * rgb + alpha * heat
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


@accepts_dlpack
def plot(images: np.ndarray, attributions: Dict[str, np.ndarray], *, labels: Optional[Sequence[str]] = None,
         cmap: str = "jet", alpha: float = 0.5, layout: str = "NCHW", size: float = 1.6) -> Any:
    """A matplotlib figure: one row per image, the image then one column per method (titled),
    each map overlaid on the image.

    Parameters
    ----------
    images : as in :func:`overlay`
    attributions : {method name: maps (N, H, W) or an attribution of the images' shape}
    labels : one string per image (row labels), optional
    cmap, alpha : as in :func:`overlay`
    layout : the layout of 4-D attributions
    size : inches per panel

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain
    >>> images = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    >>> fig = explain.plot(images, {"saliency": np.ones((1, 8, 8)), "grad_cam": images})
    >>> len(fig.axes)  # 1 row: the image, then one panel per method
    3
    """
    from matplotlib.figure import Figure
    if not isinstance(attributions, dict) or not attributions:
        raise TypeError(f"attributions: expected a non-empty dict {{method name: maps}}, got "
                        f"{type(attributions).__name__}")
    rgb = _images_rgb(images)
    N = rgb.shape[0]
    names = list(attributions)
    fig = Figure(figsize=(size * (len(names) + 1), size * N))
    axes = fig.subplots(N, len(names) + 1, squeeze=False)
    for i in range(N):
        axes[i, 0].imshow(rgb[i])
        if labels is not None:
            axes[i, 0].set_ylabel(str(labels[i]), fontsize=7)
    axes[0, 0].set_title("image", fontsize=8)
    for j, name in enumerate(names, start=1):
        ov = overlay(images, as_maps(attributions[name], layout), cmap=cmap, alpha=alpha)
        for i in range(N):
            axes[i, j].imshow(ov[i])
        axes[0, j].set_title(name.replace("_", " "), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
