"""The CapsNet architecture: counts, shapes, names, routing, and the model card's figures."""
import json

import mxnet as mx
import numpy as np
import pytest

import capszoo
from capszoo.models.capsnet.net import CapsNet, DigitCaps, SUBNET_NAMES, squash
from capszoo._info import graph_nodes


@pytest.fixture(scope="module")
def net():
    from capszoo import load_recipe
    from capszoo import initialize_net
    return initialize_net(CapsNet(), load_recipe("capsnet-mnist"), [mx.cpu()], 0)


def test_parameter_count_is_wolframs(net):
    total = sum(p.data().size for p in net.collect_params().values())
    assert total == 8_141_840
    assert capszoo.get_card("capsnet-mnist").num_params == total


def test_parameter_names_and_shapes_are_the_weights_format(net):
    shapes = {k: p.shape for k, p in net._collect_params_with_prefix().items()}
    assert shapes == {
        "ReLUConv1.weight": (256, 1, 9, 9), "ReLUConv1.bias": (256,),
        "PrimaryCaps.weight": (256, 256, 9, 9), "PrimaryCaps.bias": (256,),
        "PrimaryPredVects.weight": (1152, 10, 16, 8),
        "Reconstruct.0.weight": (512, 16), "Reconstruct.0.bias": (512,),
        "Reconstruct.1.weight": (1024, 512), "Reconstruct.1.bias": (1024,),
        "Reconstruct.2.weight": (784, 1024), "Reconstruct.2.bias": (784,),
    }
    assert SUBNET_NAMES == ("ReLUConv1", "PrimaryCaps", "PrimaryPredVects", "DigitCaps", "Pick", "Reconstruct")
    assert capszoo.get_card("capsnet-mnist").subnets == SUBNET_NAMES


def test_outputs_and_subnet_shapes(net):
    x = mx.nd.random.uniform(shape=(3, 1, 28, 28))
    probs, capsule, reco = net(x)
    assert probs.shape == (3, 10) and capsule.shape == (3, 16) and reco.shape == (3, 1, 28, 28)
    p = probs.asnumpy()
    assert (p >= 0).all() and (p < 1).all()
    r = reco.asnumpy()
    assert (r > 0).all() and (r < 1).all()  # sigmoid
    a = net["ReLUConv1"](x); assert a.shape == (3, 256, 20, 20) and a.asnumpy().min() >= 0
    b = net["PrimaryCaps"](a); assert b.shape == (3, 1152, 8)
    assert np.linalg.norm(b.asnumpy(), axis=2).max() < 1  # squashed
    c = net["PrimaryPredVects"](b); assert c.shape == (3, 10, 1152, 16)
    d = net["DigitCaps"](c); assert d.shape == (3, 10, 16)
    assert p.min() > 1e-4  # not degenerate: lengths well above the sqrt-epsilon
    np.testing.assert_allclose(np.linalg.norm(d.asnumpy(), axis=2), p, rtol=1e-4, atol=1e-6)


def test_pick_takes_the_longest_capsule(net):
    x = mx.nd.random.uniform(shape=(4, 1, 28, 28))
    probs, capsule, _ = net(x)
    caps = net["DigitCaps"](net["PrimaryPredVects"](net["PrimaryCaps"](net["ReLUConv1"](x)))).asnumpy()
    k = probs.asnumpy().argmax(1)
    np.testing.assert_allclose(capsule.asnumpy(), caps[np.arange(4), k], rtol=1e-5, atol=1e-7)


def test_prediction_vectors_are_W_times_u(net):
    u = mx.nd.random.normal(shape=(2, 1152, 8))
    uh = net["PrimaryPredVects"](u).asnumpy()
    W = net["PrimaryPredVects"].weight.data().asnumpy()
    ref = np.einsum("ijdk,nik->njid", W, u.asnumpy())
    np.testing.assert_allclose(uh, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("iters", [1, 2, 3, 5])
def test_routing_matches_numpy_reference(iters):
    rng = np.random.default_rng(iters)
    u = rng.normal(scale=0.05, size=(3, 10, 1152, 16)).astype(np.float32)
    got = DigitCaps(iters)(mx.nd.array(u)).asnumpy()
    b = np.zeros((3, 10, 1152))
    for it in range(iters):
        c = np.exp(b) / np.exp(b).sum(1, keepdims=True)
        s = (c[..., None] * u).sum(2)
        n = (s ** 2).sum(-1, keepdims=True)
        v = n / (1 + n) * s / np.sqrt(n + 1e-9)
        b = b + (u * v[:, :, None, :]).sum(-1)
    assert np.abs(got - v).max() < 1e-6


def test_routing_iterations_argument():
    assert CapsNet(routing_iterations=5).routing_iterations == 5
    with pytest.raises(ValueError, match="positive integer"):
        DigitCaps(0)


def test_squash_lengths():
    s = mx.nd.array([[3.0, 4.0], [0.0, 0.0]])
    v = squash(mx.nd, s, axis=1).asnumpy()
    assert abs(np.linalg.norm(v[0]) - 25 / 26) < 1e-6
    assert np.abs(v[1]).max() == 0


def test_hybridized_graph_is_pure_mxnet_and_card_layer_count(net):
    nodes = graph_nodes(CapsNet())
    ops = [n["op"] for n in nodes if n["op"] != "null"]
    assert "Custom" not in ops
    assert len(ops) == capszoo.get_card("capsnet-mnist").num_layers == 82
    # reshapes use only the codes 0 and -1 and fixed sizes (exportable, dynamic batch)
    for n in nodes:
        if n["op"] == "Reshape":
            shape = json.loads(n["attrs"]["shape"].replace("(", "[").replace(")", "]").replace(",]", "]"))
            assert all(d in (0, -1) or d > 0 for d in shape), n


def test_hybridized_equals_imperative():
    from capszoo import load_recipe
    from capszoo import initialize_net
    n = initialize_net(CapsNet(), load_recipe("capsnet-mnist"), [mx.cpu()], 1)
    x = mx.nd.random.uniform(shape=(5, 1, 28, 28))
    a = [o.asnumpy() for o in n(x)]
    n.hybridize(static_alloc=True)
    b = [o.asnumpy() for o in n(x)]
    for u, v in zip(a, b):
        assert np.abs(u - v).max() < 1e-6


def test_card_figures():
    card = capszoo.get_card("CapsNet Trained on MNIST Data")
    assert card.name == "capsnet-mnist"
    assert capszoo.get_card("CAPSNET-MNIST") is card
    assert card.classes == tuple(range(10))
    assert card.input_shape == (1, 28, 28)
    assert round(card.file_size_mb) == 33
    capsnets = ["capsnet-mnist", "capsnet-mnist-deconv", "capsnet-mnist-masked", "capsnet-mnist-noreco",
                 "capsnet-mnist-r1-masked", "capsnet-mnist-r1-noreco"]
    assert capszoo.list_models() == capsnets + ["lenet-mnist"]
    assert capszoo.list_models("caps*") == capsnets
    assert capszoo.list_models("LeNet Trained*") == ["lenet-mnist"]   # aliases match too
    assert capszoo.list_models("resnet*") == []
    published = [n for n in capsnets + ["lenet-mnist"] if capszoo.get_card(n).weights is not None]
    assert capszoo.list_models(pretrained=True) == published
    assert "capsnet-mnist" in published
    assert capszoo.list_models("lenet*", pretrained=True) == ["lenet-mnist"]
    with pytest.raises(capszoo.errors.InvalidInputError, match="pattern must be a string"):
        capszoo.list_models(3)
    d = card.to_dict()
    assert d["num_params"] == 8_141_840 and "builder" not in d
