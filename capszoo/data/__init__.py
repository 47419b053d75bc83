"""Data sets: MNIST idx reading and downloading."""
from ._idx import read_idx, read_images, read_labels
from ._mnist import MNIST_FILES, load_mnist

__all__ = ["read_idx", "read_images", "read_labels", "MNIST_FILES", "load_mnist"]
