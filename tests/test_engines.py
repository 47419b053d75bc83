"""The engine of a model's whole-net calls: ``backend="auto"`` runs small batches on onnxruntime (with the
model's current weights), larger ones on MXNet; ``"mxnet"`` and ``"onnxruntime"`` force one."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

import capszoo
from capszoo.errors import InvalidInputError


#: Largest difference allowed between onnxruntime and MXNet (probabilities, capsules, reconstructions).
#: Measured on the first 1,000 MNIST test digits with the shipped weights (AVX2 CPU, batches of 1 and 8
#: on onnxruntime, 8 and 128 on MXNet): 4.2e-7, 5.7e-7 and 1.3e-5 -- float32 rounding of two kernel
#: libraries (MLAS, oneDNN) summing in different orders; the decoder amplifies the capsules' rounding
#: about 25-fold.  The bounds leave a factor ~4 for other CPUs' kernels (AVX-512 sums in other orders),
#: far below what a real fault moves (a wrong weight or op changes probabilities by 1e-3 and more).
ENGINE_ATOL = (2e-6, 2e-6, 5e-5)


def _max_diffs(got, want):
    return [float(np.abs(a - b).max()) for a, b in zip(got, want)]


def _assert_engines_agree(got, want):
    """Each output within its own bound (``got``/``want``: the first 2 or all 3 outputs)."""
    assert 2 <= len(got) == len(want) <= len(ENGINE_ATOL)
    diffs = _max_diffs(got, want)
    assert all(d <= tol for d, tol in zip(diffs, ENGINE_ATOL)), diffs


def test_each_output_is_compared_with_its_own_bound():
    """A difference in any one output fails, the last (reconstructions) included."""
    want = [np.zeros((2, 10), np.float32), np.zeros((2, 16), np.float32), np.zeros((2, 1, 28, 28), np.float32)]
    _assert_engines_agree([w + tol / 2 for w, tol in zip(want, ENGINE_ATOL)], want)
    for k, tol in enumerate(ENGINE_ATOL):
        got = [w.copy() for w in want]
        got[k][1, 0] += 2 * tol
        with pytest.raises(AssertionError):
            _assert_engines_agree(got, want)


@pytest.fixture(scope="module")
def digits(mnist_test):
    from capszoo._preprocess import to_batch
    images, labels = mnist_test
    return to_batch(list(images[:40])), labels[:40]


@pytest.fixture(scope="module")
def mxnet_model():
    return capszoo.load("capsnet-mnist", backend="mxnet")


def test_auto_picks_onnxruntime_at_every_batch_it_can_run(monkeypatch):
    model = capszoo.load("capsnet-mnist")
    assert model.backend == "auto" and capszoo.ORT_MAX_BATCH is None
    assert [model.engine_for(b) for b in (1, 8, 9, 128, 10_000)] == ["onnxruntime"] * 5
    monkeypatch.setattr(capszoo._api, "ORT_MAX_BATCH", 8)   # a cap, if one is ever measured again
    assert [model.engine_for(b) for b in (1, 8, 9, 128)] == ["onnxruntime", "onnxruntime", "mxnet", "mxnet"]
    # what onnxruntime cannot run goes to MXNet under "auto"
    assert capszoo.load("capsnet-mnist", ctx="cpu:0,cpu:1").engine_for(1) == "mxnet"
    forced = capszoo.load("capsnet-mnist", backend="onnxruntime")
    assert [forced.engine_for(b) for b in (1, 500)] == ["onnxruntime", "onnxruntime"]
    assert [capszoo.load("capsnet-mnist", backend="mxnet").engine_for(b) for b in (1, 500)] == ["mxnet", "mxnet"]


def test_engines_agree_on_real_digits(digits, mxnet_model):
    x, labels = digits
    model = capszoo.load("capsnet-mnist")
    for n in (1, 5, 8):
        got, want = model.run(x[:n]), mxnet_model.run(x[:n])
        assert [o.shape for o in got] == [(n, 10), (n, 16), (n, 1, 28, 28)]
        _assert_engines_agree(got, want)
    assert model._ort is not None   # the small batches did run on onnxruntime
    got = model.run(x, batch_size=8)   # 40 images in chunks of 8: onnxruntime, chunked
    assert got[0].shape == (40, 10)
    _assert_engines_agree(got, mxnet_model.run(x))
    assert (got[0].argmax(1) == labels).mean() >= 0.95
    probs, caps, recos = model.run(mx.nd.array(x[:3]), need_reco=False)   # an NDArray batch
    assert recos is None
    _assert_engines_agree((probs, caps), mxnet_model.run(x[:3])[:2])
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
    assert float(np.abs(after - mx_after.run(x)[0]).max()) <= ENGINE_ATOL[0]
    model.run(x)
    assert model._ort[0] is not first and model._ort[0] is model._ort[0]


@pytest.mark.parametrize("name", [n for n in capszoo.list_models() if n != "capsnet-mnist"])
def test_every_entry_runs_on_onnxruntime_with_mxnets_numbers(name, digits, seeded_entry_weights):
    """Every entry ships its graph: ``auto`` runs it on onnxruntime, with MXNet's outputs (published weights,
    else the seeded weights training starts from)."""
    card = capszoo.get_card(name)
    weights = None if card.weights is not None else seeded_entry_weights(name)
    auto, mxnet = (capszoo.load(name, weights=weights, backend=b) for b in ("auto", "mxnet"))
    x, labels = digits[0][:8], digits[1][:8]
    assert auto.engine_for(8) == "onnxruntime"
    got, want = auto.run(x), mxnet.run(x)
    assert auto._ort is not None and [o.shape for o in got] == [o.shape for o in want]
    assert len(got) == len(card.outputs)
    diffs = [float(np.abs(g - w).max()) for g, w in zip(got, want)]
    assert all(d <= tol for d, tol in zip(diffs, ENGINE_ATOL)), diffs
    if card.weights is not None:
        assert (got[0].argmax(1) == labels).mean() >= 0.875


@pytest.mark.parametrize("kwargs,message", [
    pytest.param(dict(dtype="int8"), r"backend='onnxruntime' cannot run dtype 'int8' \(it runs float32\); use "
                 r"backend='mxnet'", marks=pytest.mark.slow),   # int8 calibrates: ~10 s
    (dict(ctx="cpu:0,cpu:1"), r"cannot run ctx 'cpu:0,cpu:1' \(it runs on one CPU\)"),
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
    from capszoo import resolve_weights

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
