"""Tests for the fused optimizers of cnnkit.optim, gradient clipping and the finiteness check.

Layers (STYLE.md, Tests):

* named edge cases: tensor sizes 0, 1, 7, 15, 16, 17, 64 and 100 (around and on the 4/8-lane
  float64 and 8/16-lane float32 vectors of AVX2 and AVX-512), 0-d and 2-D tensors, several
  tensors in one optimizer, every flag combination of every algorithm, at every ISA level;
* hypothesis properties: >= 10 consecutive steps over the whole hyperparameter space against
  the float64 reference (tests/reference/optim.py), for the classes and the functional API;
* invariants: bitwise-identical results across ISA levels and thread counts, maximize equals
  minimizing the negated gradient, lr = 0 leaves parameters alone, fusing tensors changes
  nothing, state_dict round trips, convergence on a quadratic and on Rosenbrock;
* bad input: the documented exception, naming the argument, with nothing modified.

The reference always runs in float64 on float64 copies of the initial values, fed the same
(upcast) gradients as the kernel; float32 results are compared with the tolerance of
conftest.TOL widened by the number of steps taken.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnkit
from cnnkit import optim
from cnnkit.optim import functional as F
from conftest import ISA_LEVELS, assert_bitwise, assert_close, isa_level, num_threads
from reference import optim as R

SETTINGS = settings(max_examples=30, deadline=None)

ALGOS = ("sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw")
CLASSES = {"sgd": optim.SGD, "adagrad": optim.Adagrad, "rmsprop": optim.RMSprop,
           "adadelta": optim.Adadelta, "adam": optim.Adam, "adamw": optim.AdamW}
SLOTS = {"sgd": ("momentum_buffer",), "adagrad": ("sum",),
         "rmsprop": ("square_avg", "grad_avg", "momentum_buffer"),
         "adadelta": ("square_avg", "acc_delta"),
         "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
         "adamw": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
DTYPES = (np.float32, np.float64)

# Vector widths: AVX2 holds 8 float32 / 4 float64, AVX-512 16 / 8. Sizes below, at and above
# them, a multiple of them, 1, empty, a 0-d array and 2-D arrays (kernels see flat memory).
EDGE_SHAPES = ((1,), (7,), (15,), (16,), (17,), (64,), (0,), (4, 16), (), (3, 0, 2), (5, 20))
HYPO_SHAPES = ((0,), (1,), (7,), (15,), (16,), (17,), (64,), (4, 16), ())

# ---- hyperparameters: every flag combination ----------------------------------------------

BASE = {
    "sgd": dict(lr=0.05),
    "adagrad": dict(lr=0.1),
    "rmsprop": dict(lr=0.01, alpha=0.9),
    "adadelta": dict(lr=0.5, rho=0.9),
    "adam": dict(lr=0.01, betas=(0.8, 0.99)),
    "adamw": dict(lr=0.01, betas=(0.8, 0.99)),
}
FLAGS = {  # (off, on) for every option that selects a different code path
    "sgd": dict(momentum=(0.0, 0.9), dampening=(0.0, 0.3), nesterov=(False, True),
                weight_decay=(0.0, 0.05), maximize=(False, True)),
    "adagrad": dict(lr_decay=(0.0, 0.1), initial_accumulator_value=(0.0, 0.2),
                    weight_decay=(0.0, 0.05), maximize=(False, True)),
    "rmsprop": dict(momentum=(0.0, 0.5), centered=(False, True), weight_decay=(0.0, 0.05),
                    maximize=(False, True)),
    "adadelta": dict(weight_decay=(0.0, 0.05), maximize=(False, True)),
    "adam": dict(amsgrad=(False, True), weight_decay=(0.0, 0.05), maximize=(False, True)),
    "adamw": dict(amsgrad=(False, True), weight_decay=(0.0, 0.05), maximize=(False, True)),
}


def _valid(algo, h):
    return not (algo == "sgd" and h["nesterov"] and (h["momentum"] == 0 or h["dampening"] != 0))


def _combos():
    out = []
    for algo in ALGOS:
        keys = list(FLAGS[algo])
        for values in itertools.product(*(FLAGS[algo][k] for k in keys)):
            h = dict(BASE[algo], **dict(zip(keys, values)))
            if _valid(algo, h):
                on = [k for k, v in zip(keys, values) if v]
                name = "-".join([algo] + on) if on else f"{algo}-plain"
                out.append(pytest.param(algo, h, id=name))
    return out


COMBOS = _combos()
# Every code path at once (nesterov excludes dampening).
FULL = {
    "sgd": dict(BASE["sgd"], momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True),
    "adagrad": dict(BASE["adagrad"], lr_decay=0.1, initial_accumulator_value=0.2,
                    weight_decay=0.05, maximize=True),
    "rmsprop": dict(BASE["rmsprop"], momentum=0.5, centered=True, weight_decay=0.05, maximize=True),
    "adadelta": dict(BASE["adadelta"], weight_decay=0.05, maximize=True),
    "adam": dict(BASE["adam"], amsgrad=True, weight_decay=0.05, maximize=True),
    "adamw": dict(BASE["adamw"], amsgrad=True, weight_decay=0.05, maximize=True),
}


def test_combos_cover_every_flag():
    """The parametrized combos hold 2^k cases per algorithm (minus invalid nesterov ones)."""
    counts = {a: sum(1 for c in COMBOS if c.values[0] == a) for a in ALGOS}
    assert counts == {"sgd": 20, "adagrad": 16, "rmsprop": 16, "adadelta": 4, "adam": 8, "adamw": 8}


# ---- the float64 reference run like an optimizer -------------------------------------------

def ref_update(algo, p, g, state, step, h):
    """One reference step of one tensor. `state` maps slot -> array (missing = fresh);
    `h` holds the class hyperparameters. Returns (new p, new state without None slots)."""
    fn = R.OPTIMIZER_REFERENCES[algo]
    zeros = np.zeros(np.shape(p))
    common = dict(step=step, lr=h["lr"], weight_decay=h["weight_decay"], maximize=h["maximize"])
    if algo == "sgd":
        p, buf = fn(p, g, state.get("momentum_buffer"), momentum=h["momentum"],
                    dampening=h["dampening"], nesterov=h["nesterov"], **common)
        new = dict(momentum_buffer=buf)
    elif algo == "adagrad":
        s = state.get("sum")
        if s is None:
            s = np.full(np.shape(p), float(h["initial_accumulator_value"]))
        p, s = fn(p, g, s, lr_decay=h["lr_decay"], eps=h["eps"], **common)
        new = dict(sum=s)
    elif algo == "rmsprop":
        p, sq, ga, buf = fn(p, g, state.get("square_avg", zeros), state.get("grad_avg"),
                            state.get("momentum_buffer"), alpha=h["alpha"], eps=h["eps"],
                            momentum=h["momentum"], centered=h["centered"], **common)
        new = dict(square_avg=sq, grad_avg=ga, momentum_buffer=buf)
    elif algo == "adadelta":
        p, sq, acc = fn(p, g, state.get("square_avg", zeros), state.get("acc_delta", zeros),
                        rho=h["rho"], eps=h["eps"], **common)
        new = dict(square_avg=sq, acc_delta=acc)
    else:
        b1, b2 = h["betas"]
        p, m, v, vmax = fn(p, g, state.get("exp_avg", zeros), state.get("exp_avg_sq", zeros),
                           state.get("max_exp_avg_sq"), beta1=b1, beta2=b2, eps=h["eps"],
                           amsgrad=h["amsgrad"], **common)
        new = dict(exp_avg=m, exp_avg_sq=v, max_exp_avg_sq=vmax)
    # keep slots the update did not touch (e.g. a momentum buffer while momentum is 0)
    out = dict(state)
    out.update({k: v for k, v in new.items() if v is not None})
    return p, out


class RefOptimizer:
    """Float64 copies of the parameters, per-parameter state and 1-based step counts."""

    def __init__(self, algo, params):
        self.algo = algo
        self.params = [np.array(p, dtype=np.float64) for p in params]
        self.state = [{} for _ in params]
        self.steps = [0] * len(params)

    def step(self, grads, hypers):
        """`hypers`: one hyperparameter dict per parameter (its group)."""
        for i, g in enumerate(grads):
            if g is None:
                continue
            self.steps[i] += 1
            self.params[i], self.state[i] = ref_update(self.algo, self.params[i], g,
                                                       self.state[i], self.steps[i], hypers[i])


def param_hypers(opt):
    """The hyperparameter dict that applies to each parameter, in step order."""
    return [dict(g) for g in opt.param_groups for _ in g["params"]]


def check_against(opt, ref, steps, what=""):
    """Every parameter, step count and state slot of `opt` against the reference."""
    sd = opt.state_dict()
    for i, p in enumerate(opt.parameters()):
        assert_close(p, ref.params[i], p.dtype, steps=steps, what=f"{what}params[{i}]")
        if ref.steps[i] == 0:
            assert i not in sd["state"], f"{what}params[{i}] took no step but has state"
            continue
        entry = sd["state"][i]
        assert entry["step"] == ref.steps[i], f"{what}state[{i}]['step']"
        for name, value in ref.state[i].items():
            assert name in entry, f"{what}state[{i}] lacks {name!r}: {sorted(entry)}"
            assert entry[name].dtype == p.dtype and entry[name].shape == p.shape
            assert_close(entry[name], value, p.dtype, steps=steps,
                         what=f"{what}state[{i}][{name!r}]")


# ---- data -----------------------------------------------------------------------------------

def random_array(rng, shape, dtype, *, scale=1.0, aligned=True):
    """Normal values clipped to [-2, 2] (never zero), times `scale`. `aligned=False` puts the
    data one element past an allocation boundary, so SIMD loops cannot rely on aligned loads."""
    x = np.array(np.clip(rng.standard_normal(shape), -2.0, 2.0), dtype=np.float64)
    x[x == 0] = 0.5
    return _place(x * scale, dtype, aligned)


def _place(x, dtype, aligned):
    shape = np.shape(x)
    if aligned:
        return np.array(x, dtype=dtype)
    n = int(np.prod(shape, dtype=np.int64))
    buf = np.empty(n + 1, dtype=dtype)
    out = buf[1:].reshape(shape)
    out[...] = x
    assert out.flags.c_contiguous and out.flags.writeable
    return out


def random_grads(rng, params, *, aligned=True, tiny=False):
    """A fresh gradient per parameter: random signs, |g| in [0.6, ~4] times a per-tensor scale
    in [0.5, 2] drawn anew every step. With `tiny`, about half of the tensors get a scale in
    [1e-8, 1e-5] instead, where eps dominates the adaptive denominators.

    The floor |g| >= 0.3 keeps g and an L2 term weight_decay*p (|wd*p| < 0.2 with the decays
    and learning rates used here) from nearly cancelling. In float32 such a cancellation turns
    the rounding of wd*p, or the drift of the float32 parameter from the float64 reference,
    into a large relative error of g + wd*p, which Adagrad/RMSprop/Adam/Adadelta divide out
    and pass on undamped: a property of float32 (the float64 runs match to ~1e-15), not a
    kernel error, and not something a fixed tolerance can absorb. So `tiny` is for runs without
    L2 decay (or with SGD, which does not normalise, or AdamW, whose decay is not in g).
    """
    out = []
    for p in params:
        sign = np.where(rng.random(p.shape) < 0.5, -1.0, 1.0)
        mag = 0.6 + np.abs(rng.standard_normal(p.shape))
        if tiny and rng.random() < 0.5:
            scale = 10.0 ** rng.uniform(-8, -5)
        else:
            scale = rng.uniform(0.5, 2.0)
        out.append(_place(sign * mag * scale, p.dtype, aligned))
    return out


def tiny_ok(algo, hyper):
    """Whether eps-scale gradients can be compared in float32 (see random_grads)."""
    return algo in ("sgd", "adamw") or hyper.get("weight_decay", 0.0) == 0


def snapshot(opt):
    return [p.copy() for p in opt.parameters()], opt.state_dict()


def assert_same_state(opt, snap, what="", groups=True):
    """Parameters and state_dict bitwise equal to a snapshot."""
    params, sd = snap
    for i, (p, q) in enumerate(zip(opt.parameters(), params)):
        assert_bitwise(p, q, f"{what}params[{i}]")
    now = opt.state_dict()
    assert sorted(now["state"]) == sorted(sd["state"]), f"{what}state entries"
    for i, entry in sd["state"].items():
        assert sorted(now["state"][i]) == sorted(entry), f"{what}state[{i}] slots"
        for name, value in entry.items():
            if name == "step":
                assert now["state"][i]["step"] == value, f"{what}state[{i}]['step']"
            else:
                assert_bitwise(now["state"][i][name], value, f"{what}state[{i}][{name!r}]")
    if groups:
        assert now["param_groups"] == sd["param_groups"], f"{what}param_groups"


def trajectory(algo, hyper, shapes, dtype, seed, nsteps, *, aligned=True, groups=None):
    """Run `nsteps` steps from a seeded start; return params and state_dict at the end."""
    rng = np.random.default_rng(seed)
    params = [random_array(rng, s, dtype, aligned=aligned) for s in shapes]
    opt = CLASSES[algo](params, **hyper)
    for _ in range(nsteps):
        opt.step(random_grads(rng, params, aligned=aligned))
    return snapshot(opt)


def assert_same_trajectory(a, b, what):
    (pa, sa), (pb, sb) = a, b
    for i, (x, y) in enumerate(zip(pa, pb)):
        assert_bitwise(x, y, f"{what}: params[{i}]")
    assert sorted(sa["state"]) == sorted(sb["state"]), what
    for i in sa["state"]:
        assert sorted(sa["state"][i]) == sorted(sb["state"][i]), what
        for name, v in sa["state"][i].items():
            if name == "step":
                assert v == sb["state"][i][name], f"{what}: state[{i}]['step']"
            else:
                assert_bitwise(v, sb["state"][i][name], f"{what}: state[{i}][{name!r}]")


def run_against_reference(algo, hyper, shapes, dtype, nsteps, rng, *, aligned=True, tiny=False):
    params = [random_array(rng, s, dtype, aligned=aligned) for s in shapes]
    opt = CLASSES[algo](params, **hyper)
    ref = RefOptimizer(algo, params)
    for k in range(1, nsteps + 1):
        grads = random_grads(rng, params, aligned=aligned, tiny=tiny)
        kept = [g.copy() for g in grads]
        ref.step(grads, param_hypers(opt))
        opt.step(grads)
        for i, (g, c) in enumerate(zip(grads, kept)):
            assert_bitwise(g, c, f"step() modified grads[{i}]")
        check_against(opt, ref, k, what=f"{algo} {np.dtype(dtype).name} step {k}: ")
    return opt, ref


# ---- 1. hypothesis: >= 10 steps against the reference ---------------------------------------

# L2 weight decay of the normalising algorithms stays <= 0.04, so |wd*p| < 0.2 (see random_grads)
L2_MAX = 0.04


def _maybe(strategy, off=0.0):
    return st.one_of(st.just(off), strategy)


@st.composite
def sgd_hyper(draw):
    momentum = draw(_maybe(st.floats(0.1, 0.95)))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(_maybe(st.floats(0.05, 0.9)))
    return dict(lr=draw(st.floats(1e-3, 0.2)), momentum=momentum, dampening=dampening,
                weight_decay=draw(_maybe(st.floats(1e-3, 0.2))), nesterov=nesterov,
                maximize=draw(st.booleans()))


@st.composite
def adagrad_hyper(draw):
    return dict(lr=draw(st.floats(1e-3, 0.2)), lr_decay=draw(_maybe(st.floats(1e-3, 0.5))),
                weight_decay=draw(_maybe(st.floats(1e-3, L2_MAX))),
                initial_accumulator_value=draw(_maybe(st.floats(0.01, 1.0))),
                eps=draw(st.sampled_from([1e-10, 1e-8, 1e-6])), maximize=draw(st.booleans()))


@st.composite
def rmsprop_hyper(draw):
    return dict(lr=draw(st.floats(1e-4, 1e-2)), alpha=draw(st.floats(0.6, 0.99)),
                eps=draw(st.sampled_from([1e-8, 1e-6])),
                weight_decay=draw(_maybe(st.floats(1e-3, L2_MAX))),
                momentum=draw(_maybe(st.floats(0.1, 0.9))), centered=draw(st.booleans()),
                maximize=draw(st.booleans()))


@st.composite
def adadelta_hyper(draw):
    return dict(lr=draw(st.floats(0.1, 1.0)), rho=draw(st.floats(0.5, 0.99)),
                eps=draw(st.sampled_from([1e-6, 1e-4])),
                weight_decay=draw(_maybe(st.floats(1e-3, L2_MAX))), maximize=draw(st.booleans()))


def adam_hyper(decoupled):
    @st.composite
    def draw_hyper(draw):
        return dict(lr=draw(st.floats(1e-4, 0.05)),
                    betas=(draw(_maybe(st.floats(0.5, 0.95))), draw(st.floats(0.9, 0.9999))),
                    eps=draw(st.sampled_from([1e-8, 1e-6])),
                    weight_decay=draw(_maybe(st.floats(1e-3, 0.2 if decoupled else L2_MAX))),
                    amsgrad=draw(st.booleans()), maximize=draw(st.booleans()))
    return draw_hyper()


HYPER = {"sgd": sgd_hyper(), "adagrad": adagrad_hyper(), "rmsprop": rmsprop_hyper(),
         "adadelta": adadelta_hyper(), "adam": adam_hyper(False), "adamw": adam_hyper(True)}


@pytest.mark.parametrize("algo", ALGOS)
@SETTINGS
@given(data=st.data())
def test_class_matches_reference(algo, data):
    hyper = data.draw(HYPER[algo], label="hyper")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shapes = data.draw(st.lists(st.sampled_from(HYPO_SHAPES), min_size=2, max_size=6),
                       label="shapes")
    nsteps = data.draw(st.integers(10, 12), label="nsteps")
    tiny = tiny_ok(algo, hyper) and data.draw(st.booleans(), label="eps-scale gradients")
    level = data.draw(st.sampled_from(ISA_LEVELS), label="isa")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    with isa_level(level):  # (the isa fixture does not mix with @given)
        run_against_reference(algo, hyper, shapes, dtype, nsteps, np.random.default_rng(seed),
                              tiny=tiny)


def functional_kwargs(algo, h):
    """Class hyperparameters -> keyword arguments of the functional form."""
    kw = dict(h)
    kw.pop("initial_accumulator_value", None)
    if "betas" in kw:
        kw["beta1"], kw["beta2"] = kw.pop("betas")
    return kw


def needed_slots(algo, h):
    if algo == "sgd":
        return ("momentum_buffer",) if h["momentum"] != 0 else ()
    if algo == "rmsprop":
        return ("square_avg",) + (("grad_avg",) if h["centered"] else ()) + (
            ("momentum_buffer",) if h["momentum"] > 0 else ())
    if algo in ("adam", "adamw"):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if h["amsgrad"] else ())
    return SLOTS[algo]


def functional_step(algo, params, grads, state, step, h):
    """One call of the functional form; `state` maps slot -> list of arrays."""
    kw = functional_kwargs(algo, h)
    if algo == "sgd":
        F.sgd_(params, grads, state.get("momentum_buffer"), step=step, **kw)
    elif algo == "adagrad":
        F.adagrad_(params, grads, state["sum"], step=step, **kw)
    elif algo == "rmsprop":
        F.rmsprop_(params, grads, state["square_avg"], state.get("grad_avg"),
                   state.get("momentum_buffer"), step=step, **kw)
    elif algo == "adadelta":
        F.adadelta_(params, grads, state["square_avg"], state["acc_delta"], step=step, **kw)
    else:
        fn = F.adam_ if algo == "adam" else F.adamw_
        fn(params, grads, state["exp_avg"], state["exp_avg_sq"],
           max_exp_avg_sqs=state.get("max_exp_avg_sq"), step=step, **kw)


def random_state(rng, algo, h, params):
    """Non-zero, valid initial state for every slot the hyperparameters need."""
    state = {}
    for name in needed_slots(algo, h):
        arrays = []
        for p in params:
            if name in ("exp_avg", "momentum_buffer"):
                a = rng.standard_normal(p.shape) * 0.3
            elif name == "grad_avg":  # |grad_avg| < sqrt(square_avg) keeps the variance positive
                a = rng.uniform(-0.2, 0.2, p.shape)
            else:  # second moments and accumulators: positive
                a = rng.uniform(0.3, 1.5, p.shape)
            arrays.append(np.array(a, dtype=p.dtype))  # 0-d stays an array
        state[name] = arrays
    return state


@pytest.mark.parametrize("algo", ALGOS)
@SETTINGS
@given(data=st.data())
def test_functional_matches_reference(algo, data):
    """The functional form from non-zero state, with one step number per tensor."""
    hyper = data.draw(HYPER[algo], label="hyper")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shapes = data.draw(st.lists(st.sampled_from(HYPO_SHAPES), min_size=2, max_size=5),
                       label="shapes")
    offsets = data.draw(st.lists(st.integers(0, 4), min_size=len(shapes), max_size=len(shapes))
                        | st.just([0] * len(shapes)), label="step offsets")
    tiny = tiny_ok(algo, hyper) and data.draw(st.booleans(), label="eps-scale gradients")
    level = data.draw(st.sampled_from(ISA_LEVELS), label="isa")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    with isa_level(level):
        _functional_run(algo, hyper, dtype, shapes, offsets, tiny, np.random.default_rng(seed))


def _functional_run(algo, hyper, dtype, shapes, offsets, tiny, rng):
    params = [random_array(rng, s, dtype) for s in shapes]
    state = random_state(rng, algo, hyper, params)
    ref_p = [np.array(p, np.float64) for p in params]
    ref_s = [{k: np.array(v[i], np.float64) for k, v in state.items()} for i in range(len(params))]
    for k in range(1, 11):
        grads = random_grads(rng, params, tiny=tiny)
        steps = [k + o for o in offsets]
        step = k if not any(offsets) else steps
        for i, g in enumerate(grads):
            ref_p[i], ref_s[i] = ref_update(algo, ref_p[i], g, ref_s[i], steps[i], hyper)
        functional_step(algo, params, grads, state, step, hyper)
        for i, p in enumerate(params):
            assert_close(p, ref_p[i], dtype, steps=k, what=f"step {k} params[{i}]")
            for name, arrays in state.items():
                assert_close(arrays[i], ref_s[i][name], dtype, steps=k,
                             what=f"step {k} {name}[{i}]")


@pytest.mark.parametrize("algo", ALGOS)
def test_million_element_tensor(algo, rng):
    """One 1,000,003-element tensor (split across threads, odd tail) beside a small one."""
    dtype = np.float32
    run_against_reference(algo, FULL[algo], [(1_000_003,), (17,)], dtype, 3, rng)


# ---- 2. every ISA level ----------------------------------------------------------------------

@pytest.mark.parametrize("algo,hyper", COMBOS)
def test_every_isa_matches_reference(isa, algo, hyper, rng):
    for dtype in DTYPES:
        for tiny in {False, tiny_ok(algo, hyper)}:
            run_against_reference(algo, hyper, EDGE_SHAPES, dtype, 6, rng,
                                  aligned=dtype == np.float32, tiny=tiny)


@pytest.mark.skipif(len(ISA_LEVELS) < 2, reason="this CPU runs only the scalar kernels")
@pytest.mark.parametrize("algo,hyper", COMBOS)
def test_isa_levels_bitwise_identical(algo, hyper):
    """Compiled with -ffp-contract=off, every ISA level must give the same bits (element-wise
    updates have no reduction whose order could depend on the vector width)."""
    for dtype in DTYPES:
        for aligned in (True, False):
            runs = {}
            for level in ISA_LEVELS:
                with isa_level(level):
                    runs[level] = trajectory(algo, hyper, EDGE_SHAPES + ((300,),), dtype, 2024, 5,
                                             aligned=aligned)
            for level in ISA_LEVELS[1:]:
                assert_same_trajectory(runs[level], runs[ISA_LEVELS[0]],
                                       f"{level} vs {ISA_LEVELS[0]} ({np.dtype(dtype).name}, "
                                       f"aligned={aligned})")


# ---- 3. thread counts ------------------------------------------------------------------------

# 100,003 elements in all (> the 32,768 below which one thread works), in tensors whose sizes
# put the thread boundary inside a tensor.
THREAD_SHAPES = ((49_999,), (33_333,), (0,), (7,), (16_664,))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("full", [False, True], ids=["plain", "all-flags"])
def test_thread_counts_bitwise_identical(algo, full):
    hyper = FULL[algo] if full else BASE[algo]
    for dtype in DTYPES:
        runs = []
        for n in (1, 2):
            with num_threads(n):
                runs.append(trajectory(algo, hyper, THREAD_SHAPES, dtype, 99, 3))
        assert_same_trajectory(runs[1], runs[0], f"2 vs 1 threads ({np.dtype(dtype).name})")


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_norm_and_clip_thread_counts_bitwise_identical(dtype, rng):
    arrays = [random_array(rng, (n,), dtype, scale=s)
              for n, s in ((600_000, 1.0), (3, 50.0), (400_000, 0.01))]
    for norm_type in (1, 2, 3, math.inf):
        norms, clipped = [], []
        for n in (1, 2):
            with num_threads(n):
                norms.append(optim.global_norm(arrays, norm_type))
                work = [a.copy() for a in arrays]
                total = optim.clip_grad_norm_(work, 0.5, norm_type)
                clipped.append((total, work))
        assert_bitwise(np.float64(norms[1]), np.float64(norms[0]), f"global_norm p={norm_type}")
        assert_bitwise(np.float64(clipped[1][0]), np.float64(clipped[0][0]), "clip total")
        for i, (x, y) in enumerate(zip(clipped[1][1], clipped[0][1])):
            assert_bitwise(x, y, f"clipped grads[{i}] p={norm_type}")
        assert_close(norms[0], R.global_norm(arrays, norm_type), np.float64,
                     length=sum(a.size for a in arrays), what=f"global_norm p={norm_type}")


@pytest.mark.parametrize("algo", ALGOS)
def test_fused_tensors_equal_one_tensor(algo, threads, rng):
    """Tensors in one call do not leak into each other: an optimizer over [a, b] equals one over
    concatenate([a, b]) bit for bit (the thread split falls inside a, b or at the joint)."""
    dtype = np.float32
    a = random_array(rng, (40_001,), dtype)
    b = random_array(rng, (30_000,), dtype)
    whole = np.concatenate([a, b])
    parts = [a, b]
    opt_parts = CLASSES[algo](parts, **FULL[algo])
    opt_whole = CLASSES[algo]([whole], **FULL[algo])
    for _ in range(3):
        ga, gb = random_grads(rng, parts)
        opt_parts.step([ga, gb])
        opt_whole.step([np.concatenate([ga, gb])])
    assert_bitwise(np.concatenate(parts), whole, "params")
    sp, sw = opt_parts.state_dict()["state"], opt_whole.state_dict()["state"]
    for name in sw[0]:
        if name != "step":
            assert_bitwise(np.concatenate([sp[0][name], sp[1][name]]), sw[0][name], name)


# ---- invariants ------------------------------------------------------------------------------

@pytest.mark.parametrize("algo,hyper", COMBOS)
def test_maximize_equals_minimizing_negated_gradient(algo, hyper, rng):
    """maximize negates g exactly: maximize with -g is bitwise the same run as minimize with g."""
    dtype = np.float32
    params = [random_array(rng, s, dtype) for s in EDGE_SHAPES]
    pa, pb = [p.copy() for p in params], [p.copy() for p in params]
    opt_a = CLASSES[algo](pa, **dict(hyper, maximize=False))
    opt_b = CLASSES[algo](pb, **dict(hyper, maximize=True))
    for _ in range(4):
        grads = random_grads(rng, params)
        opt_a.step(grads)
        opt_b.step([np.negative(g, out=np.empty_like(g)) for g in grads])  # 0-d stays an array
    assert_same_trajectory(snapshot(opt_b), snapshot(opt_a), "maximize(-g) vs minimize(g)")
    assert not all(np.array_equal(p, q) for p, q in zip(pa, params)), "no parameter moved"


@pytest.mark.parametrize("algo", ALGOS)
def test_zero_lr_leaves_params_unchanged(algo, rng):
    params = [random_array(rng, s, np.float64) for s in EDGE_SHAPES]
    before = [p.copy() for p in params]
    opt = CLASSES[algo](params, **dict(FULL[algo], lr=0.0))
    for _ in range(3):
        opt.step(random_grads(rng, params))
    for i, (p, q) in enumerate(zip(params, before)):
        assert_bitwise(p, q, f"params[{i}]")
    assert opt.state_dict()["state"][0]["step"] == 3


@pytest.mark.parametrize("algo", ALGOS)
def test_class_equals_functional(algo, rng):
    """The class is a shell over the functional kernel: same bits from the same start."""
    params = [random_array(rng, s, np.float32) for s in EDGE_SHAPES]
    fparams = [p.copy() for p in params]
    opt = CLASSES[algo](params, **FULL[algo])
    hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}  # with the defaults
    init = hyper.get("initial_accumulator_value", 0.0)
    state = {name: [np.full_like(p, init if name == "sum" else 0.0) for p in fparams]
             for name in needed_slots(algo, hyper)}
    for k in range(1, 5):
        grads = random_grads(rng, params)
        opt.step(grads)
        functional_step(algo, fparams, grads, state, k, hyper)
    sd = opt.state_dict()["state"]
    for i, (p, q) in enumerate(zip(params, fparams)):
        assert_bitwise(p, q, f"params[{i}]")
        for name, arrays in state.items():
            assert_bitwise(sd[i][name], arrays[i], f"{name}[{i}]")


def test_defaults_are_torchs():
    p = [np.ones(3, np.float32)]
    expect = {
        "sgd": dict(lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                    maximize=False),
        "adagrad": dict(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                        eps=1e-10, maximize=False),
        "rmsprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                        maximize=False),
        "adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False),
        "adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                     maximize=False),
        "adamw": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                      maximize=False),
    }
    for algo, want in expect.items():
        group = CLASSES[algo]([a.copy() for a in p]).param_groups[0]
        assert {k: group[k] for k in want} == want, algo
        assert set(group) == set(want) | {"params"}, algo


# ---- 4. convergence --------------------------------------------------------------------------

# Convex quadratic f(x) = 0.5 x'Ax - b'x in 8 dimensions, A SPD with eigenvalues 1..10
# (condition number 10), start at distance ~6 from the optimum. With L2 weight decay wd (not
# AdamW's decoupled decay) the optimum is (A + wd I)^-1 b.
_QRNG = np.random.default_rng(12345)
_Q, _ = np.linalg.qr(_QRNG.standard_normal((8, 8)))
QUAD_A = _Q @ np.diag(np.linspace(1.0, 10.0, 8)) @ _Q.T
QUAD_B = _QRNG.standard_normal(8)
QUAD_X0 = np.linalg.solve(QUAD_A, QUAD_B) + 2.0 * _QRNG.standard_normal(8)

# (algo, hyper, steps, lr drop (at step, factor) or None, tolerance on |x - x*|).
# `steps` is ~1.5x the step after which the distance measured below the tolerance for good
# (adaptive methods at constant lr hover at a distance set by lr, so some drop lr once; that
# also exercises lr edited between steps). A sign error, a missing or doubled term or an update
# applied to the wrong state moves away from x* or stalls orders of magnitude above these
# tolerances, which are 5 (quadratic) and 3 (Rosenbrock) orders below the starting distance.
# The tolerance is looser for AdamW: decoupled decay moves the fixed point by O(lr * wd) away
# from the minimizer of f (measured 1e-3 here).
QUADRATIC = [
    ("sgd", dict(lr=0.05), 300, None, 1e-4),
    ("sgd", dict(lr=0.05, weight_decay=0.5), 200, None, 1e-4),
    ("sgd", dict(lr=0.02, momentum=0.9, nesterov=True), 250, None, 1e-4),
    ("sgd", dict(lr=0.02, momentum=0.9, dampening=0.5), 300, None, 1e-4),
    ("adagrad", dict(lr=0.5, lr_decay=1e-3, initial_accumulator_value=0.1), 500, None, 1e-4),
    ("rmsprop", dict(lr=0.01), 2300, (500, 0.01), 1e-3),
    ("rmsprop", dict(lr=0.01, centered=True, momentum=0.5), 2000, (500, 0.1), 1e-3),
    ("adadelta", dict(lr=0.1, eps=1e-2, weight_decay=0.5), 350, None, 1e-4),
    ("adam", dict(lr=0.05), 550, (500, 0.1), 1e-4),
    ("adam", dict(lr=0.05, amsgrad=True, weight_decay=0.5), 400, None, 1e-4),
    ("adamw", dict(lr=0.05), 1000, (500, 0.1), 1e-2),
]

# Rosenbrock (1-x)^2 + 100 (y-x^2)^2 from (-1.2, 1): a curved valley, optimum (1, 1).
ROSENBROCK = [
    ("sgd", dict(lr=1e-3, momentum=0.9, nesterov=True), 2500, None, 1e-3),
    ("adagrad", dict(lr=0.5), 13500, None, 1e-3),
    ("rmsprop", dict(lr=1e-2, centered=True, momentum=0.5), 10000, (5000, 0.01), 1e-3),
    ("adadelta", dict(lr=2e-3, eps=1e-2), 14000, None, 1e-3),
    ("adam", dict(lr=0.02, amsgrad=True), 10000, None, 1e-3),
    ("adamw", dict(lr=0.02), 10000, (3000, 0.1), 1e-2),
]


def rosenbrock_grad(v):
    x, y = v
    return np.array([-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)])


def _converge(algo, hyper, steps, drop, tol, x0, target, grad):
    x = x0.copy()
    opt = CLASSES[algo]([x], **hyper)
    start = np.linalg.norm(x - target)
    worst_tail = 0.0
    for k in range(steps + 50):
        if drop is not None and k == drop[0]:
            opt.param_groups[0]["lr"] *= drop[1]
        opt.step([grad(x)])
        if k >= steps:  # the last 50 steps must all be near the optimum
            worst_tail = max(worst_tail, float(np.linalg.norm(x - target)))
    assert worst_tail < tol, (f"{algo} {hyper}: |x - x*| = {worst_tail:.3g} after {steps} steps "
                              f"(started at {start:.3g})")


@pytest.mark.parametrize("algo,hyper,steps,drop,tol", QUADRATIC,
                         ids=[f"{a}-{'-'.join(h)}" for a, h, *_ in QUADRATIC])
def test_converges_on_quadratic(algo, hyper, steps, drop, tol):
    wd = hyper.get("weight_decay", 0.0) if algo != "adamw" else 0.0
    target = np.linalg.solve(QUAD_A + wd * np.eye(8), QUAD_B)
    _converge(algo, hyper, steps, drop, tol, QUAD_X0, target, lambda x: QUAD_A @ x - QUAD_B)


@pytest.mark.parametrize("algo,hyper,steps,drop,tol", ROSENBROCK,
                         ids=[f"{a}-{'-'.join(h)}" for a, h, *_ in ROSENBROCK])
def test_converges_on_rosenbrock(algo, hyper, steps, drop, tol):
    _converge(algo, hyper, steps, drop, tol, np.array([-1.2, 1.0]), np.array([1.0, 1.0]),
              rosenbrock_grad)


# ---- 5. state_dict round trip ----------------------------------------------------------------

@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_round_trip(algo, dtype, tmp_path, rng):
    shapes = [(7,), (4, 16), (17,), (1,)]
    params = [random_array(rng, s, dtype) for s in shapes]
    other = dict(FULL[algo], lr=FULL[algo]["lr"] * 0.5, weight_decay=0.0)

    def build(ps, **defaults):
        return CLASSES[algo]([{"params": ps[:2]}, {"params": ps[2:], **other}], **defaults)

    opt = build(params, **FULL[algo])
    for k in range(4):
        grads = random_grads(rng, params)
        grads[3] = None  # params[3] takes no step before the save: no state entry
        if k == 1:
            grads[0] = None  # params[0] is one step behind the others
        opt.step(grads)
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2]
    assert [sd["state"][i]["step"] for i in range(3)] == [3, 4, 4]
    for i in range(3):
        assert set(needed_slots(algo, FULL[algo])) <= set(sd["state"][i]), sd["state"][i].keys()
    path = tmp_path / "opt.npz"
    np.savez(path, **optim.flatten_state_dict(sd))

    from_dict = [p.copy() for p in params]
    from_file = [p.copy() for p in params]
    opt_dict = build(from_dict)  # class defaults: the hyperparameters come from the state_dict
    opt_dict.load_state_dict(sd)
    opt_file = build(from_file)
    with np.load(path) as f:
        opt_file.load_state_dict(f)
    # the loaded optimizers own their state: scribbling on the saved dict changes nothing
    for entry in sd["state"].values():
        for name, value in entry.items():
            if name != "step":
                value[...] = 7.0
    for o in (opt_dict, opt_file):
        assert [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups] == \
               [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    for k in range(4):
        grads = random_grads(rng, params)
        for o in (opt, opt_dict, opt_file):
            o.step([g.copy() for g in grads])
    ref = snapshot(opt)
    assert ref[1]["state"][3]["step"] == 4
    assert_same_state(opt_dict, ref, "loaded from dict: ")
    assert_same_state(opt_file, ref, "loaded from npz: ")


def test_flatten_state_dict_with_numpy_scalar_hyperparameters(tmp_path, rng):
    """The constructors accept NumPy scalars (numbers.Real, np.bool_); saving must too."""
    ps = [random_array(rng, (9,), np.float32)]
    opt = optim.Adam(ps, lr=np.float32(0.01), betas=(np.float32(0.8), 0.99), eps=np.float64(1e-8),
                     amsgrad=np.bool_(True), weight_decay=np.int64(0))
    opt.step(random_grads(rng, ps))
    path = tmp_path / "opt.npz"
    np.savez(path, **optim.flatten_state_dict(opt.state_dict()))
    fresh = optim.Adam([ps[0].copy()])
    with np.load(path) as f:
        fresh.load_state_dict(f)
    group = fresh.param_groups[0]
    assert group["lr"] == np.float32(0.01) and group["betas"][0] == np.float32(0.8)
    assert bool(group["amsgrad"]) is True
    assert_same_state(fresh, snapshot(opt), groups=False)


def test_state_dict_is_a_copy(rng):
    p = random_array(rng, (17,), np.float32)
    opt = optim.Adam([p])
    opt.step([random_array(rng, (17,), np.float32)])
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"][...] = 5.0
    sd["param_groups"][0]["lr"] = 9.0
    assert not np.any(opt.state_dict()["state"][0]["exp_avg"] == 5.0)
    assert opt.param_groups[0]["lr"] == 1e-3


def test_state_dict_layout_matches_torch(rng):
    ps = [random_array(rng, (3,), np.float64) for _ in range(3)]
    opt = optim.Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.1}], amsgrad=True)
    opt.step([random_array(rng, (3,), np.float64), None, random_array(rng, (3,), np.float64)])
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 2]
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1, 2]]
    assert sd["param_groups"][1]["lr"] == 0.1 and sd["param_groups"][0]["lr"] == 1e-3


def test_load_state_dict_rejects_mismatch_and_changes_nothing(rng):
    ps = [random_array(rng, (5,), np.float32), random_array(rng, (3,), np.float32)]
    opt = optim.Adam(ps, lr=0.01)
    opt.step(random_grads(rng, ps))
    good = opt.state_dict()
    snap = snapshot(opt)
    bad_shape = opt.state_dict()
    bad_shape["state"][1]["exp_avg"] = np.zeros(4, np.float32)
    bad_dtype = opt.state_dict()
    bad_dtype["state"][1]["exp_avg"] = good["state"][1]["exp_avg"].astype(np.float64)
    bad_groups = opt.state_dict()
    bad_groups["param_groups"] = bad_groups["param_groups"] * 2
    bad_lr = opt.state_dict()
    bad_lr["param_groups"][0]["lr"] = -1.0
    for bad, exc in ((bad_shape, ValueError), (bad_dtype, ValueError), (bad_groups, ValueError),
                     (bad_lr, ValueError), ({"state": {}}, TypeError)):
        with pytest.raises(exc):
            opt.load_state_dict(bad)
        assert_same_state(opt, snap)


# ---- 6. groups, lr changes, None grads, found_inf --------------------------------------------

@pytest.mark.parametrize("algo", ALGOS)
def test_param_groups_lr_change_and_none_grads(algo, rng):
    """Two groups (float32 and float64) with different hyperparameters, hyperparameters edited
    between steps, and None gradients: a skipped parameter keeps its step count and state, so
    tensors end at different step numbers (Adam's bias correction, Adagrad's lr decay and SGD's
    first momentum step depend on it)."""
    g0 = [random_array(rng, s, np.float32) for s in ((7,), (17,), (1,))]
    g1 = [random_array(rng, s, np.float64) for s in ((16,), (4, 16))]
    second = dict(FULL[algo], lr=BASE[algo]["lr"] * 2)
    opt = CLASSES[algo]([{"params": g0}, {"params": g1, **second}], **BASE[algo])
    params = g0 + g1
    ref = RefOptimizer(algo, params)
    skip = {0: {4}, 1: {1, 2}, 2: {0, 1, 2, 3, 4, 5, 6, 7}, 3: {0}, 4: set()}
    for k in range(8):
        if k == 3:
            opt.param_groups[0]["lr"] *= 0.5
            opt.param_groups[1]["weight_decay"] = 0.1
        if k == 5:
            opt.param_groups[1]["lr"] = 0.3 * BASE[algo]["lr"]
            opt.param_groups[0]["maximize"] = True
        grads = [None if k in skip[i] else g for i, g in enumerate(random_grads(rng, params))]
        ref.step(grads, param_hypers(opt))
        opt.step(grads)
        check_against(opt, ref, k + 1, what=f"step {k + 1}: ")
    assert ref.steps == [7, 6, 0, 7, 8]
    assert 2 not in opt.state_dict()["state"]
    assert_bitwise(params[2], g0[2], "never-stepped param")


def test_sgd_momentum_enabled_between_steps(rng):
    """torch: a momentum buffer is created from the gradient at the first step with momentum."""
    ps = [random_array(rng, (17,), np.float64), random_array(rng, (5,), np.float64)]
    opt = optim.SGD(ps, lr=0.1)
    ref = RefOptimizer("sgd", ps)
    for k in range(6):
        if k == 2:
            opt.param_groups[0].update(momentum=0.9, dampening=0.2)
        grads = random_grads(rng, ps)
        ref.step(grads, param_hypers(opt))
        opt.step(grads)
        for i, p in enumerate(ps):
            assert_close(p, ref.params[i], np.float64, steps=k + 1, what=f"step {k} params[{i}]")


@pytest.mark.parametrize("algo", ALGOS)
def test_found_inf_skips_the_step(algo, rng):
    ps = [random_array(rng, s, np.float32) for s in ((7,), (33,), (16,))]
    twin = [p.copy() for p in ps]
    opt = CLASSES[algo](ps, **FULL[algo])
    opt_twin = CLASSES[algo](twin, **FULL[algo])
    for k in range(6):
        grads = random_grads(rng, ps)
        if k in (2, 4):
            grads[-1][-1] = np.inf if k == 2 else np.nan
            flag = optim.found_inf(grads)
            assert flag is True
            snap = snapshot(opt)
            opt.step(grads, found_inf=flag)
            assert_same_state(opt, snap, f"step {k} with found_inf: ")
            opt.step(grads, found_inf=np.bool_(True))
            opt.step(grads, found_inf=1)
            assert_same_state(opt, snap, f"step {k} with truthy found_inf: ")
            continue
        assert optim.found_inf(grads) is False
        opt.step([g.copy() for g in grads], found_inf=False)
        opt_twin.step(grads)
    assert_same_state(opt, snapshot(opt_twin))


# ---- 7. clipping, norms, found_inf -----------------------------------------------------------

NORM_TYPES = [1, 2, 3, math.inf, "inf", 2.5]


def _norm_grads(rng, dtype):
    shapes = ((17,), (0,), (64,), (1,), (5, 20), (16,))
    grads = [random_array(rng, s, dtype, scale=10.0 ** rng.uniform(-2, 1)) for s in shapes]
    grads.insert(2, None)
    grads.append(None)
    return grads


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_norm_matches_reference(isa, norm_type, dtype, rng):
    grads = _norm_grads(rng, dtype)
    present = [g for g in grads if g is not None]
    n = sum(g.size for g in present)
    p = math.inf if norm_type == "inf" else norm_type
    got = optim.global_norm(grads, norm_type)
    assert isinstance(got, float)
    # accumulated in double: float64 tolerance even for float32 input
    assert_close(got, R.global_norm(present, p), np.float64, length=n, what=f"norm p={norm_type}")
    assert optim.global_norm([], norm_type) == 0.0


def test_global_norm_accumulates_in_double():
    """Squares of 1e30 overflow float32 but not the double accumulator."""
    g = [np.full(1000, 1e30, np.float32), np.full(3, -2e30, np.float32)]
    assert_close(optim.global_norm(g), R.global_norm(g), np.float64, length=1003)
    assert_close(optim.global_norm(g, 3), R.global_norm(g, 3), np.float64, length=1003)


@pytest.mark.parametrize("norm_type", [1, 2, 3, math.inf])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clips", [True, False], ids=["clipping", "not-clipping"])
def test_clip_grad_norm_matches_reference(norm_type, dtype, clips, rng):
    grads = _norm_grads(rng, dtype)
    present = [g for g in grads if g is not None]
    before = [g.copy() for g in present]
    total = R.global_norm(present, norm_type)
    max_norm = 0.3 * total if clips else 2.0 * total
    got = optim.clip_grad_norm_(grads, max_norm, norm_type)
    want_grads, want = R.clip_grad_norm(before, max_norm, norm_type)
    n = sum(g.size for g in present)
    assert_close(got, want, np.float64, length=n, what="returned norm (before clipping)")
    for i, (g, w) in enumerate(zip(present, want_grads)):
        assert_close(g, w, dtype, what=f"clipped grads[{i}]")
        if not clips:  # coef is exactly 1.0
            assert_bitwise(g, before[i], f"unclipped grads[{i}]")
    if clips:  # coef = max_norm / (total + 1e-6)
        assert_close(R.global_norm(present, norm_type), max_norm * total / (total + 1e-6), dtype,
                     length=n, what="norm after clipping")


def test_clip_grad_norm_single_array_and_types(rng):
    g = random_array(rng, (100,), np.float64, scale=3.0)
    want_g, want = R.clip_grad_norm([g], 1.0)
    got = optim.clip_grad_norm_(g, 1.0)
    assert isinstance(got, float)
    assert_close(got, want, np.float64, length=100)
    assert_close(g, want_g[0], np.float64)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("norm_type", [2, math.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_norm_nonfinite(bad, norm_type, dtype, rng):
    grads = _norm_grads(rng, dtype)
    present = [g for g in grads if g is not None]
    present[-1][-1] = bad
    before = [g.copy() for g in present]
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm_(grads, 1.0, norm_type, error_if_nonfinite=True)
    for i, (g, b) in enumerate(zip(present, before)):
        assert_bitwise(g, b, f"grads[{i}] after the error")
    # without the check: torch multiplies anyway (by 0 for an inf norm, by NaN for a NaN norm)
    got = optim.clip_grad_norm_(grads, 1.0, norm_type)
    with np.errstate(invalid="ignore", over="ignore"):
        want_grads, want = R.clip_grad_norm(before, 1.0, norm_type)
    assert (math.isnan(got) and math.isnan(want)) or got == want, (got, want)
    for i, (g, w) in enumerate(zip(present, want_grads)):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"NaNs of grads[{i}]")
        np.testing.assert_allclose(g, w, rtol=2e-5 if dtype == np.float32 else 1e-12, atol=0,
                                   equal_nan=True, err_msg=f"grads[{i}]")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
def test_found_inf_every_position(isa, threads, dtype, bad, rng):
    finfo = np.finfo(dtype)
    shapes = ((17,), (0,), (64,), (1,), (40_000,))  # the last one is split across threads
    grads = [random_array(rng, s, dtype) for s in shapes]
    grads[2][5] = finfo.max  # extreme finite values are not "inf"
    grads[2][6] = -finfo.max
    grads[2][7] = finfo.tiny / 4  # subnormal
    listed = grads[:3] + [None] + grads[3:]
    assert optim.found_inf(listed) is False
    for ai, a in enumerate(grads):
        flat = a.reshape(-1)
        for ei in sorted({0, flat.size // 2, flat.size - 1} if flat.size else set()):
            keep = flat[ei]
            flat[ei] = bad
            assert optim.found_inf(listed) is True, f"{bad} at grads[{ai}][{ei}] not found"
            flat[ei] = keep
    assert optim.found_inf(listed) is False
    assert optim.found_inf([]) is False
    assert optim.found_inf([None]) is False


@pytest.mark.parametrize("norm_type", [0, -1, -math.inf, math.nan, "two", "-inf"])
def test_norm_type_rejected(norm_type, rng):
    g = [random_array(rng, (5,), np.float32)]
    before = g[0].copy()
    exc = (TypeError, ValueError) if isinstance(norm_type, str) else ValueError
    with pytest.raises(exc, match="norm_type"):
        optim.global_norm(g, norm_type)
    with pytest.raises(exc, match="norm_type"):
        optim.clip_grad_norm_(g, 1.0, norm_type)
    assert_bitwise(g[0], before)


def test_norms_reject_bad_arrays(rng):
    ok = random_array(rng, (8,), np.float32)
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        optim.global_norm([ok, np.ones((4, 4), np.float32)[:, ::2]])
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        optim.global_norm([ok, np.ones(3, np.int32)])
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        optim.found_inf([ok, [1.0, 2.0]])
    ro = random_array(rng, (8,), np.float32)
    ro.flags.writeable = False
    before = ok.copy()
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        optim.clip_grad_norm_([ok, ro], 1e-3)
    assert_bitwise(ok, before, "clip_grad_norm_ touched a gradient before failing")


# ---- 8. bad input ----------------------------------------------------------------------------

BAD_SHAPES = ((7,), (17,), (4, 16), (17,))  # params[1] and params[3] share a shape


def _trained(algo, rng, dtype=np.float32, **extra):
    ps = [random_array(rng, s, dtype) for s in BAD_SHAPES]
    opt = CLASSES[algo](ps, **dict(FULL[algo], **extra))
    for _ in range(2):
        opt.step(random_grads(rng, ps))
    return opt, ps


def _bad_last(kind, ps, grads):
    """Gradients with the LAST one (or the list) wrong in the way `kind` names."""
    g = list(grads)
    last = ps[-1]
    if kind == "too-few":
        return g[:-1]
    if kind == "too-many":
        return g + [g[0].copy()]
    if kind == "shape":
        g[-1] = np.ones(18, last.dtype)
    elif kind == "shape-2d":
        g[2] = np.ones((16, 4), last.dtype)  # same size, other shape (params[2] is (4, 16))
    elif kind == "shape-flat":
        g[2] = np.ones(64, last.dtype)
    elif kind == "float64":
        g[-1] = g[-1].astype(np.float64)
    elif kind == "int32":
        g[-1] = np.ones(last.shape, np.int32)
    elif kind == "int64":
        g[-1] = np.ones(last.shape, np.int64)
    elif kind == "float16":
        g[-1] = g[-1].astype(np.float16)
    elif kind == "big-endian":
        g[-1] = g[-1].astype(">f4")
    elif kind == "strided":
        g[-1] = np.repeat(g[-1], 2)[::2]
    elif kind == "fortran":
        g[2] = np.asfortranarray(np.ones((4, 16), last.dtype))
    elif kind == "list":
        g[-1] = g[-1].tolist()
    elif kind == "scalar":
        g[-1] = 1.0
    elif kind == "alias-self":
        g[-1] = ps[-1]
    elif kind == "alias-other":
        g[-1] = ps[1]
    elif kind == "alias-view":
        g[-1] = ps[-1][::-1][::-1]  # a different object over the same memory
    else:
        raise AssertionError(kind)
    return g


BAD_GRADS = [
    ("too-few", ValueError, r"^grads"), ("too-many", ValueError, r"^grads"),
    ("shape", ValueError, r"^grads\[3\]"), ("shape-2d", ValueError, r"^grads\[2\]"),
    ("shape-flat", ValueError, r"^grads\[2\]"),
    ("float64", TypeError, r"^grads\[3\]"), ("int32", TypeError, r"^grads\[3\]"),
    ("int64", TypeError, r"^grads\[3\]"), ("float16", TypeError, r"^grads\[3\]"),
    ("big-endian", TypeError, r"^grads\[3\]"),
    ("strided", ValueError, r"^grads\[3\]"), ("fortran", ValueError, r"^grads\[2\]"),
    ("list", TypeError, r"^grads\[3\]"), ("scalar", TypeError, r"^grads\[3\]"),
    ("alias-self", ValueError, r"^grads\[3\]"), ("alias-other", ValueError, r"^grads\[3\]"),
    ("alias-view", ValueError, r"^grads\[3\]"),
]


@pytest.mark.parametrize("kind,exc,match", BAD_GRADS, ids=[b[0] for b in BAD_GRADS])
@pytest.mark.parametrize("algo", ALGOS)
def test_bad_grads_change_nothing(algo, kind, exc, match, rng):
    opt, ps = _trained(algo, rng)
    grads = random_grads(rng, ps)
    bad = _bad_last(kind, ps, grads)
    snap = snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.step(bad)
    assert_same_state(opt, snap, f"after {kind}: ")
    opt.step(grads)  # still usable
    assert not np.array_equal(ps[0], snap[0][0])


@pytest.mark.parametrize("algo", ALGOS)
def test_grads_that_are_not_a_list_are_a_type_error_naming_grads(algo, rng):
    """A single ndarray (not a list of them) is refused as such, not counted as a sequence of its
    rows ("expected 1 gradients, got 3"); nor is anything else that is not a list or sequence."""
    opt, ps = _trained(algo, rng)
    snap = snapshot(opt)
    for bad in (random_grads(rng, ps)[0], np.ones((4, 16), np.float32), None, 3, "grads",
                iter(random_grads(rng, ps)), {i: g for i, g in enumerate(random_grads(rng, ps))}):
        with pytest.raises(TypeError, match=r"^grads: expected a list \(or sequence\) of arrays") as info:
            opt.step(bad)
        assert_same_state(opt, snap, f"after {type(bad).__name__}: ")
        if isinstance(bad, np.ndarray):
            assert "single ndarray" in str(info.value)
    # one parameter, one gradient: its rows must not pass for a list of gradients either
    p = random_array(rng, (3,), np.float32)
    one = CLASSES[algo]([p], **FULL[algo])
    with pytest.raises(TypeError, match=r"^grads: .*single ndarray"):
        one.step(np.ones((1, 3), np.float32))
    one.step(tuple(random_grads(rng, [p])))  # a tuple is a sequence: accepted
    with pytest.raises(TypeError, match=r"^grads: .*single ndarray"):
        F.sgd_([p], np.ones(3, np.float32), None, step=1, lr=0.1)


def test_schedulers_are_exported_by_a_plain_import():
    """cnnkit.optim imports its schedulers directly (no ImportError guard hiding a broken module)."""
    from cnnkit.optim import lr_scheduler
    assert set(lr_scheduler.__all__) <= set(optim.__all__)
    for name in optim.__all__:
        assert hasattr(optim, name), name
    assert optim.StepLR is lr_scheduler.StepLR
    import inspect
    assert "ImportError" not in inspect.getsource(optim)


def test_grad_overlapping_part_of_a_param_is_rejected(rng):
    """Parameters carved from one buffer; a gradient straddling the gap between two of them."""
    buf = random_array(rng, (60,), np.float32)
    p0, p1 = buf[:17], buf[20:37]
    opt = optim.SGD([p0, p1], lr=0.1, momentum=0.9)
    opt.step(random_grads(rng, [p0, p1]))
    snap = snapshot(opt)
    # p0 = [0, 17), p1 = [20, 37): [10, 27) spans both, [30, 47) holds the end of p1, [17, 34)
    # the start of p1, [3, 20) the end of p0, [0, 17) is p0
    for lo in (10, 30, 17, 3, 0):
        g1 = buf[lo:lo + 17]
        with pytest.raises(ValueError, match=r"^grads\[1\]"):
            opt.step([random_array(rng, (17,), np.float32), g1])
        assert_same_state(opt, snap, f"grad at [{lo}, {lo + 17}): ")
    buf[37:54] = 1.0
    opt.step([np.ones(17, np.float32), buf[37:54]])  # right after p1: touching is not sharing


def test_grad_aliasing_functional_state_is_rejected(rng):
    ps = [random_array(rng, (17,), np.float32), random_array(rng, (9,), np.float32)]
    m = [np.full_like(p, 0.1) for p in ps]
    v = [np.full_like(p, 0.2) for p in ps]
    before = [a.copy() for a in ps + m + v]
    for bad in (m[0], v[1][::-1][::-1]):
        grads = [random_array(rng, (17,), np.float32), random_array(rng, (9,), np.float32)]
        grads[0 if bad.size == 17 else 1] = bad
        with pytest.raises(ValueError, match=r"^grads\[[01]\]"):
            F.adam_(ps, grads, m, v, step=1, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8)
        for i, (a, b) in enumerate(zip(ps + m + v, before)):
            assert_bitwise(a, b, f"array {i}")


@pytest.mark.parametrize("algo", ALGOS)
def test_bad_params_at_construction(algo, rng):
    cls = CLASSES[algo]
    good = [random_array(rng, (7,), np.float32), random_array(rng, (16,), np.float32)]
    ro = random_array(rng, (5,), np.float32)
    ro.flags.writeable = False
    cases = [
        ([good[0], np.ones((4, 6), np.float32)[:, ::2]], ValueError, r"^params\[1\]"),
        ([good[0], np.asfortranarray(np.ones((3, 4), np.float32))], ValueError, r"^params\[1\]"),
        ([good[0], ro], ValueError, r"^params\[1\]"),
        ([good[0], np.ones(4, np.int64)], TypeError, r"^params\[1\]"),
        ([good[0], np.ones(4, np.int32)], TypeError, r"^params\[1\]"),
        ([good[0], np.ones(4, np.float16)], TypeError, r"^params\[1\]"),
        ([good[0], [1.0, 2.0]], TypeError, r"^params\[1\]"),
        ([], ValueError, r"^params"),
        ([{"params": []}], ValueError, r"params"),
        (good[0], TypeError, r"^params"),
        ([good[0], good[1].astype(np.float64)], TypeError, r"^params"),
        ([good[0], good[1], good[0]], ValueError, r"^params\[2\]"),
        ([{"params": [good[0]]}, {"params": [good[1], good[0]]}], ValueError, r"^params\[2\]"),
        ([good[0], good[0][::-1][::-1]], ValueError, r"params\[[01]\]"),
        ([good[0], good[0][2:5]], ValueError, r"params\[[01]\]"),
    ]
    before = [a.copy() for a in good]
    for params, exc, match in cases:
        with pytest.raises(exc, match=match):
            cls(params, **BASE[algo])
    for a, b in zip(good, before):
        assert_bitwise(a, b)
    # mixed dtypes across groups are fine
    cls([{"params": [good[0]]}, {"params": [good[1].astype(np.float64)]}], **BASE[algo])


def _bad_hypers(algo):
    out = [(dict(lr=-0.1), ValueError, r"^lr"), (dict(lr=math.nan), ValueError, r"^lr"),
           (dict(lr="0.1"), TypeError, r"^lr"),
           (dict(weight_decay=-1e-3), ValueError, r"^weight_decay"),
           (dict(maximize="yes"), TypeError, r"^maximize")]
    if algo != "sgd":
        out += [(dict(eps=-1e-8), ValueError, r"^eps"), (dict(eps=math.nan), ValueError, r"^eps")]
    if algo == "sgd":
        out += [(dict(momentum=0.0, nesterov=True), ValueError, r"^nesterov"),
                (dict(momentum=0.9, dampening=0.1, nesterov=True), ValueError, r"^nesterov"),
                (dict(momentum=-0.5), ValueError, r"^momentum"),
                (dict(nesterov=1), TypeError, r"^nesterov")]
    if algo == "adagrad":
        out += [(dict(lr_decay=-0.1), ValueError, r"^lr_decay")]
    if algo == "rmsprop":
        out += [(dict(alpha=1.0), ValueError, r"^alpha"), (dict(alpha=-0.1), ValueError, r"^alpha"),
                (dict(alpha=math.nan), ValueError, r"^alpha"),
                (dict(momentum=-0.1), ValueError, r"^momentum")]
    if algo == "adadelta":
        out += [(dict(rho=1.0), ValueError, r"^rho"), (dict(rho=-0.1), ValueError, r"^rho"),
                (dict(rho=1.5), ValueError, r"^rho")]
    if algo in ("adam", "adamw"):
        out += [(dict(betas=(1.0, 0.999)), ValueError, r"^betas\[0\]"),
                (dict(betas=(-0.1, 0.999)), ValueError, r"^betas\[0\]"),
                (dict(betas=(0.9, 1.0)), ValueError, r"^betas\[1\]"),
                (dict(betas=(0.9, 1.5)), ValueError, r"^betas\[1\]"),
                (dict(betas=(0.9, math.nan)), ValueError, r"^betas\[1\]"),
                (dict(betas=(0.9,)), TypeError, r"^betas")]
    return out


BAD_HYPERS = [pytest.param(a, h, e, m, id=f"{a}-{'-'.join(f'{k}={v}' for k, v in h.items())}")
              for a in ALGOS for h, e, m in _bad_hypers(a)]


@pytest.mark.parametrize("algo,bad,exc,match", BAD_HYPERS)
def test_bad_hyperparameters(algo, bad, exc, match, rng):
    ps = [random_array(rng, s, np.float32) for s in BAD_SHAPES]
    before = [p.copy() for p in ps]
    with pytest.raises(exc, match=match):
        CLASSES[algo](ps, **dict(BASE[algo], **bad))
    with pytest.raises(exc, match=match):  # in a later group
        CLASSES[algo]([{"params": ps[:2]}, {"params": ps[2:], **bad}], **BASE[algo])
    for p, b in zip(ps, before):
        assert_bitwise(p, b)
    # set in param_groups between steps: the next step raises and changes nothing
    opt = CLASSES[algo]([{"params": ps[:2]}, {"params": ps[2:]}], **BASE[algo])
    opt.step(random_grads(rng, ps))
    snap = snapshot(opt)
    saved = dict(opt.param_groups[1])
    opt.param_groups[1].update(bad)
    with pytest.raises(exc, match=match):
        opt.step(random_grads(rng, ps))
    assert_same_state(opt, snap, groups=False)
    opt.param_groups[1].clear()
    opt.param_groups[1].update(saved)
    opt.step(random_grads(rng, ps))  # usable again
    assert opt.state_dict()["state"][3]["step"] == 2


def test_bad_grad_after_enabling_momentum_changes_nothing(rng):
    """Switching SGD momentum on between steps and then passing a bad gradient must leave the
    optimizer as it was (state_dict included), like any other rejected step."""
    ps = [random_array(rng, s, np.float32) for s in BAD_SHAPES]
    opt = optim.SGD(ps, lr=0.1)
    for _ in range(2):
        opt.step(random_grads(rng, ps))
    opt.param_groups[0]["momentum"] = 0.9
    snap = snapshot(opt)
    bad = random_grads(rng, ps)
    bad[-1] = bad[-1].astype(np.float64)
    with pytest.raises(TypeError, match=r"^grads\[3\]"):
        opt.step(bad)
    assert_same_state(opt, snap)


def test_add_param_group_rejects_duplicates_and_changes_nothing(rng):
    p0, p1 = random_array(rng, (7,), np.float32), random_array(rng, (9,), np.float32)
    opt = optim.Adam([p0], lr=0.01)
    opt.step([random_array(rng, (7,), np.float32)])
    snap = snapshot(opt)
    for bad, exc in (({"params": [p1, p0]}, ValueError), ({"params": [p1], "lr": -1.0}, ValueError),
                     ({"params": [p1], "nope": 1}, ValueError),
                     ({"params": [p1.astype(np.int32)]}, TypeError),
                     ({"params": [p1, p0[::-1][::-1]]}, ValueError)):  # p0's memory, another object
        with pytest.raises(exc):
            opt.add_param_group(bad)
        assert len(opt.param_groups) == 1 and len(opt.parameters()) == 1
        assert_same_state(opt, snap)
    opt.step([random_array(rng, (7,), np.float32)])  # still a one-parameter optimizer
    opt.add_param_group({"params": [p1], "lr": 0.1})
    opt.step(random_grads(rng, [p0, p1]))
    assert opt.state_dict()["state"][1]["step"] == 1


def test_read_only_param_at_step_changes_nothing(rng):
    ps = [random_array(rng, s, np.float32) for s in BAD_SHAPES]
    opt = optim.Adam(ps, lr=0.01)
    opt.step(random_grads(rng, ps))
    snap = snapshot(opt)
    ps[-1].flags.writeable = False
    with pytest.raises(ValueError, match=r"^params\[3\]"):
        opt.step(random_grads(rng, ps))
    assert_same_state(opt, snap)


FUNCTIONAL_BAD = [
    ("too-few-grads", ValueError, r"^grads"),
    ("none-grad", TypeError, r"^grads"),
    ("missing-state", ValueError, r"^momentum_buffer"),
    ("state-shape", ValueError, r"^momentum_buffers\[1\]"),
    ("state-dtype", ValueError, r"^momentum_buffers\[1\]"),
    ("state-list-length", ValueError, r"^momentum_buffer"),
    ("step-0", ValueError, r"^step"),
    ("step-list-length", TypeError, r"^step"),
    ("step-bool", TypeError, r"^step"),
    ("lr", ValueError, r"^lr"),
    ("grad-dtype", TypeError, r"^grads\[1\]"),
    ("grad-alias-state", ValueError, r"^grads\[1\]"),
    ("state-alias-param", ValueError, r"params\[[01]\]|momentum_buffer"),
]


@pytest.mark.parametrize("kind,exc,match", FUNCTIONAL_BAD, ids=[c[0] for c in FUNCTIONAL_BAD])
def test_functional_bad_input_changes_nothing(kind, exc, match, rng):
    ps = [random_array(rng, (7,), np.float32), random_array(rng, (17,), np.float32)]
    bufs = [random_array(rng, p.shape, np.float32) for p in ps]
    grads = random_grads(rng, ps)
    kw = dict(step=2, lr=0.1, momentum=0.9)
    before = [a.copy() for a in ps + bufs]
    args = [ps, grads, bufs]
    if kind == "too-few-grads":
        args[1] = grads[:1]
    elif kind == "none-grad":
        args[1] = [grads[0], None]
    elif kind == "missing-state":
        args[2] = None
    elif kind == "state-shape":
        args[2] = [bufs[0], np.zeros(16, np.float32)]
    elif kind == "state-dtype":
        args[2] = [bufs[0], bufs[1].astype(np.float64)]
    elif kind == "state-list-length":
        args[2] = bufs[:1]
    elif kind == "step-0":
        kw["step"] = 0
    elif kind == "step-list-length":
        kw["step"] = [1, 2, 3]
    elif kind == "step-bool":
        kw["step"] = True
    elif kind == "lr":
        kw["lr"] = -1.0
    elif kind == "grad-dtype":
        args[1] = [grads[0], grads[1].astype(np.float64)]
    elif kind == "grad-alias-state":
        args[1] = [grads[0], bufs[1]]
    elif kind == "state-alias-param":
        args[2] = [bufs[0], ps[1]]
    with pytest.raises(exc, match=match):
        F.sgd_(*args, **kw)
    for i, (a, b) in enumerate(zip(ps + bufs, before)):
        assert_bitwise(a, b, f"array {i}")


# ---- 10. build info and threads ----------------------------------------------------------------

def test_build_info():
    info = cnnkit.build_info()
    for key in ("version", "compiler", "isa_compiled", "isa", "openmp", "num_threads",
                "cuda_compiled", "cuda_devices"):
        assert key in info, key
    assert info["version"] == cnnkit.__version__
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert "scalar" in info["isa_compiled"]
    assert set(info["isa_compiled"]) <= {"scalar", "avx2", "avx512"}
    assert info["isa"] in info["isa_compiled"]
    assert info["num_threads"] == cnnkit.get_num_threads() >= 1
    assert isinstance(info["openmp"], bool) and isinstance(info["cuda_compiled"], bool)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    if not info["cuda_compiled"]:
        assert info["cuda_devices"] == 0
    with isa_level("scalar"):
        assert cnnkit.build_info()["isa"] == "scalar"
    with num_threads(1):
        assert cnnkit.build_info()["num_threads"] == 1


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                     (True, TypeError), ("2", TypeError), (None, TypeError)])
def test_set_num_threads_rejects(bad, exc):
    before = cnnkit.get_num_threads()
    with pytest.raises(exc, match="^n"):
        cnnkit.set_num_threads(bad)
    assert cnnkit.get_num_threads() == before


def test_set_num_threads_round_trip():
    with num_threads(1):
        assert cnnkit.get_num_threads() == 1
        cnnkit.set_num_threads(np.int64(2))
        assert cnnkit.get_num_threads() == 2


@pytest.mark.parametrize("key,value", [("lr", float("inf")), ("eps", float("inf")),
                                       ("weight_decay", float("inf")), ("lr", float("nan"))])
def test_non_finite_hyperparameters_rejected_before_any_update(key, value, rng):
    p = rng.standard_normal(20).astype(np.float32)
    before = p.copy()
    with pytest.raises(ValueError, match=key):
        cnnkit.optim.Adam([p], **{key: value})
    opt = cnnkit.optim.Adam([p], lr=1e-2)
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=key):
        opt.step([rng.standard_normal(20).astype(np.float32)])
    np.testing.assert_array_equal(p, before)
    assert opt.state_dict()["state"] == {}
