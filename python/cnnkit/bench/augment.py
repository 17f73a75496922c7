"""Image-op benchmark (``cnnkit bench augment``): the fused uint8 -> float32
normalization (``cnnkit.augment.functional.to_float_normalize``, NCHW output, ImageNet mean/std)
on the shared benchmark batches, against a NumPy version and torch (permute, float, divide,
subtract, divide, contiguous), in interleaved rounds with a STREAM ``copy`` probe as the roof.

Then equalize against Pillow and (mode "cv") OpenCV, and Mixup / CutMix / SamplePairing / Cutout
on float32 NCHW batches against NumPy expressions.

Minimum bytes for normalize: read 1 B and write 4 B per value. The roof is the copy kernel (read 1 write 1)
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
    _bench_equalize_cv(args, rng)
    _bench_mixing(args, rng)
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



def _bench_equalize_cv(args, rng):
    """equalize(mode="cv") against OpenCV's equalizeHist (split, equalize each plane, merge)."""
    from cnnkit.augment.functional import equalize
    try:
        import cv2
    except ImportError:
        print("\nequalize (cv): OpenCV not installed, skipped")
        return
    cv2.setNumThreads(cnnkit.get_num_threads())
    print(f"\nequalize (cv2.equalizeHist semantics, bit-identical), cv2 {cv2.__version__} at "
          f"{cv2.getNumThreads()} threads; target >= 1.5x OpenCV")
    print("| batch | cnnkit ms | OpenCV ms | vs OpenCV | target |")
    print("|---|---|---|---|---|")
    for shape in BATCHES:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        out = np.empty_like(img)

        def opencv():
            for a in img:
                cv2.merge([cv2.equalizeHist(c) for c in cv2.split(a)])
        times, _ = run_rounds([({"cnnkit": lambda: equalize(img, mode="cv", out=out), "opencv": opencv},
                                lambda: 0.0)], max(3, args.reps // 3), 1)
        t = times[0]
        ratio = med([a / b for a, b in zip(t["opencv"], t["cnnkit"])])
        tl = [("x OpenCV", ratio, 1.5, ratio >= 1.5)]
        print(f"| {'x'.join(map(str, shape))} | {fmt(med(t['cnnkit']) * 1e3)} | {fmt(med(t['opencv']) * 1e3)} | "
              f"{ratio:.2f}x | {target_text(tl)} |")


def _bench_mixing(args, rng):
    """Mixup, CutMix, SamplePairing and Cutout on float32 NCHW batches against NumPy expressions."""
    from cnnkit.augment import functional as F
    print("\nmixing and erasing (float32 NCHW; NumPy: the same formula as array expressions), medians")
    print("| batch | op | cnnkit ms | GB/s (read x + partner, write out) | numpy ms | vs numpy |")
    print("|---|---|---|---|---|---|")
    for n, h, w, c in BATCHES:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        out = np.empty_like(x)
        mp = F.sample_mixup_params(rng, n, 1.0, mode="elem")
        cp = F.sample_cutmix_params(rng, x.shape, 1.0, mode="elem")
        sp = F.sample_pairing_params(rng, n)
        hp = F.sample_cutout_params(rng, n, (h, w), max(1, h // 4), num_holes=1)
        lam4 = mp["lam"].astype(np.float32)[:, None, None, None]

        def np_cutmix():
            o = x.copy()
            for i, (y0, x0, y1, x1) in enumerate(cp["boxes"]):
                o[i, :, y0:y1, x0:x1] = x[cp["perm"][i], :, y0:y1, x0:x1]
            return o

        def np_cutout():
            o = x.copy()
            for i, ((y0, x0, y1, x1),) in enumerate(hp["boxes"]):
                o[i, :, y0:y1, x0:x1] = 0
            return o
        ops = {
            "mixup": (lambda: F.mixup(x, lam=mp["lam"], perm=mp["perm"], out=out),
                      lambda: lam4 * x + (1 - lam4) * x[mp["perm"]], 3),
            "cutmix": (lambda: F.cutmix(x, boxes=cp["boxes"], perm=cp["perm"], out=out), np_cutmix, 2),
            "sample_pairing": (lambda: F.sample_pairing(x, sp["partners"], out=out),
                               lambda: 0.5 * x + 0.5 * x[sp["partners"]], 3),
            "cutout": (lambda: F.cutout(x, hp["boxes"], 0, out=out), np_cutout, 2),
        }
        for name, (ck, npf, passes) in ops.items():
            times, _ = run_rounds([({"cnnkit": ck, "numpy": npf}, lambda: 0.0)], max(3, args.reps // 3), 1)
            t = times[0]
            ratio = med([a / b for a, b in zip(t["numpy"], t["cnnkit"])])
            print(f"| {n}x{c}x{h}x{w} | {name} | {fmt(med(t['cnnkit']) * 1e3)} | "
                  f"{fmt(passes * x.nbytes / med(t['cnnkit']) / 1e9)} | {fmt(med(t['numpy']) * 1e3)} | {ratio:.1f}x |")


if __name__ == "__main__":
    sys.exit(main())
