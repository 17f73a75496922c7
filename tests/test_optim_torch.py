"""cnnkit.optim against torch.optim itself (skipped when torch is not installed).

Twenty steps per algorithm and flag combination, in float64 (tight) and float32 (the float32
tolerance of conftest.TOL, widened with the step count), parameter groups with hyperparameters
edited between steps and None gradients, and clip_grad_norm_ against
torch.nn.utils.clip_grad_norm_. torch runs its single-tensor code path (foreach=False).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from cnnkit import optim
from conftest import assert_close
from reference import optim as R
# shared cases only (no test functions: those would be collected twice)
from test_optim import ALGOS, BASE, CLASSES, COMBOS, FULL, random_array, random_grads

torch = pytest.importorskip("torch")

TORCH = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop,
         "adadelta": torch.optim.Adadelta, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
STEPS = 20
SHAPES = ((7,), (16,), (17,), (4, 16), (1,))


def torch_params(params):
    return [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]


def set_grads(tparams, grads):
    for tp, g in zip(tparams, grads):
        tp.grad = None if g is None else torch.from_numpy(g.copy())


def compare(opt, topt, tparams, dtype, steps, what):
    sd = opt.state_dict()["state"]
    for i, (p, tp) in enumerate(zip(opt.parameters(), tparams)):
        assert_close(p, tp.detach().numpy(), dtype, steps=steps, what=f"{what}params[{i}]")
        tstate = topt.state.get(tp, {})
        if i not in sd:  # no step taken (torch's Adagrad creates its state eagerly, at step 0)
            assert int(tstate.get("step", 0)) == 0, f"{what}torch stepped params[{i}]"
            continue
        for name, value in tstate.items():
            if name == "step":
                assert sd[i]["step"] == int(value), f"{what}state[{i}]['step']"
            elif value is not None and name in sd[i]:
                assert_close(sd[i][name], value.numpy(), dtype, steps=steps,
                             what=f"{what}state[{i}][{name!r}]")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("algo,hyper", COMBOS)
def test_matches_torch(algo, hyper, dtype, rng):
    params = [random_array(rng, s, dtype) for s in SHAPES]
    tparams = torch_params(params)
    opt = CLASSES[algo](params, **hyper)
    topt = TORCH[algo](tparams, foreach=False, **hyper)
    for k in range(1, STEPS + 1):
        grads = random_grads(rng, params)
        set_grads(tparams, grads)
        topt.step()
        opt.step(grads)
        compare(opt, topt, tparams, dtype, k, f"{algo} {np.dtype(dtype).name} step {k}: ")


@pytest.mark.parametrize("algo", ALGOS)
def test_param_groups_match_torch(algo, rng):
    """Two groups with different hyperparameters, lr and other options edited between steps,
    and a parameter whose gradient is None on some steps (torch skips it too)."""
    dtype = np.float64
    params = [random_array(rng, s, dtype) for s in SHAPES]
    tparams = torch_params(params)
    second = dict(FULL[algo], lr=2 * BASE[algo]["lr"])
    defaults = dict(BASE[algo])
    if algo == "adagrad":
        # torch fills every group's 'sum' with the constructor's initial_accumulator_value and
        # ignores a group's own (cnnkit uses the group's, see test_optim); keep them equal here
        defaults["initial_accumulator_value"] = second["initial_accumulator_value"]
    opt = CLASSES[algo]([{"params": params[:2]}, {"params": params[2:], **second}], **defaults)
    topt = TORCH[algo]([{"params": tparams[:2]}, {"params": tparams[2:], **second}],
                       foreach=False, **defaults)
    for k in range(1, STEPS + 1):
        if k == 8:
            for groups in (opt.param_groups, topt.param_groups):
                groups[0]["lr"] *= 0.5
                groups[1]["weight_decay"] = 0.02
        if k == 14:
            for groups in (opt.param_groups, topt.param_groups):
                groups[1]["lr"] = 0.3 * BASE[algo]["lr"]
                groups[0]["maximize"] = True
        grads = random_grads(rng, params)
        if k in (1, 2, 9):
            grads[1] = None
        if k == 5:
            grads[4] = None
        set_grads(tparams, grads)
        topt.step()
        opt.step(grads)
        compare(opt, topt, tparams, dtype, k, f"{algo} step {k}: ")


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("clips", [True, False], ids=["clipping", "not-clipping"])
def test_clip_grad_norm_matches_torch(norm_type, dtype, clips, rng):
    shapes = ((17,), (64,), (1,), (5, 20), (16,))
    grads = [random_array(rng, s, dtype, scale=10.0 ** rng.uniform(-2, 1)) for s in shapes]
    grads.insert(2, None)
    tparams = [torch.nn.Parameter(torch.zeros(g.shape if g is not None else (3,),
                                              dtype=torch.float64 if dtype == np.float64
                                              else torch.float32)) for g in grads]
    set_grads(tparams, grads)
    n = sum(g.size for g in grads if g is not None)
    total = R.global_norm([g for g in grads if g is not None], norm_type)
    max_norm = (0.3 if clips else 2.0) * total
    want = float(torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type, foreach=False))
    got = optim.clip_grad_norm_(grads, max_norm, norm_type)
    # torch reduces float32 in float32, cnnkit in double: the float32 tolerance covers both
    assert_close(got, want, dtype, length=n, what="total norm")
    for i, (g, tp) in enumerate(zip(grads, tparams)):
        if g is not None:
            assert_close(g, tp.grad.numpy(), dtype, what=f"grads[{i}]")


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_clip_error_if_nonfinite_like_torch(bad, rng):
    grads = [random_array(rng, (9,), np.float32), random_array(rng, (5,), np.float32)]
    grads[1][-1] = bad
    tparams = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    set_grads(tparams, grads)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(tparams, 1.0, error_if_nonfinite=True, foreach=False)
    before = [g.copy() for g in grads]
    with pytest.raises(RuntimeError):
        optim.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    for g, b, tp in zip(grads, before, tparams):
        np.testing.assert_array_equal(g, b)
        np.testing.assert_array_equal(tp.grad.numpy(), b)
