"""Slices of a zoo net (Wolfram's NetTake / NetExtract / NetPort) as HybridBlocks.

Every zoo net is a chain of stages, each a named sub-net (``net.subnet_names``).
A CapsNet::

    image (N,1,28,28)
      -> ReLUConv1        (N,256,20,20)
      -> PrimaryCaps      (N,1152,8)
      -> PrimaryPredVects (N,10,1152,16)
      -> DigitCaps        (N,10,16)
      -> Pick             (N,16)        the capsule of the predicted (longest) class
      -> Reconstruct      (N,1,28,28)   (decoders reading the masked capsules: from (N,160) alone)

A :class:`NetSlice` runs a contiguous run of stages and shares its sub-nets'
parameters with the net it was cut from (no copy).  It is a HybridBlock:
hybridize it, export it, call it on NDArrays.  Stage shapes come from MXNet's
shape inference on the net itself (:func:`stage_shapes`).
"""
from __future__ import annotations

import mxnet as mx
from mxnet.gluon import HybridBlock

from .errors import SubnetNotFoundError
from .models.capsnet.net import STAGE_OUTPUTS, capsule_lengths

__all__ = ["NetSlice", "take", "stage_shapes", "STAGE_SHAPES", "OUTPUT_NAMES"]

#: capsnet-mnist's stage output shapes (without the batch axis); "input" is the image.
STAGE_SHAPES = {"input": (1, 28, 28), "ReLUConv1": (256, 20, 20), "PrimaryCaps": (1152, 8),
                "PrimaryPredVects": (10, 1152, 16), "DigitCaps": (10, 16), "Pick": (16,), "Reconstruct": (1, 28, 28)}
#: capsnet-mnist's stage output names in exports.
OUTPUT_NAMES = dict(STAGE_OUTPUTS)


def _masked_decoder(block):
    return getattr(block, "needs_class", False)


def stage_shapes(net, input_shape=(1, 28, 28)):
    """``{"input": shape, <sub-net>: output shape}`` (no batch axis) of ``net``, by shape inference
    (cached on the net)."""
    cached = getattr(net, "_stage_shapes", None)
    if cached is not None and cached["input"] == tuple(input_shape):
        return cached
    shapes, x = {"input": tuple(input_shape)}, mx.sym.var("data")
    index = None
    for name in net.subnet_names:
        x, index = _apply(net[name], name, mx.sym, x, index)
        _, out, _ = x.infer_shape(data=(1,) + tuple(input_shape))
        shapes[name] = tuple(out[0][1:])
    net._stage_shapes = shapes
    return shapes


def _apply(block, name, F, x, index):
    """One stage; ``index`` carries the class chosen by ``Pick`` to a masked decoder."""
    if name == "Pick":
        index = F.argmax(capsule_lengths(F, x), axis=1)
        return block(x, index), index
    if _masked_decoder(block):
        return (block(x, index) if index is not None else block.decode_masked(F, x)), index
    return block(x), index


class NetSlice(HybridBlock):
    """Stages ``start`` through ``end`` (inclusive) of a zoo net.

    Parameters
    ----------
    net : HybridBlock
        The net (with ``subnet_names``) whose sub-nets (and parameters) the slice shares.
    start, end : str
        Sub-net names; ``start`` must not come after ``end``.
    """

    def __init__(self, net, start, end=None, **kwargs):
        end = start if end is None else end
        order = tuple(net.subnet_names)
        i, j = _index(order, start, "slice start"), _index(order, end, "slice end")
        if i > j:
            raise SubnetNotFoundError(f"slice {start}:{end} is reversed: {start} comes after {end} "
                                      f"(order: {' -> '.join(order)})")
        super().__init__(prefix=f"{net.prefix}{start}_{end}_", **kwargs)
        self.start_name, self.end_name = start, end
        self.stage_names = order[i:j + 1]
        self._order = order
        self._shapes = stage_shapes(net)   # symbolic shape inference: no data, milliseconds
        for name in self.stage_names:
            self.register_child(net[name], name)
        self.output_names = (getattr(net, "stage_outputs", {}).get(end, _snake(end)),)

    @property
    def input_shape(self):
        """Input shape without the batch axis."""
        i = self._order.index(self.start_name)
        if i > 0 and _masked_decoder(self._children[self.start_name]):
            return (160,)   # the masked capsules of the 10 classes
        return self._shapes["input" if i == 0 else self._order[i - 1]]

    @property
    def output_shape(self):
        """Output shape without the batch axis."""
        return self._shapes[self.end_name]

    def __getitem__(self, name):
        if name not in self._children:
            raise SubnetNotFoundError(f"slice {self.start_name}:{self.end_name} has no sub-net {name!r}; "
                                      f"it holds {', '.join(self.stage_names)}")
        return self._children[name]

    def hybrid_forward(self, F, x):
        index = None
        for name in self.stage_names:
            x, index = _apply(self._children[name], name, F, x, index)
        return x

    def __repr__(self):
        return f"NetSlice({self.start_name}:{self.end_name}, stages={list(self.stage_names)})"


def _snake(name):
    out = "".join("_" + c.lower() if c.isupper() and i and not name[i - 1].isupper() else c.lower()
                  for i, c in enumerate(name))
    return out.lstrip("_")


def _index(order, name, what):
    if name not in order:
        raise SubnetNotFoundError(f"no sub-net {name!r} ({what}); sub-nets in order: {', '.join(order)}")
    return order.index(name)


def take(net, start, end=None):
    """A :class:`NetSlice` of ``net`` from sub-net ``start`` to ``end`` (inclusive).

    ``take(net, "ReLUConv1", "Pick")`` is a CapsNet's feature extractor (image -> 16-D
    capsule); ``take(net, "Reconstruct")`` the reconstructor.  A spec ``"A:B"`` may be
    passed as ``start``.
    """
    if end is None and isinstance(start, str) and ":" in start:
        start, _, end = start.partition(":")
    return NetSlice(net, start, end)
