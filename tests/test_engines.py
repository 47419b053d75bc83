"""The engine of a model's whole-net calls: ``backend="auto"`` runs small batches on onnxruntime (with the
model's current weights), larger ones on MXNet; ``"mxnet"`` and ``"onnxruntime"`` force one."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

import capszoo
from capszoo.errors import InvalidInputError


@pytest.fixture(scope="module")
def digits(mnist_test):
    from capszoo._preprocess import to_batch
    images, labels = mnist_test
    return to_batch(list(images[:40])), labels[:40]


@pytest.fixture(scope="module")
def mxnet_model():
    return capszoo.load("capsnet-mnist", backend="mxnet")


def test_auto_picks_onnxruntime_for_small_batches_only():
    model = capszoo.load("capsnet-mnist")
    assert model.backend == "auto" and capszoo.ORT_MAX_BATCH == 8
    assert [model.engine_for(b) for b in (1, 8, 9, 128)] == ["onnxruntime", "onnxruntime", "mxnet", "mxnet"]
    forced = capszoo.load("capsnet-mnist", backend="onnxruntime")
    assert [forced.engine_for(b) for b in (1, 500)] == ["onnxruntime", "onnxruntime"]
    assert [capszoo.load("capsnet-mnist", backend="mxnet").engine_for(b) for b in (1, 500)] == ["mxnet", "mxnet"]


def test_engines_agree_on_real_digits(digits, mxnet_model):
    x, labels = digits
    model = capszoo.load("capsnet-mnist")
    for n in (1, 5, 8):
        got, want = model.run(x[:n]), mxnet_model.run(x[:n])
        assert [o.shape for o in got] == [(n, 10), (n, 16), (n, 1, 28, 28)]
        assert [float(np.abs(a - b).max()) for a, b in zip(got, want)] < [1e-5, 1e-5, 1e-5]
    assert model._ort is not None   # the small batches did run on onnxruntime
    p, c, r = model.run(x, batch_size=8)   # 40 images in chunks of 8: onnxruntime, chunked
    assert p.shape == (40, 10) and float(np.abs(p - mxnet_model.run(x)[0]).max()) < 1e-5
    assert (p.argmax(1) == labels).mean() >= 0.95
    probs, caps, recos = model.run(mx.nd.array(x[:3]), need_reco=False)   # an NDArray batch
    assert recos is None and float(np.abs(probs - mxnet_model.run(x[:3])[0]).max()) < 1e-5
    # the whole API on one image goes through the same engine
    assert model(x[0, 0]) == int(mxnet_model.predict(x[:1]).argmax())


def test_onnxruntime_follows_changed_weights(digits):
    x = digits[0][:4]
    model = capszoo.load("capsnet-mnist")
    before = model.run(x)[0]
    first = model._ort[0]
    for p in model.net.collect_params().values():
        p.set_data(p.data() * 1.02)
    after = model.run(x)[0]
    assert model._ort[0] is not first   # rebuilt from the new weights
    mx_after = capszoo.load("capsnet-mnist", backend="mxnet")
    for p in mx_after.net.collect_params().values():
        p.set_data(p.data() * 1.02)
    assert float(np.abs(after - before).max()) > 1e-3
    assert float(np.abs(after - mx_after.run(x)[0]).max()) < 1e-5
    model.run(x)
    assert model._ort[0] is not first and model._ort[0] is model._ort[0]


@pytest.mark.parametrize("kwargs,message", [
    (dict(dtype="int8"), r"backend='onnxruntime' cannot run dtype 'int8' \(it runs float32\); use backend='mxnet'"),
    (dict(ctx="cpu:0,cpu:1"), r"cannot run ctx \['cpu\(0\)', 'cpu\(1\)'\] \(it runs on one CPU\)"),
    (dict(routing_iterations=2), r"cannot run routing_iterations=2 \(its graph unrolls 3\)"),
])
def test_forced_onnxruntime_that_cannot_run(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        capszoo.load("capsnet-mnist", backend="onnxruntime", **kwargs)
    model = capszoo.load("capsnet-mnist", **kwargs)   # auto falls back to MXNet for every batch
    assert model.engine_for(1) == "mxnet"


def test_bad_backend_and_batches(mxnet_model):
    with pytest.raises(InvalidInputError, match=r"unknown backend 'tpu'; use one of: auto, mxnet, onnxruntime"):
        capszoo.load("capsnet-mnist", backend="tpu")
    with pytest.raises(InvalidInputError, match=r"a batch must have shape \(N, 1, 28, 28\), got \(2, 28, 28\)"):
        mxnet_model.run(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(InvalidInputError, match=r"got list"):
        mxnet_model.run([[0.0]])
    with pytest.raises(InvalidInputError, match=r"numpy array or an mxnet NDArray, got"):
        class Fake:
            shape = (1, 1, 28, 28)
        mxnet_model.run(Fake())
    with pytest.raises(InvalidInputError, match="empty batch"):
        capszoo.load("capsnet-mnist").run(np.zeros((0, 1, 28, 28), np.float32))


def test_classify_backend_mxnet_never_touches_onnxruntime(monkeypatch, digit_files):
    """``capszoo classify --backend mxnet`` runs every batch on MXNet, small ones included; with --weights
    (which keeps classify off its MXNet-free path) the default lets the model pick onnxruntime."""
    from click.testing import CliRunner
    from capszoo import _ort
    from capszoo.cli import main
    from capszoo._hub import resolve_weights

    built = []
    real = _ort.OnnxRuntimeNet

    def spy(*args, **kwargs):
        built.append(kwargs.get("arrays") is not None)
        return real(*args, **kwargs)
    monkeypatch.setattr(_ort, "OnnxRuntimeNet", spy)
    runner = CliRunner()
    r = runner.invoke(main, ["classify", "capsnet-mnist", *digit_files[:2], "--backend", "mxnet"])
    assert r.exit_code == 0, r.output
    assert built == []
    weights = str(resolve_weights(capszoo.get_card("capsnet-mnist")))
    r2 = runner.invoke(main, ["classify", "capsnet-mnist", *digit_files[:2], "--weights", weights])
    assert r2.exit_code == 0, r2.output
    assert built == [True] and r2.output == r.output   # the model's engine, fed its net's arrays
