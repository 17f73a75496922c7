"""Array operations on cnnkit's compiled kernels (normalization; convolution to come)."""
from .norm import (batch_norm_backward, batch_norm_infer, batch_norm_train, fold_batch_norm,
                   group_norm, group_norm_backward)

__all__ = ["batch_norm_train", "batch_norm_infer", "batch_norm_backward", "group_norm",
           "group_norm_backward", "fold_batch_norm"]
