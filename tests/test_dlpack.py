"""Arrays from any framework: every public cnnkit function takes CPU objects with ``__dlpack__``.

The conversion (:func:`cnnkit._validate.as_array`, applied by the ``accepts_dlpack`` decorator) is
checked on its own (views, not copies; read-only exports; tensors that require grad; objects in
device memory and dtypes NumPy cannot read refused with the argument's name), then through a
representative function of every module with torch tensors: results equal those of the same call
on NumPy arrays, and in-place updates and ``out=`` buffers land in the tensors' own memory (seen
through ``tensor.numpy()``, which is how "no copy" is proven). A minimal exporter that implements
only the protocol stands in for JAX arrays, which are not installed here (nor CuPy, whose arrays
live in device memory and are refused like any other device array). Finally an
API-wide check: every public callable that takes arrays is wrapped and its docstring says so.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from cnnkit import _validate, augment, explain, nn, ops, optim
from cnnkit._validate import accepts_dlpack, as_array, as_arrays


class Exporter:
    """Implements only the DLPack protocol, over an ndarray (as a JAX array on the CPU does)."""

    def __init__(self, a, device=(1, 0)):
        self.a, self.device = a, device

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# ---- the converter ------------------------------------------------------------------------------

def test_ndarray_and_other_objects_pass_through():
    a = np.ones(3)
    assert as_array("x", a) is a
    for v in (None, 3, [1.0, 2.0], "s"):
        assert as_array("x", v) is v


def test_exporter_becomes_a_view():
    a = np.arange(12.0).reshape(3, 4)
    v = as_array("x", Exporter(a))
    assert isinstance(v, np.ndarray) and v.shape == (3, 4) and np.shares_memory(v, a)
    v[1, 2] = -1.0
    assert a[1, 2] == -1.0
    ro = a.copy()
    ro.flags.writeable = False
    assert not as_array("x", Exporter(ro)).flags.writeable  # the exporter's read-only flag is kept


def test_device_memory_is_refused_with_the_name():
    with pytest.raises(TypeError, match=r"^weight: expected an array in CPU memory.*CUDA memory"):
        as_array("weight", Exporter(np.ones(2), device=(2, 0)))
    dev = Exporter(np.ones(2), device=(2, 0))
    assert as_array("p", dev, device_ok=True) is dev  # for the functions that run device arrays
    devs = [dev, Exporter(np.ones(2), device=(2, 0))]
    assert as_arrays("params", devs, device_ok=True) is devs  # handed on as they are
    with pytest.raises(TypeError, match=r"^x: .*CUDA memory"):
        ops.conv2d(dev, np.ones((1, 1, 1, 1), np.float32))
    with pytest.raises(TypeError, match=r"^grads\[1\]: .*CUDA memory"):
        optim.clip_grad_norm_([np.ones(2), dev], 1.0)


def test_lists_convert_entry_by_entry():
    a, b = np.ones(2), np.zeros(3)
    same = [a, b]
    assert as_arrays("ps", same) is same  # nothing foreign: the caller's list itself
    out = as_arrays("ps", (a, Exporter(b)))
    assert isinstance(out, list) and out[0] is a and np.shares_memory(out[1], b)
    out = as_arrays("acts", {"conv": Exporter(b), None: a})
    assert out[None] is a and np.shares_memory(out["conv"], b)
    with pytest.raises(TypeError, match=r"^acts\['conv'\]: .*CUDA memory"):
        as_arrays("acts", {"conv": Exporter(b, device=(2, 0))})


def test_decorator_passes_views_by_position_and_keyword():
    seen = {}

    @accepts_dlpack
    def f(x: np.ndarray, k: int = 1, *, out: np.ndarray | None = None) -> None:
        """F.

        Parameters
        ----------
        x : ndarray
            X.
        k : int
            K.
        out : ndarray, optional
            Out.
        """
        seen.update(x=x, k=k, out=out)

    a, o = np.ones(4), np.zeros(4)
    f(Exporter(a), Exporter(np.ones(1)), out=Exporter(o))
    assert np.shares_memory(seen["x"], a) and np.shares_memory(seen["out"], o)
    assert isinstance(seen["k"], Exporter)  # not an array parameter: left alone
    assert f.__dlpack_args__ == ("x", "out")
    doc = inspect.cleandoc(f.__doc__)
    assert "``x``, ``out``" in doc and doc.index("__dlpack__") < doc.index("Parameters\n---")


def test_torch_views(torch):
    t = torch.randn(3, 4)
    v = as_array("x", t)
    assert np.shares_memory(v, t.numpy()) and v.flags.writeable
    g = torch.randn(5, requires_grad=True)  # refuses export; read through .detach(), same memory
    assert np.shares_memory(as_array("w", g), g.detach().numpy())
    with pytest.raises(TypeError, match=r"^x: expected an array NumPy can read"):
        as_array("x", torch.zeros(3, dtype=torch.bfloat16))
    cl = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    v = as_array("x", cl)  # NCHW shape with NHWC strides, like the tensor
    assert v.shape == (2, 3, 4, 5) and v.strides == tuple(4 * s for s in cl.stride())


# ---- a representative function of every module, with torch tensors --------------------------------

def test_ops_conv(torch):
    rng = np.random.default_rng(0)
    x, w, b = rand(rng, 2, 3, 7, 6), rand(rng, 4, 3, 3, 3), rand(rng, 4)
    ref = ops.conv2d(x, w, b, padding=1)
    tx, tw, tb = torch.from_numpy(x.copy()), torch.from_numpy(w.copy()).requires_grad_(), torch.from_numpy(b.copy())
    np.testing.assert_array_equal(ops.conv2d(tx, tw, tb, padding=1), ref)
    out = torch.empty(2, 4, 7, 6)
    res = ops.conv2d(tx, tw, tb, padding=1, out=out)
    assert np.shares_memory(res, out.numpy())
    np.testing.assert_array_equal(out.numpy(), ref)
    # channels_last: the tensor's memory is NHWC; its NHWC view goes in with layout="NHWC"
    x_cl = tx.to(memory_format=torch.channels_last)
    y = ops.conv2d(x_cl.permute(0, 2, 3, 1), tw, tb, padding=1, layout="NHWC")
    ref_nhwc = ops.conv2d(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), w, b, padding=1, layout="NHWC")
    np.testing.assert_array_equal(y, ref_nhwc)
    # backward, with the gradient buffers given as tensors
    go = rand(rng, *ref.shape)
    ref_g = ops.conv2d_backward(go, x, w, padding=1)
    bufs = [torch.empty(2, 3, 7, 6), torch.empty(4, 3, 3, 3), torch.empty(4)]
    got = ops.conv2d_backward(torch.from_numpy(go), tx, tw, padding=1, out=bufs)
    for g, r, buf in zip(got, ref_g, bufs):
        np.testing.assert_array_equal(g, r)
        assert np.shares_memory(g, buf.numpy())


def test_ops_norm(torch):
    rng = np.random.default_rng(1)
    x, wt, bs = rand(rng, 4, 3, 5, 5), rand(rng, 3), rand(rng, 3)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, mean, invstd = ops.batch_norm_train(x, wt, bs, rm, rv, momentum=0.2)
    trm, trv = torch.zeros(3), torch.ones(3)
    ty, tmean, tinvstd = ops.batch_norm_train(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bs),
                                              trm, trv, momentum=0.2)
    np.testing.assert_array_equal(ty, y)
    np.testing.assert_array_equal(trm.numpy(), rm)  # running statistics updated in the tensors
    np.testing.assert_array_equal(trv.numpy(), rv)
    assert not np.array_equal(rm, 0.0)
    np.testing.assert_array_equal(ops.group_norm(torch.from_numpy(x), 3, torch.from_numpy(wt)),
                                  ops.group_norm(x, 3, wt))
    # NHWC from a channels_last tensor
    x_cl = torch.from_numpy(x).to(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(ops.batch_norm_infer(x_cl, wt, bs, rm, rv, layout="NHWC"),
                                  ops.batch_norm_infer(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), wt, bs, rm, rv,
                                                       layout="NHWC"))


def test_optim_functional_and_class_write_into_tensors(torch):
    rng = np.random.default_rng(2)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    ps = [rand(rng, *s) for s in shapes]
    gs = [rand(rng, *s) for s in shapes]
    m, v = [np.zeros(s, np.float32) for s in shapes], [np.zeros(s, np.float32) for s in shapes]
    tps = [torch.from_numpy(p.copy()).requires_grad_() for p in ps]  # leaf parameters, as a model has
    tgs = [torch.from_numpy(g.copy()) for g in gs]
    tm, tv = [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
    hyper = dict(step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
    optim.functional.adam_(ps, gs, m, v, **hyper)
    optim.functional.adam_(tps, tgs, tm, tv, **hyper)
    for p, tp, a, ta in zip(ps, tps, m, tm):
        np.testing.assert_array_equal(tp.detach().numpy(), p)
        np.testing.assert_array_equal(ta.numpy(), a)
    # the stateful class keeps views of the tensors and steps them in place
    qs = [p.copy() for p in ps]
    tqs = [torch.from_numpy(p.copy()) for p in ps]
    opt, topt = optim.SGD(qs, lr=0.1, momentum=0.9), optim.SGD(tqs, lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.step(gs)
        topt.step(tgs)
    for q, tq in zip(qs, tqs):
        np.testing.assert_array_equal(tq.numpy(), q)
    norm = optim.clip_grad_norm_(tgs, 0.5)
    assert norm == pytest.approx(float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in gs))), rel=1e-6)
    assert float(torch.sqrt(sum((g.double() ** 2).sum() for g in tgs))) == pytest.approx(0.5, rel=1e-5)


def test_augment(torch):
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (4, 9, 8, 3), dtype=np.uint8)
    timgs = torch.from_numpy(imgs.copy())
    np.testing.assert_array_equal(augment.to_float_normalize(timgs), augment.to_float_normalize(imgs))
    out = torch.empty(4, 9, 8, 3, dtype=torch.uint8)
    augment.functional.hflip(timgs, out=out)
    np.testing.assert_array_equal(out.numpy(), imgs[:, :, ::-1])
    pipe = augment.Compose([augment.RandomCrop(padding=2), augment.RandomHorizontalFlip(), augment.Normalize()])
    pipe.seed(7)
    ref = pipe(imgs)
    pipe.seed(7)
    np.testing.assert_array_equal(pipe(timgs), ref)
    # a float NCHW batch through spatial dropout's in-place output
    x = rand(rng, 2, 3, 4, 4)
    y, scale = augment.spatial_dropout(x, 0.5, rng=np.random.default_rng(0))
    ty = torch.empty(2, 3, 4, 4)
    _, tscale = augment.spatial_dropout(torch.from_numpy(x), 0.5, rng=np.random.default_rng(0), out=ty)
    np.testing.assert_array_equal(ty.numpy(), y)
    np.testing.assert_array_equal(tscale, scale)


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(0)), nn.ReLU(),
                         nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(4, 3, rng=np.random.default_rng(1)))


def test_nn_and_explain(torch):
    rng = np.random.default_rng(4)
    x = rand(rng, 2, 3, 6, 6)
    model = _model()
    ref = model(x).copy()
    np.testing.assert_array_equal(model(torch.from_numpy(x)), ref)
    np.testing.assert_array_equal(model.forward(torch.from_numpy(x)), ref)
    conv = model[0]
    np.testing.assert_array_equal(conv.forward(torch.from_numpy(x)).copy(), conv.forward(x))
    sal = explain.saliency(_model(), x, target=np.array([0, 2]))
    np.testing.assert_array_equal(explain.saliency(_model(), torch.from_numpy(x), target=torch.tensor([0, 2])), sal)


def test_refused_inputs_keep_their_messages(torch):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"^x: expected a float32 or float64 numpy.ndarray.*float16"):
        ops.conv2d(x, np.ones((1, 3, 1, 1), np.float32))
    with pytest.raises(TypeError, match=r"^x: expected an array NumPy can read"):
        ops.conv2d(x.to(torch.bfloat16), np.ones((1, 3, 1, 1), np.float32))


# ---- the whole API ---------------------------------------------------------------------------------

# public callables whose array-annotated parameters are not arrays to convert, with the reason;
# result records (dataclasses, named tuples) that cnnkit fills are not entry points and are skipped
NOT_CONVERTED = {
    "cnnkit.train.fit": "takes data loaders (iterables of batches), not arrays",
    "cnnkit.train.evaluate": "takes a data loader (an iterable of batches), not arrays",
}


def _api():
    import test_api_docs
    return test_api_docs.API


def test_every_array_taking_callable_accepts_dlpack_and_says_so():
    missing, checked = [], 0
    for path, obj in _api().items():
        if isinstance(obj, property) or path in NOT_CONVERTED:
            continue
        if inspect.isclass(obj):
            if dataclass_like(obj) or "__init__" not in vars(obj):
                continue
            fn, docs = vars(obj)["__init__"], (obj.__doc__ or "") + (vars(obj)["__init__"].__doc__ or "")
        else:
            fn, docs = obj, obj.__doc__ or ""
        names = _validate._array_params(inspect.unwrap(fn))
        if not names:
            continue
        checked += 1
        wrapped = set(getattr(fn, "__dlpack_args__", ()))
        if set(names) - wrapped:
            missing.append(f"{path}: {sorted(set(names) - wrapped)} not converted")
        if "__dlpack__" not in docs:
            missing.append(f"{path}: docstring does not mention __dlpack__")
    assert set(NOT_CONVERTED) <= set(_api())  # no stale exemption
    assert checked > 100  # the annotations were read (ops, augment, nn, optim, explain, data)
    assert not missing, "\n".join(missing)


def dataclass_like(cls) -> bool:
    import dataclasses
    return dataclasses.is_dataclass(cls) or (issubclass(cls, tuple) and hasattr(cls, "_fields"))


def test_user_subclasses_convert_too(torch):
    class Double(nn.Module):
        def forward(self, x: np.ndarray) -> np.ndarray:
            assert isinstance(x, np.ndarray)
            return 2 * x

        def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray:
            return 2 * grad

    t = torch.ones(3)
    np.testing.assert_array_equal(Double()(t), 2.0)
    np.testing.assert_array_equal(Double().backward(t), 2.0)

    class Shift(augment.Transform):
        def sample(self, images: np.ndarray) -> dict:
            return {"shift": self.rng.integers(0, 10, len(images))}

        def apply(self, images: np.ndarray, params: dict, labels: np.ndarray | None) -> tuple:
            assert isinstance(images, np.ndarray)
            return images + params["shift"][:, None], labels

    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(Shift(seed=1)(torch.from_numpy(x)), Shift(seed=1)(x))

    class Plain(nn.Module):  # no annotations: the first argument is the array
        def forward(self, x):
            assert isinstance(x, np.ndarray)
            return x + 1

    np.testing.assert_array_equal(Plain().forward(t), 2.0)
