"""CUDA fused optimizers: checked against the float64 reference and against the CPU kernels.

Skipped unless cnnkit was built with CUDA, a GPU is present, and CuPy or PyTorch (CUDA) can
allocate device arrays."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import cnnkit
from cnnkit.optim import functional as F
from reference import optim as ref
from conftest import assert_close

if not cnnkit.build_info()["cuda_compiled"] or cnnkit.build_info()["cuda_devices"] < 1:
    pytest.skip("needs cnnkit built with CUDA and a GPU", allow_module_level=True)

try:
    import cupy as xp

    def to_dev(a):
        return xp.asarray(a)

    def to_host(a):
        return xp.asnumpy(a)
except ImportError:  # pragma: no cover - depends on the GPU machine
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CuPy or PyTorch with CUDA", allow_module_level=True)

    def to_dev(a):
        return torch.from_numpy(np.ascontiguousarray(a)).cuda()

    def to_host(a):
        return a.cpu().numpy()

# sizes around the chunk (65536) and warp/block widths, plus empty
SIZES = [0, 1, 31, 255, 257, 65535, 65537, 200003]

CASES = [
    ("sgd", dict(lr=0.05, momentum=0.0)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.5, centered=True, weight_decay=0.01)),
    ("rmsprop", dict(lr=0.01, alpha=0.99, eps=1e-8)),
    ("adadelta", dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.01, maximize=True)),
    ("adam", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)),
    ("adam", dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-8, amsgrad=True, maximize=True)),
    ("adamw", dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, amsgrad=True)),
]

SLOTS = {"sgd": ["momentum_buffers"], "adagrad": ["state_sums"],
         "rmsprop": ["square_avgs", "grad_avgs", "momentum_buffers"],
         "adadelta": ["square_avgs", "acc_deltas"],
         "adam": ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"],
         "adamw": ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"]}


def _run(algo, kw, params, grads_per_step, states, step0=1):
    fn = getattr(F, algo + "_")
    for k, grads in enumerate(grads_per_step):
        st = {name: s for name, s in zip(SLOTS[algo], states)}
        if algo == "sgd":
            fn(params, grads, st["momentum_buffers"], step=step0 + k, **kw)
        else:
            fn(params, grads, **st, step=step0 + k, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo,kw", CASES)
def test_cuda_matches_reference_and_cpu(algo, kw, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{algo}{kw}{np.dtype(dtype)}".encode()))
    steps = 5
    p0 = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    gs = [[rng.standard_normal(n).astype(dtype) for n in SIZES] for _ in range(steps)]
    nslots = len(SLOTS[algo])
    # CPU run
    p_cpu = [a.copy() for a in p0]
    s_cpu = [[np.zeros_like(a) for a in p0] for _ in range(nslots)]
    _run(algo, kw, p_cpu, gs, s_cpu)
    # GPU run
    p_gpu = [to_dev(a) for a in p0]
    s_gpu = [[to_dev(np.zeros_like(a)) for a in p0] for _ in range(nslots)]
    _run(algo, kw, p_gpu, [[to_dev(g) for g in step] for step in gs], s_gpu)
    for i in range(len(SIZES)):
        got = to_host(p_gpu[i])
        np.testing.assert_array_equal(got, p_cpu[i], err_msg=f"{algo} tensor {i}: GPU != CPU bits")
    # float64 reference
    rfn = ref.OPTIMIZER_REFERENCES[algo]
    for i, n in enumerate(SIZES):
        p = p0[i].astype(np.float64)
        state = [np.zeros(n) for _ in range(nslots)]
        for k in range(steps):
            g = gs[k][i].astype(np.float64)
            args = dict(kw)
            if algo in ("adam", "adamw"):
                out = rfn(p, g, *state, step=k + 1, **args)
            elif algo == "sgd":
                out = rfn(p, g, state[0] if kw.get("momentum", 0) else None, step=k + 1, **args)
            else:
                out = rfn(p, g, *state, step=k + 1, **args)
            p = out[0]
            state = [s if s is not None else np.zeros(n) for s in out[1:]]
        assert_close(to_host(p_gpu[i]), p, dtype, steps=steps, what=f"{algo} params[{i}]")


def test_cuda_rejects_mismatched_grad():
    p = [to_dev(np.ones(10, np.float32))]
    g = [to_dev(np.ones(11, np.float32))]
    with pytest.raises(ValueError, match=r"grads\[0\]"):
        F.sgd_(p, g, None, step=1, lr=0.1)
    np.testing.assert_array_equal(to_host(p[0]), np.ones(10, np.float32))


def test_cuda_mixed_dtypes_in_one_call():
    """float32 and float64 tensors in one list: two launches, both checked against the CPU."""
    rng = np.random.default_rng(7)
    sizes = [5000, 3, 70001, 0, 129]
    dts = [np.float64, np.float32, np.float64, np.float32, np.float32]
    p0 = [rng.standard_normal(n).astype(d) for n, d in zip(sizes, dts)]
    g = [rng.standard_normal(n).astype(d) for n, d in zip(sizes, dts)]
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.05)
    p_cpu = [a.copy() for a in p0]
    m_cpu, v_cpu = [np.zeros_like(a) for a in p0], [np.zeros_like(a) for a in p0]
    p_gpu = [to_dev(a) for a in p0]
    m_gpu, v_gpu = [to_dev(np.zeros_like(a)) for a in p0], [to_dev(np.zeros_like(a)) for a in p0]
    for step in (1, 2, 3):
        F.adamw_(p_cpu, g, m_cpu, v_cpu, step=step, **kw)
        F.adamw_(p_gpu, [to_dev(a) for a in g], m_gpu, v_gpu, step=step, **kw)
    for i in range(len(sizes)):
        np.testing.assert_array_equal(to_host(p_gpu[i]), p_cpu[i])
        np.testing.assert_array_equal(to_host(v_gpu[i]), v_cpu[i])
