"""Every entry of the norm, optim, augment and nn kernel tables (cnnkit.kernels(family)) is run by a
test at its ISA level.

For each entry this CPU runs: force it, set its ISA level, call public functions that reach its
operation (EXERCISE below) with every element type it takes, and require (a) that the dispatcher
ran the entry (its hit count grew), (b) that the outputs match the scalar entry's outputs (bitwise
for integer outputs; floats within conftest's tolerance for the longest reduction here, since a
reduction's blocking may follow the vector width; the scalar path is checked against the float64
references by each family's own tests), at 1 and 2 threads. A new operation
without an exerciser fails test_every_operation_has_an_exerciser. The conv table has its own,
richer tests in test_conv.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import cnnkit
from cnnkit import _core, augment, nn, optim
from cnnkit.augment import functional as F
from conftest import assert_bitwise, assert_close, isa_level, num_threads

FAMILIES = ("norm", "optim", "augment", "nn")
_LEVELS = ("scalar", "avx2", "avx512")
_BEST = _LEVELS.index(cnnkit.build_info()["isa_supported"])
DTYPE_OF = {"u8": np.uint8, "f32": np.float32, "f64": np.float64}


def _dtypes(entry):
    token = entry.name.split("__")[0].rsplit("_", 1)[1]
    out = []
    for t in ("u8", "f32", "f64"):
        if t in token:
            out.append(DTYPE_OF[t])
    return out


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---- exercisers: op -> f(dtype) -> list of output arrays ----------------------------------------

def _bn(dtype, backward):
    rng = _rng(1)
    x = rng.standard_normal((3, 5, 6, 7)).astype(dtype)
    w, b = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    rm, rv = np.zeros(5, dtype), np.ones(5, dtype)
    y, mean, invstd = cnnkit.batch_norm_train(x, w, b, rm, rv)
    if not backward:
        return [y, mean, invstd, rm, rv]
    g = rng.standard_normal(x.shape).astype(dtype)
    return list(cnnkit.batch_norm_backward(g, x, w, mean, invstd))


def _optim(cls, **kw):
    def run(dtype):
        rng = _rng(2)
        ps = [rng.standard_normal(n).astype(dtype) for n in (37, 100)]
        opt = cls(ps, **kw)
        for _ in range(3):
            opt.step([rng.standard_normal(p.shape).astype(dtype) for p in ps])
        return ps
    return run


def _grads(dtype):
    rng = _rng(3)
    return [rng.standard_normal(n).astype(dtype) for n in (37, 100)]


def _clip(dtype):
    g = _grads(dtype)
    optim.clip_grad_norm_(g, 0.5)
    return g


def _images(dtype=np.uint8, shape=(2, 16, 12, 3)):
    rng = _rng(4)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(dtype)


def _nchw(dtype):
    return _rng(5).standard_normal((2, 3, 8, 9)).astype(dtype)


def _pool(cls, **kw):
    def run(dtype):
        layer = cls(3, 2, 1, **kw)
        x = _nchw(dtype)
        y = layer.forward(x)
        gx = layer.backward(_rng(6).standard_normal(y.shape).astype(dtype))
        return [y, gx]
    return run


def _gap(dtype):
    layer = nn.GlobalAvgPool2d()
    y = layer.forward(_nchw(dtype))
    return [y, layer.backward(_rng(7).standard_normal(y.shape).astype(dtype))]


def _affine_pool(dtype):
    x = _nchw(dtype)
    out = np.empty((2, 3), dtype)
    _core.norm_affine_pool(x, out, 2, 3, 72, False, np.array([1.5, -0.5, 2.0, 0.1, 0.2, -0.3], dtype), True)
    return [out]


def _xent(dtype):
    loss = nn.CrossEntropyLoss()
    z = _rng(8).standard_normal((4, 10)).astype(dtype)
    value = loss.forward(z, np.array([1, 0, 9, 3]))
    return [np.asarray(value, np.float64), loss.backward()]


def _cutout(dtype):
    x = _images(dtype) if dtype == np.uint8 else _rng(9).standard_normal((2, 3, 16, 12)).astype(dtype)
    boxes = np.array([[[1, 2, 5, 7]], [[0, 0, 3, 3]]], np.int64)
    return [augment.cutout(x, boxes, fill=0)]


EXERCISE = {
    "norm_stats": lambda dt: _bn(dt, False),
    "norm_apply": lambda dt: _bn(dt, False),
    "norm_backward_reduce": lambda dt: _bn(dt, True),
    "norm_backward_apply": lambda dt: _bn(dt, True),
    "norm_affine_pool": _affine_pool,
    "optim_sgd": _optim(optim.SGD, lr=0.1, momentum=0.9),
    "optim_adagrad": _optim(optim.Adagrad, lr=0.1),
    "optim_rmsprop": _optim(optim.RMSprop, lr=0.01, momentum=0.5),
    "optim_adadelta": _optim(optim.Adadelta),
    "optim_adam": _optim(optim.Adam, lr=0.01),
    "optim_norm": lambda dt: [np.float64(optim.global_norm(_grads(dt)))],
    "optim_all_finite": lambda dt: [np.bool_(optim.found_inf(_grads(dt)))],
    "optim_scale": _clip,
    "augment_normalize": lambda dt: [augment.to_float_normalize(_images(), (0.4, 0.5, 0.6), (0.2, 0.3, 0.4))],
    "augment_image_stats": lambda dt: [augment.to_float_normalize(_images(), mode="image")],
    "augment_histogram": lambda dt: [augment.equalize(_images())],
    "augment_lut": lambda dt: [augment.posterize(_images(), 3), augment.solarize(_images(), 100)],
    "augment_apply_ops": lambda dt: [F.adjust_contrast(_images(), 1.7), F.rotate(_images(), 20.0)],
    "augment_resize": lambda dt: [F.resized_crop(_images(), np.array([[1, 2, 11, 9], [0, 0, 16, 12]]),
                                                       (7, 5))],
    "augment_remap": lambda dt: [F.pad_crop(_images(), np.array([[0, 3], [5, 1]]), 4,
                                                  padding_mode="reflect")],
    "augment_clahe": lambda dt: [F.clahe(_images(shape=(2, 16, 12, 1)), 2.0, (2, 2))],
    "augment_blend": lambda dt: [augment.mixup(_rng(10).standard_normal((4, 3, 5, 6)).astype(dt),
                                               lam=np.array([0.1, 0.5, 0.9, 1.0]),
                                               perm=np.array([1, 2, 3, 0]))],
    "augment_paste_boxes": lambda dt: [augment.cutmix(_rng(11).standard_normal((2, 3, 8, 9)).astype(dt),
                                                      boxes=np.array([[1, 2, 5, 7], [0, 0, 8, 9]]),
                                                      perm=np.array([1, 0]))],
    "augment_fill_boxes": _cutout,
    "augment_equalize_cv_lut": lambda dt: [augment.equalize(_images(shape=(2, 16, 12, 1)), mode="cv")],
    "nn_pool2d_forward": _pool(nn.MaxPool2d),
    "nn_pool2d_backward": _pool(nn.AvgPool2d),
    "nn_global_avg_pool_forward": _gap,
    "nn_global_avg_pool_backward": _gap,
    "nn_softmax_xent": _xent,
}


REDUCTION = 3 * 6 * 7 * 4  # the longest sum of any exerciser (batch norm over N*H*W, 3 steps)


def _flatten(outs):
    return [np.asarray(o if not isinstance(o, tuple) else o[0]) for o in outs]


RUNNABLE = [e for f in FAMILIES for e in cnnkit.kernels(f) if _LEVELS.index(e.isa) <= _BEST]


def test_families_and_grammar():
    assert cnnkit.kernels() == ("conv", "norm", "optim", "augment", "nn")
    for f in FAMILIES:
        table = cnnkit.kernels(f)
        names = table.names()
        assert len(names) == len(set(names)) and len(names) == 3 * len({n.split("__")[0] for n in names})
        for e in table:
            what, isa = e.name.split("__")
            assert isa == e.isa and len(e.passes) == 1 and what.startswith(e.passes[0] + "_")
            assert e.passes[0].startswith(f + "_") and _dtypes(e)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_operation_has_an_exerciser(family):
    ops = {e.passes[0] for e in cnnkit.kernels(family)}
    assert ops <= set(EXERCISE), f"no exerciser for {sorted(ops - set(EXERCISE))}"


def _run_entry(entry, dtype, threads):
    table = cnnkit.kernels(entry.family)
    with isa_level(entry.isa), table.force(entry), num_threads(threads):
        assert table.select(entry.passes[0], dtype) is entry
        before = table.hits(entry)
        outs = _flatten(EXERCISE[entry.passes[0]](dtype))
        assert table.hits(entry) > before, f"{entry.name} was not run by its exerciser"
    return outs


@pytest.mark.parametrize("entry", RUNNABLE, ids=lambda e: e.name)
def test_every_entry_runs_and_agrees_with_the_scalar_entry(entry, threads):
    table = cnnkit.kernels(entry.family)
    scalar = table[entry.name.split("__")[0] + "__scalar"]
    for dtype in _dtypes(entry):
        got = _run_entry(entry, dtype, threads)
        want = _run_entry(scalar, dtype, 1)
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want)):
            what = f"{entry.name} {np.dtype(dtype).name} output {i} vs the scalar entry"
            if a.dtype.kind in "fc":  # reductions may be blocked by the vector width
                assert_close(a, b, a.dtype, length=REDUCTION, what=what)
            else:
                assert_bitwise(a, b, what)


def test_forcing_is_restored_and_checked():
    table = cnnkit.kernels("norm")
    e = table["norm_stats_f32f64__scalar"]
    with table.force(e):
        assert table.forced() is e
        # another operation dispatches as usual
        assert table.select("norm_apply", np.float32).isa == cnnkit.build_info()["isa"]
    assert table.forced() is None
    with pytest.raises(ValueError, match="no operation"):
        table.select("norm_nope", np.float32)
    with pytest.raises(TypeError, match="dtype"):
        table.select("norm_stats", np.int16)
    with pytest.raises(ValueError, match="no kernel supports"):
        cnnkit.kernels("nn").select("nn_softmax_xent", np.float64)
