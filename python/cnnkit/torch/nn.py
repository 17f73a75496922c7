"""Drop-in ``torch.nn`` modules whose forward runs on cnnkit's kernels.

:class:`Conv2d`, :class:`BatchNorm2d` and :class:`GroupNorm` subclass torch's own modules: the
same constructor, parameters, buffers and ``state_dict`` keys, so checkpoints load both ways and
``isinstance(m, torch.nn.Conv2d)`` still holds. Their forward calls
:mod:`cnnkit.torch.functional`, which runs cnnkit's kernels when it can and torch's own
otherwise (the rule is in that module's docstring: CUDA or half-precision tensors, autocast,
non-contiguous inputs, arguments cnnkit lacks). ``Conv2d`` with a ``padding_mode`` other than
``"zeros"`` always runs torch's forward.

:class:`BatchNorm2dReLU` (``relu(bn(x))``) and :class:`BatchNorm2dAddReLU`
(``relu(bn(x) + residual)``; also :meth:`BatchNorm2d.forward_add_relu`) are the fused modules
:func:`cnnkit.torch.convert` puts in place of a batch norm followed by a ReLU; their state dict is
that of ``torch.nn.BatchNorm2d``.

Every class has ``from_torch(module)``, which builds the cnnkit module around the *same*
Parameter and buffer objects as the given torch module (no copy: an optimizer holding the old
parameters keeps training the new module).
"""
from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
from torch import Tensor

from . import functional as _F

__all__ = ["Conv2d", "BatchNorm2d", "BatchNorm2dReLU", "BatchNorm2dAddReLU", "GroupNorm"]

_M = TypeVar("_M", bound=torch.nn.Module)


def _share(cls: type[_M], module: torch.nn.Module, base: type, name: str = "module") -> _M:
    """An instance of ``cls`` whose attributes are those of ``module`` (a ``base``): the same
    Parameter and buffer objects, in shallow copies of the module's dicts (hooks included), so
    later registrations on one module do not appear on the other."""
    if not isinstance(module, base):
        raise TypeError(f"{name}: expected a {base.__module__}.{base.__qualname__}, got "
                        f"{type(module).__name__}")
    for pname, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if torch.nn.parameter.is_lazy(p):
            raise ValueError(f"{name}: {pname} is not initialized yet (a lazy module); run one "
                             f"forward pass first")
    new = cls.__new__(cls)
    for key, value in module.__dict__.items():
        new.__dict__[key] = copy.copy(value) if isinstance(value, (dict, list, set)) else value
    return new


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` whose forward runs on cnnkit when it can.

    The constructor, parameters (``weight`` ``(C_out, C_in/groups, kH, kW)``, ``bias``
    ``(C_out,)``), state dict and output are torch's; the forward calls
    :func:`cnnkit.torch.functional.conv2d` (torch's own forward for ``padding_mode`` other than
    ``"zeros"``).

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch.nn import Conv2d
    >>> conv = Conv2d(3, 8, 3, padding=1)
    >>> conv(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
    """

    @classmethod
    def from_torch(cls, module: torch.nn.Conv2d) -> "Conv2d":
        """The cnnkit module around ``module``'s own weight and bias (shared, not copied).

        Parameters
        ----------
        module : torch.nn.Conv2d
            Any configuration; its hooks and training flag carry over.

        Returns
        -------
        Conv2d
            A new module; ``result.weight is module.weight``.
        """
        return _share(cls, module, torch.nn.Conv2d)

    def forward(self, input: Tensor) -> Tensor:
        """Convolve ``input``.

        Parameters
        ----------
        input : Tensor
            ``(N, C_in, H, W)`` or ``(C_in, H, W)``, any memory format.

        Returns
        -------
        Tensor
            ``(N, C_out, Ho, Wo)`` (or ``(C_out, Ho, Wo)``), input's dtype.
        """
        return self._conv_forward(input, self.weight, self.bias)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # torch's Conv2d.forward calls this too (subclasses that transform the weight use it)
        if self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        return _F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` whose forward runs on cnnkit when it can.

    Training and evaluation follow ``torch.nn.BatchNorm2d`` exactly: ``num_batches_tracked``
    counts training batches, ``momentum=None`` is a cumulative average, the running statistics
    are updated in place (unbiased variance) and used in eval mode unless
    ``track_running_stats=False``.

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch.nn import BatchNorm2d
    >>> bn = BatchNorm2d(4)
    >>> y = bn(torch.randn(8, 4, 5, 5))
    >>> int(bn.num_batches_tracked), y.shape
    (1, torch.Size([8, 4, 5, 5]))
    """

    @classmethod
    def from_torch(cls, module: torch.nn.BatchNorm2d) -> "BatchNorm2d":
        """The cnnkit module around ``module``'s own parameters and buffers (shared, not copied).

        Parameters
        ----------
        module : torch.nn.BatchNorm2d
            Any configuration (affine or not, tracked statistics or not).

        Returns
        -------
        BatchNorm2d
            A new module (of ``cls``: :class:`BatchNorm2dReLU` and :class:`BatchNorm2dAddReLU`
            inherit this) whose ``weight``, ``bias``, ``running_mean``, ``running_var`` and
            ``num_batches_tracked`` are ``module``'s.
        """
        return _share(cls, module, torch.nn.BatchNorm2d)

    def _arguments(self, input: Tensor) -> tuple[Tensor | None, Tensor | None, bool, float]:
        """(running_mean, running_var, training, momentum) as ``_BatchNorm.forward`` passes them
        to ``F.batch_norm``, with its ``num_batches_tracked`` update."""
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        if self.training:
            training = True
        else:
            training = self.running_mean is None and self.running_var is None
        use = not self.training or self.track_running_stats
        return (self.running_mean if use else None, self.running_var if use else None, training,
                momentum)

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` (training or eval mode, as torch's module does).

        Parameters
        ----------
        input : Tensor
            ``(N, C, H, W)``, contiguous or channels_last.

        Returns
        -------
        Tensor
            input's shape, dtype and memory format.
        """
        rm, rv, training, momentum = self._arguments(input)
        return _F.batch_norm(input, rm, rv, self.weight, self.bias, training, momentum, self.eps)

    def forward_relu(self, input: Tensor) -> Tensor:
        """``relu(self(input))`` in one pass (no forward hooks run).

        Parameters
        ----------
        input : Tensor
            ``(N, C, H, W)``.

        Returns
        -------
        Tensor
            input's shape, dtype and memory format.
        """
        rm, rv, training, momentum = self._arguments(input)
        return _F.batch_norm_relu(input, rm, rv, self.weight, self.bias, training, momentum,
                                  self.eps)

    def forward_add_relu(self, input: Tensor, residual: Tensor) -> Tensor:
        """``relu(self(input) + residual)`` in one pass (a residual block's tail; no forward
        hooks run).

        Parameters
        ----------
        input : Tensor
            ``(N, C, H, W)``.
        residual : Tensor
            input's shape and dtype.

        Returns
        -------
        Tensor
            input's shape, dtype and memory format.
        """
        rm, rv, training, momentum = self._arguments(input)
        return _F.batch_norm_add_relu(input, residual, rm, rv, self.weight, self.bias, training,
                                      momentum, self.eps)


class BatchNorm2dReLU(BatchNorm2d):
    """:class:`BatchNorm2d` followed by ReLU, fused: ``relu(bn(x))``.

    The state dict is that of ``torch.nn.BatchNorm2d`` (keys ``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``).

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch.nn import BatchNorm2dReLU
    >>> m = BatchNorm2dReLU(3)
    >>> bool((m(torch.randn(4, 3, 2, 2)) >= 0).all())
    True
    """

    def forward(self, input: Tensor) -> Tensor:
        """``relu(batch_norm(input))``.

        Parameters
        ----------
        input : Tensor
            ``(N, C, H, W)``.

        Returns
        -------
        Tensor
            input's shape, dtype and memory format.
        """
        return self.forward_relu(input)


class BatchNorm2dAddReLU(BatchNorm2d):
    """:class:`BatchNorm2d`, a residual added, then ReLU, fused: ``relu(bn(x) + residual)``.

    The state dict is that of ``torch.nn.BatchNorm2d``.

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch.nn import BatchNorm2dAddReLU
    >>> m = BatchNorm2dAddReLU(3)
    >>> x = torch.randn(4, 3, 2, 2)
    >>> m(x, x).shape
    torch.Size([4, 3, 2, 2])
    """

    def forward(self, input: Tensor, residual: Tensor) -> Tensor:  # type: ignore[override]
        """``relu(batch_norm(input) + residual)``.

        Parameters
        ----------
        input : Tensor
            ``(N, C, H, W)``.
        residual : Tensor
            input's shape and dtype.

        Returns
        -------
        Tensor
            input's shape, dtype and memory format.
        """
        return self.forward_add_relu(input, residual)


class GroupNorm(torch.nn.GroupNorm):
    """``torch.nn.GroupNorm`` whose forward runs on cnnkit when it can.

    Examples
    --------
    >>> import torch
    >>> from cnnkit.torch.nn import GroupNorm
    >>> gn = GroupNorm(2, 4)
    >>> gn(torch.randn(2, 4, 3, 3)).shape
    torch.Size([2, 4, 3, 3])
    """

    @classmethod
    def from_torch(cls, module: torch.nn.GroupNorm) -> "GroupNorm":
        """The cnnkit module around ``module``'s own weight and bias (shared, not copied).

        Parameters
        ----------
        module : torch.nn.GroupNorm

        Returns
        -------
        GroupNorm
            A new module; ``result.weight is module.weight``.
        """
        return _share(cls, module, torch.nn.GroupNorm)

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` over groups of channels.

        Parameters
        ----------
        input : Tensor
            ``(N, C, *spatial)``.

        Returns
        -------
        Tensor
            input's shape, dtype and memory format.
        """
        return _F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
