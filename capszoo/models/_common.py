"""What the entries of every family share: MNIST's classes and preprocessing, and the weights
manifests that ``scripts/publish_weights.py`` writes."""
from __future__ import annotations

import importlib.resources
import json
import types

from .._registry import WeightsSource

__all__ = ["MNIST_CLASSES", "MNIST_PREPROCESSING", "published"]

MNIST_CLASSES = tuple(range(10))

#: How MNIST was made, as data the encoder (:func:`capszoo._preprocess.to_batch`) reads: light ink
#: on a dark background, the digit's bounding box scaled to fit ``fit_box`` with its aspect kept,
#: centred by its centre of mass in ``size`` x ``size``, values in [0, 1].
MNIST_PREPROCESSING = types.MappingProxyType({
    "size": 28, "fit_box": 20, "centre": "mass", "polarity": "light ink on dark background",
    "scale": "1/255", "channels": 1})


def published(name):
    """The weights manifest ``capszoo/pretrained/<name>.json``: ``(WeightsSource, metrics, training)``,
    or ``(None, {}, {})`` when no weights are published for ``name``."""
    entry = importlib.resources.files("capszoo.pretrained") / f"{name}.json"
    if not entry.is_file():
        return None, {}, {}
    m = json.loads(entry.read_text(encoding="utf-8"))
    source = WeightsSource(filename=m["filename"], sha256=m["sha256"], size_bytes=m["size_bytes"],
                           hf_repo_id=m["hf_repo_id"], hf_revision=m["hf_revision"], bundled=m["bundled"])
    return source, dict(m["metrics"]), dict(m.get("training", {}))
