"""``cnnkit explain features``: feature visualization and the Building Blocks of a small CNN
trained on synthetic shapes (the model and data of ``cnnkit explain``).

The report folder gets ``channels.png`` (per conv stage, the feature visualizations of its most
active channels), ``neuron_groups.png`` (for a few test images: the image, each NMF neuron
group's spatial map over it, the group's feature visualization and its attribution to the
predicted class, the layout of Olah et al.'s "Building Blocks of Interpretability") and
``features.json`` (the objective values reached, the groups' attributions, seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from .._text import plain


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnkit explain features", description=plain(__doc__.split("\n\n")[0]))
    p.add_argument("--out", default="cnnkit-features", help="report folder (default cnnkit-features/)")
    p.add_argument("--seed", type=int, default=0, help="data, model and visualization seed (default 0)")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="load the model from PATH (Module.save or cnnkit.train.save_checkpoint .npz) "
                        "instead of training it")
    p.add_argument("--save-model", default=None, metavar="PATH", help="save the trained model to PATH (.npz)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    p.add_argument("--size", type=int, default=32, help="image side (default 32)")
    p.add_argument("--train", type=int, default=1200, help="training images (default 1200)")
    p.add_argument("--test", type=int, default=128, help="test images (default 128)")
    p.add_argument("--distractors", type=int, default=1, help="distractor shapes per image (default 1)")
    p.add_argument("--steps", type=int, default=256, help="optimization steps per visualization (default 256)")
    p.add_argument("--channels", type=int, default=8, help="channels shown per stage (default 8)")
    p.add_argument("--groups", type=int, default=4, help="NMF neuron groups per image (default 4)")
    p.add_argument("--images", type=int, default=3, help="test images in neuron_groups.png (default 3)")
    p.add_argument("--layer", default=None,
                   help="layer of the neuron groups (default: the second-to-last conv stage)")
    p.add_argument("--threads", type=int, default=None, help="cnnkit threads (default: all cores)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (smoke test): 2 epochs, 8 steps, 2 channels, 2 groups, 1 image")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# ---- model and data ---------------------------------------------------------------------------------

def _model_and_data(ns: argparse.Namespace) -> tuple:
    """(model, test images, labels, class names, train seconds or None): ``cnnkit explain``'s
    training (or the model loaded from ``--model``) and its test split."""
    from .. import data, models, train
    from . import report
    if ns.model is None:
        model, test, seconds = report._train(ns)
        return model, test["x"], test["y"], test["classes"], seconds
    n_train = 200 if ns.quick else ns.train
    n_test = 16 if ns.quick else ns.test
    ds = data.make_shapes(n_train + n_test, size=ns.size, seed=ns.seed, distractors=ns.distractors,
                          distractor_scale=0.5)
    model = models.resnet_small(1, len(ds.classes or ()), widths=(16, 32, 64), norm="batch", seed=ns.seed)
    with np.load(ns.model, allow_pickle=False) as f:
        checkpoint = any(k.startswith("model/") for k in f.files)
    if checkpoint:
        train.load_checkpoint(ns.model, model)
    else:
        model.load(ns.model)
    test = slice(n_train, n_train + n_test)
    return model, np.ascontiguousarray(ds.images[test]), ds.labels[test], ds.classes, None


def _stages(model: Any) -> List[str]:
    """The outputs of the conv stages: top-level layers with a 4-D output that an element-wise
    layer (norm, ReLU, dropout) does not follow."""
    from ..nn import layers as L
    elementwise = (L.BatchNorm2d, L.GroupNorm, L.ReLU, L._DropoutBase)
    spatial = (L.Conv2d, L.DepthwiseSeparableConv2d, L._Pool2d, L._Residual) + elementwise
    names = []
    mods = list(model.children())
    for i, (name, m) in enumerate(mods):
        if not isinstance(m, spatial):
            break
        nxt = mods[i + 1][1] if i + 1 < len(mods) else None
        if not isinstance(nxt, elementwise):
            names.append(name)
    return names


def _to_model_layout(images: np.ndarray, layout: str) -> np.ndarray:
    """(N, H, W, C) visualizations as a batch in the model's layout."""
    return np.ascontiguousarray(images if layout == "NHWC" else images.transpose(0, 3, 1, 2), dtype=np.float32)


def _reached(model: Any, images: np.ndarray, layer: str, objectives_list: list) -> List[float]:
    """Each objective's value on the finished images (one image per objective, batch index i)."""
    from . import _model
    layout = _model.layout_of(model)
    x = _to_model_layout(images, layout)
    with _model.explaining(model):
        acts, _, _, _ = _model.layer_pass(model, x, layer, None, need_grad=False)
    return [float(obj.evaluate({layer: acts}, layout=layout)[0]) for obj in objectives_list]


def _visualize(model: Any, layer: str, objs: list, ns: argparse.Namespace, size: int, seed: int) -> tuple:
    """One feature_visualization run for a batch of per-image objectives: (images, values, seconds)."""
    from .features import feature_visualization
    total = objs[0]
    for o in objs[1:]:
        total = total + o
    t0 = time.perf_counter()
    imgs = feature_visualization(model, total, size=size, batch=len(objs), steps=ns.steps, seed=seed,
                                 progress=not ns.no_progress)
    seconds = time.perf_counter() - t0
    return np.asarray(imgs, np.float32), _reached(model, imgs, layer, objs), seconds


def _suptitle(fig: Any, text: str, fontsize: float = 9) -> None:
    """A figure title wrapped to the figure's width, with the layout kept clear of it."""
    import textwrap
    width = max(30, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
    lines = [w for part in text.split("\n") for w in textwrap.wrap(part, width)]
    fig.suptitle("\n".join(lines), fontsize=fontsize)
    top = 1 - (len(lines) * 1.35 * fontsize / 72 + 0.2) / fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, top))


def _show(ax: Any, img: np.ndarray) -> None:
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(img, 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])


# ---- the two figures --------------------------------------------------------------------------------

def _channels(model: Any, x: np.ndarray, ns: argparse.Namespace, doc: dict) -> Any:
    from matplotlib.figure import Figure

    from . import _model, objectives
    layout = _model.layout_of(model)
    stages = _stages(model)
    rows = []
    for si, stage in enumerate(stages):
        with _model.explaining(model):
            acts, _, _, _ = _model.layer_pass(model, x, stage, None, need_grad=False)
        acts = _model.to_nchw(acts, layout)
        mean = acts.mean(axis=(0, 2, 3))
        chs = [int(c) for c in np.argsort(-mean, kind="stable")[:min(ns.channels, acts.shape[1])]]
        objs = [objectives.channel(stage, c, batch=i) for i, c in enumerate(chs)]
        imgs, values, seconds = _visualize(model, stage, objs, ns, ns.size, ns.seed + si)
        rows.append((stage, acts.shape, chs, imgs, values))
        doc["channels"][stage] = {
            "channels": acts.shape[1], "resolution": list(acts.shape[2:]), "seconds": seconds,
            "shown": [{"channel": c, "objective": v, "mean_activation_on_test_images": float(mean[c])}
                      for c, v in zip(chs, values)]}
        print(f"  stage {stage}: {len(chs)} channels visualized in {seconds:.1f} s, mean channel objective "
              f"{np.mean(values):.3f} (test images: {np.mean(mean[chs]):.3f})")
    ncol = max(len(r[2]) for r in rows)
    fig = Figure(figsize=(1.7 * ncol + 1.2, 2.3 * len(rows) + 1.0))
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for r, (stage, shape, chs, imgs, values) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            if c >= len(chs):
                ax.axis("off")
                continue
            _show(ax, imgs[c])
            ax.set_title(f"channel {chs[c]}\nmean act. {values[c]:.2f}", fontsize=8)
        axes[r, 0].set_ylabel(f"stage '{stage}'\n{shape[1]} ch, {shape[2]}x{shape[3]}", fontsize=9)
    _suptitle(fig, f"Channel visualizations: images optimized ({ns.steps} steps, FFT parameterization) to "
                   f"maximize one channel's mean activation. Rows: conv stages; columns: each stage's {ncol} "
                   f"channels most active on the test images (the mean activation the image reaches above it).")
    return fig


def _overlay(img: np.ndarray, m: np.ndarray, color: Any) -> np.ndarray:
    """The image in gray with the map (resized to it, scaled to [0, 1]) painted in ``color``."""
    from ._resize import resize_maps
    H, W = img.shape[:2]
    m = resize_maps(m[None].astype(np.float64), (H, W))[0]
    m = m / m.max() if m.max() > 0 else m
    gray = img.mean(axis=-1, keepdims=True)
    base = np.repeat(0.35 + 0.4 * gray, 3, axis=-1)
    a = (0.85 * m)[..., None]
    return np.clip((1 - a) * base + a * np.asarray(color[:3])[None, None, :], 0, 1)


def _neuron_groups(model: Any, x: np.ndarray, y: np.ndarray, classes: Any, ns: argparse.Namespace,
                   doc: dict) -> Any:
    import matplotlib
    from matplotlib.figure import Figure

    from . import _model, objectives
    from .blocks import factorize_activations, group_attribution
    layout = _model.layout_of(model)
    stages = _stages(model)
    layer = ns.layer or (stages[-2] if len(stages) > 1 else stages[-1])
    logits = _model.logits_of(model.eval(), x)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    pred = np.argmax(logits, 1)
    picks: List[int] = []                      # one test image per class first, then the next ones
    for c in range(len(classes)):
        hit = np.nonzero(y == c)[0]
        if hit.size and len(picks) < ns.images:
            picks.append(int(hit[0]))
    picks += [i for i in range(len(y)) if i not in picks][:max(0, ns.images - len(picks))]
    G = ns.groups
    colors = [matplotlib.colormaps["tab10"](g % 10) for g in range(G)]
    fig = Figure(figsize=(2.0 * (G + 1) + 0.4, 4.3 * len(picks) + 0.8))
    axes = fig.subplots(2 * len(picks), G + 1, squeeze=False)
    doc["neuron_groups"] = {"layer": layer, "groups": G, "images": []}
    for r, i in enumerate(picks):
        xi = x[i:i + 1]
        img = xi[0] if layout == "NHWC" else xi[0].transpose(1, 2, 0)
        t0 = time.perf_counter()
        f = factorize_activations(model, xi, layer, G, seed=ns.seed)
        ga = group_attribution(model, xi, layer, f, int(pred[i]))
        objs = [objectives.direction(layer, f.directions[g], batch=g) for g in range(G)]
        imgs, values, fv_seconds = _visualize(model, layer, objs, ns, ns.size, ns.seed + 100 + r)
        seconds = time.perf_counter() - t0
        name_t, name_p = classes[int(y[i])], classes[int(pred[i])]
        top, bottom = axes[2 * r], axes[2 * r + 1]
        _show(top[0], img)
        top[0].set_title(f"test image {i}\ntrue {name_t}, predicted {name_p} ({probs[i, pred[i]]:.2f})",
                         fontsize=8)
        for g in range(G):
            top[g + 1].imshow(_overlay(img, f.maps[0, g], colors[g]))
            top[g + 1].set_xticks([])
            top[g + 1].set_yticks([])
            top[g + 1].set_title(f"group {g}: where it fires", fontsize=8, color=colors[g])
            _show(bottom[g + 1], imgs[g])
            bottom[g + 1].set_title(f"group {g}: what it sees", fontsize=8, color=colors[g])
        attr = [float(a) for a in ga.attributions[0]]
        bars = attr + [float(ga.residual[0])]
        ax = bottom[0]
        ax.bar(range(G + 1), bars, color=colors + [(0.6, 0.6, 0.6, 1.0)])
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(G + 1))
        ax.set_xticklabels([str(g) for g in range(G)] + ["rest"], fontsize=7)
        ax.set_xlabel("neuron group", fontsize=7)
        ax.set_ylabel("grad x act.", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_title(f"attribution to '{name_p}'\n(sum {float(ga.total[0]):.2f})", fontsize=8)
        doc["neuron_groups"]["images"].append({
            "test_index": i, "label": name_t, "predicted": name_p, "probability": float(probs[i, pred[i]]),
            "reconstruction_error": f.reconstruction_error, "total_attribution": float(ga.total[0]),
            "residual_attribution": float(ga.residual[0]), "seconds": seconds, "visualization_seconds": fv_seconds,
            "groups": [{"attribution": a, "direction_objective": v, "direction": [float(d) for d in f.directions[g]]}
                       for g, (a, v) in enumerate(zip(attr, values))]})
        print(f"  image {i} ({name_t} -> {name_p}): {G} groups at layer {layer!r}, NMF error "
              f"{f.reconstruction_error:.3f}, attributions {np.round(attr, 3).tolist()} + rest "
              f"{float(ga.residual[0]):.3f} = {float(ga.total[0]):.3f}")
    _suptitle(fig, f"Neuron groups at layer '{layer}' (NMF of its activations, per image, {G} groups): where each "
                   f"group fires (upper row), what it responds to (feature visualization of the group's channel "
                   f"direction, lower row) and how much it adds to the predicted class's logit (bars: gradient x "
                   f"activation; 'rest': the part of the activations the groups do not reconstruct).")
    return fig


def run(argv: Optional[List[str]] = None) -> int:
    """``cnnkit explain features``: train (or load) the shapes model, write ``channels.png``,
    ``neuron_groups.png`` and ``features.json``.

    Parameters
    ----------
    argv : list of str, optional
        Its command-line options (``--out``, ``--seed``, ``--model``, ``--quick``, ...).

    Returns
    -------
    int
        The exit status (2 for bad options).
    """
    ns = _parser().parse_args(argv)
    import cnnkit
    from . import _model
    bad = [f"--{k}" for k in ("steps", "channels", "groups", "images", "epochs", "size", "train", "test")
           if getattr(ns, k) < 1]
    if bad:
        print(f"cnnkit explain features: {', '.join(bad)} must be >= 1", file=sys.stderr)
        return 2
    if ns.model is not None and not os.path.isfile(ns.model):
        print(f"cnnkit explain features: --model {ns.model!r} is not a file", file=sys.stderr)
        return 2
    if ns.quick:
        ns.steps, ns.channels, ns.groups, ns.images = min(ns.steps, 8), min(ns.channels, 2), min(ns.groups, 2), 1
    if ns.threads:
        cnnkit.set_num_threads(ns.threads)
    t_start = time.perf_counter()
    model, x, y, classes, train_seconds = _model_and_data(ns)
    if ns.save_model:
        model.save(ns.save_model)
    if ns.layer is not None and ns.layer not in dict(model.named_modules()):
        print(f"cnnkit explain features: --layer {ns.layer!r} is not a layer of the model", file=sys.stderr)
        return 2
    accuracy = float(np.mean(np.argmax(_model.logits_of(model.eval(), x), 1) == y))
    how = f"trained in {train_seconds:.1f} s" if train_seconds is not None else f"loaded from {ns.model}"
    print(f"cnnkit explain features: resnet_small on shapes {ns.size}x{ns.size} ({how}), test accuracy "
          f"{accuracy:.3f} on {len(y)} images")
    doc: Dict[str, Any] = {
        "model": "resnet_small(widths=(16, 32, 64), norm='batch')", "model_path": ns.model, "image_size": ns.size,
        "seed": ns.seed, "quick": ns.quick, "threads": cnnkit.get_num_threads(), "train_seconds": train_seconds,
        "test_accuracy": accuracy, "test_images": int(len(y)),
        "visualization": {"steps": ns.steps, "param": "fft", "decorrelate": True, "transforms": "standard"},
        "notes": {
            "objective": "the value the optimized image reaches: a channel's mean activation over positions "
                         "(channels), the mean over positions of the activation vector's dot product with the "
                         "group's direction (neuron_groups)",
            "attribution": "gradient x activation of the predicted class's logit at the layer, per group "
                           "(sum over positions of the group's map times the gradient along its direction); "
                           "attributions + residual = total",
        },
        "channels": {},
    }
    os.makedirs(ns.out, exist_ok=True)
    fig = _channels(model, x, ns, doc)
    fig.savefig(os.path.join(ns.out, "channels.png"), dpi=90)
    fig = _neuron_groups(model, x, y, classes, ns, doc)
    fig.savefig(os.path.join(ns.out, "neuron_groups.png"), dpi=90)
    doc["seconds"] = time.perf_counter() - t_start
    doc["cnnkit_commit"] = cnnkit.build_info().get("git_commit")
    with open(os.path.join(ns.out, "features.json"), "w") as f:
        json.dump(doc, f, indent=2)
    print(f"report in {ns.out}/ (channels.png, neuron_groups.png, features.json) in {doc['seconds']:.1f} s")
    return 0
