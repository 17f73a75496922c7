"""Griffe extension for the API reference: cnnkit's docstrings are NumPy style with Sphinx roles
(:func:`conv2d`, :class:`cnnkit.nn.Module`, :mod:`...`, :meth:`...`, :data:`...`), which Markdown
would print as they stand. Each role becomes a cross-reference, resolved the way Sphinx resolves
it (the object itself, then its enclosing class and modules, then the package), when the target
is rendered in the reference: public all the way down (listed in each module's ``__all__``, or
re-exported by a module that lists it). A target without a page (a helper outside ``__all__``,
``numpy.savez``) becomes inline code. A reST literal-block marker (a paragraph ending in ``::``)
becomes a plain colon.

In Parameters sections, an entry naming several parameters (``stride, padding : int``) becomes
one entry per name with the same type and description: griffe would give all of them the first
name's default and annotation. A "type" that is prose (``x : as in :func:`conv2d```) moves into
the description, where its cross-reference renders.

It also keeps each name on one page section: below the top-level package, a package's re-export
of a name that one of its public submodules exports too (``cnnkit.optim.StepLR`` from
``cnnkit.optim.lr_scheduler``) is left to that submodule's section, and ``__all__`` itself is
not rendered, nor is an undocumented special method.

The note that ``cnnkit._validate.accepts_dlpack`` adds at run time to the docstring of every
callable that takes arrays (they also take CPU objects with ``__dlpack__``) is added here too,
read from the sources: functions and classes decorated with ``accepts_dlpack``, and the methods
that the base classes wrap in every subclass (``_DLPACK_BASES``), when they take arrays.

Loaded by mkdocs.yml (plugins: mkdocstrings: handlers: python: options: extensions).
"""
from __future__ import annotations

import ast
import re

import griffe

_logger = griffe.get_logger("griffe_cnnkit")

_ROLE = re.compile(r":(?:py:)?(func|class|meth|mod|data|attr|obj|exc):`(~?)\.?([\w.]+?)(\(\))?`")
_LITERAL = re.compile(r"(?<=\S)::(?=\n\s*\n)")
_LITERAL_ALONE = re.compile(r"(?m)^(\s*)::\n(?=\s*\n)")
_SECTION_RULE = re.compile(r"-{3,}\s*")
_PARAM_ENTRY = re.compile(r"(?P<names>\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)(?:\s*:\s*(?P<type>.*?))?\s*")
_PROSE_TYPE = re.compile(r"(?i)(as in|as given|like|see|from)\b|.*:\w+:`")
# base class -> the methods whose array arguments every subclass's override accepts as __dlpack__
# objects (each base calls cnnkit._validate.dlpack_methods from __init_subclass__)
_DLPACK_BASES = {
    "cnnkit.nn.module.Module": ("__call__", "forward", "backward"),
    "cnnkit.augment.transforms.Transform": ("__init__", "__call__", "sample", "apply", "backward"),
    "cnnkit.optim.optimizer.Optimizer": ("__init__", "step"),
}


def _split_parameters(text: str) -> str:
    """One entry per parameter name in Parameters sections, and prose "types" moved into the
    description (see the module docstring)."""
    lines = text.split("\n")
    out: list = []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if (i + 1 < len(lines) and line.strip() and not line[0].isspace()
                and _SECTION_RULE.fullmatch(lines[i + 1])):
            section = line.strip()
            out += [line, lines[i + 1]]
            i += 2
            continue
        m = _PARAM_ENTRY.fullmatch(line) if section in ("Parameters", "Other Parameters") else None
        if m is None:
            out.append(line)
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j][:1] in (" ", "\t"):
            j += 1
        desc = lines[i + 1:j]
        kind = m.group("type")
        if kind and _PROSE_TYPE.match(kind):
            indent = desc[0][: len(desc[0]) - len(desc[0].lstrip())] if desc else "    "
            desc = [indent + kind[0].upper() + kind[1:] + ("" if kind.endswith(".") else ".")] + desc
            kind = None
        for name in re.split(r"\s*,\s*", m.group("names")):
            out.append(name + (f" : {kind}" if kind else ""))
            out += desc
        i = j
    return "\n".join(out)


def _public(obj) -> bool:
    """Whether ``obj`` is rendered: each step down from the package is listed in its module's
    ``__all__`` (or, in a module without one, and in classes, has no leading underscore)."""
    while obj.parent is not None:
        if obj.public is False:
            return False
        parent = obj.parent
        exports = parent.exports if parent.is_module else None
        if exports is not None:
            if obj.name not in exports:
                return False
        elif obj.name.startswith("_") and not obj.name.startswith("__"):
            return False
        obj = parent
    return True


def _has_page(obj) -> bool:
    """``obj`` is rendered itself, or through a public alias (a re-export), whose anchor
    mkdocstrings also registers under ``obj``'s own path."""
    if _public(obj):
        return True
    try:
        return any(_public(alias) for alias in obj.aliases.values())
    except AttributeError:
        return False


def _lookup(scope, dotted: str):
    """``dotted`` looked up as an attribute path from ``scope``, or None."""
    obj = scope
    for part in dotted.split("."):
        try:
            obj = obj.members[part]
        except (KeyError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return obj


def _resolve(owner, name: str, package):
    if name == package.name or name.startswith(package.name + "."):
        return _lookup(package, name[len(package.name) + 1:]) if "." in name else package
    scope = owner
    while scope is not None:
        found = _lookup(scope, name)
        if found is not None:
            return found
        scope = scope.parent
    return None


class CnnkitReference(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.name != "cnnkit":
            return
        self._hide_duplicates(pkg)
        seen = set()

        def visit(obj):
            if obj.is_alias or id(obj) in seen:
                return
            seen.add(id(obj))
            self._dlpack_note(obj, pkg)
            if obj.docstring is not None:
                obj.docstring.value = self._rewrite(obj, obj.docstring.value, pkg)
            for member in list(obj.members.values()):
                visit(member)

        visit(pkg)

    @staticmethod
    def _dlpack_note(obj, package) -> None:
        """Put cnnkit._validate.DLPACK_NOTE where ``accepts_dlpack`` puts it at run time."""
        def array_params(func):
            names = []
            for p in func.parameters:
                text = str(p.annotation or "")
                alias = func.module.members.get(text) if text.isidentifier() else None
                if alias is not None and not alias.is_alias and alias.is_attribute:  # Labels = ...
                    text += f" {alias.value}"
                if "ndarray" in text or "Arrays" in text:
                    names.append(p.name)
            return names

        def decorated(o):
            return any(str(d.value).startswith("accepts_dlpack") for d in getattr(o, "decorators", ()))

        if obj.is_function and obj.parent is not None and obj.parent.is_class:
            cls, name = obj.parent, obj.name
            try:
                bases = {c.path for c in cls.mro()} | {cls.path}
            except Exception:  # a base griffe cannot resolve
                bases = {cls.path}
            wrapped = decorated(obj) or any(name in _DLPACK_BASES.get(b, ()) for b in bases)
            target = cls if name == "__init__" else obj
        else:
            wrapped = decorated(obj) and obj.is_function
            target = obj
        if obj.is_class and decorated(obj) and "__init__" in obj.members:
            obj, target, wrapped = obj.members["__init__"], obj, True
        names = array_params(obj) if wrapped and obj.is_function else []
        if not names or target.docstring is None or "__dlpack__" in target.docstring.value:
            return
        note = ast.literal_eval(str(package["_validate"].members["DLPACK_NOTE"].value))
        para = note.format(names=", ".join(f"``{n}``" for n in names))
        lines = target.docstring.value.split("\n")
        at = next((i for i in range(1, len(lines) - 1) if lines[i].strip() and not lines[i][0].isspace()
                   and _SECTION_RULE.fullmatch(lines[i + 1])), len(lines))
        while at > 1 and not lines[at - 1].strip():
            at -= 1
        gap = [] if at < len(lines) and not lines[at].strip() else [""]
        target.docstring.value = "\n".join(lines[:at] + ["", para] + gap + lines[at:]).strip("\n")

    @staticmethod
    def _hide_duplicates(package) -> None:
        def final(obj):
            try:
                return obj.final_target if obj.is_alias else obj
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                return None

        def visit(module):
            if "__all__" in module.members:
                module.members["__all__"].public = False
                if not module.exports:
                    # e.g. `[...] + list(other)`: griffe reads literals and concatenations only
                    _logger.warning(f"{module.path}.__all__ cannot be read statically, so its names "
                                    "would be missing from the reference")
            exports = module.exports or []
            # a name both a submodule and an object in it (`from .plot import plot`) is the object
            submodules = [m for name, m in module.members.items()
                          if name in exports and not m.is_alias and m.is_module and name not in m.members]
            if module is not package:
                for name in exports:
                    member = module.members.get(name)
                    if member is None or not member.is_alias:
                        continue
                    target = final(member)
                    for sub in submodules:
                        if name in (sub.exports or []) and name in sub.members and final(sub.members[name]) is target:
                            member.public = False
            for member in module.members.values():
                if not member.is_alias and member.is_module:
                    visit(member)
                elif not member.is_alias and member.is_class:
                    hide_dunders(member)

        def hide_dunders(cls):
            """Undocumented special methods (``__repr__``, ``__call__``) are noise in a reference."""
            for member in list(cls.members.values()):
                if member.is_alias:
                    continue
                if (member.name.startswith("__") and member.name.endswith("__") and not member.docstring
                        and member.name not in ("__init__", "__new__")):  # the class's signature
                    # dropped, not marked private: a re-exported class shows its members
                    # through fresh aliases, which would not see the mark
                    cls.del_member(member.name)
                elif member.is_class:
                    hide_dunders(member)

        visit(package)

    @staticmethod
    def _rewrite(owner, text: str, package) -> str:
        def replace(m):
            role, tilde, name, call = m.groups()
            shown = (name.rsplit(".", 1)[-1] if tilde else name) + (call or "")
            target = _resolve(owner, name, package)
            if target is not None and role != "mod" and target.is_module:
                # `from .plot import plot`: griffe keeps the submodule under the name
                target = target.members.get(name.rsplit(".", 1)[-1])
            if target is not None and target.is_alias and not _public(target):
                try:
                    target = target.final_target
                except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                    target = None
            if target is None or not (target.is_alias or _has_page(target)):
                return f"`{shown}`"
            return f"[`{shown}`][{target.path}]"

        text = _ROLE.sub(replace, _split_parameters(text))
        text = _LITERAL.sub(":", text)
        return _LITERAL_ALONE.sub("", text)
