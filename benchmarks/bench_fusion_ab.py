"""cnnkit.nn with fusion on against fusion off, in one process (see BENCHMARKS.md, issue 17).

    python benchmarks/bench_fusion_ab.py [THREADS] [model:layout ...]

Each round runs two training steps (forward, cross-entropy, backward, Adam) of the same model
with ``cnnkit.nn.fusion(True)`` and two with ``fusion(False)``, the order alternating per round;
15 rounds; prints the fastest forward and backward of each mode (the step least disturbed by the
rest of a shared machine) and unfused / fused. Defaults: 2 threads, resnext_small and
mobilenet_small in both layouts, batch 64 of 3x32x32.
"""
import sys
import time

import numpy as np

import cnnkit
from cnnkit import models, nn, optim


def main(argv: list[str]) -> None:
    threads = int(argv[0]) if argv else 2
    cnnkit.set_num_threads(threads)
    cfgs = [a.split(":") for a in (argv[1:] or ["resnext_small:NHWC", "resnext_small:NCHW",
                                                 "mobilenet_small:NCHW", "mobilenet_small:NHWC"])]
    for name, layout in cfgs:
        model = getattr(models, name)(in_channels=3, num_classes=10, norm="batch", layout=layout, seed=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 3, 32, 32) if layout == "NCHW" else (64, 32, 32, 3)).astype(np.float32)
        y = rng.integers(0, 10, 64)
        loss, opt = nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-3)
        t: dict = {(f, ph): [] for f in (True, False) for ph in ("fwd", "bwd")}
        for r in range(15):
            for f in ((True, False) if r % 2 else (False, True)):
                with nn.fusion(f):
                    for _ in range(2):
                        t0 = time.perf_counter()
                        loss.forward(model.forward(x), y)
                        t1 = time.perf_counter()
                        model.backward(loss.backward())
                        t2 = time.perf_counter()
                        opt.step(model.gradients())
                        t[(f, "fwd")].append(t1 - t0)
                        t[(f, "bwd")].append(t2 - t1)
        m = {k: min(v) * 1e3 for k, v in t.items()}
        fused, unfused = m[(True, "fwd")] + m[(True, "bwd")], m[(False, "fwd")] + m[(False, "bwd")]
        print(f"{name} {layout} {threads} threads, fastest ms: fused fwd {m[(True, 'fwd')]:.1f} "
              f"bwd {m[(True, 'bwd')]:.1f} | unfused fwd {m[(False, 'fwd')]:.1f} bwd {m[(False, 'bwd')]:.1f} | "
              f"unfused / fused {unfused / fused:.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
