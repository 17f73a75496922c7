"""Attribution: which input pixels (or layer positions) a CNN's decision rests on.

Gradients (:func:`saliency`, :func:`gradient_x_input`, :func:`smoothgrad`,
:func:`integrated_gradients`, :func:`guided_backprop`, :func:`deconvnet`), class activation maps
(:func:`grad_cam`, :func:`grad_cam_pp`, :func:`xgrad_cam`, :func:`layer_cam`, :func:`hires_cam`,
:func:`eigen_cam`, :func:`score_cam`, :func:`guided_grad_cam`), perturbations
(:func:`occlusion`, :func:`rise`), the metrics that score them (:mod:`cnnkit.explain.metrics`)
and pictures (:func:`overlay`, :func:`plot`).

What a unit looks for: :func:`feature_visualization` optimizes images that maximize an objective
(:mod:`cnnkit.explain.objectives`: a channel, a neuron, a layer, a class logit, a direction,
with diversity and image regularizers), through the model's backward started at the objective's
layers (a cnnkit ``Sequential``; Olah et al., "Feature Visualization", Distill 2017).

Every method takes ``model, x, target=None`` and returns float32 NumPy arrays:

* ``model``: a :class:`cnnkit.nn.Module` (the fast path), a :class:`TorchModel` around a PyTorch
  module, or any object with ``forward(x) -> logits`` (perturbation methods and metrics need
  nothing more; gradient methods also ``backward(grad_logits, input_grad=True) -> grad_x``; CAMs
  ``capture(name)``, ``release()`` and ``named_modules()``; guided backprop and deconvnet
  ``set_relu_backward(mode)``; the protocol is spelled out in ``cnnkit.explain._model``).
* ``x``: a float32 batch in the model's layout, (N, C, H, W) or (N, H, W, C).
* ``target``: None (the predicted class), an int, or one int per image. The explained quantity
  is the target's logit (captum's and pytorch-grad-cam's convention); RISE and the
  deletion/insertion metrics use its softmax probability, as their papers do.

A method runs the model in eval mode and restores its modes, captures, ReLU rule, parameter
gradients and buffers afterwards, even when it raises.
"""
from __future__ import annotations

from . import metrics, objectives
from ._model import explaining, release_buffers
from .cam import (eigen_cam, grad_cam, grad_cam_pp, guided_grad_cam, hires_cam, layer_cam, score_cam,
                  xgrad_cam)
from .gradients import (deconvnet, gradient_x_input, guided_backprop, integrated_gradients, saliency,
                        smoothgrad)
from .features import feature_visualization
from .perturbation import occlusion, rise
from .plot import METHODS, as_maps, overlay, plot
from .torch_model import TorchModel
from .blocks import (Factorization, GroupAttribution, SemanticDictionary, TopActivating,  # Building Blocks
                     factorize_activations, group_attribution, semantic_dictionary, top_activating)

__all__ = ["saliency", "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop", "deconvnet",
           "grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam", "eigen_cam", "score_cam",
           "guided_grad_cam", "occlusion", "rise", "metrics", "overlay", "plot", "as_maps", "TorchModel", "explaining", "release_buffers",
           "METHODS", "feature_visualization", "objectives"]
__all__ += ["factorize_activations", "group_attribution", "semantic_dictionary", "top_activating",
            "Factorization", "GroupAttribution", "SemanticDictionary", "TopActivating"]
