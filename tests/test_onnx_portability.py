"""capszoo's ONNX exports in other ONNX runtimes: same outputs as onnxruntime, at batch 1 and then at a
larger batch in the same loaded model, on real MNIST digits.

Runtimes: onnxruntime, the ONNX reference evaluator and, when installed (the ``test`` extra installs
them), OpenVINO, OpenCV's DNN module and tract.  ``scripts/onnx_runtimes.py`` runs every registered
model; here the published capsnet-mnist with its two slices, and the transposed-convolution decoder.
"""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from capszoo.errors import ExportError  # noqa: E402
from capszoo.exporters import RUNTIMES, compare_runtimes, export_onnx, load_runtime, runtime_version  # noqa: E402

ATOL = 1e-5
DIGITS = 3
INSTALLED = [r for r in RUNTIMES if runtime_version(r) is not None]
FAST = [r for r in INSTALLED if r != "onnx-reference"]


@pytest.fixture(scope="module")
def flagship(mnist_test, tmp_path_factory):
    """The published capsnet-mnist and its two slices, exported, with their inputs: {label: (path, x)}."""
    import capszoo
    from capszoo._export import slice_inputs

    model = capszoo.load("capsnet-mnist", backend="mxnet")
    root = tmp_path_factory.mktemp("portable")
    out = {}
    for spec in (None, "ReLUConv1:Pick", "Reconstruct"):
        block = model.net if spec is None else model.take(spec)
        shape = (1,) + tuple(model.card.input_shape if spec is None else block.input_shape)
        path = export_onnx(block, root / f"{spec or 'net'}.onnx".replace(":", "-"), input_shape=shape,
                           output_names=list(block.output_names))
        out[spec or "net"] = (str(path), slice_inputs(model, block, mnist_test[0][:DIGITS]))
    return out


@pytest.mark.parametrize("runtime", INSTALLED)
@pytest.mark.parametrize("part", ["net", "ReLUConv1:Pick", "Reconstruct"])
def test_runtime_agrees_with_onnxruntime(flagship, runtime, part):
    path, x = flagship[part]
    [row] = compare_runtimes(path, x, runtimes=[runtime], atol=ATOL)
    assert row["status"] == "ok", row
    assert row["batch"] == DIGITS and row["version"] == runtime_version(runtime)
    assert row["diff_1"] <= ATOL and row["diff_n"] <= ATOL
    run = load_runtime(runtime, path, probe=x[:1])
    shapes = [o.shape for o in run(x)]
    assert shapes == {"net": [(DIGITS, 10), (DIGITS, 16), (DIGITS, 1, 28, 28)], "ReLUConv1:Pick": [(DIGITS, 16)],
                      "Reconstruct": [(DIGITS, 1, 28, 28)]}[part]


def test_the_required_runtimes_are_here():
    assert {"onnxruntime", "onnx-reference"} <= set(INSTALLED)


@pytest.mark.skipif(not FAST, reason="no runtime besides the reference evaluator is installed")
def test_transposed_convolution_decoder(mnist_test, tmp_path):
    """The deconv decoder's ConvTranspose in the runtimes (not the reference evaluator: its Python loops
    take minutes on it; scripts/onnx_runtimes.py runs it there)."""
    import capszoo
    from capszoo import load_recipe
    from capszoo import initialize_net

    card = capszoo.get_card("capsnet-mnist-deconv")
    net = initialize_net(card.build(), load_recipe(card.recipe), [mx.cpu()], 0)
    path = export_onnx(net, tmp_path / "deconv.onnx", output_names=list(card.outputs))
    assert sum(n.op_type == "ConvTranspose" for n in onnx.load(path).graph.node) == 2
    x = (mnist_test[0][:DIGITS].astype(np.float32) / 255)[:, None]
    rows = compare_runtimes(path, x, runtimes=FAST, atol=ATOL)
    assert [r["status"] for r in rows] == ["ok"] * len(FAST), rows
    assert all(r["diff_1"] <= ATOL and r["diff_n"] <= ATOL for r in rows)


def test_graph_has_no_shape_computation(flagship):
    """No tensor is derived from the input's shape: runtimes that fold such chains at the first input
    they see (OpenCV) would fix the batch size."""
    for path, _ in flagship.values():
        ops = [n.op_type for n in onnx.load(path).graph.node]
        assert not {"Shape", "ConstantOfShape", "Expand", "Unsqueeze", "Size"} & set(ops), ops
        for n in onnx.load(path).graph.node:
            if n.op_type == "Reshape":    # every target is a constant: fixed sizes, 0 and at most one -1
                assert n.input[1].endswith(("shape", "split", "_shape")), n.input[1]


def _refused_model(path):
    """data -> Relu (node 'first_relu') -> com.microsoft Gelu (node 'the_gelu'): onnxruntime runs it, the
    reference evaluator has no such operator."""
    nodes = [helper.make_node("Relu", ["data"], ["r"], name="first_relu"),
             helper.make_node("Gelu", ["r"], ["g"], name="the_gelu", domain="com.microsoft"),
             helper.make_node("Add", ["g", "bias"], ["out"], name="last_add")]
    g = helper.make_graph(nodes, "refused", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])],
                          initializer=[numpy_helper.from_array(np.ones(4, np.float32), "bias")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    onnx.save(m, path)
    return str(path)


def test_refusal_names_runtime_operator_and_node(tmp_path):
    path = _refused_model(tmp_path / "gelu.onnx")
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    assert load_runtime("onnxruntime", path)(x)[0].shape == (2, 4)
    with pytest.raises(ExportError) as info:
        load_runtime("onnx-reference", path, probe=x[:1])
    msg = str(info.value)
    assert msg.startswith(f"onnx-reference {runtime_version('onnx-reference')} cannot run gelu.onnx: "
                          "operator Gelu (node 'the_gelu'): ")
    assert "onnxruntime" in msg          # the remedy
    [row] = compare_runtimes(path, x, runtimes=["onnx-reference"])
    assert row["status"] == "refused" and row["diff_1"] is None and "the_gelu" in row["error"]


def test_unknown_and_missing_runtimes(tmp_path, monkeypatch):
    path = _refused_model(tmp_path / "gelu.onnx")
    with pytest.raises(ExportError, match="unknown ONNX runtime 'tvm'; runtimes: onnxruntime, onnx-reference"):
        load_runtime("tvm", path)
    import capszoo.exporters._runtimes as rt
    real = rt.runtime_version
    monkeypatch.setattr(rt, "runtime_version", lambda name: None if name == "openvino" else real(name))
    with pytest.raises(ExportError, match="openvino is not installed; pip install openvino"):
        load_runtime("openvino", path)
    [row] = compare_runtimes(path, np.zeros((2, 4), np.float32), runtimes=["openvino"])
    assert (row["status"], row["version"], row["diff_1"]) == ("not installed", None, None)
