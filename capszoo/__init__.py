"""capszoo: a model zoo on Apache MXNet Gluon, starting with the CapsNet trained on MNIST.

>>> import capszoo
>>> model = capszoo.load("capsnet-mnist")          # pretrained, sha256-verified
>>> model("digit.png")                             # doctest: +SKIP
7
>>> extractor = model.feature_extractor()           # ReLUConv1 -> Pick, 16-D capsule
>>> capszoo.list_models()
['capsnet-mnist']
"""
from . import _env  # noqa: F401  (OMP_NUM_THREADS before mxnet loads)
from ._api import PROPERTIES, VARIANTS, CapsNetModel, get_model, load
from ._evaluate import EvalResult, evaluate
from ._info import NetInfo, format_info, net_info
from ._net import SUBNET_NAMES, CapsNet
from ._recipe import Recipe, list_recipes, load_recipe
from ._registry import ModelCard, WeightsSource, get_card, list_models, model_cards
from ._slices import NetSlice
from ._train import TrainResult, train
from ._training_net import CapsNetTrainingNet
from .errors import CapszooError

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
