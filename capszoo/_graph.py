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
:attr:`Graph.unknown_ops`.

Drawing (:func:`graph_layout`, :func:`graph_image`, :func:`graph_svg`,
:func:`save_graph`): a layered top-to-bottom layout (longest path from the
inputs; nodes ordered within a layer by the barycentre of their neighbours to
cut crossings; long edges routed through lanes, one lane per source).
Operators are rounded boxes coloured by family and labelled with the operator
and its main settings (``Convolution 9x9/2, 256``); parameter arrays (weights,
biases) are not boxes but small dots on the box that uses them.  The input
variables and the outputs (the graph's heads; an exporter's ``_copy`` node
naming an output becomes that output's marker) are dark pills.  A long graph is
wrapped into columns, read left to right, so that the text stays at its
natural size (14 px labels, 12 px names): the CapsNet's 69 layers fit in four
columns.  Output is SVG (one ``<g class="op">`` per operator box) or PNG,
by extension, written atomically.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
import struct
from typing import Dict, List, Mapping, Optional, Tuple
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw

from . import _visualize as _vis
from ._io import atomic_write_bytes
from ._visualize import _arrow_head, _fit, _hex, _line_h, _text, _text_w, _wrap
from .errors import ExportError, GraphFormatError, InvalidInputError

__all__ = [
    "Node",
    "Graph",
    "GraphLayout",
    "load_symbol_graph",
    "params_file_beside",
    "read_params_shapes",
    "op_family",
    "op_label",
    "graph_layout",
    "graph_image",
    "graph_svg",
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
#: Most routing points of long edges a drawing may hold.
MAX_LANE_POINTS = 60_000
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
_ND_MAGIC_V2, _ND_MAGIC_V3 = 0xF993FAC9, 0xF993FACA
_DTYPE_BYTES = {0: 4, 1: 8, 2: 2, 3: 1, 4: 4, 5: 1, 6: 8, 7: 1, 12: 2}


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


def read_params_shapes(path):
    """Names and shapes of the arrays in an MXNet ``.params`` file, read from its headers (no MXNet).

    Returns ``{name: shape}`` with the ``arg:``/``aux:`` prefixes removed.
    Raises GraphFormatError when the file is not a dense MXNet parameter file.
    """
    p = os.fspath(path)
    bad = f"{p} is not an MXNet .params file"

    def read(fh, n):
        b = fh.read(n)
        if len(b) != n:
            raise GraphFormatError(f"{bad} (it ends early)")
        return b

    try:
        size = os.path.getsize(p)
        with open(p, "rb") as fh:
            magic, _ = struct.unpack("<QQ", read(fh, 16))
            if magic != 0x112:
                raise GraphFormatError(f"{bad} (wrong magic number)")
            (count,) = struct.unpack("<Q", read(fh, 8))
            if count > 1_000_000:
                raise GraphFormatError(f"{bad} (it claims {count} arrays)")
            shapes = []
            for _ in range(count):
                (nd_magic,) = struct.unpack("<I", read(fh, 4))
                if nd_magic not in (_ND_MAGIC_V2, _ND_MAGIC_V3):
                    raise GraphFormatError(f"{bad} (an array of an unsupported version)")
                (stype,) = struct.unpack("<i", read(fh, 4))
                if stype != 0:
                    raise GraphFormatError(f"{p} holds sparse arrays, which this reader does not count")
                (ndim,) = struct.unpack("<i", read(fh, 4))
                if ndim < -1 or ndim > 32:
                    raise GraphFormatError(f"{bad} (an array with {ndim} dimensions)")
                shape = struct.unpack(f"<{max(ndim, 0)}q", read(fh, 8 * max(ndim, 0)))
                if any(d < 0 for d in shape):
                    raise GraphFormatError(f"{bad} (a negative dimension)")
                shapes.append(tuple(shape))
                if ndim == -1 or (ndim == 0 and nd_magic == _ND_MAGIC_V2):
                    continue  # an empty (none) array: no data follows
                _, _, dtype = struct.unpack("<iii", read(fh, 12))
                if dtype not in _DTYPE_BYTES:
                    raise GraphFormatError(f"{bad} (unknown dtype code {dtype})")
                nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
                if fh.tell() + nbytes > size:
                    raise GraphFormatError(f"{bad} (it ends early)")
                fh.seek(nbytes, os.SEEK_CUR)
            (n_names,) = struct.unpack("<Q", read(fh, 8))
            if n_names != count:
                raise GraphFormatError(f"{bad} ({count} arrays but {n_names} names)")
            names = []
            for _ in range(n_names):
                (ln,) = struct.unpack("<Q", read(fh, 8))
                if ln > 1 << 20:
                    raise GraphFormatError(f"{bad} (a name of {ln} bytes)")
                names.append(read(fh, ln).decode("utf-8", "replace"))
    except OSError as exc:
        raise GraphFormatError(f"cannot read {p}: {_vis._os_reason(exc)}") from None
    out = {}
    for name, shape in zip(names, shapes):
        kind, sep, rest = name.partition(":")
        out[rest if sep and kind in ("arg", "aux") else name] = shape
    return out


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
_LABEL, _NAME, _TITLE, _SUB = 14, 12, 20, 13
_PAD_X, _PAD_Y = 10, 7
_MIN_BOX, _MAX_BOX = 120, 300
_VGAP = 38            # vertical space between rows (edges and arrow heads)
_HGAP = 26            # horizontal space between boxes
_LANE_SEP = 14        # space between a lane and its neighbours
_GUTTER = 50          # space between columns (plus routing lanes)
_LANE = 9             # distance between parallel routing lanes
_MARGIN = 20
_ASPECT = 1.25        # wanted width / height of the drawing when a long graph is wrapped into columns
_MAX_ROWS_ONE_COLUMN = 14
_COPY_OPS = ("_copy", "identity", "_identity")
_PARAM_SUFFIXES = ("_weight", "_bias", "_gamma", "_beta", "_moving_mean", "_moving_var", "_running_mean",
                   "_running_var", "_alpha", "_parameters", "_i2h_weight", "_h2h_weight")


def _clean(s):
    """``s`` without characters XML or the font cannot take (controls, lone surrogates)."""
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]", "?", str(s))


@dataclasses.dataclass
class _Box:
    key: object
    kind: str                 # "op", "input", "output", "lane"
    label: str = ""
    sub: str = ""
    family: str = ""
    params: int = 0
    tooltip: str = ""
    w: float = 0.0
    layer: int = 0
    x: float = 0.0            # centre
    col: int = 0
    y: float = 0.0            # top


@dataclasses.dataclass(frozen=True)
class GraphLayout:
    """Geometry of a graph drawing: the picture size and its drawing primitives.

    ``items`` are tuples: ``("group", cls, attrs)`` ... ``("end",)`` around
    one node's primitives; ``("rect", box, radius, fill, outline, width,
    dashed)``; ``("line", points, colour, width)`` (a polyline);
    ``("curve", p0, p1, p2, p3, colour, width)`` (a cubic Bezier);
    ``("arrow", points, colour)`` (a filled triangle); ``("dot", cx, cy, r,
    colour, cls)``; ``("text", x, y_top, text, size, colour, align)``.
    """

    size: Tuple[int, int]
    items: tuple
    num_ops: int
    num_layers: int
    columns: int
    title: str
    boxes: tuple


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


def _pav(desired, weights, seps):
    """Positions closest (weighted least squares) to ``desired`` with ``x[i+1] - x[i] >= seps[i]``."""
    n = len(desired)
    if n == 0:
        return []
    off = [0.0] * n
    for i in range(1, n):
        off[i] = off[i - 1] + seps[i - 1]
    blocks = []  # [value, weight, count]
    for i in range(n):
        blocks.append([desired[i] - off[i], weights[i], 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            w = w1 + w2
            blocks.append([(v1 * w1 + v2 * w2) / w, w, c1 + c2])
    out = []
    for v, _, c in blocks:
        out.extend([v] * c)
    return [out[i] + off[i] for i in range(n)]


def _inversions(seq):
    """Number of pairs i < j with seq[i] > seq[j] (merge sort)."""
    if len(seq) < 2:
        return 0, list(seq)
    mid = len(seq) // 2
    a, left = _inversions(seq[:mid])
    b, right = _inversions(seq[mid:])
    merged, inv, i, j = [], a + b, 0, 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            inv += len(left) - i
            j += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return inv, merged


def _box_h():
    return _PAD_Y + _line_h(_LABEL) + 2 + _line_h(_NAME) + _PAD_Y


def _partition(num_layers, cross, k):
    """Split layers 0..num_layers-1 into ``k`` runs: balanced lengths, cuts where few edges cross."""
    if k <= 1:
        return [(0, num_layers)]
    ideal = num_layers / k
    if num_layers > 200:  # greedy: each cut where fewest edges cross, near its ideal place
        cuts, prev = [0], 0
        for j in range(1, k):
            target = j * ideal
            lo = max(prev + 1, int(target - 0.2 * ideal))
            hi = max(lo, min(num_layers - (k - j), int(target + 0.2 * ideal)))
            prev = min(range(lo, hi + 1), key=lambda c: (30.0 * cross[c] + (c - target) ** 2, c))
            cuts.append(prev)
        cuts.append(num_layers)
        return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    inf = float("inf")
    # best[j][b]: cost of splitting layers 0..b-1 into j runs
    best = [[inf] * (num_layers + 1) for _ in range(k + 1)]
    back = [[0] * (num_layers + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    lo, hi = max(1, int(ideal * 0.7)), max(1, int(math.ceil(ideal * 1.35)))
    for j in range(1, k + 1):
        for b in range(1, num_layers + 1):
            for length in range(lo, hi + 1):
                a = b - length
                if a < 0 or best[j - 1][a] == inf:
                    continue
                c = best[j - 1][a] + (length - ideal) ** 2 + (30.0 * cross[a] if a > 0 else 0.0)
                if c < best[j][b]:
                    best[j][b], back[j][b] = c, a
    if best[k][num_layers] == inf:  # pragma: no cover - lengths always fit
        step = int(math.ceil(num_layers / k))
        return [(a, min(a + step, num_layers)) for a in range(0, num_layers, step)]
    runs, b = [], num_layers
    for j in range(k, 0, -1):
        a = back[j][b]
        runs.append((a, b))
        b = a
    return runs[::-1]


def _names(names, most=8):
    names = [_clean(n) or "(unnamed)" for n in names]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


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


def _head_info(graph, inputs):
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

    # parameters: from the .params file when there is one, else by name
    pinfo = None
    ppath = params_file_beside(graph.source) if params == "auto" and graph.source else \
        (os.fspath(params) if params not in (None, "auto") else None)
    if ppath:
        try:
            pinfo = (read_params_shapes(ppath), ppath, None)
        except GraphFormatError as exc:
            pinfo = (None, ppath, str(exc).split(" (")[-1].rstrip(")") if " (" in str(exc) else str(exc))
    param_names = set(pinfo[0]) if pinfo and pinfo[0] else set()
    inputs, param_vars = _variable_kinds(graph, param_names)

    outs = _head_info(graph, inputs)
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

    # drawn nodes and their (visible) inputs
    boxes: Dict[object, _Box] = {}
    preds: Dict[object, List[object]] = {}
    for n in graph.nodes:
        if n.index in inputs:
            shape = n.attrs.get("__shape__")
            boxes[n.index] = _Box(n.index, "input", label=_clean(n.name) or "(unnamed)",
                                  sub="input" + (f" {_kernel(shape)}" if shape else ""), family="input",
                                  tooltip=f"input variable {_clean(n.name)}")
            preds[n.index] = []
        elif not n.is_variable and n.index not in folded:
            vis_in = [s for s, _ in n.inputs if s not in param_vars]
            n_par = sum(1 for s, _ in n.inputs if s in param_vars)
            name = n.name[len(prefix):] if prefix and n.name.startswith(prefix) and len(n.name) > len(prefix) \
                else n.name
            attrs = ", ".join(f"{k}={v}" for k, v in n.attrs.items() if not k.startswith("__"))
            pnames = [graph.nodes[s].name for s, _ in n.inputs if s in param_vars]
            tip = f"{n.op} {n.name}" + (f" ({attrs})" if attrs else "") + \
                  (f"; parameters: {', '.join(pnames)}" if pnames else "")
            boxes[n.index] = _Box(n.index, "op", label=_clean(op_label(n)), sub=_clean(name) or "(unnamed)",
                                  family=op_family(n.op), params=n_par, tooltip=_clean(tip[:2000]))
            preds[n.index] = vis_in
    for j, (name, src, _) in enumerate(outs):
        key = ("out", j)
        boxes[key] = _Box(key, "output", label=_clean(name) or "(unnamed)",
                          sub=f"output {j + 1} of {len(outs)}" if len(outs) > 1 else "output", family="output",
                          tooltip=f"output {_clean(name)}")
        preds[key] = [src]
    order = list(boxes)  # file order, outputs last

    # widths
    for b in boxes.values():
        tw = max(_text_w(b.label, _LABEL), _text_w(b.sub, _NAME))
        extra = 8 * min(b.params, 6) + 6 if b.params else 0
        b.w = float(2 * math.ceil(min(_MAX_BOX, max(_MIN_BOX, tw + 2 * _PAD_X + extra)) / 2))

    # layers: longest path from the inputs; operators without inputs sit just above their first consumer
    succs: Dict[object, List[object]] = {k: [] for k in boxes}
    for k, ps in preds.items():
        for p in ps:
            succs[p].append(k)
    layer = {}
    for k in order:
        layer[k] = max((layer[p] + 1 for p in preds[k]), default=0)
    for k in reversed(order):
        b = boxes[k]
        if b.kind == "op" and not preds[k] and succs[k]:
            layer[k] = max(layer[k], min(layer[s] for s in succs[k]) - 1)
    n_layers = max(layer.values()) + 1

    # long edges go through lane points, one lane per source shared by all its long edges
    lane_keys = set()
    segs = []  # (a, b, port, ports)
    for k in order:
        ps = preds[k]
        for port, p in enumerate(ps):
            a = p
            for lay in range(layer[p] + 1, layer[k]):
                d = ("lane", p, lay)
                if d not in lane_keys:  # the lane exists already when an earlier edge of p passed here
                    lane_keys.add(d)
                    segs.append((a, d, 0, 1))
                a = d
            segs.append((a, k, port, len(ps)))
            if len(lane_keys) > MAX_LANE_POINTS:
                raise InvalidInputError("the graph has too many long edges to draw legibly")
    for d in lane_keys:
        boxes[d] = _Box(d, "lane", w=0.0)
        layer[d] = d[2]

    layers = [[] for _ in range(n_layers)]
    rank = {k: i for i, k in enumerate(order)}
    for k in sorted(boxes, key=lambda k: (rank[k[1]] + 0.5 if isinstance(k, tuple) and k[0] == "lane"
                                          else rank[k])):
        layers[layer[k]].append(k)
    up: Dict[object, List[object]] = {k: [] for k in boxes}
    down: Dict[object, List[object]] = {k: [] for k in boxes}
    for a, b, _, _ in segs:
        up[b].append(a)
        down[a].append(b)

    seg_port = {(a, b): (port, ports) for a, b, port, ports in segs}

    # order within layers: barycentre sweeps, keep the order with the fewest crossings
    def crossings(lays):
        pos = {k: i for lay in lays for i, k in enumerate(lay)}
        total = 0
        by_layer = {}
        for a, b, port, ports in segs:
            by_layer.setdefault(layer[a], []).append((pos[a], pos[b] + port / (ports + 1)))
        for pairs in by_layer.values():
            pairs.sort()
            total += _inversions([q for _, q in pairs])[0]
        return total

    best = [list(lay) for lay in layers]
    best_c = crossings(best)
    cur = [list(lay) for lay in layers]
    for it in range(8):
        rng = range(1, n_layers) if it % 2 == 0 else range(n_layers - 2, -1, -1)
        for li in rng:
            ref = cur[li - 1] if it % 2 == 0 else cur[li + 1]
            pos = {k: i for i, k in enumerate(ref)}
            own = {k: i for i, k in enumerate(cur[li])}
            nb = up if it % 2 == 0 else down

            def key(k):
                if it % 2 == 0:
                    ns = [pos[n] for n in nb[k] if n in pos]
                else:
                    ns = [pos[n] + (seg_port[(k, n)][0] + 1) / (seg_port[(k, n)][1] + 1) for n in nb[k] if n in pos]
                return (sum(ns) / len(ns) if ns else own[k] * len(ref) / max(1, len(cur[li])), own[k])

            cur[li].sort(key=key)
        c = crossings(cur)
        if c < best_c:
            best, best_c = [list(lay) for lay in cur], c
    layers = best

    # then swap neighbours while that removes crossings (ports count: the left input should come from the left)
    pos = {k: i for lay in layers for i, k in enumerate(lay)}

    def pair_crossings(u, v):
        """Crossings between the edges of u and of v when u is left of v."""
        c = 0
        for pu in up[u]:
            c += sum(1 for pv in up[v] if pos[pu] > pos[pv])
        for su in down[u]:
            eu = pos[su] + (seg_port[(u, su)][0] + 1) / (seg_port[(u, su)][1] + 1)
            for sv in down[v]:
                c += eu > pos[sv] + (seg_port[(v, sv)][0] + 1) / (seg_port[(v, sv)][1] + 1)
        return c

    for _ in range(8):
        changed = False
        for lay in layers:
            for i in range(len(lay) - 1):
                u, v = lay[i], lay[i + 1]
                if pair_crossings(u, v) > pair_crossings(v, u):
                    lay[i], lay[i + 1] = v, u
                    pos[u], pos[v] = i + 1, i
                    changed = True
        if not changed:
            break

    # x: start packed, then pull each node towards its neighbours (weighted; lanes stay straight)
    def sep(a, b):
        ba, bb = boxes[a], boxes[b]
        gap = _HGAP if ba.kind != "lane" and bb.kind != "lane" else _LANE_SEP
        if ba.kind == "lane" and bb.kind == "lane":
            gap = _LANE
        return (ba.w + bb.w) / 2 + gap

    x = {}
    for lay in layers:
        cx = 0.0
        for i, k in enumerate(lay):
            if i:
                cx += sep(lay[i - 1], k)
            x[k] = cx

    def weight(a, b):
        la, lb = boxes[a].kind == "lane", boxes[b].kind == "lane"
        return 8.0 if la and lb else 2.0 if la or lb else 1.0

    def port_x(b, port, ports):
        return x[b] - boxes[b].w / 2 + boxes[b].w * (port + 1) / (ports + 1) if boxes[b].kind != "lane" else x[b]

    for it in range(24 if len(boxes) < 1000 else 8):
        forward = it % 2 == 0
        rng = range(n_layers) if forward else range(n_layers - 1, -1, -1)
        for li in rng:
            lay = layers[li]
            desired, ws = [], []
            for k in lay:
                tot, wsum = 0.0, 0.0
                for p in up[k]:
                    port, ports = seg_port[(p, k)]
                    w = weight(p, k) * (1.5 if forward else 1.0)
                    tot += w * (x[p] - (port_x(k, port, ports) - x[k]))
                    wsum += w
                for s in down[k]:
                    port, ports = seg_port[(k, s)]
                    w = weight(k, s) * (1.0 if forward else 1.5)
                    tot += w * port_x(s, port, ports)
                    wsum += w
                desired.append(tot / wsum if wsum else x[k])
                ws.append(wsum if wsum else 0.1)
            seps = [sep(lay[i], lay[i + 1]) for i in range(len(lay) - 1)]
            for k, v in zip(lay, _pav(desired, ws, seps)):
                x[k] = v

    # straighten each lane (a long edge) where its neighbours leave room: one x for the whole lane
    pos = {k: i for lay in layers for i, k in enumerate(lay)}
    chains: Dict[object, List[object]] = {}
    for d in sorted(lane_keys, key=lambda d: d[2]):
        chains.setdefault(d[1], []).append(d)
    for chain in chains.values():
        if len(chain) < 2:
            continue

        def fits(v):
            for d in chain:
                lay, i = layers[layer[d]], pos[d]
                if i > 0 and v - x[lay[i - 1]] < sep(lay[i - 1], d) - 1e-6:
                    return False
                if i + 1 < len(lay) and x[lay[i + 1]] - v < sep(d, lay[i + 1]) - 1e-6:
                    return False
            return True

        xs = sorted(x[d] for d in chain)
        for v in sorted(set(xs), key=lambda v: abs(v - xs[len(xs) // 2])):
            if fits(v):
                for d in chain:
                    x[d] = v
                break

    # columns
    cross = [0] * (n_layers + 1)
    for a, b, _, _ in segs:
        cross[layer[b]] += 1 if layer[b] == layer[a] + 1 else 0
    cross_by_cut = {}
    box_h = _box_h()
    pitch = box_h + _VGAP

    def extent(li):
        lay = layers[li]
        return (min(x[k] - boxes[k].w / 2 for k in lay), max(x[k] + boxes[k].w / 2 for k in lay)) if lay \
            else (0.0, 0.0)

    ext = [extent(li) for li in range(n_layers)]

    def columns_for(k):
        runs = _partition(n_layers, cross, k)
        widths = [max(ext[li][1] for li in range(a, b)) - min(ext[li][0] for li in range(a, b)) for a, b in runs]
        lanes = max([cross[a] for a, _ in runs[1:]] + [0])
        w = sum(widths) + (len(runs) - 1) * (_GUTTER + _LANE * lanes)
        h = max(b - a for a, b in runs) * pitch + 2 * lanes * _LANE
        return runs, w, h

    if n_layers <= _MAX_ROWS_ONE_COLUMN:
        runs = [(0, n_layers)]
    else:
        options = []
        for k in range(1, min(n_layers // 4, 60) + 1):
            runs_k, w, h = columns_for(k)
            options.append((abs(math.log(max(w, 1.0) / max(h, 1.0) / _ASPECT)), k, runs_k))
        runs = min(options)[2]
    for ci, (a, b) in enumerate(runs):
        for li in range(a, b):
            for k in layers[li]:
                boxes[k].col = ci
    for ci, (a, _) in enumerate(runs[1:], 1):
        cross_by_cut[ci] = [s for s in segs if layer[s[1]] == a and layer[s[0]] == a - 1]
    max_lanes = max([len(v) for v in cross_by_cut.values()] + [0])

    # header
    n_ops = sum(1 for b in boxes.values() if b.kind == "op")
    col_w = [max(ext[li][1] for li in range(a, b)) - min(ext[li][0] for li in range(a, b)) for a, b in runs]
    gutter = _GUTTER + _LANE * max(max_lanes - 1, 0)
    graph_w = sum(col_w) + (len(runs) - 1) * gutter
    head_title, head_lines = _header(graph, title, pinfo, n_ops, n_layers,
                                     [graph.nodes[i].name for i in sorted(inputs)], [o[0] for o in outs],
                                     len(param_vars), len(folded))
    width = int(math.ceil(max(graph_w, 640) + 2 * _MARGIN))
    text_w = width - 2 * _MARGIN
    items = []
    y = 14
    items.append(("text", _MARGIN, y, _fit(head_title, _TITLE, text_w), _TITLE, _vis._INK, "left"))
    y += _line_h(_TITLE) + 6
    for line in head_lines:
        for wl in _wrap(line, _SUB, text_w):
            items.append(("text", _MARGIN, y, wl, _SUB, _vis._MUTED, "left"))
            y += _line_h(_SUB) + 2
    y += 8
    # legend: families present, then the input/output/parameter markers
    present = [f for f in _FAMILY_STYLE if any(b.kind == "op" and b.family == f for b in boxes.values())]
    legend = [("swatch", f, _FAMILY_STYLE[f][0]) for f in present]
    legend += [("pill", "input", "input"), ("pill", "output", "output")]
    if param_vars:
        legend.append(("dot", "", "parameter array"))
    lx, lh = _MARGIN, max(_line_h(_SUB), 14)
    for kind, fam, text in legend:
        w = 24 + 6 + _text_w(text, _SUB) + 18
        if lx + w > width - _MARGIN and lx > _MARGIN:
            lx, y = _MARGIN, y + lh + 6
        if kind == "swatch":
            _, fill, edge = _FAMILY_STYLE[fam]
            items.append(("rect", (lx, y + 1, lx + 24, y + lh - 1), 4, fill, edge, 1.5, fam == "unknown"))
        elif kind == "pill":
            items.append(("rect", (lx, y + 1, lx + 24, y + lh - 1), (lh - 2) / 2,
                          _INPUT_FILL if fam == "input" else _OUTPUT_FILL, None, 0, False))
        else:
            items.append(("dot", lx + 12, y + lh / 2, 3.2, (60, 60, 60), "legend"))
        items.append(("text", lx + 30, y + (lh - _line_h(_SUB)) / 2, text, _SUB, _vis._INK, "left"))
        lx += w
    y += lh + 10
    if len(runs) > 1:
        note = f"Read the {len(runs)} columns left to right; a line leaving the bottom of a column continues " \
               "at the top of the next."
        for wl in _wrap(note, _SUB, text_w):
            items.append(("text", _MARGIN, y, wl, _SUB, _vis._MUTED, "left"))
            y += _line_h(_SUB) + 2
        y += 4
    top = y + 12 + max_lanes * _LANE

    # place columns
    left = _MARGIN + max(0.0, (text_w - graph_w) / 2) if graph_w < text_w else _MARGIN
    col_left = []
    for ci, (a, b) in enumerate(runs):
        xmin = min(ext[li][0] for li in range(a, b))
        col_left.append(left)
        for li in range(a, b):
            for k in layers[li]:
                boxes[k].x = float(round(x[k] - xmin + left))
                boxes[k].y = top + (li - a) * pitch
                boxes[k].layer = li
        left += col_w[ci] + gutter
    rows = max(b - a for a, b in runs)
    graph_bottom = top + rows * pitch - _VGAP
    bottom = graph_bottom + (12 + max_lanes * _LANE if max_lanes else 0)

    # edges
    ecol = _EDGE
    ew = 1.4

    def start_pt(a):
        b = boxes[a]
        return (b.x, b.y + box_h)

    def end_pt(bk, port, ports):
        b = boxes[bk]
        if b.kind == "lane":
            return (b.x, b.y)
        return (b.x - b.w / 2 + b.w * (port + 1) / (ports + 1), b.y)

    def arrow(p_end, p_from):
        return ("arrow", _arrow_head(p_from[0], p_from[1], p_end[0], p_end[1], 7), ecol)

    edge_items = []
    for d in lane_keys:
        b = boxes[d]
        edge_items.append(("line", [(b.x, b.y), (b.x, b.y + box_h)], ecol, ew))
    cut_lanes = {}
    for ci, segl in cross_by_cut.items():
        ordered = sorted(segl, key=lambda s: (boxes[s[0]].x, end_pt(s[1], s[2], s[3])[0]))
        for i, s in enumerate(ordered):
            cut_lanes[(s[0], s[1], s[2])] = (ci, i, len(ordered))
    for a, b, port, ports in segs:
        p0 = start_pt(a)
        p3 = end_pt(b, port, ports)
        real_end = boxes[b].kind != "lane"
        lane = cut_lanes.get((a, b, port))
        if lane is None:
            dy = (p3[1] - p0[1]) / 2
            tip = (p3[0], p3[1] - 1) if real_end else p3
            if abs(tip[0] - p0[0]) < 1.5:  # straight down
                edge_items.append(("line", [(tip[0], p0[1]), tip], ecol, ew))
            else:
                edge_items.append(("curve", p0, (p0[0], p0[1] + dy), (tip[0], tip[1] - dy), tip, ecol, ew))
            if real_end:
                edge_items.append(arrow((p3[0], p3[1]), (p3[0], p3[1] - 10)))
            continue
        ci, i, kk = lane
        col_a = boxes[a].col
        a0, b0 = runs[col_a]
        y_low = top + (b0 - a0 - 1) * pitch + box_h + 12 + _LANE * (kk - 1 - i)
        gx = col_left[col_a] + col_w[col_a] + _GUTTER / 2 + _LANE * (kk - 1 - i)
        y_high = top - 12 - _LANE * i
        pts = [p0, (p0[0], y_low), (gx, y_low), (gx, y_high), (p3[0], y_high), p3]
        edge_items.append(("line", pts, ecol, ew))
        if real_end:
            edge_items.append(arrow(p3, (p3[0], p3[1] - 10)))
    items.extend(edge_items)

    # boxes
    for k in order:
        b = boxes[k]
        x0, y0 = b.x - b.w / 2, b.y
        box = (x0, y0, x0 + b.w, y0 + box_h)
        if b.kind == "op":
            _, fill, edge = _FAMILY_STYLE[b.family]
            items.append(("group", "op", {"data-op": graph.nodes[k].op, "data-name": _clean(graph.nodes[k].name),
                                          "title": b.tooltip}))
            items.append(("rect", box, 7, fill, edge, 1.6, b.family == "unknown"))
            tc, sc = _vis._INK, _vis._MUTED
            inner = b.w - 2 * _PAD_X - (8 * min(b.params, 6) + 6 if b.params else 0)
            label = _fit(b.label, _LABEL, inner)
            sub = _fit(b.sub, _NAME, b.w - 2 * _PAD_X)
            for j in range(min(b.params, 6)):
                items.append(("dot", x0 + b.w - _PAD_X - 3 - 8 * j, y0 + _PAD_Y + _line_h(_LABEL) / 2, 3.2, edge,
                              "param"))
        else:
            fill = _INPUT_FILL if b.kind == "input" else _OUTPUT_FILL
            items.append(("group", b.kind, {"data-name": b.label, "title": b.tooltip}))
            items.append(("rect", box, box_h / 2, fill, None, 0, False))
            tc, sc = (255, 255, 255), (225, 235, 228) if b.kind == "input" else (245, 222, 215)
            label = _fit(b.label, _LABEL, b.w - 2 * _PAD_X)
            sub = _fit(b.sub, _NAME, b.w - 2 * _PAD_X)
        ty = y0 + _PAD_Y
        if b.kind == "op":
            items.append(("text", x0 + _PAD_X, ty, label, _LABEL, tc, "left"))
            items.append(("text", x0 + _PAD_X, ty + _line_h(_LABEL) + 2, sub, _NAME, sc, "left"))
        else:
            items.append(("text", b.x, ty, label, _LABEL, tc, "center"))
            items.append(("text", b.x, ty + _line_h(_LABEL) + 2, sub, _NAME, sc, "center"))
        items.append(("end",))

    # notes under the graph
    y = bottom + 14
    unknown = graph.unknown_ops
    notes = []
    if unknown:
        notes.append("Operators not known to capszoo (red, drawn as they are): "
                     + ", ".join(_clean(u) for u in unknown))
    for note in notes:
        for wl in _wrap(note, _SUB, text_w)[:6]:
            items.append(("text", _MARGIN, y, wl, _SUB, (150, 30, 30), "left"))
            y += _line_h(_SUB) + 2
    height = int(math.ceil(y + _MARGIN - (0 if notes else 14)))
    drawn = tuple(b for b in boxes.values() if b.kind != "lane")
    return GraphLayout(size=(width, height), items=tuple(items), num_ops=n_ops, num_layers=n_layers,
                       columns=len(runs), title=head_title, boxes=drawn)


# -- rendering -----------------------------------------------------------------------------------
def _bezier(p0, p1, p2, p3, n=18):
    pts = []
    for i in range(n + 1):
        t = i / n
        u = 1 - t
        pts.append((u ** 3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t ** 3 * p3[0],
                    u ** 3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t ** 3 * p3[1]))
    return pts


def _dashed_rect(draw, box, colour, width, dash=6):
    x0, y0, x1, y1 = box
    for (ax, ay, bx, by) in ((x0, y0, x1, y0), (x1, y0, x1, y1), (x1, y1, x0, y1), (x0, y1, x0, y0)):
        length = math.hypot(bx - ax, by - ay)
        steps = max(1, int(length // (2 * dash)))
        for i in range(steps + 1):
            t0, t1 = (2 * i * dash) / length, min(1.0, (2 * i + 1) * dash / length)
            if t0 >= 1:
                break
            draw.line((ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1),
                      fill=colour, width=width)


def graph_image(graph, *, title=None, params="auto", layout=None):
    """The node graph of ``graph`` as a PIL image (RGB); see :func:`graph_layout`."""
    lay = layout or graph_layout(graph, title=title, params=params)
    w, h = lay.size
    if w * h > MAX_PNG_PIXELS:
        raise InvalidInputError(f"the drawing would be {w} x {h} pixels, too large for a PNG; write .svg instead")
    s = 2 if w * h <= 16_000_000 else 1  # draw at twice the size and shrink: smooth lines and curves
    canvas = Image.new("RGB", (w * s, h * s), _vis._WHITE)
    draw = ImageDraw.Draw(canvas)

    def S(p):
        return (p[0] * s, p[1] * s)

    for it in lay.items:
        kind = it[0]
        if kind == "rect":
            _, box, radius, fill, outline, width, dashed = it
            bx = [round(v * s) for v in box]
            if dashed:
                draw.rounded_rectangle(bx, radius=radius * s, fill=fill)
                _dashed_rect(draw, bx, outline, max(1, round(width * s)), 5 * s)
            else:
                draw.rounded_rectangle(bx, radius=radius * s, fill=fill, outline=outline,
                                       width=max(1, round(width * s)) if outline else 0)
        elif kind == "line":
            draw.line([S(p) for p in it[1]], fill=it[2], width=max(1, round(it[3] * s)), joint="curve")
        elif kind == "curve":
            draw.line([S(p) for p in _bezier(*it[1:5])], fill=it[5], width=max(1, round(it[6] * s)), joint="curve")
        elif kind == "arrow":
            draw.polygon([S(p) for p in it[1]], fill=it[2])
        elif kind == "dot":
            _, cx, cy, r, colour, _ = it
            draw.ellipse((s * (cx - r), s * (cy - r), s * (cx + r), s * (cy + r)), fill=colour)
        elif kind == "text":
            _, tx, ty, text, size, colour, align = it
            _text(draw, tx * s, ty * s, text, size * s, colour, align)
    if s != 1:
        canvas = canvas.resize((w, h), Image.LANCZOS)
    return canvas


def _attr(v):
    return escape(_clean(v), {'"': "&quot;"})


def graph_svg(graph, *, title=None, params="auto", layout=None):
    """The node graph of ``graph`` as an SVG document (a string); one ``<g class="op">`` per operator box."""
    lay = layout or graph_layout(graph, title=title, params=params)
    w, h = lay.size
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'font-family="Aileron, Helvetica, Arial, sans-serif">',
           f"<title>{escape(_clean(lay.title))}</title>",
           f'<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>']

    def f(v):
        return f"{v:.1f}".rstrip("0").rstrip(".")

    for it in lay.items:
        kind = it[0]
        if kind == "group":
            _, cls, attrs = it
            extra = "".join(f' {k}="{_attr(v)}"' for k, v in attrs.items() if k != "title")
            out.append(f'<g class="{cls}"{extra}>')
            if attrs.get("title"):
                out.append(f"<title>{escape(_clean(attrs['title']))}</title>")
        elif kind == "end":
            out.append("</g>")
        elif kind == "rect":
            _, (x0, y0, x1, y1), radius, fill, outline, width, dashed = it
            stroke = f' stroke="{_hex(outline)}" stroke-width="{f(width)}"' if outline else ""
            if dashed:
                stroke += ' stroke-dasharray="5 4"'
            out.append(f'<rect x="{f(x0)}" y="{f(y0)}" width="{f(x1 - x0)}" height="{f(y1 - y0)}" '
                       f'rx="{f(radius)}" fill="{_hex(fill)}"{stroke}/>')
        elif kind == "line":
            pts = " ".join(f"{f(px)},{f(py)}" for px, py in it[1])
            out.append(f'<polyline points="{pts}" fill="none" stroke="{_hex(it[2])}" stroke-width="{f(it[3])}" '
                       f'stroke-linejoin="round"/>')
        elif kind == "curve":
            p0, p1, p2, p3, colour, width = it[1:]
            out.append(f'<path d="M{f(p0[0])},{f(p0[1])} C{f(p1[0])},{f(p1[1])} {f(p2[0])},{f(p2[1])} '
                       f'{f(p3[0])},{f(p3[1])}" fill="none" stroke="{_hex(colour)}" stroke-width="{f(width)}"/>')
        elif kind == "arrow":
            pts = " ".join(f"{f(px)},{f(py)}" for px, py in it[1])
            out.append(f'<polygon points="{pts}" fill="{_hex(it[2])}"/>')
        elif kind == "dot":
            _, cx, cy, r, colour, cls = it
            out.append(f'<circle class="{cls}" cx="{f(cx)}" cy="{f(cy)}" r="{f(r)}" fill="{_hex(colour)}"/>')
        elif kind == "text":
            _, tx, ty, text, size, colour, align = it
            anchor = {"left": "start", "center": "middle", "right": "end"}[align]
            out.append(f'<text x="{f(tx)}" y="{f(ty + _vis._ascent(size))}" font-size="{size}" '
                       f'fill="{_hex(colour)}" text-anchor="{anchor}" textLength="{_text_w(text, size)}" '
                       f'lengthAdjust="spacingAndGlyphs">{escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def check_graph_output(path):
    """Check an output path before any work: .svg or .png, in a folder that can be written.  Returns "SVG"/"PNG".

    Raises InvalidInputError (another extension) or ExportError (the path cannot be written).
    """
    p = os.fspath(path)
    ext = os.path.splitext(p)[1].lower()
    if ext not in (".svg", ".png"):
        what = f"unknown extension '{ext}'" if ext else "no file extension"
        raise InvalidInputError(f"cannot write {p!r}: {what}; a graph is drawn as .svg or .png")
    return _vis.check_output_path(p, svg=True)


def save_graph(graph, path, *, title=None, params="auto"):
    """Draw ``graph`` (a :class:`Graph` or a symbol file) into ``path`` (.svg or .png), atomically.

    Returns the :class:`GraphLayout` drawn (its ``size`` and ``num_ops``).
    Raises InvalidInputError (extension, graph too large), ExportError (path
    cannot be written) or GraphFormatError (a bad symbol file).
    """
    fmt = check_graph_output(path)
    if not isinstance(graph, Graph):
        graph = load_symbol_graph(graph)
    lay = graph_layout(graph, title=title, params=params)
    if fmt == "PNG":
        _vis.save_image(graph_image(graph, layout=lay), path)
        return lay
    data = graph_svg(graph, layout=lay).encode("utf-8")
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ExportError(f"cannot write {os.fspath(path)!r}: {_vis._os_reason(exc)}") from None
    return lay
