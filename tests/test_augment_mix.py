"""Mixup / CutMix: samplers, batched functions (compiled kernels) and transform classes."""
import cnnkit
import numpy as np
import pytest
from cnnkit.augment import Compose, CutMix, MixUp
from cnnkit.augment import functional as F
from conftest import assert_bitwise, num_threads
from hypothesis import given, settings
from hypothesis import strategies as st

MODES = ("batch", "pair", "elem")


def _batch(rng, n=6, dtype=np.float32, shape=(3, 9, 11)):
    return rng.standard_normal((n, *shape)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_mixup_is_the_blend_computed_in_double(mode, dtype, rng):
    x = _batch(rng, 7, dtype)
    prm = F.sample_mixup_params(rng, 7, 0.4, mode=mode)
    out, lab = F.mixup(x, lam=prm["lam"], perm=prm["perm"])
    lam = prm["lam"][:, None, None, None]
    ref = (lam * x.astype(np.float64) + (1 - lam) * x[prm["perm"]].astype(np.float64)).astype(dtype)
    assert_bitwise(out, ref, "mixup vs float64 blend rounded once")
    assert lab is None


@pytest.mark.parametrize("mode", MODES)
def test_mixup_labels_sum_to_one_and_mix_with_lam(mode, rng):
    x = _batch(rng, 5)
    y = rng.integers(0, 4, size=5)
    prm = F.sample_mixup_params(rng, 5, 1.0, mode=mode)
    _, lab = F.mixup(x, y, lam=prm["lam"], perm=prm["perm"], num_classes=4)
    onehot = np.eye(4, dtype=np.float32)[y]
    lam = prm["lam"].astype(np.float32)[:, None]
    np.testing.assert_allclose(lab, lam * onehot + (1 - lam) * onehot[prm["perm"]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(lab.sum(1), 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_cutmix_pastes_the_box_and_lam_is_the_kept_fraction(mode, rng):
    x = _batch(rng, 7)
    y = rng.random((7, 5))
    y /= y.sum(1, keepdims=True)
    prm = F.sample_cutmix_params(rng, x.shape, 1.0, mode=mode)
    out, lab = F.cutmix(x, y, boxes=prm["boxes"], perm=prm["perm"])
    H, W = x.shape[2:]
    for n in range(7):
        y0, x0, y1, x1 = prm["boxes"][n]
        inside = np.zeros((H, W), bool)
        inside[y0:y1, x0:x1] = True
        assert_bitwise(out[n][:, inside], x[prm["perm"][n]][:, inside], f"box of image {n}")
        assert_bitwise(out[n][:, ~inside], x[n][:, ~inside], f"outside the box of image {n}")
        kept = 1 - inside.sum() / (H * W)
        assert prm["lam"][n] == pytest.approx(kept, abs=1e-12)
        np.testing.assert_allclose(lab[n], kept * y[n] + (1 - kept) * y[prm["perm"][n]], rtol=1e-12)
    np.testing.assert_allclose(lab.sum(1), 1.0, rtol=0, atol=1e-12)


def test_samplers_ranges_and_modes(rng):
    for mode in MODES:
        for n in (1, 2, 7, 8):
            m = F.sample_mixup_params(rng, n, 0.7, mode=mode)
            assert m["lam"].shape == (n,) and np.all((m["lam"] >= 0) & (m["lam"] <= 1))
            assert sorted(m["perm"].tolist()) == list(range(n))
            c = F.sample_cutmix_params(rng, (n, 3, 10, 13), 0.7, mode=mode)
            b = c["boxes"]
            assert np.all((0 <= b[:, 0]) & (b[:, 0] <= b[:, 2]) & (b[:, 2] <= 10))
            assert np.all((0 <= b[:, 1]) & (b[:, 1] <= b[:, 3]) & (b[:, 3] <= 13))
            if mode == "pair":
                assert np.all(m["perm"][m["perm"]] == np.arange(n)), "pairs are mutual"
                assert np.allclose(m["lam"], m["lam"][m["perm"]]), "partners share lam"
                assert np.all(c["boxes"] == c["boxes"][c["perm"]])
    b = F.sample_mixup_params(rng, 64, 1.0, mode="batch")
    e = F.sample_mixup_params(rng, 64, 1.0, mode="elem")["lam"]
    moved = b["perm"] != np.arange(64)  # an image drawn as its own partner stays as it is (lam 1)
    assert np.unique(b["lam"][moved]).size == 1 and np.all(b["lam"][~moved] == 1.0)
    assert np.unique(e).size > 32


def test_probability_zero_is_the_identity_and_one_always_mixes(rng):
    x = _batch(rng, 6)
    for mode in MODES:
        m = F.sample_mixup_params(rng, 6, 1.0, mode=mode, p=0.0)
        assert not m["applied"].any() and np.all(m["lam"] == 1.0)
        assert_bitwise(F.mixup(x, lam=m["lam"], perm=m["perm"])[0], x, "p=0 mixup")
        c = F.sample_cutmix_params(rng, x.shape, 1.0, mode=mode, p=0.0)
        assert_bitwise(F.cutmix(x, boxes=c["boxes"], perm=c["perm"])[0], x, "p=0 cutmix")
    m = F.sample_mixup_params(rng, 6, 1.0, mode="elem", p=1.0)
    assert m["applied"].all()


def test_seeding_and_replay(rng):
    x = _batch(rng, 8)
    y = rng.integers(0, 3, size=8)
    for cls in (MixUp, CutMix):
        a = cls(0.5, mode="elem", num_classes=3, seed=7)
        b = cls(0.5, mode="elem", num_classes=3, seed=7)
        xa, ya = a(x, labels=y)
        xb, yb = b(x, labels=y)
        assert_bitwise(xa, xb, f"{cls.__name__}: same seed")
        assert_bitwise(ya, yb, f"{cls.__name__}: same seed labels")
        xr, yr = a(x, params=a.last_params, labels=y)
        assert_bitwise(xr, xa, f"{cls.__name__}: replay")
        assert_bitwise(yr, ya, f"{cls.__name__}: replay labels")
        assert isinstance(a(x), np.ndarray), "without labels, only the images come back"
    c1 = Compose([MixUp(0.3), CutMix(1.0)], seed=3)
    c2 = Compose([MixUp(0.3), CutMix(1.0)], seed=3)
    assert_bitwise(c1(x), c2(x), "Compose with the same seed")
    assert len(c1.last_params) == 2
    assert_bitwise(c1(x, params=c1.last_params), c2(x, params=c2.last_params), "Compose replay")


def test_label_smoothing_only_when_asked(rng):
    x = _batch(rng, 4)
    y = np.array([0, 1, 2, 0])
    p = {"lam": np.ones(4), "perm": np.arange(4)}
    _, plain = F.mixup(x, y, **p, num_classes=3)
    assert_bitwise(plain, np.eye(3, dtype=np.float32)[y], "no smoothing by default")
    _, smooth = F.mixup(x, y, **p, num_classes=3, label_smoothing=0.1)
    np.testing.assert_allclose(smooth, np.eye(3)[y] * 0.9 + 0.1 / 3, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_same_bits_at_one_and_two_threads(mode, rng):
    x = _batch(rng, 9, shape=(3, 32, 40))
    m = F.sample_mixup_params(rng, 9, 1.0, mode=mode)
    c = F.sample_cutmix_params(rng, x.shape, 1.0, mode=mode)
    outs = []
    for t in (1, 2):
        with num_threads(t):
            outs.append((F.mixup(x, lam=m["lam"], perm=m["perm"])[0], F.cutmix(x, boxes=c["boxes"], perm=c["perm"])[0]))
    assert_bitwise(outs[1][0], outs[0][0], "mixup at 2 threads vs 1")
    assert_bitwise(outs[1][1], outs[0][1], "cutmix at 2 threads vs 1")


def test_bad_input(rng):
    x = _batch(rng, 4)
    lam, perm = np.full(4, 0.5), np.arange(4)[::-1].copy()
    boxes = np.zeros((4, 4), np.int64)
    cases = [
        (lambda: F.sample_mixup_params(rng, 4, 0.0), ValueError, "alpha"),
        (lambda: F.sample_mixup_params(rng, 4, 1.0, p=1.5), ValueError, "p"),
        (lambda: F.sample_mixup_params(rng, 4, 1.0, mode="rows"), ValueError, "mode"),
        (lambda: F.sample_mixup_params(np.random, 4), TypeError, "rng"),
        (lambda: F.sample_cutmix_params(rng, (4, 3, 5)), ValueError, "batch_shape"),
        (lambda: F.mixup(x.astype(np.uint8), lam=lam, perm=perm), TypeError, "x"),
        (lambda: F.mixup(x[0], lam=lam, perm=perm), ValueError, "x"),
        (lambda: F.mixup(x, lam=np.full(3, 0.5), perm=perm), ValueError, "lam"),
        (lambda: F.mixup(x, lam=np.full(4, 1.5), perm=perm), ValueError, "lam"),
        (lambda: F.mixup(x, lam=lam, perm=np.array([0, 1, 2, 4])), ValueError, "perm"),
        (lambda: F.mixup(x, np.arange(3), lam=lam, perm=perm, num_classes=4), ValueError, "labels"),
        (lambda: F.mixup(x, np.arange(4), lam=lam, perm=perm), ValueError, "num_classes"),
        (lambda: F.mixup(x, np.arange(4), lam=lam, perm=perm, num_classes=3), ValueError, "labels"),
        (lambda: F.mixup(x, np.arange(4), lam=lam, perm=perm, num_classes=4, label_smoothing=1.0),
         ValueError, "label_smoothing"),
        (lambda: F.mixup(x, lam=lam, perm=perm, out=x), ValueError, "out"),
        (lambda: F.cutmix(x, boxes=np.array([[0, 0, 10, 3]] * 4), perm=perm), ValueError, "boxes"),
        (lambda: F.cutmix(x, boxes=np.array([[3, 0, 2, 3]] * 4), perm=perm), ValueError, "boxes"),
        (lambda: F.cutmix(x, boxes=boxes[:3], perm=perm), ValueError, "boxes"),
        (lambda: MixUp(0.5, p=-0.1), ValueError, "p"),
        (lambda: Compose([MixUp(), "flip"]), TypeError, "transforms"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()


def test_public_names():
    for name in ("mixup", "cutmix", "sample_mixup_params", "sample_cutmix_params"):
        assert getattr(cnnkit.augment.functional, name) is getattr(cnnkit.augment, name)
    for name in ("Compose", "MixUp", "CutMix"):
        assert hasattr(cnnkit.augment, name)


# ---- SamplePairing ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sample_pairing_averages_with_the_partner(dtype, rng):
    x = _batch(rng, 6, dtype)
    prm = F.sample_pairing_params(rng, 6, p=0.5)
    assert np.all(prm["partners"][prm["applied"]] != np.arange(6)[prm["applied"]]), "a partner is another image"
    out = F.sample_pairing(x, prm["partners"], applied=prm["applied"])
    ref = (0.5 * x.astype(np.float64) + 0.5 * x[prm["partners"]].astype(np.float64)).astype(dtype)
    ref[~prm["applied"]] = x[~prm["applied"]]
    assert_bitwise(out, ref, "SamplePairing vs (x + partner) / 2")
    pool = _batch(rng, 9, dtype)
    prm = F.sample_pairing_params(rng, 6, pool_size=9)
    out = F.sample_pairing(x, prm["partners"], pool=pool, applied=prm["applied"])
    ref = (0.5 * x.astype(np.float64) + 0.5 * pool[prm["partners"]].astype(np.float64)).astype(dtype)
    assert_bitwise(out, ref, "SamplePairing from a pool")


def test_sample_pairing_transform_keeps_labels_and_replays(rng):
    x = _batch(rng, 5)
    y = np.arange(5)
    t = cnnkit.augment.SamplePairing(seed=4)
    out, lab = t(x, labels=y)
    assert lab is y, "labels stay those of the first image"
    assert_bitwise(t(x, params=t.last_params), out, "replay")
    assert_bitwise(cnnkit.augment.SamplePairing(seed=4)(x), out, "same seed")
    assert_bitwise(F.sample_pairing(x, np.arange(5)), x, "own partner: unchanged")


def test_sample_pairing_schedule():
    s = cnnkit.augment.SamplePairingSchedule(warmup=3, on=2, off=1, fine_tune_from=9)
    assert [s.enabled(e) for e in range(11)] == [False, False, False, True, True, False, True, True, False,
                                                  False, False]
    for bad in (dict(on=0), dict(warmup=-1), dict(fine_tune_from=-2)):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))}: "):
            cnnkit.augment.SamplePairingSchedule(**bad)
    with pytest.raises(TypeError, match="^off: "):  # not an int: a wrong type
        cnnkit.augment.SamplePairingSchedule(off=1.5)
    with pytest.raises(ValueError, match="epoch"):
        s.enabled(-1)


def test_sample_pairing_bad_input(rng):
    x = _batch(rng, 4)
    with pytest.raises(ValueError, match="pool"):
        F.sample_pairing(x, np.zeros(4, np.int64), pool=_batch(rng, 3, shape=(3, 9, 10)))
    with pytest.raises(ValueError, match="partners"):
        F.sample_pairing(x, np.array([0, 1, 2, 3]), pool=_batch(rng, 3))
    with pytest.raises(ValueError, match="perm"):
        F.sample_pairing(x, np.array([0, 1, 2, 4]))
    with pytest.raises(TypeError, match="x"):
        F.sample_pairing(x.astype(np.uint8), np.arange(4))
    with pytest.raises(ValueError, match="applied"):
        F.sample_pairing(x, np.arange(4), applied=np.ones(3, bool))
    with pytest.raises(ValueError, match="pool_size"):
        F.sample_pairing_params(rng, 4, pool_size=0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), c=st.integers(1, 4), h=st.integers(1, 19), w=st.integers(1, 19),
       mode=st.sampled_from(MODES), f64=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_mixing_matches_numpy(n, c, h, w, mode, f64, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float64 if f64 else np.float32
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    m = F.sample_mixup_params(rng, n, 0.7, mode=mode)
    lam = m["lam"][:, None, None, None]
    ref = (lam * x.astype(np.float64) + (1 - lam) * x[m["perm"]].astype(np.float64)).astype(dtype)
    assert_bitwise(F.mixup(x, lam=m["lam"], perm=m["perm"])[0], ref, "mixup")
    cp = F.sample_cutmix_params(rng, x.shape, 0.7, mode=mode)
    ref = x.copy()
    for i, (y0, x0, y1, x1) in enumerate(cp["boxes"]):
        ref[i, :, y0:y1, x0:x1] = x[cp["perm"][i], :, y0:y1, x0:x1]
    assert_bitwise(F.cutmix(x, boxes=cp["boxes"], perm=cp["perm"])[0], ref, "cutmix")
    hp = F.sample_cutout_params(rng, n, (h, w), max(1, min(h, w) // 2), num_holes=2)
    ref = x.copy()
    for i in range(n):
        for y0, x0, y1, x1 in hp["boxes"][i]:
            ref[i, :, y0:y1, x0:x1] = 0.25
    assert_bitwise(F.cutout(x, hp["boxes"], 0.25), ref, "cutout")


@pytest.mark.parametrize("N", [1, 2, 5, 8])
def test_sample_pairing_same_on_batch(N):
    for seed in range(20):
        prm = F.sample_pairing_params(np.random.default_rng(seed), N, same_on_batch=True)
        assert prm["applied"].all() or not prm["applied"].any()
        if N > 1:
            shift = (prm["partners"] - np.arange(N)) % N
            assert len(set(shift.tolist())) == 1 and shift[0] != 0  # one cyclic shift, never itself
        pool = F.sample_pairing_params(np.random.default_rng(seed), N, pool_size=7, p=0.5, same_on_batch=True)
        assert len(set(pool["partners"].tolist())) == 1 and 0 <= pool["partners"][0] < 7
        assert pool["applied"].all() or not pool["applied"].any()
    shifts = {int((F.sample_pairing_params(np.random.default_rng(s), 5, same_on_batch=True)["partners"][0]) % 5)
              for s in range(200)}
    if N == 5:
        assert shifts == {1, 2, 3, 4}  # every shift is drawn
    with pytest.raises(ValueError, match="pool_size"):
        F.sample_pairing_params(np.random.default_rng(0), 3, pool_size=0)


def test_sample_pairing_transform_same_on_batch(rng):
    from cnnkit.augment import SamplePairing
    x = rng.standard_normal((6, 3, 5, 5)).astype(np.float32)
    t = SamplePairing(same_on_batch=True, seed=3)
    y = t(x)
    shift = (t.last_params["partners"] - np.arange(6)) % 6
    assert len(set(shift.tolist())) == 1
    np.testing.assert_allclose(y, (x + x[t.last_params["partners"]]) / 2, rtol=1e-6)
