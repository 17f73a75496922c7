"""Device arrays for the functional optimizers: anything exposing ``__cuda_array_interface__``
(CuPy arrays, PyTorch CUDA tensors, Numba device arrays). The update runs as one fused CUDA
launch over the whole list, with the same per-element math as the CPU kernels."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core

_DTYPES = {"<f4": 0, "<f8": 1, "=f4": 0, "=f8": 1}


def is_device_array(x: Any) -> bool:
    return hasattr(x, "__cuda_array_interface__")


_TORCH_DTYPES = {"torch.float32": 0, "torch.float64": 1}


def _describe_torch(name: str, x: Any) -> tuple[int, tuple[int, ...], int, int]:
    """Fast path for PyTorch CUDA tensors (its __cuda_array_interface__ costs ~10 us a call)."""
    code = _TORCH_DTYPES.get(str(x.dtype))
    if code is None:
        raise TypeError(f"{name}: expected float32 or float64, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(f"{name}: expected a C-contiguous tensor, got strides {tuple(x.stride())}")
    return int(x.data_ptr()), tuple(x.shape), code, x.numel() * (4 if code == 0 else 8)


def _describe(name: str, x: Any, *, writeable: bool) -> tuple[int, tuple[int, ...], int, int]:
    if type(x).__module__.startswith("torch") and hasattr(x, "data_ptr") and x.is_cuda:
        return _describe_torch(name, x)
    if not is_device_array(x):
        raise TypeError(f"{name}: expected a device array (with __cuda_array_interface__) like the "
                        f"other arrays, got {type(x).__name__}")
    ai = x.__cuda_array_interface__
    shape = tuple(ai["shape"])
    code = _DTYPES.get(ai["typestr"])
    if code is None:
        raise TypeError(f"{name}: expected float32 or float64, got typestr {ai['typestr']!r}")
    itemsize = 4 if code == 0 else 8
    strides = ai.get("strides")
    if strides is not None:
        expect, acc = [], itemsize
        for d in reversed(shape):
            expect.append(acc)
            acc *= d
        if tuple(reversed(expect)) != tuple(strides) and int(np.prod(shape)) > 1:
            raise ValueError(f"{name}: expected a C-contiguous array, got strides {tuple(strides)}")
    ptr, readonly = ai["data"]
    if writeable and readonly:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")
    n = int(np.prod(shape)) if shape else 1
    return int(ptr or 0), shape, code, n * itemsize


def run(spec: Any, params: Any, grads: Any, states: Any, steps: np.ndarray, group: dict[str, Any]) -> None:
    """Validate everything, then one fused launch (steps: kernel-convention counts, one each)."""
    hyper = np.array([spec.row(group)], dtype=np.float64)
    needs = spec.needed(group)
    tensors = []
    for i, p in enumerate(params):
        pp, shape, code, nbytes = _describe(f"params[{i}]", p, writeable=True)
        gp, gshape, gcode, _ = _describe(f"grads[{i}]", grads[i], writeable=False)
        if gcode != code:
            raise TypeError(f"grads[{i}]: expected the dtype of params[{i}]")
        if gshape != shape:
            raise ValueError(f"grads[{i}]: expected shape {shape} (the shape of params[{i}]), got {gshape}")
        ranges = [(pp, f"params[{i}]")]
        sp = []
        for s, (name, lst) in enumerate(zip(spec.slots, states)):
            if lst is None or not needs[s]:
                sp.append(0)
                continue
            a, ashape, acode, _ = _describe(f"{name}[{i}]", lst[i], writeable=True)
            if ashape != shape or acode != code:
                raise ValueError(f"{name}[{i}]: expected the shape and dtype of params[{i}]")
            sp.append(a)
            ranges.append((a, f"{name}[{i}]"))
        if nbytes:
            for lo, what in ranges:
                if lo < gp + nbytes and gp < lo + nbytes:
                    raise ValueError(f"grads[{i}]: shares memory with {what}")
        tensors.append((pp, gp, sp[0], sp[1] if len(sp) > 1 else 0, sp[2] if len(sp) > 2 else 0,
                        nbytes // (4 if code == 0 else 8), code, 0, int(steps[i]) + 1))
    _core.cuda_multi_tensor_step(spec.core, tensors, hyper)
