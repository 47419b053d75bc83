"""``capszoo export``: a model or a slice of it to MXNet symbol JSON + params or ONNX, verified."""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from .errors import ExportError, InvalidInputError

__all__ = ["export_model", "FORMATS", "DTYPES", "onnx_metadata", "slice_inputs"]

FORMATS = ("mxnet", "onnx")
#: ``--dtype``: float32, or int8 (ONNX only: onnxruntime's static quantization, calibrated on the shipped
#: training digits).
DTYPES = ("float32", "int8")

#: What each output (ONNX output name) holds; recorded as the output's doc_string and in metadata_props.
OUTPUT_DOCS = {
    "probabilities": "class probabilities, one per class in the order of metadata 'classes'",
    "capsule": "the 16-D digit capsule of the predicted class: its pose (stroke width, slant, scale, ...)",
    "reconstruction": "the digit drawn back by the decoder from the capsule, 1x28x28 in [0, 1]",
    "relu_conv1": "ReLUConv1's feature maps (256x20x20)",
    "primary_capsules": "PrimaryCaps' 1152 squashed 8-D capsules",
    "prediction_vectors": "PrimaryPredVects' prediction vectors u_hat[j|i] (10x1152x16)",
    "digit_capsules": "DigitCaps' 10 digit capsules (10x16) after routing by agreement; their lengths are the "
                      "class probabilities",
    "coupling": "routing's coupling coefficients c_ij of every iteration (iterations x 1152 x 10): primary capsule "
                "i's share of its vote to class j; each row sums to 1 over the classes, 0.1 in the first iteration",
}
#: Optional extra outputs an export can carry (``extra_outputs=``, ``capszoo export --coupling``).
EXTRA_OUTPUTS = ("coupling",)


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
    whole = tuple(block.output_names[:1]) == ("probabilities",)
    return slice_inputs(model, block, images), (labels if whole else None)


def _previous_stage(model, name):
    names = list(model.net.subnet_names)
    return names[names.index(name) - 1]


def slice_inputs(model, block, images):
    """What ``block`` (``model.net`` or a slice of it) takes for uint8 digit ``images`` (N, 28, 28): the
    images as float32 in [0, 1] when it starts with the first sub-net, else what the model computes
    before it (for a decoder of the masked capsules, the Pick capsule in the predicted class's row
    of an otherwise zero (N, 10 x 16) array)."""
    from .exporters import as_model_input

    start = getattr(block, "start_name", None)
    if block is model.net or start in (None, model.net.subnet_names[0]):
        return as_model_input(images)
    before = np.asarray(model.port(images, _previous_stage(model, start)), dtype=np.float32)
    want = tuple(block.input_shape)
    if before.shape[1:] == want:
        return before
    caps = np.asarray(model.port(images, "DigitCaps"), dtype=np.float32)           # (N, 10, 16)
    if before.ndim != 2 or want != (caps.shape[1] * before.shape[1],):
        raise ExportError(f"cannot make inputs of shape {want} for slice {start}: the stage before it gives "
                          f"{before.shape[1:]}")
    index = np.argmax(np.sqrt((caps ** 2).sum(axis=2)), axis=1)
    masked = np.zeros_like(caps)
    masked[np.arange(len(caps)), index] = before
    return masked.reshape(len(caps), -1)


def _with_extra_outputs(model, extra_outputs, slice_spec):
    """The model's net rebuilt to also output ``extra_outputs`` (its weights loaded), or None for none."""
    extra = tuple(extra_outputs or ())
    unknown = [e for e in extra if e not in EXTRA_OUTPUTS]
    if unknown:
        raise InvalidInputError(f"unknown extra output(s) {', '.join(map(repr, unknown))}; extra outputs: "
                                f"{', '.join(EXTRA_OUTPUTS)}")
    if not extra:
        return None
    card = model.card
    if "routing_iterations" not in card.arch_args:
        raise ExportError(f"{card.name} has no routing, so no coupling coefficients to export "
                          f"(its sub-nets: {', '.join(card.subnets)}); export a capsnet-* entry")
    if slice_spec is not None:
        raise ExportError("the coupling coefficients are an extra output of the whole net; drop --slice")
    from ._weights import load_params_into

    net = card.build(coupling_output=True)
    load_params_into(net, model.weights_path, ctx=model.ctx)
    net.hybridize(static_alloc=True)
    return net


def export_model(name, *, fmt, out_dir, prefix=None, slice_spec=None, weights=None, verify=False, data_dir=None,
                 verify_count=10_000, dtype="float32", extra_outputs=()):
    """Export model ``name`` (or a slice) and write ``metadata.json`` beside it.

    Parameters
    ----------
    name : str
        Registered model name or alias.
    fmt : {"mxnet", "onnx"}
    out_dir : str
        Output folder (created).  The files are written and verified in a hidden folder inside it,
        then moved in place: exporting again replaces an earlier export, and an export that fails
        (or fails verification) leaves the folder as it was.
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
    dtype : {"float32", "int8"}
        int8 (ONNX only): the float32 export quantized by onnxruntime (QDQ, int8 weights per
        channel), calibrated on the 256 training digits shipped with capszoo (their intermediate
        values for a slice that starts later).  Its verification reports the differences and the
        accuracy without the float32 tolerance.
    extra_outputs : sequence of str
        Outputs to add to the whole net's: ``("coupling",)`` (capsule nets) appends routing's coupling
        coefficients of every iteration, ``(N, iterations, 1152, 10)``.

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
    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown export dtype {dtype!r}; use one of: {', '.join(DTYPES)}")
    if dtype == "int8" and fmt != "onnx":
        raise ExportError("int8 export writes a quantized ONNX graph; use --format onnx with --dtype int8 "
                          "(an MXNet export is float32)")
    model = load(name, weights=weights, backend="mxnet")
    block, default_prefix, input_shape = _slice_block(model, slice_spec)
    coupled = _with_extra_outputs(model, extra_outputs, slice_spec)
    if coupled is not None:
        block, default_prefix = coupled, f"{model.card.name}-coupling"
    prefix = prefix or default_prefix
    if not prefix or os.sep in prefix or prefix.startswith("."):
        raise InvalidInputError(f"bad --prefix {prefix!r}: use a plain file name prefix")
    out_names = list(block.output_names)
    staging = _staging_folder(out_dir)
    try:
        if fmt == "mxnet":
            res = exporters.export_mxnet(block, staging, prefix=prefix, input_shape=input_shape,
                                         output_names=out_names)
            paths = {"symbol": res["symbol"], "params": res["params"]}
        else:
            path = os.path.join(staging, prefix + (".int8.onnx" if dtype == "int8" else ".onnx"))
            _export_onnx(model, block, path, input_shape, out_names, slice_spec, dtype)
            paths = {"onnx": path}
        verification = _verify(model, block, fmt, paths, data_dir, verify_count, dtype) if verify else None
        paths = {role: _move_into(p, out_dir) for role, p in paths.items()}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    card = model.card
    meta = exporters.write_metadata(
        out_dir, model_name=card.name, version=_version(),
        files={role: os.path.relpath(p, out_dir) for role, p in paths.items()}, classes=[str(c) for c in card.classes],
        input_spec={"name": "data", "shape": ["N"] + list(input_shape[1:]), "dtype": "float32",
                    "range": list(card.input_range) if input_shape[1:] == card.input_shape else None,
                    "slice": slice_spec or _whole_net(model), "outputs": out_names},
        preprocessing=card.preprocessing, verification=verification, dtype=dtype)
    files = [{"path": p, "bytes": os.path.getsize(p), "sha256": sha256_file(p)} for p in paths.values()]
    return {"files": files, "metadata": meta, "verification": verification}


def _staging_folder(out_dir):
    """A hidden folder inside ``out_dir`` (created) where an export is written and verified before it
    replaces an earlier one: a failed export leaves ``out_dir`` as it was."""
    from capszoo.exporters._mxnet import _makedirs

    _makedirs(out_dir)
    try:
        return tempfile.mkdtemp(prefix=".capszoo-export-", dir=out_dir)
    except OSError as exc:
        raise ExportError(f"cannot write in {out_dir}: {exc.strerror or exc}; choose a folder you can write to") \
            from None


def _move_into(path, out_dir):
    dest = os.path.join(out_dir, os.path.basename(path))
    os.replace(path, dest)
    return dest


def _verify(model, block, fmt, paths, data_dir, count, dtype):
    """Reload an export in its runtime; the differences and accuracy, or ExportError past the tolerance."""
    from capszoo import exporters

    x, labels = _verification_inputs(model, block, data_dir, count)
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
    verification["dtype"] = dtype
    # the decoders amplify the capsules' float rounding about 30-fold (capsnet-mnist: capsules within
    # 4.8e-7, reconstructions within 1.4e-5), so an export with a reconstruction gets 5e-5
    limit = 5e-5 if "reconstruction" in block.output_names else 1e-5
    if dtype == "float32" and verification["max_abs_diff"] > limit:
        raise ExportError(f"verification failed: the export differs from capszoo by "
                          f"{verification['max_abs_diff']:.3g} (> {limit:g}): {verification['per_output']}; "
                          "nothing was written")
    return verification


def _version():
    from . import __version__
    return __version__


def _whole_net(model):
    names = list(getattr(model.net, "subnet_names", ()))
    return f"{names[0]}:{names[-1]}" if names else None


def _weights_sha256(model):
    from ._weights import sha256_file
    path = getattr(model, "weights_path", None)
    return sha256_file(path) if path and os.path.isfile(path) else None


def onnx_metadata(model, block, input_shape, out_names, slice_spec):
    """``metadata_props``, doc strings and input denotation of the ONNX export of ``block`` (the whole
    net of ``model`` or a slice), as keyword arguments of :func:`capszoo.exporters.export_onnx`.

    Keys: ``model_name``, ``display_name``, ``description``, ``model_author``, ``model_license``,
    ``reference``, ``classes`` (JSON), ``input`` (JSON: name, shape, dtype, range, layout),
    ``preprocessing`` (JSON), ``outputs`` (JSON names), ``output_meanings`` (JSON), ``slice``,
    ``weights_file``, ``weights_sha256``, ``capszoo_version`` and, when the input is the image,
    ONNX's image metadata (``Image.BitmapPixelFormat`` Gray8, ``Image.ColorSpaceGamma`` Linear,
    ``Image.NominalPixelRange`` Normalized_0_1) with the input denoted ``IMAGE``.
    """
    card = model.card
    image = tuple(input_shape[1:]) == tuple(card.input_shape)
    pre = dict(card.preprocessing) if not isinstance(card.preprocessing, str) else card.preprocessing
    shape = ["N"] + list(input_shape[1:])
    if image:
        input_doc = (f"digit images, float32 {shape} in [{card.input_range[0]:g}, {card.input_range[1]:g}]: "
                     "light ink (1) on a dark background (0), as MNIST; see metadata 'preprocessing'")
    else:
        input_doc = f"what {_previous_stage(model, block.start_name)} computes, float32 {shape}"
    docs = {o: OUTPUT_DOCS.get(o, f"output {o}") for o in out_names}
    if "probabilities" in docs and getattr(card, "arch", "") == "capsnet":
        docs["probabilities"] += " (the lengths of the 10 digit capsules, each in [0, 1); they need not sum to 1)"
    sha = _weights_sha256(model)
    meta = {
        "model_name": card.name, "display_name": card.display_name, "description": card.description,
        "model_author": "capszoo", "model_license": card.license, "reference": card.reference,
        "classes": [str(c) for c in card.classes],
        "input": {"name": "data", "shape": shape, "dtype": "float32", "layout": "NCHW" if image else None,
                  "range": list(card.input_range) if image else None},
        "preprocessing": pre if image else None, "outputs": list(out_names), "output_meanings": docs,
        "slice": slice_spec or _whole_net(model),
        "weights_file": os.path.basename(model.weights_path) if getattr(model, "weights_path", None) else None,
        "weights_sha256": sha, "capszoo_version": _version(),
    }
    if image:
        meta.update({"Image.BitmapPixelFormat": "Gray8", "Image.ColorSpaceGamma": "Linear",
                     "Image.NominalPixelRange": "Normalized_0_1"})
    doc = (f"{card.display_name} ({card.name}){'' if not slice_spec else f', slice {slice_spec}'}: "
           f"{card.description} Input 'data': {input_doc}. Outputs: "
           + "; ".join(f"{o}: {d}" for o, d in docs.items())
           + f". Weights sha256 {sha or 'unknown'}; exported by capszoo {_version()}.")
    return {"model_name": card.name, "metadata": meta, "doc_string": doc, "input_doc": input_doc,
            "output_docs": docs, "input_denotation": "IMAGE" if image else None}


def _calibration_inputs(model, block):
    """The shipped training digits as the block's input: images, or what the model computes before it."""
    from ._precision import as_calibration_batch, calibration_images

    images = calibration_images()
    if images is None:
        raise ExportError("the calibration digits (capszoo/pretrained/calibration-mnist-train-256.npz) are missing "
                          "from the installation; reinstall capszoo to export int8")
    as_calibration_batch(images)   # checks the file's images
    return slice_inputs(model, block, images)


def _export_onnx(model, block, path, input_shape, out_names, slice_spec, dtype):
    """The ONNX export of ``block`` to ``path``, with its metadata; int8 through a float32 file beside it."""
    from capszoo import exporters

    kwargs = onnx_metadata(model, block, input_shape, out_names, slice_spec)
    if dtype == "float32":
        return exporters.export_onnx(block, path, input_shape=input_shape, output_names=out_names, **kwargs)
    with tempfile.TemporaryDirectory(prefix="capszoo-export-") as tmp:
        fp32 = os.path.join(tmp, "float32.onnx")
        exporters.export_onnx(block, fp32, input_shape=input_shape, output_names=out_names, **kwargs)
        return exporters.quantize_onnx(fp32, path, _calibration_inputs(model, block))["path"]
