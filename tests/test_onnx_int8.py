"""int8 ONNX: `capszoo export NAME --format onnx --dtype int8`, onnxruntime's static quantization
calibrated on the shipped training digits; its accuracy against the float32 export's."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("mxnet")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from capszoo.errors import ExportError, InvalidInputError  # noqa: E402

DIGITS = 300


def _probabilities(path, x):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["probabilities"], {"data": x[i:i + 100]})[0] for i in range(0, len(x), 100)])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """capsnet-mnist exported in float32 and int8 (with the command line) into one folder."""
    from click.testing import CliRunner

    from capszoo.cli import main

    out = tmp_path_factory.mktemp("int8")
    runner = CliRunner()
    r32 = runner.invoke(main, ["export", "capsnet-mnist", "--format", "onnx", "-o", str(out)])
    r8 = runner.invoke(main, ["export", "capsnet-mnist", "--format", "onnx", "--dtype", "int8", "-o", str(out)])
    assert r32.exit_code == 0 and r8.exit_code == 0, (r32.output, r8.output)
    assert "capsnet-mnist.int8.onnx" in r8.output
    return str(out / "capsnet-mnist.onnx"), str(out / "capsnet-mnist.int8.onnx"), str(out / "metadata.json")


def test_int8_graph(exports):
    fp32, int8, meta = exports
    model = onnx.load(int8)
    ops = [n.op_type for n in model.graph.node]
    # 5 layers quantized (2 convolutions, 3 dense layers of the decoder); the routing stays float32
    props = {p.key: p.value for p in model.metadata_props}
    q = json.loads(props["quantization"])
    assert props["dtype"] == "int8" and q["quantized_nodes"] == 5 and q["calibration_inputs"] == 256
    assert ops.count("Conv") == 2 and ops.count("Gemm") == 3 and ops.count("MatMul") == 6
    assert ops.count("DequantizeLinear") >= 10 and "QuantizeLinear" in ops
    assert props["weights_sha256"] == {p.key: p.value for p in onnx.load(fp32).metadata_props}["weights_sha256"]
    assert [o.doc_string for o in model.graph.output] == [o.doc_string for o in onnx.load(fp32).graph.output]
    assert os.path.getsize(int8) < 0.45 * os.path.getsize(fp32)
    with open(meta) as fh:
        assert json.load(fh)["dtype"] == "int8"     # the last export into the folder


def test_int8_accuracy(exports, mnist_test):
    fp32, int8, _ = exports
    images, labels = mnist_test[0][:DIGITS], mnist_test[1][:DIGITS]
    x = (images.astype(np.float32) / 255)[:, None]
    p32, p8 = _probabilities(fp32, x), _probabilities(int8, x)
    acc32, acc8 = float((p32.argmax(1) == labels).mean()), float((p8.argmax(1) == labels).mean())
    agree = float((p32.argmax(1) == p8.argmax(1)).mean())
    print(f"\n{DIGITS} test digits: float32 {100 * acc32:.2f} %, int8 {100 * acc8:.2f} %, "
          f"decisions agree {100 * agree:.2f} %, max |p8 - p32| {np.abs(p8 - p32).max():.3f}")
    assert acc8 >= acc32 - 0.006 and agree >= 0.99
    assert np.abs(p8 - p32).max() < 0.25


def test_int8_refused_where_it_cannot_apply(tmp_path):
    from capszoo import export_model

    with pytest.raises(ExportError, match=r"has no layer that int8 quantization applies to \(Conv, ConvTranspose, "
                                          r"Gemm with a weight\); export it in float32"):
        export_model("capsnet-mnist", fmt="onnx", dtype="int8", slice_spec="DigitCaps:Pick", out_dir=str(tmp_path))
    with pytest.raises(ExportError, match="use --format onnx with --dtype int8"):
        export_model("capsnet-mnist", fmt="mxnet", dtype="int8", out_dir=str(tmp_path / "m"))
    with pytest.raises(InvalidInputError, match="unknown export dtype 'int4'; use one of: float32, int8"):
        export_model("capsnet-mnist", fmt="onnx", dtype="int4", out_dir=str(tmp_path / "m"))
    assert sorted(os.listdir(tmp_path)) == []


def test_bad_calibration_inputs(exports, tmp_path):
    from capszoo.exporters import quantize_onnx

    fp32 = exports[0]
    with pytest.raises(ExportError, match=r"calibration inputs of shape \(4, 28, 28\) do not fit the graph's "
                                          r"input \(N, 1, 28, 28\)"):
        quantize_onnx(fp32, tmp_path / "q.onnx", np.zeros((4, 28, 28), np.float32))
    bad = np.zeros((4, 1, 28, 28), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ExportError, match="NaN or infinite"):
        quantize_onnx(fp32, tmp_path / "q.onnx", bad)
    assert os.listdir(tmp_path) == []
