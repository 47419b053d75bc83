"""int8 ONNX: onnxruntime's static quantization of a float32 export, calibrated on real inputs.

:func:`quantize_onnx` writes a QDQ graph (``QuantizeLinear``/``DequantizeLinear`` pairs around
the quantized layers, which onnxruntime fuses into integer kernels at load time and which other
runtimes read as well):

* the layers with weights are quantized: ``Conv``, ``ConvTranspose`` and ``Gemm``, weights int8
  per output channel, activations uint8 with min/max ranges measured on the calibration inputs;
* a ``MatMul`` of two activations (capsule routing: prediction vectors times coupling
  coefficients, agreement) stays float32: its ranges change from image to image and the
  routing's softmax amplifies their rounding.  A ``MatMul`` with a weight stays float32 too:
  onnxruntime's integer MatMul takes one scale per weight, not one per output channel, and it
  is a small part of the work;
* before quantizing, the graph is prepared as onnxruntime recommends (shape inference, constant
  folding of weight reshapes and transposes).

A graph with none of those layers (a slice of routing only, say) cannot be quantized; that is an
:class:`~capszoo.errors.ExportError` that says so.  The file is written atomically and keeps the
float32 export's ``metadata_props``, with ``dtype`` ``int8`` and the quantization settings added.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from capszoo._io import atomic_write_bytes
from capszoo.errors import ExportError

__all__ = ["quantize_onnx", "QUANTIZED_OPERATORS", "CALIBRATION_BATCH"]

#: The ONNX operators :func:`quantize_onnx` quantizes (when they have a constant weight).
QUANTIZED_OPERATORS = ("Conv", "ConvTranspose", "Gemm")
#: Calibration inputs are fed in batches of this size.
CALIBRATION_BATCH = 32


def _first_line(exc, limit=300):
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _constant_tensors(graph):
    """Names of the tensors computed from initializers and constants only."""
    const = {i.name for i in graph.initializer}
    for nd in graph.node:
        if nd.op_type == "Constant" or (nd.input and all(i in const for i in nd.input if i)):
            const.update(nd.output)
    return const


def _quantizable(graph):
    """Names of the nodes :func:`quantize_onnx` quantizes: QUANTIZED_OPERATORS with a constant weight."""
    const = _constant_tensors(graph)
    return [nd.name for nd in graph.node
            if nd.op_type in QUANTIZED_OPERATORS and len(nd.input) > 1 and nd.input[1] in const]


class _Reader:
    """onnxruntime's CalibrationDataReader over a float32 array, in batches."""

    def __init__(self, name, x):
        self.batches = iter([{name: x[i:i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self.batches, None)


def _calibration_array(calibration, graph):
    x = np.ascontiguousarray(calibration, dtype=np.float32)
    dims = graph.input[0].type.tensor_type.shape.dim
    expected = tuple(d.dim_value for d in dims[1:])
    if x.ndim != len(dims) or tuple(x.shape[1:]) != expected or len(x) < 1:
        raise ExportError(f"calibration inputs of shape {x.shape} do not fit the graph's input "
                          f"(N, {', '.join(map(str, expected))}); pass a batch of real inputs of that shape")
    if not np.isfinite(x).all():
        raise ExportError("calibration inputs hold NaN or infinite values; pass real inputs")
    return x


def _copy_docs(src, dst):
    """The inputs' and outputs' doc strings and type denotations of graph ``src`` onto ``dst``
    (onnxruntime's quantizer rebuilds them without)."""
    infos = {v.name: v for v in list(src.input) + list(src.output)}
    for v in list(dst.input) + list(dst.output):
        if v.name in infos:
            v.doc_string = infos[v.name].doc_string
            v.type.denotation = infos[v.name].type.denotation
            for d, sd in zip(v.type.tensor_type.shape.dim, infos[v.name].type.tensor_type.shape.dim):
                d.denotation = sd.denotation
    dst.doc_string = src.doc_string


def quantize_onnx(fp32_path, out_path, calibration, *, nodes_to_exclude=()):
    """Write an int8 (QDQ) copy of the float32 ONNX file ``fp32_path`` to ``out_path``; returns
    ``{"path", "quantized_nodes", "calibration_inputs"}``.

    Parameters
    ----------
    calibration : numpy.ndarray
        Real inputs of the graph's input shape (for the CapsNet, training digits as float32
        ``(N, 1, 28, 28)`` in [0, 1]); activation ranges are their min/max.
    nodes_to_exclude : sequence of str
        Node names to keep in float32.

    Raises
    ------
    ExportError
        No layer to quantize, calibration inputs of the wrong shape, onnxruntime's quantizer
        failing, or a file that cannot be written.
    """
    import onnx
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ExportError("int8 export needs onnxruntime's quantization tools: pip install onnxruntime") from None
    fp32 = onnx.load(os.fspath(fp32_path))
    x = _calibration_array(calibration, fp32.graph)
    with tempfile.TemporaryDirectory(prefix="capszoo-int8-") as tmp:
        pre, out = os.path.join(tmp, "prepared.onnx"), os.path.join(tmp, "int8.onnx")
        try:
            # onnxruntime's preparation; symbolic shape inference (it needs sympy) adds nothing here:
            # every shape but the batch is static
            quant_pre_process(os.fspath(fp32_path), pre, skip_symbolic_shape=True)
            nodes = [n for n in _quantizable(onnx.load(pre).graph) if n not in set(nodes_to_exclude)]
            if not nodes:
                raise ExportError(f"{os.path.basename(os.fspath(fp32_path))} has no layer that int8 quantization "
                                  f"applies to ({', '.join(QUANTIZED_OPERATORS)} with a weight); export it in "
                                  "float32")
            reader = type("Reader", (_Reader, CalibrationDataReader), {})(fp32.graph.input[0].name, x)
            quantize_static(pre, out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax)
            model = onnx.load(out)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001  (onnx and onnxruntime raise many classes)
            raise ExportError(f"onnxruntime cannot quantize {os.path.basename(os.fspath(fp32_path))}: "
                              f"{_first_line(exc)}; export it in float32") from None
    props = {p.key: p.value for p in fp32.metadata_props}
    props.update({"dtype": "int8", "quantization": json.dumps({
        "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weights": "int8, per channel",
        "activations": "uint8, min/max of the calibration inputs", "calibration_inputs": int(len(x)),
        "quantized_nodes": len(nodes), "operators": list(QUANTIZED_OPERATORS)})})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    _copy_docs(fp32.graph, model.graph)
    model.doc_string = (fp32.doc_string + " " if fp32.doc_string else "") + \
        f"int8: {len(nodes)} layers quantized by onnxruntime (QDQ, calibrated on {len(x)} real inputs)."
    try:
        onnx.checker.check_model(model)
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(out_path))), exist_ok=True)
        atomic_write_bytes(os.fspath(out_path), model.SerializeToString())
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the quantized graph fails the ONNX checker ({_first_line(exc)}); export it in "
                          "float32") from None
    except OSError as exc:
        raise ExportError(f"cannot write {os.fspath(out_path)}: {exc.strerror or exc}; choose a folder you can "
                          "write to") from None
    return {"path": os.fspath(out_path), "quantized_nodes": nodes, "calibration_inputs": int(len(x))}
