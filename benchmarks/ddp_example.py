"""Data-parallel training with cnnkit as PyTorch's CPU backend, launched by torchrun.

    torchrun --nproc_per_node=2 benchmarks/ddp_example.py [--epochs 3] [--threads 1]

Each process converts the same model with ``cnnkit.torch.convert``, wraps it in
``DistributedDataParallel`` (gloo backend), steps a ``cnnkit.torch.optim`` optimizer, and reads
its shard of the data (``DistributedSampler``) through a DataLoader whose workers augment with
cnnkit transforms, each worker on its own random stream (``cnnkit.torch.worker_init_fn``). The
model normalises with GroupNorm: training-mode BatchNorm would normalise each process's shard
with its own statistics (use ``torch.nn.SyncBatchNorm``, which ``convert`` leaves as it is, when
that matters). At the end every process checks that its weights equal rank 0's.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import cnnkit
import cnnkit.torch
from cnnkit import augment, data


class Shapes(torch.utils.data.Dataset):
    """Synthetic shapes as uint8 HWC images; each sample is augmented in the worker that loads it."""

    def __init__(self, n: int, transform: augment.Transform) -> None:
        ds = data.make_shapes(n, size=32, seed=0, channels=3)
        self.images = np.ascontiguousarray((ds.images.clip(0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1))
        self.labels = ds.labels.astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple:
        return torch.from_numpy(self.transform(self.images[i])), int(self.labels[i])


def model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1, bias=False), torch.nn.GroupNorm(8, 32), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), torch.nn.GroupNorm(8, 64), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=8, bias=False), torch.nn.GroupNorm(8, 64),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 4))
    return cnnkit.torch.convert(m)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="threads per process (torch and cnnkit)")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    args = p.parse_args()

    dist.init_process_group("gloo")  # torchrun sets MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(args.threads)
    cnnkit.set_num_threads(args.threads)
    torch.manual_seed(1234)  # the loaders' worker seeds derive from it: reproducible augmentation

    pipeline = augment.Compose([augment.RandomCrop(padding=4), augment.RandomHorizontalFlip(),
                                augment.Normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))])
    dataset = Shapes(1024, pipeline)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=2,
                                         worker_init_fn=cnnkit.torch.worker_init_fn, drop_last=True)

    net = DistributedDataParallel(model())
    opt = cnnkit.torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        t0, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in loader:
            opt.zero_grad()
            logits = net(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            loss.backward()  # DDP averages the gradients across the processes here
            opt.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        stats = torch.tensor([total, correct, seen], dtype=torch.float64)
        dist.all_reduce(stats)
        if rank == 0:
            print(f"epoch {epoch}: loss {stats[0] / stats[2]:.4f}, accuracy {stats[1] / stats[2]:.3f}, "
                  f"{time.perf_counter() - t0:.1f} s ({world} processes x {args.threads} threads)")

    flat = torch.cat([q.detach().reshape(-1) for q in net.module.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = torch.tensor([float((flat - ref).abs().max())])
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(f"largest weight difference between processes: {float(diff):.3g}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
