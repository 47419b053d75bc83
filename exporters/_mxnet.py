"""Export a Gluon HybridBlock to MXNet's deployment format and check the files.

The format is the one of :meth:`mxnet.gluon.HybridBlock.export`: a symbol
``<prefix>-symbol.json`` and a parameter file ``<prefix>-0000.params`` with
``arg:<name>`` keys, loadable with :meth:`mxnet.gluon.SymbolBlock.imports`,
the legacy :class:`mxnet.mod.Module` API (``mx.model.load_checkpoint(prefix, 0)``)
and the C++ predict API.  Two things differ from Gluon's ``export``:

* **Named outputs.**  Each output of the block passes through an identity
  (``_copy``) node named after the output, so MXNet reports the outputs as
  ``<name>_output``.  For the CapsNet (``CapsNet.output_names``) the symbol's
  ``list_outputs()``, ``Module.output_names`` and the order of the outputs of a
  ``SymbolBlock`` are::

      probabilities_output, capsule_output, reconstruction_output

  The names come from the ``output_names=`` argument, else the block's
  ``output_names`` attribute, else ``output`` (one output) or ``output0``,
  ``output1``, ... (several).  The input variable is always ``data``.
* **Atomic files.**  Both files are written under temporary names beside their
  targets and renamed into place only when both are complete, so a failure
  leaves any earlier export untouched and no temporary files behind.  The
  parameter file is read back before it is renamed: MXNet's writer does not
  check its last flush, so on a full disk or past a file size limit a small
  file would otherwise be cut short without an error.

Reading an export (:func:`verify_mxnet`, and ``convert_mxnet_to_onnx`` in
``_onnx``) checks the symbol JSON before MXNet builds a graph from it
(:func:`_check_graph`: MXNet trusts its indices, and a bad output index crashes
the process) and reads the ``.params`` file with capszoo's strict reader
(:func:`capszoo._weights.read_params`).  Messages quoted from MXNet are its
meaningful line, at most :data:`MAX_QUOTE_CHARS` characters long.
"""
from __future__ import annotations

from capszoo import _env  # noqa: F401  (sets OMP_NUM_THREADS before mxnet loads)

import errno
import json
import os
import re
import warnings

import numpy as np
import mxnet as mx

from capszoo._io import atomic_path
from capszoo._weights import read_params
from capszoo.errors import ExportError, GraphFormatError, WeightsFormatError

__all__ = ["export_mxnet", "verify_mxnet", "block_to_symbol", "resolve_output_names",
           "INPUT_NAME", "DEFAULT_INPUT_SHAPE"]

#: Name of the (single) input variable of every exported graph.
INPUT_NAME = "data"
#: One 28x28 grayscale image, as the CapsNet expects.
DEFAULT_INPUT_SHAPE = (1, 1, 28, 28)
#: Images per forward pass in the verification helpers.
VERIFY_BATCH = 100
#: Longest piece of a message from MXNet (or onnxruntime) quoted in a capszoo error, in characters.
MAX_QUOTE_CHARS = 300
#: Largest symbol JSON read (bytes).  The CapsNet's is about 16 KB; the weights are in the .params file.
MAX_SYMBOL_BYTES = 64 * 1024 * 1024
#: Deepest nesting of subgraphs (control-flow operators) in a symbol JSON.
MAX_SUBGRAPH_DEPTH = 8

_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_DISK_FULL_WHY = "the disk is full or a file size limit was reached"
# "[13:44:34] ../src/operator/tensor/./broadcast_reduce_op.h:406: " in MXNet's messages
_LOG_PREFIX = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+:\d+: ")
_NOT_A_MESSAGE = ("Traceback (most recent call last)", "File \"", "[bt]", "Stack trace")


# ---------------------------------------------------------------------------------------------
# Messages


def _shorten(text, limit=MAX_QUOTE_CHARS):
    """``text`` cut to at most ``limit`` characters (plus a note of its full length)."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters in all)"


def _first_error_line(exc, limit=MAX_QUOTE_CHARS):
    """The line of an MXNet (or other) exception's message that says what is wrong, shortened.

    MXNet's messages start with ``Traceback (most recent call last):`` and the C++
    file of the check; the meaningful line is the one with ``Check failed`` or
    ``Error``.  The ``MXNetError:`` prefix and log stamps (``[13:44:34] file.cc:73:``)
    are dropped, and the line is cut to ``limit`` characters (a 10 MB attribute
    value must not make a 20 MB message).
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    line = next((ln for ln in lines if "Check failed" in ln or "Error" in ln), None)
    if line is None:
        line = next((ln for ln in lines if not ln.startswith(_NOT_A_MESSAGE)), None)
    if line is None:
        return type(exc).__name__
    line = _LOG_PREFIX.sub("", line)
    if line.startswith("MXNetError: "):
        line = line[len("MXNetError: "):]
    return _shorten(line.strip() or type(exc).__name__, limit)


def _short_name(name, limit=60):
    """A node name or attribute value for a message: repr, cut to ``limit`` characters."""
    name = str(name)
    return repr(name if len(name) <= limit else name[:limit] + "...")


def _check_input_shape(input_shape):
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ExportError(f"input_shape must be a tuple of positive integers such as (1, 1, 28, 28), "
                          f"got {input_shape!r}") from None
    if not shape or any(d < 1 for d in shape) or any(int(d) != d for d in input_shape):
        raise ExportError(f"input_shape must be a tuple of positive integers such as (1, 1, 28, 28), "
                          f"got {input_shape!r}")
    return shape


def _flatten(out):
    if isinstance(out, (list, tuple)):
        items = []
        for o in out:
            items.extend(_flatten(o))
        return items
    return [out]


def resolve_output_names(block, num_outputs, output_names=None):
    """The output names of an export of ``block``.

    ``output_names`` if given, else ``block.output_names`` if the block has
    that attribute, else ``["output"]`` for one output and ``["output0",
    "output1", ...]`` for several.

    Raises
    ------
    ExportError
        Names that are not distinct non-empty strings, that clash with the input
        name ``data``, or whose number differs from the block's outputs.
    """
    names = output_names if output_names is not None else getattr(block, "output_names", None)
    if names is None:
        names = ["output"] if num_outputs == 1 else [f"output{i}" for i in range(num_outputs)]
    if isinstance(names, str):
        names = [names]
    names = list(names)
    source = "output_names" if output_names is not None else f"{type(block).__name__}.output_names"
    if not all(isinstance(n, str) and n.strip() == n and n for n in names):
        raise ExportError(f"{source} must be non-empty strings without surrounding blanks, got {names!r}")
    if len(set(names)) != len(names):
        raise ExportError(f"{source} has repeated names: {names!r}; give each output its own name")
    if INPUT_NAME in names:
        raise ExportError(f"{source} uses {INPUT_NAME!r}, the name of the input; choose another name")
    if len(names) != num_outputs:
        raise ExportError(f"{source} names {len(names)} outputs ({', '.join(names)}) but the block "
                          f"returns {num_outputs}; pass output_names= with one name per output")
    return names


def block_to_symbol(block, *, input_shape=DEFAULT_INPUT_SHAPE, output_names=None):
    """Trace ``block`` into an MXNet symbol with named outputs, and collect its parameters.

    The block is hybridized (unless it already is) and run once on zeros of
    ``input_shape`` so that deferred parameter shapes are known; then it is
    called on ``mx.sym.var("data")``.  Each output is wrapped in
    ``mx.sym.identity(out, name=<output name>)``.

    Returns
    -------
    (mxnet.sym.Symbol, dict, list of str)
        The grouped symbol, ``{parameter name: NDArray on cpu}`` holding exactly
        the parameters the symbol uses, and the output names.

    Raises
    ------
    ExportError
        A block that is not a HybridBlock, is not initialized, or fails to run
        on ``input_shape``.
    """
    if not isinstance(block, mx.gluon.HybridBlock):
        raise ExportError(f"only a Gluon HybridBlock can be exported, got {type(block).__name__}; "
                          "wrap the computation in a HybridBlock (hybrid_forward with F)")
    shape = _check_input_shape(input_shape)
    if not getattr(block, "_active", False):
        block.hybridize()
    try:
        with warnings.catch_warnings():
            # Parameters the graph does not use (e.g. a slice holding the whole net) are simply not
            # exported; Gluon's warning about them is noise here.
            warnings.filterwarnings("ignore", message=".*is not used by any computation", category=UserWarning)
            out = block(mx.nd.zeros(shape, dtype="float32"))
            mx.nd.waitall()
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "not been initialized" in msg or "not initialized" in msg:
            raise ExportError(f"cannot export {type(block).__name__}: {msg.rstrip('. ')}. Initialize the block or "
                              "load its weights before exporting.") from None
        raise ExportError(f"{type(block).__name__} fails on an input of shape {shape}: {msg}. "
                          "Pass the input_shape the block expects.") from None
    except TypeError as exc:
        raise ExportError(f"{type(block).__name__} cannot be called with one input ({exc}); only blocks "
                          f"with a single input ({INPUT_NAME!r}) can be exported") from None
    except mx.base.MXNetError as exc:
        msg = str(exc).strip().splitlines()
        raise ExportError(f"{type(block).__name__} fails on an input of shape {shape}: "
                          f"{msg[0] if msg else exc}. Pass the input_shape the block expects.") from None
    n_out = len(_flatten(out))
    names = resolve_output_names(block, n_out, output_names)

    outs = _flatten(block(mx.sym.var(INPUT_NAME)))
    if len(outs) != n_out:  # pragma: no cover - a block that traces differently from how it runs
        raise ExportError(f"{type(block).__name__} returns {n_out} arrays but its symbol has {len(outs)} outputs")
    sym = mx.sym.Group([mx.sym.identity(o, name=n) for o, n in zip(outs, names)])

    args = sym.list_arguments()
    aux = set(sym.list_auxiliary_states())
    clash = [n for n in names if n in args or n in aux]
    if clash:
        raise ExportError(f"output name(s) {', '.join(clash)} are also parameter names of the block; "
                          "choose other output names")
    params = {}
    for p in block.collect_params().values():
        if p.name in args or p.name in aux:
            try:
                data = p.list_data()[0]
            except RuntimeError as exc:
                raise ExportError(f"parameter {p.name} of {type(block).__name__} has no value ({exc}); "
                                  "initialize the block or load its weights before exporting") from None
            params[p.name] = data.as_in_context(mx.cpu())
    missing = [a for a in list(args) + sorted(aux) if a != INPUT_NAME and a not in params]
    if missing:
        raise ExportError(f"the graph of {type(block).__name__} uses variables that are not its parameters: "
                          f"{', '.join(missing)}; a block with more than one input ({INPUT_NAME!r}) "
                          "cannot be exported")
    return sym, params, names


def _params_dict(sym, params):
    aux = set(sym.list_auxiliary_states())
    return {("aux:" if k in aux else "arg:") + k: v for k, v in params.items()}


def _check_saved_params(path, saved, out_dir):
    """Read back the file ``mx.nd.save`` wrote and check it holds ``saved``.

    MXNet's writer does not check the final flush of its buffer: past a file size
    limit or on a full disk a small file is cut short without any error.  Reading
    it back with the strict reader finds that.
    """
    try:
        got = read_params(path)
    except WeightsFormatError as exc:
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        raise ExportError(f"cannot write the MXNet export to {out_dir}: {_DISK_FULL_WHY} (the parameter file "
                          f"was cut short at {size:,} bytes: {_params_reason(exc, path)}); free some space (or "
                          "raise the limit) and export again, the earlier files are unchanged") from None
    want = {k.partition(":")[2]: v for k, v in saved.items()}
    same = set(got) == set(want) and all(
        got[k].dtype == v.dtype and got[k].tobytes() == v.asnumpy().tobytes() for k, v in want.items())
    if not same:  # pragma: no cover - MXNet's writer and capszoo's reader disagree
        raise ExportError(f"the parameter file MXNet wrote to {out_dir} does not read back as the parameters "
                          "saved; this is a bug, please report it with the model")


def _blocking_file(folder):
    """The nearest existing ancestor of ``folder`` (or itself) when it is not a folder, else None."""
    p = os.path.abspath(folder)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent
    return None if os.path.isdir(p) else p


def _makedirs(out_dir, what="the export folder"):
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        blocker = _blocking_file(out_dir)
        why = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or str(exc))
        raise ExportError(f"cannot create {what} {out_dir}: {why}; choose a folder you can write to") from None
    if not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir} is not a folder; choose a folder for the export")


def export_mxnet(block, out_dir, *, prefix="model", input_shape=DEFAULT_INPUT_SHAPE, output_names=None):
    """Export ``block`` as ``<out_dir>/<prefix>-symbol.json`` and ``<out_dir>/<prefix>-0000.params``.

    Parameters
    ----------
    block : mxnet.gluon.HybridBlock
        An initialized block with one input.  It is hybridized (unless it
        already is) and run once, as :meth:`HybridBlock.export` requires.
    out_dir : str or os.PathLike
        Folder of the export; created if missing.  Existing files of an earlier
        export with the same ``prefix`` are replaced.
    prefix : str
        File name prefix (Gluon's naming: ``<prefix>-symbol.json``,
        ``<prefix>-0000.params``, epoch 0).
    input_shape : tuple of int
        Shape of the input used to trace the block.  The exported graph does not
        depend on its batch size when the block reshapes with ``0``/``-1``.
    output_names : sequence of str, optional
        Names of the outputs; default ``block.output_names`` or ``output``/``output<i>``.

    Returns
    -------
    dict
        ``{"symbol": path, "params": path, "output_names": [...], "outputs": [...],
        "input_name": "data", "input_shape": [...]}``.  ``output_names`` are the
        names MXNet reports (``sym.list_outputs()``, ``Module.output_names``),
        e.g. ``["probabilities_output", "capsule_output", "reconstruction_output"]``;
        ``outputs`` are the plain names (``["probabilities", "capsule",
        "reconstruction"]``), which are also the ONNX output names.

    Raises
    ------
    ExportError
        The block cannot be traced, or the folder cannot be written (nothing is
        left half-written; a full disk or a file size limit is named as such).
    """
    if not isinstance(prefix, str) or not prefix or os.sep in prefix or (os.altsep and os.altsep in prefix):
        raise ExportError(f"prefix must be a plain file name prefix such as 'model', got {prefix!r}")
    sym, params, names = block_to_symbol(block, input_shape=input_shape, output_names=output_names)
    out_dir = os.fspath(out_dir)
    _makedirs(out_dir)
    sym_path = os.path.join(out_dir, f"{prefix}-symbol.json")
    params_path = os.path.join(out_dir, f"{prefix}-0000.params")
    for p in (sym_path, params_path):
        if os.path.isdir(p):
            raise ExportError(f"{p} is a folder; remove it or choose another prefix")
    to_save = _params_dict(sym, params)
    try:
        with atomic_path(sym_path) as sym_tmp, atomic_path(params_path) as params_tmp:
            with open(sym_tmp, "w", encoding="utf-8") as fh:
                fh.write(sym.tojson())
            mx.nd.save(params_tmp, to_save)
            _check_saved_params(params_tmp, to_save, out_dir)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise ExportError(f"cannot write the MXNet export to {out_dir}: {_DISK_FULL_WHY} "
                              f"({exc.strerror or exc}); free some space (or raise the limit) and export "
                              "again, the earlier files are unchanged") from None
        raise ExportError(f"cannot write the MXNet export to {out_dir}: {exc.strerror or exc}; "
                          "choose a folder you can write to") from None
    except mx.base.MXNetError as exc:
        line = _first_error_line(exc)
        if "incomplete" in line.lower():   # dmlc's "FileStream.Write incomplete": fwrite stopped short
            raise ExportError(f"cannot write the MXNet export to {out_dir}: {_DISK_FULL_WHY} ({line}); "
                              "free some space (or raise the limit) and export again, the earlier files "
                              "are unchanged") from None
        raise ExportError(f"cannot write the MXNet export to {out_dir}: MXNet could not write the parameters "
                          f"({line}); choose a folder you can write to") from None
    return {
        "symbol": sym_path,
        "params": params_path,
        "output_names": [f"{n}_output" for n in names],
        "outputs": list(names),
        "input_name": INPUT_NAME,
        "input_shape": list(_check_input_shape(input_shape)),
    }


# ---------------------------------------------------------------------------------------------
# Verification


def as_model_input(images):
    """The float32 batch that ``images`` stand for.

    ``uint8`` images ``(N, 28, 28)`` (as MNIST stores them) are scaled by 1/255
    and get a channel axis, ``(N, 1, 28, 28)``; ``uint8`` ``(N, 1, 28, 28)`` are
    scaled; any other array (e.g. capsules ``(N, 16)`` for the decoder) is used
    as it is, as float32.
    """
    a = np.asarray(images)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / np.float32(255.0)
        if a.ndim == 3:
            a = a[:, None, :, :]
    else:
        a = a.astype(np.float32, copy=False)
    if a.ndim < 1 or a.shape[0] < 1:
        raise ExportError(f"verification needs a non-empty batch, got an array of shape {a.shape}")
    return np.ascontiguousarray(a)


def block_outputs(block, x, *, batch_size=VERIFY_BATCH):
    """Outputs of ``block`` on ``x`` (float32 numpy), run in chunks, as numpy arrays."""
    chunks = []
    for i in range(0, len(x), batch_size):
        outs = _flatten(block(mx.nd.array(x[i:i + batch_size], dtype="float32")))
        chunks.append([o.asnumpy() for o in outs])
    return [np.concatenate(parts) for parts in zip(*chunks)]


def _diffs(names, got, ref):
    if len(got) != len(ref):
        raise ExportError(f"the export has {len(got)} outputs but the block has {len(ref)}; "
                          "export the block again")
    out = {}
    for n, g, r in zip(names, got, ref):
        if g.shape != r.shape:
            raise ExportError(f"output {n} has shape {g.shape} in the export but {r.shape} in the block; "
                              "export the block again")
        out[n] = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if g.size else 0.0
    return out


def _agreement(got, ref):
    """Fraction of rows whose argmax agrees, for a 2-D first output (class scores); else None."""
    if got[0].ndim != 2 or ref[0].ndim != 2:
        return None
    return float(np.mean(np.argmax(got[0], axis=1) == np.argmax(ref[0], axis=1)))


def label_accuracy(outputs, labels):
    """Accuracy of the row-wise argmax of the first output against ``labels``."""
    labels = np.asarray(labels).astype(np.int64)
    first = np.asarray(outputs[0])
    if first.ndim != 2 or len(first) != len(labels):
        raise ExportError(f"accuracy needs a (N, classes) first output and N labels, got {first.shape} "
                          f"and {labels.shape}")
    return float(np.mean(first.argmax(axis=1) == labels))


def _plain(name):
    return name[:-len("_output")] if name.endswith("_output") else name


# ---------------------------------------------------------------------------------------------
# Reading an export: symbol JSON (checked before MXNet sees it) and .params (capszoo's strict reader)


def _not_symbol(where, problem):
    return GraphFormatError(f"{where} is not an MXNet symbol JSON: {problem}; export the model again")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_entry(entry, where, what, n_nodes):
    """``[node, output(, version)]`` -> ``(node, output)``; node in ``0..n_nodes-1``."""
    if not isinstance(entry, list) or len(entry) not in (2, 3) or not all(_is_int(v) for v in entry):
        raise _not_symbol(where, f"{what} must be [node, output, version] integers, got "
                                 f"{_shorten(json.dumps(entry), 60)}")
    src, out = entry[0], entry[1]
    if not 0 <= src < n_nodes:
        raise _not_symbol(where, f"{what} refers to node {src}, but the graph has nodes 0..{n_nodes - 1}")
    if out < 0 or (len(entry) == 3 and entry[2] < 0):
        raise _not_symbol(where, f"{what} names output {out} (version {entry[2] if len(entry) == 3 else 0}) "
                                 f"of node {src}; both must be >= 0")
    return src, out


def _count_outputs(node, graph_attrs, where, at):
    """Number of outputs of operator ``node`` (a JSON node), asked of MXNet on the node alone."""
    n_in = len(node.get("inputs", []))
    # control_deps name nodes of the whole graph: the node alone has none
    alone = {k: v for k, v in node.items() if k != "control_deps"}
    alone["inputs"] = [[j, 0, 0] for j in range(n_in)]
    mini = {"nodes": [{"op": "null", "name": f"input{j}", "inputs": []} for j in range(n_in)] + [alone],
            "arg_nodes": list(range(n_in)), "node_row_ptr": list(range(n_in + 2)), "heads": [[n_in, 0, 0]]}
    if isinstance(graph_attrs, dict):
        mini["attrs"] = graph_attrs
    try:
        internals = mx.sym.load_json(json.dumps(mini)).get_internals().list_outputs()
    except mx.base.MXNetError as exc:
        raise _not_symbol(where, f"{at}: {_first_error_line(exc)}") from None
    return len(internals) - n_in


def _check_graph(doc, where, depth=0):
    """Check the structure of a parsed symbol JSON before MXNet builds a graph from it.

    MXNet trusts the indices of a symbol file: an input or head naming output
    ``k`` of a node that has fewer outputs makes it read past its arrays (the
    process dies of SIGSEGV when the graph is bound).  This checks:

    * the document is an object with a non-empty ``nodes`` list and a non-empty
      ``heads`` list; each node an object with string ``op`` and ``name``, a
      list ``inputs`` (none for a variable, ``op`` ``"null"``) and objects of
      strings as attributes;
    * every input ``[node, output, version]`` names an earlier node (MXNet
      writes nodes in topological order, so anything else is a cycle or a
      corrupted file), and so do ``control_deps``;
    * every head names a node of the graph, ``arg_nodes`` lists variables;
    * every output index is below the number of outputs of its node (asked of
      MXNet for the operator alone: ``mx.sym.load_json`` of the single node);
    * ``subgraphs`` (control-flow operators) recursively, at most
      :data:`MAX_SUBGRAPH_DEPTH` deep.

    Raises
    ------
    GraphFormatError
        Naming the first problem found: ``<where> is not an MXNet symbol JSON: ...``.
    """
    if not isinstance(doc, dict):
        kind = "null" if doc is None else type(doc).__name__
        raise _not_symbol(where, f"it holds a JSON {kind}, not an object with \"nodes\" and \"heads\"")
    for key in ("nodes", "heads"):
        if key not in doc:
            raise _not_symbol(where, f"it has no {key!r}")
    nodes, heads = doc["nodes"], doc["heads"]
    if not isinstance(nodes, list) or not nodes:
        raise _not_symbol(where, f"'nodes' must be a non-empty list, got {_shorten(json.dumps(nodes), 60)}")
    entries = []   # (what it is, node, output)
    for i, nd in enumerate(nodes):
        entries.extend(_check_node(nd, i, len(nodes), where, depth))
    entries.extend(_check_heads(heads, len(nodes), where))
    if "arg_nodes" in doc:
        _check_arg_nodes(doc["arg_nodes"], nodes, where)
    _check_output_indices(entries, nodes, doc.get("attrs"), where)


def _node_label(i, node):
    """How a message names node ``i``: ``node <i> (<name>, <op>)``."""
    return f"node {i} ({_short_name(node['name'])}, {_shorten(node['op'], 40)})"


def _check_node(nd, i, n, where, depth):
    """Check node ``i`` of a graph of ``n`` nodes (its subgraphs too, at nesting ``depth``) for
    :func:`_check_graph`; returns its inputs as ``(what, node, output)`` entries."""
    if not isinstance(nd, dict):
        raise _not_symbol(where, f"node {i} is a JSON {type(nd).__name__}, not an object with op, name "
                                 "and inputs")
    for key in ("op", "name"):
        if key not in nd:
            raise _not_symbol(where, f"node {i} has no {key!r}")
        if not isinstance(nd[key], str) or not nd[key]:
            raise _not_symbol(where, f"node {i}: {key!r} must be a non-empty string, got "
                                     f"{_shorten(json.dumps(nd[key]), 60)}")
    at = _node_label(i, nd)
    inputs = nd.get("inputs", [])
    if not isinstance(inputs, list):
        raise _not_symbol(where, f"{at}: 'inputs' must be a list, got {type(inputs).__name__}")
    if nd["op"] == "null" and inputs:
        raise _not_symbol(where, f"{at} is a variable (op \"null\") but has inputs")
    entries = []
    for j, entry in enumerate(inputs):
        src, out = _check_entry(entry, where, f"{at}: input {j}", n)
        if src >= i:
            raise _not_symbol(where, f"{at}: input {j} refers to "
                                     f"{'the node itself' if src == i else f'node {src}, which comes after it'}"
                                     " (MXNet writes nodes in topological order, so this is a cycle or a "
                                     "corrupted file)")
        entries.append((f"{at}: input {j}", src, out))
    deps = nd.get("control_deps", [])
    if not isinstance(deps, list) or not all(_is_int(d) and 0 <= d < i for d in deps):
        raise _not_symbol(where, f"{at}: 'control_deps' must list earlier nodes, got "
                                 f"{_shorten(json.dumps(deps), 60)}")
    for key in ("attrs", "attr", "param"):   # "attr"/"param": MXNet < 1.0
        value = nd.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise _not_symbol(where, f"{at}: {key!r} must be an object of strings")
    subgraphs = nd.get("subgraphs", [])
    if not isinstance(subgraphs, list):
        raise _not_symbol(where, f"{at}: 'subgraphs' must be a list")
    if subgraphs and depth >= MAX_SUBGRAPH_DEPTH:
        raise _not_symbol(where, f"{at}: subgraphs are nested more than {MAX_SUBGRAPH_DEPTH} deep")
    for k, sub in enumerate(subgraphs):
        _check_graph(sub, f"{where} (subgraph {k} of node {i})", depth + 1)
    return entries


def _check_heads(heads, n, where):
    """Check the ``heads`` of a graph of ``n`` nodes; returns them as ``(what, node, output)`` entries."""
    if not isinstance(heads, list) or not heads:
        raise _not_symbol(where, f"'heads' must be a non-empty list of [node, output, version] entries (the "
                                 f"outputs), got {_shorten(json.dumps(heads), 60)}")
    entries = []
    for j, entry in enumerate(heads):
        src, out = _check_entry(entry, where, f"head {j}", n)
        entries.append((f"head {j}", src, out))
    return entries


def _check_arg_nodes(args, nodes, where):
    """Check that ``arg_nodes`` lists variables (``op`` ``"null"``) of the graph."""
    if not isinstance(args, list) or not all(_is_int(a) for a in args):
        raise _not_symbol(where, "'arg_nodes' must be a list of node indices")
    for a in args:
        if not 0 <= a < len(nodes):
            raise _not_symbol(where, f"'arg_nodes' lists node {a}, but the graph has nodes 0..{len(nodes) - 1}")
        if nodes[a]["op"] != "null":
            raise _not_symbol(where, f"'arg_nodes' lists node {a} ({_short_name(nodes[a]['name'])}), an "
                                     f"operator ({_shorten(nodes[a]['op'], 40)}), not a variable")


def _check_output_indices(entries, nodes, graph_attrs, where):
    """Check that each ``(what, node, output)`` entry names an output its node has (counted by
    :func:`_count_outputs`, once per node; output 0 and variables need no count)."""
    counts = {}
    for what, src, out in entries:
        if out == 0:
            continue   # every operator has an output 0
        node = nodes[src]
        if src not in counts:
            counts[src] = (1 if node["op"] == "null"
                           else _count_outputs(node, graph_attrs, where, _node_label(src, node)))
        if out >= counts[src]:
            raise _not_symbol(where, f"{what} names output {out} of {_node_label(src, node)}, which has "
                                     f"{counts[src]} output{'s' if counts[src] != 1 else ''}")


def _parse_symbol(text, where):
    """``(parsed JSON, mx.sym.Symbol)`` of the symbol JSON ``text``, checked (see :func:`_check_graph`).

    Raises
    ------
    GraphFormatError
        Text that is not JSON (or is nested too deeply), a graph that fails the
        structural checks, or one MXNet refuses (unknown operators, bad attributes).
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _not_symbol(where, f"it is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise _not_symbol(where, "it is JSON nested too deeply") from None
    except ValueError as exc:   # e.g. an integer with too many digits
        raise _not_symbol(where, f"it is not valid JSON ({_shorten(exc, 100)})") from None
    _check_graph(doc, where)
    try:
        return doc, mx.sym.load_json(text)
    except mx.base.MXNetError as exc:
        raise _not_symbol(where, _first_error_line(exc)) from None


def _read_symbol_file(symbol_path):
    """The text of the symbol file ``symbol_path`` (a regular file of at most :data:`MAX_SYMBOL_BYTES`)."""
    p = os.fspath(symbol_path)
    try:
        if os.path.isdir(p):
            raise GraphFormatError(f"{p} is a folder, not a symbol file; give the <prefix>-symbol.json inside it")
        with open(p, "rb") as fh:
            data = fh.read(MAX_SYMBOL_BYTES + 1)
    except OSError as exc:
        raise GraphFormatError(f"cannot read symbol file {p}: {exc.strerror or exc}") from None
    if len(data) > MAX_SYMBOL_BYTES:
        raise GraphFormatError(f"{p} is larger than {MAX_SYMBOL_BYTES >> 20} MB, too large for a symbol JSON "
                               "(the weights belong in the .params file); give the -symbol.json file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_symbol(p, f"it is not UTF-8 text (byte {exc.start})") from None


def _load_symbol(symbol_path):
    """Read and check the symbol file ``symbol_path``; returns the ``mx.sym.Symbol``."""
    text = _read_symbol_file(symbol_path)
    return _parse_symbol(text, os.fspath(symbol_path))[1]


def _params_reason(exc, path):
    """What :func:`capszoo._weights.read_params` found wrong, without its file name and remedy."""
    msg, name = str(exc), os.fspath(path)
    if msg.startswith(name + ": "):
        msg = msg[len(name) + 2:]
    return _shorten(msg.split("; this is not an MXNet .params file")[0], 200)


def _load_params(params_path):
    """``{parameter name: numpy array}`` from an export's ``.params`` file (``arg:``/``aux:`` dropped).

    Read by :func:`capszoo._weights.read_params`, which bounds every length by the
    file's size and refuses truncated files, trailing bytes, unknown dtypes, sparse
    arrays and unnamed lists (MXNet's ``nd.load`` trusts the file).

    Raises
    ------
    GraphFormatError
        A missing file or one that is not a named MXNet parameter list.
    """
    p = os.fspath(params_path)
    if not os.path.exists(p):
        raise GraphFormatError(f"{p}: no such .params file; give the <prefix>-0000.params written with the "
                               "symbol file")
    try:
        return read_params(p)
    except WeightsFormatError as exc:
        reason = _params_reason(exc, p)
        if " arrays but 0 names" in reason:
            reason = f"it holds an unnamed array list, not named parameters ({reason})"
        raise GraphFormatError(f"{p} is not an MXNet .params file ({reason}); export the model again") from None


def _as_ndarrays(arrays):
    return {k: mx.nd.array(v, dtype=v.dtype, ctx=mx.cpu()) for k, v in arrays.items()}


def verify_mxnet(symbol_path, params_path, block, images, *, batch_size=VERIFY_BATCH, reference=None,
                 atol=None, labels=None):
    """Load an MXNet export two ways and compare its outputs with ``block``'s.

    The files are loaded with :meth:`mxnet.gluon.SymbolBlock.imports` and with
    the legacy :class:`mxnet.mod.Module` API (bound for inference, fed
    ``DataBatch`` es), and both are run on ``images`` in chunks of
    ``batch_size``.  Before MXNet sees them, the symbol JSON is checked
    (structure, node and output indices, no cycles: see :func:`_check_graph`) and
    the ``.params`` file is read with capszoo's strict reader
    (:func:`capszoo._weights.read_params`), so a corrupt or hostile export gives
    a :class:`~capszoo.errors.GraphFormatError` instead of crashing the process.

    Parameters
    ----------
    images : numpy.ndarray
        The inputs: see :func:`as_model_input` (uint8 MNIST images are scaled
        by 1/255; float arrays are used as they are).
    reference : list of numpy.ndarray, optional
        ``block``'s outputs on ``images`` when already computed (saves a pass).
    atol : float, optional
        When given, raise :class:`ExportError` if any difference exceeds it.
    labels : numpy.ndarray, optional
        Class labels of ``images``: adds ``"accuracy": {"symbolblock": a, "module": a}``,
        each computed from that runtime's own first output.

    Returns
    -------
    dict
        ``{"num_inputs": N, "outputs": [plain names], "symbolblock": {name:
        max abs diff}, "module": {name: max abs diff}, "max_abs_diff": float,
        "argmax_agreement": {"symbolblock": f, "module": f} or None}``
        (agreement of the row-wise argmax of the first output, when it is 2-D).

    Raises
    ------
    GraphFormatError
        A symbol file or ``.params`` file that is not a valid export, or a graph
        that MXNet cannot load, bind or run on ``images``.
    ExportError
        Outputs that differ from the block's in number or shape, or by more than ``atol``.
    """
    x = as_model_input(images)
    # Both files are checked before MXNet builds anything from them: MXNet trusts the indices of a
    # symbol file (a bad one crashes the process) and the sizes of a .params file.
    sym = _load_symbol(symbol_path)
    weights = _load_params(params_path)
    arg, aux = _split_params(sym, weights)
    mx_names = sym.list_outputs()
    names = [_plain(n) for n in mx_names]
    ref = reference if reference is not None else block_outputs(block, x, batch_size=batch_size)
    ref = [np.asarray(r) for r in ref]
    files = f"{symbol_path} with {params_path}"
    sb_out = _run_symbolblock(symbol_path, params_path, x, batch_size, files)
    mod_out, mod_names = _run_module(sym, arg, aux, x, batch_size, files)
    result = {
        "num_inputs": int(len(x)),
        "outputs": names,
        "mxnet_output_names": list(mx_names),
        "module_output_names": list(mod_names),
        "symbolblock": _diffs(names, sb_out, ref),
        "module": _diffs(names, mod_out, ref),
    }
    result["max_abs_diff"] = max(list(result["symbolblock"].values()) + list(result["module"].values()))
    a_sb, a_mod = _agreement(sb_out, ref), _agreement(mod_out, ref)
    result["argmax_agreement"] = None if a_sb is None else {"symbolblock": a_sb, "module": a_mod}
    if labels is not None:
        result["accuracy"] = {"symbolblock": label_accuracy(sb_out, labels), "module": label_accuracy(mod_out, labels)}
    if atol is not None and result["max_abs_diff"] > atol:
        raise ExportError(f"the MXNet export differs from the block by {result['max_abs_diff']:.3g} "
                          f"(> {atol:g}): {result['symbolblock']} (SymbolBlock), {result['module']} "
                          "(Module); export the block again and report a bug if it persists")
    return result


def _run_symbolblock(symbol_path, params_path, x, batch_size, files):
    """The outputs of the export (``files`` names it in messages) loaded with
    :meth:`mxnet.gluon.SymbolBlock.imports`, on ``x`` in chunks of ``batch_size``.

    Raises
    ------
    GraphFormatError
        MXNet cannot load the files or run the graph.
    """
    try:
        with warnings.catch_warnings():
            # imports() without an input dtype warns that it "cannot decide the type" of data; the
            # parameters' float32 decides it.
            warnings.filterwarnings("ignore", message="Cannot decide type", category=UserWarning)
            sb = mx.gluon.SymbolBlock.imports(os.fspath(symbol_path), [INPUT_NAME], os.fspath(params_path),
                                              ctx=mx.cpu())
    except (AssertionError, mx.base.MXNetError, ValueError, RuntimeError) as exc:
        raise GraphFormatError(f"SymbolBlock.imports cannot load {files}: {_first_error_line(exc)}; "
                               "export the model again") from None
    try:
        return block_outputs(sb, x, batch_size=batch_size)
    except (AssertionError, mx.base.MXNetError, ValueError, RuntimeError, MemoryError) as exc:
        raise GraphFormatError(f"the graph of {files} fails when run by SymbolBlock on a batch of shape "
                               f"{x[:batch_size].shape}: {_first_error_line(exc)}; export the model again") from None


def _split_params(sym, weights):
    """``(arguments, auxiliary states)`` of ``sym`` among ``weights``, as CPU NDArrays."""
    aux_names = set(sym.list_auxiliary_states())
    arg = _as_ndarrays({k: v for k, v in weights.items() if k not in aux_names})
    aux = _as_ndarrays({k: v for k, v in weights.items() if k in aux_names})
    return arg, aux


def _run_module(sym, arg, aux, x, batch_size, files):
    """``(outputs, Module.output_names)`` of the symbol ``sym`` with the parameters ``arg`` and
    ``aux`` in the legacy :class:`mxnet.mod.Module` API, bound for inference and fed
    ``DataBatch`` es of ``batch_size`` images of ``x``.

    Raises
    ------
    GraphFormatError
        MXNet cannot bind the graph or run it (``files`` names the export).
    """
    first = x[:batch_size]
    mod = mx.mod.Module(symbol=sym, data_names=[INPUT_NAME], label_names=None, context=mx.cpu())
    try:
        mod.bind(data_shapes=[(INPUT_NAME, first.shape)], for_training=False)
        mod.set_params(arg, aux, allow_missing=False)
    except (AssertionError, mx.base.MXNetError, ValueError, RuntimeError) as exc:
        raise GraphFormatError(f"mx.mod.Module cannot bind {files}: {_first_error_line(exc)}; "
                               "export the model again") from None
    chunks = []
    try:
        for i in range(0, len(x), batch_size):
            mod.forward(mx.io.DataBatch([mx.nd.array(x[i:i + batch_size])]), is_train=False)
            chunks.append([o.asnumpy() for o in mod.get_outputs()])
    except (AssertionError, mx.base.MXNetError, ValueError, RuntimeError, MemoryError) as exc:
        raise GraphFormatError(f"the graph of {files} fails when run by mx.mod.Module on a batch of shape "
                               f"{first.shape}: {_first_error_line(exc)}; export the model again") from None
    return [np.concatenate(parts) for parts in zip(*chunks)], mod.output_names
