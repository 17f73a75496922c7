"""A converted model with a cnnkit optimizer under DistributedDataParallel (skipped without torch).

Two processes (gloo backend, on this machine, one thread each) train ``cnnkit.torch.convert(model)``
with ``cnnkit.torch.optim`` optimizers, each on its half of every batch; DDP averages the
gradients. The weights after a few steps must equal those of one process trained on the whole
batches (every tensor within 1e-5 of its largest magnitude), since the mean of the two half-batch
mean losses is the whole batch's mean.

That identity needs a model in which one sample's output does not depend on the others in its
batch. Training-mode BatchNorm breaks it (each process normalises with the statistics of its own
half; torch's SyncBatchNorm, which ``convert`` leaves alone, is the fix for that), so the model
normalises with GroupNorm, and its BatchNorm layer runs in eval mode (running statistics only):
both are converted to cnnkit's, like the convolutions.
"""
from __future__ import annotations

import faulthandler
import gc
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import cnnkit  # noqa: E402
import cnnkit.torch  # noqa: E402

WORLD = 2
STEPS = 4
BATCH = 8  # per step, split evenly between the processes
OPTIMIZERS = {
    "sgd": lambda ps: cnnkit.torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adam": lambda ps: cnnkit.torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-4),
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.GroupNorm(2, 8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.GroupNorm(4, 16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 5))
    with torch.no_grad():  # running statistics that are not the defaults, then frozen
        m[4].running_mean.uniform_(-0.5, 0.5)
        m[4].running_var.uniform_(0.5, 2.0)
    m[4].eval()
    return cnnkit.torch.convert(m)


def _data() -> tuple:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(STEPS, BATCH, 3, 12, 12, generator=g),
            torch.randint(0, 5, (STEPS, BATCH), generator=g))


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, rows: slice) -> None:
    x, y = _data()
    for s in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[s, rows]), y[s, rows])
        loss.backward()
        opt.step()


def _train_all(rank: int, out_dir: str) -> None:
    """Both optimizers under DDP on this rank's half of every batch; rank 0 saves the weights."""
    half = BATCH // WORLD
    for name, make in OPTIMIZERS.items():
        model = _model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        _train(ddp, make(ddp.parameters()), slice(rank * half, (rank + 1) * half))
        if rank == 0:
            torch.save(model.state_dict(), os.path.join(out_dir, f"{name}.pt"))


def _worker(rank: int, out_dir: str) -> None:
    # A crash in torch's C++ prints the Python stacks of every thread first.
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(1)
    cnnkit.set_num_threads(1)
    # Rendezvous through a file in the fixture's fresh folder: no port to pick and race for, and
    # no TCP store whose server dies with rank 0.
    init = "file://" + os.path.join(out_dir, "rendezvous")
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    _train_all(rank, out_dir)
    gc.collect()  # the DDP wrappers (reference cycles) and the work they hold go now
    dist.barrier()  # both ranks done before either tears gloo down
    dist.destroy_process_group()
    # Leave without finalising the interpreter. Rank 1 was killed by SIGABRT ("terminate called
    # without an active exception") in three CI runs, never reproduced here; the likely cause is
    # a torch thread that outlives the process group and wants the GIL while the interpreter
    # finalises: CPython ends such a thread with pthread_exit, and that unwinding through a
    # noexcept C++ frame aborts. There is nothing left to clean up: the weights are on disk and
    # the parent checks them. A failure above raises before this line, so mp.spawn sees it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def ddp_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned processes
    try:
        mp.spawn(_worker, args=(str(out),), nprocs=WORLD, join=True)
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = before
    return {name: torch.load(out / f"{name}.pt") for name in OPTIMIZERS}


def test_model_is_converted():
    m = _model()
    kinds = {type(mod) for mod in m.modules()}
    assert {cnnkit.torch.nn.Conv2d, cnnkit.torch.nn.GroupNorm} <= kinds
    assert any(isinstance(mod, cnnkit.torch.nn.BatchNorm2d) for mod in m.modules())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_ddp_matches_one_process_on_the_whole_batch(ddp_weights, name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        _train(model, OPTIMIZERS[name](model.parameters()), slice(0, BATCH))
    finally:
        torch.set_num_threads(threads)
    got, ref = ddp_weights[name], model.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        a, b = got[k].double().numpy(), ref[k].double().numpy()
        if ref[k].is_floating_point() and k.endswith(("weight", "bias")):
            assert not np.array_equal(b, before[k].double().numpy()), f"{k} did not train"
        err = np.abs(a - b).max(initial=0.0)
        bound = 1e-5 * max(np.abs(b).max(initial=0.0), 1e-3)
        assert err <= bound, f"{name}: {k} differs by {err:.3g} (bound {bound:.3g})"
