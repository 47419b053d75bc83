"""`capszoo export` end to end: formats, slices, --verify figures, metadata, bad input."""
import json
import os

import pytest
from click.testing import CliRunner

from capszoo.cli import main


@pytest.fixture
def run(seeded_weights, mnist_dir):
    def _run(*args):
        return CliRunner().invoke(main, ["export", "capsnet-mnist", "--weights", seeded_weights,
                                         "--data-dir", str(mnist_dir), *args])
    return _run


def test_onnx_whole_net_verified(run, tmp_path):
    r = run("--format", "onnx", "-o", str(tmp_path), "--verify", "--verify-count", "100")
    assert r.exit_code == 0, r.output
    assert "verified in onnxruntime" in r.output and "test accuracy" in r.output
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["model_name"] == "capsnet-mnist"
    assert meta["verification"]["max_abs_diff"] < 1e-5 and meta["verification"]["num_inputs"] == 100
    assert [f["name"] for f in meta["files"]] == ["capsnet-mnist.onnx"]
    assert meta["input"]["outputs"] == ["probabilities", "capsule", "reconstruction"]


@pytest.mark.parametrize("spec,files,outputs", [
    ("ReLUConv1:Pick", ["capsnet-mnist-ReLUConv1-Pick-symbol.json", "capsnet-mnist-ReLUConv1-Pick-0000.params"],
     ["capsule"]),
    ("Reconstruct", ["capsnet-mnist-Reconstruct-symbol.json", "capsnet-mnist-Reconstruct-0000.params"],
     ["reconstruction"]),
])
def test_mxnet_slices_verified(run, tmp_path, spec, files, outputs):
    r = run("--format", "mxnet", "--slice", spec, "-o", str(tmp_path), "--verify", "--verify-count", "50")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path)) == sorted(files + ["metadata.json"])
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["input"]["outputs"] == outputs and meta["verification"]["max_abs_diff"] < 1e-5
    # export again over the existing files works
    r = run("--format", "mxnet", "--slice", spec, "-o", str(tmp_path))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,message", [
    (["--format", "tflite"], "Invalid value for '--format'"),
    (["--format", "onnx", "--slice", "Conv9"], "no sub-net 'Conv9'"),
    (["--format", "onnx", "--slice", "Pick:ReLUConv1"], "reversed"),
])
def test_bad_export_options(run, tmp_path, args, message):
    r = run(*args, "-o", str(tmp_path / "out"))
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_file_in_the_way(run, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    r = run("--format", "onnx", "-o", str(blocker / "sub"))
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "Traceback" not in r.output
    assert blocker.read_text() == "x"


def test_an_export_that_fails_verification_leaves_the_folder_as_it_was(run, tmp_path, monkeypatch):
    import mxnet as mx
    from capszoo import exporters

    r = run("--format", "mxnet", "--slice", "Reconstruct", "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_export = exporters.export_mxnet

    def export_then_corrupt(*args, **kwargs):
        res = real_export(*args, **kwargs)
        params = mx.nd.load(res["params"])
        first = sorted(params)[0]
        params[first] = params[first] + 0.01
        mx.nd.save(res["params"], params)
        return res

    monkeypatch.setattr(exporters, "export_mxnet", export_then_corrupt)
    r = run("--format", "mxnet", "--slice", "Reconstruct", "-o", str(tmp_path), "--verify", "--verify-count", "20")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "verification failed: the export differs from capszoo by" in r.output and "nothing was written" in r.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # no staging folder left either
