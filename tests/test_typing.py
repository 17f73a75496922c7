"""The typing files that ship with the package: py.typed, and a _core.pyi that declares exactly
what the compiled extension exports, with the same parameter names, order and defaults (pybind11
writes each binding's signature as the first line of its docstring)."""
from __future__ import annotations

import ast
import pathlib

import pytest

import cnnkit
from cnnkit import _core

PACKAGE = pathlib.Path(cnnkit.__file__).parent
STUB = PACKAGE / "_core.pyi"


def _stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(encoding="utf-8"), filename=str(STUB))


def _public(names):
    return {n for n in names if not n.startswith("_")}


def _stub_module_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return _public(names)


def _stub_functions(body) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in body if isinstance(n, ast.FunctionDef)}


def _params(fn: ast.FunctionDef) -> list[tuple[str, bool]]:
    """(name, has a default) for each parameter, `self` dropped."""
    args = fn.args
    positional = args.posonlyargs + args.args
    defaults = [False] * (len(positional) - len(args.defaults)) + [True] * len(args.defaults)
    out = list(zip((a.arg for a in positional), defaults))
    out += [(a.arg, d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    return [p for p in out if p[0] != "self"]


def _runtime_params(obj, name: str) -> list[tuple[str, bool]]:
    """Parameters of a pybind11 callable, parsed from the signature line of its docstring."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    line = doc.splitlines()[0] if doc else ""
    assert line.startswith(name + "("), f"{name}: no pybind11 signature line in its docstring: {line!r}"
    fn = ast.parse(f"def {line}: ...").body[0]
    assert isinstance(fn, ast.FunctionDef)
    return _params(fn)


def test_py_typed_marker():
    assert (PACKAGE / "py.typed").is_file()


def test_stub_declares_every_public_name():
    stub = _stub_module_names(_stub_tree())
    runtime = _public(dir(_core))
    assert not runtime - stub, f"_core exports names _core.pyi does not declare: {sorted(runtime - stub)}"
    assert not stub - runtime, f"_core.pyi declares names _core does not export: {sorted(stub - runtime)}"


def _callables():
    tree = _stub_tree()
    for name, fn in _stub_functions(tree.body).items():
        if name.startswith("_"):
            continue
        yield name, getattr(_core, name, None), fn
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")):
        runtime_cls = getattr(_core, cls.name, None)
        methods = _stub_functions(cls.body)
        for name, fn in methods.items():
            if name == "__init__" or not name.startswith("_"):
                yield f"{cls.name}.{name}", getattr(runtime_cls, name, None), fn


def test_stub_classes_declare_every_public_method():
    for cls in (n for n in _stub_tree().body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")):
        runtime = {m for m in vars(getattr(_core, cls.name)) if not m.startswith("_")}
        stub = {m for m in _stub_functions(cls.body) if not m.startswith("_")}
        # read-only fields (pybind11 def_readonly / properties) are declared as annotations
        stub |= {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                 and not n.target.id.startswith("_")}
        assert runtime == stub, f"{cls.name}: _core has methods {sorted(runtime)}, _core.pyi {sorted(stub)}"


CALLABLES = list(_callables())


@pytest.mark.parametrize("name, obj, fn", CALLABLES, ids=[c[0] for c in CALLABLES])
def test_stub_signature_matches_binding(name, obj, fn):
    assert obj is not None, f"{name}: declared in _core.pyi, missing from _core"
    expected = _runtime_params(obj, fn.name)
    assert _params(fn) == expected, f"{name}: _core.pyi parameters {_params(fn)}, binding {expected}"
