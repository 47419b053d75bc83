"""The LeNet family: Wolfram's "LeNet Trained on MNIST Data", the zoo's baseline for the capsule nets.

Light module (no MXNet): the family, its recipe schema and the card; the net is in ``net.py``.
"""
from __future__ import annotations

import dataclasses

from ..._registry import Family, ModelCard, register_family, register_model
from ...errors import RecipeError
from .._common import MNIST_CLASSES, MNIST_PREPROCESSING, published

__all__ = ["NetSection", "LossSection"]


@dataclasses.dataclass(frozen=True)
class NetSection:
    """A LeNet recipe's ``[net]``: nothing to choose (the architecture is fixed)."""

    def _check(self):
        pass


@dataclasses.dataclass(frozen=True)
class LossSection:
    """A LeNet recipe's ``[loss]``: softmax cross-entropy."""

    kind: str

    def _check(self):
        if self.kind != "softmax_cross_entropy":
            raise RecipeError(f"loss.kind {self.kind!r} is not supported for LeNet; use 'softmax_cross_entropy'")


register_family(Family(
    name="lenet",
    build="capszoo.models.lenet.net:LeNet",
    build_training="capszoo.models.lenet.net:LeNetTrainingNet.from_recipe_and_net",
    initialize="capszoo.models.lenet.net:initialize",
    net_section=NetSection, loss_section=LossSection))


def _card():
    weights, metrics, training = published("lenet-mnist")
    return ModelCard(
        name="lenet-mnist", aliases=("LeNet Trained on MNIST Data", "lenet"),
        display_name="LeNet Trained on MNIST Data",
        description=("LeNet convolutional net (two 5x5 convolutions with max-pooling, a 500-unit hidden "
                     "layer, softmax) that classifies 28x28 handwritten digits: the zoo's baseline."),
        task="image classification", classes=MNIST_CLASSES,
        input_shape=(1, 28, 28), input_dtype="float32", input_range=(0.0, 1.0),
        preprocessing=MNIST_PREPROCESSING, num_params=431_080, num_layers=10,
        subnets=("ReLUConv1", "Pool1", "ReLUConv2", "Pool2", "ReLUDense", "Dense", "Softmax"),
        outputs=("probabilities",), feature_slice=("ReLUConv1", "ReLUDense"),
        reference=("Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, \"Gradient-Based Learning Applied to Document "
                   "Recognition\", Proc. IEEE 86(11), 1998"),
        license="Apache-2.0 (code and weights); MNIST data: CC BY-SA 3.0",
        recipe="lenet-mnist", weights=weights, metrics=metrics, training=training,
        runtime_graph="lenet-mnist.graph.onnx", arch="lenet", arch_args={}, tag="mnist")


register_model(_card())
