"""capszoo: a model zoo on Apache MXNet Gluon, starting with the CapsNet trained on MNIST.

>>> import capszoo
>>> model = capszoo.load("capsnet-mnist")          # pretrained, sha256-verified
>>> model("digit.png")                             # doctest: +SKIP
7
>>> extractor = model.feature_extractor()           # ReLUConv1 -> Pick, 16-D capsule
>>> capszoo.list_models()
['capsnet-mnist']
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import _env  # noqa: F401  (OMP_NUM_THREADS before mxnet loads)
from ._api import BACKENDS, ORT_MAX_BATCH, PROPERTIES, VARIANTS, CapsNetModel, get_model, load
from ._evaluate import EvalResult, evaluate
from ._info import NetInfo, format_info, net_info
from ._recipe import Recipe, list_recipes, load_recipe
from ._registry import ModelCard, WeightsSource, get_card, list_models, model_cards
from .errors import CapszooError

# Names defined by modules that build MXNet blocks at import time.  They are imported on
# first use (PEP 562), so that `import capszoo` -- and `capszoo classify`, which runs on
# onnxruntime -- does not pay for `import mxnet` (about 1 s) unless MXNet is needed.
# The modules above import MXNet inside their functions.
_MXNET_MODULES = {
    "CapsNet": "._net",
    "SUBNET_NAMES": "._net",
    "NetSlice": "._slices",
    "train": "._train",
    "TrainResult": "._train",
    "CapsNetTrainingNet": "._training_net",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from ._net import SUBNET_NAMES, CapsNet
    from ._slices import NetSlice
    from ._train import TrainResult, train
    from ._training_net import CapsNetTrainingNet


def __getattr__(name):
    module = _MXNET_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'capszoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_MXNET_MODULES))


__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load",
    "get_model",
    "list_models",
    "get_card",
    "model_cards",
    "ModelCard",
    "WeightsSource",
    "CapsNetModel",
    "CapsNet",
    "CapsNetTrainingNet",
    "NetSlice",
    "SUBNET_NAMES",
    "PROPERTIES",
    "VARIANTS",
    "BACKENDS",
    "ORT_MAX_BATCH",
    "net_info",
    "format_info",
    "NetInfo",
    "evaluate",
    "EvalResult",
    "train",
    "TrainResult",
    "Recipe",
    "load_recipe",
    "list_recipes",
    "CapszooError",
]
