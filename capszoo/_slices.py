"""Slices of a CapsNet (Wolfram's NetTake / NetExtract / NetPort) as HybridBlocks.

The CapsNet is a chain of stages, each a named sub-net::

    image (N,1,28,28)
      -> ReLUConv1        (N,256,20,20)
      -> PrimaryCaps      (N,1152,8)
      -> PrimaryPredVects (N,10,1152,16)
      -> DigitCaps        (N,10,16)
      -> Pick             (N,16)        the capsule of the predicted (longest) class
      -> Reconstruct      (N,1,28,28)

A :class:`NetSlice` runs a contiguous run of stages and shares its sub-nets'
parameters with the net it was cut from (no copy).  It is a HybridBlock:
hybridize it, export it, call it on NDArrays.
"""
from __future__ import annotations

from mxnet.gluon import HybridBlock

from ._net import SUBNET_NAMES, capsule_lengths
from .errors import SubnetNotFoundError

__all__ = ["NetSlice", "take", "STAGE_SHAPES", "OUTPUT_NAMES"]

#: Output shape (without the batch axis) of each stage; "input" is the image.
STAGE_SHAPES = {
    "input": (1, 28, 28),
    "ReLUConv1": (256, 20, 20),
    "PrimaryCaps": (1152, 8),
    "PrimaryPredVects": (10, 1152, 16),
    "DigitCaps": (10, 16),
    "Pick": (16,),
    "Reconstruct": (1, 28, 28),
}


#: Name of each stage's output in exports (ONNX output names, MXNet ``<name>_output``).
OUTPUT_NAMES = {
    "ReLUConv1": "relu_conv1",
    "PrimaryCaps": "primary_capsules",
    "PrimaryPredVects": "prediction_vectors",
    "DigitCaps": "digit_capsules",
    "Pick": "capsule",
    "Reconstruct": "reconstruction",
}


def _index(name, what):
    if name not in SUBNET_NAMES:
        raise SubnetNotFoundError(f"no sub-net {name!r} ({what}); sub-nets in order: {', '.join(SUBNET_NAMES)}")
    return SUBNET_NAMES.index(name)


class NetSlice(HybridBlock):
    """Stages ``start`` through ``end`` (inclusive) of a CapsNet.

    Parameters
    ----------
    net : CapsNet
        The net whose sub-nets (and parameters) the slice shares.
    start, end : str
        Sub-net names; ``start`` must not come after ``end``.
    """

    def __init__(self, net, start, end=None, **kwargs):
        end = start if end is None else end
        i, j = _index(start, "slice start"), _index(end, "slice end")
        if i > j:
            raise SubnetNotFoundError(f"slice {start}:{end} is reversed: {start} comes after {end} "
                                      f"(order: {' -> '.join(SUBNET_NAMES)})")
        super().__init__(prefix=f"{net.prefix}{start}_{end}_", **kwargs)
        self.start_name, self.end_name = start, end
        self.stage_names = SUBNET_NAMES[i:j + 1]
        for name in self.stage_names:
            self.register_child(net[name], name)
        self.output_names = (OUTPUT_NAMES[end],)

    @property
    def input_shape(self):
        """Input shape without the batch axis."""
        i = SUBNET_NAMES.index(self.start_name)
        return STAGE_SHAPES["input" if i == 0 else SUBNET_NAMES[i - 1]]

    @property
    def output_shape(self):
        """Output shape without the batch axis."""
        return STAGE_SHAPES[self.end_name]

    def __getitem__(self, name):
        if name not in self._children:
            raise SubnetNotFoundError(f"slice {self.start_name}:{self.end_name} has no sub-net {name!r}; "
                                      f"it holds {', '.join(self.stage_names)}")
        return self._children[name]

    def hybrid_forward(self, F, x):
        for name in self.stage_names:
            block = self._children[name]
            if name == "Pick":
                x = block(x, F.argmax(capsule_lengths(F, x), axis=1))
            else:
                x = block(x)
        return x

    def __repr__(self):
        return f"NetSlice({self.start_name}:{self.end_name}, stages={list(self.stage_names)})"


def take(net, start, end=None):
    """A :class:`NetSlice` of ``net`` from sub-net ``start`` to ``end`` (inclusive).

    ``take(net, "ReLUConv1", "Pick")`` is the feature extractor (image -> 16-D
    capsule); ``take(net, "Reconstruct")`` the reconstructor (16-D -> image).
    A spec ``"A:B"`` may be passed as ``start``.
    """
    if end is None and isinstance(start, str) and ":" in start:
        start, _, end = start.partition(":")
    return NetSlice(net, start, end)
