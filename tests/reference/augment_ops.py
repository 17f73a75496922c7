"""NumPy references for the uint8 image ops of cnnkit.augment.functional (colour, flips, affine,
crops, CLAHE and the policy interpreter ``apply_ops``).

Written from the contract (torchvision's tensor path on uint8 CHW tensors, v1; OpenCV's CLAHE)
so that they are easy to audit; they never call cnnkit. Every function is pure: inputs are
copied, never modified. Images are uint8 (N, H, W, C) or one (H, W, C) image (the result then
has the same rank). Per-image parameters are a scalar or one value per image.

Colour (float32 arithmetic, emulated with NumPy float32 scalars and arrays, so bit-exact)::

    blend(a, b, r) = uint8(trunc(clip(f32(f32(r) * f32(a)) + f32(f32(1 - r) * f32(b)), 0, 255)))
                     (1 - r computed in double, then rounded to float32)
    gray(x)        = uint8(trunc(f32(f32(0.2989f * R) + f32(0.587f * G)) + f32(0.114f * B)))
    brightness: blend(x, 0, f)          contrast: blend(x, mean, f), mean = f32(sum gray) / f32(H*W)
    saturation: blend(x, gray(x), f)    (C = 1: x)
    sharpness:  blend(x, deg, f), deg = x on the border, rint(sum3x3(x) + 4 x) / 13) inside
                (H <= 2 or W <= 2: x)

Affine (float64 source coordinates of destination pixel (x, y))::

    m = torchvision's inverse affine matrix in centred coordinates (inverse_affine_matrix)
    xc = x - (W - 1) / 2,  yc = y - (H - 1) / 2
    sx = ((m0 xc + m1 yc) + m2) + (W - 1) / 2,  sy = ((m3 xc + m4 yc) + m5) + (H - 1) / 2
    nearest:  rint(sx), rint(sy) inside the image -> that pixel, else fill (0 when fill is None)
    bilinear: corner weights (1-wx)(1-wy), wx(1-wy), (1-wx)wy, wx wy; corners outside add 0;
              with a fill: v = v * mask + (1 - mask) * fill, mask = sum of the inside weights;
              out = clip(rint(v), 0, 255)

resized_crop: separable bilinear in float64 (antialias: the PIL / torch triangle filter with
support max(scale, 1); otherwise torch's align_corners=False bilinear), out = clip(rint(v)).

pad_crop: numpy.pad (constant with per-channel fill, "edge", "reflect"), then a window.

clahe: OpenCV's CLAHE on every channel (8-bit, 256 bins) — see ``clahe_plane``.

rint is round half to even throughout (numpy.rint).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["blend", "gray", "contrast_mean", "sharpness_degenerate", "adjust_brightness",
           "adjust_contrast", "adjust_saturation", "adjust_sharpness", "hflip", "vflip",
           "inverse_affine_matrix", "affine_matrices", "source_coords", "sample_nearest",
           "bilinear_values", "sample_bilinear", "affine", "rotate", "shear_x", "shear_y",
           "translate_x", "translate_y", "geometry_kw", "affine_source_coords", "resize_weights",
           "resized_crop_values", "resized_crop", "pad_crop", "clahe_plane", "clahe", "posterize",
           "solarize", "invert", "autocontrast", "equalize", "OPS", "apply_op", "apply_ops"]

F32 = np.float32


# ---- batches and per-image parameters -----------------------------------------------------------

def _batch(images):
    """A uint8 (N, H, W, C) copy and whether the input was a single (H, W, C) image."""
    x = np.array(images, copy=True)
    if x.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(f"expected (N, H, W, C) or (H, W, C), got shape {x.shape}")
    return x, False


def _unbatch(y, single):
    y = np.ascontiguousarray(y)
    return y[0] if single else y


def _per_image(value, n):
    """float64 (n,) from a scalar or n values."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        return np.full(n, float(a))
    a = a.reshape(-1)
    if a.size != n:
        raise ValueError(f"expected one value or {n}, got {a.size}")
    return a.copy()


def _per_image_pair(value, n):
    """float64 (n, 2) from a pair or an (n, 2) array."""
    a = np.asarray(value, dtype=np.float64)
    if a.shape == (2,):
        return np.tile(a, (n, 1))
    if a.shape != (n, 2):
        raise ValueError(f"expected a pair or ({n}, 2), got shape {a.shape}")
    return a.copy()


def _fill_values(fill, c):
    """None, or float64 (c,) from a number or c numbers."""
    if fill is None:
        return None
    a = np.asarray(fill, dtype=np.float64).reshape(-1)
    if a.size == 1:
        return np.full(c, float(a[0]))
    if a.size != c:
        raise ValueError(f"expected 1 or {c} fill values, got {a.size}")
    return a


# ---- colour (float32, as torchvision's tensor path) ----------------------------------------------

def blend(a, b, ratio):
    """uint8(trunc(clip(f32(r) a + f32(1 - r) b, 0, 255))) in float32; a, b broadcastable arrays
    of pixel values (uint8 or float32 holding integers or a float32 mean), r one double."""
    r32 = F32(ratio)
    q32 = F32(1.0 - float(ratio))
    a32 = np.asarray(a, dtype=F32)
    b32 = np.asarray(b, dtype=F32)
    v = (r32 * a32).astype(F32) + (q32 * b32).astype(F32)
    assert v.dtype == F32
    return np.clip(v, F32(0), F32(255)).astype(np.uint8)   # float -> uint8 truncates


def gray(image):
    """torchvision's rgb_to_grayscale of uint8 (..., 3) pixels: uint8, keeps a size-1 last axis."""
    x = np.asarray(image)
    r, g, b = (x[..., k].astype(F32) for k in range(3))
    s = ((F32(0.2989) * r).astype(F32) + (F32(0.587) * g).astype(F32)).astype(F32)
    s = (s + (F32(0.114) * b).astype(F32)).astype(F32)
    return s.astype(np.uint8)[..., None]


def _gray_or_self(img):
    return gray(img) if img.shape[-1] == 3 else img


def _colour_check(x):
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"colour ops need C in (1, 3), got {x.shape[-1]}")


def adjust_brightness(images, factor):
    x, single = _batch(images)
    f = _per_image(factor, x.shape[0])
    y = np.stack([blend(img, 0, f[i]) for i, img in enumerate(x)]) if len(x) else x.copy()
    return _unbatch(y, single)


def contrast_mean(img):
    """float32 mean of one image's gray plane: f32(sum) / f32(H*W) (the sum is exact)."""
    g = _gray_or_self(img).astype(np.int64)
    if g.size == 0:
        return F32(0)
    return F32(g.sum()) / F32(img.shape[0] * img.shape[1])


def adjust_contrast(images, factor):
    x, single = _batch(images)
    _colour_check(x)
    f = _per_image(factor, x.shape[0])
    y = np.stack([blend(img, contrast_mean(img), f[i]) for i, img in enumerate(x)]) \
        if len(x) else x.copy()
    return _unbatch(y, single)


def adjust_saturation(images, factor):
    x, single = _batch(images)
    _colour_check(x)
    f = _per_image(factor, x.shape[0])
    if x.shape[-1] == 1:
        return _unbatch(x, single)
    y = np.stack([blend(img, gray(img), f[i]) for i, img in enumerate(x)]) if len(x) else x.copy()
    return _unbatch(y, single)


def sharpness_degenerate(img):
    """The blurred image of adjust_sharpness: border kept, inside rint((3x3 sum + 4 centre) / 13)."""
    h, w, _ = img.shape
    deg = img.copy()
    if h <= 2 or w <= 2:
        return deg
    p = img.astype(np.int64)
    s = np.zeros((h - 2, w - 2, img.shape[2]), np.int64)
    for dy in range(3):
        for dx in range(3):
            s += p[dy:dy + h - 2, dx:dx + w - 2]
    s += 4 * p[1:-1, 1:-1]
    # S / 13 is never within 1/26 of a .5, so float64 division then rint is the exact rounding.
    deg[1:-1, 1:-1] = np.rint(s / 13.0).astype(np.uint8)
    return deg


def adjust_sharpness(images, factor):
    x, single = _batch(images)
    _colour_check(x)
    f = _per_image(factor, x.shape[0])
    if x.shape[1] <= 2 or x.shape[2] <= 2:
        return _unbatch(x, single)
    y = np.stack([blend(img, sharpness_degenerate(img), f[i]) for i, img in enumerate(x)]) \
        if len(x) else x.copy()
    return _unbatch(y, single)


# ---- flips --------------------------------------------------------------------------------------

def hflip(images):
    x, single = _batch(images)
    return _unbatch(x[:, :, ::-1], single)


def vflip(images):
    x, single = _batch(images)
    return _unbatch(x[:, ::-1], single)


# ---- affine -------------------------------------------------------------------------------------

def inverse_affine_matrix(center, angle, translate, scale, shear):
    """torchvision's inverse affine matrix [m0..m5] (destination -> source), float64.

    With rotation a, shears (sx, sy) in radians the forward rotate-scale-shear is
    s * [[A, B], [C, D]] with
        A = cos(a - sy) / cos(sy),   B = -cos(a - sy) tan(sx) / cos(sy) - sin(a)
        C = sin(a - sy) / cos(sy),   D = -sin(a - sy) tan(sx) / cos(sy) + cos(a)
    and det [[A, B], [C, D]] = 1, so its inverse is [[D, -B], [-C, A]] / s. The full inverse is
    M^-1 = C * RSS^-1 * C^-1 * T^-1 (C: translation by the centre, T: by `translate`).
    Operations are ordered as torchvision evaluates them (for float64 bit-equality).
    """
    rot = math.radians(angle)
    shx = math.radians(shear[0])
    shy = math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a_ = math.cos(rot - shy) / math.cos(shy)
    b_ = -math.cos(rot - shy) * math.tan(shx) / math.cos(shy) - math.sin(rot)
    c_ = math.sin(rot - shy) / math.cos(shy)
    d_ = -math.sin(rot - shy) * math.tan(shx) / math.cos(shy) + math.cos(rot)
    m = [d_ / scale, -b_ / scale, 0.0 / scale, -c_ / scale, a_ / scale, 0.0 / scale]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def affine_matrices(n, h, w, angle=0.0, translate=(0, 0), scale=1.0, shear=(0.0, 0.0),
                    center=None):
    """float64 (n, 6) inverse matrices of F.affine for n images of size (h, w).

    `center` None -> (0, 0) in centred coordinates, else a pixel position (cx, cy) (or (n, 2))
    -> (cx - w/2, cy - h/2), as torchvision's F.affine / F.rotate.
    """
    ang = _per_image(angle, n)
    tr = _per_image_pair(translate, n)
    sc = _per_image(scale, n)
    sh = _per_image_pair(shear, n)
    ce = None if center is None else _per_image_pair(center, n)
    out = np.empty((n, 6))
    for i in range(n):
        cf = (0.0, 0.0) if ce is None else (1.0 * (ce[i, 0] - w * 0.5), 1.0 * (ce[i, 1] - h * 0.5))
        out[i] = inverse_affine_matrix(cf, float(ang[i]), [float(tr[i, 0]), float(tr[i, 1])],
                                       float(sc[i]), [float(sh[i, 0]), float(sh[i, 1])])
    return out


def source_coords(m, h, w):
    """float64 (sx, sy), each (h, w), for one inverse matrix m (the contract's evaluation order)."""
    hw, hh = (w - 1) / 2.0, (h - 1) / 2.0
    xc = np.arange(w, dtype=np.float64)[None, :] - hw
    yc = np.arange(h, dtype=np.float64)[:, None] - hh
    sx = ((m[0] * xc + m[1] * yc) + m[2]) + hw
    sy = ((m[3] * xc + m[4] * yc) + m[5]) + hh
    return sx, sy


def sample_nearest(img, sx, sy, fill=None):
    """Nearest sampling of one (H, W, C) uint8 image at float64 (sx, sy) (any shape (h', w'))."""
    h, w, c = img.shape
    ix = np.rint(sx).astype(np.int64)
    iy = np.rint(sy).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = img[np.clip(iy, 0, max(h - 1, 0)), np.clip(ix, 0, max(w - 1, 0))].copy()
    fv = _fill_values(fill, c)
    if fv is None:
        fv = np.zeros(c)
    out[~inside] = np.clip(np.rint(fv), 0, 255).astype(np.uint8)
    return out


def bilinear_values(img, sx, sy, fill=None):
    """float64 (h', w', C) bilinear values before rounding (zeros padding, then the fill mask)."""
    h, w, c = img.shape
    x0 = np.floor(sx)
    y0 = np.floor(sy)
    wx = sx - x0
    wy = sy - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    p = img.astype(np.float64)
    v = np.zeros(sx.shape + (c,))
    mask = np.zeros(sx.shape)
    for dy, wyk in ((0, 1.0 - wy), (1, wy)):
        for dx, wxk in ((0, 1.0 - wx), (1, wx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            wt = np.where(ok, wxk * wyk, 0.0)
            v += wt[..., None] * p[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
            mask += wt
    fv = _fill_values(fill, c)
    if fv is not None:
        v = v * mask[..., None] + (1.0 - mask[..., None]) * fv
    return v


def sample_bilinear(img, sx, sy, fill=None):
    return np.clip(np.rint(bilinear_values(img, sx, sy, fill)), 0, 255).astype(np.uint8)


def _warp(x, mats, interpolation, fill):
    n, h, w, _ = x.shape
    y = np.empty_like(x)
    for i in range(n):
        sx, sy = source_coords(mats[i], h, w)
        if interpolation == "nearest":
            y[i] = sample_nearest(x[i], sx, sy, fill)
        elif interpolation == "bilinear":
            y[i] = sample_bilinear(x[i], sx, sy, fill)
        else:
            raise ValueError(f"unknown interpolation {interpolation!r}")
    return y


def affine(images, angle=0.0, translate=(0, 0), scale=1.0, shear=(0.0, 0.0), *, center=None,
           interpolation="nearest", fill=None):
    """torchvision F.affine on uint8 tensors (angle clockwise, degrees), in float64."""
    x, single = _batch(images)
    n, h, w, _ = x.shape
    mats = affine_matrices(n, h, w, angle, translate, scale, shear, center)
    return _unbatch(_warp(x, mats, interpolation, fill), single)


def affine_source_coords(images, angle=0.0, translate=(0, 0), scale=1.0, shear=(0.0, 0.0), *,
                         center=None):
    """float64 (sx, sy), each (N, H, W), of affine(...) (for masks near rounding boundaries)."""
    x, _ = _batch(images)
    n, h, w, _ = x.shape
    mats = affine_matrices(n, h, w, angle, translate, scale, shear, center)
    sxy = [source_coords(mats[i], h, w) for i in range(n)]
    return (np.stack([s[0] for s in sxy]).reshape(n, h, w),
            np.stack([s[1] for s in sxy]).reshape(n, h, w))


def _rotate_kw(images, angle, center):
    """affine(...) keywords equal to F.rotate(angle, center) (matrix with -angle)."""
    x, _ = _batch(images)
    return dict(angle=-_per_image(angle, x.shape[0]), translate=(0, 0), scale=1.0,
                shear=(0.0, 0.0), center=center)


def rotate(images, angle, *, interpolation="nearest", fill=None, center=None):
    """torchvision F.rotate (counter-clockwise, expand=False)."""
    return affine(images, **_rotate_kw(images, angle, center), interpolation=interpolation,
                  fill=fill)


def _shear_kw(images, factor, axis):
    x, _ = _batch(images)
    f = _per_image(factor, x.shape[0])
    deg = np.array([math.degrees(math.atan(v)) for v in f])
    sh = np.zeros((len(f), 2))
    sh[:, axis] = deg
    return dict(angle=0.0, translate=(0, 0), scale=1.0, shear=sh, center=(0, 0))


def _translate_kw(images, pixels, axis):
    x, _ = _batch(images)
    p = _per_image(pixels, x.shape[0])
    tr = np.zeros((len(p), 2))
    tr[:, axis] = [int(v) for v in p]          # int() truncates toward zero
    return dict(angle=0.0, translate=tr, scale=1.0, shear=(0.0, 0.0), center=None)


def shear_x(images, factor, *, interpolation="nearest", fill=None):
    """autoaugment ShearX: F.affine(shear=[degrees(atan(factor)), 0], center=[0, 0])."""
    return affine(images, **_shear_kw(images, factor, 0), interpolation=interpolation, fill=fill)


def shear_y(images, factor, *, interpolation="nearest", fill=None):
    return affine(images, **_shear_kw(images, factor, 1), interpolation=interpolation, fill=fill)


def translate_x(images, pixels, *, interpolation="nearest", fill=None):
    """autoaugment TranslateX: F.affine(translate=[int(pixels), 0])."""
    return affine(images, **_translate_kw(images, pixels, 0), interpolation=interpolation,
                  fill=fill)


def translate_y(images, pixels, *, interpolation="nearest", fill=None):
    return affine(images, **_translate_kw(images, pixels, 1), interpolation=interpolation,
                  fill=fill)


# keyword sets of affine(...) for the named geometric ops, for coordinate masks in tests
def geometry_kw(op, images, param, center=None):
    if op == "rotate":
        return _rotate_kw(images, param, center)
    if op in ("shear_x", "shear_y"):
        return _shear_kw(images, param, int(op == "shear_y"))
    if op in ("translate_x", "translate_y"):
        return _translate_kw(images, param, int(op == "translate_y"))
    raise ValueError(op)


# ---- resized crop -------------------------------------------------------------------------------

def resize_weights(n_in, n_out, antialias):
    """float64 (n_out, n_in) interpolation matrix of one axis (rows sum to 1)."""
    scale = n_in / n_out
    wts = np.zeros((n_out, n_in))
    if antialias:
        support = max(scale, 1.0)
        for i in range(n_out):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            j = np.arange(lo, hi)
            wj = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) / support))
            wts[i, lo:hi] = wj / wj.sum()
    else:
        for i in range(n_out):
            src = max((i + 0.5) * scale - 0.5, 0.0)
            x0 = math.floor(src)
            x1 = min(x0 + 1, n_in - 1)
            t = src - x0
            wts[i, x0] += 1.0 - t
            wts[i, x1] += t
    return wts


def _size_pair(size):
    if np.ndim(size) == 0:
        return int(size), int(size)
    oh, ow = size
    return int(oh), int(ow)


def resized_crop_values(images, boxes, size, *, antialias=True):
    """float64 (N, oh, ow, C) values before rounding; boxes (N, 4) (top, left, height, width)."""
    x, single = _batch(images)
    n = x.shape[0]
    b = np.asarray(boxes, dtype=np.int64).reshape(n, 4)
    oh, ow = _size_pair(size)
    v = np.empty((n, oh, ow, x.shape[-1]))
    for i in range(n):
        t, l, bh, bw = (int(z) for z in b[i])
        crop = x[i, t:t + bh, l:l + bw].astype(np.float64)
        wy = resize_weights(bh, oh, antialias)
        wx = resize_weights(bw, ow, antialias)
        v[i] = np.einsum("oh,hwc,pw->opc", wy, crop, wx)
    return v[0] if single else v


def resized_crop(images, boxes, size, *, antialias=True):
    v = resized_crop_values(images, boxes, size, antialias=antialias)
    return np.ascontiguousarray(np.clip(np.rint(v), 0, 255).astype(np.uint8))


# ---- pad + crop ---------------------------------------------------------------------------------

def pad_crop(images, offsets, padding, *, fill=0, padding_mode="constant"):
    x, single = _batch(images)
    n, h, w, c = x.shape
    off = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    p = int(padding)
    if padding_mode == "constant":
        fv = _fill_values(fill, c)
        padded = np.empty((n, h + 2 * p, w + 2 * p, c), np.uint8)
        padded[...] = fv.astype(np.uint8)
        padded[:, p:p + h, p:p + w] = x
    elif padding_mode in ("edge", "reflect"):
        padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=padding_mode)
    else:
        raise ValueError(f"unknown padding_mode {padding_mode!r}")
    y = np.stack([padded[i, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w]
                  for i in range(n)]) if n else x.copy()
    return _unbatch(y, single)


# ---- CLAHE (OpenCV, 8-bit) ----------------------------------------------------------------------

def _reflect101(i, n):
    """OpenCV borderInterpolate(i, n, BORDER_REFLECT_101) (gfedcb|abcdefgh|gfedcba)."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def clahe_plane(plane, clip_limit=4.0, tile_grid_size=(8, 8)):
    """OpenCV's CLAHE (createCLAHE(clip_limit, tile_grid_size).apply) on one uint8 (H, W) plane.

    tile_grid_size = (tiles across, tiles down). When H or W is not a multiple of the grid, the
    histograms are taken on the image extended at the bottom/right by (ty - H % ty) rows and
    (tx - W % tx) columns with BORDER_REFLECT_101 (both, as OpenCV does, even if one side
    divides). tile = extended size / grid; area = th * tw.
    Per tile: histogram; clip limit L = max(int(clip_limit * area / 256), 1) if clip_limit > 0;
    excess = sum(max(h - L, 0)); h = min(h, L); h += excess // 256; the residual r = excess % 256
    bins get one more, at bins 0, s, 2s, ... (s = max(256 // r, 1)) while r lasts.
    LUT[i] = saturate(rint(f32(cumsum(h)[i]) * (255f / f32(area)))).
    Each output pixel interpolates the four nearest tile LUTs bilinearly in float32:
    tyf = y * (1f / th) - 0.5f, ty1 = floor(tyf), ya = tyf - ty1, ya1 = 1 - ya,
    ty2 = min(ty1 + 1, ty - 1), ty1 = max(ty1, 0) (same across), and
    res = (l11 xa1 + l12 xa) ya1 + (l21 xa1 + l22 xa) ya, out = saturate(rint(res)).
    """
    src = np.asarray(plane)
    assert src.dtype == np.uint8 and src.ndim == 2
    h, w = src.shape
    tx, ty = int(tile_grid_size[0]), int(tile_grid_size[1])
    if w % tx == 0 and h % ty == 0:
        ext = src
    else:
        rows = np.array([_reflect101(i, h) for i in range(h + ty - h % ty)])
        cols = np.array([_reflect101(j, w) for j in range(w + tx - w % tx)])
        ext = src[rows[:, None], cols[None, :]]
    th, tw = ext.shape[0] // ty, ext.shape[1] // tx
    area = th * tw
    limit = max(int(clip_limit * area / 256), 1) if clip_limit > 0 else 0
    scale = F32(255) / F32(area)
    luts = np.empty((ty, tx, 256), np.uint8)
    for r in range(ty):
        for c in range(tx):
            hist = np.bincount(ext[r * th:(r + 1) * th, c * tw:(c + 1) * tw].ravel(),
                               minlength=256).astype(np.int64)
            if limit > 0:
                excess = int(np.maximum(hist - limit, 0).sum())
                hist = np.minimum(hist, limit)
                hist += excess // 256
                residual = excess % 256
                if residual:
                    step = max(256 // residual, 1)
                    i = 0
                    while i < 256 and residual > 0:
                        hist[i] += 1
                        i += step
                        residual -= 1
            cum = np.cumsum(hist).astype(F32)
            luts[r, c] = np.clip(np.rint((cum * scale).astype(F32)), 0, 255).astype(np.uint8)

    def axis(n, tsize, tiles):
        inv = F32(1.0) / F32(tsize)
        f = (np.arange(n).astype(F32) * inv).astype(F32) - F32(0.5)
        f = f.astype(F32)
        i1 = np.floor(f).astype(np.int64)
        a = (f - i1.astype(F32)).astype(F32)
        a1 = (F32(1.0) - a).astype(F32)
        i2 = np.minimum(i1 + 1, tiles - 1)
        i1 = np.maximum(i1, 0)
        return i1, i2, a, a1

    y1, y2, ya, ya1 = axis(h, th, ty)
    x1, x2, xa, xa1 = axis(w, tw, tx)
    v = src.astype(np.int64)
    l11 = luts[y1[:, None], x1[None, :], v].astype(F32)
    l12 = luts[y1[:, None], x2[None, :], v].astype(F32)
    l21 = luts[y2[:, None], x1[None, :], v].astype(F32)
    l22 = luts[y2[:, None], x2[None, :], v].astype(F32)
    top = ((l11 * xa1[None, :]).astype(F32) + (l12 * xa[None, :]).astype(F32)).astype(F32)
    bot = ((l21 * xa1[None, :]).astype(F32) + (l22 * xa[None, :]).astype(F32)).astype(F32)
    res = ((top * ya1[:, None]).astype(F32) + (bot * ya[:, None]).astype(F32)).astype(F32)
    return np.clip(np.rint(res), 0, 255).astype(np.uint8)


def clahe(images, clip_limit=4.0, tile_grid_size=(8, 8)):
    x, single = _batch(images)
    y = np.empty_like(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[-1]):
            y[i, ..., c] = clahe_plane(x[i, ..., c], clip_limit, tile_grid_size)
    return _unbatch(y, single)


# ---- Pillow's point ops (ImageOps, per channel), for apply_ops -----------------------------------

def _per_channel_lut(images, lut_of_plane):
    x, single = _batch(images)
    y = np.empty_like(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[-1]):
            # Image.point clamps table entries to [0, 255] (equalize's can exceed 255)
            lut = np.clip(np.asarray(lut_of_plane(x[i, ..., c])), 0, 255).astype(np.uint8)
            y[i, ..., c] = lut[x[i, ..., c]]
    return _unbatch(y, single)


def posterize(images, bits):
    keep = (0xFF << (8 - int(bits))) & 0xFF
    return _per_channel_lut(images, lambda p: np.arange(256) & keep)


def solarize(images, threshold):
    """Pixels >= threshold (any real) inverted."""
    lut = np.where(np.arange(256) >= threshold, 255 - np.arange(256), np.arange(256))
    return _per_channel_lut(images, lambda p: lut)


def invert(images):
    return _per_channel_lut(images, lambda p: 255 - np.arange(256))


def _autocontrast_lut(p):
    h = np.bincount(p.ravel(), minlength=256)
    nz = np.flatnonzero(h)
    if nz.size == 0 or nz[-1] <= nz[0]:
        return np.arange(256)
    lo, hi = int(nz[0]), int(nz[-1])
    scale = 255.0 / (hi - lo)
    offset = -lo * scale
    return np.array([min(max(int(i * scale + offset), 0), 255) for i in range(256)])


def autocontrast(images):
    """ImageOps.autocontrast(cutoff=0) per channel."""
    return _per_channel_lut(images, _autocontrast_lut)


def _equalize_lut(p):
    h = np.bincount(p.ravel(), minlength=256)
    histo = h[h > 0]
    if histo.size <= 1:
        return np.arange(256)
    step = (int(histo.sum()) - int(histo[-1])) // 255
    if step == 0:
        return np.arange(256)
    n = step // 2
    lut = []
    for i in range(256):
        lut.append(n // step)
        n += int(h[i])
    return np.array(lut)


def equalize(images):
    """ImageOps.equalize per channel."""
    return _per_channel_lut(images, _equalize_lut)


# ---- the policy interpreter ---------------------------------------------------------------------

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
       "HFlip", "VFlip")


def apply_op(image, name, magnitude, *, interpolation="nearest", fill=None):
    """One op of torchvision's autoaugment._apply_op convention on one (H, W, C) image."""
    m = float(magnitude)
    geo = dict(interpolation=interpolation, fill=fill)
    if name == "Identity":
        return image.copy()
    if name == "ShearX":
        return shear_x(image, m, **geo)
    if name == "ShearY":
        return shear_y(image, m, **geo)
    if name == "TranslateX":
        return translate_x(image, m, **geo)
    if name == "TranslateY":
        return translate_y(image, m, **geo)
    if name == "Rotate":
        return rotate(image, m, **geo)
    if name == "Brightness":
        return adjust_brightness(image, 1.0 + m)
    if name == "Color":
        return adjust_saturation(image, 1.0 + m)
    if name == "Contrast":
        return adjust_contrast(image, 1.0 + m)
    if name == "Sharpness":
        return adjust_sharpness(image, 1.0 + m)
    if name == "Posterize":
        return posterize(image, int(m))
    if name == "Solarize":
        return solarize(image, m)
    if name == "AutoContrast":
        return autocontrast(image)
    if name == "Equalize":
        return equalize(image)
    if name == "Invert":
        return invert(image)
    if name == "HFlip":
        return hflip(image)
    if name == "VFlip":
        return vflip(image)
    raise ValueError(f"unknown op {name!r}")


def apply_ops(images, ops, magnitudes, *, interpolation="nearest", fill=None):
    """Image n gets ops[n, 0], ops[n, 1], ... (indices into OPS or names)."""
    x, single = _batch(images)
    n = x.shape[0]
    ops_a = np.asarray(ops, dtype=object).reshape(n, -1)
    mags = np.asarray(magnitudes, dtype=np.float64).reshape(n, -1)
    y = x.copy()
    for i in range(n):
        img = y[i]
        for k in range(ops_a.shape[1]):
            op = ops_a[i, k]
            name = op if isinstance(op, str) else OPS[int(op)]
            img = apply_op(img, name, mags[i, k], interpolation=interpolation, fill=fill)
        y[i] = img
    return _unbatch(y, single)
