"""The NetModel-style API: load, classify, properties, slices, ports, info, errors."""
import mxnet as mx
import numpy as np
import pytest
from PIL import Image

import capszoo
from capszoo.errors import (CapszooError, InvalidInputError, ModelNotFoundError, SubnetNotFoundError,
                            WeightsFormatError)


def test_unknown_model_suggests_nearest():
    with pytest.raises(ModelNotFoundError, match="Did you mean.*capsnet-mnist") as ei:
        capszoo.load("capsnet-mnst")
    assert isinstance(ei.value, LookupError)


def test_unknown_variant_and_dtype():
    with pytest.raises(InvalidInputError, match="unknown variant 'Foo'"):
        capszoo.load("capsnet-mnist", "Foo")
    with pytest.raises(InvalidInputError, match="unsupported dtype 'float64'"):
        capszoo.load("capsnet-mnist", dtype="float64")


def test_training_net_variant_is_uninitialized_with_named_losses():
    tn = capszoo.load("capsnet-mnist", "TrainingNet")
    assert isinstance(tn, capszoo.CapsNetTrainingNet)
    assert tn["ClassLoss"].name.startswith("ClassLoss") and tn["RecoLoss"].name.startswith("RecoLoss")
    assert tn["ClassLoss"].m_plus == 0.9 and tn["ClassLoss"].m_minus == 0.1 and tn["ClassLoss"].lam == 0.5
    assert tn["RecoLoss"].weight == pytest.approx(0.392)
    with pytest.raises(RuntimeError):  # fresh parameters: not initialized
        tn.net["PrimaryCaps"].weight.data()
    tn.initialize()
    cl, rl, probs = tn(mx.nd.random.uniform(shape=(2, 1, 28, 28)), mx.nd.array([3, 5]))
    assert cl.shape == (2,) and rl.shape == (2,) and probs.shape == (2, 10)


def test_uninitialized_evaluation_net():
    net = capszoo.load("capsnet-mnist", "UninitializedEvaluationNet")
    assert isinstance(net, capszoo.CapsNet)
    assert net.routing_iterations == 3
    assert capszoo.load("capsnet-mnist", "UninitializedEvaluationNet", routing_iterations=4).routing_iterations == 4


def test_classify_single_and_batch(seeded_model, mnist_test):
    images, labels = mnist_test
    m = seeded_model
    one = m(images[0])
    assert one in range(10)
    batch = m(images[:5])
    assert isinstance(batch, list) and len(batch) == 5 and batch[0] == one
    probs = m(images[0], prop="Probabilities")
    assert set(probs) == set(range(10)) and all(0 <= p < 1 for p in probs.values())
    assert max(probs, key=probs.get) == one
    top = m(images[0], prop="TopProbabilities", top=3)
    assert len(top) == 3 and top[0][0] == one and top[0][1] >= top[1][1] >= top[2][1]
    cap = m(images[0], prop="Capsule")
    assert cap.shape == (16,) and abs(np.linalg.norm(cap) - probs[one]) < 1e-4
    reco = m(images[0], prop="Reconstruction")
    assert isinstance(reco, Image.Image) and reco.size == (28, 28) and reco.mode == "L"


def test_inputs_files_pil_lists_and_ndarray_agree(seeded_model, mnist_test, tmp_path):
    images, _ = mnist_test
    m = seeded_model
    p = tmp_path / "d.png"
    Image.fromarray(images[1]).save(p)
    ref = m.predict(images[1:2])
    for inp in (str(p), p, Image.open(p), images[1], images[1][:, :, None]):
        got = m.predict([inp])
        assert np.abs(got - ref).max() < 1e-6
    nd = mx.nd.array(images[1:3][:, None] / 255.0)
    assert m(nd) == m(list(images[1:3]))
    with pytest.raises(InvalidInputError, match=r"\(N, 1, 28, 28\)"):
        m(mx.nd.zeros((2, 28, 28)))


def test_bad_calls(seeded_model):
    with pytest.raises(InvalidInputError, match="unknown property 'Foo'"):
        seeded_model(np.zeros((28, 28), np.uint8), prop="Foo")
    with pytest.raises(InvalidInputError, match="top must be a positive integer"):
        seeded_model(np.zeros((28, 28), np.uint8), prop="TopProbabilities", top=0)
    with pytest.raises(CapszooError):
        seeded_model([])


def test_subnets_and_slices(seeded_model, mnist_test):
    images, _ = mnist_test
    m = seeded_model
    assert m.subnet_names == capszoo.SUBNET_NAMES
    assert m["DigitCaps"] is m.net["DigitCaps"]
    with pytest.raises(SubnetNotFoundError, match="no sub-net 'Conv9'"):
        m["Conv9"]
    fx = m.feature_extractor()
    x = mx.nd.array(m.encode(list(images[:4])))
    feats = fx(x).asnumpy()
    assert feats.shape == (4, 16)
    np.testing.assert_allclose(feats, m(list(images[:4]), prop="Capsule"), atol=1e-6)
    rec = m.reconstructor()
    r = rec(mx.nd.array(feats)).asnumpy()
    assert r.shape == (4, 1, 28, 28)
    np.testing.assert_allclose(r, m.net(x)[2].asnumpy(), atol=1e-6)
    # slices share parameters with the model (no copy)
    assert fx["PrimaryCaps"].weight is m.net["PrimaryCaps"].weight
    assert m.take("DigitCaps:Reconstruct").stage_names == ("DigitCaps", "Pick", "Reconstruct")
    with pytest.raises(SubnetNotFoundError, match="reversed"):
        m.take("Pick", "ReLUConv1")
    with pytest.raises(SubnetNotFoundError, match="no sub-net 'Foo'"):
        m.take("Foo")


@pytest.mark.parametrize("name,shape", [("ReLUConv1", (256, 20, 20)), ("PrimaryCaps", (1152, 8)),
                                        ("PrimaryPredVects", (10, 1152, 16)), ("DigitCaps", (10, 16)),
                                        ("Pick", (16,)), ("Reconstruct", (1, 28, 28))])
def test_port_every_subnet(seeded_model, mnist_test, name, shape):
    out = seeded_model.port(mnist_test[0][:2], name)
    assert out.shape == (2,) + shape


def test_reconstruct_vectors(seeded_model):
    img = seeded_model.reconstruct(np.zeros(16))
    assert isinstance(img, Image.Image) and img.size == (28, 28)
    imgs = seeded_model.reconstruct(np.zeros((3, 16)))
    assert len(imgs) == 3
    with pytest.raises(InvalidInputError, match=r"shape \(16,\) or \(N, 16\)"):
        seeded_model.reconstruct(np.zeros(15))
    with pytest.raises(InvalidInputError, match="NaN"):
        seeded_model.reconstruct(np.full(16, np.nan))


def test_info_figures(seeded_model, seeded_weights):
    info = seeded_model.info()
    assert info.num_params == 8_141_840
    assert info.num_layers == 82
    assert info.arrays["PrimaryPredVects.weight"] == ((1152, 10, 16, 8), 1_474_560)
    assert info.layer_types["Convolution"] == 2 and info.layer_types["FullyConnected"] == 3
    assert info.layer_types["batch_dot"] == 6
    import os
    assert info.trained_size_bytes == os.path.getsize(seeded_weights)
    assert 32.5e6 < info.trained_size_bytes < 32.7e6
    assert [s[0] for s in info.subnets] == list(capszoo.SUBNET_NAMES)
    assert sum(s[2] for s in info.subnets) == 8_141_840
    text = capszoo.format_info(info)
    assert text.splitlines()[0] == "Number of layers: 82 | Parameter count: 8,141,840 | Trained size: 33 MB"


def test_weights_with_wrong_shapes_are_refused(tmp_path):
    net = capszoo.CapsNet(routing_iterations=3)
    net.initialize()
    net["Reconstruct"][0].weight.set_data(mx.nd.zeros((512, 16)))
    p = tmp_path / "ok.params"
    net.save_parameters(str(p))
    # drop a parameter by saving a dict without it
    arrays = {k: v.data() for k, v in net._collect_params_with_prefix().items() if k != "Reconstruct.2.bias"}
    bad = tmp_path / "missing.params"
    mx.nd.save(str(bad), arrays)
    with pytest.raises(WeightsFormatError, match="missing Reconstruct.2.bias"):
        capszoo.load("capsnet-mnist", weights=str(bad))
    arrays = {k: v.data() for k, v in net._collect_params_with_prefix().items()}
    arrays["PrimaryCaps.bias"] = mx.nd.zeros((255,))
    mx.nd.save(str(bad), arrays)
    with pytest.raises(WeightsFormatError, match=r"PrimaryCaps.bias has shape \(255,\), expected \(256,\)"):
        capszoo.load("capsnet-mnist", weights=str(bad))
    arrays["PrimaryCaps.bias"] = mx.nd.array([np.nan] * 256)
    mx.nd.save(str(bad), arrays)
    with pytest.raises(WeightsFormatError, match="NaN/inf"):
        capszoo.load("capsnet-mnist", weights=str(bad))
