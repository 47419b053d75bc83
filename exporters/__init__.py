"""Exporters: a capszoo net to MXNet's deployment format and to ONNX, with checks.

* :func:`export_mxnet` writes ``<prefix>-symbol.json`` and ``<prefix>-0000.params``
  (``HybridBlock.export``'s format) with named outputs (``probabilities_output``,
  ``capsule_output``, ``reconstruction_output`` for the CapsNet);
* :func:`export_onnx` converts with capszoo's own MXNet-to-ONNX converter
  (opset 17 by default; :data:`SUPPORTED_OPERATORS`), batch dimension ``N``;
  :func:`convert_mxnet_to_onnx` does the same from an MXNet export;
* :func:`verify_mxnet` / :func:`verify_onnx` reload an export (SymbolBlock and
  Module; onnxruntime) and report the largest difference per output;
* :func:`write_metadata` writes ``metadata.json`` describing an export folder;
* :func:`compare_runtimes` / :func:`load_runtime` run an ONNX export in other ONNX
  runtimes (OpenVINO, the ONNX reference evaluator, OpenCV, tract) against onnxruntime;
* :func:`quantize_onnx` writes an int8 ONNX graph (onnxruntime's static quantization,
  calibrated on real inputs).

Every file is written atomically: a failed export leaves no partial file and
no temporary file behind, and exporting again over an earlier export works.
"""
from __future__ import annotations

import collections.abc
import json
import numbers
import os

from capszoo._io import atomic_write_json
from capszoo.errors import ExportError

from ._mxnet import (DEFAULT_INPUT_SHAPE, INPUT_NAME, as_model_input, block_to_symbol, export_mxnet,
                     resolve_output_names, verify_mxnet)
from ._onnx import (DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, SUPPORTED_OPERATORS, convert_mxnet_to_onnx,
                    export_onnx, mxnet_to_onnx_model, verify_onnx)
from ._quantize import quantize_onnx
from ._runtimes import RUNTIMES, available_runtimes, compare_runtimes, load_runtime, runtime_version

__all__ = [
    "export_mxnet", "export_onnx", "convert_mxnet_to_onnx", "mxnet_to_onnx_model",
    "verify_mxnet", "verify_onnx", "write_metadata", "block_to_symbol", "resolve_output_names",
    "as_model_input", "SUPPORTED_OPERATORS", "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET",
    "INPUT_NAME", "DEFAULT_INPUT_SHAPE", "METADATA_FILENAME", "METADATA_FORMAT_VERSION",
    "quantize_onnx", "RUNTIMES", "available_runtimes", "compare_runtimes", "load_runtime", "runtime_version",
]

METADATA_FILENAME = "metadata.json"
METADATA_FORMAT_VERSION = 1

_FORMATS = (("-symbol.json", "mxnet-symbol"), (".params", "mxnet-params"), (".onnx", "onnx"))


def _jsonable(obj, where):
    """``obj`` with numpy scalars/arrays and tuples turned into JSON types; reject the rest."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, collections.abc.Mapping):
        return {str(k): _jsonable(v, where) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, where) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist(), where)
    raise ExportError(f"{where} holds a {type(obj).__name__}, which JSON cannot store; "
                      "pass numbers, strings, lists and dicts")


def _file_entries(out_dir, files):
    """metadata.json's ``files``: name relative to ``out_dir``, format, size, sha256 (and role)."""
    from capszoo._weights import sha256_file

    items = list(files.items()) if isinstance(files, dict) else [(None, f) for f in files]
    if not items:
        raise ExportError("files is empty; list the exported files")
    root = os.path.realpath(out_dir)
    entries, seen = [], set()
    for role, f in items:
        p = os.fspath(f)
        full = p if os.path.isabs(p) else os.path.join(out_dir, p)
        real = os.path.realpath(full)
        if os.path.commonpath([root, real]) != root:
            raise ExportError(f"{p} is outside the export folder {out_dir}; metadata.json describes the "
                              "files of its folder, so export into it")
        if not os.path.isfile(real):
            raise ExportError(f"{full}: no such file to describe in metadata.json; export it first")
        rel = os.path.relpath(real, root).replace(os.sep, "/")
        if rel in seen:
            raise ExportError(f"{rel} is listed twice in files")
        seen.add(rel)
        fmt = next((name for suffix, name in _FORMATS if rel.endswith(suffix)), "other")
        entry = {"name": rel, "format": fmt, "bytes": os.path.getsize(real), "sha256": sha256_file(real)}
        if role is not None:
            entry = {"role": str(role), **entry}
        entries.append(entry)
    return entries


def write_metadata(out_dir, *, model_name, version, files, classes, input_spec, preprocessing,
                   verification=None, dtype="float32"):
    """Write ``<out_dir>/metadata.json`` describing an export; returns its path.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The export folder (it must exist).
    model_name, version : str
        E.g. ``"capsnet-mnist"`` and the weights' or package's version.
    files : sequence of paths, or dict ``{role: path}``
        The exported files, inside ``out_dir`` (relative paths are taken
        relative to it).  Each is recorded with its name relative to
        ``out_dir``, size in bytes, sha256 and format (``mxnet-symbol``,
        ``mxnet-params``, ``onnx`` or ``other``), plus its role when given.
    classes : sequence of str
        Class labels, in output order.
    input_spec : dict
        E.g. ``{"name": "data", "shape": ["N", 1, 28, 28], "dtype": "float32",
        "range": [0, 1]}``.
    preprocessing : str or dict
        How to turn an image into the input.
    verification : dict, optional
        Results of :func:`verify_mxnet` / :func:`verify_onnx`.
    dtype : str
        ``float32``, or ``int8`` for a quantized ONNX graph.

    The file is JSON with the keys ``format_version``, ``producer``,
    ``model_name``, ``version``, ``dtype``, ``classes``, ``input``, ``preprocessing``,
    ``files`` and ``verification``.  It carries no time stamp, so the same
    export gives the same file.

    Raises
    ------
    ExportError
        A missing file, a file outside ``out_dir``, a repeated file, values
        JSON cannot store, or a folder that cannot be written.
    """
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise ExportError(f"export folder {out_dir} does not exist; export the model into it first")
    for what, value in (("model_name", model_name), ("version", version)):
        if not isinstance(value, str) or not value.strip():
            raise ExportError(f"{what} must be a non-empty string, got {value!r}")
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise ExportError(f"classes must be a sequence of strings, got {classes!r}")
    if not isinstance(input_spec, dict):
        raise ExportError(f"input_spec must be a dict such as {{'name': 'data', 'shape': ['N', 1, 28, 28]}}, "
                          f"got {type(input_spec).__name__}")
    entries = _file_entries(out_dir, files)

    import mxnet as mx
    import onnx
    from ._onnx import _capszoo_version
    doc = {
        "format_version": METADATA_FORMAT_VERSION,
        "producer": {"name": "capszoo", "version": _capszoo_version(), "mxnet": mx.__version__,
                     "onnx": onnx.__version__},
        "model_name": model_name,
        "version": version,
        "dtype": str(dtype),
        "classes": list(classes),
        "input": _jsonable(input_spec, "input_spec"),
        "preprocessing": _jsonable(preprocessing, "preprocessing"),
        "files": entries,
        "verification": _jsonable(verification, "verification"),
    }
    path = os.path.join(out_dir, METADATA_FILENAME)
    try:
        json.dumps(doc, allow_nan=False)
    except ValueError:
        raise ExportError("verification holds NaN or infinite numbers; the export does not match the "
                          "model, do not publish it") from None
    try:
        atomic_write_json(path, doc)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}; choose a folder you can write to") from None
    return path
