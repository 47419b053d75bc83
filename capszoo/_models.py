"""The built-in models' cards."""
from __future__ import annotations

from ._registry import ModelCard, WeightsSource, register_model

MNIST_CLASSES = tuple(range(10))


def _build_capsnet(routing_iterations=3, **kwargs):
    from ._net import CapsNet
    return CapsNet(routing_iterations=routing_iterations, **kwargs)


def _build_capsnet_training(routing_iterations=3, **kwargs):
    from ._recipe import load_recipe
    from ._training_net import CapsNetTrainingNet
    recipe = load_recipe("capsnet-mnist")
    return CapsNetTrainingNet.from_recipe(recipe, _build_capsnet(routing_iterations, **kwargs))


def _published(name):
    """The weights manifest ``capszoo/pretrained/<name>.json`` written by
    ``scripts/publish_weights.py``: ``(WeightsSource, metrics, training)``, or
    ``(None, {}, {})`` when no weights are published."""
    import importlib.resources
    import json

    entry = importlib.resources.files("capszoo.pretrained") / f"{name}.json"
    if not entry.is_file():
        return None, {}, {}
    m = json.loads(entry.read_text(encoding="utf-8"))
    source = WeightsSource(filename=m["filename"], sha256=m["sha256"], size_bytes=m["size_bytes"],
                           hf_repo_id=m["hf_repo_id"], hf_revision=m["hf_revision"], bundled=m["bundled"])
    return source, dict(m["metrics"]), dict(m.get("training", {}))


@register_model
def capsnet_mnist() -> ModelCard:
    weights, metrics, training = _published("capsnet-mnist")
    return ModelCard(
        name="capsnet-mnist",
        aliases=("CapsNet Trained on MNIST Data", "capsnet"),
        display_name="CapsNet Trained on MNIST Data",
        description=("Capsule network with dynamic routing between capsules (3 iterations) that "
                     "classifies 28x28 handwritten digits; its 16-D digit capsules encode pose and "
                     "a decoder reconstructs the digit from them."),
        task="image classification",
        classes=MNIST_CLASSES,
        input_shape=(1, 28, 28),
        input_dtype="float32",
        input_range=(0.0, 1.0),
        preprocessing=("grayscale; light ink on dark background (polarity detected, or set); the digit's "
                       "bounding box scaled to fit 20x20 with its aspect kept, centred by centre of mass "
                       "in 28x28 (as MNIST was made); values / 255"),
        num_params=8_141_840,
        num_layers=82,
        subnets=("ReLUConv1", "PrimaryCaps", "PrimaryPredVects", "DigitCaps", "Pick", "Reconstruct"),
        reference=("S. Sabour, N. Frosst, G. E. Hinton, \"Dynamic Routing Between Capsules\", "
                   "NeurIPS 2017, arXiv:1710.09829"),
        license="Apache-2.0 (code and weights); MNIST data: CC BY-SA 3.0",
        recipe="capsnet-mnist",
        builder=_build_capsnet,
        training_builder=_build_capsnet_training,
        weights=weights,
        metrics=metrics,
        training=training,
        runtime_graph="capsnet-mnist.graph.onnx",
    )
