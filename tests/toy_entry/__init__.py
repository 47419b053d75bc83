"""A zoo entry made outside capszoo, as a user would add one: this module (the family, the net
and the card) and ``toy-mlp-mnist.toml`` (the recipe).  ``tests/test_zoo.py`` registers it and
runs every verb on it; nothing in capszoo knows about it."""
from __future__ import annotations

import dataclasses
import pathlib

from capszoo import Family, ModelCard, register_family, register_model
from capszoo.errors import RecipeError
from capszoo.models import MNIST_CLASSES, MNIST_PREPROCESSING

NAME = "toy-mlp-mnist"
RECIPE = str(pathlib.Path(__file__).with_name(f"{NAME}.toml"))
HIDDEN = 32
#: 784 * 32 + 32 + 32 * 10 + 10
NUM_PARAMS = 25_450


@dataclasses.dataclass(frozen=True)
class NetSection:
    hidden: int

    def _check(self):
        if self.hidden < 1:
            raise RecipeError(f"net.hidden must be >= 1, got {self.hidden}")


@dataclasses.dataclass(frozen=True)
class LossSection:
    def _check(self):
        pass


def build(hidden=HIDDEN):
    from mxnet.gluon import HybridBlock, nn
    from capszoo import SubnetChain

    class _Softmax(HybridBlock):
        def hybrid_forward(self, F, x):
            return F.softmax(x, axis=-1)

    class ToyMLP(SubnetChain, HybridBlock):
        output_names = ("probabilities",)
        subnet_names = ("ReLUDense", "Dense", "Softmax")
        stage_outputs = {"ReLUDense": "features", "Dense": "logits", "Softmax": "probabilities"}

        def __init__(self):
            super().__init__(prefix="toy_")
            with self.name_scope():
                self.register_child(nn.Dense(hidden, activation="relu", in_units=784, prefix="ReLUDense_"),
                                    "ReLUDense")
                self.register_child(nn.Dense(10, in_units=hidden, prefix="Dense_"), "Dense")
                self.register_child(_Softmax(prefix="Softmax_"), "Softmax")

        def logits(self, F, x):
            return self._children["Dense"](self._children["ReLUDense"](x))

        def hybrid_forward(self, F, x):
            return self._children["Softmax"](self.logits(F, x))

    return ToyMLP()


def build_training(net, recipe):
    from mxnet.gluon import HybridBlock

    class ToyTraining(HybridBlock):
        def __init__(self):
            super().__init__(prefix="")
            with self.name_scope():
                self.net = net

        def hybrid_forward(self, F, x, label):
            logits = self.net.logits(F, x)
            loss = -F.pick(F.log_softmax(logits, axis=-1), label, axis=-1)
            return loss, F.zeros_like(loss), F.softmax(logits, axis=-1)

    return ToyTraining()


def initialize(net, recipe, ctx):
    import mxnet as mx
    net.initialize(mx.init.Xavier(), ctx=ctx)


FAMILY = Family(name="toymlp", build=build, build_training=build_training, initialize=initialize,
                net_section=NetSection, loss_section=LossSection)

CARD = ModelCard(
    name=NAME, aliases=("Toy MLP Trained on MNIST Data",), display_name="Toy MLP Trained on MNIST Data",
    description="A one-hidden-layer perceptron: the test suite's entry from outside the package.",
    task="image classification", classes=MNIST_CLASSES, input_shape=(1, 28, 28), input_dtype="float32",
    input_range=(0.0, 1.0), preprocessing=MNIST_PREPROCESSING, num_params=NUM_PARAMS, num_layers=4,
    subnets=("ReLUDense", "Dense", "Softmax"), outputs=("probabilities",), feature_slice=("ReLUDense", "ReLUDense"),
    reference="none", license="Apache-2.0", recipe=RECIPE, arch="toymlp", arch_args={"hidden": HIDDEN},
    tag="mnist")


def register():
    """Register the family and the card (what a plug-in's import would do)."""
    register_family(FAMILY)
    register_model(CARD)
    return CARD
