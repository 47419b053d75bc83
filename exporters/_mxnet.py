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
  leaves any earlier export untouched and no temporary files behind.
"""
from __future__ import annotations

from capszoo import _env  # noqa: F401  (sets OMP_NUM_THREADS before mxnet loads)

import json
import os
import warnings

import numpy as np
import mxnet as mx

from capszoo._io import atomic_path
from capszoo.errors import ExportError, GraphFormatError

__all__ = ["export_mxnet", "verify_mxnet", "block_to_symbol", "resolve_output_names",
           "INPUT_NAME", "DEFAULT_INPUT_SHAPE"]

#: Name of the (single) input variable of every exported graph.
INPUT_NAME = "data"
#: One 28x28 grayscale image, as the CapsNet expects.
DEFAULT_INPUT_SHAPE = (1, 1, 28, 28)
#: Images per forward pass in the verification helpers.
VERIFY_BATCH = 100


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
        left half-written).
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
    try:
        with atomic_path(sym_path) as sym_tmp, atomic_path(params_path) as params_tmp:
            with open(sym_tmp, "w", encoding="utf-8") as fh:
                fh.write(sym.tojson())
            mx.nd.save(params_tmp, _params_dict(sym, params))
    except OSError as exc:
        raise ExportError(f"cannot write the MXNet export to {out_dir}: {exc.strerror or exc}; "
                          "choose a folder you can write to") from None
    except mx.base.MXNetError as exc:
        raise ExportError(f"cannot write the MXNet export to {out_dir}: {str(exc).strip().splitlines()[0]}; "
                          "choose a folder you can write to") from None
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


def _load_symbol(symbol_path):
    try:
        with open(symbol_path, "r", encoding="utf-8") as fh:
            text = fh.read()
        json.loads(text)
        return mx.sym.load_json(text)
    except OSError as exc:
        raise GraphFormatError(f"cannot read symbol file {symbol_path}: {exc.strerror or exc}") from None
    except (ValueError, mx.base.MXNetError) as exc:
        raise GraphFormatError(f"{symbol_path} is not an MXNet symbol JSON file ({str(exc).splitlines()[0]}); "
                               "export the model again") from None


def _load_params(params_path):
    try:
        loaded = mx.nd.load(os.fspath(params_path))
    except mx.base.MXNetError as exc:
        raise GraphFormatError(f"{params_path} is not an MXNet .params file "
                               f"({str(exc).strip().splitlines()[0]}); export the model again") from None
    if not isinstance(loaded, dict):
        raise GraphFormatError(f"{params_path} holds an unnamed array list, not named parameters; "
                               "export the model again")
    arg, aux = {}, {}
    for k, v in loaded.items():
        kind, _, name = k.partition(":")
        if kind == "aux":
            aux[name] = v
        elif kind == "arg":
            arg[name] = v
        else:
            arg[k] = v
    return arg, aux


def verify_mxnet(symbol_path, params_path, block, images, *, batch_size=VERIFY_BATCH, reference=None,
                 atol=None, labels=None):
    """Load an MXNet export two ways and compare its outputs with ``block``'s.

    The files are loaded with :meth:`mxnet.gluon.SymbolBlock.imports` and with
    the legacy :class:`mxnet.mod.Module` API (bound for inference, fed
    ``DataBatch`` es), and both are run on ``images`` in chunks of
    ``batch_size``.

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
    """
    x = as_model_input(images)
    sym = _load_symbol(symbol_path)
    arg, aux = _load_params(params_path)
    mx_names = sym.list_outputs()
    names = [_plain(n) for n in mx_names]
    ref = reference if reference is not None else block_outputs(block, x, batch_size=batch_size)
    ref = [np.asarray(r) for r in ref]

    try:
        with warnings.catch_warnings():
            # imports() without an input dtype warns that it "cannot decide the type" of data; the
            # parameters' float32 decides it.
            warnings.filterwarnings("ignore", message="Cannot decide type", category=UserWarning)
            sb = mx.gluon.SymbolBlock.imports(os.fspath(symbol_path), [INPUT_NAME], os.fspath(params_path),
                                              ctx=mx.cpu())
    except (AssertionError, mx.base.MXNetError, ValueError, RuntimeError) as exc:
        raise GraphFormatError(f"SymbolBlock.imports cannot load {symbol_path} with {params_path}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}; "
                               "export the model again") from None
    sb_out = block_outputs(sb, x, batch_size=batch_size)

    mod = mx.mod.Module(symbol=sym, data_names=[INPUT_NAME], label_names=None, context=mx.cpu())
    first = x[:batch_size]
    try:
        mod.bind(data_shapes=[(INPUT_NAME, first.shape)], for_training=False)
        mod.set_params(arg, aux, allow_missing=False)
    except (AssertionError, mx.base.MXNetError, ValueError, RuntimeError) as exc:
        raise GraphFormatError(f"mx.mod.Module cannot bind {symbol_path} with {params_path}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}; "
                               "export the model again") from None
    chunks = []
    for i in range(0, len(x), batch_size):
        mod.forward(mx.io.DataBatch([mx.nd.array(x[i:i + batch_size])]), is_train=False)
        chunks.append([o.asnumpy() for o in mod.get_outputs()])
    mod_out = [np.concatenate(parts) for parts in zip(*chunks)]

    result = {
        "num_inputs": int(len(x)),
        "outputs": names,
        "mxnet_output_names": list(mx_names),
        "module_output_names": list(mod.output_names),
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
