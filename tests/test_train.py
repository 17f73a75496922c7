"""Models, the training loop, checkpoints and ``cnnkit demo``."""
import json

import numpy as np
import pytest

import cnnkit
from cnnkit import augment, data, models, nn, optim, train
from conftest import num_threads


def _loaders(seed=0, n=96, size=16):
    ds = data.make_shapes(n, size=size, seed=seed)
    tr, te = data.train_test_split(ds, test_size=0.25, seed=seed)
    return data.DataLoader(tr, 16, shuffle=True, drop_last=True, seed=seed), data.DataLoader(te, 64, shuffle=False)


@pytest.mark.parametrize("builder", [models.resnet_small, models.resnext_small, models.mobilenet_small])
@pytest.mark.parametrize("norm", ["batch", "group", None])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_builders_run_forward_and_backward(builder, norm, layout):
    model = builder(in_channels=3, num_classes=5, norm=norm, layout=layout, seed=1)
    rng = np.random.default_rng(0)
    shape = (4, 3, 12, 12) if layout == "NCHW" else (4, 12, 12, 3)
    x = rng.standard_normal(shape).astype(np.float32)
    logits = model.forward(x)
    assert logits.shape == (4, 5) and np.all(np.isfinite(logits))
    loss = nn.CrossEntropyLoss()
    loss.forward(logits, np.array([0, 1, 2, 3]))
    gx = model.backward(loss.backward(), input_grad=True)
    assert gx.shape == shape and np.all(np.isfinite(gx))
    assert all(np.all(np.isfinite(g)) for g in model.gradients())
    assert any(np.any(g != 0) for g in model.gradients())


def test_builders_are_seeded_and_sized():
    a = models.resnext_small(in_channels=1, num_classes=10, seed=3)
    b = models.resnext_small(in_channels=1, num_classes=10, seed=3)
    c = models.resnext_small(in_channels=1, num_classes=10, seed=4)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)
    assert any(not np.array_equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    for size in (8, 64):  # the size range the builders are for
        x = np.random.default_rng(0).standard_normal((2, 1, size, size)).astype(np.float32)
        assert a.forward(x).shape == (2, 10)
    with pytest.raises(ValueError, match="in_channels"):
        models.resnet_small(in_channels=2)
    with pytest.raises(ValueError, match="num_classes"):
        models.mobilenet_small(num_classes=1)
    with pytest.raises(ValueError, match="norm"):
        models.resnet_small(norm="layer")


def test_fit_learns_shapes_within_a_bounded_number_of_steps():
    # 400 images: with much fewer, Adam moves the weights faster than batch norm's running
    # statistics (momentum 0.1) follow, and eval-mode accuracy lags the training accuracy
    tr, te = _loaders(seed=0, n=400)
    model = models.resnet_small(in_channels=1, num_classes=4, widths=(16, 32), blocks=(1, 1), seed=0)
    opt = optim.Adam(model.parameters(), lr=5e-3)
    hist = train.fit(model, opt, tr, epochs=12, val_loader=te, progress=False)
    assert hist["stopped"] is None
    assert len(hist["loss"]) == 12 * len(tr) and len(hist["epoch_loss"]) == 12
    assert hist["epoch_loss"][-1] < 0.5 * hist["epoch_loss"][0]
    assert train.evaluate(model, te)["accuracy"] >= 0.9  # 4 shape classes, chance is 0.25


def test_fit_is_reproducible_and_thread_invariant():
    def run(threads):
        with num_threads(threads):
            tr, _ = _loaders(seed=1)
            model = models.mobilenet_small(in_channels=1, num_classes=4, widths=(8, 16, 16), seed=2)
            opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            hist = train.fit(model, opt, tr, epochs=2, progress=False)
            return hist["loss"], [p.copy() for p in model.parameters()]
    l1, p1 = run(1)
    l2, p2 = run(2)
    l3, p3 = run(2)
    assert l1 == l2 == l3
    for a, b, c in zip(p1, p2, p3):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)


def test_fit_stops_on_a_non_finite_loss_without_applying_the_step():
    tr, _ = _loaders(seed=2)
    model = models.resnet_small(in_channels=1, num_classes=4, widths=(8,), blocks=(1,), seed=0)
    opt = optim.SGD(model.parameters(), lr=0.01)
    model.parameters()[-1][...] = np.nan  # the classifier bias: every logit is NaN
    before = [p.copy() for p in model.parameters()]
    hist = train.fit(model, opt, tr, epochs=3, progress=False)
    assert hist["stopped"] is not None and "non-finite" in hist["stopped"]
    assert hist["loss"] == []
    for a, b in zip(before, model.parameters()):
        np.testing.assert_array_equal(a, b)


def test_scheduler_and_callbacks():
    tr, te = _loaders(seed=3)
    model = models.resnet_small(in_channels=1, num_classes=4, widths=(8,), blocks=(1,), seed=0)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    seen = []
    hist = train.fit(model, opt, tr, epochs=5, scheduler=sched, val_loader=te, progress=False,
                     callbacks=[lambda e, h: seen.append(e) or e == 2])
    assert seen == [0, 1, 2] and "callback" in hist["stopped"]
    lrs = sorted(set(hist["lr"]), reverse=True)
    np.testing.assert_allclose(lrs, [1e-2, 5e-3, 2.5e-3])
    assert len(hist["val_accuracy"]) == 3


def test_checkpoint_resumes_to_the_same_result(tmp_path):
    def setup():
        ds = data.make_shapes(64, size=16, seed=4)
        pipe = augment.Compose([augment.RandomHorizontalFlip(), augment.RandomCrop(padding=1)], seed=5)
        u8 = data.ArrayDataset(np.ascontiguousarray((ds.images.transpose(0, 2, 3, 1) * 255).astype(np.uint8)),
                               ds.labels)
        norm = augment.Normalize(mean=(0.5,), std=(0.5,))
        loader = data.DataLoader(u8, 16, shuffle=True, augment=augment.Compose([pipe, norm]), seed=6)
        model = models.resnet_small(in_channels=1, num_classes=4, widths=(8, 16), blocks=(1, 1), seed=7)
        opt = optim.Adam(model.parameters(), lr=3e-3)
        sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
        return model, opt, sched, loader

    model, opt, sched, loader = setup()
    full = train.fit(model, opt, loader, epochs=4, scheduler=sched, progress=False)
    final = [p.copy() for p in model.parameters()]

    model, opt, sched, loader = setup()
    train.fit(model, opt, loader, epochs=2, scheduler=sched, progress=False)
    path = tmp_path / "ckpt.npz"
    train.save_checkpoint(path, model, opt, scheduler=sched, loader=loader, epoch=2, note="half")
    model, opt, sched, loader = setup()  # a fresh process would start like this
    meta = train.load_checkpoint(path, model, opt, scheduler=sched, loader=loader)
    assert meta["epoch"] == 2 and meta["extra"] == {"note": "half"}
    rest = train.fit(model, opt, loader, epochs=2, scheduler=sched, progress=False)
    assert rest["loss"] == full["loss"][len(full["loss"]) - len(rest["loss"]):]
    for a, b in zip(final, model.parameters()):
        np.testing.assert_array_equal(a, b)


def test_fit_and_evaluate_bad_input():
    tr, _ = _loaders()
    model = models.resnet_small(in_channels=1, num_classes=4, widths=(8,), blocks=(1,), seed=0)
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs"):
        train.fit(model, opt, tr, epochs=-1, progress=False)
    with pytest.raises(TypeError, match="model"):
        train.fit(object(), opt, tr, epochs=1, progress=False)
    with pytest.raises(ValueError, match="scheduler_interval"):
        train.fit(model, opt, tr, epochs=1, scheduler_interval="batch", progress=False)
    wrong = data.DataLoader(data.make_shapes(8, size=16, seed=0, channels=3), 4, shuffle=False)
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\).*channels"):
        train.fit(model, opt, wrong, epochs=1, progress=False)
    bad_labels = data.DataLoader(data.ArrayDataset(np.zeros((4, 1, 16, 16), np.float32), np.array([0, 1, 2, 9])), 4)
    with pytest.raises(ValueError, match="target"):
        train.evaluate(model, bad_labels)


def test_demo_writes_a_report(tmp_path):
    from cnnkit import demo
    out = tmp_path / "report"
    rc = demo.run(["--epochs", "1", "--out", str(out), "--no-progress", "--seed", "3", "--model", "resnet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["train_seconds"] > 0
    assert summary["epochs"] == 1 and summary["seed"] == 3
    assert (out / "curves.png").stat().st_size > 1000
    assert "Test accuracy" in (out / "summary.md").read_text()
    again = tmp_path / "again"
    demo.run(["--epochs", "1", "--out", str(again), "--no-progress", "--seed", "3", "--model", "resnet"])
    assert json.loads((again / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]


def test_cli_demo_help(capsys):
    from cnnkit.cli import main
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    assert "--epochs" in capsys.readouterr().out
    assert cnnkit.demo is not None


@pytest.mark.parametrize("builder,norm,layout", [(models.resnext_small, "batch", "NHWC"),
                                                 (models.resnet_small, "group", "NCHW"),
                                                 (models.mobilenet_small, None, "NCHW"),
                                                 (models.mobilenet_small, "batch", "NHWC")])
def test_a_training_step_allocates_no_activation_sized_arrays_after_the_first(builder, norm, layout):
    import tracemalloc
    model = builder(in_channels=3, num_classes=10, norm=norm, layout=layout, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 16, 16) if layout == "NCHW" else (16, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    loss, opt = nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step(model.gradients())

    step()
    step()
    smallest = min(a.nbytes for m in model.modules() for a in m._ws.values() if isinstance(a, np.ndarray))
    tracemalloc.start()
    try:
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # only per-channel vectors (statistics, small gradients) are allocated: far below any activation
    assert peak < max(256 * 1024, smallest), peak


def test_batch_norm_backward_out_residual():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    y, m, s = cnnkit.batch_norm_train(x, w, b, None, None, activation="relu", residual=r)
    g = rng.standard_normal(x.shape).astype(np.float32)
    ref = cnnkit.batch_norm_backward(g, x, w, m, s, y=y, residual=r, activation="relu",
                                     needs=("input", "residual"))
    buf = np.empty_like(x)
    got = cnnkit.batch_norm_backward(g, x, w, m, s, y=y, residual=r, activation="relu",
                                     needs=("input", "residual"), out_residual=buf)
    assert got[3] is buf
    np.testing.assert_array_equal(buf, ref[3])
    np.testing.assert_array_equal(got[0], ref[0])
    with pytest.raises(ValueError, match="out_residual"):
        cnnkit.batch_norm_backward(g, x, w, m, s, y=y, residual=r, activation="relu", out_residual=buf)


@pytest.mark.parametrize("module", [models, train], ids=lambda m: m.__name__)
def test_public_modules_list_only_their_names(module):
    """dir() of a module of functions is its __all__ (not np, json, annotations, ...); the same
    for cnnkit.augment.functional in test_augment_ops."""
    assert dir(module) == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize("module", [cnnkit, cnnkit.ops, data, models, train, nn, optim, augment],
                         ids=lambda m: m.__name__)
def test_public_modules_have_all(module):
    names = vars(module)["__all__"]
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(module, name), name
