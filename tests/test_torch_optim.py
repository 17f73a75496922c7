"""cnnkit.torch.optim against torch.optim itself (skipped when torch is not installed).

Every algorithm and flag combination (the grid of test_optim.COMBOS) runs 10 steps beside torch's
own optimizer on the same parameters and gradients, float32 and float64; parameter groups,
state-dict round trips in both directions mid-training, lr schedulers, the fallback cases and
torch's constructor errors. A counting wrapper around the cnnkit.optim.functional function proves
that each group's update is one compiled call (and that the comparisons ran the cnnkit path, not
torch's fallback).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import assert_close
# shared cases only (no test functions: those would be collected twice)
from test_optim import BASE, COMBOS, FULL, random_grads

torch = pytest.importorskip("torch")
from cnnkit.optim import functional as F  # noqa: E402
from cnnkit.torch import optim as O  # noqa: E402

PAIRS = {"sgd": (O.SGD, torch.optim.SGD), "adagrad": (O.Adagrad, torch.optim.Adagrad),
         "rmsprop": (O.RMSprop, torch.optim.RMSprop), "adadelta": (O.Adadelta, torch.optim.Adadelta),
         "adam": (O.Adam, torch.optim.Adam), "adamw": (O.AdamW, torch.optim.AdamW)}
FUNC = {"sgd": "sgd_", "adagrad": "adagrad_", "rmsprop": "rmsprop_", "adadelta": "adadelta_",
        "adam": "adam_", "adamw": "adamw_"}
ALGOS = tuple(PAIRS)
STEPS = 10
SHAPES = ((7,), (17,), (4, 16), (1,), (2, 3, 4, 5))
TDTYPE = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.fixture
def calls(monkeypatch):
    """name -> list of (number of params, dtypes) of every cnnkit.optim.functional call."""
    log: dict = {name: [] for name in FUNC.values()}
    for name in FUNC.values():
        fn = getattr(F, name)

        def counting(params, *args, _fn=fn, _name=name, **kwargs):
            log[_name].append((len(params), [a.dtype for a in params]))
            return _fn(params, *args, **kwargs)
        monkeypatch.setattr(F, name, counting)
    run_plan = O._run_plan

    def counting_plan(plan, grads, row):  # a cached group's step: the same one compiled call
        log[plan.func].append((sum(g is not None for g in grads),
                               [g.dtype for g in grads if g is not None]))
        return run_plan(plan, grads, row)
    monkeypatch.setattr(O, "_run_plan", counting_plan)
    return log


def twins(rng, shapes, dtype, *, channels_last=False):
    """The same random parameters twice: for cnnkit's optimizer and for torch's."""
    base = [np.array(np.clip(rng.standard_normal(s), -2, 2), dtype=dtype) for s in shapes]
    a = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in base]
    b = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in base]
    if channels_last:
        for ps in (a, b):
            for p in ps:
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
    return a, b


def set_grads(rng, a, b, skip=()):
    """One fresh random gradient per parameter (same values and layout on both sides)."""
    arrays = random_grads(rng, [p.detach().numpy() for p in a])
    for i, (pa, pb, g) in enumerate(zip(a, b, arrays)):
        if i in skip:
            pa.grad = pb.grad = None
            continue
        ga = torch.from_numpy(g).to(pa.dtype)
        pa.grad = torch.empty_like(pa).copy_(ga)
        pb.grad = torch.empty_like(pb).copy_(ga)


def check_same(opt, topt, a, b, dtype, what=""):
    """Parameters and every state entry of the two optimizers agree (steps exactly)."""
    for i, (pa, pb) in enumerate(zip(a, b)):
        assert_close(pa.detach().numpy(), pb.detach().numpy(), dtype, what=f"{what}params[{i}]")
    sa, sb = opt.state_dict(), topt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i, st in sb["state"].items():
        assert list(sa["state"][i]) == list(st), f"{what}state[{i}] keys"
        for key, vb in st.items():
            va = sa["state"][i][key]
            assert type(va) is type(vb) and va.dtype == vb.dtype and va.shape == vb.shape, (what, i, key)
            if key == "step":
                assert float(va) == float(vb), f"{what}state[{i}]['step']"
            else:
                assert va.stride() == vb.stride(), f"{what}state[{i}][{key!r}] layout"
                assert_close(va.numpy(), vb.numpy(), dtype, what=f"{what}state[{i}][{key!r}]")


def run_both(rng, opt, topt, a, b, steps, skip=()):
    for _ in range(steps):
        set_grads(rng, a, b, skip)
        opt.step()
        topt.step()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("algo,hyper", COMBOS)
def test_trajectory_matches_torch(algo, hyper, dtype, rng, calls):
    a, b = twins(rng, SHAPES, dtype)
    cls, tcls = PAIRS[algo]
    opt, topt = cls(a, **hyper), tcls(b, **hyper)
    assert isinstance(opt, tcls)
    run_both(rng, opt, topt, a, b, STEPS)
    check_same(opt, topt, a, b, dtype)
    assert calls[FUNC[algo]] == [(len(SHAPES), [np.dtype(dtype)] * len(SHAPES))] * STEPS


@pytest.mark.parametrize("algo", ALGOS)
def test_groups_mixed_dtypes_one_call_per_group(algo, rng, calls):
    """Two groups with different hyperparameters, float32 and float64 in one group, a parameter
    without gradient and channels-last parameters: one compiled call per group and step."""
    cls, tcls = PAIRS[algo]
    a32, b32 = twins(rng, [(3, 4, 2, 5), (6,)], np.float32, channels_last=True)
    a64, b64 = twins(rng, [(5,), (2, 3)], np.float64)
    c32, d32 = twins(rng, [(8,), (4,)], np.float32)
    h2 = dict(FULL[algo], lr=FULL[algo]["lr"] / 2)

    def groups(p32, p64, q32):
        return [dict(params=p32 + p64), dict(params=q32, **h2)]
    opt, topt = cls(groups(a32, a64, c32), **BASE[algo]), tcls(groups(b32, b64, d32), **BASE[algo])
    a, b = a32 + a64 + c32, b32 + b64 + d32
    ptrs = [p.data_ptr() for p in a]
    run_both(rng, opt, topt, a, b, 3, skip=(5,))  # the last parameter never gets a gradient
    # state changes between steps: a scheduler-like edit of the first group
    for o in (opt, topt):
        o.param_groups[0]["lr"] *= 0.5
        o.param_groups[0]["weight_decay"] = 0.01
    run_both(rng, opt, topt, a, b, 3, skip=(5,))
    check_same(opt, topt, a, b, np.float32)
    assert 5 not in opt.state_dict()["state"] or algo == "adagrad"  # torch's Adagrad: eager state
    assert calls[FUNC[algo]] == [(4, [np.dtype(np.float32)] * 2 + [np.dtype(np.float64)] * 2),
                                 (1, [np.dtype(np.float32)])] * 6
    assert [p.data_ptr() for p in a] == ptrs, "parameters must be updated in place"
    assert a[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("direction", ["torch->cnnkit", "cnnkit->torch"])
@pytest.mark.parametrize("algo", ALGOS)
def test_state_dict_round_trip(algo, direction, rng, calls):
    """5 steps with one optimizer, its state dict loaded into the other kind, 5 more steps: the
    same trajectory as 10 steps of torch's optimizer alone."""
    cls, tcls = PAIRS[algo]
    first, second = (tcls, cls) if direction == "torch->cnnkit" else (cls, tcls)
    hyper = FULL[algo]
    a, b = twins(rng, SHAPES, np.float64)
    opt, ref = first(a, **hyper), tcls(b, **hyper)
    run_both(rng, opt, ref, a, b, 5)
    saved = opt.state_dict()
    opt2 = second(a, **hyper)
    opt2.load_state_dict(saved)
    check_same(opt2, ref, a, b, np.float64, what="after loading: ")
    run_both(rng, opt2, ref, a, b, 5)
    check_same(opt2, ref, a, b, np.float64, what="continued: ")
    assert len(calls[FUNC[algo]]) == 5  # the cnnkit half ran on the cnnkit path


@pytest.mark.parametrize("algo", ["sgd", "adam", "adamw", "rmsprop"])
def test_lr_schedulers(algo, rng, calls):
    """StepLR then OneCycleLR (which also cycles momentum/beta1) drive both optimizers alike."""
    cls, tcls = PAIRS[algo]
    hyper = dict(FULL[algo], maximize=False)
    if algo == "sgd":
        hyper.update(nesterov=False)
    a, b = twins(rng, SHAPES, np.float32)
    opt, topt = cls(a, **hyper), tcls(b, **hyper)
    for sched in (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
                  lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=6)):
        s, ts = sched(opt), sched(topt)
        for _ in range(6):
            set_grads(rng, a, b)
            opt.step()
            topt.step()
            s.step()
            ts.step()
        assert s.get_last_lr() == ts.get_last_lr()
    check_same(opt, topt, a, b, np.float32)
    assert len(calls[FUNC[algo]]) == 12


def test_fallbacks_work_like_torch(rng, calls):
    """float16 and non-contiguous parameters, a tensor lr and fused=True take torch's step."""
    a, b = twins(rng, [(6,), (5,)], np.float32)
    for ps in (a, b):
        ps[1].data = ps[1].data.half()
        ps.append(torch.nn.Parameter(ps[0].detach().clone().reshape(2, 3).t()))  # non-contiguous
    opt, topt = O.Adam(a, lr=0.01), torch.optim.Adam(b, lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for pa, pb in zip(a, b):
            g = torch.randn(pa.shape, generator=gen).to(pa.dtype)
            pa.grad, pb.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
    assert_close(a[0].detach().numpy(), b[0].detach().numpy(), np.float32, what="cnnkit's parameter")
    for pa, pb in zip(a[1:], b[1:]):  # torch's own step on both sides: the same bits
        assert torch.equal(pa, pb), pa.dtype
    assert [n for n, _ in calls["adam_"]] == [1, 1, 1]  # only the float32 contiguous one
    assert opt.state_dict()["state"][1]["exp_avg"].dtype == torch.float16

    for kwargs in (dict(lr=torch.tensor(0.01)), dict(lr=0.01, fused=True), dict(lr=0.01, foreach=True)):
        a, b = twins(rng, [(9,)], np.float32)
        opt, topt = O.Adam(a, **kwargs), torch.optim.Adam(b, **kwargs)
        before = len(calls["adam_"])
        run_both(rng, opt, topt, a, b, 2)
        check_same(opt, topt, a, b, np.float32)
        assert len(calls["adam_"]) - before == (2 if "foreach" in kwargs else 0), kwargs


def test_layout_mismatch_falls_back_and_model_trains(rng, calls):
    """A channels-last parameter whose gradient is contiguous takes torch's step; a small
    channels-last model trained through autograd (gradients in the parameters' layout) takes
    cnnkit's, and both match torch."""
    a, b = twins(rng, [(2, 3, 4, 5)], np.float32, channels_last=True)
    opt, topt = O.Adam(a, lr=0.01), torch.optim.Adam(b, lr=0.01)
    g = torch.randn(2, 3, 4, 5)
    a[0].grad, b[0].grad = g.clone(), g.clone()
    opt.step()
    topt.step()
    assert torch.equal(a[0], b[0]) and calls["adam_"] == []

    torch.manual_seed(1)
    nets = []
    for _ in range(2):
        torch.manual_seed(1)
        nets.append(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                        torch.nn.Linear(4 * 4 * 4, 2)).to(memory_format=torch.channels_last))
    opts = [O.SGD(nets[0].parameters(), lr=0.05, momentum=0.9),
            torch.optim.SGD(nets[1].parameters(), lr=0.05, momentum=0.9)]
    x = torch.randn(5, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    for _ in range(5):
        for net, o in zip(nets, opts):
            o.zero_grad()
            net(x).square().mean().backward()
            o.step()
    for pa, pb in zip(nets[0].parameters(), nets[1].parameters()):
        assert_close(pa.detach().numpy(), pb.detach().numpy(), np.float32, what="model")
    assert calls["sgd_"] == [(4, [np.dtype(np.float32)] * 4)] * 5


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")  # torch's Adagrad's own
@pytest.mark.parametrize("algo", ["sgd", "adagrad"])
def test_sparse_gradients_fall_back(algo, calls):
    """torch's SGD and Adagrad take sparse gradients; the sparse parameter runs torch's step."""
    cls, tcls = PAIRS[algo]
    hyper = dict(BASE[algo])
    res = []
    for c in (cls, tcls):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(10, 3, sparse=True)
        dense = torch.nn.Parameter(torch.ones(4))
        opt = c([dict(params=list(emb.parameters())), dict(params=[dense])], **hyper)
        for step in range(3):
            opt.zero_grad()
            loss = emb(torch.tensor([1, 3, step])).sum() + (dense * dense).sum()
            loss.backward()
            opt.step()
        res.append((emb.weight.detach().clone(), dense.detach().clone()))
    assert torch.allclose(res[0][0], res[1][0], rtol=1e-6, atol=1e-7)
    assert torch.allclose(res[0][1], res[1][1], rtol=1e-6, atol=1e-7)
    assert len(calls[FUNC[algo]]) == 3  # the dense group only


def test_unsupported_hyperparameter_values_fall_back(rng, calls):
    """RMSprop's alpha = 1 and Adadelta's rho = 1 are legal for torch, not for the kernels."""
    for algo, hyper in (("rmsprop", dict(lr=0.01, alpha=1.0)), ("adadelta", dict(rho=1.0))):
        cls, tcls = PAIRS[algo]
        a, b = twins(rng, [(5,)], np.float64)
        opt, topt = cls(a, **hyper), tcls(b, **hyper)
        run_both(rng, opt, topt, a, b, 2)
        check_same(opt, topt, a, b, np.float64)
        assert calls[FUNC[algo]] == []


@pytest.mark.parametrize("algo,kwargs", [
    ("adam", dict(lr=-1.0)), ("adam", dict(betas=(1.0, 0.9))), ("adamw", dict(eps=-1.0)),
    ("sgd", dict(lr=0.1, momentum=-0.5)), ("sgd", dict(lr=0.1, nesterov=True)),
    ("rmsprop", dict(alpha=-0.1)), ("adagrad", dict(lr_decay=-1.0)),
    ("adadelta", dict(rho=1.5)), ("adam", dict(fused=True, foreach=True))])
def test_bad_constructor_arguments_raise_torchs_errors(algo, kwargs):
    cls, tcls = PAIRS[algo]
    with pytest.raises(Exception) as theirs:
        tcls([torch.nn.Parameter(torch.ones(2))], **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        cls([torch.nn.Parameter(torch.ones(2))], **kwargs)
    assert str(ours.value) == str(theirs.value)


def test_sparse_adam_error_is_torchs():
    """A sparse gradient to Adam raises torch's own error (from the fallback)."""
    emb = torch.nn.Embedding(4, 2, sparse=True)
    opt = O.Adam(emb.parameters())
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="SparseAdam"):
        opt.step()


def test_step_closure_hooks_and_autograd_version(calls):
    """closure's loss returned; step hooks run once per step; the parameters' autograd version
    counter moves (in-place writes are visible to autograd's checks); state shares memory."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    h = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))  # a fallback parameter too
    opt = O.Adam([w, h], lr=0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))

    def closure():
        opt.zero_grad()
        loss = (w * w).sum() + h.float().sum()
        loss.backward()
        return loss
    v0 = w._version
    loss = opt.step(closure)
    assert float(loss.detach()) == pytest.approx(14.0 + 2.0)
    assert seen == ["pre", "post"]
    assert w._version > v0
    ptr = opt.state[w]["exp_avg"].data_ptr()
    opt.step(closure)
    assert opt.state[w]["exp_avg"].data_ptr() == ptr
    assert len(calls["adam_"]) == 2


def test_float64_default_dtype_step_state():
    """'step' follows torch's scalar dtype rule (float64 when that is the default dtype)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        w, v = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
        opt, topt = O.RMSprop([w]), torch.optim.RMSprop([v])
        w.grad, v.grad = torch.ones(3), torch.ones(3)
        opt.step()
        topt.step()
        assert opt.state[w]["step"].dtype == topt.state[v]["step"].dtype == torch.float64
    finally:
        torch.set_default_dtype(prev)


def _replace_data(opt, ps, rng):
    ps[1].data = ps[1].data.clone() * 0.5  # new storage, same shape: the old view must not be used


def _new_shape(opt, ps, rng):
    ps[2].data = torch.from_numpy(np.full((3, 5), 0.25, dtype=np.float64))
    del opt.state[ps[2]]  # torch then creates fresh state of the new shape


def _reassign_state(opt, ps, rng):
    for p in ps[:2]:
        for k, t in list(opt.state[p].items()):
            if k != "step":
                opt.state[p][k] = t.clone() * 0.5


def _resize_state(opt, ps, rng):
    for k, t in list(opt.state[ps[3]].items()):
        if k != "step":
            t.set_(t.clone() * 2.0)  # same tensor object, new storage


def _step_in_place(opt, ps, rng):
    st = opt.state[ps[0]]
    if "step" in st:
        st["step"].fill_(1.0)


MUTATIONS = {"param_data": _replace_data, "param_new_shape": _new_shape,
             "state_reassigned": _reassign_state, "state_set_": _resize_state,
             "step_in_place": _step_in_place}


# torch's Adagrad creates its state only in __init__, so a parameter of a new shape has no
# matching state there: that pair is not a case
_INVALIDATIONS = [(algo, what) for what in [*MUTATIONS, "load_state_dict", "grad_none"] for algo in ALGOS
                  if not (algo == "adagrad" and what == "param_new_shape")]


@pytest.mark.parametrize("algo,what", _INVALIDATIONS)
def test_cached_plan_invalidates(algo, what, rng, calls):
    """A group's cached plan (views, compiled plan, 'step' buffer) is dropped whenever what it was
    made from changes: the same change applied to torch's optimizer gives the same trajectory,
    and every step still ran the cnnkit path."""
    cls, tcls = PAIRS[algo]
    hyper = FULL[algo]
    a, b = twins(rng, SHAPES, np.float64)
    opt, topt = cls(a, **hyper), tcls(b, **hyper)
    run_both(rng, opt, topt, a, b, 1)
    saved = copy.deepcopy(topt.state_dict())
    run_both(rng, opt, topt, a, b, 2)  # the plan is cached from here on
    assert opt._cnnkit_plans
    if what == "load_state_dict":
        opt.load_state_dict(copy.deepcopy(saved))
        topt.load_state_dict(copy.deepcopy(saved))
    elif what == "grad_none":
        run_both(rng, opt, topt, a, b, 1, skip=(0, 3))
    else:
        g = np.random.default_rng(5)
        MUTATIONS[what](opt, a, g)
        MUTATIONS[what](topt, b, g)
    run_both(rng, opt, topt, a, b, 3)
    check_same(opt, topt, a, b, np.float64, what=f"{what}: ")
    assert len(calls[FUNC[algo]]) == 6 + (what == "grad_none")
    assert opt._cnnkit_plans  # cached again


def test_cached_plan_gradient_layout_change_falls_back(rng, calls):
    """After the plan is cached, a gradient whose strides differ from its parameter's takes
    torch's step for that parameter (the fallback rule), and the trajectory stays torch's."""
    a, b = twins(rng, SHAPES, np.float32)
    opt, topt = O.Adam(a, lr=0.1), torch.optim.Adam(b, lr=0.1)
    run_both(rng, opt, topt, a, b, 2)
    set_grads(rng, a, b)
    a[4].grad = a[4].grad.contiguous(memory_format=torch.channels_last)
    opt.step()
    topt.step()
    run_both(rng, opt, topt, a, b, 2)
    check_same(opt, topt, a, b, np.float32)
    assert [n for n, _ in calls["adam_"]] == [5, 5, 4, 5, 5]
