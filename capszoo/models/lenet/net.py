"""LeNet as MXNet Gluon HybridBlocks: Wolfram's "LeNet Trained on MNIST Data".

conv 20 5x5, ReLU, max-pool 2x2, conv 50 5x5, ReLU, max-pool 2x2, flatten,
Dense 500, ReLU, Dense 10, softmax: 431,080 parameters, as named sub-nets
(parameters are stored as ``<SubNet>.<param>``, e.g. ``ReLUConv2.weight``).
"""
from __future__ import annotations

from ... import _env  # noqa: F401  (sets OMP_NUM_THREADS before mxnet loads)

import mxnet as mx
from mxnet.gluon import HybridBlock, nn

from ..._nets import SubnetChain

__all__ = ["LeNet", "LeNetTrainingNet", "SUBNET_NAMES", "initialize"]

#: The sub-nets of LeNet, in data-flow order.  Frozen: part of the weights format.
SUBNET_NAMES = ("ReLUConv1", "Pool1", "ReLUConv2", "Pool2", "ReLUDense", "Dense", "Softmax")


class _Softmax(HybridBlock):
    def hybrid_forward(self, F, x):
        return F.softmax(x, axis=-1)


class LeNet(SubnetChain, HybridBlock):
    """LeNet for 28x28 digits: ``net(x)`` maps ``(N,1,28,28)`` in [0, 1] to class probabilities ``(N,10)``.

    Sub-nets are reached by name: ``net["ReLUDense"]`` (its 500-D output is the feature vector).
    """

    output_names = ("probabilities",)
    subnet_names = SUBNET_NAMES
    #: Name of each sub-net's output in exports.
    stage_outputs = {"ReLUConv1": "relu_conv1", "Pool1": "pool1", "ReLUConv2": "relu_conv2", "Pool2": "pool2",
                     "ReLUDense": "features", "Dense": "logits", "Softmax": "probabilities"}

    def __init__(self, prefix="lenet_", **kwargs):
        super().__init__(prefix=prefix, **kwargs)
        with self.name_scope():
            for name, block in (
                    ("ReLUConv1", nn.Conv2D(20, 5, activation="relu", in_channels=1, prefix="ReLUConv1_")),
                    ("Pool1", nn.MaxPool2D(2, 2, prefix="Pool1_")),
                    ("ReLUConv2", nn.Conv2D(50, 5, activation="relu", in_channels=20, prefix="ReLUConv2_")),
                    ("Pool2", nn.MaxPool2D(2, 2, prefix="Pool2_")),
                    ("ReLUDense", nn.Dense(500, activation="relu", in_units=800, prefix="ReLUDense_")),  # flattens
                    ("Dense", nn.Dense(10, in_units=500, prefix="Dense_")),
                    ("Softmax", _Softmax(prefix="Softmax_"))):
                self.register_child(block, name)


    def logits(self, F, x):
        for name in SUBNET_NAMES[:-1]:
            x = self._children[name](x)
        return x

    def hybrid_forward(self, F, x):
        return self._children["Softmax"](self.logits(F, x))


class LeNetTrainingNet(HybridBlock):
    """LeNet with softmax cross-entropy: ``(x, label) -> (Loss (N,), zeros (N,), probabilities (N,10))``."""

    def __init__(self, net, **kwargs):
        super().__init__(prefix="", **kwargs)
        with self.name_scope():
            self.net = net

    @classmethod
    def from_recipe_and_net(cls, net, recipe):
        return cls(net)

    def hybrid_forward(self, F, x, label):
        logits = self.net.logits(F, x)
        loss = -F.pick(F.log_softmax(logits, axis=-1), label, axis=-1)
        return loss, F.zeros_like(loss), F.softmax(logits, axis=-1)


def initialize(net, recipe, ctx):
    """Xavier (uniform, fan-average) for every weight, zeros for the biases; the caller seeds."""
    net.initialize(mx.init.Xavier(), ctx=ctx)
    return net
