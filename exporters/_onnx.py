"""capszoo's own MXNet-to-ONNX converter.

MXNet's built-in ``mxnet.onnx`` does not work with current ``onnx`` releases,
so capszoo converts graphs itself.  The converter walks the nodes of an MXNet
symbol (``json.loads(sym.tojson())``) in their topological order and writes
each operator as one or more ONNX nodes.  It knows exactly the operators in
:data:`SUPPORTED_OPERATORS` (those of the CapsNet and its sub-nets, and a few
common neighbours); any other operator, and any attribute value it does not
implement, raises :class:`~capszoo.errors.UnsupportedOperatorError` naming the
operator and the node: the converter never writes a graph that computes
something else.

Properties of the ONNX file:

* one input ``data`` (float32) whose first dimension is the symbolic ``N``
  when ``dynamic_batch`` (the default);
* weights are initializers, not graph inputs; small constants the
  translation needs are ``Constant`` nodes;
* outputs carry the output names (for the CapsNet ``probabilities``,
  ``capsule``, ``reconstruction``), with their element type and shape;
* ``producer_name`` ``capszoo``, a ``doc_string`` and ``metadata_props``
  (``producer``, ``model_name``, ``source``, ``opset``, ``input``, ``outputs``, ...);
* no tensor is computed from the input's shape (no ``Shape``, ``ConstantOfShape``,
  ``Expand`` or ``Unsqueeze``): reshape targets are constants of fixed sizes, 0 and -1,
  ``ones_like``/``zeros_like`` are ``Where(x == x, v, v)``.  Runtimes that fold shapes at
  load time (OpenCV's DNN module) then keep the batch dynamic (tests/test_onnx_portability.py,
  scripts/onnx_runtimes.py);
* layouts chosen for speed, with the same sums: a transpose that would move every element of
  a MatMul's product on its own (PrimaryPredVects' prediction vectors) is computed from the
  transposed product, ``(A B)^T = B^T A^T`` (:func:`_sink_transposes`); ``batch_dot`` with
  ``transpose_a`` against a column is ``(b^T a)^T``, whose transposes are reshapes;
  scalar arithmetic on a constant fill is done at export time;
* the model passes ``onnx.checker.check_model(model, full_check=True)`` before
  it is written, atomically.

Opset
-----
The default is opset **17** (:data:`DEFAULT_OPSET`), chosen deliberately:

* opset >= 13 is required for an exact translation: from 13 on ``Softmax``
  normalises along one axis as MXNet's ``softmax(axis=...)`` does (opsets 1-12
  flatten to 2-D first, which is wrong for the routing softmax over axis 1 of a
  3-D tensor), and ``ReduceSum``/``Unsqueeze``/``Slice`` take their axes as
  inputs;
* 17 is the newest opset before 18 changed the signature of
  ``ReduceMean``/``ReduceMax``/... (axes as inputs), and it is the one with the
  broadest runtime support among the modern opsets: onnxruntime >= 1.12,
  TensorRT >= 8.6, OpenVINO, and the default of PyTorch's exporter.  The
  CapsNet needs nothing newer.

Other opsets from :data:`MIN_OPSET` to :data:`MAX_OPSET` can be chosen; the
translation adapts where the operator set changed.  The file's IR version is
the lowest that supports the opset (IR 8 for opset 17), so older runtimes can
load it.
"""
from __future__ import annotations

from capszoo import _env  # noqa: F401  (sets OMP_NUM_THREADS before mxnet loads)

import ast
import json
import os

import numpy as np
import mxnet as mx
import onnx
from onnx import TensorProto, helper, numpy_helper

from capszoo._io import atomic_write_bytes
from capszoo.errors import ExportError, GraphFormatError, UnsupportedOperatorError

from ._mxnet import (DEFAULT_INPUT_SHAPE, INPUT_NAME, VERIFY_BATCH, _DISK_FULL, _DISK_FULL_WHY, _agreement,
                     _check_input_shape, _diffs, _first_error_line, _load_params, _makedirs, _parse_symbol, _plain,
                     _read_symbol_file, _short_name, _shorten, as_model_input, block_outputs, block_to_symbol,
                     label_accuracy)

__all__ = ["export_onnx", "convert_mxnet_to_onnx", "mxnet_to_onnx_model", "verify_onnx",
           "SUPPORTED_OPERATORS", "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET"]

#: Default ONNX opset (see the module docstring for why).
DEFAULT_OPSET = 17
#: Oldest opset with single-axis Softmax and axes-as-input reductions.
MIN_OPSET = 13
#: Newest opset the translation has been checked against.
MAX_OPSET = 21

_INT64_MAX = np.iinfo(np.int64).max


# ---------------------------------------------------------------------------------------------
# Attribute parsing


def _unsupported(node, problem, remedy="rewrite the block with supported operators "
                                       "(see capszoo.exporters.SUPPORTED_OPERATORS) or export to MXNet only"):
    return UnsupportedOperatorError(
        f"cannot convert MXNet operator {node.op!r} (node {_short_name(node.name)}) to ONNX: {problem}; {remedy}")


def _literal(node, key, text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise GraphFormatError(f"node {_short_name(node.name)} ({node.op}): attribute {key}={_short_name(text)} "
                               "does not parse; the symbol file is corrupt, export the model again") from None


def _attr_bool(node, key, default=False):
    text = node.attrs.get(key)
    if text is None:
        return default
    t = str(text).strip().lower()
    if t in ("true", "1"):
        return True
    if t in ("false", "0"):
        return False
    raise GraphFormatError(f"node {_short_name(node.name)} ({node.op}): attribute {key}={_short_name(text)} "
                           "is not a boolean")


def _attr_int(node, key, default=None):
    text = node.attrs.get(key)
    if text is None or str(text).strip() == "None":
        return default
    v = _literal(node, key, str(text))
    if isinstance(v, bool) or not isinstance(v, int):
        raise GraphFormatError(f"node {_short_name(node.name)} ({node.op}): attribute {key}={_short_name(text)} "
                               "is not an integer")
    return v


def _attr_float(node, key, default=None):
    text = node.attrs.get(key)
    if text is None or str(text).strip() == "None":
        return default
    try:
        return float(str(text).strip())
    except ValueError:
        raise GraphFormatError(f"node {_short_name(node.name)} ({node.op}): attribute {key}={_short_name(text)} "
                               "is not a number") from None


def _attr_tuple(node, key, default=None):
    """``(9, 9)``, ``[9, 9]``, ``9`` -> tuple of int; missing/``None`` -> default."""
    text = node.attrs.get(key)
    if text is None or str(text).strip() == "None":
        return default
    v = _literal(node, key, str(text))
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,)
    if isinstance(v, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        return tuple(v)
    raise GraphFormatError(f"node {_short_name(node.name)} ({node.op}): attribute {key}={_short_name(text)} "
                           "is not a tuple of integers")


def _attr_str(node, key, default=None):
    text = node.attrs.get(key)
    if text is None:
        return default
    return str(text).strip().strip("'\"")


_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "uint8": np.uint8,
           "int8": np.int8, "int32": np.int32, "int64": np.int64, "bool": np.bool_}


def _onnx_type(dtype):
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


# ---------------------------------------------------------------------------------------------
# Graph building


class _Node:
    """One MXNet operator node with its ONNX input tensors and MXNet-inferred shapes and dtypes.

    ``in_shapes``/``out_shape`` are MXNet's shapes at the export's batch size, ``in_shapes2``/
    ``out_shape2`` at a batch one larger; ``in_ranks`` and ``out_rank`` their lengths.  A size that
    differs between the two follows the batch and is never written into the graph: translations
    use the shapes for ranks, for sizes the batch cannot change (kernels, channels, spatial sizes)
    and for checks.
    """

    __slots__ = ("name", "op", "attrs", "inputs", "in_shapes", "in_dtypes", "out_shape", "out_dtype", "in_shapes2",
                 "out_shape2")

    def __init__(self, name, op, attrs, inputs, in_shapes, in_dtypes, out_shape, out_dtype, in_shapes2=None,
                 out_shape2=None):
        self.name, self.op, self.attrs, self.inputs = name, op, attrs, inputs
        self.in_shapes, self.in_dtypes = [tuple(s) for s in in_shapes], in_dtypes
        self.out_shape, self.out_dtype = tuple(out_shape), out_dtype
        # the same shapes at a batch one larger (equal when the batch is fixed)
        self.in_shapes2 = self.in_shapes if in_shapes2 is None else [tuple(s) for s in in_shapes2]
        self.out_shape2 = self.out_shape if out_shape2 is None else tuple(out_shape2)

    @property
    def in_ranks(self):
        return [len(s) for s in self.in_shapes]

    @property
    def out_rank(self):
        return len(self.out_shape)


class _Builder:
    def __init__(self, opset):
        self.opset = opset
        self.nodes = []
        self.used = set()
        self.batch_matmuls = set()   # outputs of MatMuls whose two inputs have the same rank
        # tensors that hold one value everywhere: {tensor: (condition, value, dtype, reshape targets)},
        # the tensor being Where(condition, value, value) reshaped by the targets in turn
        self.fills = {}

    def fresh(self, base):
        name, i = base, 1
        while name in self.used:
            name = f"{base}_{i}"
            i += 1
        self.used.add(name)
        return name

    def const(self, base, value, dtype):
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(base)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                           value=numpy_helper.from_array(arr, name)))
        return name

    def ints(self, base, values):
        return self.const(base, np.asarray(values, dtype=np.int64).reshape(-1), np.int64)

    def add(self, op_type, inputs, node, tag, *, out=None, **attrs):
        """Add an ONNX node for MXNet ``node``; returns its output tensor name."""
        output = out or self.fresh(f"{node.name}/{tag}")
        self.nodes.append(helper.make_node(op_type, list(inputs), [output],
                                           name=self.fresh(f"{node.name}/{op_type}"), **attrs))
        return output


# ---------------------------------------------------------------------------------------------
# Operator translations.  Each takes (builder, node) and returns the ONNX tensor holding the
# MXNet node's (single) output.


def _alias(b, n):
    return n.inputs[0]


def _dropout(b, n):
    mode = _attr_str(n, "mode", "training")
    if mode != "training":
        raise _unsupported(n, f"mode={mode!r} drops values at inference too (only mode='training' "
                              "is an identity at inference)")
    return n.inputs[0]


def _unary(onnx_op):
    def conv(b, n):
        return b.add(onnx_op, [n.inputs[0]], n, "out")
    return conv


def _square(b, n):
    return b.add("Mul", [n.inputs[0], n.inputs[0]], n, "out")


_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus",
                "softsign": "Softsign"}


def _activation(b, n):
    act = _attr_str(n, "act_type")
    if act not in _ACTIVATIONS:
        raise _unsupported(n, f"act_type={act!r} (supported: {', '.join(sorted(_ACTIVATIONS))})")
    return b.add(_ACTIVATIONS[act], [n.inputs[0]], n, "out")


def _binary(onnx_op):
    def conv(b, n):
        return b.add(onnx_op, [n.inputs[0], n.inputs[1]], n, "out")
    return conv


def _scalar(onnx_op, reverse=False):
    def conv(b, n):
        value = _attr_float(n, "scalar")
        if value is None:
            raise GraphFormatError(f"node {_short_name(n.name)} ({n.op}) has no scalar attribute")
        if not np.issubdtype(np.dtype(n.in_dtypes[0]), np.floating):
            raise _unsupported(n, f"a scalar operation on a {np.dtype(n.in_dtypes[0]).name} tensor "
                                  "(only floating point tensors are supported)")
        fill = b.fills.get(n.inputs[0])
        if fill is not None:   # a constant fill stays one: the arithmetic is done here, in its dtype
            dt = np.dtype(fill[2]).type
            with np.errstate(all="ignore"):
                a, c = (dt(value), fill[1]) if reverse else (fill[1], dt(value))
                return _refill(b, n, fill, _SCALAR_FOLD[onnx_op](a, c))
        c = b.const(f"{n.name}/scalar", value, n.in_dtypes[0])
        inputs = [c, n.inputs[0]] if reverse else [n.inputs[0], c]
        return b.add(onnx_op, inputs, n, "out")
    return conv


_SCALAR_FOLD = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
                "Max": np.maximum, "Min": np.minimum}


def _refill(b, n, fill, value):
    """The fill ``(condition, value, dtype, reshape targets)`` with another value: ``Where(condition,
    value, value)`` and the same reshapes.  The tensor it replaces is left unused (and dropped)."""
    cond, _, dtype, targets = fill
    v = b.const(f"{n.name}/value", value, dtype)
    y = b.add("Where", [cond, v, v], n, "out" if not targets else "fill")
    for i, t in enumerate(targets):
        y = b.add("Reshape", [y, t], n, "out" if i + 1 == len(targets) else "fill")
    b.fills[y] = (cond, np.asarray(value, dtype=dtype)[()], dtype, list(targets))
    return y


def _window(n):
    """``(kernel, stride, pad)`` of a Convolution, Deconvolution or Pooling node (stride 1, pad 0 by default)."""
    kernel = _attr_tuple(n, "kernel")
    if not kernel:
        raise GraphFormatError(f"node {_short_name(n.name)} ({n.op}) has no kernel attribute")
    k = len(kernel)
    return kernel, _attr_tuple(n, "stride", ()) or (1,) * k, _attr_tuple(n, "pad", ()) or (0,) * k


def _conv_geometry(n):
    """``(kernel, stride, dilate, pad, group, inputs)`` of a Convolution or Deconvolution node."""
    layout = _attr_str(n, "layout", "None")
    if layout not in ("None", "NCW", "NCHW", "NCDHW"):
        raise _unsupported(n, f"layout={layout!r} (only channels-first layouts NCW/NCHW/NCDHW)")
    kernel, stride, pad = _window(n)
    k = len(kernel)
    dilate = _attr_tuple(n, "dilate", ()) or (1,) * k
    if not len(stride) == len(dilate) == len(pad) == k:
        raise GraphFormatError(f"node {_short_name(n.name)} ({n.op}): kernel, stride, dilate and pad "
                               "differ in length")
    group = _attr_int(n, "num_group", 1)
    # MXNet's Convolution has a bias unless no_bias; its Deconvolution has none unless no_bias=False
    inputs = n.inputs[:2] if _attr_bool(n, "no_bias", n.op == "Deconvolution") else n.inputs[:3]
    return kernel, stride, dilate, pad, group, inputs


def _convolution(b, n):
    kernel, stride, dilate, pad, group, inputs = _conv_geometry(n)
    return b.add("Conv", inputs, n, "out", kernel_shape=list(kernel), strides=list(stride),
                 dilations=list(dilate), pads=list(pad) * 2, group=group)


def _deconvolution(b, n):
    """MXNet's Deconvolution (a transposed convolution) as ONNX ConvTranspose with explicit pads.

    Output size per spatial axis: ``stride * (in - 1) + dilate * (kernel - 1) + 1 - 2 * pad + adj``.
    A non-zero ``target_shape`` replaces ``pad`` and ``adj`` by the values MXNet derives from it
    (``total = full size - target``, ``pad = ceil(total / 2)``, ``adj = total % 2``).  Explicit
    ``pads``/``output_padding`` rather than ONNX's ``output_shape``: runtimes agree on the former,
    not on how the latter distributes padding.  The weight layout (in channels, out channels /
    group, kernel...) is the same in both.
    """
    kernel, stride, dilate, pad, group, inputs = _conv_geometry(n)
    k = len(kernel)
    adj = _attr_tuple(n, "adj", ()) or (0,) * k
    target = _attr_tuple(n, "target_shape", ()) or ()
    spatial = n.in_shapes[0][2:]
    if len(adj) != k or (target and len(target) != k) or len(spatial) != k:
        raise GraphFormatError(f"node {_short_name(n.name)} (Deconvolution): kernel={kernel}, adj={adj}, "
                               f"target_shape={target} and the input's {len(spatial)} spatial axes differ in length")
    full = [s * (i - 1) + d * (kk - 1) + 1 for s, i, d, kk in zip(stride, spatial, dilate, kernel)]
    if any(target):
        total = [f - t for f, t in zip(full, target)]
        if any(t < 0 for t in total):
            raise GraphFormatError(f"node {_short_name(n.name)} (Deconvolution): target_shape={target} is larger "
                                   f"than the largest output {tuple(full)}")
        pad, adj = tuple((t + 1) // 2 for t in total), tuple(t % 2 for t in total)
    if any(a >= max(s, d) for a, s, d in zip(adj, stride, dilate)):
        raise _unsupported(n, f"adj={adj} not smaller than stride={stride} or dilate={dilate} "
                              "(ONNX's output_padding must be)")
    size = tuple(f - 2 * p + a for f, p, a in zip(full, pad, adj))
    if size != tuple(n.out_shape[2:]):  # pragma: no cover - the formula is MXNet's
        raise GraphFormatError(f"node {_short_name(n.name)} (Deconvolution): the ONNX output would be {size}, "
                               f"MXNet's is {tuple(n.out_shape[2:])}")
    return b.add("ConvTranspose", inputs, n, "out", kernel_shape=list(kernel), strides=list(stride),
                 dilations=list(dilate), pads=list(pad) * 2, output_padding=list(adj), group=group)


def _pooling(b, n):
    """Max or average pooling: MaxPool/AveragePool (GlobalMaxPool/GlobalAveragePool for
    ``global_pool``).  MXNet's "valid" convention is ONNX's floor, "full" its ``ceil_mode``;
    average pooling counts the padding as MXNet does by default (``count_include_pad``)."""
    layout = _attr_str(n, "layout", "None")
    if layout not in ("None", "NCW", "NCHW", "NCDHW"):
        raise _unsupported(n, f"layout={layout!r} (only channels-first layouts NCW/NCHW/NCDHW)")
    kind = _attr_str(n, "pool_type", "max")
    if kind not in ("max", "avg"):
        raise _unsupported(n, f"pool_type={kind!r} (max and avg are supported)")
    onnx_op = "MaxPool" if kind == "max" else "AveragePool"
    if _attr_bool(n, "global_pool", False):
        return b.add("Global" + onnx_op, [n.inputs[0]], n, "out")
    kernel, stride, pad = _window(n)
    k = len(kernel)
    convention = _attr_str(n, "pooling_convention", "valid")
    if convention not in ("valid", "full"):
        raise _unsupported(n, f"pooling_convention={convention!r} (valid and full are supported)")
    attrs = {"kernel_shape": list(kernel), "strides": list(stride), "pads": list(pad) * 2,
             "ceil_mode": int(convention == "full")}
    if kind == "avg":
        attrs["count_include_pad"] = int(_attr_bool(n, "count_include_pad", True))
    rnd = np.ceil if convention == "full" else np.floor
    size = tuple(int(rnd((i + 2 * p - kk) / s)) + 1 for i, p, kk, s in zip(n.in_shapes[0][2:], pad, kernel, stride))
    if size != tuple(n.out_shape[2:]):
        raise _unsupported(n, f"an output of {tuple(n.out_shape[2:])} where ONNX's {onnx_op} gives {size}")
    return b.add(onnx_op, [n.inputs[0]], n, "out", **attrs)


def _fully_connected(b, n):
    no_bias = _attr_bool(n, "no_bias", False)
    flatten = _attr_bool(n, "flatten", True)
    x, w = n.inputs[0], n.inputs[1]
    bias = [] if no_bias else [n.inputs[2]]
    if flatten:
        if n.in_ranks[0] != 2:
            x = b.add("Flatten", [x], n, "flat", axis=1)
        return b.add("Gemm", [x, w] + bias, n, "out", transB=1)
    wt = b.add("Transpose", [w], n, "weight_t", perm=[1, 0])
    y = b.add("MatMul", [x, wt], n, "matmul" if bias else "out")
    return b.add("Add", [y] + bias, n, "out") if bias else y


def _flatten_op(b, n):
    return b.add("Flatten", [n.inputs[0]], n, "out", axis=1)


def _reshape(b, n):
    if _attr_bool(n, "reverse", False):
        raise _unsupported(n, "reverse=True", "reshape with reverse=False")
    target = _attr_tuple(n, "target_shape", ())
    if target or _attr_bool(n, "keep_highest", False):
        raise _unsupported(n, "the deprecated target_shape/keep_highest attributes", "use shape=")
    shape = _attr_tuple(n, "shape")
    if not shape:
        raise _unsupported(n, "a Reshape without shape=", "give the shape")
    bad = [c for c in shape if c < -1]
    if bad:
        raise _unsupported(n, f"special reshape code(s) {', '.join(map(str, bad))} in shape={shape} "
                              "(only fixed sizes, 0 = copy this dimension and -1 = infer are supported)",
                           "write the reshape with fixed sizes, 0 and -1")
    if shape.count(-1) > 1:
        raise GraphFormatError(f"node {_short_name(n.name)} (Reshape): shape={shape} has more than one -1")
    if any(c == 0 and i >= n.in_ranks[0] for i, c in enumerate(shape)):
        raise GraphFormatError(f"node {_short_name(n.name)} (Reshape): shape={shape} copies a dimension the "
                               f"rank-{n.in_ranks[0]} input does not have")
    # ONNX Reshape with allowzero=0 (the default) reads 0 as "copy this dimension", as MXNet does.
    s = b.ints(f"{n.name}/shape", shape)
    y = b.add("Reshape", [n.inputs[0], s], n, "out")
    fill = b.fills.get(n.inputs[0])
    if fill is not None:
        b.fills[y] = fill[:3] + (fill[3] + [s],)
    return y


def _transpose(b, n):
    axes = _attr_tuple(n, "axes", ())
    if not axes:
        return b.add("Transpose", [n.inputs[0]], n, "out")
    if sorted(a % n.in_ranks[0] for a in axes) != list(range(n.in_ranks[0])):
        raise GraphFormatError(f"node {_short_name(n.name)} (transpose): axes={axes} is not a permutation")
    return b.add("Transpose", [n.inputs[0]], n, "out", perm=[a % n.in_ranks[0] for a in axes])


def _free_swap_target(shape):
    """Reshape codes that swap the last two axes of ``shape`` when one of them has size 1 (a swap
    that moves no element); None otherwise.  0 copies the leading axes (the batch among them) and
    -1 stands for the other axis, so no size that depends on the batch is written into the graph."""
    if shape[-1] == 1:
        return [0] * (len(shape) - 2) + [1, -1]
    if shape[-2] == 1:
        return [0] * (len(shape) - 2) + [-1, 1]
    return None


def _swap_last_two(b, n, x, shape, tag):
    target = _free_swap_target(shape)
    if target is not None:
        return b.add("Reshape", [x, b.ints(f"{n.name}/{tag}_shape", target)], n, tag)
    perm = list(range(len(shape) - 2)) + [len(shape) - 1, len(shape) - 2]
    return b.add("Transpose", [x], n, tag, perm=perm)


def _batch_dot(b, n):
    """``batch_dot`` as ONNX MatMul, transposes written so that no element needlessly moves.

    ``transpose_a`` with a column ``b`` (last axis 1), the routing's weighted sum: ``a^T b`` is
    computed as ``(b^T a)^T``, whose two transposes are reshapes, instead of transposing the large
    ``a``.  Every MatMul written here has inputs of equal rank; :func:`_sink_transposes` relies on it.
    """
    stype = _attr_str(n, "forward_stype", "None")
    if stype not in ("None", "default"):
        raise _unsupported(n, f"forward_stype={stype!r} (sparse storage)")
    ra, rb = n.in_ranks[0], n.in_ranks[1]
    if ra < 3 or ra != rb:
        raise _unsupported(n, f"inputs of rank {ra} and {rb} (batch_dot needs two tensors of the same rank >= 3)")
    a, bb = n.inputs[0], n.inputs[1]
    sa, sb = n.in_shapes
    ta, tb = _attr_bool(n, "transpose_a"), _attr_bool(n, "transpose_b")
    if ta and not tb and sb[-1] == 1 and _free_swap_target(sa) is None:
        y = b.add("MatMul", [_swap_last_two(b, n, bb, sb, "b_t"), a], n, "out_t")
        b.batch_matmuls.add(y)
        return _swap_last_two(b, n, y, sb[:-2] + (1, sa[-1]), "out")
    if ta:
        a = _swap_last_two(b, n, a, sa, "a_t")
    if tb:
        bb = _swap_last_two(b, n, bb, sb, "b_t")
    y = b.add("MatMul", [a, bb], n, "out")
    b.batch_matmuls.add(y)
    return y


_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin",
           "prod": "ReduceProd"}


def _reduce(b, n):
    rank = n.in_ranks[0]
    axis = _attr_tuple(n, "axis", None)
    keepdims = _attr_bool(n, "keepdims", False)
    axes = None if not axis else sorted({a % rank for a in axis})
    if axis and any(not -rank <= a < rank for a in axis):
        raise GraphFormatError(f"node {_short_name(n.name)} ({n.op}): axis={axis} out of range for rank {rank}")
    if _attr_bool(n, "exclude", False):
        if axes is None:
            raise _unsupported(n, "exclude=True without axis")
        axes = [a for a in range(rank) if a not in axes]
        if not axes:
            raise _unsupported(n, "exclude=True with every axis listed (a reduction over no axis)")
    onnx_op = _REDUCE[n.op]
    inputs, attrs = [n.inputs[0]], {"keepdims": int(keepdims)}
    if axes is not None:
        if onnx_op == "ReduceSum" or b.opset >= 18:
            inputs.append(b.ints(f"{n.name}/axes", axes))
        else:
            attrs["axes"] = axes
    out_rank = rank if keepdims else rank - (rank if axes is None else len(axes))
    y = b.add(onnx_op, inputs, n, "reduced" if out_rank != n.out_rank else "out", **attrs)
    return _match_rank(b, n, y, out_rank)


def _match_rank(b, n, y, onnx_rank):
    """MXNet 1.x has no 0-d arrays: a full reduction gives shape (1,), ONNX gives ()."""
    if onnx_rank == n.out_rank:
        return y
    if onnx_rank == 0 and n.out_rank == 1:
        return b.add("Reshape", [y, b.ints(f"{n.name}/one", [1])], n, "out")
    raise GraphFormatError(f"node {_short_name(n.name)} ({n.op}): ONNX result of rank {onnx_rank}, MXNet's of rank "
                           f"{n.out_rank}")  # pragma: no cover


def _softmax(onnx_op):
    def conv(b, n):
        if _attr_bool(n, "use_length", False):
            raise _unsupported(n, "use_length=True")
        dtype = _attr_str(n, "dtype", "None")
        if dtype not in ("None", np.dtype(n.in_dtypes[0]).name):
            raise _unsupported(n, f"dtype={dtype!r} different from the input's")
        axis = _attr_int(n, "axis", -1)
        x = n.inputs[0]
        t = _attr_float(n, "temperature", None)
        if t is not None and t != 1.0:
            x = b.add("Div", [x, b.const(f"{n.name}/temperature", t, n.in_dtypes[0])], n, "scaled")
        return b.add(onnx_op, [x], n, "out", axis=axis)
    return conv


def _argmax(b, n):
    axis = _attr_int(n, "axis", None)
    if axis is None:
        raise _unsupported(n, "argmax without axis (over the flattened array)", "give axis=")
    keepdims = _attr_bool(n, "keepdims", False)
    rank = n.in_ranks[0]
    y = b.add("ArgMax", [n.inputs[0]], n, "index", axis=axis, keepdims=int(keepdims))
    # MXNet's argmax returns float32 indices; ONNX's int64.  Both return the first maximum.
    y = b.add("Cast", [y], n, "out" if keepdims or rank > 1 else "cast", to=_onnx_type(n.out_dtype))
    return _match_rank(b, n, y, rank if keepdims else rank - 1)


def _one_hot(b, n):
    depth = _attr_int(n, "depth")
    if depth is None or depth < 1:
        raise GraphFormatError(f"node {_short_name(n.name)} (one_hot): depth must be a positive integer")
    on = _attr_float(n, "on_value", 1.0)
    off = _attr_float(n, "off_value", 0.0)
    dtype = np.dtype(n.out_dtype)
    # MXNet: index i = (int) x; row = on at i when 0 <= i < depth, all off otherwise (no wrap-around
    # of negative indices, unlike ONNX OneHot).  Written as Equal(index, range(depth)) -> Where.
    idx = n.inputs[0]
    if np.dtype(n.in_dtypes[0]) != np.int64:
        idx = b.add("Cast", [idx], n, "index", to=TensorProto.INT64)
    idx = _unsqueeze(b, n, idx, (n.in_shapes[0], n.in_shapes2[0]), -1, "index_u")
    eq = b.add("Equal", [idx, b.const(f"{n.name}/range", np.arange(depth, dtype=np.int64), np.int64)],
               n, "hit")
    return b.add("Where", [eq, b.const(f"{n.name}/on", on, dtype), b.const(f"{n.name}/off", off, dtype)],
                 n, "out")


def _reshape_codes(src, dst):
    """ONNX Reshape codes from shape ``src`` to ``dst``, each a pair (at the export's batch, at one
    more): 0 where ``dst`` copies the same axis of ``src``, the size where it does not follow the
    batch, -1 for the one size that does; None when two sizes follow the batch.

    A reshape written so needs no ``Shape`` operator; runtimes that fold shapes at load time
    (OpenCV's DNN module turns every Unsqueeze into a reshape to the first input's sizes) keep
    the batch dynamic."""
    codes = []
    for i, (d1, d2) in enumerate(zip(*dst)):
        if i < len(src[0]) and (src[0][i], src[1][i]) == (d1, d2):
            codes.append(0)
        else:
            codes.append(d1 if d1 == d2 else -1)
    return codes if codes.count(-1) <= 1 else None


def _unsqueeze(b, n, x, src, axis, tag):
    """``x`` of shapes ``src`` (a pair) with a new axis of size 1 at ``axis``: a Reshape when it
    can be written with constant codes, else an Unsqueeze."""
    rank = len(src[0]) + 1
    a = axis % rank
    dst = [s[:a] + (1,) + s[a:] for s in src]
    codes = _reshape_codes(src, dst)
    if codes is None:
        return b.add("Unsqueeze", [x, b.ints(f"{n.name}/axes", [a])], n, tag)
    return b.add("Reshape", [x, b.ints(f"{n.name}/{tag}_shape", codes)], n, tag)


def _expand_dims(b, n):
    axis = _attr_int(n, "axis")
    if axis is None:
        raise GraphFormatError(f"node {_short_name(n.name)} (expand_dims) has no axis")
    if not -n.out_rank <= axis < n.out_rank:
        raise GraphFormatError(f"node {_short_name(n.name)} (expand_dims): axis={axis} out of range for an input "
                               f"of rank {n.in_ranks[0]}")
    return _unsqueeze(b, n, n.inputs[0], (n.in_shapes[0], n.in_shapes2[0]), axis, "out")


def _slice_axis(b, n):
    axis = _attr_int(n, "axis")
    begin = _attr_int(n, "begin")
    end = _attr_int(n, "end", None)
    if axis is None or begin is None:
        raise GraphFormatError(f"node {_short_name(n.name)} (slice_axis) needs axis and begin")
    ends = _INT64_MAX if end is None else end
    return b.add("Slice", [n.inputs[0], b.ints(f"{n.name}/starts", [begin]), b.ints(f"{n.name}/ends", [ends]),
                           b.ints(f"{n.name}/axes", [axis])], n, "out")


def _fill_like(value):
    """``ones_like``/``zeros_like`` as ``Where(x == x, v, v)``: ``v`` in the shape of ``x`` (NaNs
    included), with no Shape operator.  ``ConstantOfShape(Shape(x))`` computes the same, but
    runtimes that fold ``Shape`` to the shape of the first input they see (OpenCV's DNN module)
    then fix the batch size of the whole graph."""
    def conv(b, n):
        x = n.inputs[0]
        cond = b.add("Equal", [x, x], n, "any")
        return _refill(b, n, (cond, None, n.out_dtype, []), np.asarray(value, dtype=n.out_dtype)[()])
    return conv


def _concat(b, n):
    return b.add("Concat", list(n.inputs), n, "out", axis=_attr_int(n, "dim", 1))


_PAD_MODES = {"constant": "constant", "edge": "edge", "reflect": "reflect"}


def _pad(b, n):
    mode = _attr_str(n, "mode", "constant")
    if mode not in _PAD_MODES:
        raise _unsupported(n, f"mode={mode!r}")
    width = _attr_tuple(n, "pad_width")
    rank = n.in_ranks[0]
    if not width or len(width) != 2 * rank:
        raise GraphFormatError(f"node {_short_name(n.name)} (Pad): pad_width={width} does not give two sizes per axis "
                               f"of the rank-{rank} input")
    pads = [width[2 * i] for i in range(rank)] + [width[2 * i + 1] for i in range(rank)]
    inputs = [n.inputs[0], b.ints(f"{n.name}/pads", pads)]
    if mode == "constant":
        inputs.append(b.const(f"{n.name}/value", _attr_float(n, "constant_value", 0.0), n.in_dtypes[0]))
    return b.add("Pad", inputs, n, "out", mode=_PAD_MODES[mode])


def _clip(b, n):
    lo, hi = _attr_float(n, "a_min"), _attr_float(n, "a_max")
    if lo is None or hi is None:
        raise GraphFormatError(f"node {_short_name(n.name)} (clip) needs a_min and a_max")
    dt = n.in_dtypes[0]
    return b.add("Clip", [n.inputs[0], b.const(f"{n.name}/min", lo, dt), b.const(f"{n.name}/max", hi, dt)],
                 n, "out")


def _cast(b, n):
    return b.add("Cast", [n.inputs[0]], n, "out", to=_onnx_type(n.out_dtype))


# MXNet operator -> (translation, attributes it understands).  Attributes starting with "__" (learning
# rate multipliers, profiler scopes, ...) never change the forward computation and are ignored; any
# other attribute outside the list raises UnsupportedOperatorError.
_CONV_ATTRS = {"kernel", "stride", "dilate", "pad", "num_filter", "num_group", "no_bias", "layout",
               "workspace", "cudnn_tune", "cudnn_off"}
_SCALAR_ATTRS = {"scalar", "is_int"}
_REDUCE_ATTRS = {"axis", "keepdims", "exclude"}
_TRANSLATIONS = {
    "Convolution": (_convolution, _CONV_ATTRS),
    "Deconvolution": (_deconvolution, _CONV_ATTRS | {"adj", "target_shape"}),
    "Pooling": (_pooling, {"kernel", "pool_type", "global_pool", "stride", "pad", "pooling_convention",
                           "count_include_pad", "cudnn_off", "layout", "p_value"}),
    "FullyConnected": (_fully_connected, {"num_hidden", "no_bias", "flatten"}),
    "Activation": (_activation, {"act_type"}),
    "relu": (_unary("Relu"), set()),
    "sigmoid": (_unary("Sigmoid"), set()),
    "tanh": (_unary("Tanh"), set()),
    "exp": (_unary("Exp"), set()),
    "log": (_unary("Log"), set()),
    "abs": (_unary("Abs"), set()),
    "negative": (_unary("Neg"), set()),
    "reciprocal": (_unary("Reciprocal"), set()),
    "sqrt": (_unary("Sqrt"), set()),
    "square": (_square, set()),
    "Reshape": (_reshape, {"shape", "reverse", "target_shape", "keep_highest"}),
    "Flatten": (_flatten_op, set()),
    "transpose": (_transpose, {"axes"}),
    "expand_dims": (_expand_dims, {"axis"}),
    "slice_axis": (_slice_axis, {"axis", "begin", "end"}),
    "Concat": (_concat, {"dim", "num_args"}),
    "Pad": (_pad, {"mode", "pad_width", "constant_value"}),
    "batch_dot": (_batch_dot, {"transpose_a", "transpose_b", "forward_stype"}),
    "sum": (_reduce, _REDUCE_ATTRS),
    "mean": (_reduce, _REDUCE_ATTRS),
    "max": (_reduce, _REDUCE_ATTRS),
    "min": (_reduce, _REDUCE_ATTRS),
    "prod": (_reduce, _REDUCE_ATTRS),
    "softmax": (_softmax("Softmax"), {"axis", "temperature", "dtype", "use_length"}),
    "log_softmax": (_softmax("LogSoftmax"), {"axis", "temperature", "dtype", "use_length"}),
    "argmax": (_argmax, {"axis", "keepdims"}),
    "one_hot": (_one_hot, {"depth", "on_value", "off_value", "dtype"}),
    "ones_like": (_fill_like(1), set()),
    "zeros_like": (_fill_like(0), set()),
    "broadcast_add": (_binary("Add"), set()),
    "broadcast_sub": (_binary("Sub"), set()),
    "broadcast_mul": (_binary("Mul"), set()),
    "broadcast_div": (_binary("Div"), set()),
    "broadcast_maximum": (_binary("Max"), set()),
    "broadcast_minimum": (_binary("Min"), set()),
    "elemwise_add": (_binary("Add"), set()),
    "elemwise_sub": (_binary("Sub"), set()),
    "elemwise_mul": (_binary("Mul"), set()),
    "elemwise_div": (_binary("Div"), set()),
    "_plus_scalar": (_scalar("Add"), _SCALAR_ATTRS),
    "_minus_scalar": (_scalar("Sub"), _SCALAR_ATTRS),
    "_rminus_scalar": (_scalar("Sub", reverse=True), _SCALAR_ATTRS),
    "_mul_scalar": (_scalar("Mul"), _SCALAR_ATTRS),
    "_div_scalar": (_scalar("Div"), _SCALAR_ATTRS),
    "_rdiv_scalar": (_scalar("Div", reverse=True), _SCALAR_ATTRS),
    "_power_scalar": (_scalar("Pow"), _SCALAR_ATTRS),
    "_maximum_scalar": (_scalar("Max"), _SCALAR_ATTRS),
    "_minimum_scalar": (_scalar("Min"), _SCALAR_ATTRS),
    "clip": (_clip, {"a_min", "a_max"}),
    "Cast": (_cast, {"dtype"}),
    "_copy": (_alias, set()),
    "BlockGrad": (_alias, set()),
    "Dropout": (_dropout, {"p", "mode", "axes", "cudnn_off"}),
}

#: The MXNet operators (names as they appear in symbol JSON) the converter translates.
SUPPORTED_OPERATORS = frozenset(_TRANSLATIONS)


# ---------------------------------------------------------------------------------------------
# Symbol -> ONNX


def _read_symbol(symbol):
    """``(parsed JSON, mx.sym.Symbol)`` from a Symbol, a JSON string or a path to a symbol file.

    JSON text and files are checked before MXNet builds the graph (see
    :func:`capszoo.exporters._mxnet._check_graph`); a Symbol is MXNet's own.

    Raises
    ------
    GraphFormatError
        A file that cannot be read, or text that is not a valid MXNet symbol JSON.
    """
    if isinstance(symbol, mx.sym.Symbol):
        return json.loads(symbol.tojson()), symbol
    if isinstance(symbol, (str, os.PathLike)) and not str(symbol).lstrip().startswith("{"):
        return _parse_symbol(_read_symbol_file(symbol), os.fspath(symbol))
    if isinstance(symbol, str):
        return _parse_symbol(symbol, "the symbol JSON")
    raise GraphFormatError(f"symbol must be an mxnet Symbol, a JSON string or a path, "
                           f"got {type(symbol).__name__}")


def _read_params(params):
    if params is None:
        return {}
    if isinstance(params, (str, os.PathLike)):
        params = _load_params(params)
    out = {}
    for k, v in dict(params).items():
        name = k.split(":", 1)[1] if k.startswith(("arg:", "aux:")) else k
        out[name] = v.asnumpy() if isinstance(v, mx.nd.NDArray) else np.asarray(v)
    return out


def _infer(sym, shapes, dtypes):
    """``{internal output name: (shape, numpy dtype)}`` by MXNet's own shape and type inference."""
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(**shapes)
    _, out_types, _ = internals.infer_type(**dtypes)
    if out_shapes is None or out_types is None:
        raise GraphFormatError("MXNet cannot infer all shapes and types of the graph")
    return {name: (tuple(s), np.dtype(t)) for name, s, t in zip(internals.list_outputs(), out_shapes, out_types)}


def _check_reshapes(nodes, info, shape, remedy):
    """MXNet's shape inference does not check that a Reshape to fixed sizes keeps the element count
    (it fails only when run); check it, so that a batch size baked into the graph is found."""
    for nid, nd in enumerate(nodes):
        if nd.get("op") != "Reshape" or not nd.get("inputs"):
            continue
        src = info.get(_entry_key(nodes, nd["inputs"][0][0], nd["inputs"][0][1], info))
        dst = info.get(_entry_key(nodes, nid, 0, info))
        if src and dst and int(np.prod(src[0])) != int(np.prod(dst[0])):
            where = (f"node {_short_name(nd['name'])} (Reshape) turns {src[0]} into {dst[0]} for an input of "
                     f"shape {shape}")
            if remedy:
                raise ExportError(f"the graph only runs with one batch size: {where}; {remedy}")
            raise ExportError(f"the graph does not accept an input of shape {shape}: {where}; pass the "
                              "input_shape the model expects")


def _entry_key(nodes, nid, idx, info):
    node = nodes[nid]
    if node["op"] == "null":
        return node["name"]
    for key in ([f"{node['name']}_output"] if idx == 0 else []) + [f"{node['name']}_output{idx}"]:
        if key in info:
            return key
    raise GraphFormatError(f"node {_short_name(node['name'])} ({node['op']}): output {idx} not found in the "
                           "graph; the symbol JSON is corrupt, export the model again")


def _check_operators(nodes):
    """Every operator must be known before anything else is looked at."""
    unknown = {}
    for nd in nodes:
        if nd["op"] != "null" and nd["op"] not in _TRANSLATIONS:
            unknown.setdefault(nd["op"], nd["name"])
    if not unknown:
        return
    listed = ", ".join(f"{_short_name(op)} (node {_short_name(name)})" for op, name in list(unknown.items())[:10])
    if len(unknown) > 10:
        listed += f" and {len(unknown) - 10} more"
    raise UnsupportedOperatorError(
        f"cannot convert MXNet operator{'s' if len(unknown) > 1 else ''} {listed} to ONNX: capszoo's "
        f"converter does not know {'them' if len(unknown) > 1 else 'it'}; rewrite the block with "
        "supported operators "
        f"(capszoo.exporters.SUPPORTED_OPERATORS: {', '.join(sorted(SUPPORTED_OPERATORS))}) "
        "or export to MXNet only")


def _variables(nodes, weights):
    """The graph's variable names: the input, and parameters (initializers), all with values."""
    var_names = [nd["name"] for nd in nodes if nd.get("op") == "null"]
    if INPUT_NAME not in var_names:
        raise ExportError(f"the graph has no input variable {INPUT_NAME!r} (variables: {', '.join(var_names)}); "
                          "export the block with capszoo.exporters.export_mxnet")
    missing = [v for v in var_names if v != INPUT_NAME and v not in weights]
    if missing:
        raise ExportError(f"no value for the graph variable(s) {', '.join(missing)} in the parameters; "
                          f"the graph must have exactly one input ({INPUT_NAME!r}) and every other variable "
                          "must be a parameter in the .params file")
    return var_names


def _infer_both(sym, nodes, shape, weights, var_names, dynamic_batch):
    """MXNet's shapes and dtypes at the export's batch size and, when ``dynamic_batch``, at one more
    (which tells the sizes that follow the batch); the batch must be free when ``dynamic_batch``."""
    arg_shapes = {v: tuple(weights[v].shape) for v in var_names if v != INPUT_NAME}
    arg_types = {v: weights[v].dtype for v in var_names if v != INPUT_NAME}
    try:
        info = _infer(sym, {INPUT_NAME: shape, **arg_shapes}, {INPUT_NAME: np.float32, **arg_types})
    except mx.base.MXNetError as exc:
        raise ExportError(f"the graph does not accept an input of shape {shape}: "
                          f"{_first_error_line(exc)}; pass the input_shape the model expects") from None
    _check_reshapes(nodes, info, shape, "")
    if not dynamic_batch:
        return info, info
    shape2 = (shape[0] + 1,) + shape[1:]
    remedy = ("export with dynamic_batch=False, or reshape with 0/-1 instead of fixed batch sizes")
    try:
        info2 = _infer(sym, {INPUT_NAME: shape2, **arg_shapes}, {INPUT_NAME: np.float32, **arg_types})
    except mx.base.MXNetError as exc:
        raise ExportError(f"the graph only runs with batch size {shape[0]} ({_first_error_line(exc)}); "
                          + remedy) from None
    _check_reshapes(nodes, info2, shape2, remedy)
    return info, info2


def _translate(b, nodes, weights, info, info2):
    """Translate every node: ``(tensors, initializers, shapes)``.

    ``tensors`` maps (node id, output index) to ONNX tensor names; ``shapes`` maps the ONNX tensor of
    each MXNet output to its shapes at the two inferred batch sizes (equal when the batch is fixed).
    """
    tensors, initializers, shapes = {}, [], {}
    for nid, nd in enumerate(nodes):
        op, name = nd.get("op"), nd.get("name")
        key = _entry_key(nodes, nid, 0, info)
        if op == "null":
            tensors[(nid, 0)] = name
            shapes[name] = (info[key][0], info2[key][0])
            if name != INPUT_NAME:
                initializers.append(numpy_helper.from_array(np.ascontiguousarray(weights[name]), name))
            continue
        convert, known = _TRANSLATIONS[op]
        attrs = {k: v for k, v in (nd.get("attrs") or nd.get("param") or {}).items() if not k.startswith("__")}
        ins = [tuple(e[:2]) for e in nd.get("inputs", [])]
        try:
            in_keys = [_entry_key(nodes, i, k, info) for i, k in ins]
            out_shape, out_dtype = info[key]
            node = _Node(name, op, attrs, [tensors[e] for e in ins], [info[k][0] for k in in_keys],
                         [info[k][1] for k in in_keys], out_shape, out_dtype,
                         in_shapes2=[info2[k][0] for k in in_keys], out_shape2=info2[key][0])
        except KeyError:
            raise GraphFormatError(f"node {_short_name(name)} ({op}) uses an input that comes later in the graph; "
                                   "the symbol JSON is corrupt, export the model again") from None
        extra = sorted(set(attrs) - known)
        if extra:
            raise _unsupported(node, "attribute(s) "
                               + ", ".join(f"{_shorten(k, 60)}={_short_name(attrs[k])}" for k in extra)
                               + " that the converter does not implement")
        out = convert(b, node)
        tensors[(nid, 0)] = out
        shapes.setdefault(out, (out_shape, info2[key][0]))
    return tensors, initializers, shapes


def _head_tensors(nodes, heads, tensors):
    head_tensors = []
    for h in heads:
        key = (h[0], h[1])
        if key not in tensors:
            raise _unsupported(_Node(nodes[h[0]]["name"], nodes[h[0]]["op"], {}, [], [], [], (), None),
                               f"output {h[1]} of a multi-output operator")
        head_tensors.append(tensors[key])
    return head_tensors


def _check_output_names(sym, heads, output_names):
    if output_names is None:
        output_names = [_plain(n) for n in sym.list_outputs()]
    output_names = list(output_names)
    if len(output_names) != len(heads) or len(set(output_names)) != len(output_names) \
            or not all(isinstance(o, str) and o for o in output_names) or INPUT_NAME in output_names:
        raise ExportError(f"output_names {output_names!r} must be {len(heads)} distinct non-empty names, "
                          f"none of them {INPUT_NAME!r}")
    return output_names


def _name_outputs(b, head_tensors, output_names):
    """Rename the tensors that produce the outputs, or add Identity nodes where a rename cannot do."""
    produced = {o for nd_ in b.nodes for o in nd_.output if nd_.op_type != "Constant"}
    rename = {}
    for t, o in zip(head_tensors, output_names):
        if t == o:
            continue
        if o in b.used:
            raise ExportError(f"output name {o!r} is already the name of a tensor of the graph; "
                              "choose another output name")
        if t in produced and t not in rename and head_tensors.count(t) == 1:
            rename[t] = o
    for nd_ in b.nodes:
        nd_.input[:] = [rename.get(i, i) for i in nd_.input]
        nd_.output[:] = [rename.get(o, o) for o in nd_.output]
    for t, o in zip(head_tensors, output_names):
        if t != o and rename.get(t) != o:
            b.nodes.append(helper.make_node("Identity", [rename.get(t, t)], [o], name=b.fresh(f"{o}/Identity")))


# ---------------------------------------------------------------------------------------------
# Layout: a transpose that moves the innermost axis of a MatMul's product


def _perm(node):
    return list(next(a.ints for a in node.attribute if a.name == "perm"))


def _uses(nodes):
    uses = {}
    for nd in nodes:
        for i in nd.input:
            uses[i] = uses.get(i, 0) + 1
    return uses


def _split_of(ys, xs):
    """The sizes the next-to-last axis of ``ys`` is split into by a reshape to ``xs`` that keeps the
    leading (batch) axes and the last axis; None for any other reshape."""
    r = len(ys)
    if len(xs) < r or list(xs[:r - 2]) != list(ys[:r - 2]) or xs[-1] != ys[-1]:
        return None
    split = list(xs[r - 2:-1])
    return split if int(np.prod(split)) == ys[r - 2] else None


def _match_sink(t, producers, uses, shapes, batch_matmuls, keep):
    """``(matmul, reshape or None, split)`` when Transpose ``t`` reads ``MatMul -> [Reshape]`` (each
    read only there, no graph output) and its permutation moves the product's last axis inwards."""
    x = t.input[0]
    r = producers.get(x)
    m = producers.get(r.input[0]) if r is not None and r.op_type == "Reshape" else r
    if r is m:
        r = None
    if m is None or m.op_type != "MatMul" or m.output[0] not in batch_matmuls:
        return None
    y = m.output[0]
    inner = [x] if r is None else [x, y]
    if any(uses.get(v, 0) != 1 or v in keep or v not in shapes for v in inner):
        return None
    splits = [_split_of(ys, xs) for ys, xs in zip(shapes[y], shapes[x])]
    if splits[0] is None or splits[0] != splits[1]:
        return None            # the reshape is not a split of the rows into static sizes
    perm = _perm(t)
    if perm[-1] == len(perm) - 1:
        return None            # the transpose already keeps the innermost axis in place
    return m, r, splits[0]


def _transposed(b, tensor, rank, producers, uses, dead, prefix):
    """``tensor`` with its last two axes swapped; a Transpose that produced it (read only here) is
    merged into one Transpose."""
    swap = list(range(rank - 2)) + [rank - 1, rank - 2]
    src = producers.get(tensor)
    if src is not None and src.op_type == "Transpose" and uses.get(tensor) == 1:
        dead.add(id(src))
        inner = _perm(src)
        tensor, swap = src.input[0], [inner[s] for s in swap]
    out = b.fresh(f"{prefix}/swapped")
    return out, helper.make_node("Transpose", [tensor], [out], name=b.fresh(f"{prefix}/Transpose"), perm=swap)


def _sink_transposes(b, shapes, keep):
    """Compute ``Transpose(Reshape(MatMul(A, B)))`` as ``Transpose(Reshape(MatMul(B^T, A^T)))`` when
    that keeps the innermost axis in place.

    ``batch_dot(W, u^T)`` followed by a transpose that brings the batch (the product's last axis)
    to the front, as in PrimaryPredVects, moves every element on its own: at batch 128 onnxruntime
    spends longer on that transpose than on the rest of the net but one convolution.  The
    product's transpose ``(A B)^T = B^T A^T`` has the batch in the rows; the transpose that remains
    moves whole rows of the innermost axis, and ``A^T`` of a weight is folded into a constant by
    runtimes at load time.  Values are those of the same sums (exact up to the order of additions).
    """
    producers = {o: nd for nd in b.nodes for o in nd.output}
    uses = _uses(b.nodes)
    dead, new_nodes = set(), {}
    for t in [nd for nd in b.nodes if nd.op_type == "Transpose"]:
        found = _match_sink(t, producers, uses, shapes, b.batch_matmuls, keep)
        if found is None:
            continue
        m, r, split = found
        rank = len(shapes[m.output[0]][0])
        q = list(range(rank - 2)) + [rank - 1 + j for j in range(len(split))] + [rank - 2]
        perm = [q[p] for p in _perm(t)]
        if perm[-1] != len(perm) - 1:
            continue
        prefix = m.name.rsplit("/", 1)[0]
        bt, nb = _transposed(b, m.input[1], rank, producers, uses, dead, prefix + "/b")
        at, na = _transposed(b, m.input[0], rank, producers, uses, dead, prefix + "/a")
        z = b.fresh(f"{prefix}/product_t")
        added = [nb, na, helper.make_node("MatMul", [bt, at], [z], name=b.fresh(f"{prefix}/MatMul"))]
        if len(split) > 1:
            z2 = b.fresh(f"{prefix}/product_t_split")
            shape = b.ints(f"{prefix}/split", [0] * (rank - 1) + split)
            added.append(b.nodes.pop())   # the shape constant, placed with the nodes that use it
            added.append(helper.make_node("Reshape", [z, shape], [z2], name=b.fresh(f"{prefix}/Reshape")))
            z = z2
        added.append(helper.make_node("Transpose", [z], list(t.output), name=t.name, perm=perm))
        dead.update({id(m), id(t)} | ({id(r)} if r is not None else set()))
        new_nodes[id(t)] = added
    if new_nodes:
        b.nodes[:] = [n for nd in b.nodes for n in new_nodes.get(id(nd), [] if id(nd) in dead else [nd])]


def _drop_dead_nodes(b, keep):
    """Remove the nodes whose outputs nothing reads (ONNX operators have no side effects)."""
    while True:
        uses = _uses(b.nodes)
        dead = {id(nd) for nd in b.nodes if not any(uses.get(o) or o in keep for o in nd.output)}
        if not dead:
            return
        b.nodes[:] = [nd for nd in b.nodes if id(nd) not in dead]


# ---------------------------------------------------------------------------------------------
# Model: inputs, outputs, documentation


#: Dimension denotations of an image input (ONNX's TypeDenotation.md): N, C, H, W.
_IMAGE_DIMS = ("DATA_BATCH", "DATA_CHANNEL", "DATA_FEATURE", "DATA_FEATURE")


def _value_infos(shapes, head_tensors, output_names, out_dtypes, shape, dynamic_batch, input_doc, output_docs,
                 input_denotation):
    batch = "N" if dynamic_batch else shape[0]
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch] + list(shape[1:]),
                                        doc_string=input_doc or "")
    if input_denotation:
        inp.type.denotation = input_denotation
        if input_denotation == "IMAGE" and len(shape) == 4:
            for d, den in zip(inp.type.tensor_type.shape.dim, _IMAGE_DIMS):
                d.denotation = den
    outputs = []
    for t, o, dtype in zip(head_tensors, output_names, out_dtypes):
        s1, s2 = shapes[t]
        dims = [d1 if d1 == d2 else ("N" if (d1, d2) == (shape[0], shape[0] + 1) else None)
                for d1, d2 in zip(s1, s2)]
        outputs.append(helper.make_tensor_value_info(o, _onnx_type(dtype), dims,
                                                     doc_string=(output_docs or {}).get(o, "")))
    return [inp], outputs


def _model_props(opset, batch, shape, output_names, dynamic_batch, model_name, metadata):
    props = {
        "producer": "capszoo",
        "producer_version": _capszoo_version(),
        "source": f"mxnet {mx.__version__}",
        "opset": str(opset),
        "input": json.dumps({"name": INPUT_NAME, "dtype": "float32", "shape": [batch] + list(shape[1:])}),
        "outputs": json.dumps(output_names),
        "dynamic_batch": "true" if dynamic_batch else "false",
    }
    if model_name:
        props["model_name"] = str(model_name)
    for k, v in (metadata or {}).items():
        if v is not None:
            props[str(k)] = v if isinstance(v, str) else json.dumps(v)
    return props


def mxnet_to_onnx_model(symbol, params, *, input_shape=DEFAULT_INPUT_SHAPE, opset=DEFAULT_OPSET,
                        dynamic_batch=True, output_names=None, model_name=None, doc_string=None,
                        metadata=None, input_doc=None, output_docs=None, input_denotation=None):
    """Convert an MXNet symbol and its parameters to an in-memory, checked ``onnx.ModelProto``.

    Parameters
    ----------
    symbol : mxnet.sym.Symbol, str or os.PathLike
        The graph: a Symbol, its JSON text, or a ``-symbol.json`` file.  Its one
        input variable must be ``data``.
    params : dict or str or os.PathLike
        ``{name: array}`` (``arg:``/``aux:`` prefixes allowed) or a ``.params`` file.
    input_shape : tuple of int
        Shape of ``data``; its first dimension is the batch.
    opset : int
        ONNX opset, from :data:`MIN_OPSET` to :data:`MAX_OPSET`; default 17.
    dynamic_batch : bool
        Make the batch dimension the symbolic ``N`` (else fixed to ``input_shape[0]``).
    output_names : sequence of str, optional
        ONNX output names; default the MXNet output names without their
        ``_output`` suffix (``probabilities`` for ``probabilities_output``).
    model_name, doc_string : str, optional
        Recorded in the graph name, the model's and the graph's ``doc_string`` and ``metadata_props``.
    metadata : dict, optional
        Extra ``metadata_props`` (values that are not strings are stored as JSON).
    input_doc : str, optional
        The ``doc_string`` of the input.
    output_docs : dict of str, optional
        ``{output name: doc_string}``: what each output means.
    input_denotation : str, optional
        ONNX type denotation of the input, e.g. ``"IMAGE"`` (then its four axes are denoted
        ``DATA_BATCH``, ``DATA_CHANNEL``, ``DATA_FEATURE``, ``DATA_FEATURE``).

    The graph has no ``Shape`` operator: every reshape target is a constant of fixed sizes and
    the codes 0 and -1, so runtimes that fold shapes at load time keep the batch dynamic.

    Raises
    ------
    UnsupportedOperatorError
        An operator, or an attribute value, the converter does not translate.
    GraphFormatError
        A symbol that is not a valid graph.
    ExportError
        Missing parameters, a wrong ``input_shape``, an opset out of range, or a
        graph whose batch size is fixed while ``dynamic_batch`` is asked for.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}; "
                          f"the default {DEFAULT_OPSET} suits most runtimes")
    shape = _check_input_shape(input_shape)
    graph, sym = _read_symbol(symbol)   # structure checked: nodes, heads, indices
    nodes, heads = graph["nodes"], graph["heads"]
    _check_operators(nodes)
    weights = _read_params(params)
    var_names = _variables(nodes, weights)
    info, info2 = _infer_both(sym, nodes, shape, weights, var_names, dynamic_batch)

    b = _Builder(opset)
    b.used.update(var_names)
    tensors, initializers, shapes = _translate(b, nodes, weights, info, info2)
    output_names = _check_output_names(sym, heads, output_names)
    head_tensors = _head_tensors(nodes, heads, tensors)
    _sink_transposes(b, shapes, keep=set(head_tensors))
    _drop_dead_nodes(b, keep=set(head_tensors))
    _name_outputs(b, head_tensors, output_names)

    out_dtypes = [info[_entry_key(nodes, h[0], h[1], info)][1] for h in heads]
    inputs, outputs = _value_infos(shapes, head_tensors, output_names, out_dtypes, shape, dynamic_batch,
                                   input_doc, output_docs, input_denotation)
    batch = "N" if dynamic_batch else shape[0]
    name = model_name or "capszoo-model"
    doc = doc_string or (
        f"{name}: converted from MXNet {mx.__version__} by capszoo {_capszoo_version()} (ONNX opset {opset}). "
        f"Input {INPUT_NAME!r}: float32 {[batch] + list(shape[1:])}. Outputs: {', '.join(output_names)}.")
    onnx_graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=initializers, doc_string=doc)
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(onnx_graph, opset_imports=opset_ids, producer_name="capszoo",
                              producer_version=_capszoo_version(), doc_string=doc,
                              ir_version=helper.find_min_ir_version_for(opset_ids))
    helper.set_model_props(model, _model_props(opset, batch, shape, output_names, dynamic_batch, model_name,
                                               metadata))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the converted graph fails the ONNX checker ({_first_line(exc)}); "
                          "this is a bug in capszoo's converter, please report it with the model") from None
    return model


def _first_line(exc, limit=1000):
    """The first line of an ONNX or onnxruntime exception's message, cut to ``limit`` characters.

    onnxruntime puts the reason after the file path and the C++ function
    (``Load model from <path> failed:<file>:256 onnxruntime::Model::Model(...) Unsupported
    model IR version``), hence a larger limit than for MXNet's messages.
    """
    lines = str(exc).strip().splitlines()
    return _shorten(lines[0].strip() if lines else type(exc).__name__, limit)


def _capszoo_version():
    try:
        from importlib.metadata import version
        return version("capszoo")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def _write_model(model, path):
    path = os.fspath(path)
    _makedirs(os.path.dirname(os.path.abspath(path)), "the folder")
    if os.path.isdir(path):
        raise ExportError(f"{path} is a folder; give the path of the .onnx file to write")
    data = model.SerializeToString()
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise ExportError(f"cannot write {path}: {_DISK_FULL_WHY} ({exc.strerror or exc}); free some space "
                              "(or raise the limit) and export again, an earlier file is unchanged") from None
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}; choose a folder you can write to") from None
    return path


def convert_mxnet_to_onnx(symbol, params, path, **kwargs):
    """Convert an MXNet export (symbol + params) to the ONNX file ``path``; returns ``path``.

    ``symbol`` and ``params`` and the keyword arguments are those of
    :func:`mxnet_to_onnx_model`.  The file is written atomically; nothing is
    written when the conversion fails.
    """
    model = mxnet_to_onnx_model(symbol, params, **kwargs)
    return _write_model(model, path)


def export_onnx(block, path, *, input_shape=DEFAULT_INPUT_SHAPE, opset=DEFAULT_OPSET, dynamic_batch=True,
                output_names=None, model_name=None, doc_string=None, metadata=None, input_doc=None,
                output_docs=None, input_denotation=None):
    """Export a Gluon HybridBlock to the ONNX file ``path``; returns ``path``.

    The block is traced as for :func:`~capszoo.exporters.export_mxnet` (hybridized,
    run once on ``input_shape``, outputs named ``output_names`` or
    ``block.output_names`` or ``output``/``output<i>``) and converted with
    :func:`mxnet_to_onnx_model`.  For the CapsNet the ONNX model has one input
    ``data`` ``float32 [N, 1, 28, 28]`` and outputs ``probabilities [N, 10]``,
    ``capsule [N, 16]`` and ``reconstruction [N, 1, 28, 28]``.

    Parameters
    ----------
    opset : int
        Default 17: the newest opset before ``ReduceMean`` & co. changed
        signature, supported by onnxruntime >= 1.12, TensorRT >= 8.6 and
        OpenVINO; 13 is the minimum for a faithful translation (single-axis
        Softmax).  See the module docstring.
    dynamic_batch : bool
        Symbolic batch dimension ``N`` (default) or fixed ``input_shape[0]``.
    model_name : str, optional
        Stored as the graph name and in ``metadata_props["model_name"]``.
    doc_string, metadata, input_doc, output_docs, input_denotation
        Documentation stored in the file; see :func:`mxnet_to_onnx_model`.

    Raises
    ------
    UnsupportedOperatorError
        The block uses an operator the converter does not know (named in the
        message, with its node); no file is written.
    ExportError
        The block cannot be traced or the file cannot be written.
    """
    sym, params, names = block_to_symbol(block, input_shape=input_shape, output_names=output_names)
    model = mxnet_to_onnx_model(sym, params, input_shape=input_shape, opset=opset, dynamic_batch=dynamic_batch,
                                output_names=names, model_name=model_name, doc_string=doc_string,
                                metadata=metadata, input_doc=input_doc, output_docs=output_docs,
                                input_denotation=input_denotation)
    return _write_model(model, path)


# ---------------------------------------------------------------------------------------------
# Verification


def _session(onnx_path, num_threads):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("verifying an ONNX export needs onnxruntime: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    if num_threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        num_threads = int(env) if env.isdigit() and int(env) > 0 else 0
    opts.intra_op_num_threads = int(num_threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(os.fspath(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception classes
        if not os.path.isfile(os.fspath(onnx_path)):
            raise GraphFormatError(f"{os.fspath(onnx_path)}: no such ONNX file") from None
        raise GraphFormatError(f"onnxruntime cannot load {os.fspath(onnx_path)}: "
                               f"{_first_line(exc)}; export the model again") from None


def onnx_outputs(session, x, *, batch_size=VERIFY_BATCH):
    """Run an onnxruntime session on ``x`` in chunks of ``batch_size``.

    A model with a fixed batch size gets chunks of that size (the last one
    padded with zeros, its padding rows dropped).  Chunks are joined along the
    first axis, so a model with an output whose first axis is not the batch is
    run on all of ``x`` at once.
    """
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    batch_major = all(len(o.shape) > 0 and o.shape[0] == inp.shape[0] for o in session.get_outputs())
    if not batch_major:
        if fixed and len(x) != fixed:
            raise ExportError(f"the model takes batches of exactly {fixed} and has outputs that are not "
                              f"batch-major; verify it with {fixed} inputs")
        return session.run(None, {inp.name: x})
    step = fixed or batch_size
    chunks = []
    for i in range(0, len(x), step):
        part = x[i:i + step]
        n = len(part)
        if fixed and n < fixed:
            part = np.concatenate([part, np.zeros((fixed - n,) + part.shape[1:], part.dtype)])
            chunks.append([o[:n] for o in session.run(None, {inp.name: part})])
        else:
            chunks.append(session.run(None, {inp.name: part}))
    return [np.concatenate(parts) for parts in zip(*chunks)]


def verify_onnx(onnx_path, block, images, *, batch_size=VERIFY_BATCH, reference=None, atol=None,
                num_threads=None, labels=None):
    """Run an ONNX export with onnxruntime (CPUExecutionProvider) and compare it with ``block``.

    Parameters
    ----------
    images : numpy.ndarray
        The inputs (see :func:`capszoo.exporters.as_model_input`), fed in
        chunks of ``batch_size`` (or of the model's batch size when it is fixed).
    reference : list of numpy.ndarray, optional
        ``block``'s outputs on ``images`` when already computed.
    atol : float, optional
        When given, raise :class:`ExportError` if a difference exceeds it.
    num_threads : int, optional
        onnxruntime intra-op threads; default ``OMP_NUM_THREADS`` when set, else
        onnxruntime's default.
    labels : numpy.ndarray, optional
        Class labels of ``images``: adds ``"accuracy"`` computed from onnxruntime's outputs.

    Returns
    -------
    dict
        ``{"num_inputs": N, "outputs": [ONNX output names], "onnxruntime": {name:
        max abs diff}, "max_abs_diff": float, "argmax_agreement": f or None,
        "onnxruntime_version": str}``.
    """
    x = as_model_input(images)
    sess = _session(onnx_path, num_threads)
    import onnxruntime as ort
    names = [o.name for o in sess.get_outputs()]
    got = onnx_outputs(sess, x, batch_size=batch_size)
    ref = reference if reference is not None else block_outputs(block, x, batch_size=batch_size)
    ref = [np.asarray(r) for r in ref]
    diffs = _diffs(names, got, ref)
    result = {
        "num_inputs": int(len(x)),
        "outputs": names,
        "onnxruntime": diffs,
        "max_abs_diff": max(diffs.values()) if diffs else 0.0,
        "argmax_agreement": _agreement(got, ref),
        "onnxruntime_version": ort.__version__,
    }
    if labels is not None:
        result["accuracy"] = label_accuracy(got, labels)
    if atol is not None and result["max_abs_diff"] > atol:
        raise ExportError(f"the ONNX export differs from the block by {result['max_abs_diff']:.3g} "
                          f"(> {atol:g}): {diffs}; export the block again and report a bug if it persists")
    return result
