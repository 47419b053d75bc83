"""The onnxruntime path of ``capszoo classify``: the shipped weight-less graph, parity with
MXNet on real digits, no ``import mxnet`` on the way, and its errors."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import capszoo
from capszoo import _ort
from capszoo import get_card
from capszoo.cli import main
from capszoo.errors import InvalidInputError, WeightsFormatError

CARD = get_card("capsnet-mnist")


@pytest.fixture(scope="module")
def published():
    from capszoo import resolve_weights
    return resolve_weights(CARD)


@pytest.fixture(scope="module")
def ort_net(published):
    return _ort.OnnxRuntimeNet(CARD, published)


@pytest.mark.parametrize("name", capszoo.list_models())
def test_shipped_graph_is_a_fresh_build_of_the_net(name):
    card = capszoo.get_card(name)
    assert card.runtime_graph == f"{name}.graph.onnx"   # every entry ships one
    shipped = _ort.runtime_graph_bytes(card)
    assert shipped == _ort.build_runtime_graph(card), \
        f"capszoo/pretrained/{card.runtime_graph} is stale: run scripts/make_runtime_graph.py"
    import onnx

    model = onnx.load_from_string(shipped)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer
             if t.data_location == onnx.TensorProto.EXTERNAL}
    from capszoo._weights import param_shapes
    assert inits == param_shapes(card.build())  # every parameter, by its .params name, without data
    assert all(not t.raw_data for t in model.graph.initializer if t.name in inits)
    assert [o.name for o in model.graph.output] == list(card.outputs)
    assert len(shipped) < 64_000


def test_outputs_equal_mxnet_on_real_digits(ort_net, mnist_test):
    images, labels = mnist_test
    from capszoo._preprocess import to_batch
    x = to_batch(list(images[:200]))
    probs, caps, recos = capszoo.load("capsnet-mnist", backend="mxnet").run(x, need_reco=True)
    out = ort_net(x, batch_size=64)
    p2, c2, r2 = out["probabilities"], out["capsule"], out["reconstruction"]
    assert p2.shape == (200, 10) and c2.shape == (200, 16) and r2.shape == (200, 1, 28, 28)
    assert float(np.abs(p2 - probs).max()) < 1e-5
    assert float(np.abs(c2 - caps).max()) < 1e-5
    # the decoder (Dense 16-512-1024-784) amplifies the capsules' float rounding about 30-fold: with the
    # weights of 2026-12-02, capsules within 4.8e-7 and reconstructions within 1.4e-5 on 1,000 test digits
    assert float(np.abs(r2 - recos).max()) < 5e-5
    assert (p2.argmax(1) == probs.argmax(1)).all()
    assert (p2.argmax(1) == labels[:200]).mean() >= 0.98
    some = ort_net(x[:5], outputs=["probabilities", "capsule"])
    assert sorted(some) == ["capsule", "probabilities"] and np.allclose(some["probabilities"], p2[:5], atol=1e-6)


def test_bad_batches_are_clean_errors(ort_net):
    with pytest.raises(InvalidInputError, match=r"shape \(N, 1, 28, 28\), got \(2, 28, 28\)"):
        ort_net(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(InvalidInputError, match="empty batch"):
        ort_net(np.zeros((0, 1, 28, 28), np.float32))


def test_weights_that_do_not_fit_the_graph(tmp_path):
    import mxnet as mx
    from capszoo.models.capsnet.net import CapsNet

    net = CapsNet()
    params = net._collect_params_with_prefix()
    arrays = {k: mx.nd.zeros(p.shape) for k, p in params.items()}
    arrays["Reconstruct.2.bias"] = mx.nd.zeros((783,))
    bad = tmp_path / "wrong-shape.params"
    mx.nd.save(str(bad), arrays)
    with pytest.raises(WeightsFormatError, match=r"wrong-shape.params do not fit the capsnet-mnist graph"):
        _ort.OnnxRuntimeNet(CARD, bad)
    del arrays["Reconstruct.2.bias"]
    short = tmp_path / "missing.params"
    mx.nd.save(str(short), arrays)
    with pytest.raises(WeightsFormatError, match=r"missing.params do not fit the capsnet-mnist graph"):
        _ort.OnnxRuntimeNet(CARD, short)
    junk = tmp_path / "junk.params"
    junk.write_bytes(b"not a params file")
    with pytest.raises(WeightsFormatError):
        _ort.OnnxRuntimeNet(CARD, junk)


def test_card_without_graph_and_missing_onnxruntime(monkeypatch, published):
    bare = dataclasses.replace(CARD, runtime_graph=None)
    with pytest.raises(InvalidInputError, match="has no onnxruntime graph; use backend='mxnet'"):
        _ort.runtime_graph_bytes(bare)
    gone = dataclasses.replace(CARD, runtime_graph="no-such.graph.onnx")
    with pytest.raises(InvalidInputError, match="no-such.graph.onnx of capsnet-mnist is missing"):
        _ort.runtime_graph_bytes(gone)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert _ort.onnxruntime_available() is False
    with pytest.raises(InvalidInputError, match="pip install onnxruntime"):
        _ort.OnnxRuntimeNet(CARD, published)


# -- the CLI ------------------------------------------------------------------------------


def test_classify_backends_agree(digit_files, mnist_test):
    runner = CliRunner()
    outs = {}
    for backend in ("onnxruntime", "mxnet", "auto"):
        r = runner.invoke(main, ["classify", "capsnet-mnist", *digit_files, "--json", "--top", "3",
                                 "--backend", backend])
        assert r.exit_code == 0, r.output
        outs[backend] = json.loads(r.output)
    labels = [int(v) for v in mnist_test[1][:3]]
    for backend, d in outs.items():
        assert [e["class"] for e in d] == labels, backend
        assert all(len(e["top"]) == 3 for e in d)
    for a, b in zip(outs["onnxruntime"], outs["mxnet"]):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert max(abs(t["probability"] - u["probability"]) for t, u in zip(a["top"], b["top"])) < 1e-5


@pytest.mark.parametrize("extra, named", [
    (["--dtype", "int8"], "dtype 'int8' (it runs float32)"),
    (["--ctx", "cpu:0,cpu:1"], "ctx 'cpu:0,cpu:1' (it runs on one CPU)"),
])
def test_backend_onnxruntime_refuses_what_it_cannot_do(digit_files, extra, named):
    r = CliRunner().invoke(main, ["classify", "capsnet-mnist", digit_files[0], "--backend", "onnxruntime", *extra])
    assert r.exit_code == 1, r.output
    assert named in r.output and "use backend='mxnet'" in r.output and "Traceback" not in r.output


def test_backend_onnxruntime_runs_the_users_weights(digit_files, seeded_weights):
    """A weights file of the user's runs on onnxruntime too (the graph gets its arrays), with MXNet's numbers."""
    outs = {}
    for backend in ("onnxruntime", "mxnet"):
        r = CliRunner().invoke(main, ["classify", "capsnet-mnist", *digit_files, "--weights", seeded_weights,
                                      "--backend", backend, "--json", "--top", "10"])
        assert r.exit_code == 0, r.output
        outs[backend] = [{t["class"]: t["probability"] for t in e["top"]} for e in json.loads(r.output)]
    for a, b in zip(outs["onnxruntime"], outs["mxnet"]):
        assert max(abs(a[k] - b[k]) for k in a) < 1e-5


def test_auto_falls_back_to_mxnet_without_onnxruntime(monkeypatch, digit_files, mnist_test):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    r = CliRunner().invoke(main, ["classify", "capsnet-mnist", digit_files[0], "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)[0]["class"] == int(mnist_test[1][0])
    r = CliRunner().invoke(main, ["classify", "capsnet-mnist", digit_files[0], "--backend", "onnxruntime"])
    assert r.exit_code == 1 and "onnxruntime is not installed" in r.output


_PROBE = """
import sys
from capszoo.cli import main
try:
    main(args=sys.argv[1:], standalone_mode=False)
finally:
    print("MXNET_IMPORTED" if "mxnet" in sys.modules else "NO_MXNET")
"""


def test_classify_and_import_do_not_import_mxnet(digit_files):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", "import sys, capszoo; capszoo.list_models(); "
                        "capszoo.get_card('capsnet-mnist'); print('mxnet' in sys.modules)"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    r = subprocess.run([sys.executable, "-c", _PROBE, "classify", "capsnet-mnist", *digit_files],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "NO_MXNET" and len(lines) == 4 and all("(p=" in ln for ln in lines[:3])
    r = subprocess.run([sys.executable, "-c", _PROBE, "classify", "capsnet-mnist", *digit_files, "--backend", "mxnet"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "MXNET_IMPORTED", r.stderr
    # another entry, its weights from the checkout's weights/: its own shipped graph, no MXNet either
    r = subprocess.run([sys.executable, "-c", _PROBE, "classify", "lenet-mnist", *digit_files],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "NO_MXNET", r.stderr


def test_lazy_public_names():
    assert {"CapsNet", "NetSlice", "train", "TrainResult", "CapsNetTrainingNet", "SUBNET_NAMES"} <= set(dir(capszoo))
    assert all(hasattr(capszoo, name) for name in capszoo.__all__)
    assert capszoo.SUBNET_NAMES == CARD.subnets
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        capszoo.no_such_thing  # noqa: B018
