"""Fused multi-tensor optimizers with ``torch.optim`` semantics, on NumPy arrays."""
from . import functional, lr_scheduler
from .clip import clip_grad_norm_, found_inf, global_norm
from .lr_scheduler import *  # noqa: F401,F403
from .lr_scheduler import __all__ as _sched_all
from .optimizer import Optimizer, flatten_state_dict
from .optimizers import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "functional",
           "clip_grad_norm_", "global_norm", "found_inf", "flatten_state_dict",
           "lr_scheduler"] + _sched_all  # a plain concatenation: the API reference reads it
