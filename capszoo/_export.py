"""``capszoo export``: a model or a slice of it to MXNet symbol JSON + params or ONNX, verified."""
from __future__ import annotations

import os

import numpy as np

from .errors import ExportError, InvalidInputError

__all__ = ["export_model", "FORMATS"]

FORMATS = ("mxnet", "onnx")


def _slice_block(model, spec):
    if spec is None:
        return model.net, model.card.name, (1,) + tuple(model.card.input_shape)
    block = model.take(spec)
    prefix = f"{model.card.name}-{block.start_name}" + ("" if block.start_name == block.end_name
                                                       else f"-{block.end_name}")
    return block, prefix, (1,) + tuple(block.input_shape)


def _verification_inputs(model, block, data_dir, count):
    """Test images (and labels) for a block that takes images; capsules for one that does not."""
    from .data import load_mnist

    images, labels = load_mnist("test", data_dir=data_dir)
    images, labels = images[:count], labels[:count]
    if getattr(block, "start_name", "ReLUConv1") == "ReLUConv1":
        classifies = block is model.net
        return images, (labels if classifies else None)
    # A slice that starts later is fed what the model computes before it.
    before = model.port(images, _previous_stage(block.start_name))
    return before.astype(np.float32), None


def _previous_stage(name):
    from ._net import SUBNET_NAMES
    return SUBNET_NAMES[SUBNET_NAMES.index(name) - 1]


def export_model(name, *, fmt, out_dir, prefix=None, slice_spec=None, weights=None, verify=False, data_dir=None,
                 verify_count=10_000):
    """Export model ``name`` (or a slice) and write ``metadata.json`` beside it.

    Parameters
    ----------
    name : str
        Registered model name or alias.
    fmt : {"mxnet", "onnx"}
    out_dir : str
        Output folder (created).  Files are written atomically; exporting again
        over an earlier export replaces it.
    prefix : str, optional
        File name prefix; default the model name (``capsnet-mnist``) or
        ``capsnet-mnist-<Start>-<End>`` for a slice.
    slice_spec : str, optional
        ``"ReLUConv1:Pick"`` (feature extractor), ``"Reconstruct"`` (reconstructor), any ``"A:B"``.
    weights : str, optional
        A ``.params`` file instead of the published weights.
    verify : bool
        Reload the export in its runtime (SymbolBlock and Module, or onnxruntime)
        and report the max abs difference and, for the whole net, the test accuracy.
    data_dir : str, optional
        MNIST folder for verification.
    verify_count : int
        Number of MNIST test images used for verification.

    Returns
    -------
    dict
        ``{"files": [{"path", "bytes", "sha256"}], "metadata": path, "verification": {...} or None}``.
    """
    from ._api import load
    from ._weights import sha256_file
    from capszoo import exporters

    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    model = load(name, weights=weights)
    block, default_prefix, input_shape = _slice_block(model, slice_spec)
    prefix = prefix or default_prefix
    if not prefix or os.sep in prefix or prefix.startswith("."):
        raise InvalidInputError(f"bad --prefix {prefix!r}: use a plain file name prefix")
    out_names = list(block.output_names)
    if fmt == "mxnet":
        res = exporters.export_mxnet(block, out_dir, prefix=prefix, input_shape=input_shape, output_names=out_names)
        paths = {"symbol": res["symbol"], "params": res["params"]}
    else:
        path = os.path.join(out_dir, prefix + ".onnx")
        exporters.export_onnx(block, path, input_shape=input_shape, output_names=out_names,
                              model_name=model.card.name)
        paths = {"onnx": path}

    verification = None
    if verify:
        x, labels = _verification_inputs(model, block, data_dir, verify_count)
        if fmt == "mxnet":
            v = exporters.verify_mxnet(paths["symbol"], paths["params"], block, x, labels=labels)
            verification = {"runtime": "mxnet (SymbolBlock.imports and Module)", "max_abs_diff": v["max_abs_diff"],
                            "per_output": {"symbolblock": v["symbolblock"], "module": v["module"]},
                            "num_inputs": v["num_inputs"],
                            "accuracy": min(v["accuracy"].values()) if "accuracy" in v else None}
        else:
            v = exporters.verify_onnx(paths["onnx"], block, x, labels=labels)
            verification = {"runtime": f"onnxruntime {v['onnxruntime_version']}", "max_abs_diff": v["max_abs_diff"],
                            "per_output": v["onnxruntime"], "num_inputs": v["num_inputs"],
                            "accuracy": v.get("accuracy")}
        if verification["max_abs_diff"] > 1e-5:
            raise ExportError(f"verification failed: the export differs from capszoo by "
                              f"{verification['max_abs_diff']:.3g} (> 1e-5): {verification['per_output']}")
    card = model.card
    meta = exporters.write_metadata(
        out_dir, model_name=card.name, version=_version(), files=paths, classes=[str(c) for c in card.classes],
        input_spec={"name": "data", "shape": ["N"] + list(input_shape[1:]), "dtype": "float32",
                    "range": list(card.input_range) if input_shape[1:] == card.input_shape else None,
                    "slice": slice_spec or "ReLUConv1:Reconstruct", "outputs": out_names},
        preprocessing=card.preprocessing, verification=verification)
    files = [{"path": p, "bytes": os.path.getsize(p), "sha256": sha256_file(p)} for p in paths.values()]
    return {"files": files, "metadata": meta, "verification": verification}


def _version():
    from . import __version__
    return __version__
