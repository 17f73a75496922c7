"""Image-op benchmark (``cnnkit bench augment``). So far: the fused uint8 -> float32
normalization (``cnnkit.augment.functional.to_float_normalize``, NCHW output, ImageNet mean/std)
on the shared benchmark batches, against a NumPy version and torch (permute, float, divide,
subtract, divide, contiguous), in interleaved rounds with a STREAM ``copy`` probe as the roof.

Minimum bytes: read 1 B and write 4 B per value. The roof is the copy kernel (read 1 write 1)
with regular stores; an output that partly stays in the 32 MiB L3 can show more than 100%.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import cnnkit
from cnnkit.bench import machine_header
from cnnkit.bench._common import fmt, import_torch, med, peer_header, probe, run_rounds
from cnnkit.bench._common import stream_arrays, target_text

BATCHES = [(64, 224, 224, 3), (256, 32, 32, 3)]  # from the shared benchmark shapes ("augment")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TARGET_ROOF = 0.70


def _impls(img, torch):
    from cnnkit.augment.functional import to_float_normalize
    N, H, W, C = img.shape
    out = np.empty((N, C, H, W), np.float32)
    m = np.array(MEAN, np.float32).reshape(1, 1, 1, 3)
    s = np.array(STD, np.float32).reshape(1, 1, 1, 3)
    impls = {
        "cnnkit out=": lambda: to_float_normalize(img, MEAN, STD, out=out),
        "cnnkit fresh": lambda: to_float_normalize(img, MEAN, STD),
        "numpy": lambda: np.ascontiguousarray(((img.astype(np.float32) / 255 - m) / s)
                                              .transpose(0, 3, 1, 2)),
    }
    if torch is not None:
        ti = torch.from_numpy(img)
        tm = torch.tensor(MEAN).view(1, 3, 1, 1)
        ts = torch.tensor(STD).view(1, 3, 1, 1)
        impls["torch"] = lambda: ((ti.permute(0, 3, 1, 2).float().div(255) - tm) / ts).contiguous()
    return impls


def _check(torch):
    """cnnkit against a float64 reference (and torch when present) before timing."""
    from cnnkit.augment.functional import to_float_normalize
    img = np.random.default_rng(1).integers(0, 256, (2, 7, 5, 3), dtype=np.uint8)
    ref = ((img / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(0, 3, 1, 2)
    got = to_float_normalize(img, MEAN, STD)
    if not np.allclose(got, ref, rtol=2e-6, atol=2e-6):
        raise SystemExit("check failed: to_float_normalize differs from the float64 reference")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cnnkit bench augment", description=__doc__)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args(argv)
    if args.threads is not None:
        cnnkit.set_num_threads(args.threads)
    torch = import_torch(args.no_torch, cnnkit.get_num_threads())
    print(machine_header(peer_header(torch)))
    _check(torch)
    arrays = stream_arrays(64)
    rng = np.random.default_rng(0)
    rows, missed, met = [], [], 0
    for shape in BATCHES:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        impls = _impls(img, torch)
        times, probes = run_rounds([(impls, lambda: probe("copy", arrays, 3))], args.reps,
                                   args.warmup)
        t, bw = times[0], probes[0]
        nbytes = img.size * 5
        frac = med([nbytes / a / 1e9 / b for a, b in zip(t["cnnkit out="], bw)])
        peers = [k for k in ("torch", "numpy") if k in t]
        vs = {k: med([pk / a for pk, a in zip(t[k], t["cnnkit out="])]) for k in peers}
        tl = [("% roof (out=)", frac, TARGET_ROOF, frac >= TARGET_ROOF)]
        met += frac >= TARGET_ROOF
        if frac < TARGET_ROOF:
            missed.append(f"{shape}: {target_text(tl)}")
        rows.append(f"| {'x'.join(map(str, shape))} | {fmt(med(t['cnnkit out=']) * 1e3)} | "
                    f"{fmt(med(t['cnnkit fresh']) * 1e3)} | {fmt(nbytes / med(t['cnnkit out=']) / 1e9)} | "
                    f"{100 * frac:.0f}% (copy {fmt(med(bw))} GB/s) | "
                    + " | ".join(f"{fmt(med(t[k]) * 1e3) if k in t else '-'}" for k in ("numpy", "torch"))
                    + " | " + " | ".join(f"{vs[k]:.1f}x" if k in vs else "-" for k in ("numpy", "torch"))
                    + f" | {target_text(tl)} |")
    print(f"\nnormalize (uint8 NHWC -> float32 NCHW, ImageNet mean/std), {args.reps} rounds, "
          "medians; ratios are medians of per-round ratios")
    print("| batch | cnnkit ms out= | cnnkit ms fresh | GB/s (5 B/value) | % of roof | numpy ms | "
          "torch ms | vs numpy | vs torch | target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nTargets met: {met} of {len(BATCHES)} measured." + "".join(f"\n  missed: {m}" for m in missed))
    _bench_equalize(args, rng)
    return 0


def _bench_equalize(args, rng):
    """Histogram equalization (bit-identical to Pillow's) against Pillow, image by image."""
    from cnnkit.augment.functional import equalize
    try:
        from PIL import Image, ImageOps
    except ImportError:
        print("\nequalize: Pillow not installed, peer skipped")
        Image = None
    print("\nequalize (PIL.ImageOps.equalize semantics, bit-identical), images per second")
    print("| batch | cnnkit ms | cnnkit images/s | Pillow ms (per image, one thread) | vs Pillow |")
    print("|---|---|---|---|---|")
    for shape in BATCHES:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        out = np.empty_like(img)
        impls = {"cnnkit": lambda: equalize(img, out=out)}
        if Image is not None:
            pils = [Image.fromarray(a, "RGB") for a in img]
            impls["pillow"] = lambda: [ImageOps.equalize(p) for p in pils]
        times, _ = run_rounds([(impls, lambda: 0.0)], max(3, args.reps // 3), 1)
        t = times[0]
        c = med(t["cnnkit"])
        pl = med(t["pillow"]) if "pillow" in t else None
        ratio = med([a / b for a, b in zip(t["pillow"], t["cnnkit"])]) if pl else None
        print(f"| {'x'.join(map(str, shape))} | {fmt(c * 1e3)} | {fmt(shape[0] / c)} | "
              f"{fmt(pl * 1e3) if pl else '-'} | {f'{ratio:.1f}x' if ratio else '-'} |")


if __name__ == "__main__":
    sys.exit(main())
