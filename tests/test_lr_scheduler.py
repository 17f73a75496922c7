"""Tests for cnnkit.optim.lr_scheduler.

Layers: closed-form expectations over hypothesis-drawn parameters, step-by-step
agreement with torch.optim.lr_scheduler (skipped without torch), state_dict
round trips, and argument validation.
"""

import copy
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnkit.optim import lr_scheduler as ls

SETTINGS = settings(max_examples=30, deadline=None)
REL = 1e-12  # agreement with torch's arithmetic: same formulas, rounding only


class FakeOptimizer:
    """Minimal duck-typed optimizer: ``param_groups`` as a list of dicts."""

    def __init__(self, lrs=(0.1, 0.03), **extra):
        self.param_groups = [dict(lr=lr, **copy.deepcopy(extra)) for lr in lrs]


def trajectory(sched, n_steps):
    """Learning rates at epochs 0..n_steps (one list per epoch)."""
    out = [sched.get_last_lr()]
    for _ in range(n_steps):
        sched.step()
        out.append(sched.get_last_lr())
    return out


def assert_close(actual, expected, rel=REL, abs_tol=0.0, what="lr"):
    assert len(actual) == len(expected), (len(actual), len(expected))
    for t, (a_row, e_row) in enumerate(zip(actual, expected)):
        a_row = a_row if isinstance(a_row, (list, tuple)) else [a_row]
        e_row = e_row if isinstance(e_row, (list, tuple)) else [e_row]
        assert len(a_row) == len(e_row)
        for g, (a, e) in enumerate(zip(a_row, e_row)):
            assert math.isclose(a, e, rel_tol=rel, abs_tol=abs_tol), (
                f"{what} at epoch {t}, group {g}: got {a!r}, expected {e!r}"
            )


lr_st = st.floats(1e-4, 1.0)
lrs_st = st.lists(lr_st, min_size=1, max_size=3)


# --------------------------------------------------------------------------
# construction semantics
# --------------------------------------------------------------------------


def test_construction_sets_initial_lr_and_epoch_zero():
    opt = FakeOptimizer((0.5, 0.2))
    sched = ls.StepLR(opt, step_size=3, gamma=0.5)
    assert sched.last_epoch == 0
    assert [g["initial_lr"] for g in opt.param_groups] == [0.5, 0.2]
    assert sched.base_lrs == [0.5, 0.2]
    lrs = sched.get_last_lr()
    assert lrs == [0.5, 0.2] and all(type(v) is float for v in lrs)
    # get_last_lr returns a copy
    lrs[0] = 123.0
    assert sched.get_last_lr() == [0.5, 0.2]


def test_existing_initial_lr_is_kept():
    opt = FakeOptimizer((0.5,))
    opt.param_groups[0]["initial_lr"] = 0.8
    sched = ls.ExponentialLR(opt, gamma=0.5)
    assert sched.base_lrs == [0.8]
    assert sched.get_last_lr() == [0.5]  # ExponentialLR's initial step leaves lr


def test_linear_initial_step_scales_lr():
    opt = FakeOptimizer((0.6,))
    ls.LinearLR(opt, start_factor=0.5, total_iters=4)
    assert math.isclose(opt.param_groups[0]["lr"], 0.3, rel_tol=1e-15)


def test_base_class_get_lr_is_abstract():
    with pytest.raises(NotImplementedError):
        ls.LRScheduler(FakeOptimizer())


def test_all_exports():
    assert set(ls.__all__) == {
        "LRScheduler",
        "StepLR",
        "ExponentialLR",
        "CosineAnnealingLR",
        "LinearLR",
        "OneCycleLR",
        "ExponentialRangeLR",
    }
    for name in ls.__all__:
        assert isinstance(getattr(ls, name), type)


# --------------------------------------------------------------------------
# closed forms
# --------------------------------------------------------------------------


@SETTINGS
@given(lrs=lrs_st, step_size=st.integers(1, 7), gamma=st.floats(0.05, 2.0),
       n=st.integers(1, 40))  # fmt: skip
def test_step_lr_closed_form(lrs, step_size, gamma, n):
    sched = ls.StepLR(FakeOptimizer(lrs), step_size=step_size, gamma=gamma)
    expected = [[b * gamma ** (t // step_size) for b in lrs] for t in range(n + 1)]
    assert_close(trajectory(sched, n), expected, rel=1e-13)


@SETTINGS
@given(lrs=lrs_st, gamma=st.floats(0.5, 1.2), n=st.integers(1, 60))
def test_exponential_lr_closed_form(lrs, gamma, n):
    sched = ls.ExponentialLR(FakeOptimizer(lrs), gamma=gamma)
    expected = [[b * gamma**t for b in lrs] for t in range(n + 1)]
    assert_close(trajectory(sched, n), expected, rel=1e-13)


@SETTINGS
@given(lrs=lrs_st, T_max=st.integers(1, 25), eta_frac=st.floats(0.0, 1.5),
       n=st.integers(1, 80))  # fmt: skip
def test_cosine_annealing_closed_form(lrs, T_max, eta_frac, n):
    eta_min = eta_frac * min(lrs)
    sched = ls.CosineAnnealingLR(FakeOptimizer(lrs), T_max=T_max, eta_min=eta_min)
    expected = [
        [eta_min + (b - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2 for b in lrs]
        for t in range(n + 1)
    ]
    # recursive update: rounding error accumulates in absolute terms
    assert_close(trajectory(sched, n), expected, rel=0.0, abs_tol=1e-12)


@SETTINGS
@given(lrs=lrs_st, start=st.floats(0.01, 1.0), end=st.floats(0.0, 1.0),
       total=st.integers(1, 12), n=st.integers(1, 30))  # fmt: skip
def test_linear_lr_closed_form(lrs, start, end, total, n):
    sched = ls.LinearLR(FakeOptimizer(lrs), start_factor=start, end_factor=end,
                        total_iters=total)  # fmt: skip
    expected = [
        [b * (start + (end - start) * min(t, total) / total) for b in lrs]
        for t in range(n + 1)
    ]
    assert_close(trajectory(sched, n), expected, rel=0.0, abs_tol=1e-13)


@SETTINGS
@given(lrs=lrs_st, start=st.floats(1e-7, 1e-2), end=st.floats(1e-3, 10.0),
       num_steps=st.integers(2, 60))  # fmt: skip
def test_exponential_range_closed_form(lrs, start, end, num_steps):
    opt = FakeOptimizer(lrs)
    sched = ls.ExponentialRangeLR(opt, start_lr=start, end_lr=end, num_steps=num_steps)
    traj = trajectory(sched, num_steps + 2)
    factor = (end / start) ** (1.0 / (num_steps - 1))
    expected = [[start * factor**t] * len(lrs) for t in range(num_steps + 3)]
    assert_close(traj, expected, rel=1e-11)
    assert traj[0] == [start] * len(lrs)  # exact endpoints
    assert traj[num_steps - 1] == [end] * len(lrs)
    assert [g["initial_lr"] for g in opt.param_groups] == lrs


def _anneal(strategy, a, b, p):
    if strategy == "cos":
        return b + (a - b) * (1 + math.cos(math.pi * p)) / 2
    return a + (b - a) * p


def one_cycle_reference(max_lr, total, pct, strategy, div, final_div, base_m, max_m,
                        three_phase):  # fmt: skip
    """(lr, momentum) at every step 0..total from the piecewise definition."""
    init = max_lr / div
    low = init / final_div
    p1 = pct * total - 1
    out = []
    for t in range(total + 1):
        if not three_phase:
            if t <= p1:
                f = t / p1
                out.append((_anneal(strategy, init, max_lr, f),
                            _anneal(strategy, max_m, base_m, f)))  # fmt: skip
            else:
                f = (t - p1) / (total - 1 - p1)
                out.append((_anneal(strategy, max_lr, low, f),
                            _anneal(strategy, base_m, max_m, f)))  # fmt: skip
        else:
            p2 = 2 * pct * total - 2
            if t <= p1:
                f = t / p1
                out.append((_anneal(strategy, init, max_lr, f),
                            _anneal(strategy, max_m, base_m, f)))  # fmt: skip
            elif t <= p2:
                f = (t - p1) / (p2 - p1)
                out.append((_anneal(strategy, max_lr, init, f),
                            _anneal(strategy, base_m, max_m, f)))  # fmt: skip
            else:
                f = (t - p2) / (total - 1 - p2)
                out.append((_anneal(strategy, init, low, f), max_m))
    return out


@SETTINGS
@given(
    max_lr=st.floats(0.01, 2.0),
    total=st.integers(20, 80),
    pct=st.floats(0.1, 0.45),
    strategy=st.sampled_from(["cos", "linear"]),
    div=st.floats(2.0, 50.0),
    final_div=st.floats(2.0, 1e4),
    three_phase=st.booleans(),
    use_betas=st.booleans(),
)
def test_one_cycle_closed_form(max_lr, total, pct, strategy, div, final_div,
                               three_phase, use_betas):  # fmt: skip
    extra = {"betas": (0.9, 0.999)} if use_betas else {"momentum": 0.5}
    opt = FakeOptimizer((0.123,), **extra)
    sched = ls.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=pct,
                          anneal_strategy=strategy, div_factor=div,
                          final_div_factor=final_div, base_momentum=0.8,
                          max_momentum=0.93, three_phase=three_phase)  # fmt: skip
    ref = one_cycle_reference(max_lr, total, pct, strategy, div, final_div, 0.8, 0.93,
                              three_phase)  # fmt: skip
    group = opt.param_groups[0]
    lrs, moms = [], []
    for t in range(total + 1):
        if t:
            sched.step()
        lrs.append(sched.get_last_lr())
        moms.append(group["betas"][0] if use_betas else group["momentum"])
        if use_betas:
            assert isinstance(group["betas"], tuple) and group["betas"][1] == 0.999
    assert_close(lrs, [r[0] for r in ref], rel=0.0, abs_tol=1e-12 * max_lr)
    assert_close(moms, [r[1] for r in ref], rel=0.0, abs_tol=1e-12, what="momentum")
    with pytest.raises(ValueError, match="total_steps"):
        sched.step()


def test_one_cycle_epochs_times_steps_and_per_group_max_lr():
    opt = FakeOptimizer((0.1, 0.1), momentum=0.9)
    sched = ls.OneCycleLR(opt, max_lr=[1.0, 3.0], epochs=4, steps_per_epoch=5)
    assert sched.total_steps == 20
    assert [g["max_lr"] for g in opt.param_groups] == [1.0, 3.0]
    assert_close([sched.get_last_lr()], [[1.0 / 25, 3.0 / 25]])
    for _ in range(5):
        sched.step()  # 0.3 * 20 - 1 = 5: the peak
    assert_close([sched.get_last_lr()], [[1.0, 3.0]])
    assert math.isclose(opt.param_groups[1]["momentum"], 0.85)


def test_one_cycle_zero_length_phase_does_not_divide_by_zero():
    # pct_start * total_steps == 1: torch raises ZeroDivisionError here.
    opt = FakeOptimizer((0.1,), momentum=0.9)
    sched = ls.OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=0.1)
    assert sched.get_last_lr() == [1.0]
    assert opt.param_groups[0]["momentum"] == 0.85
    traj = trajectory(sched, 9)
    assert math.isclose(traj[-1][0], 1.0 / 25 / 1e4, rel_tol=1e-12)
    assert all(a[0] > b[0] for a, b in zip(traj, traj[1:]))


def test_no_momentum_cycling_leaves_groups_without_momentum():
    opt = FakeOptimizer((0.1,))
    sched = ls.OneCycleLR(opt, max_lr=1.0, total_steps=10, cycle_momentum=False)
    trajectory(sched, 10)
    assert "momentum" not in opt.param_groups[0]
    assert "betas" not in opt.param_groups[0]


@pytest.mark.parametrize(
    "make, epoch, expected",
    [
        (lambda o: ls.StepLR(o, step_size=3, gamma=0.5), 7, 0.5**2),
        (lambda o: ls.ExponentialLR(o, gamma=0.9), 5, 0.9**5),
        (lambda o: ls.CosineAnnealingLR(o, T_max=8), 2, (1 + math.cos(math.pi / 4)) / 2),
        (lambda o: ls.LinearLR(o, start_factor=0.2, total_iters=4), 3, 0.8),
        (lambda o: ls.LinearLR(o, start_factor=0.2, total_iters=4), 9, 1.0),
    ],
)
def test_step_with_epoch_uses_closed_form(make, epoch, expected):
    opt = FakeOptimizer((1.0,))
    sched = make(opt)
    sched.step()
    sched.step(epoch)
    assert sched.last_epoch == epoch
    assert math.isclose(opt.param_groups[0]["lr"], expected, rel_tol=1e-12)


# --------------------------------------------------------------------------
# agreement with torch, step by step
# --------------------------------------------------------------------------


def _torch_pair(torch, lrs, kind):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]
    if kind == "adam":
        topt = torch.optim.Adam(groups, betas=(0.9, 0.999))
        fopt = FakeOptimizer(lrs, betas=(0.9, 0.999))
    else:
        topt = torch.optim.SGD(groups, momentum=0.9)
        fopt = FakeOptimizer(lrs, momentum=0.9)
    return topt, fopt


def _momentum(group):
    return group["betas"][0] if "betas" in group else group["momentum"]


def compare_with_torch(torch, make_ours, make_theirs, n_steps, lrs=(0.1, 0.03),
                       kind="sgd", check_momentum=False):  # fmt: skip
    topt, fopt = _torch_pair(torch, lrs, kind)
    theirs = make_theirs(topt)
    ours = make_ours(fopt)
    for t in range(n_steps + 1):
        if t:
            topt.step()  # torch warns if the scheduler steps first
            theirs.step()
            ours.step()
        assert ours.last_epoch == theirs.last_epoch == t
        assert_close([ours.get_last_lr()], [theirs.get_last_lr()], what=f"lr step {t}")
        assert_close([[g["lr"] for g in fopt.param_groups]],
                     [[g["lr"] for g in topt.param_groups]])  # fmt: skip
        if check_momentum:
            assert_close([[_momentum(g) for g in fopt.param_groups]],
                         [[_momentum(g) for g in topt.param_groups]],
                         what=f"momentum step {t}")  # fmt: skip
    return ours, theirs


TORCH_CASES = {
    "step": ("StepLR", dict(step_size=4, gamma=0.7)),
    "step_default_gamma": ("StepLR", dict(step_size=1)),
    "exponential": ("ExponentialLR", dict(gamma=0.93)),
    "cosine": ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    "cosine_default": ("CosineAnnealingLR", dict(T_max=10)),
    "cosine_tmax1": ("CosineAnnealingLR", dict(T_max=1, eta_min=0.01)),
    "linear_default": ("LinearLR", dict()),
    "linear_decay": ("LinearLR", dict(start_factor=1.0, end_factor=0.05, total_iters=20)),
    "linear_to_zero": ("LinearLR", dict(start_factor=0.5, end_factor=0.0, total_iters=9)),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_matches_torch(case):
    torch = pytest.importorskip("torch")
    name, kwargs = TORCH_CASES[case]
    compare_with_torch(
        torch,
        lambda o: getattr(ls, name)(o, **kwargs),
        lambda o: getattr(torch.optim.lr_scheduler, name)(o, **kwargs),
        n_steps=45,
    )


@settings(max_examples=25, deadline=None)
@given(lrs=lrs_st, T_max=st.integers(1, 15), eta_frac=st.floats(0.0, 1.2))
def test_cosine_matches_torch_hypothesis(lrs, T_max, eta_frac):
    torch = pytest.importorskip("torch")
    kw = dict(T_max=T_max, eta_min=eta_frac * min(lrs))
    compare_with_torch(
        torch,
        lambda o: ls.CosineAnnealingLR(o, **kw),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, **kw),
        n_steps=4 * T_max + 3,
        lrs=lrs,
    )


ONE_CYCLE_CASES = {
    "sgd_cos": ("sgd", dict(max_lr=1.0, total_steps=40)),
    "sgd_linear": ("sgd", dict(max_lr=[0.5, 2.0], total_steps=37, anneal_strategy="linear")),
    "adam_cos": ("adam", dict(max_lr=0.01, epochs=5, steps_per_epoch=8, pct_start=0.25,
                              base_momentum=0.8, max_momentum=0.97)),
    "adam_three_phase": ("adam", dict(max_lr=[0.01, 0.02], total_steps=41, three_phase=True,
                                      div_factor=10.0, final_div_factor=100.0)),
    "sgd_three_phase_linear": ("sgd", dict(max_lr=1.0, total_steps=50, three_phase=True,
                                           anneal_strategy="linear", pct_start=0.4,
                                           base_momentum=[0.8, 0.7])),
    "no_cycle": ("sgd", dict(max_lr=1.0, total_steps=30, cycle_momentum=False)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ONE_CYCLE_CASES))
def test_one_cycle_matches_torch(case):
    torch = pytest.importorskip("torch")
    kind, kwargs = ONE_CYCLE_CASES[case]
    total = kwargs.get("total_steps") or kwargs["epochs"] * kwargs["steps_per_epoch"]
    ours, theirs = compare_with_torch(
        torch,
        lambda o: ls.OneCycleLR(o, **kwargs),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, **kwargs),
        n_steps=total,
        kind=kind,
        check_momentum=True,
    )
    topt, fopt = theirs.optimizer, ours.optimizer
    for key in ("initial_lr", "max_lr", "min_lr"):
        assert_close([[g[key] for g in fopt.param_groups]],
                     [[g[key] for g in topt.param_groups]], what=key)  # fmt: skip
    with pytest.raises(ValueError):
        topt.step()
        theirs.step()
    with pytest.raises(ValueError, match="total_steps"):
        ours.step()


@pytest.mark.parametrize("name", ["StepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR"])
def test_resume_with_last_epoch_matches_torch(name):
    torch = pytest.importorskip("torch")
    kwargs = {
        "StepLR": dict(step_size=3, gamma=0.5),
        "ExponentialLR": dict(gamma=0.9),
        "CosineAnnealingLR": dict(T_max=6, eta_min=0.002),
        "LinearLR": dict(start_factor=0.25, total_iters=8),
    }[name]
    topt, fopt = _torch_pair(torch, (0.05, 0.02), "sgd")
    for g_t, g_f, init in zip(topt.param_groups, fopt.param_groups, (0.1, 0.04)):
        g_t["initial_lr"] = g_f["initial_lr"] = init
    theirs = getattr(torch.optim.lr_scheduler, name)(topt, last_epoch=5, **kwargs)
    ours = getattr(ls, name)(fopt, last_epoch=5, **kwargs)
    for t in range(31):
        if t:
            topt.step()
            theirs.step()
            ours.step()
        assert ours.last_epoch == theirs.last_epoch
        assert_close([ours.get_last_lr()], [theirs.get_last_lr()], what=f"lr step {t}")


# --------------------------------------------------------------------------
# state_dict round trip
# --------------------------------------------------------------------------

FACTORIES = {
    "step": (lambda o: ls.StepLR(o, step_size=3, gamma=0.6), {}),
    "exponential": (lambda o: ls.ExponentialLR(o, gamma=0.95), {}),
    "cosine": (lambda o: ls.CosineAnnealingLR(o, T_max=9, eta_min=0.001), {}),
    "linear": (lambda o: ls.LinearLR(o, start_factor=0.1, total_iters=15), {}),
    "one_cycle_sgd": (lambda o: ls.OneCycleLR(o, max_lr=[1.0, 0.5], total_steps=50),
                      {"momentum": 0.9}),
    "one_cycle_adam_3p": (lambda o: ls.OneCycleLR(o, max_lr=0.01, total_steps=50,
                                                  three_phase=True, anneal_strategy="linear"),
                          {"betas": (0.9, 0.99)}),
    "range": (lambda o: ls.ExponentialRangeLR(o, 1e-5, 1.0, num_steps=40), {}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FACTORIES))
@pytest.mark.parametrize("k", [1, 7, 20])
def test_state_dict_round_trip(case, k):
    make, extra = FACTORIES[case]
    opt = FakeOptimizer((0.2, 0.05), **extra)
    sched = make(opt)
    for _ in range(k):
        sched.step()
    state = sched.state_dict()
    assert "optimizer" not in state
    state = json.loads(json.dumps(state))  # plain Python values only
    saved_groups = copy.deepcopy(opt.param_groups)

    # Fresh scheduler on a fresh optimizer, then restore optimizer and scheduler.
    opt2 = FakeOptimizer((0.2, 0.05), **extra)
    sched2 = make(opt2)
    assert sched2.last_epoch == 0
    for g2, g in zip(opt2.param_groups, saved_groups):
        g2.clear()
        g2.update(copy.deepcopy(g))
    sched2.load_state_dict(state)
    assert sched2.last_epoch == k
    assert sched2.get_last_lr() == sched.get_last_lr()
    for _ in range(25):
        sched.step()
        sched2.step()
        assert sched2.get_last_lr() == sched.get_last_lr()
        assert opt2.param_groups == opt.param_groups


def test_state_dict_is_a_copy():
    sched = ls.StepLR(FakeOptimizer(), step_size=2)
    state = sched.state_dict()
    state["base_lrs"].append(9.0)
    state["last_epoch"] = 100
    assert sched.base_lrs == [0.1, 0.03]
    assert sched.last_epoch == 0
    sched.load_state_dict(state)
    state["base_lrs"].append(8.0)
    assert sched.base_lrs == [0.1, 0.03, 9.0]


# --------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------


class NoGroups:
    pass


class TupleGroups:
    param_groups = ({"lr": 0.1},)


def _opt(**extra):
    return FakeOptimizer((0.1, 0.2), **extra)


BAD_ARGS = [
    (lambda: ls.StepLR(NoGroups(), 2), TypeError, "param_groups"),
    (lambda: ls.StepLR(TupleGroups(), 2), TypeError, "param_groups"),
    (lambda: ls.StepLR(FakeOptimizer(()), 2), ValueError, "param_groups"),
    (lambda: ls.ExponentialLR(type("O", (), {"param_groups": [{"momentum": 0.9}]})(), 0.9),
     ValueError, r"param_groups\[0\].*'lr'"),
    (lambda: ls.ExponentialLR(type("O", (), {"param_groups": [[0.1]]})(), 0.9),
     TypeError, r"param_groups\[0\]"),
    (lambda: ls.StepLR(_opt(), 0), ValueError, "step_size"),
    (lambda: ls.StepLR(_opt(), 2.0), TypeError, "step_size"),
    (lambda: ls.StepLR(_opt(), True), TypeError, "step_size"),
    (lambda: ls.StepLR(_opt(), 2, gamma=0.0), ValueError, "gamma"),
    (lambda: ls.StepLR(_opt(), 2, gamma="0.1"), TypeError, "gamma"),
    (lambda: ls.ExponentialLR(_opt(), gamma=-0.5), ValueError, "gamma"),
    (lambda: ls.ExponentialLR(_opt(), gamma=float("inf")), ValueError, "gamma"),
    (lambda: ls.ExponentialLR(_opt(), gamma=float("nan")), ValueError, "gamma"),
    (lambda: ls.ExponentialLR(_opt(), 0.9, last_epoch=-2), ValueError, "last_epoch"),
    (lambda: ls.ExponentialLR(_opt(), 0.9, last_epoch=1.0), TypeError, "last_epoch"),
    (lambda: ls.ExponentialLR(_opt(), 0.9, last_epoch=3), ValueError, "initial_lr"),
    (lambda: ls.CosineAnnealingLR(_opt(), T_max=0), ValueError, "T_max"),
    (lambda: ls.CosineAnnealingLR(_opt(), T_max=10.5), TypeError, "T_max"),
    (lambda: ls.CosineAnnealingLR(_opt(), T_max=10, eta_min=-1e-3), ValueError, "eta_min"),
    (lambda: ls.LinearLR(_opt(), start_factor=0.0), ValueError, "start_factor"),
    (lambda: ls.LinearLR(_opt(), start_factor=1.5), ValueError, "start_factor"),
    (lambda: ls.LinearLR(_opt(), end_factor=-0.1), ValueError, "end_factor"),
    (lambda: ls.LinearLR(_opt(), end_factor=1.01), ValueError, "end_factor"),
    (lambda: ls.LinearLR(_opt(), total_iters=0), ValueError, "total_iters"),
    (lambda: ls.LinearLR(_opt(), total_iters=None), TypeError, "total_iters"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=-1.0, total_steps=10),
     ValueError, "max_lr"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=[1.0], total_steps=10),
     ValueError, "max_lr"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0), ValueError, "total_steps"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, epochs=3), ValueError,
     "steps_per_epoch"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, total_steps=0), ValueError,
     "total_steps"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, epochs=0, steps_per_epoch=3),
     ValueError, "epochs"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, epochs=2, steps_per_epoch=-3),
     ValueError, "steps_per_epoch"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, total_steps=10, pct_start=1.5),
     ValueError, "pct_start"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, total_steps=10,
                           anneal_strategy="exp"), ValueError, "anneal_strategy"),
    (lambda: ls.OneCycleLR(_opt(), max_lr=1.0, total_steps=10), ValueError, "cycle_momentum"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, total_steps=10,
                           base_momentum=[0.8, 0.8, 0.8]), ValueError, "base_momentum"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, total_steps=10,
                           max_momentum=float("nan")), ValueError, "max_momentum"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, total_steps=10, div_factor=0.0),
     ValueError, "div_factor"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, total_steps=10,
                           final_div_factor=-1.0), ValueError, "final_div_factor"),
    (lambda: ls.OneCycleLR(_opt(momentum=0.9), max_lr=1.0, total_steps=10,
                           three_phase="yes"), TypeError, "three_phase"),
    (lambda: ls.ExponentialRangeLR(_opt(), start_lr=0.0, end_lr=1.0, num_steps=10),
     ValueError, "start_lr"),
    (lambda: ls.ExponentialRangeLR(_opt(), start_lr=1e-5, end_lr=-1.0, num_steps=10),
     ValueError, "end_lr"),
    (lambda: ls.ExponentialRangeLR(_opt(), start_lr=1e-5, end_lr=1.0, num_steps=1),
     ValueError, "num_steps"),
    (lambda: ls.ExponentialRangeLR(_opt(), start_lr=1e-5, end_lr=1.0, num_steps=5.0),
     TypeError, "num_steps"),
]  # fmt: skip


@pytest.mark.parametrize("make, exc, match", BAD_ARGS)
def test_bad_arguments_raise(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_error_message_states_expected_and_given():
    with pytest.raises(ValueError, match=r"^gamma: expected .*\(0\.0, inf\).*got -2"):
        ls.ExponentialLR(_opt(), gamma=-2)
    with pytest.raises(TypeError, match=r"^step_size: expected a positive int, got float 2\.5"):
        ls.StepLR(_opt(), step_size=2.5)


def test_failed_one_cycle_construction_leaves_optimizer_untouched():
    opt = FakeOptimizer((0.1, 0.2))
    opt.param_groups[0]["momentum"] = 0.9  # second group has neither key
    before = copy.deepcopy(opt.param_groups)
    with pytest.raises(ValueError, match=r"param_groups\[1\]"):
        ls.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    assert opt.param_groups == before


def test_one_cycle_resume_requires_group_keys():
    opt = FakeOptimizer((0.1,), momentum=0.9)
    opt.param_groups[0]["initial_lr"] = 0.04
    with pytest.raises(ValueError, match="max_lr"):
        ls.OneCycleLR(opt, max_lr=1.0, total_steps=10, last_epoch=3)


def test_step_epoch_argument_is_validated():
    sched = ls.StepLR(_opt(), step_size=2)
    with pytest.raises(ValueError, match="epoch"):
        sched.step(-1)


def test_load_state_dict_rejects_non_dict():
    sched = ls.StepLR(_opt(), step_size=2)
    with pytest.raises(TypeError, match="state_dict"):
        sched.load_state_dict([("last_epoch", 3)])
