"""capszoo: a model zoo on Apache MXNet Gluon: CapsNets (and a LeNet baseline) trained on MNIST.

>>> import capszoo
>>> model = capszoo.load("capsnet-mnist")          # pretrained, sha256-verified
>>> model("digit.png")                             # doctest: +SKIP
7
>>> extractor = model.feature_extractor()           # ReLUConv1 -> Pick, 16-D capsule
>>> capszoo.list_models("lenet*")
['lenet-mnist']
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import _env  # noqa: F401  (OMP_NUM_THREADS before mxnet loads)
from ._api import BACKENDS, ORT_MAX_BATCH, PROPERTIES, VARIANTS, CapsNetModel, get_model, load
from ._evaluate import EvalResult, evaluate
from ._info import NetInfo, format_info, net_info
from ._recipe import Recipe, list_recipes, load_recipe
from ._registry import (Family, ModelCard, WeightsSource, get_card, get_family, list_models, model_cards,
                        register_family, register_model)
from ._hub import resolve_weights
from ._nets import SubnetChain
from ._weights import load_params_into, read_params, save_params, sha256_file
from ._publish import PushResult, push_to_hub
from .errors import CapszooError

# Names defined by modules that build MXNet blocks at import time.  They are imported on
# first use (PEP 562), so that `import capszoo` -- and `capszoo classify`, which runs on
# onnxruntime -- does not pay for `import mxnet` (about 1 s) unless MXNet is needed.
# The modules above import MXNet inside their functions.
_MXNET_MODULES = {
    "CapsNet": ".models.capsnet.net",
    "SUBNET_NAMES": ".models.capsnet.net",
    "LeNet": ".models.lenet.net",
    "NetSlice": "._slices",
    "train": "._train",
    "initialize_net": "._train",
    "export_model": "._export",
    "TrainResult": "._train",
    "CapsNetTrainingNet": ".models.capsnet.training",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .models.capsnet.net import SUBNET_NAMES, CapsNet
    from .models.lenet.net import LeNet
    from ._slices import NetSlice
    from ._export import export_model
    from ._train import TrainResult, initialize_net, train
    from .models.capsnet.training import CapsNetTrainingNet


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
    "Family",
    "SubnetChain",
    "register_model",
    "register_family",
    "get_family",
    "resolve_weights",
    "read_params",
    "save_params",
    "load_params_into",
    "sha256_file",
    "initialize_net",
    "export_model",
    "CapsNetModel",
    "CapsNet",
    "LeNet",
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
    "push_to_hub",
    "PushResult",
]
