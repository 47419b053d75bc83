"""The CapsNet of Sabour, Frosst and Hinton (2017) as MXNet Gluon HybridBlocks.

The net is a chain of named sub-nets.  The names (``SUBNET_NAMES``) are part of
the weights format: parameter names in a ``.params`` file are
``<SubNet>.<param>``, e.g. ``PrimaryPredVects.weight``.

Routing by agreement is written as batched matrix-vector products: the
prediction vectors are laid out as ``(batch*10, 1152, 16)`` so that the
weighted sum over primary capsules and the agreement are each a single
``batch_dot``.  Every reshape uses only the codes ``0`` and ``-1`` and fixed
sizes, so the hybridized graph is pure MXNet operators with a dynamic batch
dimension, exportable to MXNet symbol JSON and ONNX.
"""
from __future__ import annotations

from . import _env  # noqa: F401  (sets OMP_NUM_THREADS before mxnet loads)

import mxnet as mx
from mxnet.gluon import HybridBlock, nn

__all__ = [
    "SUBNET_NAMES",
    "NUM_CLASSES",
    "CapsNet",
    "ReLUConv1",
    "PrimaryCaps",
    "PrimaryPredVects",
    "DigitCaps",
    "Pick",
    "Reconstruct",
    "squash",
    "capsule_lengths",
]

#: The sub-nets of a CapsNet, in data-flow order.  Frozen: part of the weights format.
SUBNET_NAMES = ("ReLUConv1", "PrimaryCaps", "PrimaryPredVects", "DigitCaps", "Pick", "Reconstruct")

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
PRIMARY_TYPES = 32          # capsule types in PrimaryCaps
PRIMARY_DIM = 8             # dimension of a primary capsule
PRIMARY_GRID = 6            # 6x6 positions after the stride-2 conv
NUM_PRIMARY = PRIMARY_TYPES * PRIMARY_GRID * PRIMARY_GRID  # 1152
DIGIT_DIM = 16              # dimension of a digit capsule
_EPS = 1e-9


def squash(F, s, axis):
    """Squash non-linearity ``|s|^2 / (1 + |s|^2) * s / |s|`` along ``axis``."""
    sq = F.sum(F.square(s), axis=axis, keepdims=True)
    scale = sq / (1.0 + sq) / F.sqrt(sq + _EPS)
    return F.broadcast_mul(s, scale)


def capsule_lengths(F, caps):
    """Lengths of capsules ``(N, 10, 16) -> (N, 10)``: the class probabilities."""
    return F.sqrt(F.sum(F.square(caps), axis=2) + _EPS)


class ReLUConv1(nn.Conv2D):
    """9x9 convolution, 256 channels, stride 1, ReLU: ``(N,1,28,28) -> (N,256,20,20)``."""

    def __init__(self, **kwargs):
        super().__init__(channels=256, kernel_size=9, strides=1, activation="relu",
                         in_channels=1, **kwargs)


class PrimaryCaps(HybridBlock):
    """9x9 stride-2 convolution with 256 channels, regrouped into 1152 squashed
    8-D capsules: ``(N,256,20,20) -> (N,1152,8)``.

    Channel ``c = 8*t + d`` at grid position ``(y, x)`` is dimension ``d`` of the
    capsule of type ``t`` at ``(y, x)``; capsules are ordered type-major,
    ``i = 36*t + 6*y + x``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(256, 256, 9, 9))
            self.bias = self.params.get("bias", shape=(256,), init="zeros")

    def hybrid_forward(self, F, x, weight, bias):
        y = F.Convolution(x, weight, bias, kernel=(9, 9), stride=(2, 2), num_filter=256)
        y = F.reshape(y, shape=(0, PRIMARY_TYPES, PRIMARY_DIM, -1))      # (N,32,8,36)
        y = F.transpose(y, axes=(0, 1, 3, 2))                            # (N,32,36,8)
        y = F.reshape(y, shape=(0, -1, PRIMARY_DIM))                     # (N,1152,8)
        return squash(F, y, axis=2)


class PrimaryPredVects(HybridBlock):
    """Prediction vectors ``u_hat[j|i] = W[i,j] u_i`` with one weight array
    ``W`` of shape ``(1152, 10, 16, 8)``: ``(N,1152,8) -> (N,10,1152,16)``."""

    def __init__(self, weight_initializer=None, **kwargs):
        super().__init__(**kwargs)
        init = weight_initializer or mx.init.Uniform(0.005)
        with self.name_scope():
            self.weight = self.params.get(
                "weight", shape=(NUM_PRIMARY, NUM_CLASSES, DIGIT_DIM, PRIMARY_DIM), init=init)

    def hybrid_forward(self, F, u, weight):
        w = F.reshape(weight, shape=(NUM_PRIMARY, NUM_CLASSES * DIGIT_DIM, PRIMARY_DIM))
        ut = F.transpose(u, axes=(1, 2, 0))                              # (1152,8,N)
        uh = F.batch_dot(w, ut)                                          # (1152,160,N)
        uh = F.reshape(uh, shape=(0, NUM_CLASSES, DIGIT_DIM, -1))        # (1152,10,16,N)
        return F.transpose(uh, axes=(3, 1, 0, 2))                        # (N,10,1152,16)


class DigitCaps(HybridBlock):
    """Routing by agreement: ``(N,10,1152,16) -> (N,10,16)`` digit capsules.

    Parameters
    ----------
    routing_iterations : int
        Number of routing iterations (3 in the paper).
    """

    def __init__(self, routing_iterations=3, **kwargs):
        super().__init__(**kwargs)
        if int(routing_iterations) != routing_iterations or routing_iterations < 1:
            raise ValueError(f"routing_iterations must be a positive integer, got {routing_iterations!r}")
        self.routing_iterations = int(routing_iterations)

    def hybrid_forward(self, F, u_hat):
        uh = F.reshape(u_hat, shape=(-1, NUM_PRIMARY, DIGIT_DIM))        # (N*10,1152,16)
        logits = None
        v = None
        for it in range(self.routing_iterations):
            if logits is None:
                # b = 0 -> uniform coupling coefficients 1/10.  A batch_dot with a vector of
                # 0.1s is 4x faster than a sum over the 1152 axis (forward and backward); the
                # ones come from a contiguous slice (a slice of uh's last axis is a strided
                # gather, 8x slower).
                flat = F.slice_axis(F.reshape(uh, shape=(0, -1)), axis=1, begin=0, end=NUM_PRIMARY)
                c = F.reshape(F.ones_like(flat), shape=(0, 0, 1)) * (1.0 / NUM_CLASSES)  # (N*10,1152,1)
            else:
                # softmax over the 10 classes, taken on the last axis (MXNet's fast case):
                # (N,10,1152) -> (N,1152,10) -> softmax -> back.
                b = F.transpose(F.reshape(logits, shape=(-1, NUM_CLASSES, NUM_PRIMARY)), axes=(0, 2, 1))
                c = F.transpose(F.softmax(b, axis=-1), axes=(0, 2, 1))
                c = F.reshape(c, shape=(-1, NUM_PRIMARY, 1))                # (N*10,1152,1)
            s = F.batch_dot(uh, c, transpose_a=True)                        # (N*10,16,1)
            v = squash(F, s, axis=1)
            if it + 1 < self.routing_iterations:
                agreement = F.batch_dot(uh, v)                              # (N*10,1152,1)
                logits = agreement if logits is None else logits + agreement
        return F.reshape(v, shape=(-1, NUM_CLASSES, DIGIT_DIM))


class Pick(HybridBlock):
    """The 16-D capsule of one class: ``(N,10,16), (N,) -> (N,16)``.

    The class index is the predicted class at inference and the true label in
    training (the decoder is fed the true class's capsule).
    """

    def hybrid_forward(self, F, caps, index):
        mask = F.one_hot(index, depth=NUM_CLASSES)                       # (N,10)
        return F.sum(F.broadcast_mul(caps, F.expand_dims(mask, axis=2)), axis=1)


class Reconstruct(nn.HybridSequential):
    """Decoder: Dense 16->512 ReLU, 512->1024 ReLU, 1024->784 sigmoid, as 1x28x28."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.add(nn.Dense(512, activation="relu", in_units=DIGIT_DIM),
                     nn.Dense(1024, activation="relu", in_units=512),
                     nn.Dense(784, activation="sigmoid", in_units=1024),
                     nn.HybridLambda(lambda F, x: F.reshape(x, shape=(-1,) + IMAGE_SHAPE)))


class CapsNet(HybridBlock):
    """CapsNet for 28x28 digits.

    ``net(x)`` maps a float32 batch ``(N,1,28,28)`` in [0, 1] to three outputs:
    class probabilities ``(N,10)`` (capsule lengths), the predicted class's
    capsule ``(N,16)`` and its reconstruction ``(N,1,28,28)``.

    Sub-nets are reached by name: ``net["DigitCaps"]``.

    Parameters
    ----------
    routing_iterations : int, default 3
        Iterations of routing by agreement in ``DigitCaps``.
    """

    output_names = ("probabilities", "capsule", "reconstruction")

    def __init__(self, routing_iterations=3, prefix="capsnet_", **kwargs):
        super().__init__(prefix=prefix, **kwargs)
        with self.name_scope():
            self.register_child(ReLUConv1(prefix="ReLUConv1_"), "ReLUConv1")
            self.register_child(PrimaryCaps(prefix="PrimaryCaps_"), "PrimaryCaps")
            self.register_child(PrimaryPredVects(prefix="PrimaryPredVects_"), "PrimaryPredVects")
            self.register_child(DigitCaps(routing_iterations, prefix="DigitCaps_"), "DigitCaps")
            self.register_child(Pick(prefix="Pick_"), "Pick")
            self.register_child(Reconstruct(prefix="Reconstruct_"), "Reconstruct")

    @property
    def routing_iterations(self) -> int:
        return self["DigitCaps"].routing_iterations

    def __getitem__(self, name):
        try:
            return self._children[name]
        except KeyError:
            raise KeyError(f"CapsNet has no sub-net {name!r}; sub-nets: {', '.join(SUBNET_NAMES)}") from None

    def subnets(self):
        """``(name, block)`` pairs in data-flow order."""
        return [(n, self._children[n]) for n in SUBNET_NAMES]

    def digit_capsules(self, F, x):
        u = self["PrimaryCaps"](self["ReLUConv1"](x))
        return self["DigitCaps"](self["PrimaryPredVects"](u))

    def hybrid_forward(self, F, x):
        caps = self.digit_capsules(F, x)
        probs = capsule_lengths(F, caps)
        capsule = self["Pick"](caps, F.argmax(probs, axis=1))
        return probs, capsule, self["Reconstruct"](capsule)
