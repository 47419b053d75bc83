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

from ... import _env  # noqa: F401  (sets OMP_NUM_THREADS before mxnet loads)

import mxnet as mx
from mxnet.gluon import HybridBlock, nn

from ..._nets import SubnetChain

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
    "MaskedReconstruct",
    "DeconvReconstruct",
    "DECODERS",
    "STAGE_OUTPUTS",
    "squash",
    "capsule_lengths",
]

#: The sub-nets of a CapsNet, in data-flow order.  Frozen: part of the weights format.
SUBNET_NAMES = ("ReLUConv1", "PrimaryCaps", "PrimaryPredVects", "DigitCaps", "Pick", "Reconstruct")
#: Name of each sub-net's output in exports (ONNX output names, MXNet ``<name>_output``).
STAGE_OUTPUTS = {"ReLUConv1": "relu_conv1", "PrimaryCaps": "primary_capsules",
                 "PrimaryPredVects": "prediction_vectors", "DigitCaps": "digit_capsules", "Pick": "capsule",
                 "Reconstruct": "reconstruction"}

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

    def __init__(self, routing_iterations=3, keep_coupling=False, **kwargs):
        super().__init__(**kwargs)
        if int(routing_iterations) != routing_iterations or routing_iterations < 1:
            raise ValueError(f"routing_iterations must be a positive integer, got {routing_iterations!r}")
        self.routing_iterations = int(routing_iterations)
        #: Also return the coupling coefficients of every iteration, (N, iterations, 1152, 10), in the
        #: graph (for exports that carry them as an extra output).
        self.keep_coupling = bool(keep_coupling)

    def hybrid_forward(self, F, u_hat):
        uh = F.reshape(u_hat, shape=(-1, NUM_PRIMARY, DIGIT_DIM))        # (N*10,1152,16)
        logits = None
        v = None
        kept = []
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
            if self.keep_coupling:                                          # -> (N,1,1152,10)
                cc = F.transpose(F.reshape(c, shape=(-1, NUM_CLASSES, NUM_PRIMARY)), axes=(0, 2, 1))
                kept.append(F.expand_dims(cc, axis=1))
            s = F.batch_dot(uh, c, transpose_a=True)                        # (N*10,16,1)
            v = squash(F, s, axis=1)
            if it + 1 < self.routing_iterations:
                agreement = F.batch_dot(uh, v)                              # (N*10,1152,1)
                logits = agreement if logits is None else logits + agreement
        caps = F.reshape(v, shape=(-1, NUM_CLASSES, DIGIT_DIM))
        if not self.keep_coupling:
            return caps
        return caps, (F.concat(*kept, dim=1) if len(kept) > 1 else kept[0])

    def route(self, F, u_hat):
        """Routing with its intermediate values, imperatively (``F`` is ``mx.nd``): ``(capsules
        (N,10,16), coupling coefficients c (N,iterations,1152,10), logits b (N,iterations,1152,10))``.

        Iteration ``t`` uses ``c = softmax(b)`` over the 10 classes (b = 0, so c = 0.1, at first),
        sums the prediction vectors with ``c`` and squashes; then adds the agreement ``u_hat . v`` to
        ``b``.  The same computation as the graph of ``hybrid_forward``, which does not keep c and b.
        """
        uh = F.reshape(u_hat, shape=(-1, NUM_PRIMARY, DIGIT_DIM))        # (N*10,1152,16)
        b = F.zeros((uh.shape[0], NUM_PRIMARY, 1), ctx=uh.context)
        couplings, logits, v = [], [], None
        for it in range(self.routing_iterations):
            bb = F.reshape(b, shape=(-1, NUM_CLASSES, NUM_PRIMARY))      # (N,10,1152)
            c = F.softmax(bb, axis=1)
            couplings.append(F.transpose(c, axes=(0, 2, 1)))
            logits.append(F.transpose(bb, axes=(0, 2, 1)))
            s = F.batch_dot(uh, F.reshape(c, shape=(-1, NUM_PRIMARY, 1)), transpose_a=True)
            v = squash(F, s, axis=1)
            if it + 1 < self.routing_iterations:
                b = b + F.batch_dot(uh, v)
        return (F.reshape(v, shape=(-1, NUM_CLASSES, DIGIT_DIM)), F.stack(*couplings, axis=1),
                F.stack(*logits, axis=1))


class Pick(HybridBlock):
    """The 16-D capsule of one class: ``(N,10,16), (N,) -> (N,16)``.

    The class index is the predicted class at inference and the true label in
    training (the decoder is fed the true class's capsule).
    """

    def hybrid_forward(self, F, caps, index):
        mask = F.one_hot(index, depth=NUM_CLASSES)                       # (N,10)
        return F.sum(F.broadcast_mul(caps, F.expand_dims(mask, axis=2)), axis=1)


class Reconstruct(nn.HybridSequential):
    """Decoder: Dense 16->512 ReLU, 512->1024 ReLU, 1024->784 sigmoid, as 1x28x28.

    Wolfram's decoder: it reads the 16-D capsule that ``Pick`` chose."""

    needs_class = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.add(nn.Dense(512, activation="relu", in_units=DIGIT_DIM),
                     nn.Dense(1024, activation="relu", in_units=512),
                     nn.Dense(784, activation="sigmoid", in_units=1024),
                     nn.HybridLambda(lambda F, x: F.reshape(x, shape=(-1,) + IMAGE_SHAPE)))


def masked_capsules(F, capsule, index):
    """The paper's decoder input: the 10 digit capsules with all but class ``index`` zeroed,
    flattened to ``(N, 160)``, built from the chosen 16-D capsule ``(N,16)`` and ``index`` ``(N,)``."""
    mask = F.expand_dims(F.one_hot(index, depth=NUM_CLASSES), axis=2)        # (N,10,1)
    masked = F.broadcast_mul(mask, F.expand_dims(capsule, axis=1))          # (N,10,16)
    return F.reshape(masked, shape=(0, -1))                                 # (N,160)


class _ClassDecoder(HybridBlock):
    """A decoder that reads the masked 160-D DigitCaps output: ``(capsule (N,16), class (N,))``.
    Its layers are children ``"0"``, ``"1"``, ... so that parameters are ``Reconstruct.<i>.<param>``."""

    needs_class = True

    def _layers(self, *layers):
        for i, layer in enumerate(layers):
            self.register_child(layer, str(i))
        self._n = len(layers)

    def hybrid_forward(self, F, capsule, index):
        return self.decode_masked(F, masked_capsules(F, capsule, index))

    def decode_masked(self, F, x):
        """The image ``(N,1,28,28)`` of masked capsules ``x`` ``(N,160)``."""
        for i in range(self._n):
            x = self._children[str(i)](x)
            if i == 0:
                x = self._reshape_first(F, x)
        return F.reshape(x, shape=(-1,) + IMAGE_SHAPE)

    def _reshape_first(self, F, x):
        return x


class MaskedReconstruct(_ClassDecoder):
    """The paper's decoder: masked 160-D DigitCaps output -> Dense 512 ReLU, 1024 ReLU, 784 sigmoid."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self._layers(nn.Dense(512, activation="relu", in_units=NUM_CLASSES * DIGIT_DIM),
                         nn.Dense(1024, activation="relu", in_units=512),
                         nn.Dense(784, activation="sigmoid", in_units=1024))


class DeconvReconstruct(_ClassDecoder):
    """A deconvolution decoder (as in ethanleet's PyTorch CapsNet): masked 160-D -> Dense 360 ReLU
    as 10x6x6 -> transposed convolutions 10->32 (9x9, stride 2, ReLU) -> 32->64 (9x9, ReLU)
    -> 64->1 (2x2, sigmoid): 250,121 parameters.

    The last layer, a 2x2 stride-1 transposed convolution, is written as what it equals: a 2x2
    convolution with padding 1 (same outputs for the flipped, transposed kernel; same 257
    parameters), because MXNet 1.9.1's oneDNN backward of a one-channel transposed convolution
    fails ("could not create a primitive descriptor for a reorder primitive")."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self._layers(nn.Dense(360, activation="relu", in_units=NUM_CLASSES * DIGIT_DIM),
                         nn.Conv2DTranspose(32, 9, strides=2, activation="relu", in_channels=10),
                         nn.Conv2DTranspose(64, 9, strides=1, activation="relu", in_channels=32),
                         nn.Conv2D(1, 2, padding=1, activation="sigmoid", in_channels=64))

    def _reshape_first(self, F, x):
        return F.reshape(x, shape=(0, 10, 6, 6))


#: Decoders by recipe name (``[net] decoder``); ``"none"``: no ``Reconstruct`` sub-net.
DECODERS = {"pick": Reconstruct, "masked": MaskedReconstruct, "deconv": DeconvReconstruct, "none": None}


class CapsNet(SubnetChain, HybridBlock):
    """CapsNet for 28x28 digits.

    ``net(x)`` maps a float32 batch ``(N,1,28,28)`` in [0, 1] to class
    probabilities ``(N,10)`` (capsule lengths), the predicted class's capsule
    ``(N,16)`` and, with a decoder, its reconstruction ``(N,1,28,28)``.

    Sub-nets are reached by name: ``net["DigitCaps"]``.

    Parameters
    ----------
    routing_iterations : int, default 3
        Iterations of routing by agreement in ``DigitCaps``.
    decoder : str, default "pick"
        ``Reconstruct``'s kind (:data:`DECODERS`): ``"pick"`` (Wolfram's: Dense from the
        16-D picked capsule), ``"masked"`` (the paper's: Dense from the masked 160-D
        DigitCaps output), ``"deconv"`` (transposed convolutions from the masked
        output) or ``"none"`` (no ``Reconstruct``).
    """

    stage_outputs = STAGE_OUTPUTS

    def __init__(self, routing_iterations=3, decoder="pick", coupling_output=False, prefix="capsnet_", **kwargs):
        super().__init__(prefix=prefix, **kwargs)
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; decoders: {', '.join(DECODERS)}")
        self.decoder = decoder
        names = SUBNET_NAMES if DECODERS[decoder] else SUBNET_NAMES[:-1]
        self.subnet_names = names
        self.output_names = ("probabilities", "capsule", "reconstruction")[:len(names) - 3]
        #: With ``coupling_output``, the net's last output is ``"coupling"``: the coupling coefficients of
        #: every routing iteration, (N, iterations, 1152, 10) (an export's optional extra output).
        self.coupling_output = bool(coupling_output)
        if self.coupling_output:
            self.output_names += ("coupling",)
        with self.name_scope():
            self.register_child(ReLUConv1(prefix="ReLUConv1_"), "ReLUConv1")
            self.register_child(PrimaryCaps(prefix="PrimaryCaps_"), "PrimaryCaps")
            self.register_child(PrimaryPredVects(prefix="PrimaryPredVects_"), "PrimaryPredVects")
            self.register_child(DigitCaps(routing_iterations, keep_coupling=coupling_output, prefix="DigitCaps_"),
                                "DigitCaps")
            self.register_child(Pick(prefix="Pick_"), "Pick")
            if DECODERS[decoder]:
                self.register_child(DECODERS[decoder](prefix="Reconstruct_"), "Reconstruct")

    @property
    def routing_iterations(self) -> int:
        return self["DigitCaps"].routing_iterations


    def digit_capsules(self, F, x):
        u = self["PrimaryCaps"](self["ReLUConv1"](x))
        return self["DigitCaps"](self["PrimaryPredVects"](u))

    def decode(self, F, capsule, index):
        """The reconstruction of ``capsule`` (N,16) as class ``index`` (N,)."""
        dec = self["Reconstruct"]
        return dec(capsule, index) if dec.needs_class else dec(capsule)

    def hybrid_forward(self, F, x):
        caps = self.digit_capsules(F, x)
        extra = ()
        if self.coupling_output:
            caps, coupling = caps
            extra = (coupling,)
        probs = capsule_lengths(F, caps)
        index = F.argmax(probs, axis=1)
        capsule = self["Pick"](caps, index)
        if self.decoder == "none":
            return (probs, capsule) + extra
        return (probs, capsule, self.decode(F, capsule, index)) + extra
