"""cnnkit augmentation in torch DataLoader worker processes (skipped without torch).

Every transform pickles (a pickled copy continues the original's random stream exactly). In a
DataLoader with two workers over a dataset of identical images, so that any difference between
samples comes from the augmentation draws: without help both workers replay one stream (the
classic bug, checked so that the fix is seen to be needed); with
``worker_init_fn=cnnkit.torch.worker_init_fn`` the workers draw different augmentations, the same
torch seed gives the same batches on a second run, and another seed gives other batches.
"""
from __future__ import annotations

import functools
import inspect
import pickle

import numpy as np
import pytest

from cnnkit import augment

torch = pytest.importorskip("torch")
import cnnkit.torch  # noqa: E402
from cnnkit.torch import seed_transforms, worker_init_fn  # noqa: E402


def _u8(n=4, size=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _all_transforms():
    """One instance of every public Transform, and an input it takes."""
    u8, f32 = _u8(), np.random.default_rng(1).standard_normal((4, 3, 12, 12)).astype(np.float32)
    needs = {augment.Cutout: dict(size=4), augment.RandomResizedCrop: dict(size=8),
             augment.RandomAffine: dict(degrees=20.0)}
    floats = (augment.MixUp, augment.CutMix, augment.SamplePairing, augment.SpatialDropout)
    out = []
    for name in augment.__all__:
        cls = getattr(augment, name)
        if not (inspect.isclass(cls) and issubclass(cls, augment.Transform)) or cls in (augment.Transform,
                                                                                      augment.Compose):
            continue
        out.append((cls(**needs.get(cls, {})), f32 if cls in floats else u8))
    out.append((augment.Compose([augment.RandAugment(), augment.RandomCrop(padding=2), augment.Normalize()]), u8))
    return out


@pytest.mark.parametrize("transform, x", _all_transforms(), ids=lambda v: type(v).__name__ if
                         isinstance(v, augment.Transform) else "")
def test_transforms_pickle_and_continue_the_stream(transform, x):
    transform.seed(5)
    transform(x)  # advance the stream a little first
    copy = pickle.loads(pickle.dumps(transform))
    for _ in range(2):
        np.testing.assert_array_equal(copy(x), transform(x))


# ---- in DataLoader workers --------------------------------------------------------------------------

class SameImages(torch.utils.data.Dataset):
    """n copies of one image, each augmented on the way out: samples differ only by their draws."""

    def __init__(self, n, transform):
        self.image = _u8(1, 16, seed=3)[0]
        self.n, self.transform = n, transform

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.transform(self.image)


def _pipeline(seed=0):
    return augment.Compose([augment.RandomCrop(padding=4), augment.RandomHorizontalFlip(),
                            augment.ColorJitter(brightness=0.4, contrast=0.4), augment.Normalize()], seed=seed)


def _batches(torch_seed, init=worker_init_fn, n=16, batch_size=4, epochs=1):
    torch.manual_seed(torch_seed)
    loader = torch.utils.data.DataLoader(SameImages(n, _pipeline()), batch_size=batch_size, num_workers=2,
                                         worker_init_fn=init)
    out = [[b.numpy() for b in loader] for _ in range(epochs)]
    return out if epochs > 1 else out[0]


@pytest.fixture(scope="module")
def runs():
    """Batches of two runs with torch seed 0 (the first over two epochs), one with seed 1, and one
    without the init function."""
    a, a2 = _batches(0, epochs=2)
    return {"a": a, "a2": a2, "b": _batches(0), "c": _batches(1), "plain": _batches(0, init=None)}


def test_without_the_fix_workers_repeat_each_other(runs):
    # batches alternate between the workers: 0 and 1 are each worker's first batch
    b = runs["plain"]
    assert len(b) == 4 and b[0].shape == (4, 3, 16, 16)
    np.testing.assert_array_equal(b[0], b[1])
    np.testing.assert_array_equal(b[2], b[3])


def test_workers_draw_distinct_streams(runs):
    b = runs["a"]
    assert not np.array_equal(b[0], b[1]) and not np.array_equal(b[2], b[3])  # worker 0 vs worker 1
    assert not np.array_equal(b[0], b[2]) and not np.array_equal(b[1], b[3])  # a worker's stream moves on
    samples = np.concatenate(b).reshape(16, -1)
    assert len({s.tobytes() for s in samples}) > 12  # nearly every sample has its own draw


def test_same_torch_seed_same_batches(runs):
    for x, y in zip(runs["a"], runs["b"]):
        np.testing.assert_array_equal(x, y)
    assert all(not np.array_equal(x, y) for x, y in zip(runs["a"], runs["c"]))


def test_each_epoch_draws_anew(runs):
    # the loader draws a new base seed for its workers at every epoch
    assert all(not np.array_equal(x, y) for x, y in zip(runs["a"], runs["a2"]))


def test_seed_transforms_finds_transforms_everywhere():
    flip, crop, pipe = augment.RandomHorizontalFlip(), augment.RandomCrop(padding=2), _pipeline()

    class Holder:
        pass

    h = Holder()
    h.items = [1, "x", {"train": pipe, "again": pipe}]  # the same transform once only
    h.fn = functools.partial(print, crop, key=flip)
    h.me = h  # cycles end
    assert seed_transforms(h, 11) == 3
    first = [pipe(_u8()), crop(_u8()), flip(_u8())]
    assert seed_transforms(h, 11) == 3
    for a, b in zip(first, [pipe(_u8()), crop(_u8()), flip(_u8())]):
        np.testing.assert_array_equal(a, b)
    assert seed_transforms(h, 12) == 3
    assert not np.array_equal(pipe(_u8()), first[0])
    assert seed_transforms([np.zeros(3), 4.0], 0) == 0


def test_bad_input():
    with pytest.raises(ValueError, match=r"^seed: expected an int >= 0"):
        seed_transforms(_pipeline(), -1)
    with pytest.raises(TypeError, match=r"^seed: expected an int >= 0"):
        seed_transforms(_pipeline(), 1.5)
    with pytest.raises(RuntimeError, match=r"^worker_init_fn: expected to run in a torch DataLoader worker"):
        cnnkit.torch.worker_init_fn(0)
