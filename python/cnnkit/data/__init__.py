"""Datasets and mini-batch loading on NumPy arrays.

:class:`ArrayDataset` holds a user's own arrays (or an ``.npz``); :func:`load_digits`
(scikit-learn's 8x8 digits, optionally resized) and :func:`load_faces` (scikit-image's
face/non-face subset, optional dependency) are small bundled datasets; :func:`make_shapes` draws
synthetic shapes with ground-truth boxes and masks, for checking that explanations point at the
object; :func:`train_test_split` splits per class. :class:`DataLoader` iterates mini-batches
(``batch_size=1``: SGD; ``batch_size=len(dataset)``: full-batch), reshuffled each epoch from its
own seeded Generator, with an optional :mod:`cnnkit.augment` pipeline applied per batch.

Network inputs are float32 NCHW images with int64 class labels; ``as_uint8=True`` loaders give
uint8 NHWC images for the augmentation pipeline (end it with :class:`cnnkit.augment.Normalize`).
"""
from .datasets import SHAPES, ArrayDataset, load_digits, load_faces, make_shapes, train_test_split
from .loader import DataLoader

__all__ = ["ArrayDataset", "DataLoader", "load_digits", "load_faces", "make_shapes", "train_test_split",
           "SHAPES"]
