"""Transform classes on uint8 NHWC images: AutoAugment, RandAugment, TrivialAugmentWide, AugMix,
Normalize, Equalize, CLAHE, SpatialDropout, the flips, RandomResizedCrop, RandomCrop,
RandomAffine and ColorJitter.

* each transform's output equals the functional call made with its ``last_params`` (and, for the
  flips, NumPy's flip; for ColorJitter and RandomAffine, torchvision's functions when importable);
* seeding (same seed, same output; Compose reseeds its children from one seed), replay through
  ``last_params`` on a differently seeded twin, a single (H, W, C) image equals a batch of one,
  same_on_batch, probabilities, neutral settings give the input back, inputs are not modified,
  labels pass through, the same bits at 1 and 2 threads;
* bad arguments and inputs raise the documented exception naming the argument.
"""
from __future__ import annotations

import cnnkit.augment as A
import numpy as np
import pytest
from cnnkit.augment import functional as F
from conftest import assert_bitwise, import_torchvision, num_threads
from hypothesis import given, settings
from hypothesis import strategies as st


def _images(rng, n=6, h=20, w=23, c=3):
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    x[::2] = x[::2] // 3 + 70
    return x


def _functional(t, x, prm):
    """What the transform must compute from its parameters, written with the functional API."""
    if isinstance(t, (A.AutoAugment, A.RandAugment, A.TrivialAugmentWide)):
        if prm["ops"].shape[1] == 0:
            return x.copy()
        return F.apply_ops(x, prm["ops"], prm["magnitudes"], interpolation=t.interpolation, fill=t.fill)
    if isinstance(t, A.AugMix):
        return A.augmix(x, prm, interpolation=t.interpolation, fill=t.fill)
    if isinstance(t, A.Normalize):
        return F.to_float_normalize(x, t.mean, t.std)
    if isinstance(t, (A.Equalize, A.CLAHE, A.RandomHorizontalFlip)):
        fn = {A.Equalize: lambda v: F.equalize(v, t.mode),
              A.CLAHE: lambda v: F.clahe(v, t.clip_limit, t.tile_grid_size),
              A.RandomHorizontalFlip: F.hflip, A.RandomVerticalFlip: F.vflip}[type(t)]
        return np.where(prm["applied"][:, None, None, None], fn(x), x)
    if isinstance(t, A.RandomResizedCrop):
        return F.resized_crop(x, prm["boxes"], t.size, antialias=t.antialias)
    if isinstance(t, A.RandomCrop):
        return F.pad_crop(x, prm["offsets"], t.padding, fill=t.fill, padding_mode=t.padding_mode)
    if isinstance(t, A.RandomAffine):
        return F.affine(x, prm["angle"], prm["translate"], prm["scale"], prm["shear"], center=t.center,
                        interpolation=t.interpolation, fill=t.fill)
    if isinstance(t, A.ColorJitter):
        y = x
        for name, fn in (("brightness", F.adjust_brightness), ("contrast", F.adjust_contrast),
                         ("saturation", F.adjust_saturation)):
            if name in prm:
                y = fn(y, prm[name])
        return y.copy()
    raise AssertionError(type(t))


MAKERS = {
    "AutoAugment": lambda s: A.AutoAugment("cifar10", seed=s),
    "AutoAugment-svhn-bilinear": lambda s: A.AutoAugment("svhn", "bilinear", fill=(1, 2, 3), seed=s),
    "RandAugment": lambda s: A.RandAugment(seed=s),
    "RandAugment-3-20": lambda s: A.RandAugment(3, 20, 31, "bilinear", 9, seed=s),
    "TrivialAugmentWide": lambda s: A.TrivialAugmentWide(seed=s),
    "AugMix": lambda s: A.AugMix(seed=s),
    "AugMix-depth2": lambda s: A.AugMix(5, 2, 2, 0.5, False, "nearest", 0, seed=s),
    "Normalize": lambda s: A.Normalize(seed=s),
    "Equalize": lambda s: A.Equalize(seed=s),
    "Equalize-cv-p": lambda s: A.Equalize("cv", p=0.5, seed=s),
    "CLAHE": lambda s: A.CLAHE(2.0, (3, 2), p=0.7, seed=s),
    "RandomHorizontalFlip": lambda s: A.RandomHorizontalFlip(seed=s),
    "RandomVerticalFlip": lambda s: A.RandomVerticalFlip(0.3, seed=s),
    "RandomResizedCrop": lambda s: A.RandomResizedCrop((9, 12), seed=s),
    "RandomResizedCrop-noaa": lambda s: A.RandomResizedCrop(15, (0.3, 1.0), antialias=False, seed=s),
    "RandomCrop": lambda s: A.RandomCrop(seed=s),
    "RandomCrop-reflect": lambda s: A.RandomCrop(3, padding_mode="reflect", seed=s),
    "RandomCrop-fill": lambda s: A.RandomCrop(5, fill=(9, 99, 199), seed=s),
    "RandomAffine": lambda s: A.RandomAffine(30, (0.1, 0.2), (0.8, 1.2), (-10, 10, -5, 5), seed=s),
    "RandomAffine-bilinear": lambda s: A.RandomAffine(15, interpolation="bilinear", fill=(10, 20, 30), seed=s),
    "RandomAffine-center": lambda s: A.RandomAffine((-5, 40), shear=8, center=(3, 4), seed=s),
    "ColorJitter": lambda s: A.ColorJitter(0.4, 0.4, 0.4, seed=s),
    "ColorJitter-pairs": lambda s: A.ColorJitter((0.2, 1.8), 0, (0.0, 2.0), seed=s),
}
RANDOM = [k for k in MAKERS if k not in ("Normalize", "Equalize")]  # p=1 Equalize is deterministic


@pytest.mark.parametrize("name", list(MAKERS))
def test_output_is_the_functional_call_with_last_params(name, rng):
    t = MAKERS[name](3)
    x = _images(rng, 7)
    snap = x.copy()
    y = t(x)
    assert_bitwise(x, snap, f"{name}: input unchanged")
    assert y is not x and not np.shares_memory(y, x)
    assert_bitwise(y, _functional(t, x, t.last_params), f"{name} vs the functional call")
    if name != "Normalize":
        assert y.dtype == np.uint8
    labels = np.arange(7)
    y2, lab = t(x, params=t.last_params, labels=labels)
    assert_bitwise(y2, y, f"{name}: replay")
    assert lab is labels


@pytest.mark.parametrize("name", list(MAKERS))
def test_seeding_replay_and_single_images(name, rng):
    x = _images(rng, 6)
    a, b, other = MAKERS[name](11), MAKERS[name](11), MAKERS[name](12)
    ya = a(x)
    assert_bitwise(b(x), ya, f"{name}: same seed")
    assert_bitwise(other(x, params=a.last_params), ya, f"{name}: replay on a twin with another seed")
    a.seed(11)
    assert_bitwise(a(x), ya, f"{name}: reseeded")
    # a single (H, W, C) image: parameters for a batch of one
    y1 = a(x[2])
    assert y1.shape == ya.shape[1:]
    for k, v in a.last_params.items():
        assert np.shape(v)[0] == 1, f"{name}: {k} has a leading axis of 1"
    assert_bitwise(y1, other(x[2:3], params=a.last_params)[0], f"{name}: single image vs batch of one")
    if name in RANDOM:
        outs = [MAKERS[name](s)(x) for s in range(4)]
        assert any(not np.array_equal(outs[0], o) for o in outs[1:]), f"{name}: seeds change the draw"


HYPO = [k for k in MAKERS if not k.startswith(("RandomCrop", "Normalize"))]


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(HYPO), n=st.integers(1, 4), h=st.integers(1, 13), w=st.integers(1, 13),
       c=st.sampled_from([1, 3]), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_any_shape_equals_the_functional_call(name, n, h, w, c, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    t = MAKERS[name](seed)
    if isinstance(t, A.RandomAffine) or (isinstance(t, A.AutoAugment) and t.fill is not None):
        t.fill = 7  # per-channel fills need C values
    y = t(x)
    assert_bitwise(y, _functional(t, x, t.last_params), f"{name} on {x.shape}")
    one = {k: v[:1] for k, v in t.last_params.items()}
    assert_bitwise(t(x[0], params=one), y[0], f"{name}: a single image")


SAME_ON_BATCH = {
    "AutoAugment": lambda: A.AutoAugment(same_on_batch=True, seed=1),
    "RandAugment": lambda: A.RandAugment(same_on_batch=True, seed=1),
    "TrivialAugmentWide": lambda: A.TrivialAugmentWide(same_on_batch=True, seed=1),
    "AugMix": lambda: A.AugMix(same_on_batch=True, seed=1),
    "Equalize": lambda: A.Equalize(p=0.5, same_on_batch=True, seed=1),
    "CLAHE": lambda: A.CLAHE(p=0.5, same_on_batch=True, seed=1),
    "RandomHorizontalFlip": lambda: A.RandomHorizontalFlip(same_on_batch=True, seed=1),
    "RandomVerticalFlip": lambda: A.RandomVerticalFlip(same_on_batch=True, seed=1),
    "RandomResizedCrop": lambda: A.RandomResizedCrop(8, same_on_batch=True, seed=1),
    "RandomCrop": lambda: A.RandomCrop(same_on_batch=True, seed=1),
    "RandomAffine": lambda: A.RandomAffine(20, (0.1, 0.1), (0.9, 1.1), 5, same_on_batch=True, seed=1),
    "ColorJitter": lambda: A.ColorJitter(0.5, 0.5, 0.5, same_on_batch=True, seed=1),
}


@pytest.mark.parametrize("name", list(SAME_ON_BATCH))
def test_same_on_batch(name, rng):
    x = np.repeat(_images(rng, 1), 8, axis=0)
    for _ in range(3):
        t = SAME_ON_BATCH[name]()
        y = t(x)
        for k, v in t.last_params.items():
            assert np.all(v == v[:1]), f"{name}: {k} differs across the batch"
        assert np.all(y == y[:1]), f"{name}: equal images, equal outputs"


def test_probabilities(rng):
    x = _images(rng, 1, 4, 5)
    x = np.repeat(x, 4000, axis=0)
    for t, p in ((A.RandomHorizontalFlip(seed=0), 0.5), (A.RandomVerticalFlip(0.2, seed=0), 0.2),
                 (A.Equalize(p=0.7, seed=0), 0.7)):
        t(x)
        k = int(t.last_params["applied"].sum())
        assert abs(k - 4000 * p) <= 5 * np.sqrt(4000 * p * (1 - p)), (type(t).__name__, k)


def test_flips_are_numpys(rng):
    x = _images(rng, 9)
    h, v = A.RandomHorizontalFlip(seed=4), A.RandomVerticalFlip(seed=4)
    yh, yv = h(x), v(x)
    ah, av = h.last_params["applied"], v.last_params["applied"]
    assert 0 < ah.sum() < 9
    assert_bitwise(yh, np.where(ah[:, None, None, None], x[:, :, ::-1], x), "hflip")
    assert_bitwise(yv, np.where(av[:, None, None, None], x[:, ::-1], x), "vflip")


def test_neutral_settings_give_the_input_back(rng):
    x = _images(rng, 5)
    for t in (A.RandAugment(num_ops=0), A.ColorJitter(), A.RandomAffine(0), A.RandomCrop(0),
              A.RandomHorizontalFlip(0.0), A.RandomVerticalFlip(0.0), A.Equalize(p=0.0), A.CLAHE(p=0.0),
              A.RandomResizedCrop((20, 23), scale=(1.0, 1.0), ratio=(23 / 20, 23 / 20)),
              A.RandAugment(magnitude=0, num_magnitude_bins=1)):
        y = t(x)
        if isinstance(t, A.RandAugment) and t.num_ops:  # bin 0: shear 0, Posterize 8 bits, Solarize at 255
            ops = t.last_params["ops"]
            keep = ~np.isin(ops, [F.OPS.index(o) for o in ("AutoContrast", "Equalize", "Solarize")]).any(1)
            assert_bitwise(y[keep], x[keep], "RandAugment at bin 0 of 1")
            continue
        assert_bitwise(y, x, f"{type(t).__name__} at its neutral setting")
        assert not np.shares_memory(y, x)


def test_normalize_is_to_float_normalize(rng):
    x = _images(rng, 3)
    y = A.Normalize()(x)
    assert y.dtype == np.float32 and y.shape == (3, 3, 20, 23)
    ref = (x.transpose(0, 3, 1, 2) / 255.0 - np.array([0.485, 0.456, 0.406])[:, None, None]) / \
        np.array([0.229, 0.224, 0.225])[:, None, None]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    g = A.Normalize((0.5,), (0.25,))(x[..., :1])
    assert g.shape == (3, 1, 20, 23)
    c = A.Compose([A.RandomHorizontalFlip(), A.RandomCrop(2), A.Normalize()], seed=5)
    assert c(x).dtype == np.float32 and c.last_params[2] == {}


def test_spatial_dropout(rng):
    x = rng.standard_normal((6, 5, 4, 3)).astype(np.float32)
    t = A.SpatialDropout(0.4, seed=2)
    y = t(x)
    scale = t.last_params["scale"]
    assert scale.shape == (6, 5) and set(np.unique(scale).tolist()) <= {0.0, 1 / 0.6}
    assert 0 < (scale == 0).sum() < 30
    assert_bitwise(y, (x * scale[:, :, None, None].astype(np.float32)), "x * per-channel scale")
    ref, ref_scale = F.spatial_dropout(x, 0.4, np.random.default_rng(2))
    assert_bitwise(y, ref, "the draw functional.spatial_dropout makes with the same generator")
    assert_bitwise(scale, ref_scale, "scale")
    g = rng.standard_normal(x.shape).astype(np.float32)
    assert_bitwise(t.backward(g), F.spatial_dropout_backward(g, scale), "backward")
    assert_bitwise(A.SpatialDropout(0.4, seed=9)(x, params=t.last_params), y, "replay")
    one = t(x[0])
    assert one.shape == x.shape[1:] and t.last_params["scale"].shape == (1, 5)
    assert_bitwise(A.SpatialDropout(0.4, training=False)(x), x, "eval: identity")
    nhwc = A.SpatialDropout(0.5, layout="NHWC", seed=1)
    yn = nhwc(x)
    assert nhwc.last_params["scale"].shape == (6, 3)
    assert_bitwise(yn, x * nhwc.last_params["scale"][:, None, None, :].astype(np.float32), "NHWC")


def test_compose_with_a_seed(rng):
    x = _images(rng, 6)

    def make():
        return A.Compose([A.RandomResizedCrop(16), A.RandomHorizontalFlip(), A.TrivialAugmentWide(),
                          A.ColorJitter(0.3, 0.3, 0.3), A.AugMix(mixture_width=2), A.Normalize()], seed=21)
    c1, c2 = make(), make()
    y1 = c1(x)
    assert y1.shape == (6, 3, 16, 16)
    assert_bitwise(c2(x), y1, "same seed")
    assert_bitwise(make()(x, params=c1.last_params), y1, "replay")
    assert not np.array_equal(c1(x), y1), "the next call draws again"


def test_compose_seeded_with_a_seed_sequence(rng):
    """A SeedSequence seeds Compose as it seeds a single transform (it used to raise TypeError),
    and the same SeedSequence gives the same draws as its int entropy."""
    x = _images(rng, 4)

    def make(seed):
        return A.Compose([A.RandomHorizontalFlip(), A.RandAugment()], seed=seed)
    y = make(np.random.SeedSequence(7))(x)
    assert_bitwise(make(np.random.SeedSequence(7))(x), y, "same SeedSequence")
    assert_bitwise(make(7)(x), y, "SeedSequence(7) and 7")


def test_same_bits_at_one_and_two_threads(rng):
    x = _images(rng, 16, 40, 37)
    outs = []
    for nt in (1, 2):
        with num_threads(nt):
            outs.append([MAKERS[name](5)(x) for name in MAKERS])
    for name, a, b in zip(MAKERS, outs[0], outs[1]):
        assert_bitwise(b, a, f"{name} at 2 threads vs 1")


def test_grey_images(rng):
    x = _images(rng, 5, c=1)
    for name in ("AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "ColorJitter", "RandomAffine",
                 "RandomCrop", "CLAHE", "RandomResizedCrop"):
        t = MAKERS[name](1)
        y = t(x)
        assert y.shape[-1] == 1
        assert_bitwise(y, _functional(t, x, t.last_params), f"{name} on one channel")


def test_color_jitter_and_affine_equal_torchvision(rng):
    torch, _ = import_torchvision()
    from torchvision.transforms import InterpolationMode as IM
    from torchvision.transforms import functional as TF
    x = _images(rng, 10, 17, 21)
    cj = A.ColorJitter(0.5, 0.6, 0.7, seed=1)
    y = cj(x)
    p = cj.last_params
    for n in range(10):
        t = torch.from_numpy(np.ascontiguousarray(x[n].transpose(2, 0, 1)))
        t = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(t, float(p["brightness"][n])),
                                                    float(p["contrast"][n])), float(p["saturation"][n]))
        assert_bitwise(y[n], t.numpy().transpose(1, 2, 0), f"ColorJitter image {n}")
    ra = A.RandomAffine(25, (0.2, 0.2), (0.8, 1.2), (-8, 8, -4, 4), fill=(5, 6, 7), seed=2)
    y = ra(x)
    p = ra.last_params
    for n in range(10):
        t = torch.from_numpy(np.ascontiguousarray(x[n].transpose(2, 0, 1)))
        t = TF.affine(t, float(p["angle"][n]), [int(v) for v in p["translate"][n]], float(p["scale"][n]),
                      [float(v) for v in p["shear"][n]], interpolation=IM.NEAREST, fill=[5.0, 6.0, 7.0])
        eq = (y[n] == t.numpy().transpose(1, 2, 0)).all(-1).mean()
        assert eq >= 0.97, f"RandomAffine image {n}: {eq:.3f} of the pixels equal"


def test_bad_arguments_and_inputs(rng):
    x = _images(rng, 2)
    cases = [
        (lambda: A.AutoAugment("mnist"), ValueError, "policy"),
        (lambda: A.AutoAugment(interpolation="bicubic"), ValueError, "interpolation"),
        (lambda: A.RandAugment(num_ops=-1), ValueError, "num_ops"),
        (lambda: A.RandAugment(magnitude=31), ValueError, "magnitude"),
        (lambda: A.RandAugment(num_magnitude_bins=0), ValueError, "magnitude"),
        (lambda: A.TrivialAugmentWide(num_magnitude_bins=0), ValueError, "num_magnitude_bins"),
        (lambda: A.AugMix(severity=11), ValueError, "severity"),
        (lambda: A.AugMix(mixture_width=0), ValueError, "mixture_width"),
        (lambda: A.AugMix(alpha=-1.0), ValueError, "alpha"),
        (lambda: A.Normalize((0.5, 0.5), (0.5,)), ValueError, "std"),
        (lambda: A.Normalize(std=(1, 0, 1)), ValueError, "std"),
        (lambda: A.Equalize("cv2"), ValueError, "mode"),
        (lambda: A.Equalize(p=1.5), ValueError, "p"),
        (lambda: A.CLAHE(-1.0), ValueError, "clip_limit"),
        (lambda: A.CLAHE(tile_grid_size=(0, 8)), ValueError, "tile_grid_size"),
        (lambda: A.CLAHE(tile_grid_size=8), TypeError, "tile_grid_size"),
        (lambda: A.SpatialDropout(1.5), ValueError, "p"),
        (lambda: A.SpatialDropout(layout="CHW"), ValueError, "layout"),
        (lambda: A.RandomHorizontalFlip(-0.1), ValueError, "p"),
        (lambda: A.RandomResizedCrop(0), ValueError, "size"),
        (lambda: A.RandomResizedCrop(8, scale=(0.5, 0.1)), ValueError, "scale"),
        (lambda: A.RandomCrop(-1), ValueError, "padding"),
        (lambda: A.RandomCrop(2, padding_mode="wrap"), ValueError, "padding_mode"),
        (lambda: A.RandomAffine(-5), ValueError, "degrees"),
        (lambda: A.RandomAffine(5, translate=(0.1, 2.0)), ValueError, "translate"),
        (lambda: A.RandomAffine(5, scale=(-1.0, 1.0)), ValueError, "scale"),
        (lambda: A.RandomAffine(5, shear=(1, 2, 3)), ValueError, "shear"),
        (lambda: A.RandomAffine(5, interpolation="area"), ValueError, "interpolation"),
        (lambda: A.ColorJitter(-0.5), ValueError, "brightness"),
        (lambda: A.ColorJitter(saturation=(2.0, 1.0)), ValueError, "saturation"),
        (lambda: A.AutoAugment()(x.astype(np.float32)), TypeError, "images"),
        (lambda: A.RandAugment()(x[0, 0]), ValueError, "images"),
        (lambda: A.RandomCrop()([[1, 2]]), TypeError, "images"),
        (lambda: A.SpatialDropout()(x), TypeError, "images"),
        (lambda: A.SpatialDropout()(np.zeros((2, 3), np.float32)), ValueError, "images"),
        (lambda: A.SpatialDropout().backward(np.zeros((1, 2, 2, 2), np.float32)), ValueError, "grad_out"),
        (lambda: A.RandomHorizontalFlip()(x, params={"applied": np.ones(3, bool)}), ValueError, "applied"),
        (lambda: A.Compose([A.RandomCrop(), "flip"]), TypeError, "transforms"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()
    # bad input is refused before anything is drawn from the transform's generator
    t = A.TrivialAugmentWide(seed=0)
    with pytest.raises(TypeError):
        t(x.astype(np.float32))
    assert_bitwise(t(x), A.TrivialAugmentWide(seed=0)(x), "a refused call draws nothing")


# Every transform class that takes uint8 NHWC images (MixUp, CutMix, SamplePairing and SpatialDropout
# take float batches); Cutout and RandomErasing take uint8 NHWC when no layout is given.
UINT8 = {
    **{k: v for k, v in MAKERS.items() if "-" not in k},
    "Cutout": lambda s: A.Cutout(3, 2, fill="random", seed=s),
    "RandomErasing": lambda s: A.RandomErasing(p=1.0, seed=s),
}
NCHW_MESSAGE = (r"^images: expected NHWC \(N, H, W, C\) with C in \{1, 3\} \(uint8 images are NHWC\), got shape \(2, 3, 8, 8\); "
                r"transpose an NCHW batch with images\.transpose\(0, 2, 3, 1\)")


def test_every_uint8_transform_class_is_covered():
    float_only = {A.Transform, A.Compose, A.MixUp, A.CutMix, A.SamplePairing, A.SpatialDropout}
    classes = {getattr(A, n) for n in A.__all__ if isinstance(getattr(A, n), type)
               and issubclass(getattr(A, n), A.Transform)}
    assert {type(UINT8[k](0)) for k in UINT8} == classes - float_only


@pytest.mark.parametrize("name", list(UINT8))
def test_uint8_transforms_refuse_an_nchw_batch_whatever_is_drawn(name, rng):
    """An NCHW uint8 batch (2, 3, 8, 8) read as NHWC would be 2 images of 3x8 with 8 channels:
    refused up front for every seed (whatever ops the seed would draw) and in a replay, with
    nothing drawn from the transform's generator; a CHW image likewise."""
    nhwc = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    for seed in range(30):
        t = UINT8[name](seed)
        state = t.rng.bit_generator.state
        with pytest.raises(ValueError, match=NCHW_MESSAGE):
            t(nchw)
        assert t.rng.bit_generator.state == state, f"{name}: a refused call drew from the generator"
        assert t.last_params is None
        t(nhwc)                                          # the same images, NHWC: accepted
        with pytest.raises(ValueError, match=NCHW_MESSAGE):
            t(nchw, params=t.last_params)                # a replay checks too
    with pytest.raises(ValueError, match=r"HWC \(H, W, C\).*\(3, 8, 8\).*transpose\(1, 2, 0\)"):
        UINT8[name](0)(nchw[0])
    with pytest.raises(ValueError, match=r"NHWC.*\(2, 8, 8, 4\)"):
        UINT8[name](0)(np.zeros((2, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=NCHW_MESSAGE):
        A.Compose([A.RandomHorizontalFlip(0.0), UINT8[name](0)], seed=1)(nchw)


def test_cutout_with_an_explicit_layout_takes_any_channel_count(rng):
    x = rng.integers(0, 256, (2, 5, 6, 7), dtype=np.uint8)
    for layout in ("NCHW", "NHWC"):
        t = A.Cutout(2, seed=0, layout=layout)
        y = t(x)
        assert_bitwise(y, F.cutout(x, t.last_params["boxes"], 0, layout=layout), f"Cutout {layout}")


def test_public_names():
    for name in ("AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "Normalize", "Equalize", "CLAHE",
                 "SpatialDropout", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomResizedCrop", "RandomCrop",
                 "RandomAffine", "ColorJitter", "sample_autoaugment_params", "sample_randaugment_params",
                 "sample_trivialaugment_params", "sample_augmix_params", "augmix", "augmentation_space", "POLICIES",
                 "sample_affine_params", "sample_color_jitter_params"):
        assert name in A.__all__ and hasattr(A, name), name
    import cnnkit.augment.transforms as T
    assert set(T.__all__) <= set(A.__all__)
