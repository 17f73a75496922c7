"""``cnnkit.torch.convert``: swap the supported modules of any ``torch.nn.Module`` tree for cnnkit's.

What is replaced, and how the structure is recognised
-----------------------------------------------------
* Leaves: every module whose type is exactly ``torch.nn.Conv2d`` (``padding_mode="zeros"``),
  ``torch.nn.BatchNorm2d`` or ``torch.nn.GroupNorm`` becomes the :mod:`cnnkit.torch.nn` module of
  the same name (``from_torch``: the new module holds the original's Parameter and buffer
  objects). Subclasses (``SyncBatchNorm``, user subclasses with their own ``forward``), other
  padding modes and every other type are left alone.
* Batch norm followed by ReLU: two consecutive entries ``BatchNorm2d, ReLU`` of a
  ``torch.nn.Sequential`` (which covers torchvision's ``Conv2dNormActivation``) become
  ``BatchNorm2dReLU, Identity``: one fused kernel, and the same ``state_dict`` keys (ReLU and
  Identity hold nothing). ``ReLU6`` (mobilenet_v2) is not fused: cnnkit has no fused ReLU6.
* torchvision's residual blocks: a ``BasicBlock`` or ``Bottleneck`` of exactly torchvision's type
  (its own ``forward``) gets its inner ``bn + ReLU`` pairs fused and its last batch norm, residual
  add and ReLU computed in one call. The block's class becomes :class:`FusedBasicBlock` or
  :class:`FusedBottleneck`, subclasses of torchvision's that differ only in ``forward``: the
  children, attributes, hooks and ``state_dict`` keys are the block's own, ``isinstance`` still
  holds, and the model pickles (``torch.save(model)``). torchvision's ``ResNet`` stem (``bn1``
  then ``relu``, called once) is fused the same way as a Sequential pair.

``inference=True`` (eval-mode models only) first folds each batch norm into the convolution
before it (``cnnkit.fold_batch_norm``, in float64): in a Sequential (``Conv2d, BatchNorm2d``), in
torchvision's blocks (``conv<i>`` / ``bn<i>``) and in the ResNet stem. The batch norm becomes
``Identity`` (or ``ReLU`` where it was a fused ``BatchNorm2dReLU``) and the convolution gains a
bias, so the folded model's ``state_dict`` has different keys: no ``bn*`` entries, new
``conv*.bias`` ones. It is an inference model: putting it back into training mode does not bring
the batch norms back.
"""
from __future__ import annotations

import copy
import sys
from typing import Any

import numpy as np
import torch

from .._validate import check_bool

# FusedBasicBlock and FusedBottleneck (created on first use, see _make_fused) are reached
# through the converted blocks, not imported by users.
__all__ = ["convert"]

_TV_RESNET = "torchvision.models.resnet"


# ---- cnnkit.torch.nn, looked up when convert runs (the package imports this module last) ------
def _knn() -> Any:
    from . import nn as knn
    return knn


def _bn_relu_class() -> Any:
    """cnnkit's fused batch norm + ReLU module class, or None if cnnkit.torch.nn has none."""
    return getattr(_knn(), "BatchNorm2dReLU", None)


def _bn_add_relu(bn: torch.nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``relu(bn(x) + residual)``: one fused call where cnnkit.torch offers one."""
    fwd = getattr(bn, "forward_add_relu", None)
    if fwd is not None:
        return fwd(x, residual)
    knn = _knn()
    add_relu = getattr(knn, "BatchNorm2dAddReLU", None)
    if add_relu is not None and isinstance(bn, add_relu):
        return bn(x, residual)
    out = bn(x)
    out += residual
    return torch.relu(out)


# ---- torchvision's residual blocks with a fused forward -----------------------------------------
def _basic_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """The block's output, ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Parameters
    ----------
    x : Tensor
        ``(N, C_in, H, W)``.

    Returns
    -------
    Tensor
        ``(N, C_out, H/stride, W/stride)``.
    """
    identity = x if self.downsample is None else self.downsample(x)
    out = self.bn1(self.conv1(x))          # BatchNorm2dReLU: bn1 + relu
    return _bn_add_relu(self.bn2, self.conv2(out), identity)


def _bottleneck_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """The block's output, ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))``.

    Parameters
    ----------
    x : Tensor
        ``(N, C_in, H, W)``.

    Returns
    -------
    Tensor
        ``(N, 4 * planes, H/stride, W/stride)``.
    """
    identity = x if self.downsample is None else self.downsample(x)
    out = self.bn1(self.conv1(x))          # BatchNorm2dReLU
    out = self.bn2(self.conv2(out))        # BatchNorm2dReLU
    return _bn_add_relu(self.bn3, self.conv3(out), identity)


_FUSED_DOC = """torchvision's ``{base}`` with cnnkit's fused batch norm + ReLU and batch norm + add + ReLU.

    Made by :func:`convert` by changing a block's class: the block keeps its children, attributes
    and ``state_dict`` keys; only ``forward`` differs ({inner} are ``BatchNorm2dReLU``, and the
    last batch norm, the residual add and the ReLU run as one call). The block's ``relu`` child is
    no longer called.
    """
_FUSED_SPEC = {"FusedBasicBlock": ("BasicBlock", _basic_forward, "bn1"),
               "FusedBottleneck": ("Bottleneck", _bottleneck_forward, "bn1 and bn2")}


def _make_fused(name: str, module: Any) -> type:
    """The class ``name`` of :data:`_FUSED_SPEC` over torchvision's resnet ``module``; created
    once and kept as a global of this module, so pickle finds it by name."""
    cls = globals().get(name)
    if cls is None:
        base_name, forward, inner = _FUSED_SPEC[name]
        base = getattr(module, base_name)
        cls = type(name, (base,), {"forward": forward, "__module__": __name__, "__qualname__": name,
                                   "__doc__": _FUSED_DOC.format(base=base_name, inner=inner)})
        globals()[name] = cls
    return cls


def __getattr__(name: str) -> Any:
    # FusedBasicBlock / FusedBottleneck exist once torchvision is imported (unpickling a
    # converted model looks them up here before any convert call of this process).
    if name in _FUSED_SPEC:
        from ..bench._common import import_torchvision
        if import_torchvision() is None or _TV_RESNET not in sys.modules:
            raise AttributeError(f"{name} needs torchvision, which is not importable")
        return _make_fused(name, sys.modules[_TV_RESNET])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- what can be replaced -----------------------------------------------------------------------
def _conv_ok(m: Any) -> bool:
    return type(m) is torch.nn.Conv2d and m.padding_mode == "zeros"


def _bn_ok(m: Any) -> bool:
    return type(m) is torch.nn.BatchNorm2d


def _leaf(m: Any) -> Any:
    """The cnnkit.torch.nn replacement of one module, or the module itself."""
    knn = _knn()
    if _conv_ok(m):
        return knn.Conv2d.from_torch(m)
    if _bn_ok(m):
        return knn.BatchNorm2d.from_torch(m)
    if type(m) is torch.nn.GroupNorm:
        return knn.GroupNorm.from_torch(m)
    return m


def _bn_relu(bn: Any) -> Any:
    cls = _bn_relu_class()
    return bn if cls is None else cls.from_torch(bn)


def _resnet_types(m: torch.nn.Module) -> Any:
    """torchvision's resnet module if ``m``'s type is defined there, else None."""
    if type(m).__module__ != _TV_RESNET:
        return None
    return sys.modules.get(_TV_RESNET)


def _relu_ok(m: Any) -> bool:
    return type(m) is torch.nn.ReLU


# ---- the training-mode rewrite of one module's direct children ---------------------------------
def _fuse_children(m: Any) -> None:
    """Fuse BatchNorm2d + ReLU among ``m``'s children and swap torchvision's blocks' forward."""
    if _bn_relu_class() is None:
        return
    if isinstance(m, torch.nn.Sequential):
        keys = list(m._modules)
        for a, b in zip(keys, keys[1:]):
            bn, relu = m._modules[a], m._modules[b]
            if _bn_ok(bn) and _relu_ok(relu):
                m._modules[a] = _bn_relu(bn)
                m._modules[b] = torch.nn.Identity()
        return
    tv = _resnet_types(m)
    if tv is None:
        return
    if type(m) is tv.ResNet and _bn_ok(m.bn1) and _relu_ok(m.relu):
        m.bn1 = _bn_relu(m.bn1)            # ResNet calls its relu once, after bn1
        m.relu = torch.nn.Identity()
        return
    for name, n_bn in (("BasicBlock", 2), ("Bottleneck", 3)):
        if type(m) is getattr(tv, name, None):
            bns = [getattr(m, f"bn{i}", None) for i in range(1, n_bn + 1)]
            if all(_bn_ok(b) for b in bns) and _relu_ok(getattr(m, "relu", None)):
                for i in range(1, n_bn):
                    setattr(m, f"bn{i}", _bn_relu(bns[i - 1]))
                setattr(m, f"bn{n_bn}", _leaf(bns[-1]))
                m.__class__ = _make_fused("Fused" + name, tv)


# ---- inference: fold batch norm into the preceding convolution --------------------------------
def _foldable(conv: Any, bn: Any) -> Any:
    """What replaces ``bn`` once folded into ``conv`` (Identity, or ReLU for a fused
    BatchNorm2dReLU), or None when the pair cannot be folded."""
    knn = _knn()
    relu_cls = _bn_relu_class()
    if not (_conv_ok(conv) or type(conv) is knn.Conv2d):
        return None
    if relu_cls is not None and type(bn) is relu_cls:
        after: Any = torch.nn.ReLU
    elif _bn_ok(bn) or type(bn) is knn.BatchNorm2d:
        after = torch.nn.Identity
    else:
        return None
    w = conv.weight
    if (not bn.track_running_stats or bn.running_mean is None or bn.num_features != conv.out_channels
            or w.device.type != "cpu" or w.dtype not in (torch.float32, torch.float64)):
        return None
    return after


def _fold(conv: Any, bn: Any) -> None:
    """Write the folded weight and bias into ``conv`` as new Parameters (the old tensors are not
    modified: they may be shared with the model ``convert`` copied)."""
    from ..ops import fold_batch_norm

    def arr(t: Any) -> Any:
        return None if t is None else t.detach().numpy().astype(np.float64)

    w = conv.weight
    fw, fb = fold_batch_norm(w.detach().numpy(), None if conv.bias is None else conv.bias.detach().numpy(),
                             arr(bn.weight), arr(bn.bias), arr(bn.running_mean), arr(bn.running_var),
                             eps=float(bn.eps))
    new_w = torch.empty_like(w)                       # keeps the memory format (channels_last)
    new_w.copy_(torch.from_numpy(np.ascontiguousarray(fw)))
    conv.weight = torch.nn.Parameter(new_w, requires_grad=w.requires_grad)
    conv.bias = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(fb)),
                                   requires_grad=w.requires_grad)


def _fold_children(m: Any) -> None:
    """Fold every (convolution, batch norm) pair among ``m``'s children."""
    if isinstance(m, torch.nn.Sequential):
        keys = list(m._modules)
        for a, b in zip(keys, keys[1:]):
            conv, bn = m._modules[a], m._modules[b]
            after = _foldable(conv, bn)
            if after is not None:
                _fold(conv, bn)
                m._modules[b] = after()
        return
    tv = _resnet_types(m)
    if tv is None:
        return
    base = {"FusedBasicBlock": "BasicBlock", "FusedBottleneck": "Bottleneck"}.get(type(m).__name__)
    if base is not None and type(m).__module__ == __name__:
        m.__class__ = getattr(tv, base)               # the plain forward: its bn's become Identity
    pairs = {tv.ResNet: 1, getattr(tv, "BasicBlock", None): 2, getattr(tv, "Bottleneck", None): 3}
    n = pairs.get(type(m), 0)
    for i in range(1, n + 1):
        cv, bnm = getattr(m, f"conv{i}", None), getattr(m, f"bn{i}", None)
        after = _foldable(cv, bnm)
        if after is not None:
            _fold(cv, bnm)
            setattr(m, f"bn{i}", after())


# ---- the walk -----------------------------------------------------------------------------------
def _rewrite(m: Any, inference: bool, memo: dict) -> Any:
    """``m`` with its subtree converted, top down: structure first (fold, fuse), then children,
    then ``m`` itself. A module met twice is converted once (``memo``)."""
    if id(m) in memo:                      # memo holds the module too: its id stays unique
        return memo[id(m)][1]
    if inference:
        _fold_children(m)
    _fuse_children(m)
    for name, child in list(m._modules.items()):
        if child is not None:
            new = _rewrite(child, inference, memo)
            if new is not child:
                m._modules[name] = new
    out = _leaf(m)
    memo[id(m)] = (m, out)
    return out


def convert(model: torch.nn.Module, inplace: bool = False, inference: bool = False) -> torch.nn.Module:
    """Replace the supported modules of ``model`` by :mod:`cnnkit.torch.nn`'s, fusing where the
    structure shows it.

    Every ``torch.nn.Conv2d`` (zero padding), ``BatchNorm2d`` and ``GroupNorm`` of exactly
    torch's type becomes cnnkit's module of the same name, holding the same Parameter and buffer
    objects. ``BatchNorm2d`` followed by ``ReLU`` in a ``Sequential`` (torchvision's
    ``Conv2dNormActivation``) becomes ``BatchNorm2dReLU`` followed by ``Identity``; torchvision's
    ``BasicBlock``/``Bottleneck`` become :class:`FusedBasicBlock`/:class:`FusedBottleneck` (batch
    norm + ReLU fused, the last batch norm, residual add and ReLU in one call). Anything else
    (``SyncBatchNorm``, other padding modes, subclasses with their own ``forward``, ReLU6) is left
    as it is. The module docstring (``cnnkit.torch._convert``) lists the rules.

    The converted model computes what the original does (outputs, losses and every gradient, up
    to float32 rounding) and its ``state_dict`` has the same keys, so checkpoints load both ways.

    Parameters
    ----------
    model : torch.nn.Module
        Any module tree (torchvision's resnet, resnext and mobilenet_v2 included), in training or
        eval mode.
    inplace : bool
        Convert ``model`` itself (its Parameter objects stay the ones an optimizer may already
        hold) instead of a deep copy. Use the returned module either way: a root that is itself
        replaced (a bare ``Conv2d``) cannot change in place.
    inference : bool
        Also fold each batch norm into the convolution before it (eval-mode models only). The
        folded model has different ``state_dict`` keys (no batch norm entries; the convolutions
        gain a ``bias``) and is for inference only.

    Returns
    -------
    torch.nn.Module
        The converted model (``model`` itself, or its replacement, with ``inplace``).

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``, or ``inplace``/``inference`` is not a bool.
    ValueError
        ``inference=True`` for a model (or any submodule) in training mode.

    Examples
    --------
    >>> import torch, cnnkit.torch
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
    ...                           torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    >>> fast = cnnkit.torch.convert(net)
    >>> [type(m).__name__ for m in fast]
    ['Conv2d', 'BatchNorm2dReLU', 'Identity']
    >>> x = torch.randn(2, 3, 8, 8)
    >>> bool(torch.allclose(fast(x), net(x), atol=1e-5))
    True
    >>> sorted(fast.state_dict()) == sorted(net.state_dict())
    True
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    inplace = check_bool("inplace", inplace)
    inference = check_bool("inference", inference)
    if inference:
        training = [name or "the model" for name, m in model.named_modules() if m.training]
        if training:
            raise ValueError("inference: expected a model in eval mode (call model.eval() first), got "
                             f"one in training mode ({training[0]})")
    if not inplace:
        model = copy.deepcopy(model)
    return _rewrite(model, inference, {})

