"""The STREAM-like kernels behind cnnkit.bench.memory_bandwidth, the row stream of the GEMM bench, and the
command line."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnkit
from cnnkit import _core, cli

Q = np.float32(0.5)  # the scalar every STREAM kernel uses


def _expected(kind, a, b, c, d):
    a, b, c, d = (x.astype(np.float64) for x in (a, b, c, d))
    q = float(Q)
    if kind in ("copy", "copy_nt"):
        return [b, b, c, d]
    if kind in ("triad", "triad_nt"):
        return [b + q * c, b, c, d]
    if kind == "read":
        return [a, b, c, d]
    if kind == "rw5":
        c2 = q * c + b
        return [a - q * c2, b, c2, d]
    if kind in ("rw7", "rw7_nt"):
        c2, d2 = q * c + b, q * d + b
        return [a - q * c2 * d2, b, c2, d2]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["copy", "copy_nt", "triad", "triad_nt", "read", "rw5", "rw7",
                                  "rw7_nt"])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 40001])
@pytest.mark.parametrize("offset", [0, 3])
def test_stream_kernels_compute_what_they_claim(kind, n, offset, isa, threads, rng):
    # offset: arrays that do not start on a 64-byte line, to exercise the peeled head
    arrays = [rng.standard_normal(n + offset).astype(np.float32)[offset:] for _ in range(4)]
    before = [x.copy() for x in arrays]
    secs, nbytes = _core.stream_run(kind, arrays, 1)
    assert len(secs) == 1 and secs[0] >= 0
    assert nbytes == {"copy": 8, "copy_nt": 8, "triad": 12, "triad_nt": 12, "read": 4, "rw5": 20,
                      "rw7": 28, "rw7_nt": 28}[kind] * n
    for k, (got, want) in enumerate(zip(arrays, _expected(kind, *before))):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=f"{kind} array {k}")


def test_stream_run_rejects_bad_input(rng):
    a = rng.standard_normal(10).astype(np.float32)
    with pytest.raises(ValueError, match="kind"):
        _core.stream_run("nope", [a, a], 1)
    with pytest.raises(ValueError, match="arrays"):
        _core.stream_run("triad", [a, a], 1)
    with pytest.raises(TypeError, match=r"arrays\[1\]"):
        _core.stream_run("copy", [a, a.astype(np.float64)], 1)
    with pytest.raises(ValueError, match="reps"):
        _core.stream_run("copy", [a, a.copy()], 0)


def _check_stream_rows(m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    a0 = a.copy()
    secs, nbytes = _core.stream_rows(a, c, 2)
    assert len(secs) == 2 and min(secs) >= 0
    assert nbytes == 4 * (m * k + m * n)
    np.testing.assert_array_equal(a, a0)
    want = np.repeat(a0.astype(np.float64).sum(axis=1, keepdims=True), n, axis=1)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))


@pytest.mark.parametrize("m", [1, 2, 7, 33])
@pytest.mark.parametrize("k", [1, 15, 16, 17, 144])
@pytest.mark.parametrize("n", [1, 8, 24, 33])
def test_stream_rows_writes_each_rows_sum(m, k, n, isa, threads):
    _check_stream_rows(m, k, n, seed=m * 10007 + k * 101 + n)


def test_stream_rows_on_drawn_shapes(isa, threads):
    # any shape, around and past the vector widths (8 and 16 floats)
    @settings(max_examples=25, deadline=None)
    @given(m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
    def run(m, k, n, seed):
        _check_stream_rows(m, k, n, seed)

    run()


def test_stream_rows_rejects_bad_input(rng):
    a = rng.standard_normal((4, 6)).astype(np.float32)
    c = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="a: expected a 2-D array"):
        _core.stream_rows(a.ravel(), c, 1)
    with pytest.raises(ValueError, match="c: expected 4 rows"):
        _core.stream_rows(a, np.zeros((3, 3), np.float32), 1)
    with pytest.raises(TypeError, match="c: expected dtype float32"):
        _core.stream_rows(a, c.astype(np.float64), 1)
    with pytest.raises(ValueError, match="c: expected a writeable"):
        ro = c.copy()
        ro.flags.writeable = False
        _core.stream_rows(a, ro, 1)
    with pytest.raises(ValueError, match="c: must not overlap"):
        _core.stream_rows(a, a, 1)
    with pytest.raises(ValueError, match="reps"):
        _core.stream_rows(a, c, 0)
    np.testing.assert_array_equal(c, 0)  # nothing written by a refused call


def test_memory_bandwidth_reports_every_kind(rng):
    arrays = [rng.standard_normal(1 << 16).astype(np.float32) for _ in range(4)]
    bw = cnnkit.bench.memory_bandwidth(("copy", "triad", "rw5", "rw7"), reps=2, arrays=arrays)
    assert set(bw) == {"copy", "triad", "rw5", "rw7"}
    assert all(np.isfinite(v) and v > 0 for v in bw.values())
    with pytest.raises(ValueError, match="kinds"):
        cnnkit.bench.memory_bandwidth(("fast",), arrays=arrays)


def test_cli_info_prints_build_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == cnnkit.__version__
    assert info["isa"] in info["isa_compiled"]


def test_cli_rejects_unknown_family(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "nope"])
    assert e.value.code == 2


def _help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0, argv
    return capsys.readouterr().out


def test_cli_help_is_plain_text(capsys):
    """argparse prints descriptions as they are: no reST markup (double backticks, :func: roles)."""
    for argv in (["--help"], ["bench", "--help"], ["demo", "--help"], ["bench", "augment", "--help"]):
        text = _help(capsys, argv)
        assert "``" not in text and ":func:" not in text, (argv, text)
    assert "The cnnkit command: cnnkit demo, cnnkit explain" in _help(capsys, ["--help"])


@pytest.mark.parametrize("family", sorted(cli.FAMILIES))
def test_cli_bench_family_help_lists_the_benchmarks_own_flags(family, capsys):
    text = _help(capsys, ["bench", family, "--help"])
    assert text.startswith(f"usage: cnnkit bench {family} ")
    assert "--threads" in text       # one of its own flags, not only cnnkit bench's
    assert _help(capsys, ["bench", family, "-h"]) == text


def test_cli_bench_help_points_to_the_family_help(capsys):
    text = " ".join(_help(capsys, ["bench", "--help"]).split())
    assert "cnnkit bench FAMILY --help" in text
    for family in cli.FAMILIES:
        assert family in text
    assert "cnnkit bench FAMILY --help" in " ".join(_help(capsys, ["--help"]).split())


def test_each_isa_table_reaches_its_own_kernel_copy():
    # Header kernels (templates) are compiled once per ISA level; if their symbols were shared the
    # linker would keep a single copy and every level would silently run it.
    assert _core.kernel_builds() == ("scalar", "avx2", "avx512")


def _torch_importable():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("extra", [[], ["--no-torch", "--family", "depthwise,dense", "--layout",
                                        "NHWC", "--pass", "bwd", "--numpy", "fwd"]],
                         ids=["default", "no-torch-bwd-only"])
def test_cli_bench_conv_quick_smoke(extra, capsys, tmp_path):
    # A tiny run of every code path of the conv benchmark: the reference check, interleaved rounds
    # of cnnkit (reuse and fresh), torch and the NumPy baseline, summaries, targets, JSON.
    from cnnkit.bench import conv
    path = tmp_path / "conv.json"
    argv = ["bench", "conv", "--quick", "--batch", "1", "--repeats", "1", "--warmup", "0",
            "--stream-mib", "4", "--gemm-size", "128", "--probe-reps", "1", "--inner", "2",
            "--json", str(path)]
    assert cli.main(argv + extra) == 0
    text = capsys.readouterr().out
    assert "reference check: every timed cnnkit call" in text
    doc = json.loads(path.read_text())
    with_torch = "--no-torch" not in extra and _torch_importable()
    layouts = ["NHWC"] if extra else ["NCHW", "NHWC"]
    rows = {"fwd+bwd"} if not extra else {"bwd"}
    names = [n for n in conv.QUICK_SHAPES
             if not extra or not n.startswith("resnext")]
    assert [r["name"] for r in doc["results"]] == names
    assert all(set(r["inner"].values()) == {2} for r in doc["results"])
    for name in names:
        assert name in text
    for r in doc["summary"]:
        assert r["layout"] in layouts
        for var in conv.VARIANTS:
            v = r[var]
            assert np.isfinite(v["ms"]) and v["ms"] > 0 and v["frac_roof"] > 0
            assert ("vs_torch" in v) == with_torch
        assert ("vs_numpy" in r["reuse"]) == (r["row"] == "fwd" or not extra)
        rows.discard(r["row"])
    assert not rows  # every expected row is present
    if with_torch:
        assert doc["targets"] and all(t["met"] in (True, False) for t in doc["targets"])
    else:
        assert all(t["met"] is None for t in doc["targets"])
        assert "torch not used" in text


def test_cli_bench_gemm_quick_judges_the_share_of_the_same_rounds_peak(capsys):
    # The GEMM benchmark at one thread: each 1x1 shape's rate as a share of the peak probed in the
    # same round, with its spread, judged against 85%; the same against the round's roof (the
    # lower of that peak and the memory twin's rate), which can only be the larger share; the
    # square shape is shown, not judged.
    from cnnkit.bench import gemm
    assert cli.main(["bench", "gemm", "--quick", "--threads", "1", "--repeats", "3", "--warmup", "1",
                     "--no-torch"]) == 0
    text = capsys.readouterr().out
    rows = re.findall(r"^(.+?)\s+\d+x\d+x\d+\s+1\s+[\d.]+\s+(\d+)% ±\d+%\s+(\d+)\s+(\d+)% ±\d+%", text, re.M)
    assert [r[0].strip() for r in rows] == [n for n, *_ in gemm.SHAPES[:4]]
    for _, peak, mem, roof in rows:
        assert int(peak) > 0 and int(mem) > 0 and int(roof) >= int(peak)
    for kind in ("peak", "roof"):
        verdicts = re.findall(rf"^% {kind} (.+?) \d+% ±\d+% >= 85%: (met|MISSED|noisy, not judged)$", text, re.M)
        assert [n for n, _ in verdicts] == [n for n, *_ in gemm.SHAPES[:4]]
    assert re.search(r"^Targets met: \d+ of \d+ judged", text, re.M)


def test_cli_bench_train_quick_smoke(capsys, tmp_path):
    # The training-step benchmark end to end at a tiny size, without torch (CI has none): the
    # cnnkit configurations, the per-layer breakdown and the JSON.
    path = tmp_path / "train.json"
    argv = ["bench", "train", "--quick", "--no-torch", "--stream-mib", "4", "--gemm-size", "128",
            "--probe-reps", "1", "--json", str(path)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "resnext_small" in text and "mobilenet_small" in text
    assert "cnnkit NHWC" in text and "cnnkit NCHW" in text
    doc = json.loads(path.read_text())
    assert doc["breakdowns"] == ["fused", "modules"]
    # both breakdowns, the fused one (the step as it runs) first
    fused_at = text.index("Where the time goes in the step as it runs (fusion on), resnext_small")
    assert fused_at < text.index("Where the time goes, resnext_small")
    assert "Fusion while profiling: cnnkit.nn.fusion on" in text and "Roofline (" in text
    # the page faults each step took in the timed rounds (cnnkit's steps reuse their buffers)
    assert "Minor page faults per step (median over the timed rounds): cnnkit NCHW" in text
    for res in doc["results"]:
        assert set(res["minor_faults"]) == {"cnnkit NCHW", "cnnkit NHWC"}
        assert all(len(v) == doc["reps"] and min(v) >= 0 for v in res["minor_faults"].values())
        assert set(res["fused_profile"]) == {"cnnkit NCHW", "cnnkit NHWC"}
        assert res["breakdown"] and res["profile"]
        for fs in res["fused_breakdown"].values():
            assert fs["fused_calls"] == fs["conv_layers"] > 0      # every conv ran fused
            assert fs["layers"] and fs["kinds"] and fs["floor_ms"] > 0
            assert 0 < fs["coverage"] <= 1 + 1e-9


def test_cli_bench_train_breakdown_flag_selects_the_tables(capsys, tmp_path):
    path = tmp_path / "train.json"
    argv = ["bench", "train", "--quick", "--no-torch", "--models", "mobilenet", "--no-check",
            "--batch", "2", "--stream-mib", "4", "--gemm-size", "64", "--probe-reps", "1",
            "--breakdown", "fused", "--json", str(path)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "Where the time goes in the step as it runs" in text
    assert "Where the time goes, mobilenet_small" not in text
    res = json.loads(path.read_text())["results"][0]
    assert "fused_breakdown" in res and "breakdown" not in res
    assert cli.main(argv[:-2] + ["--breakdown", "kernels"]) == 2
    assert "--breakdown: unknown entry 'kernels'" in capsys.readouterr().err


def test_bench_train_build_configs_refuses_bad_arguments():
    from cnnkit.bench import train
    with pytest.raises(ValueError, match="model"):
        train.build_configs(None, "vgg", 4)
    with pytest.raises(ValueError, match="batch"):
        train.build_configs(None, "resnext", 0)
    with pytest.raises(TypeError, match="batch"):
        train.build_configs(None, "resnext", 4.0)


def _train_setup(model, batch):
    from cnnkit.bench import train
    cfg = train.build_configs(None, model, batch)
    m = cfg["cnnkit"]["NCHW"]
    desc = train.describe(m, train.layer_shapes(m, cfg["steps"]["cnnkit NCHW"].x), "NCHW")
    return train, cfg, desc


@pytest.mark.parametrize("model", ["resnext", "mobilenet"])
def test_bench_train_fused_profile_sees_every_layer_of_the_fused_step(model):
    # The kernel-level profile leaves fusion on (every Conv2d runs through conv2d_fused, as in
    # the plain step), attributes compiled time to every convolution in both passes, and its
    # parts fit in the step: timed parts + untimed Python + timers = the profiled step.
    from cnnkit import nn
    train, cfg, desc = _train_setup(model, 4)
    layout = "NHWC" if model == "resnext" else "NCHW"
    step = cfg["steps"][f"cnnkit {layout}"]
    prof = train.profile_fused({"c": step}, 1, desc)["c"]
    fs = train.fused_summary(prof, 100.0, 10.0)
    convs = [n for n, m in step.model.named_modules() if isinstance(m, nn.Conv2d)]
    assert prof["fusion_enabled"] and fs["conv_layers"] == len(convs) > 0
    assert fs["fused_calls"] == len(convs)
    assert fs["fused_compiled"] + fs["fused_reference"] == len(convs)
    if hasattr(_core, "conv2d_fused"):
        assert prof["calls"]["_core.conv2d_fused"] >= fs["fused_compiled"] > 0
    kernel_layers = {(r["layer"], r["pass"]) for r in prof["records"] if r["role"] == "kernel"}
    for n in convs:
        assert (n, "fwd") in kernel_layers and (n, "bwd") in kernel_layers, n
    assert any(r["kind"].startswith("conv fwd, fused") for r in prof["records"])
    assert any(r["layer"] == "[loss]" and r["kind"] == "loss kernel" for r in prof["records"])
    conv_flops = sum(r["flops"] for r in prof["records"] if r["kind"].startswith("conv"))
    f_fwd, f_bwd = train.step_flops(desc)
    linear = sum(d[1] + d[2] for d in desc.values() if d[3] == "linear")
    assert conv_flops == pytest.approx(f_fwd + f_bwd - linear, rel=1e-9)
    step_ms = prof["step_ms"]
    parts = (fs["timed_ms"] + fs["untimed_ms"]["forward"] + fs["untimed_ms"]["backward"]
             + fs["instrumentation_ms"])
    assert parts == pytest.approx(step_ms, rel=1e-9)
    assert min(fs["untimed_ms"].values()) >= -0.05 and 0 < fs["timed_ms"] <= step_ms
    assert prof["plain_step_ms"] > 0
    # the same profile with fusion off sees no fused call: the check can fail
    with nn.fusion(False):
        off = train.fused_summary(train.profile_fused({"c": step}, 1, desc)["c"], 100.0, 10.0)
    assert off["fused_calls"] == 0 and off["conv_layers"] == len(convs)


def test_bench_train_kernel_profiler_restores_every_function_even_if_the_step_raises(monkeypatch):
    # A compiled function that did not exist when the benchmark was written is timed too, and
    # every replaced function is the original object again after a step that raised.
    import cnnkit.ops.fused as fused_mod
    from cnnkit.bench import train as tr
    calls = []

    def conv_brand_new_kernel(x):
        calls.append(x.shape)
        return x

    monkeypatch.setattr(_core, "conv_brand_new_kernel", conv_brand_new_kernel, raising=False)
    _, cfg, desc = _train_setup("resnext", 2)
    step = cfg["steps"]["cnnkit NCHW"]
    originals = {n: getattr(_core, n) for n in dir(_core) if not n.startswith("_")}
    prof = tr.KernelProfiler(step.model, desc)
    replaced = prof.originals()
    assert {a for m, a, _ in replaced if m is _core} >= {"conv2d_fused", "norm_apply",
                                                         "conv_brand_new_kernel"}
    assert any(m is fused_mod and a == "np" for m, a, _ in replaced)

    class Raising:
        def phases(self, clock):
            assert _core.norm_apply is not originals["norm_apply"] and prof.installed()
            step.model.forward(step.x)
            clock("forward")
            _core.conv_brand_new_kernel(np.ones((2, 3), np.float32))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        prof.run(Raising())
    assert calls == [(2, 3)]
    assert not prof.installed()
    assert all(getattr(_core, n) is v for n, v in originals.items())
    assert all(getattr(m, a) is v for m, a, v in replaced)
    assert fused_mod.np is np and not prof.active
    # a step after the failed one runs normally, and timed again
    rec = prof.run(step)
    assert rec["calls"]["_core.norm_train_finish"] > 0 and all(
        getattr(_core, n) is v for n, v in originals.items())


def test_cli_bench_augment_quick_smoke(capsys, tmp_path):
    # Every section of the image-op benchmark at a tiny size, without the torch-based peers.
    path = tmp_path / "augment.json"
    assert cli.main(["bench", "augment", "--quick", "--no-torch", "--json", str(path)]) == 0
    text = capsys.readouterr().out
    for what in ("normalize", "equalize", "CLAHE", "pipeline", "rotate nearest"):
        assert what in text, what
    assert json.loads(path.read_text())


def test_cli_bench_explain_quick_smoke(capsys, tmp_path):
    # The attribution benchmark end to end at a tiny size, without torch (CI has none): every
    # cnnkit.explain method timed on both batches, the memory pass and the JSON.
    from cnnkit.bench import explain
    path = tmp_path / "explain.json"
    argv = ["bench", "explain", "--quick", "--no-torch", "--stream-mib", "4", "--gemm-size", "128",
            "--probe-reps", "1", "--json", str(path)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "torch not used" in text
    for method in explain.METHODS:
        assert method in text, method
    doc = json.loads(path.read_text())
    assert [(r["method"], r["side"]) for r in doc["results"]] == [
        (m, side) for m in explain.METHODS for _, side in explain.QUICK_SHAPES]
    for s in doc["summary"]:
        assert s["met"] is None and np.isfinite(s["rows"]["cnnkit"]["ms_per_image"])


def test_cli_bench_explain_features_quick_checks_against_torch(capsys, tmp_path):
    # --methods features alone: cnnkit's feature-visualization step agrees with the same step in
    # torch autograd (gradient with respect to the spectrum, objective) before it is timed
    # against the truncated twin and the full twin with a forward hook.
    pytest.importorskip("torch")
    from cnnkit.bench import explain
    path = tmp_path / "features.json"
    argv = ["bench", "explain", "--quick", "--methods", "features", "--threads", "1",
            "--stream-mib", "4", "--gemm-size", "128", "--probe-reps", "1", "--no-memory",
            "--json", str(path)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "check (feature visualization)" in text and "all agree" in text
    assert "torch-lucent:" in text
    assert "cnnkit.explain vs peers, per image" not in text      # no attribution method ran
    doc = json.loads(path.read_text())
    assert doc["results"] == []
    fv = doc["features"]
    assert [c["layer"] for c in fv["cases"]] == list(explain.QUICK_FV_LAYERS)
    for c in fv["cases"]:
        assert set(c["check"]) == set(explain.FV_PEERS)
        for grad_err, value_err in c["check"].values():
            assert 0 <= grad_err <= explain.TOL and 0 <= value_err <= explain.TOL
        assert set(c["seconds"]) == {"cnnkit", *explain.FV_PEERS}
    for s in fv["summary"]:
        assert s["rows"]["cnnkit"]["steps_per_s"] > 0 and s["speedup"] > 0


def test_bench_explain_features_check_detects_a_wrong_gradient():
    # The one-step check can fail: a torch loop on a different channel disagrees with cnnkit's.
    torch = pytest.importorskip("torch")
    from cnnkit.bench import explain
    from cnnkit.bench._fv_torch import TorchFeatureLoop, frozen_copy
    model, twin = explain.build_models(torch, layout="NHWC", torch_layout="channels_last")
    k0, k1 = explain.fv_channels(model, "3", 2)
    spec, tp = explain.fv_check_state(model, "3", k0, 1)
    v, g = explain.fv_cnnkit_value_and_grad(model, "3", k0, spec, tp)
    tf = explain._fv_transforms()
    net = frozen_copy(torch, twin)
    same = TorchFeatureLoop(torch, net, "3", k0, (64, 64), 4, tf, channels_last=True)
    other = TorchFeatureLoop(torch, net, "3", k1, (64, 64), 4, tf, channels_last=True)
    vt, gt = same.value_and_grad(spec, tp)
    assert explain._compare("features", g, gt)[0] <= explain.TOL
    assert abs(v - vt) <= explain.TOL * abs(vt)
    assert explain._compare("features", g, other.value_and_grad(spec, tp)[1])[0] > 0.1


# ---- judging a figure against its target (cnnkit.bench._common) -----------------------------------
@pytest.mark.parametrize("value, threshold, spread, upper, verdict", [
    (3.5, 3.0, None, False, "met"),              # no spread known: judged as before
    (2.5, 3.0, None, False, "MISSED"),
    (3.5, 3.0, 0.10, False, "met"),              # spread 0.35 < margin 0.5
    (2.5, 3.0, 0.10, False, "MISSED"),           # spread 0.25 < margin 0.5
    (2.5, 3.0, 0.25, False, "noisy, not judged"),  # spread 0.625 > margin 0.5
    (3.5, 3.0, 0.20, False, "noisy, not judged"),  # a noisy "met" is not claimed either
    (3.0, 3.0, 0.0, False, "met"),               # on the threshold, no spread: >= holds
    (3.0, 3.0, 0.01, False, "noisy, not judged"),
    (1.2, 1.5, 0.10, True, "met"),               # upper bound
    (1.8, 1.5, 0.10, True, "MISSED"),
    (1.8, 1.5, 0.20, True, "noisy, not judged"),  # spread 0.36 > margin 0.3
    (None, 3.0, 0.10, False, "not measured"),
])
def test_judge_is_noisy_when_the_spread_exceeds_the_margin(value, threshold, spread, upper, verdict):
    from cnnkit.bench._common import judge
    assert judge(value, threshold, spread, upper=upper) == verdict


def test_spread_is_the_interquartile_range_over_the_median(rng):
    from cnnkit.bench._common import spread
    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4.0 - 2.0) / 3.0)
    x = rng.uniform(1, 2, 101)
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    assert spread(list(x)) == pytest.approx((q75 - q25) / q50)
    assert spread([2.0, 2.0, 2.0]) == 0.0
    assert spread([1.0]) is None and spread([]) is None and spread([0.0, 0.0]) is None
    assert spread([1.0, None, 3.0]) == pytest.approx(1.0 / 2.0)


def test_target_text_and_summary_say_noisy_not_judged():
    from cnnkit.bench._common import target, target_summary, target_text
    noisy = target("x torch fastest", 2.5, 3.0, [1.0, 2.0, 2.5, 4.0, 9.0])
    missed = target("x torch fastest", 2.5, 3.0, [2.4, 2.45, 2.5, 2.55, 2.6])
    met = target("per-param cost / large", 1.2, 1.5, [1.1, 1.15, 1.2, 1.25, 1.3])
    unmeasured = target("x torch fused", None, 1.1, None)
    assert noisy[3] is None and missed[3] is False and met[3] is True and unmeasured[3] is None
    assert noisy[4] == pytest.approx((4.0 - 2.0) / 2.5)
    assert target_text([noisy]) == "x torch fastest 2.50 ±80% >= 3: noisy, not judged"
    assert target_text([missed]) == "x torch fastest 2.50 ±4% >= 3: MISSED"
    assert target_text([met]) == "per-param cost / large 1.20 ±8% <= 1.5: met"
    assert target_text([unmeasured]) == "x torch fused: not measured"
    # the 4-tuples of the benchmarks that judge without a spread read as before
    assert target_text([("speedup", 0.8, 1.0, False)]) == "speedup 0.80 >= 1: MISSED"
    assert target_text([("% roof", 0.95, 0.9, True)]) == "% roof 95% >= 90%: met"
    assert target_text([("speedup", None, 1.0, None)]) == "speedup: not measured"
    assert target_summary([noisy, missed, met, unmeasured]) == (
        "Targets met: 1 of 2 judged (1 noisy, not judged: the spread of the rounds exceeds the "
        "margin).")
    assert target_summary([met]) == "Targets met: 1 of 1 judged."


def test_calibrate_inner_fills_the_sample_with_short_calls():
    import time

    from cnnkit.bench._common import calibrate_inner, run_rounds
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.02)

    inner = calibrate_inner({"fast": fast, "slow": slow}, 0.005, max_inner=50)
    assert inner == {"fast": 50, "slow": 1}          # capped; a call longer than the sample: 1
    calls.update(fast=0, slow=0)
    times, probes = run_rounds([({"fast": fast, "slow": slow}, lambda: 1.0)], 2, 1, [inner])
    assert calls == {"fast": 3 * 50, "slow": 3}       # (warm-up + timed rounds) x inner
    assert len(times[0]["fast"]) == 2 and probes == [[1.0, 1.0]]
    assert times[0]["slow"][0] >= 0.02 > times[0]["fast"][0]
    calls.update(fast=0, slow=0)
    run_rounds([({"fast": fast, "slow": slow}, lambda: 1.0)], 2, 1, [inner], warm_each=True)
    assert calls == {"fast": 3 * 51, "slow": 3}       # one untimed call before a multi-call sample


def test_timed_fills_a_minimum_sample_after_an_untimed_call():
    import time

    from cnnkit.bench._common import timed
    calls = []

    def fast():
        calls.append(time.perf_counter())

    t = timed(fast, 1, min_s=0.003)                   # a count of 1 set while the machine was busy
    assert len(calls) > 2 and calls[-1] - calls[1] < 0.003 + 0.05
    assert t < 0.003 / (len(calls) - 2) + 1e-3        # the first (untimed) call is not counted
    calls.clear()

    def slow():
        calls.append(1)
        time.sleep(0.01)

    assert timed(slow, 1, min_s=0.005) >= 0.01 and calls == [1]     # one call fills the sample
    calls.clear()
    timed(fast, 7, min_s=1e-9)
    assert len(calls) == 8                            # at least inner timed calls
    calls.clear()
    timed(fast, 5)
    assert len(calls) == 5                            # without min_s: as before


def test_bench_train_check_at_the_bench_batch_passes_naming_its_kink_flips():
    # The bench's default check (batch 64). Here cnnkit NHWC's resnext_small gradients are 0.0017 of
    # the largest off torch's float64 twin because float32 rounding put one ReLU input (4.bn1,
    # -7.7e-7 in float64) on the other side of zero. The check names that flip and passes; after
    # it the gradients agree at rounding level. (Before the kink analysis the check stopped the
    # bench here.)
    torch = pytest.importorskip("torch")
    from cnnkit.bench import train
    cfgs = train.build_configs(torch, "resnext", train.BATCH)      # (cnnkit's bits: any thread count)
    bad, bad_torch, worst, ref = train.check_step(torch, cfgs, train.torch_adam_kwargs(torch)[0])
    assert ref == "torch NCHW float64" and bad == []
    for c in train.CNNKIT_CONFIGS:
        w = worst[c]
        assert w["logits"] < 1e-5
        assert w.get("gradients after the flips", w["gradients"]) < 1e-5
    # (which kinks flip depends on the kernels' rounding: on this project's machines, at every ISA
    # level, cnnkit NHWC flips 4.bn1's at (19, 17, 2, 7); a CPU whose kernels round otherwise may
    # flip another or none)
    for w in worst.values():          # flips are named only where the plain comparison failed
        assert "kink flips" not in w or (w["gradients"] > train.RTOL and w["kink flips"] >= 1
                                         and w["kinks"].count(" at (") == w["kink flips"])


def test_bench_train_ref64_is_the_torch_twin_in_float64():
    # The NumPy float64 step (the check's reference without torch, the kink analysis's engine)
    # against the torch twin in float64: logits, loss, every gradient and the logits after Adam.
    torch = pytest.importorskip("torch")
    from cnnkit.bench import train
    from cnnkit.bench._ref64 import Ref64
    for model in train.MODELS:
        cfgs = train.build_configs(torch, model, 4)
        r = Ref64(cfgs["cnnkit"]["NCHW"])
        ref = train._observe(train.reference_step(torch, cfgs, train.torch_adam_kwargs(torch)[0]), "torch", torch)
        logits, loss = r.forward(cfgs["x"], cfgs["labels"])
        g = r.backward()
        assert np.abs(logits - ref[0]).max() <= 1e-12 * np.abs(ref[0]).max() and abs(loss - ref[1]) <= 1e-12
        gscale = max(float(np.abs(a).max()) for a in ref[2])
        for name, a, b in zip(r.names, g, ref[2]):
            assert a.shape == b.shape and np.abs(a - b).max() <= 1e-12 * gscale, name
        after = r.after_adam(g, cfgs["x"], cfgs["labels"], train.LR)
        assert np.abs(after - ref[3]).max() <= 1e-12 * np.abs(ref[3]).max()
        assert len(r.sites) == (10 if model == "resnext" else 7)


def test_bench_train_copy_weights_checks_every_shape_before_writing():
    # A twin whose last layer has another shape: ValueError naming that parameter, and no
    # parameter of the twin written (not the ones before it either).
    torch = pytest.importorskip("torch")
    from cnnkit import models
    from cnnkit.bench import train
    cnn = getattr(models, train.MODELS["resnext"])()
    twin = train.build_torch_twin(torch, "resnext")
    assert train.copy_weights(torch, cnn, twin) == len(cnn.parameters())
    for a, t in zip(cnn.parameters(), twin.parameters()):
        assert np.array_equal(a, t.detach().numpy())
    twin = train.build_torch_twin(torch, "resnext")
    last = [m for m in twin.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.weight = torch.nn.Parameter(torch.zeros(last.out_features + 1, last.in_features))
    before = [t.detach().clone() for t in twin.parameters()]
    with pytest.raises(ValueError, match="cnnkit shape"):
        train.copy_weights(torch, cnn, twin)
    for b, t in zip(before, twin.parameters()):
        assert torch.equal(b, t.detach())
    with pytest.raises(ValueError, match="model"):
        train.build_torch_twin(torch, "vgg")


def test_bench_train_check_without_torch_uses_the_float64_numpy_reference():
    # Without torch the check's reference is Ref64 (float64), not cnnkit NCHW: both cnnkit
    # configurations are judged, and resnext_small's NHWC step passes with its kink flip named.
    from cnnkit.bench import train
    cfgs = train.build_configs(None, "resnext", train.BATCH)
    bad, bad_torch, worst, ref = train.check_step(None, cfgs)
    assert ref == "float64 NumPy reference" and bad == [] and bad_torch == []
    assert set(worst) == set(train.CNNKIT_CONFIGS)
    for w in worst.values():          # (flips or none: see the test above)
        assert w["logits"] < 1e-5 and w.get("gradients after the flips", w["gradients"]) < 1e-5


def test_bench_train_kink_analysis_accepts_whole_flips_only():
    # _Kinks.explain on gradients made from the float64 reference: plus one kink's exact effect
    # (and float32-level noise), the flip is found and what is left passes; plus half an effect,
    # plus the effect moved to other elements, or plus random noise of the same size, nothing is
    # explained and the gradients still fail the check's tolerance.
    from cnnkit.bench import train
    from cnnkit.bench._ref64 import Ref64
    cfgs = train.build_configs(None, "resnext", train.QUICK_BATCH)
    kinks = train._Kinks(Ref64(cfgs["cnnkit"]["NCHW"]), cfgs)
    ref = kinks._base()
    gscale = max(float(np.abs(g).max()) for g in ref)
    passes = lambda got, r: all(train._allclose(a, b, gscale) for a, b in zip(got, r))  # noqa: E731
    # the kink whose flip moves a gradient most
    cands = [kk[:2] for kk in kinks.kinks]
    for k, i, pre, _, _ in kinks.kinks:
        site = kinks.ref.sites[k]
        assert pre == site.pre[i] and abs(pre) <= train.KINK_DELTA * np.sqrt(np.mean(np.square(site.pre)))
    assert cands
    k, i = max(cands, key=lambda c: max(float(np.abs(e).max()) for e in kinks._effect(*c)))
    v = kinks._effect(k, i)
    assert max(float(np.abs(e).max()) for e in v) > 2 * train.RTOL * gscale   # one flip fails the check
    rng = np.random.default_rng(0)
    got = [r + e + rng.standard_normal(r.shape) * 1e-7 * gscale for r, e in zip(ref, v)]
    assert not passes(got, ref)
    flips, adj = kinks.explain(got, gscale)
    assert [f[:2] for f in flips] == [(k, i)] and passes(got, adj)
    assert f"at {i}" in kinks.describe(flips)
    for wrong in ([r + 0.5 * e for r, e in zip(ref, v)],
                  [r + np.roll(e, 1) for r, e in zip(ref, v)],
                  [r + rng.standard_normal(r.shape) * float(np.abs(e).max()) for r, e in zip(ref, v)]):
        assert not passes(wrong, ref)
        flips, adj = kinks.explain(wrong, gscale)
        assert not passes(wrong, adj)
