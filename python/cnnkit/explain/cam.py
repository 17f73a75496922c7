"""Class activation maps: Grad-CAM and its family, on one shared capture-forward-backward.

Each CAM captures a layer's activations ``A`` (N, K, h, w) and, for the gradient methods, the
gradient ``G = d logit_t / dA`` of the target logit, then forms a map of the layer's resolution
and applies a ReLU. The methods differ only in how they weight ``A`` (:data:`CAM_WEIGHTINGS`):

=============  ==========================================================================
grad_cam       ``w_k = mean_ij G_kij``; map ``sum_k w_k A_k`` (Selvaraju et al.)
grad_cam_pp    ``w_k = sum_ij relu(G_kij) a_kij`` with the paper's closed form (eq. 19)
               ``a = G^2 / (2 G^2 + sum_ij(A_k) G^3 + 1e-6)``, 0 where ``G == 0``, as
               pytorch-grad-cam computes it (Chattopadhay et al.)
xgrad_cam      ``w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7)`` (Fu et al.)
layer_cam      map ``sum_k relu(G_k) * A_k`` (element-wise weights; Jiang et al.)
hires_cam      map ``sum_k G_k * A_k`` (Draelos and Carin)
eigen_cam      the projection of the centred activations on their first principal component
               (SVD of the (h*w, K) matrix; the sign is the SVD's, as pytorch-grad-cam)
score_cam      ``w = softmax_k(logit_t(x * M_k))`` with ``M_k`` the activation map upsampled
               (align_corners=True) and min-max scaled; forward passes only (Wang et al.)
=============  ==========================================================================

``upsample=True`` resizes the map to the input's size with ``F.interpolate(mode="bilinear",
align_corners=False)`` semantics; ``normalize=True`` min-max scales each map to [0, 1] (a
constant map gives zeros). With both False a CAM is the raw layer-resolution map after the ReLU
(``grad_cam`` then equals captum's ``LayerGradCam(relu_attributions=True)`` and every method
pytorch-grad-cam's map before its resize).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .._validate import accepts_dlpack, check_bool
from . import _model
from ._model import Target
from ._resize import minmax_normalize, resize_maps

__all__ = ["grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam", "eigen_cam", "score_cam",
           "guided_grad_cam", "cam_map", "CAM_WEIGHTINGS"]


# ---- weightings: (A, G) float64 (N, K, h, w) -> the map before the ReLU, (N, h, w) ----------------
def _grad_cam(A, G):
    w = G.mean(axis=(2, 3))
    return np.einsum("nk,nkij->nij", w, A)


def _grad_cam_pp(A, G):
    g2 = G * G
    g3 = g2 * G
    sum_a = A.sum(axis=(2, 3))[:, :, None, None]
    aij = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    aij = np.where(G != 0, aij, 0.0)
    w = (np.maximum(G, 0) * aij).sum(axis=(2, 3))
    return np.einsum("nk,nkij->nij", w, A)


def _xgrad_cam(A, G):
    sum_a = A.sum(axis=(2, 3))[:, :, None, None]
    w = (G * A / (sum_a + 1e-7)).sum(axis=(2, 3))
    return np.einsum("nk,nkij->nij", w, A)


def _layer_cam(A, G):
    return (np.maximum(G, 0) * A).sum(axis=1)


def _hires_cam(A, G):
    return (G * A).sum(axis=1)


def _eigen_cam(A, G=None):
    N, K, h, w = A.shape
    out = np.empty((N, h, w), np.float64)
    for n in range(N):
        # float32 as pytorch-grad-cam's get_2d_projection (its SVD sign convention comes with it),
        # in its memory order too: the (h*w, K) transpose of a C-contiguous (K, h*w), so that the
        # mean sums in the same order whatever the layout (a rounding-level change can flip the sign)
        m = np.ascontiguousarray(A[n], dtype=np.float32).reshape(K, -1).T
        m = m - m.mean(axis=0)
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        out[n] = (m @ vt[0]).reshape(h, w)
    return out


CAM_WEIGHTINGS: dict = {"grad_cam": _grad_cam, "grad_cam_pp": _grad_cam_pp, "xgrad_cam": _xgrad_cam,
                        "layer_cam": _layer_cam, "hires_cam": _hires_cam, "eigen_cam": _eigen_cam}


def cam_map(A: np.ndarray, G: Optional[np.ndarray], method: str) -> np.ndarray:
    """The layer-resolution map of ``method`` from activations ``A`` and gradients ``G``
    ((N, K, h, w) each), after the ReLU.

    Parameters
    ----------
    A : numpy.ndarray
        Activations (N, K, h, w).
    G : numpy.ndarray or None
        Their gradients (N, K, h, w); None for gradient-free methods.
    method : str
        A key of the CAM weighting table.

    Returns
    -------
    numpy.ndarray
        float64 (N, h, w).
    """
    A = np.asarray(A, np.float64)
    G = None if G is None else np.asarray(G, np.float64)
    return np.maximum(CAM_WEIGHTINGS[method](A, G), 0.0)


def _finish(maps: np.ndarray, size: tuple, upsample: bool, normalize: bool) -> np.ndarray:
    if upsample:
        maps = resize_maps(maps, size)
    if normalize:
        maps = minmax_normalize(maps)
    return maps.astype(np.float32)


def _flags(upsample, normalize):
    return check_bool("upsample", upsample), check_bool("normalize", normalize)


def _run_cam(method: str, model: Any, x: Any, target: Target, layer: Optional[str], upsample: bool,
             normalize: bool) -> np.ndarray:
    x = _model.check_images(x, model)
    upsample, normalize = _flags(upsample, normalize)
    layout = _model.layout_of(model)
    _, H, W = _model.spatial(x, layout)
    needs_grad = method != "eigen_cam"
    spec = _model.check_target(target, x.shape[0])
    with _model.explaining(model):
        name = _model.resolve_layer(model, layer, x)
        A, G, _, _ = _model.layer_pass(model, x, name, spec, need_grad=needs_grad)
    A = _layer_nchw(A, layout, name)
    G = None if G is None else _layer_nchw(G, layout, name)
    return _finish(cam_map(A, G, method), (H, W), upsample, normalize)


def _layer_nchw(a: np.ndarray, layout: str, name: str) -> np.ndarray:
    if a.ndim != 4:
        raise ValueError(f"layer: {name!r} has a {a.ndim}-D output (shape {a.shape}); a CAM needs a 4-D one")
    return _model.to_nchw(a, layout)


@accepts_dlpack
def grad_cam(model: Any, x: np.ndarray, target: Target = None, *, layer: Optional[str] = None,
             upsample: bool = True, normalize: bool = True) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017): ``relu(sum_k mean_ij(G_k) A_k)`` at ``layer``.

    Parameters
    ----------
    model : cnnkit.nn.Module, cnnkit.explain.TorchModel or an object with the layer protocol
        (``capture``, ``release``, ``named_modules``, ``forward``, ``backward``)
    x : float32 ndarray (N, C, H, W) or (N, H, W, C), in the model's layout
    target : None (the predicted class), int, or one int per image
    layer : str, optional
        A dotted name from ``model.named_modules()``; default: the module whose forward finishes
        last with a 4-D output (the last convolutional block).
    upsample : bool
        Resize to (H, W), bilinear with ``align_corners=False``.
    normalize : bool
        Min-max scale each map to [0, 1] (a constant map gives zeros).

    Returns
    -------
    float32 ndarray (N, H, W), or (N, h, w) at the layer's resolution with ``upsample=False``

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> maps = explain.grad_cam(model, x)
    >>> maps.shape, float(maps.min()) >= 0.0, float(maps.max()) <= 1.0
    ((2, 16, 16), True, True)
    """
    return _run_cam("grad_cam", model, x, target, layer, upsample, normalize)


@accepts_dlpack
def grad_cam_pp(model: Any, x: np.ndarray, target: Target = None, *, layer: Optional[str] = None,
                upsample: bool = True, normalize: bool = True) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al., 2018) with the paper's closed form for the pixel weights
    (eq. 19), exactly as pytorch-grad-cam computes it: ``a = G^2 / (2 G^2 + sum_ij(A_k) G^3 +
    1e-6)`` (0 where G == 0), ``w_k = sum_ij relu(G_kij) a_kij``, map ``relu(sum_k w_k A_k)``.
    The closed form assumes an exponential of the logit; applied to the logit itself, as here and
    in pytorch-grad-cam, the higher derivatives are the powers of the first.

    Parameters
    ----------
    model, x, target, layer, upsample, normalize
        As in :func:`grad_cam`.

    Returns
    -------
    float32 ndarray
        (N, H, W), or (N, h, w) at the layer's resolution with ``upsample=False``; in [0, 1]
        with ``normalize=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.grad_cam_pp(model, x, target=0).shape
    (2, 16, 16)
    """
    return _run_cam("grad_cam_pp", model, x, target, layer, upsample, normalize)


@accepts_dlpack
def xgrad_cam(model: Any, x: np.ndarray, target: Target = None, *, layer: Optional[str] = None,
              upsample: bool = True, normalize: bool = True) -> np.ndarray:
    """XGrad-CAM (Fu et al., 2020): ``w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7)``, map
    ``relu(sum_k w_k A_k)`` (pytorch-grad-cam's ``XGradCAM``).

    Parameters
    ----------
    model, x, target, layer, upsample, normalize
        As in :func:`grad_cam`.

    Returns
    -------
    float32 ndarray
        (N, H, W), or (N, h, w) at the layer's resolution with ``upsample=False``; in [0, 1]
        with ``normalize=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.xgrad_cam(model, x, layer="3", upsample=False).shape  # the block's 8x8 resolution
    (2, 8, 8)
    """
    return _run_cam("xgrad_cam", model, x, target, layer, upsample, normalize)


@accepts_dlpack
def layer_cam(model: Any, x: np.ndarray, target: Target = None, *, layer: Optional[str] = None,
              upsample: bool = True, normalize: bool = True) -> np.ndarray:
    """LayerCAM (Jiang et al., 2021): ``relu(sum_k relu(G_k) * A_k)`` with element-wise weights
    (pytorch-grad-cam's ``LayerCAM``).

    Parameters
    ----------
    model, x, target, layer, upsample, normalize
        As in :func:`grad_cam`.

    Returns
    -------
    float32 ndarray
        (N, H, W), or (N, h, w) at the layer's resolution with ``upsample=False``; in [0, 1]
        with ``normalize=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.layer_cam(model, x, layer="2").shape  # an earlier block, upsampled
    (2, 16, 16)
    """
    return _run_cam("layer_cam", model, x, target, layer, upsample, normalize)


@accepts_dlpack
def hires_cam(model: Any, x: np.ndarray, target: Target = None, *, layer: Optional[str] = None,
              upsample: bool = True, normalize: bool = True) -> np.ndarray:
    """HiResCAM (Draelos and Carin, 2020): ``relu(sum_k G_k * A_k)`` (pytorch-grad-cam's
    ``HiResCAM``).

    Parameters
    ----------
    model, x, target, layer, upsample, normalize
        As in :func:`grad_cam`.

    Returns
    -------
    float32 ndarray
        (N, H, W), or (N, h, w) at the layer's resolution with ``upsample=False``; in [0, 1]
        with ``normalize=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> maps = explain.hires_cam(model, x, target=[0, 3], normalize=False, upsample=False)
    >>> maps.shape, bool((maps >= 0).all())
    ((2, 8, 8), True)
    """
    return _run_cam("hires_cam", model, x, target, layer, upsample, normalize)


@accepts_dlpack
def eigen_cam(model: Any, x: np.ndarray, target: Target = None, *, layer: Optional[str] = None,
              upsample: bool = True, normalize: bool = True) -> np.ndarray:
    """Eigen-CAM (Muhammad and Yeasin, 2020): the activations at ``layer``, centred over the
    spatial positions, projected on their first right singular vector; then the ReLU. Class
    agnostic (``target`` is only checked) and gradient free. The SVD's sign is kept as
    pytorch-grad-cam keeps it (``numpy.linalg.svd`` of the float32 (h*w, K) matrix), so the maps
    agree with ``EigenCAM`` on the same activations; a map whose salient region came out negative
    is zeroed by the ReLU there too. (LAPACK's sign is not continuous in its input: activations
    that differ by rounding, e.g. a PyTorch twin's, can give an image the opposite sign.)

    Parameters
    ----------
    model, x, target, layer, upsample, normalize
        As in :func:`grad_cam`.

    Returns
    -------
    float32 ndarray
        (N, H, W), or (N, h, w) at the layer's resolution with ``upsample=False``; in [0, 1]
        with ``normalize=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.eigen_cam(model, x).shape
    (2, 16, 16)
    """
    return _run_cam("eigen_cam", model, x, target, layer, upsample, normalize)


@accepts_dlpack
def score_cam(model: Any, x: np.ndarray, target: Target = None, *, layer: Optional[str] = None,
              upsample: bool = True, normalize: bool = True, batch_size: Optional[int] = None) -> np.ndarray:
    """Score-CAM (Wang et al., 2020), as pytorch-grad-cam's ``ScoreCAM``: each activation map
    ``A_k`` is upsampled to the input (bilinear, ``align_corners=True``), scaled to [0, 1] by
    ``(M - min) / (max - min + 1e-8)`` and multiplied into the input; the target logits of those
    N*K masked inputs, softmaxed over k, weight the maps: ``relu(sum_k w_k A_k)``. Forward passes
    only, in chunks of ``batch_size`` masked inputs.

    Parameters
    ----------
    model : anything with ``forward`` and the capture protocol (see :func:`grad_cam`)
    x, target, layer, upsample, normalize : as in :func:`grad_cam`
    batch_size : int, optional
        Masked inputs per forward (default: a few hundred MB worth).

    Returns
    -------
    float32 ndarray
        (N, H, W), or (N, h, w) at the layer's resolution with ``upsample=False``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.score_cam(model, x, target=2).shape  # 2 images x 16 channels = 32 forwards
    (2, 16, 16)
    """
    x = _model.check_images(x, model)
    upsample, normalize = _flags(upsample, normalize)
    if batch_size is not None:
        _model.check_batch_size(batch_size, 1)
    layout = _model.layout_of(model)
    C, H, W = _model.spatial(x, layout)
    spec = _model.check_target(target, x.shape[0])
    with _model.explaining(model):
        name = _model.resolve_layer(model, layer, x)
        A, _, logits, targets = _model.layer_pass(model, x, name, spec, need_grad=False)
        bs = _model.default_batch_size(model, x) if batch_size is None else batch_size
        A = _layer_nchw(A, layout, name)
        N, K = A.shape[:2]
        masks = resize_maps(A, (H, W), align_corners=True)            # (N, K, H, W) float64
        flat = masks.reshape(N, K, -1)
        lo = flat.min(axis=2)[:, :, None, None]
        hi = flat.max(axis=2)[:, :, None, None]
        masks = ((masks - lo) / (hi - lo + 1e-8)).astype(np.float32)
        xn = _model.to_nchw(x, layout)
        scores = np.empty(N * K, np.float64)
        buf = np.empty((min(bs, N * K),) + x.shape[1:], np.float32)
        for a, b in _model.chunks(N * K, bs):
            nn_, kk = np.divmod(np.arange(a, b), K)
            xb = buf[:b - a]
            _model.to_nchw(xb, layout)[...] = xn[nn_] * masks[nn_, kk][:, None]
            out = _model._as_logits(model.forward(xb), b - a)
            scores[a:b] = out[np.arange(b - a), targets[nn_]]
    s = scores.reshape(N, K)
    s = np.exp(s - s.max(axis=1, keepdims=True))
    w = s / s.sum(axis=1, keepdims=True)
    maps = np.maximum(np.einsum("nk,nkij->nij", w, np.asarray(A, np.float64)), 0.0)
    return _finish(maps, (H, W), upsample, normalize)


@accepts_dlpack
def guided_grad_cam(model: Any, x: np.ndarray, target: Target = None, *, layer: Optional[str] = None,
                    interpolate: str = "nearest", batch_size: Optional[int] = None) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al.), as captum's ``GuidedGradCam``: the guided-backprop
    attribution times the layer-resolution Grad-CAM (after its ReLU, not normalized) resized to
    the input with ``interpolate`` ("nearest", captum's default, or "bilinear").

    Parameters
    ----------
    model : with the layer protocol and a guided ReLU rule (see :func:`guided_backprop`)
    x, target, layer : as in :func:`grad_cam`
    interpolate : {"nearest", "bilinear"}
    batch_size : as in :func:`cnnkit.explain.saliency`

    Returns
    -------
    float32 ndarray
        x's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnkit import explain, models
    >>> model = models.resnet_small(3, 4, widths=(8, 16), blocks=(1, 1), seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> explain.guided_grad_cam(model, x).shape
    (2, 3, 16, 16)
    """
    from .gradients import guided_backprop
    if interpolate not in ("nearest", "bilinear"):
        raise ValueError(f"interpolate: expected 'nearest' or 'bilinear', got {interpolate!r}")
    x = _model.check_images(x, model)
    layout = _model.layout_of(model)
    _, H, W = _model.spatial(x, layout)
    spec = _model.check_target(target, x.shape[0])
    if spec is None:     # both passes explain the predicted class
        with _model.explaining(model):
            spec = _model.targets_for(None, _model.logits_of(model, x))
    cam = grad_cam(model, x, spec, layer=layer, upsample=False, normalize=False)
    up = resize_maps(cam, (H, W), mode=interpolate).astype(np.float32)
    gb = guided_backprop(model, x, spec, batch_size=batch_size)
    axis = 1 if layout == "NCHW" else 3
    return gb * np.expand_dims(up, axis)
