"""The zoo's entries, one package per architecture family.

Each family package registers its :class:`~capszoo._registry.Family` and its
entries' :class:`~capszoo._registry.ModelCard` objects when imported, and keeps
its MXNet code in ``net.py`` (imported only when a net is built):

- :mod:`capszoo.models.capsnet`: the CapsNet of Sabour, Frosst and Hinton (2017)
  and the variants of its ablation (routing iterations, decoders);
- :mod:`capszoo.models.lenet`: LeNet, the zoo's baseline.

Adding an entry of an existing family is one card here and one recipe in
``recipes/``; a new family is one package like these.
"""
from . import capsnet, lenet  # noqa: F401  (registration)
from ._common import MNIST_CLASSES, MNIST_PREPROCESSING, published

__all__ = ["MNIST_CLASSES", "MNIST_PREPROCESSING", "published"]
