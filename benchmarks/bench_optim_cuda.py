"""CUDA fused optimizer benchmark (needs a GPU, PyTorch with CUDA; run on the device machine).

Times cnnkit's fused multi-tensor step (functional API on torch CUDA tensors through
__cuda_array_interface__) against torch.optim's fused CUDA step on the same 25M-parameter
list of 50 tensors, and a device-to-device copy as the bandwidth limit. CUDA events, median.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

import cnnkit
from cnnkit import _core
from cnnkit.optim import functional as F
from cnnkit.optim._spec import SPECS


def sizes_large(total=25_000_000, count=50, seed=0):
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(np.log(1e3), np.log(3.6e6), count))
    s = np.maximum((w / w.sum() * total).astype(np.int64), 1)
    s[-1] += total - s.sum()
    return [int(v) for v in s]


def time_ms(fn, reps=30, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return float(np.median(out))


def main() -> int:
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; cnnkit "
          f"{cnnkit.__version__}; CUDA devices seen by cnnkit: {cnnkit.build_info()['cuda_devices']}")
    big = torch.empty(1 << 28, device=dev)  # 1 GiB
    dst = torch.empty_like(big)
    copy_ms = time_ms(lambda: dst.copy_(big))
    bw = 2 * big.numel() * 4 / copy_ms / 1e6
    print(f"device-to-device copy: {bw:.0f} GB/s (bytes read + written)")
    big = dst = None  # free the 2 GiB before the optimizer lists
    rows = []
    for label, sizes in [("large 25M/50", sizes_large()), ("small 3000x1000", [1000] * 3000)]:
        ps = [torch.randn(n, device=dev) for n in sizes]
        gs = [torch.randn(n, device=dev) for n in sizes]
        npar = sum(sizes)
        for algo, bpp in [("adam", 28), ("sgd", 20)]:
            mine = [p.clone() for p in ps]
            st = [[torch.zeros_like(p) for p in ps] for _ in range(2 if algo == "adam" else 1)]
            step = [0]
            if algo == "adam":
                def ours():
                    step[0] += 1
                    F.adam_(mine, gs, st[0], st[1], step=step[0], lr=1e-6, beta1=0.9, beta2=0.999,
                            eps=1e-8)
                tp = [torch.nn.Parameter(p.clone()) for p in ps]
                opt = torch.optim.Adam(tp, lr=1e-6, fused=True)
            else:
                def ours():
                    step[0] += 1
                    F.sgd_(mine, gs, st[0], step=step[0], lr=1e-6, momentum=0.9)
                tp = [torch.nn.Parameter(p.clone()) for p in ps]
                opt = torch.optim.SGD(tp, lr=1e-6, momentum=0.9, fused=True)
            for t, g in zip(tp, gs):
                t.grad = g
            ms_ours = time_ms(ours)
            ms_torch = time_ms(opt.step)
            # the compiled launch alone (tensor table prebuilt): kernel + launcher, no Python
            # marshalling of the arrays
            spec = SPECS[algo]
            group = (dict(lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                          maximize=False) if algo == "adam" else
                     dict(lr=1e-6, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
                          maximize=False))
            hyper = np.array([spec.row(group)], dtype=np.float64)
            code = 0
            tab = [(p.data_ptr(), g.data_ptr(), st[0][i].data_ptr(),
                    st[1][i].data_ptr() if len(st) > 1 else 0, 0, p.numel(), code, 0, 5)
                   for i, (p, g) in enumerate(zip(mine, gs))]
            ms_launch = time_ms(lambda: _core.cuda_multi_tensor_step(spec.core, tab, hyper))
            gbs = bpp * npar / ms_ours / 1e6
            gbs_l = bpp * npar / ms_launch / 1e6
            rows.append((label, algo, ms_ours, gbs, 100 * gbs / bw, ms_launch, 100 * gbs_l / bw,
                         ms_torch, ms_torch / ms_ours, ms_torch / ms_launch))
    print("\n| list | algorithm | cnnkit functional ms | GB/s | % of copy BW | launch only ms | "
          "% of copy BW | torch fused ms | speedup (functional) | speedup (launch only) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.0f} | {r[4]:.0f}% | {r[5]:.3f} | "
              f"{r[6]:.0f}% | {r[7]:.3f} | {r[8]:.2f}x | {r[9]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
