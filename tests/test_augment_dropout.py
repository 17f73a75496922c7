"""Spatial dropout (torch.nn.Dropout2d semantics on 4-D input) and its backward."""
from __future__ import annotations

import numpy as np
import pytest

import cnnkit.augment.functional as F


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_whole_channels_dropped_and_scaled(layout, dtype, p, rng):
    x = rng.standard_normal((6, 5, 4, 3)).astype(dtype) + 3.0  # no zeros in x
    y, scale = F.spatial_dropout(x, p, np.random.default_rng(7), layout=layout)
    assert scale.shape == ((6, 5) if layout == "NCHW" else (6, 3))
    assert set(np.unique(scale)) <= {0.0, 1.0 / (1.0 - p)}
    s = scale[:, :, None, None] if layout == "NCHW" else scale[:, None, None, :]
    ref = x.astype(np.float64) * s
    np.testing.assert_allclose(y, ref, rtol=1e-6 if dtype == np.float32 else 1e-15)
    # a dropped channel is zero everywhere, a kept one nowhere
    yc = y if layout == "NCHW" else np.moveaxis(y, -1, 1)
    zero = (yc == 0).all(axis=(2, 3))
    assert np.array_equal(zero, scale == 0)
    assert y.dtype == x.dtype


def test_drop_rate_and_seeding():
    x = np.ones((400, 50, 2, 2), np.float32)
    _, s1 = F.spatial_dropout(x, 0.3, np.random.default_rng(1))
    _, s2 = F.spatial_dropout(x, 0.3, np.random.default_rng(1))
    _, s3 = F.spatial_dropout(x, 0.3, np.random.default_rng(2))
    assert np.array_equal(s1, s2) and not np.array_equal(s1, s3)
    rate = (s1 == 0).mean()
    assert abs(rate - 0.3) < 4 * np.sqrt(0.3 * 0.7 / s1.size)  # within 4 sigma of p


def test_neutral_and_extreme_settings(rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    for kw in (dict(p=0.0), dict(p=0.7, training=False)):
        y, s = F.spatial_dropout(x, rng=np.random.default_rng(0), **kw)
        assert np.array_equal(y, x) and y is not x and (s == 1).all()
    y, s = F.spatial_dropout(x, 1.0, np.random.default_rng(0))
    assert (y == 0).all() and (s == 0).all()


def test_backward_uses_the_same_mask(rng):
    x = rng.standard_normal((4, 6, 3, 3))
    g = rng.standard_normal(x.shape)
    y, s = F.spatial_dropout(x, 0.5, np.random.default_rng(3))
    gx = F.spatial_dropout_backward(g, s)
    # y = x * scale per channel, so d(sum(g * y))/dx = g * scale
    np.testing.assert_allclose(gx, g * s[:, :, None, None], rtol=1e-15)
    out = np.empty_like(g)
    assert F.spatial_dropout_backward(g, s, out=out) is out


def test_out_is_used(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    out = np.full_like(x, np.nan)
    y, _ = F.spatial_dropout(x, 0.5, np.random.default_rng(0), out=out)
    assert y is out and not np.isnan(out).any()


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(p=-0.1), ValueError, "p"),
    (dict(p=1.5), ValueError, "p"),
    (dict(p=float("nan")), ValueError, "p"),
    (dict(p="0.5"), TypeError, "p"),            # a wrong type is a TypeError
    (dict(p=None), TypeError, "p"),
    (dict(p=True), TypeError, "p"),
    (dict(rng=0), TypeError, "rng"),
    (dict(training=1), TypeError, "training"),
    (dict(layout="CHW"), ValueError, "layout"),
])
def test_bad_arguments(kwargs, exc, match, rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    args = dict(p=0.5, rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        F.spatial_dropout(x, args.pop("p"), args.pop("rng"), **args)


def test_transform_probability_of_a_wrong_type_is_a_type_error():
    from cnnkit.augment import RandomHorizontalFlip, SpatialDropout
    for bad in ("0.5", None, True):
        with pytest.raises(TypeError, match="^p: "):
            SpatialDropout(bad)
        with pytest.raises(TypeError, match="^p: "):
            RandomHorizontalFlip(bad)
    with pytest.raises(ValueError, match="^p: "):
        SpatialDropout(1.5)


def test_bad_inputs(rng):
    with pytest.raises(TypeError, match="x"):
        F.spatial_dropout(np.ones((2, 3, 4, 4), np.uint8), 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="x"):
        F.spatial_dropout(np.ones((3, 4, 4), np.float32), 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="scale"):
        F.spatial_dropout_backward(np.ones((2, 3, 4, 4)), np.ones((2, 4)))


def test_bad_layout_draws_nothing_from_rng(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    r = np.random.default_rng(5)
    before = r.bit_generator.state
    with pytest.raises(ValueError, match="layout"):
        F.spatial_dropout(x, 0.5, r, layout="CHW")
    assert r.bit_generator.state == before
