"""Array operations on cnnkit's compiled kernels: convolution and normalization."""
from .conv import (conv2d, conv2d_algorithm, conv2d_backward, conv2d_output_shape,
                   depthwise_separable_conv2d, depthwise_separable_conv2d_backward)
from .fused import FusedConvGrads, conv2d_fused, conv2d_fused_backward
from .norm import (batch_norm_backward, batch_norm_infer, batch_norm_train, fold_batch_norm,
                   group_norm, group_norm_backward)

__all__ = ["conv2d", "conv2d_backward", "conv2d_output_shape", "conv2d_algorithm",
           "depthwise_separable_conv2d", "depthwise_separable_conv2d_backward",
           "batch_norm_train", "batch_norm_infer", "batch_norm_backward", "group_norm",
           "group_norm_backward", "fold_batch_norm", "conv2d_fused", "conv2d_fused_backward",
           "FusedConvGrads"]
