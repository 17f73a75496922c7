"""Every public callable of cnnkit is annotated and has a NumPy-style docstring.

The public API is what a user reaches through ``__all__``: cnnkit's own, and recursively that of
every module it lists (subpackages, and submodules such as ``cnnkit.augment.functional``), plus
``cnnkit.torch`` where torch is installed and the console-script entry point ``cnnkit.cli.main``. For every public function, every public class
(its constructor) and every public method or property of those classes (inherited ones included,
checked once where they are defined; ``__call__`` counts as public), the rules are:

* annotations on every parameter (``self``/``cls`` excepted) and on the return (a constructor's
  return excepted);
* a docstring whose sections are NumPy-style (a title line underlined with dashes);
* a ``Parameters`` section naming every parameter of the signature (``self``/``cls``,
  ``*args`` and ``**kwargs`` excepted); a class documents its constructor's parameters in the
  class docstring (a dataclass or NamedTuple may call them ``Attributes``);
* a ``Returns`` (or ``Yields``) section unless the return annotation is ``None`` (properties: a
  docstring only, they take no parameters and their docstring says what they are);
* an ``Examples`` section for the entry points listed in :data:`ENTRY_POINTS`.

Nothing is exempt except the entries of :data:`EXEMPT`, each with its reason.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import types

import pytest

import cnnkit

ROOT = "cnnkit"
# pyproject's [project.scripts] entry point: public, though outside every __all__
EXTRA = ["cnnkit.cli.main"]

# The top-level entry points, which need an Examples section: everything re-exported by
# cnnkit/__init__, and the main functions and classes of each subpackage (what a user calls
# first; helpers, samplers, schedulers and lower-level pieces need no example of their own).
# Names are the public paths reported by the test ids.
ENTRY_POINTS = {
    # cnnkit/__init__ re-exports
    "cnnkit.build_info", "cnnkit.get_num_threads", "cnnkit.set_num_threads",
    # cnnkit.ops: every operation (cnnkit re-exports most of them)
    "cnnkit.ops.conv2d", "cnnkit.ops.conv2d_backward", "cnnkit.ops.conv2d_output_shape",
    "cnnkit.ops.conv2d_algorithm", "cnnkit.ops.depthwise_separable_conv2d",
    "cnnkit.ops.depthwise_separable_conv2d_backward", "cnnkit.ops.batch_norm_train",
    "cnnkit.ops.batch_norm_infer", "cnnkit.ops.batch_norm_backward", "cnnkit.ops.group_norm",
    "cnnkit.ops.group_norm_backward", "cnnkit.ops.fold_batch_norm",
    # cnnkit.nn: the container, the main layer and the loss
    "cnnkit.nn.Sequential", "cnnkit.nn.Conv2d", "cnnkit.nn.CrossEntropyLoss",
    # cnnkit.explain: every attribution method and the pictures
    "cnnkit.explain.saliency", "cnnkit.explain.gradient_x_input", "cnnkit.explain.smoothgrad",
    "cnnkit.explain.integrated_gradients", "cnnkit.explain.guided_backprop", "cnnkit.explain.deconvnet",
    "cnnkit.explain.grad_cam", "cnnkit.explain.grad_cam_pp", "cnnkit.explain.xgrad_cam",
    "cnnkit.explain.layer_cam", "cnnkit.explain.hires_cam", "cnnkit.explain.eigen_cam",
    "cnnkit.explain.score_cam", "cnnkit.explain.guided_grad_cam", "cnnkit.explain.occlusion",
    "cnnkit.explain.rise", "cnnkit.explain.overlay",
    # cnnkit.explain.metrics: the scores
    "cnnkit.explain.metrics.deletion_auc", "cnnkit.explain.metrics.insertion_auc",
    "cnnkit.explain.metrics.pointing_game",
    # cnnkit.augment: normalization, the batch mixers, and the pipeline with a policy
    "cnnkit.augment.functional.to_float_normalize", "cnnkit.augment.functional.mixup",
    "cnnkit.augment.functional.cutmix", "cnnkit.augment.functional.cutout",
    "cnnkit.augment.Compose", "cnnkit.augment.RandAugment",
    # cnnkit.optim: the optimizers users pick first, and gradient clipping
    "cnnkit.optim.SGD", "cnnkit.optim.Adam", "cnnkit.optim.AdamW", "cnnkit.optim.clip_grad_norm_",
    # cnnkit.data
    "cnnkit.data.ArrayDataset", "cnnkit.data.DataLoader", "cnnkit.data.load_digits",
    "cnnkit.data.make_shapes", "cnnkit.data.train_test_split",
    # cnnkit.models
    "cnnkit.models.resnet_small", "cnnkit.models.resnext_small", "cnnkit.models.mobilenet_small",
    # cnnkit.train
    "cnnkit.train.fit", "cnnkit.train.evaluate",
}

# public path -> why it is exempt from this test (a written reason is required)
EXEMPT: dict[str, str] = {}

_SECTION = re.compile(r"^([A-Z][A-Za-z ]*[a-z])\n-{3,}[ \t]*$", re.M)
_PARAM_LINE = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?::.*)?$")


def sections(doc: str) -> dict[str, str]:
    """NumPy-style sections of a docstring: {title: body}, the text before the first title under ''."""
    text = inspect.cleandoc(doc)
    found = list(_SECTION.finditer(text))
    out = {"": text[: found[0].start()] if found else text}
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        out[m.group(1)] = text[m.end():end].strip("\n")
    return out


def documented_names(body: str) -> set[str]:
    """Names listed in a Parameters/Attributes section: unindented ``name : type`` or ``a, b : type`` lines."""
    names = set()
    for line in body.splitlines():
        if not line.strip() or line[0].isspace():
            continue
        m = _PARAM_LINE.match(line.strip())
        if m:
            names.update(n.strip().lstrip("*") for n in m.group(1).split(","))
    return names


def _public_api():
    """{public path: object} for every public function and class, and (path, function or property)
    for their public methods; each object once, under its longest public path."""
    seen_paths: dict[int, tuple[str, object]] = {}

    def add(path, obj):
        prev = seen_paths.get(id(obj))
        if prev is None or len(path) > len(prev[0]):
            seen_paths[id(obj)] = (path, obj)

    visited = set()

    def walk(module):
        if module.__name__ in visited:
            return
        visited.add(module.__name__)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            path = f"{module.__name__}.{name}"
            if isinstance(obj, types.ModuleType):
                if obj.__name__.startswith(ROOT):
                    walk(obj)
            elif inspect.isclass(obj) or inspect.isfunction(obj):
                if (getattr(obj, "__module__", "") or "").startswith(ROOT):
                    add(path, obj)

    walk(cnnkit)
    try:  # the PyTorch backend: public where torch is installed (methods inherited from torch skip)
        import cnnkit.torch as backend
    except ImportError:
        backend = None
    if backend is not None:
        walk(backend)
    for dotted in EXTRA:
        mod, name = dotted.rsplit(".", 1)
        add(dotted, getattr(importlib.import_module(mod), name))

    items = {}
    for path, obj in seen_paths.values():
        items[path] = obj
    methods = {}
    for path, obj in sorted(items.items()):
        if not inspect.isclass(obj):
            continue
        for name in sorted(dir(obj), key=lambda n: (n == "__call__", n)):  # `__call__ = forward`: forward
            if name.startswith("_") and name != "__call__":
                continue
            owner = next((k for k in obj.__mro__ if name in vars(k)), None)
            if owner is None or not (owner.__module__ or "").startswith(ROOT):
                continue
            raw = vars(owner)[name]
            if isinstance(raw, (staticmethod, classmethod)):
                raw = raw.__func__
            if not (inspect.isfunction(raw) or isinstance(raw, property)):
                continue
            key = id(raw)
            mpath = f"{path}.{name}"
            prev = methods.get(key)
            # a method is reported under the public class that defines it, else the first public
            # subclass that inherits it (from a private base)
            if prev is None or (owner is obj and prev[2] is not owner):
                methods[key] = (mpath, raw, obj)
    out = dict(items)
    for mpath, raw, _ in methods.values():
        out.setdefault(mpath, raw)
    return dict(sorted(out.items()))


API = _public_api()


def _is_none(annotation) -> bool:
    return annotation is None or annotation == "None" or annotation is type(None)


def _signature(obj):
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _params(sig, *, skip_first: bool):
    params = list(sig.parameters.values())
    if skip_first and params and params[0].name in ("self", "cls"):
        params = params[1:]
    return params


def problems(path: str, obj) -> list[str]:
    """What is wrong with the public callable ``obj`` (empty when it passes)."""
    errs = []
    if isinstance(obj, property):
        if not (obj.__doc__ or "").strip():
            errs.append("property without a docstring")
        if obj.fget is not None and obj.fget.__annotations__.get("return") is None:
            errs.append("property getter without a return annotation")
        return errs
    is_class = inspect.isclass(obj)
    doc = obj.__doc__ if not is_class else vars(obj).get("__doc__")
    if not (doc or "").strip():
        return ["no docstring"]
    secs = sections(doc)
    if is_class:
        init = None
        for k in obj.__mro__:
            if "__init__" in vars(k) or "__new__" in vars(k):
                init = k
                break
        if init is object or init is None:
            return errs
        if not (init.__module__ or "").startswith(ROOT) and not issubclass(obj, tuple):
            return errs
        sig = _signature(obj)
        if sig is None:
            return errs
        params = list(sig.parameters.values())
        func = vars(init).get("__init__")
        if inspect.isfunction(func) and not dataclasses.is_dataclass(obj):
            for p in _params(inspect.signature(func), skip_first=True):
                if p.annotation is inspect.Parameter.empty:
                    errs.append(f"__init__ parameter {p.name!r} has no annotation")
        kinds = ("Parameters", "Attributes") if dataclasses.is_dataclass(obj) or issubclass(obj, tuple) \
            else ("Parameters",)
    else:
        sig = _signature(obj)
        if sig is None:
            return ["no inspectable signature"]
        params = _params(sig, skip_first="." in obj.__qualname__)
        for p in params:
            if p.annotation is inspect.Parameter.empty:
                errs.append(f"parameter {p.name!r} has no annotation")
        if sig.return_annotation is inspect.Signature.empty:
            errs.append("no return annotation")
        elif not _is_none(sig.return_annotation) and not ({"Returns", "Yields"} & secs.keys()):
            errs.append("no Returns (or Yields) section")
        kinds = ("Parameters",)
    named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if named:
        body = next((secs[k] for k in kinds if k in secs), None)
        if body is None:
            errs.append(f"no {kinds[0]} section (parameters: {', '.join(named)})")
        else:
            documented = documented_names(body)
            missing = [n for n in named if n not in documented]
            if missing:
                errs.append(f"{kinds[0]} section lacks: {', '.join(missing)}")
            if kinds == ("Parameters",):  # a renamed or removed parameter must leave the docs too
                stale = sorted(documented - {p.name for p in params})
                if stale:
                    errs.append(f"Parameters section names what the signature lacks: {', '.join(stale)}")
    if path in ENTRY_POINTS and "Examples" not in secs:
        errs.append("no Examples section (an entry point)")
    return errs


def test_entry_points_exist():
    """Every name in ENTRY_POINTS and EXEMPT is a public callable (a rename must update the lists)."""
    unknown = sorted((ENTRY_POINTS | EXEMPT.keys()) - API.keys())
    assert not unknown, f"not public callables of cnnkit: {unknown}"
    assert all(reason.strip() for reason in EXEMPT.values())


@pytest.mark.parametrize("path", list(API))
def test_public_callable_is_documented(path):
    if path in EXEMPT:
        pytest.skip(EXEMPT[path])
    errs = problems(path, API[path])
    assert not errs, f"{path}: " + "; ".join(errs)


def test_section_parser():
    """The parser finds sections and parameter names, and would notice a missing one."""
    doc = """Summary.

    Parameters
    ----------
    x, y : ndarray
        Arrays.
    *args
        More.
    z
        Plain.

    Returns
    -------
    ndarray
    """
    secs = sections(doc)
    assert set(secs) == {"", "Parameters", "Returns"}
    assert documented_names(secs["Parameters"]) == {"x", "y", "args", "z"}
    assert "w" not in documented_names(secs["Parameters"])


def _sample(a: int, b: int = 0) -> int:
    """Summary.

    Parameters
    ----------
    a : int
    c : int

    Examples
    --------
    >>> _sample(1)
    1
    """
    return a


def _unannotated(a, b=0):
    """Summary."""
    return a


def test_checker_flags_each_rule():
    """The checker reports a missing parameter, a stale one, a missing Returns section, missing
    annotations and, for an entry point, a missing Examples section."""
    errs = problems("x._sample", _sample)
    assert "Parameters section lacks: b" in errs
    assert "Parameters section names what the signature lacks: c" in errs
    assert "no Returns (or Yields) section" in errs
    errs = problems("x._unannotated", _unannotated)
    assert "parameter 'a' has no annotation" in errs and "no return annotation" in errs
    assert any(e.startswith("no Parameters section") for e in errs)
    ENTRY_POINTS.add("x._unannotated")
    try:
        assert "no Examples section (an entry point)" in problems("x._unannotated", _unannotated)
    finally:
        ENTRY_POINTS.discard("x._unannotated")
