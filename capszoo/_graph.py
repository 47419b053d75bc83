"""The node graph of an exported MXNet symbol, drawn like Wolfram's NodeGraphPlot.

>>> from capszoo import _graph
>>> g = _graph.load_symbol_graph("export/capsnet-mnist-symbol.json")   # doctest: +SKIP
>>> len(g.op_nodes), g.output_names                                     # doctest: +SKIP
(79, ['probabilities', 'capsule', 'reconstruction'])
>>> _graph.save_graph(g, "graph.svg")                                   # doctest: +SKIP

Reading (:func:`load_symbol_graph`) is plain :mod:`json` with strict checks,
no MXNet: the file must be a JSON object with ``nodes`` (each with ``op``,
``name`` and ``inputs`` ``[[node, output(, version)], ...]``) and ``heads``;
every input must point to an earlier node (MXNet stores nodes in topological
order, so a reference to the node itself or a later one is a cycle or a
corrupted file); sizes are capped (:data:`MAX_FILE_BYTES`, :data:`MAX_NODES`,
:data:`MAX_ATTR_CHARS`).  Anything else raises
:class:`~capszoo.errors.GraphFormatError` naming the problem.  Operators this
module does not know are accepted (it is a drawing) and listed in
:attr:`Graph.unknown_ops`.  Parameter counts come from the ``.params`` file
beside the symbol, read by :func:`capszoo._weights.read_params`.

Drawing (:func:`graph_layout`, :func:`graph_figure`, :func:`save_graph`): a
small layered layout of its own, drawn with matplotlib (Graphviz's ``dot``
binary is not a pip package, so a fresh machine may lack it).  Nodes sit on
the layer of their longest path from the inputs, ordered within a layer by
the mean position of their neighbours; an edge that skips layers passes
through a waypoint on each layer it crosses, so it is routed around the boxes.
Operators are rounded boxes coloured by family and labelled with the operator
and its main settings (``Convolution 9x9/2, 256``); parameter arrays (weights,
biases) are not boxes but dots on the box that uses them.  The input
variables and the outputs (the graph's heads; an exporter's ``_copy`` node
naming an output becomes that output's marker) are dark pills.  A long graph
is wrapped into columns, read left to right; an edge leaving the bottom of a
column continues at the top of the next.  Output is SVG (each box a group
with the id ``op-<node>``, ``input-<node>`` or ``output-<k>``) or PNG, by
extension, written atomically.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
from typing import Mapping, Optional, Tuple

from . import _visualize as _vis
from .errors import GraphFormatError, InvalidInputError, WeightsFormatError

__all__ = [
    "Node",
    "Graph",
    "GraphLayout",
    "load_symbol_graph",
    "params_file_beside",
    "op_family",
    "op_label",
    "graph_layout",
    "graph_figure",
    "save_graph",
    "check_graph_output",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MAX_ATTR_CHARS",
    "MAX_DRAWN_NODES",
]

#: Largest symbol file read (bytes).  The CapsNet's symbol JSON is about 16 KB.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Most nodes a symbol may have.
MAX_NODES = 100_000
#: Longest attribute value, attribute key or node name (characters).
MAX_ATTR_CHARS = 64 * 1024
#: Longest operator name (characters).
MAX_OP_CHARS = 256
#: Most boxes (operators, inputs, outputs) a drawing may hold; a larger graph is unreadable as a picture.
MAX_DRAWN_NODES = 3000
#: Most waypoints of long edges a drawing may hold.
MAX_WAYPOINTS = 60_000
#: Largest PNG drawn (pixels); use SVG beyond it.
MAX_PNG_PIXELS = 40_000_000

_REMEDY = "export the model again with `capszoo export`"


# -- the graph -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Node:
    """One node of an MXNet symbol: an operator, or a variable (``op == "null"``)."""

    index: int
    op: str
    name: str
    inputs: Tuple[Tuple[int, int], ...]
    attrs: Mapping[str, str] = dataclasses.field(hash=False)

    @property
    def is_variable(self):
        return self.op == "null"


@dataclasses.dataclass(frozen=True)
class Graph:
    """A checked MXNet symbol graph (see :func:`load_symbol_graph`)."""

    nodes: Tuple[Node, ...]
    heads: Tuple[Tuple[int, int], ...]
    arg_nodes: Tuple[int, ...]
    attrs: Mapping[str, object] = dataclasses.field(hash=False)
    source: Optional[str] = None

    @property
    def op_nodes(self):
        """The operator nodes (every node but the variables), in file order."""
        return [n for n in self.nodes if not n.is_variable]

    @property
    def variables(self):
        return [n for n in self.nodes if n.is_variable]

    @property
    def unknown_ops(self):
        """Sorted operator names this module does not know (drawn red and dashed, listed under the graph)."""
        return sorted({n.op for n in self.op_nodes if op_family(n.op) == "unknown"})

    @property
    def output_names(self):
        """A name per head: the node's name (with ``[k]`` for output ``k > 0`` of a multi-output node)."""
        return [self.nodes[i].name + (f"[{k}]" if k else "") for i, k in self.heads]

    @property
    def mxnet_version(self):
        """MXNet's version number stored in the file (e.g. 10901), or None."""
        v = self.attrs.get("mxnet_version") if isinstance(self.attrs, Mapping) else None
        if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and not isinstance(v[1], bool):
            return v[1]
        return None


# -- reading -------------------------------------------------------------------------------------
def _short(s, n=60):
    s = str(s)
    return repr(s if len(s) <= n else s[:n] + "...")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _read_text(path):
    p = os.fspath(path)
    if not p:
        raise GraphFormatError("no symbol file given; give the <prefix>-symbol.json that "
                               "`capszoo export --format mxnet` wrote")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise GraphFormatError(f"{p}: no such file; give the <prefix>-symbol.json that "
                               "`capszoo export --format mxnet` wrote") from None
    except OSError as exc:
        raise GraphFormatError(f"cannot read {p}: {_vis._os_reason(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise GraphFormatError(f"{p} is a folder, not a symbol file; give the <prefix>-symbol.json inside it")
    if not stat.S_ISREG(st.st_mode):
        raise GraphFormatError(f"{p} is not a regular file; give the <prefix>-symbol.json that "
                               "`capszoo export --format mxnet` wrote")
    if st.st_size > MAX_FILE_BYTES:
        raise GraphFormatError(f"{p} is {st.st_size / 2 ** 20:.0f} MB, more than the {MAX_FILE_BYTES >> 20} MB "
                               "a symbol JSON may have (the weights belong in the .params file); give the "
                               "-symbol.json file, or " + _REMEDY)
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise GraphFormatError(f"cannot read {p}: {_vis._os_reason(exc)}") from None
    if len(data) > MAX_FILE_BYTES:  # pragma: no cover - the file grew while we read it
        raise GraphFormatError(f"{p} is larger than {MAX_FILE_BYTES >> 20} MB; " + _REMEDY)
    return data, p


def _decode(data, where):
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GraphFormatError(f"{where} is not UTF-8 text (byte {exc.start} is not valid UTF-8; a .params file "
                               f"or a picture?); give the -symbol.json file, or {_REMEDY}") from None


def _parse_json(text, where):
    if not text.strip():
        raise GraphFormatError(f"{where} is empty; {_REMEDY}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GraphFormatError(f"{where} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                               f"{_REMEDY}") from None
    except RecursionError:
        raise GraphFormatError(f"{where} is JSON nested too deeply to be a symbol; {_REMEDY}") from None
    except ValueError as exc:  # e.g. an integer with too many digits
        raise GraphFormatError(f"{where} is not valid JSON ({exc}); {_REMEDY}") from None


def _check_entry(entry, where, what, n_nodes):
    """An input or head entry ``[node, output(, version)]`` -> (node, output)."""
    if not isinstance(entry, list) or len(entry) not in (2, 3) or not all(_is_int(v) for v in entry):
        raise GraphFormatError(f"{where}: {what} must be [node, output] or [node, output, version] integers, "
                               f"got {_short(json.dumps(entry))}; {_REMEDY}")
    src, out = entry[0], entry[1]
    if src < 0 or src >= n_nodes:
        raise GraphFormatError(f"{where}: {what} refers to node {src}, but the graph has nodes 0..{n_nodes - 1}; "
                               f"{_REMEDY}")
    if out < 0 or out > 100_000 or (len(entry) == 3 and entry[2] < 0):
        raise GraphFormatError(f"{where}: {what} has an invalid output index {out}; {_REMEDY}")
    return src, out


def _check_attrs(value, where, key):
    if not isinstance(value, dict):
        raise GraphFormatError(f"{where}: {key!r} must be an object of strings, got {type(value).__name__}; "
                               f"{_REMEDY}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise GraphFormatError(f"{where}: attribute {_short(k)} must be a string, got "
                                   f"{type(v).__name__}; {_REMEDY}")
        if len(k) > MAX_ATTR_CHARS or len(v) > MAX_ATTR_CHARS:
            raise GraphFormatError(f"{where}: attribute {_short(k)} is {max(len(k), len(v)):,} characters long, "
                                   f"more than the {MAX_ATTR_CHARS:,} allowed; {_REMEDY}")
    return value


def _check_doc(doc, where, source):
    if not isinstance(doc, dict):
        raise GraphFormatError(f"{where} holds a JSON {type(doc).__name__ if doc is not None else 'null'}, "
                               f"not an MXNet symbol (an object with \"nodes\" and \"heads\"); {_REMEDY}")
    for key in ("nodes", "heads"):
        if key not in doc:
            raise GraphFormatError(f"{where} has no {key!r}, so it is not an MXNet symbol JSON; {_REMEDY}")
    raw = doc["nodes"]
    if not isinstance(raw, list):
        raise GraphFormatError(f"{where}: 'nodes' must be a list, got {type(raw).__name__}; {_REMEDY}")
    if not raw:
        raise GraphFormatError(f"{where}: 'nodes' is empty; {_REMEDY}")
    if len(raw) > MAX_NODES:
        raise GraphFormatError(f"{where} has {len(raw):,} nodes, more than the {MAX_NODES:,} allowed; {_REMEDY}")
    n = len(raw)
    nodes = []
    for i, rn in enumerate(raw):
        at = f"{where}: node {i}"
        if not isinstance(rn, dict):
            raise GraphFormatError(f"{at} must be an object, got {type(rn).__name__}; {_REMEDY}")
        for key in ("op", "name", "inputs"):
            if key not in rn:
                raise GraphFormatError(f"{at} has no {key!r}; {_REMEDY}")
        op, name, inputs = rn["op"], rn["name"], rn["inputs"]
        if not isinstance(op, str) or not op or len(op) > MAX_OP_CHARS or op.strip() != op:
            raise GraphFormatError(f"{at}: 'op' must be an operator name (a string of 1..{MAX_OP_CHARS} "
                                   f"characters), got {_short(json.dumps(op))}; {_REMEDY}")
        if not isinstance(name, str):
            raise GraphFormatError(f"{at}: 'name' must be a string, got {type(name).__name__}; {_REMEDY}")
        if len(name) > MAX_ATTR_CHARS:
            raise GraphFormatError(f"{at}: its name is {len(name):,} characters long, more than the "
                                   f"{MAX_ATTR_CHARS:,} allowed; {_REMEDY}")
        at = f"{where}: node {i} ({_short(name, 40)})"
        if not isinstance(inputs, list):
            raise GraphFormatError(f"{at}: 'inputs' must be a list, got {type(inputs).__name__}; {_REMEDY}")
        if op == "null" and inputs:
            raise GraphFormatError(f"{at} is a variable (op \"null\") but has inputs; {_REMEDY}")
        ins = []
        for j, entry in enumerate(inputs):
            src, out = _check_entry(entry, at, f"input {j}", n)
            if src >= i:
                raise GraphFormatError(
                    f"{at}: input {j} refers to "
                    f"{'the node itself' if src == i else f'node {src}, which comes after it'}"
                    " (MXNet stores nodes in topological order, so this is a cycle or a corrupted file); "
                    f"{_REMEDY}")
            if out and nodes[src].is_variable:
                raise GraphFormatError(f"{at}: input {j} asks for output {out} of variable node {src}, "
                                       f"which has one output; {_REMEDY}")
            ins.append((src, out))
        attrs = {}
        for key in ("param", "attr", "attrs"):  # "param"/"attr": MXNet < 1.0; "attrs" since
            if key in rn:
                attrs.update(_check_attrs(rn[key], at, key))
        if "subgraphs" in rn and not isinstance(rn["subgraphs"], list):
            raise GraphFormatError(f"{at}: 'subgraphs' must be a list; {_REMEDY}")
        nodes.append(Node(index=i, op=op, name=name, inputs=tuple(ins), attrs=attrs))

    heads_raw = doc["heads"]
    if not isinstance(heads_raw, list) or not heads_raw:
        raise GraphFormatError(f"{where}: 'heads' must be a non-empty list of [node, output] entries "
                               f"(the outputs), got {_short(json.dumps(heads_raw))}; {_REMEDY}")
    if len(heads_raw) > MAX_NODES:
        raise GraphFormatError(f"{where} has {len(heads_raw):,} heads; {_REMEDY}")
    heads = []
    for j, entry in enumerate(heads_raw):
        src, out = _check_entry(entry, where, f"head {j}", n)
        if out and nodes[src].is_variable:
            raise GraphFormatError(f"{where}: head {j} asks for output {out} of variable node {src}, which has "
                                   f"one output; {_REMEDY}")
        heads.append((src, out))

    arg_nodes = doc.get("arg_nodes", [])
    if not isinstance(arg_nodes, list) or not all(_is_int(v) for v in arg_nodes):
        raise GraphFormatError(f"{where}: 'arg_nodes' must be a list of node indices; {_REMEDY}")
    for v in arg_nodes:
        if v < 0 or v >= n:
            raise GraphFormatError(f"{where}: 'arg_nodes' lists node {v}, but the graph has nodes 0..{n - 1}; "
                                   f"{_REMEDY}")
        if not nodes[v].is_variable:
            raise GraphFormatError(f"{where}: 'arg_nodes' lists node {v} ({_short(nodes[v].name, 40)}), an "
                                   f"operator ({nodes[v].op}), not a variable; {_REMEDY}")
    gattrs = doc.get("attrs", {})
    if not isinstance(gattrs, dict):
        raise GraphFormatError(f"{where}: 'attrs' must be an object, got {type(gattrs).__name__}; {_REMEDY}")
    return Graph(nodes=tuple(nodes), heads=tuple(heads), arg_nodes=tuple(arg_nodes), attrs=gattrs, source=source)


def model_symbol_json(name) -> str:
    """The symbol JSON of zoo entry ``name``'s inference net (its graph: no weights needed)."""
    import mxnet as mx
    from ._registry import get_card

    net = get_card(name).build()
    out = net(mx.sym.var("data"))
    sym = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
    return sym.tojson()


def load_symbol_graph(path_or_text):
    """Read and check an MXNet symbol JSON (``<prefix>-symbol.json``) without MXNet.

    Parameters
    ----------
    path_or_text : str, os.PathLike, bytes or dict
        A path; or the JSON text itself (a ``str`` that starts with ``{`` or
        ``[`` or holds a line break, or ``bytes``); or the already parsed
        object.

    Returns
    -------
    Graph

    Raises
    ------
    GraphFormatError
        A missing, unreadable, empty, oversized or non-UTF-8 file; text that is
        not JSON; JSON that is not a symbol (missing or mistyped ``nodes``,
        ``op``, ``name``, ``inputs``, ``heads``); an input or head pointing
        outside the graph; an input pointing to its own node or a later one (a
        cycle); more than :data:`MAX_NODES` nodes; an attribute or name longer
        than :data:`MAX_ATTR_CHARS`.
    InvalidInputError
        An argument of another type.
    """
    source = None
    if isinstance(path_or_text, dict):
        return _check_doc(path_or_text, "the symbol JSON", None)
    if isinstance(path_or_text, (bytes, bytearray)):
        if len(path_or_text) > MAX_FILE_BYTES:
            raise GraphFormatError(f"the symbol JSON is larger than {MAX_FILE_BYTES >> 20} MB; {_REMEDY}")
        where = "the symbol JSON"
        text = _decode(bytes(path_or_text), where)
    elif isinstance(path_or_text, str) and (path_or_text.lstrip()[:1] in ("{", "[") or "\n" in path_or_text):
        if len(path_or_text) > MAX_FILE_BYTES:
            raise GraphFormatError(f"the symbol JSON is larger than {MAX_FILE_BYTES >> 20} MB; {_REMEDY}")
        where, text = "the symbol JSON", path_or_text
    elif isinstance(path_or_text, (str, os.PathLike)):
        data, source = _read_text(path_or_text)
        where = source
        text = _decode(data, where)
    else:
        raise InvalidInputError(f"load_symbol_graph takes a path, JSON text or a parsed dict, got "
                                f"{type(path_or_text).__name__}")
    return _check_doc(_parse_json(text, where), where, source)


# -- the parameter file beside the symbol --------------------------------------------------------
def params_file_beside(symbol_path):
    """The ``<prefix>-NNNN.params`` beside ``<prefix>-symbol.json`` (epoch 0000 first, else the last), or None."""
    p = os.fspath(symbol_path)
    if not p.endswith("-symbol.json"):
        return None
    prefix = p[:-len("-symbol.json")]
    first = prefix + "-0000.params"
    if os.path.isfile(first):
        return first
    folder, base = os.path.split(prefix)
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return None
    pat = re.compile(re.escape(base) + r"-(\d{4})\.params\Z")
    found = sorted(m.group(0) for m in map(pat.match, names) if m)
    return os.path.join(folder, found[-1]) if found else None



# -- operators: families and labels --------------------------------------------------------------
_FAMILY_STYLE = {
    # family: (legend text, fill, outline)
    "layer": ("convolution / dense / norm", (210, 226, 246), (52, 101, 164)),
    "activation": ("activation / softmax", (253, 224, 190), (206, 110, 10)),
    "math": ("tensor math (arithmetic, reductions, batch_dot)", (230, 218, 242), (118, 78, 160)),
    "shape": ("shape (reshape, transpose, slice, copy)", (232, 232, 232), (115, 115, 115)),
    "select": ("selection (argmax, one_hot, pick)", (213, 238, 213), (50, 130, 60)),
    "other": ("other operator", (255, 255, 255), (115, 115, 115)),
    "unknown": ("unknown operator", (255, 236, 236), (190, 40, 40)),
}
_INPUT_FILL, _OUTPUT_FILL = (30, 110, 70), (175, 55, 35)
_EDGE = (85, 85, 85)

_OPS = {
    "layer": """Convolution Convolution_v1 Deconvolution FullyConnected Pooling Pooling_v1 BatchNorm BatchNorm_v1
        LayerNorm InstanceNorm GroupNorm L2Normalization LRN Embedding RNN Dropout UpSampling BilinearSampler
        GridGenerator SpatialTransformer ROIPooling Correlation im2col col2im _sg_mkldnn_conv
        _sg_mkldnn_fully_connected""",
    "activation": """Activation LeakyReLU relu sigmoid hard_sigmoid tanh softsign softmax log_softmax softmin
        SoftmaxActivation Softmax SoftmaxOutput""",
    "shape": """Reshape reshape reshape_like Flatten flatten transpose SwapAxis swapaxes expand_dims squeeze slice
        slice_axis slice_like crop Crop Concat concat stack split SliceChannel _split_v2 tile repeat broadcast_to
        broadcast_like broadcast_axis broadcast_axes flip reverse Pad pad depth_to_space space_to_depth
        SequenceLast SequenceMask SequenceReverse diag _copy identity BlockGrad stop_gradient Cast cast amp_cast
        amp_multicast shape_array size_array ones_like zeros_like _zeros _ones _full _arange _eye _linspace
        cast_storage _CrossDeviceCopy _copyto _zeros_without_dtype""",
    "select": """argmax argmin argmax_channel one_hot _onehot_encode pick take batch_take gather_nd scatter_nd
        where topk sort argsort choose_element_0index fill_element_0index ravel_multi_index unravel_index
        _ravel_multi_index _unravel_index""",
    "math": """abs add_n ElementWiseSum arccos arccosh arcsin arcsinh arctan arctanh batch_dot dot khatri_rao
        cbrt ceil clip cos cosh cumsum degrees elemwise_add elemwise_div elemwise_mul elemwise_sub erf erfinv exp
        expm1 fix floor gamma gammaln log log10 log1p log2 logical_not max max_axis mean min min_axis moments
        nanprod nansum negative norm prod radians rcbrt reciprocal rint round rsqrt sign sin sinh sqrt square sum
        sum_axis tan tanh trunc _square_sum all_finite multi_all_finite multi_sum_sq smooth_l1 _histogram""",
    "other": """Custom MakeLoss make_loss LinearRegressionOutput LogisticRegressionOutput MAERegressionOutput
        SVMOutput CTCLoss ctc_loss softmax_cross_entropy IdentityAttachKLSparseReg _foreach _while_loop _cond
        _CachedOp _CachedOpThreadSafe _NDArray _Native _CustomFunction _NoGradient shuffle _shuffle uniform normal
        _set_value _slice_assign _slice_assign_scalar _crop_assign _crop_assign_scalar _rnn_param_concat
        _identity_with_attr_like_rhs _imdecode _grad_add _scatter_set_nd _scatter_elemwise_div
        _scatter_minus_scalar _scatter_plus_scalar _broadcast_backward""",
}
_OP_FAMILY = {op: fam for fam, ops in _OPS.items() for op in ops.split()}
# Arithmetic and comparison operators, in every spelling MXNet has had: _plus, _plus_scalar, _PlusScalar,
# _rminus_scalar, broadcast_greater_equal, _Greater_Equal ...
_ARITH = re.compile(r"(?:_|broadcast_)(?:r)?(?:plus|minus|add|sub|mul|div|mod|power|maximum|minimum|hypot|equal|"
                    r"not_?equal|greater(?:_?equal)?|lesser(?:_?equal)?|logical_?(?:and|or|xor))(?:_?scalar)?\Z",
                    re.IGNORECASE)
_KNOWN_PREFIXES = ("_np_", "_npi_", "_npx_", "_contrib_", "_random_", "_sample_", "random_", "sample_", "_image_",
                   "_linalg_", "_sparse_", "_sg_", "_backward_", "_cvimdecode", "_cvimread", "_cvimresize",
                   "_cvcopyMakeBorder")


def op_family(op):
    """The drawing family of operator ``op``: layer, activation, math, shape, select, other or unknown."""
    fam = _OP_FAMILY.get(op)
    if fam:
        return fam
    if _ARITH.match(op):
        return "math"
    if op.startswith(("linalg_", "_linalg_")):
        return "math"
    if op.startswith(_KNOWN_PREFIXES) or op.endswith("_update") or op.startswith(("_update", "multi_")):
        return "other"
    return "unknown"


def _nums(s):
    """The comma-separated items of a tuple attribute such as ``"(0, -1, 8)"`` -> ["0", "-1", "8"]."""
    s = str(s).strip().strip("()[]")
    return [t.strip() for t in s.split(",") if t.strip() and t.strip().lower() != "none"]


def _tup(s):
    return "(" + ",".join(_nums(s)) + ")"


def _kernel(s):
    items = _nums(s)
    return "x".join(items) if items else ""


def _stride(s):
    items = _nums(s)
    if not items or all(t == "1" for t in items):
        return ""
    return "/" + (items[0] if len(set(items)) == 1 else "x".join(items))


def op_label(node):
    """A short label of an operator node: the operator and its main settings, e.g. ``Convolution 9x9/2, 256``."""
    op, a = node.op, node.attrs
    g = a.get
    if op in ("Convolution", "Convolution_v1", "Deconvolution"):
        s = f"{op} {_kernel(g('kernel', ''))}{_stride(g('stride', ''))}".rstrip()
        if g("num_filter"):
            s += f", {g('num_filter')}"
        dil = _nums(g("dilate", ""))
        if dil and any(t != "1" for t in dil):
            s += f", dilate {'x'.join(dil)}"
        if g("num_group", "1") != "1":
            s += f", groups {g('num_group')}"
        return s
    if op == "FullyConnected":
        return f"{op} {g('num_hidden', '')}".rstrip()
    if op in ("Pooling", "Pooling_v1"):
        if g("global_pool", "False").lower() in ("true", "1"):
            return f"{op} global {g('pool_type', 'max')}"
        return f"{op} {g('pool_type', 'max')} {_kernel(g('kernel', ''))}{_stride(g('stride', ''))}".rstrip()
    if op in ("Activation", "LeakyReLU"):
        return f"{op} {g('act_type', '')}".rstrip()
    if op in ("Reshape", "reshape"):
        shape = g("shape", g("newshape"))
        return f"{op} {_tup(shape)}" if shape is not None else op
    if op in ("transpose", "broadcast_to", "tile", "SwapAxis", "swapaxes"):
        key = {"transpose": "axes", "broadcast_to": "shape", "tile": "reps"}.get(op)
        if key and g(key):
            return f"{op} {_tup(g(key))}"
        if op in ("SwapAxis", "swapaxes"):
            return f"{op} {g('dim1', '0')},{g('dim2', '0')}"
        return op
    if op == "slice_axis":
        end = g("end", "None")
        return f"{op} {g('axis', '?')} [{g('begin', '0')}:{'' if end == 'None' else end}]"
    if op in ("Concat", "concat"):
        return f"{op} dim {g('dim', '1')}"
    if op == "one_hot":
        return f"{op} {g('depth', '')}".rstrip()
    if op == "Dropout":
        return f"{op} {g('p', '0.5')}"
    if op == "Embedding":
        return f"{op} {g('input_dim', '?')}x{g('output_dim', '?')}"
    if op in ("batch_dot", "dot"):
        ta = g("transpose_a", "False").lower() in ("true", "1")
        tb = g("transpose_b", "False").lower() in ("true", "1")
        return f"{op} ({'A^T' if ta else 'A'} {'B^T' if tb else 'B'})" if ta or tb else op
    if op == "clip":
        return f"{op} [{g('a_min', '')}, {g('a_max', '')}]"
    if op in ("Cast", "cast", "amp_cast"):
        return f"{op} {g('dtype', '')}".rstrip()
    if "scalar" in a and re.search("scalar", op, re.IGNORECASE):
        return f"{op} {a['scalar']}"
    if "axis" in a:
        return f"{op} axis {_tup(a['axis']) if ',' in a['axis'] else a['axis']}"
    return op




# -- layout --------------------------------------------------------------------------------------
_LABEL, _NAME = 10, 8.5          # font sizes (points): a box's label and its node name
_BOX_H, _VGAP = 44, 34           # px: box height, space between layers
_HGAP, _WAY_SEP, _LANE = 26, 12, 8   # px: between boxes; around a waypoint; between parallel edges
_MIN_BOX, _MAX_BOX, _PAD = 120, 300, 10
_GUTTER = 50                     # px between columns (plus a lane per edge crossing to the next column)
_ASPECT = 1.25                   # wanted width / height of a graph wrapped into columns
_MAX_ROWS_ONE_COLUMN = 14
_MOVETO, _LINETO, _CURVE4 = 1, 2, 4  # matplotlib Path codes
_COPY_OPS = ("_copy", "identity", "_identity")
_PARAM_SUFFIXES = ("_weight", "_bias", "_gamma", "_beta", "_moving_mean", "_moving_var", "_running_mean",
                   "_running_var", "_alpha", "_parameters", "_i2h_weight", "_h2h_weight")


def _clean(s):
    """``s`` without characters XML or the font cannot take (controls, lone surrogates); line breaks as spaces."""
    s = re.sub(r"[\t\n\r]", " ", str(s))
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]", "?", s)


@dataclasses.dataclass
class Box:
    """A drawn node: an operator, an input variable or an output marker (key ``("out", k)``)."""

    key: object
    kind: str                 # "op", "input" or "output"
    label: str
    sub: str
    family: str
    params: int = 0           # parameter arrays it uses (dots on the box)
    w: float = 0.0
    layer: int = 0
    col: int = 0
    x: float = 0.0            # centre, px
    y: float = 0.0            # top, px


@dataclasses.dataclass(frozen=True)
class GraphLayout:
    """A graph laid out for drawing, in pixels with y down.

    ``boxes`` are the drawn nodes; ``edges`` the matplotlib path of each edge
    between consecutive layers, ``(vertices, codes, arrow)`` (``arrow``: it
    ends on a box); ``header``, ``legend`` and ``notes`` the texts around it.
    """

    size: Tuple[int, int]
    boxes: tuple
    edges: tuple
    num_ops: int
    num_layers: int
    columns: int
    title: str
    header: tuple
    legend: tuple             # (kind, family) per entry: "family", "input", "output" or "param"
    legend_y: float
    legend_columns: int
    notes: tuple

    @property
    def box_height(self):
        return _BOX_H


def _variable_kinds(graph, param_names):
    """(input variable indices, parameter variable indices)."""
    inputs, params = set(), set()
    for n in graph.variables:
        is_param = n.name in param_names or n.name.endswith(_PARAM_SUFFIXES) or "__init__" in n.attrs
        (params if is_param else inputs).add(n.index)
    return inputs, params


def _common_prefix(names):
    if len(names) < 2:
        return ""
    pre = os.path.commonprefix(names)
    cut = pre.rfind("_")
    return pre[:cut + 1] if cut > 0 else ""


def _names(names, most=8):
    names = [_clean(n) or "(unnamed)" for n in names]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _read_params(graph, params):
    """``(shapes, path, None)`` of the ``.params`` file to count, ``(None, path, reason)`` when it cannot be
    read, or None when there is none."""
    path = params_file_beside(graph.source) if params == "auto" and graph.source else \
        (os.fspath(params) if params not in (None, "auto") else None)
    if not path:
        return None
    from ._weights import read_params

    try:
        return {k: tuple(a.shape) for k, a in read_params(path).items()}, path, None
    except WeightsFormatError as exc:
        reason = str(exc)
        reason = reason[len(path) + 2:] if reason.startswith(path + ": ") else reason
        return None, path, reason.split(";")[0]


def _header(graph, title, params, n_ops, n_layers, input_names, output_names, n_arrays, n_folded):
    """(title, lines of small print) of the drawing."""
    name = os.path.basename(graph.source) if graph.source else "MXNet symbol"
    title = _clean(title) if title else f"Node graph of {_clean(name)}"
    line1 = f"{n_ops:,} operator node{'s' if n_ops != 1 else ''} in {n_layers:,} layer{'s' if n_layers != 1 else ''}"
    if n_folded:
        line1 += f" (+{n_folded} copy node{'s' if n_folded > 1 else ''} naming the outputs: the output markers)"
    if input_names:
        line1 += f"; input{'s' if len(input_names) > 1 else ''}: {_names(input_names)}"
    line1 += f"; output{'s' if len(output_names) > 1 else ''}: {_names(output_names)}"
    v = graph.mxnet_version
    if v:
        line1 += f"; saved by MXNet {v // 10000}.{v // 100 % 100}.{v % 100}"
    line2 = f"{n_arrays} parameter array{'s' if n_arrays != 1 else ''}, each drawn as a dot on the box that uses it" \
        if n_arrays else "no parameter arrays"
    if params is not None:
        shapes, ppath, err = params
        if shapes is not None:
            total = sum(math.prod(s) for s in shapes.values())
            line2 = (f"{total:,} parameters in {len(shapes)} arrays ({_clean(os.path.basename(ppath))}), "
                     "each array drawn as a dot on the box that uses it")
        elif err:
            line2 += f"; {_clean(os.path.basename(ppath))} could not be read: {_clean(err)}"
    return title, [line1, line2]


def _head_info(graph):
    """Output markers: list of (name, source node index, folded copy node index or None)."""
    consumers = {}
    for n in graph.nodes:
        for src, _ in n.inputs:
            consumers[src] = consumers.get(src, 0) + 1
    head_count = {}
    for i, _ in graph.heads:
        head_count[i] = head_count.get(i, 0) + 1
    outs = []
    for (i, k), name in zip(graph.heads, graph.output_names):
        n = graph.nodes[i]
        if (n.op in _COPY_OPS and len(n.inputs) == 1 and not consumers.get(i) and head_count[i] == 1):
            outs.append((n.name, n.inputs[0][0], i))
        else:
            outs.append((name, i, None))
    return outs


def _drawn_nodes(graph, param_names, measure):
    """The boxes (in file order, outputs last), each box's drawn inputs, and (inputs, params, outs, folded)."""
    inputs, param_vars = _variable_kinds(graph, param_names)
    outs = _head_info(graph)
    folded = {c for _, _, c in outs if c is not None}
    for _, src, _ in outs:  # a head that is a parameter array is drawn as an input pill
        if src in param_vars:
            param_vars.discard(src)
            inputs.add(src)
    ops = [n for n in graph.op_nodes if n.index not in folded]
    n_drawn = len(ops) + len(inputs) + len(outs)
    if n_drawn > MAX_DRAWN_NODES:
        raise InvalidInputError(f"the graph has {n_drawn:,} nodes to draw, more than the {MAX_DRAWN_NODES:,} "
                                "a picture can show legibly")
    prefix = _common_prefix([n.name for n in ops])
    boxes, preds = {}, {}
    for n in graph.nodes:
        if n.index in inputs:
            shape = n.attrs.get("__shape__")
            boxes[n.index] = Box(n.index, "input", _clean(n.name) or "(unnamed)",
                                 "input" + (f" {_kernel(shape)}" if shape else ""), "input")
            preds[n.index] = []
        elif not n.is_variable and n.index not in folded:
            name = n.name[len(prefix):] if prefix and n.name.startswith(prefix) and len(n.name) > len(prefix) \
                else n.name
            boxes[n.index] = Box(n.index, "op", _clean(op_label(n)), _clean(name) or "(unnamed)", op_family(n.op),
                                 params=sum(1 for s, _ in n.inputs if s in param_vars))
            preds[n.index] = [s for s, _ in n.inputs if s not in param_vars]
    for j, (name, src, _) in enumerate(outs):
        boxes[("out", j)] = Box(("out", j), "output", _clean(name) or "(unnamed)",
                                f"output {j + 1} of {len(outs)}" if len(outs) > 1 else "output", "output")
        preds[("out", j)] = [src]
    for b in boxes.values():
        text_w = max(measure(b.label, _LABEL), measure(b.sub, _NAME)) + (8 * min(b.params, 6) + 6 if b.params else 0)
        b.w = float(2 * math.ceil(min(_MAX_BOX, max(_MIN_BOX, text_w + 2 * _PAD)) / 2))
    return boxes, preds, (inputs, param_vars, outs, folded)


def _layers(boxes, preds):
    """Layer of each box: its longest path from the inputs; an operator without inputs sits just above
    its first consumer."""
    layer, succs = {}, {k: [] for k in boxes}
    for k in boxes:
        layer[k] = max((layer[p] + 1 for p in preds[k]), default=0)
        for p in preds[k]:
            succs[p].append(k)
    for k in reversed(list(boxes)):
        if boxes[k].kind == "op" and not preds[k] and succs[k]:
            layer[k] = max(layer[k], min(layer[s] for s in succs[k]) - 1)
    return layer


def _hops(boxes, preds, layer):
    """Every edge cut into hops between consecutive layers: ``(a, b, port, ports)``.  An edge that skips
    layers passes through waypoints ``("way", source, layer)``, shared by the long edges of one source."""
    hops, ways = [], set()
    for k in boxes:
        for port, p in enumerate(preds[k]):
            a = p
            for li in range(layer[p] + 1, layer[k]):
                d = ("way", p, li)
                if d not in ways:
                    ways.add(d)
                    layer[d] = li
                    hops.append((a, d, 0, 1))
                a = d
            hops.append((a, k, port, len(preds[k])))
        if len(ways) > MAX_WAYPOINTS:
            raise InvalidInputError("the graph has too many long edges to draw legibly")
    return hops


def _order(keys, layer, hops):
    """Keys by layer, ordered within each layer by the mean position of their neighbours (sweeps down and
    up; an input port counts from the left).  Returns (layers, predecessors of each key)."""
    index = {k: i for i, k in enumerate(keys)}
    rank = {k: index[k[1]] + 0.5 if isinstance(k, tuple) and k[0] == "way" else index[k] for k in layer}
    layers = [[] for _ in range(max(layer.values()) + 1)]
    for k in sorted(layer, key=rank.get):
        layers[layer[k]].append(k)
    up, down = {k: [] for k in layer}, {k: [] for k in layer}
    for a, b, port, ports in hops:
        up[b].append(a)
        down[a].append((b, (port + 1) / (ports + 1) - 0.5))
    for sweep in range(4):
        downward = sweep % 2 == 0
        for li in (range(1, len(layers)) if downward else range(len(layers) - 2, -1, -1)):
            ref = {k: i for i, k in enumerate(layers[li - 1 if downward else li + 1])}
            own = {k: i for i, k in enumerate(layers[li])}

            def key(k):
                ns = [ref[n] for n in up[k]] if downward else [ref[n] + dx for n, dx in down[k]]
                return (sum(ns) / len(ns) if ns else own[k] * len(ref) / len(own), own[k])

            layers[li].sort(key=key)
    return layers, up


def _separation(width, a, b):
    """Least distance between the centres of neighbours ``a`` and ``b`` (width 0: a waypoint)."""
    boxes = (width(a) > 0) + (width(b) > 0)
    return (width(a) + width(b)) / 2 + (_HGAP if boxes == 2 else _WAY_SEP if boxes else _LANE)


def _positions(layers, up, width):
    """x of each key: under the mean of its predecessors, boxes kept apart, each layer centred on its wishes;
    then each long edge straight down where its neighbours leave room."""
    x = {}
    for lay in layers:
        wishes = []
        for i, k in enumerate(lay):
            want = sum(x[p] for p in up[k]) / len(up[k]) if up[k] else None
            least = x[lay[i - 1]] + _separation(width, lay[i - 1], k) if i else None
            x[k] = max(v for v in (want, least, None if i or want is not None else 0.0) if v is not None)
            if want is not None:
                wishes.append(want - x[k])
        shift = sum(wishes) / len(wishes) if wishes else 0.0
        for k in lay:
            x[k] += shift
    where = {k: (li, i) for li, lay in enumerate(layers) for i, k in enumerate(lay)}
    chains = {}
    for k in where:
        if isinstance(k, tuple) and k[0] == "way":
            chains.setdefault(k[1], []).append(k)

    def fits(chain, v):
        for d in chain:
            lay, i = layers[where[d][0]], where[d][1]
            if (i > 0 and v - x[lay[i - 1]] < _separation(width, lay[i - 1], d) - 1e-6) or \
                    (i + 1 < len(lay) and x[lay[i + 1]] - v < _separation(width, d, lay[i + 1]) - 1e-6):
                return False
        return True

    for source, chain in chains.items():
        xs = sorted(x[d] for d in chain)
        for v in sorted(set(xs + [x[source]]), key=lambda v: (abs(v - x[source]), v)):
            if fits(chain, v):
                for d in chain:
                    x[d] = v
                break
    return x


def _columns(layers, x, width, hops, layer):
    """Layer runs, one per column, and each layer's x extent.  A long graph wraps so that the drawing is about
    _ASPECT wide; each cut goes near its even place, where few edges cross."""
    n = len(layers)
    ext = [(min(x[k] - width(k) / 2 for k in lay), max(x[k] + width(k) / 2 for k in lay)) for lay in layers]
    cross = [0] * (n + 1)
    for a, _, _, _ in hops:
        cross[layer[a] + 1] += 1

    def option(k):
        rows, cuts = n / k, [0]
        for j in range(1, k):
            lo, hi = max(cuts[-1] + 1, int(j * rows - 0.2 * rows)), min(n - 1, int(j * rows + 0.2 * rows))
            cuts.append(min(range(lo, max(lo, hi) + 1), key=lambda c: (30 * cross[c] + (c - j * rows) ** 2, c)))
        runs = [(a, b) for a, b in zip(cuts, cuts[1:] + [n]) if b > a]
        widths = [max(ext[li][1] for li in range(a, b)) - min(ext[li][0] for li in range(a, b)) for a, b in runs]
        total_w = sum(widths) + (len(runs) - 1) * _GUTTER
        tallest = max(b - a for a, b in runs)
        return abs(math.log(max(total_w, 1.0) / (tallest * (_BOX_H + _VGAP)) / _ASPECT)), k, runs, ext

    if n <= _MAX_ROWS_ONE_COLUMN:
        return option(1)[2:]
    return min(option(k) for k in range(1, min(n // 4, 60) + 1))[2:]


def _edge_paths(hops, boxes, pos, col_box, top):
    """The path of each hop: an S-curve between consecutive layers of a column, or down, along the gutter
    and over the next column's top when it crosses to the next column.  Returns (paths, lanes per cut)."""
    crossing = {}
    for h in hops:
        if pos[h[0]][2] != pos[h[1]][2]:
            crossing.setdefault(pos[h[0]][2], []).append(h)
    lane = {}
    for col, hs in crossing.items():
        hs.sort(key=lambda h: (pos[h[0]][0], pos[h[1]][0]))
        for i, h in enumerate(hs):
            j = len(hs) - 1 - i
            left, bottom, right = col_box[col]
            lane[h] = (bottom + 12 + _LANE * j, right + _GUTTER / 2 + _LANE * j, top - 12 - _LANE * i)
    paths = []
    for h in hops:
        a, b, port, ports = h
        (x0, y0, _), (x1, y1, _) = pos[a], pos[b]
        y0 += _BOX_H
        if b in boxes:
            x1 += boxes[b].w * ((port + 1) / (ports + 1) - 0.5)
        verts, codes = [(x0, y0)], [_MOVETO]
        if h in lane:
            y_low, gx, y_high = lane[h]
            verts += [(x0, y_low), (gx, y_low), (gx, y_high), (x1, y_high), (x1, y1)]
            codes += [_LINETO] * 5
        else:
            dy = (y1 - y0) / 2
            verts += [(x0, y0 + dy), (x1, y1 - dy), (x1, y1)]
            codes += [_CURVE4] * 3
        if b not in boxes:  # a waypoint: the edge goes on straight down through the layer
            verts.append((x1, y1 + _BOX_H))
            codes.append(_LINETO)
        paths.append((tuple(verts), tuple(codes), b in boxes))
    return paths, max([len(hs) for hs in crossing.values()] + [0])


def _legend(boxes, n_params, measure, text_w):
    """Legend entries (kind, family) of the families present, the pills and the parameter dots; columns."""
    present = {b.family for b in boxes.values() if b.kind == "op"}
    entries = [("family", f) for f in _FAMILY_STYLE if f in present] + [("input", "input"), ("output", "output")]
    entries += [("param", "")] if n_params else []
    widest = max(measure(_legend_text(e), _vis._SMALL) for e in entries) + 46
    return tuple(entries), max(1, min(len(entries), int(text_w // widest)))


def _legend_text(entry):
    kind, fam = entry
    return _FAMILY_STYLE[fam][0] if kind == "family" else "parameter array" if kind == "param" else kind


@_vis._drawing
def graph_layout(graph, *, title=None, params="auto"):
    """Lay out ``graph`` (a :class:`Graph`, or anything :func:`load_symbol_graph` reads) for drawing.

    Parameters
    ----------
    title : str, optional
        The heading (default: "Node graph of <file name>").
    params : "auto", None or path
        A ``.params`` file to count parameters from: "auto" looks for
        ``<prefix>-0000.params`` beside the symbol file, None reads none.

    Returns
    -------
    GraphLayout

    Raises
    ------
    InvalidInputError
        A graph too large to draw legibly (more than :data:`MAX_DRAWN_NODES` boxes).
    """
    if not isinstance(graph, Graph):
        graph = load_symbol_graph(graph)
    measure = _vis._measurer()
    pinfo = _read_params(graph, params)
    boxes, preds, (inputs, param_vars, outs, folded) = _drawn_nodes(
        graph, set(pinfo[0]) if pinfo and pinfo[0] else set(), measure)
    layer = _layers(boxes, preds)
    n_layers = max(layer.values()) + 1
    hops = _hops(boxes, preds, layer)
    layers, up = _order(list(boxes), layer, hops)

    def width(k):
        return boxes[k].w if k in boxes else 0.0

    x = _positions(layers, up, width)
    runs, ext = _columns(layers, x, width, hops, layer)
    n_ops = sum(1 for b in boxes.values() if b.kind == "op")
    head_title, head = _header(graph, title, pinfo, n_ops, n_layers, [graph.nodes[i].name for i in sorted(inputs)],
                               [o[0] for o in outs], len(param_vars), len(folded))
    col_w = [max(ext[li][1] for li in range(a, b)) - min(ext[li][0] for li in range(a, b)) for a, b in runs]
    if len(runs) > 1:
        head.append(f"Read the {len(runs)} columns left to right; a line leaving the bottom of a column "
                    "continues at the top of the next.")
    pos, col_box, max_lanes = {}, {}, 0
    for _ in range(2):   # the second pass knows how many lanes the gutters and the top need
        gutter = _GUTTER + _LANE * max(max_lanes - 1, 0)
        graph_w = sum(col_w) + (len(runs) - 1) * gutter
        width_px = int(math.ceil(max(graph_w, 640) + 2 * _vis._MARGIN))
        text_w = width_px - 2 * _vis._MARGIN
        lines = [w for line in head for w in _vis._wrap(line, text_w, _vis._SMALL)]
        legend, ncol = _legend(boxes, len(param_vars), measure, text_w)
        legend_y = 14 + _vis._LINE[_vis._TITLE] + 4 + len(lines) * _vis._LINE[_vis._SMALL] + 8
        top = legend_y + -(-len(legend) // ncol) * 21 + 18 + max_lanes * _LANE
        left = _vis._MARGIN + max(0.0, (text_w - graph_w) / 2)
        for ci, (a, b) in enumerate(runs):
            xmin = min(ext[li][0] for li in range(a, b))
            for li in range(a, b):
                for k in layers[li]:
                    pos[k] = (float(round(x[k] - xmin + left)), top + (li - a) * (_BOX_H + _VGAP), ci)
            col_box[ci] = (left, top + (b - a) * (_BOX_H + _VGAP) - _VGAP, left + col_w[ci])
            left += col_w[ci] + gutter
        paths, max_lanes = _edge_paths(hops, boxes, pos, col_box, top)
    for k, b in boxes.items():
        b.x, b.y, b.col, b.layer = pos[k][0], pos[k][1], pos[k][2], layer[k]
    bottom = max(c[1] for c in col_box.values()) + (12 + max_lanes * _LANE if max_lanes else 0)
    notes = ["Operators not known to capszoo (red, drawn as they are): " + ", ".join(map(_clean, graph.unknown_ops))] \
        if graph.unknown_ops else []
    notes = [w for line in notes for w in _vis._wrap(line, text_w, _vis._SMALL)][:6]
    height = int(math.ceil(bottom + 14 + len(notes) * _vis._LINE[_vis._SMALL] + _vis._MARGIN))
    return GraphLayout(size=(width_px, height), boxes=tuple(boxes.values()), edges=tuple(paths), num_ops=n_ops,
                       num_layers=n_layers, columns=len(runs), title=head_title, header=tuple(lines), legend=legend,
                       legend_y=legend_y, legend_columns=ncol, notes=tuple(notes))


# -- drawing -------------------------------------------------------------------------------------
def _fit(text, size, width, measure):
    """``text`` shortened with an ellipsis until it fits ``width`` px."""
    if measure(text, size) <= width:
        return text
    while text and measure(text + "\u2026", size) > width:
        text = text[:-1]
    return text + "\u2026"


def _draw_box(ax, b, measure):
    from matplotlib.patches import FancyBboxPatch

    x0, h = b.x - b.w / 2, _BOX_H
    if b.kind == "op":
        _, fill, edge = (_vis._hex(c) if not isinstance(c, str) else c for c in _FAMILY_STYLE[b.family])
        ax.add_patch(FancyBboxPatch((x0, b.y), b.w, h, boxstyle="round,pad=0,rounding_size=7", facecolor=fill,
                                    edgecolor=edge, lw=1.4, ls="--" if b.family == "unknown" else "-",
                                    gid=f"op-{b.key}"))
        dots = min(b.params, 6)
        label = _fit(b.label, _LABEL, b.w - 2 * _PAD - (8 * dots + 6 if dots else 0), measure)
        ax.text(x0 + _PAD, b.y + 7, label, fontsize=_LABEL, va="top", color=_vis._INK)
        ax.text(x0 + _PAD, b.y + 25, _fit(b.sub, _NAME, b.w - 2 * _PAD, measure), fontsize=_NAME, va="top",
                color=_vis._MUTED)
        if dots:
            ax.plot([x0 + b.w - _PAD - 3 - 8 * j for j in range(dots)], [b.y + 14] * dots, "o", ms=4.5, color=edge,
                    ls="none", gid=f"params-{b.key}")
        return
    fill = _vis._hex(_INPUT_FILL if b.kind == "input" else _OUTPUT_FILL)
    key = b.key if b.kind == "input" else b.key[1]
    ax.add_patch(FancyBboxPatch((x0, b.y), b.w, h, boxstyle=f"round,pad=0,rounding_size={h / 2}", facecolor=fill,
                                edgecolor="none", gid=f"{b.kind}-{key}"))
    ax.text(b.x, b.y + 7, _fit(b.label, _LABEL, b.w - 2 * _PAD, measure), fontsize=_LABEL, va="top", ha="center",
            color="white")
    ax.text(b.x, b.y + 25, _fit(b.sub, _NAME, b.w - 2 * _PAD, measure), fontsize=_NAME, va="top", ha="center",
            color="#e1ebe4" if b.kind == "input" else "#f5ded7")


def _legend_handles(layout):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for kind, fam in layout.legend:
        if kind == "family":
            _, fill, edge = _FAMILY_STYLE[fam]
            handles.append(Patch(facecolor=_vis._hex(fill), edgecolor=_vis._hex(edge),
                                 ls="--" if fam == "unknown" else "-", label=_legend_text((kind, fam))))
        elif kind == "param":
            handles.append(Line2D([], [], marker="o", ls="none", ms=4.5, color="#3c3c3c", label="parameter array"))
        else:
            handles.append(Patch(color=_vis._hex(_INPUT_FILL if kind == "input" else _OUTPUT_FILL), label=kind))
    return handles


@_vis._drawing
def graph_figure(graph, *, title=None, params="auto", layout=None):
    """The node graph of ``graph`` as a matplotlib Figure (see :func:`graph_layout`)."""
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path

    lay = layout or graph_layout(graph, title=title, params=params)
    measure = _vis._measurer()
    w, h = lay.size
    fig = _vis._figure(w, h)
    _vis._text(fig, _vis._MARGIN, 14, _fit(lay.title, _vis._TITLE, w - 2 * _vis._MARGIN, measure), _vis._TITLE)
    _vis._paragraph(fig, 14 + _vis._LINE[_vis._TITLE] + 4, lay.header)
    fig.legend(handles=_legend_handles(lay), loc="upper left", ncol=lay.legend_columns, frameon=False,
               bbox_to_anchor=(_vis._MARGIN / w, 1 - lay.legend_y / h), borderaxespad=0, borderpad=0,
               handlelength=1.8, columnspacing=1.5, fontsize=_vis._SMALL)
    ax = _vis._axes(fig, 0, 0, w, h)
    ax.set(xlim=(0, w), ylim=(h, 0))
    ax.set_axis_off()
    edge = _vis._hex(_EDGE)
    for verts, codes, arrow in lay.edges:
        ax.add_patch(FancyArrowPatch(path=Path(verts, codes), arrowstyle="-|>" if arrow else "-", mutation_scale=11,
                                     lw=1.2, color=edge, zorder=1))
    for b in lay.boxes:
        _draw_box(ax, b, measure)
    y = h - _vis._MARGIN - len(lay.notes) * _vis._LINE[_vis._SMALL]
    _vis._paragraph(fig, y, lay.notes, color="#962020")
    return fig


def check_graph_output(path):
    """Check an output path before any work: .svg or .png, in a folder that can be written, and matplotlib
    installed.  Returns "SVG" or "PNG".

    Raises InvalidInputError (another extension) or ExportError (the path cannot be written; no matplotlib).
    """
    p = os.fspath(path)
    ext = os.path.splitext(p)[1].lower()
    if ext not in (".svg", ".png"):
        what = f"unknown extension '{ext}'" if ext else "no file extension"
        raise InvalidInputError(f"cannot write {p!r}: {what}; a graph is drawn as .svg or .png")
    return _vis.check_output_path(p, svg=True)


def save_graph(graph, path, *, title=None, params="auto"):
    """Draw ``graph`` (a :class:`Graph` or a symbol file) into ``path`` (.svg or .png), atomically.

    Returns the :class:`GraphLayout` drawn (its ``size``, ``num_ops`` and ``columns``).
    Raises InvalidInputError (extension, graph too large), ExportError (path
    cannot be written, no matplotlib) or GraphFormatError (a bad symbol file).
    """
    fmt = check_graph_output(path)
    if not isinstance(graph, Graph):
        graph = load_symbol_graph(graph)
    lay = graph_layout(graph, title=title, params=params)
    if fmt == "PNG" and lay.size[0] * lay.size[1] > MAX_PNG_PIXELS:
        raise InvalidInputError(f"the drawing would be {lay.size[0]} x {lay.size[1]} pixels, too large for a PNG; "
                                "write .svg instead")
    _vis.save_image(graph_figure(graph, layout=lay), path)
    return lay
