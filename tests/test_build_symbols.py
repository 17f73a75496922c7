"""The per-ISA copies of the kernels share no code with each other or with the baseline objects.

Kernels are compiled three times (scalar, AVX2, AVX-512: CNNKIT_ISA_SOURCES in CMakeLists.txt).
An inline function or template instantiation emitted by such an object as a weak symbol outside
the level's own namespace (std::vector<float>::_M_default_append, say) is merged by the linker
with every other copy of that symbol: the first object on the link line wins for the whole
library, so an AVX-512 copy could replace the baseline one depending on the order CMake lists
the objects. test_each_isa_table_reaches_its_own_kernel_copy (test_bench.py) checks this for the
optimizer's header kernels at run time; here every weak symbol of every ISA object of the build
must carry its level's namespace (cnnkit::...::<isa>::), whatever the order.
"""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LEVELS = ("scalar", "avx2", "avx512")
# Weak data with the same bytes in every object (the C++ personality routine's address).
NEUTRAL = re.compile(r"^DW\.ref\.__gxx_personality_v0$")


def _objects():
    found = {}
    for isa in LEVELS:
        objs = sorted(ROOT.glob(f"build/*/CMakeFiles/cnnkit_isa_{isa}.dir/**/*.o"))
        if objs:
            found[isa] = objs
    return found


OBJECTS = _objects()


def _weak_symbols(obj: pathlib.Path):
    out = subprocess.run(["nm", "-C", "--defined-only", str(obj)], check=True, capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] in ("W", "V", "u"):
            yield parts[2]


@pytest.mark.skipif(shutil.which("nm") is None or len(OBJECTS) != len(LEVELS),
                    reason="needs nm and the CMake build directory (build/) of this checkout")
@pytest.mark.parametrize("isa", LEVELS)
def test_isa_objects_define_no_shared_weak_symbols(isa):
    mine = re.compile(rf"cnnkit::(\w+::)*{isa}::")
    shared = {}
    for obj in OBJECTS[isa]:
        for sym in _weak_symbols(obj):
            if not NEUTRAL.match(sym) and not mine.search(sym):
                shared.setdefault(sym, obj.name)
    assert not shared, (f"{len(shared)} weak symbols of the {isa} objects are shared with other "
                        f"levels (the linker keeps one copy for all): "
                        + "; ".join(f"{s} ({o})" for s, o in list(shared.items())[:10]))


def _git(*args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def test_build_info_names_the_checkouts_commit():
    # The commit comes from a header generated at every build (cpp/build_commit.cmake), not at
    # configure time: an incremental build after a commit reported the configure run's commit.
    import cnnkit

    commit = cnnkit.build_info()["git_commit"]
    head = _git("rev-parse", "HEAD")
    if head is None or commit == "unknown":
        pytest.skip("needs a git checkout that cnnkit was built from")
    sha, _, flag = commit.partition("+")
    assert flag in ("", "dirty"), commit
    assert len(sha) >= 7 and head.startswith(sha), (
        f"cnnkit's build reports commit {commit}, the checkout is at {head[:12]}: rebuild (the build is stale)")
