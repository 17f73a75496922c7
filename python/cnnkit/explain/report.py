"""``cnnkit explain``: train a small CNN on synthetic shapes with distractors, explain its test
predictions with every attribution method, and score the maps against the ground truth.

The data is :func:`cnnkit.data.make_shapes` with distractor shapes of other classes in every
image (half the labelled shape's size, so the label follows from the image), so a map has to
point at the labelled shape, not at any shape. The report folder gets
``explanations.png`` (a dozen test images x every method) and ``metrics.json`` (per method:
pointing game and energy pointing game against the labelled shape's mask, deletion and insertion
AUC, the cascading-randomization correlation, seconds per image).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from .._text import plain

#: keyword arguments per method in the report (cheaper settings than the defaults where noted)
METHOD_KWARGS: Dict[str, dict] = {
    "smoothgrad": {"n_samples": 25, "seed": 0},
    "integrated_gradients": {"steps": 32},
    "occlusion": {"window": (8, 8), "stride": (4, 4)},
    "rise": {"n_masks": 1000, "cell": 8, "seed": 0},
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnkit explain", description=plain(__doc__.splitlines()[0]),
                                epilog="cnnkit explain features --help: feature visualization and the neuron "
                                       "groups of the same model (channels.png, neuron_groups.png).")
    p.add_argument("--out", default="cnnkit-explain", help="report folder (default cnnkit-explain/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    p.add_argument("--size", type=int, default=32, help="image side (default 32)")
    p.add_argument("--train", type=int, default=1200, help="training images (default 1200)")
    p.add_argument("--test", type=int, default=128, help="scored test images (default 128)")
    p.add_argument("--distractors", type=int, default=1, help="distractor shapes per image (default 1)")
    p.add_argument("--methods", default="all", help="comma-separated method names (default all)")
    p.add_argument("--threads", type=int, default=None, help="cnnkit threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test): few images, 2 epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _train(ns: argparse.Namespace) -> tuple:
    from .. import data, models, optim, train
    n_train = 200 if ns.quick else ns.train
    n_test = 16 if ns.quick else ns.test
    ds = data.make_shapes(n_train + n_test, size=ns.size, seed=ns.seed, distractors=ns.distractors,
                          distractor_scale=0.5)
    assert ds.classes is not None  # make_shapes names its classes
    model = models.resnet_small(1, len(ds.classes), widths=(16, 32, 64), norm="batch", seed=ns.seed)
    tr = data.ArrayDataset(ds.images[:n_train], ds.labels[:n_train])
    loader = data.DataLoader(tr, 64, shuffle=True, drop_last=True, seed=ns.seed)
    epochs = 2 if ns.quick else ns.epochs
    opt = optim.Adam(model.parameters(), lr=3e-3)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    t0 = time.perf_counter()
    train.fit(model, opt, loader, epochs=epochs, scheduler=sched, progress=not ns.no_progress)
    seconds = time.perf_counter() - t0
    test = slice(n_train, n_train + n_test)
    test_set = {"x": np.ascontiguousarray(ds.images[test]), "y": ds.labels[test], "masks": ds.masks[test],
                "distractor_masks": getattr(ds, "distractor_masks", None), "classes": ds.classes}
    if test_set["distractor_masks"] is not None:
        test_set["distractor_masks"] = test_set["distractor_masks"][test]
    return model, test_set, seconds


def _field(result: Any, name: str) -> Any:
    return result[name] if isinstance(result, dict) else getattr(result, name)


def run(argv: Optional[List[str]] = None) -> int:
    """``cnnkit explain``: train, explain with every method, score, write the report.

    Parameters
    ----------
    argv : list of str, optional
        Its command-line options (``--out``, ``--seed``, ``--methods``, ``--quick``, ...).

    Returns
    -------
    int
        The exit status (2 for an unknown method).
    """
    ns = _parser().parse_args(argv)
    import cnnkit
    from . import METHODS, metrics, plot
    from .plot import as_maps
    if ns.threads:
        cnnkit.set_num_threads(ns.threads)
    names = list(METHODS) if ns.methods == "all" else [m.strip() for m in ns.methods.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad:
        print(f"cnnkit explain: unknown methods {bad}; choose from {list(METHODS)}", file=sys.stderr)
        return 2
    model, test, train_seconds = _train(ns)
    x, y = test["x"], test["y"]
    logits = cnnkit.explain._model.logits_of(model.eval(), x)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y))
    print(f"cnnkit explain: resnet_small on shapes {ns.size}x{ns.size} with {ns.distractors} distractor(s), "
          f"trained in {train_seconds:.1f} s, test accuracy {accuracy:.3f} on {len(y)} images")
    results: Dict[str, dict] = {}
    maps_for_plot: Dict[str, np.ndarray] = {}
    show = min(12, len(y))
    for name in names:
        fn = METHODS[name]
        kw = dict(METHOD_KWARGS.get(name, {}))
        if ns.quick and name == "rise":
            kw["n_masks"] = 100
        t0 = time.perf_counter()
        attr = fn(model, x, y, **kw)
        sec = (time.perf_counter() - t0) / len(y)
        maps = as_maps(attr)
        pg = metrics.pointing_game(maps, test["masks"])
        epg = metrics.energy_pointing_game(maps, test["masks"])
        sub = slice(0, min(len(y), 32))
        steps = 16 if ns.quick else None
        dele = metrics.deletion_auc(model, x[sub], maps[sub], y[sub], steps=steps)
        ins = metrics.insertion_auc(model, x[sub], maps[sub], y[sub], steps=steps)
        # --quick randomizes the top three parameterized layers only (the full run: every layer)
        layers = [n for n, m in model.named_modules() if n and m._param_names][::-1][:3] if ns.quick else None
        rt = metrics.randomization_test(model, functools.partial(fn, **kw), x[:4], y[:4], seed=ns.seed,
                                        layers=layers)
        sp = np.asarray(_field(rt, "spearman_abs"), np.float64)
        results[name] = {
            "pointing_game": float(np.mean(pg)), "energy_pointing_game": float(np.mean(epg)),
            "deletion_auc": float(np.mean(dele)), "insertion_auc": float(np.mean(ins)),
            "randomization_spearman_abs": float(np.mean(np.abs(sp[-1]))) if sp.size else None,
            "seconds_per_image": sec, "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()},
        }
        maps_for_plot[name] = maps[:show]
        r = results[name]
        print(f"  {name:22s} pointing {r['pointing_game']:.3f}  energy {r['energy_pointing_game']:.3f}  "
              f"deletion {r['deletion_auc']:.3f}  insertion {r['insertion_auc']:.3f}  "
              f"randomized rho {r['randomization_spearman_abs']:.3f}  {1e3 * sec:.2f} ms/image")
    os.makedirs(ns.out, exist_ok=True)
    labels = [f"{test['classes'][int(c)]}" for c in y[:show]]
    fig = plot(x[:show], maps_for_plot, labels=labels)
    fig.savefig(os.path.join(ns.out, "explanations.png"), dpi=90)
    doc = {
        "model": "resnet_small(widths=(16, 32, 64), norm='batch')", "image_size": ns.size,
        "distractors": ns.distractors, "seed": ns.seed, "threads": cnnkit.get_num_threads(),
        "train_seconds": train_seconds, "test_accuracy": accuracy, "test_images": int(len(y)),
        "metrics_notes": {
            "pointing_game": "fraction of maps whose maximum lies on the labelled shape (higher is better)",
            "energy_pointing_game": "fraction of positive map mass on the labelled shape (higher is better)",
            "deletion_auc": "class probability as the most salient pixels are removed (lower is better)",
            "insertion_auc": "class probability as the most salient pixels are inserted (higher is better)",
            "randomization_spearman_abs": "Spearman correlation of |map| after randomizing every layer with the "
                                          "original (lower is better; near 1 fails the sanity check)",
        },
        "methods": results, "cnnkit_commit": cnnkit.build_info().get("git_commit"),
    }
    with open(os.path.join(ns.out, "metrics.json"), "w") as f:
        json.dump(doc, f, indent=2)
    print(f"report in {ns.out}/ (explanations.png, metrics.json)")
    return 0
