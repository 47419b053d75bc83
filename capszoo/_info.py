"""Net information, like Wolfram's NetInformation.

How layers are counted: a layer is one operator node of the hybridized
inference graph (the graph ``capszoo export`` writes): every application of an
MXNet operator (Convolution, Activation, FullyConnected, batch_dot, softmax,
Reshape, ...) is one layer; parameter arrays and the input are not layers.
Routing's three iterations are unrolled, so their operators count each time.
"""
from __future__ import annotations

import collections
import dataclasses
import json
from typing import Dict, Tuple

__all__ = ["NetInfo", "net_info", "graph_nodes", "format_info"]


@dataclasses.dataclass(frozen=True)
class NetInfo:
    """What :func:`net_info` reports."""

    name: str
    num_layers: int
    num_params: int
    trained_size_bytes: int
    arrays: Dict[str, Tuple[Tuple[int, ...], int]]      # name -> (shape, element count)
    layer_types: Dict[str, int]                         # operator -> count
    subnets: Tuple[Tuple[str, Tuple[int, ...], int], ...]  # (name, output shape, parameter count)
    weights_present: bool

    @property
    def trained_size_mb(self) -> float:
        return self.trained_size_bytes / 1e6

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "num_layers": self.num_layers,
            "num_params": self.num_params,
            "trained_size_bytes": self.trained_size_bytes,
            "trained_size": f"{self.trained_size_mb:.0f} MB",
            "weights_present": self.weights_present,
            "arrays": {k: {"shape": list(s), "elements": n} for k, (s, n) in self.arrays.items()},
            "layer_types": dict(self.layer_types),
            "subnets": [{"name": n, "output_shape": list(s), "params": p} for n, s, p in self.subnets],
        }


def graph_nodes(block, input_shape=(1, 1, 28, 28)):
    """The node list of ``block``'s hybridized symbol graph (JSON form)."""
    import mxnet as mx

    data = mx.sym.var("data")
    out = block(data)
    sym = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
    return json.loads(sym.tojson())["nodes"]


def net_info(net, *, name="", weights_path=None):
    """Layer and parameter counts of a zoo net (or any of its slices).

    Parameters
    ----------
    net : a zoo net or NetSlice
        Need not be initialized: shapes are known from the architecture.
    weights_path : str, optional
        The trained weights file; its size is the trained size.  Without it the
        size is that of the fp32 arrays (what the file holds, less ~1 KB of names).
    """
    import os

    from ._slices import NetSlice, stage_shapes

    params = net._collect_params_with_prefix()
    arrays = {}
    for k, p in params.items():
        n = 1
        for d in p.shape:
            n *= d
        arrays[k] = (tuple(p.shape), n)
    total = sum(n for _, n in arrays.values())
    ops = [n["op"] for n in graph_nodes(net) if n["op"] != "null"]
    subnets = []
    names = getattr(net, "stage_names", None) or getattr(net, "subnet_names", None) or tuple(net._children)
    shapes = net._shapes if isinstance(net, NetSlice) else (
        stage_shapes(net) if hasattr(net, "subnet_names") else {})
    for sub_name in names:
        count = sum(n for k, (_, n) in arrays.items() if k.startswith(sub_name + "."))
        subnets.append((sub_name, shapes.get(sub_name, ()), count))
    if weights_path is not None and os.path.isfile(weights_path):
        size = os.path.getsize(weights_path)
    else:
        size = total * 4
    return NetInfo(name=name, num_layers=len(ops), num_params=total, trained_size_bytes=size, arrays=arrays,
                   layer_types=dict(collections.Counter(ops).most_common()), subnets=tuple(subnets),
                   weights_present=weights_path is not None and os.path.isfile(weights_path))


def format_info(info: NetInfo) -> str:
    """The human-readable table ``capszoo info`` prints."""
    lines = [f"Number of layers: {info.num_layers} | Parameter count: {info.num_params:,} | "
             f"Trained size: {info.trained_size_mb:.0f} MB"]
    lines.append("")
    lines.append("Sub-nets (data-flow order):")
    w = max([len(n) for n, _, _ in info.subnets] + [8])
    for n, shape, p in info.subnets:
        lines.append(f"  {n:<{w}}  out {str(tuple(shape)):<18} params {p:>12,}")
    lines.append("")
    lines.append("Arrays:")
    w = max(len(k) for k in info.arrays) if info.arrays else 8
    for k, (shape, n) in info.arrays.items():
        lines.append(f"  {k:<{w}}  {str(shape):<20} {n:>12,}")
    lines.append("")
    lines.append("Layer types (operator nodes of the inference graph):")
    for op, c in info.layer_types.items():
        lines.append(f"  {op:<16} {c:>4}")
    if not info.weights_present:
        lines.append("")
        lines.append("(trained weights not present: size computed from the fp32 arrays)")
    return "\n".join(lines)
