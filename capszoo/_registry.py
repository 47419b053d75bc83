"""The model registry: architecture families and one frozen :class:`ModelCard` per zoo entry.

A *family* (:class:`Family`, registered with :func:`register_family`) is an
architecture: how to build its net from the card's ``arch_args``, its training
net from a recipe, the schema of a recipe's ``[net]`` and ``[loss]`` tables,
and its seeded initialization.  Its functions are named as ``"module:function"``
strings (or given as callables) and imported on first use, so that cards, recipes
and ``capszoo list`` never import MXNet.

A *card* (:class:`ModelCard`) is the single source of truth of one entry: its
architecture (``arch`` + ``arch_args``) and weights tag, input spec,
preprocessing (as data the encoder reads), outputs, sub-nets, classes, the recipe
that made its weights, metrics and provenance (torchvision's ``Weights``
metadata, timm's ``pretrained_cfg``).  Cards drive the registry, ``capszoo
list``/``info``, exports and the docs; tests check every figure in them against
the built net and the training logs.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import fnmatch
import importlib
from typing import Any, Callable, Dict, Optional, Tuple, Union

from .errors import InvalidInputError, ModelNotFoundError

__all__ = ["ModelCard", "WeightsSource", "Family", "register_model", "register_family", "get_family",
           "get_card", "list_models", "model_cards", "resolve_callable"]

#: A function given directly or as ``"package.module:function"`` (imported on first use).
Hook = Union[str, Callable, None]


def resolve_callable(hook: Hook) -> Optional[Callable]:
    """The function ``hook`` names (``"module:function"``), or ``hook`` itself when it is callable."""
    if hook is None or callable(hook):
        return hook
    module, _, attr = str(hook).partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):   # "Class.method" too
        obj = getattr(obj, part)
    return obj


@dataclasses.dataclass(frozen=True)
class Family:
    """An architecture family: what every entry of the family shares.

    Attributes
    ----------
    name : str
        The ``arch`` that cards name (``"capsnet"``, ``"lenet"``).
    build : "module:function" or callable
        ``build(**arch_args) -> HybridBlock``: the uninitialized net.
    build_training : "module:function" or callable
        ``build_training(net, recipe) -> HybridBlock`` whose call ``(x, label)`` returns
        ``(loss_a (N,), loss_b (N,), probabilities (N, classes))``, the two per-sample
        losses summed for the gradient (``loss_b`` may be zeros).
    initialize : "module:function" or callable
        ``initialize(net, recipe, ctx)``: seeded initialization (the seed is already set).
    net_section, loss_section : type
        Frozen dataclasses: the schema of a recipe's ``[net]`` and ``[loss]`` tables
        (:mod:`capszoo._recipe`); ``net_section`` fields that are also ``arch_args``
        must equal the card's.
    check_recipe : "module:function" or callable, optional
        ``check_recipe(recipe)``: rules across a recipe's tables (raises RecipeError).
    """

    name: str
    build: Hook
    build_training: Hook
    initialize: Hook
    net_section: type
    loss_section: type
    check_recipe: Hook = None


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where a model's pretrained weights come from.

    Attributes
    ----------
    filename : str
        File name of the weights (also the name in the cache and in the Hub repo).
    sha256 : str
        sha256 of the file; every copy is checked against it before use.
    size_bytes : int
        Exact file size.
    hf_repo_id, hf_revision : str
        Hugging Face Hub repository and pinned revision holding ``filename``.
    bundled : bool
        True when a copy ships inside the package (``capszoo/pretrained``).
    """

    filename: str
    sha256: str
    size_bytes: int
    hf_repo_id: str
    hf_revision: str
    bundled: bool = False


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Everything capszoo knows about one model.

    ``builder(**kwargs)`` returns the uninitialized net; ``training_builder``
    the training architecture.  ``weights`` is None until trained weights are
    published.  ``runtime_graph`` names the net's ONNX graph without weights,
    shipped in ``capszoo/pretrained`` (see :mod:`capszoo._ort`): with it,
    ``capszoo classify`` runs on onnxruntime without importing MXNet.
    """

    name: str
    aliases: Tuple[str, ...]
    display_name: str
    description: str
    task: str
    classes: Tuple[str, ...]
    input_shape: Tuple[int, ...]
    input_dtype: str
    input_range: Tuple[float, float]
    preprocessing: str
    num_params: int
    num_layers: int
    subnets: Tuple[str, ...]
    reference: str
    license: str
    recipe: str
    builder: Callable = dataclasses.field(repr=False, compare=False, default=None)
    training_builder: Callable = dataclasses.field(repr=False, compare=False, default=None)
    weights: Optional[WeightsSource] = None
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    training: Dict[str, object] = dataclasses.field(default_factory=dict)
    runtime_graph: Optional[str] = None
    #: The family (:class:`Family`) and its constructor arguments: ``build(**arch_args)``.
    arch: str = ""
    arch_args: Dict[str, Any] = dataclasses.field(default_factory=dict)
    #: What the weights were trained on, timm's ``arch.tag`` (``"capsnet.mnist"``).
    tag: str = ""
    #: Names of the net's outputs, in order (``probabilities``, ...).
    outputs: Tuple[str, ...] = ()
    #: Sub-nets that take a feature extractor's output back to the input space: (start, end) or None.
    feature_slice: Optional[Tuple[str, str]] = None

    @property
    def arch_tag(self) -> str:
        """``arch.tag``: the architecture with the weights' tag (``"capsnet.mnist"``)."""
        return f"{self.arch}.{self.tag}" if self.tag else self.arch

    @property
    def family(self) -> "Family":
        return get_family(self.arch)

    def build(self, **overrides):
        """The card's net, uninitialized: ``builder`` or the family's, with ``arch_args`` and ``overrides``."""
        if self.builder is not None:
            return self.builder(**overrides)
        return resolve_callable(self.family.build)(**{**self.arch_args, **overrides})

    def build_training(self, recipe, net=None):
        """The training net of ``recipe`` around ``net`` (a fresh net by default)."""
        return resolve_callable(self.family.build_training)(net if net is not None else self.build(), recipe)

    def has_output(self, name: str) -> bool:
        return name in self.outputs

    @property
    def preprocessing_text(self) -> str:
        """The preprocessing in words (for cards, exports and model READMEs)."""
        p = self.preprocessing
        if isinstance(p, str):
            return p
        return (f"grayscale; {p['polarity']} (polarity detected, or set); the digit's bounding box scaled "
                f"to fit {p['fit_box']}x{p['fit_box']} with its aspect kept, centred by centre of mass in "
                f"{p['size']}x{p['size']} (as MNIST was made); values / 255")

    @property
    def file_size_mb(self) -> float:
        """Size of the fp32 weights in MB (10^6 bytes): the file's size when known."""
        size = self.weights.size_bytes if self.weights else self.num_params * 4
        return size / 1e6

    def to_dict(self) -> dict:
        """A JSON-friendly dict of the card (without the builders)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("builder", "training_builder")}
        d["arch_args"] = dict(self.arch_args)
        d["preprocessing"] = (dict(self.preprocessing) if isinstance(self.preprocessing, collections.abc.Mapping)
                              else self.preprocessing)
        d["weights"] = dataclasses.asdict(self.weights) if self.weights else None
        for k, v in list(d.items()):
            if isinstance(v, tuple):
                d[k] = list(v)
        d["metrics"] = dict(self.metrics)
        d["training"] = dict(self.training)
        return d


_REGISTRY: Dict[str, ModelCard] = {}
_FAMILIES: Dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Register an architecture family under ``family.name`` (again: replaced)."""
    _FAMILIES[family.name] = family
    return family


def get_family(arch: str) -> Family:
    """The registered family ``arch``."""
    _ensure_loaded()
    try:
        return _FAMILIES[arch]
    except KeyError:
        raise ModelNotFoundError(f"unknown architecture family {arch!r}; families: "
                                 f"{', '.join(sorted(_FAMILIES)) or 'none'}") from None


def _key(name: str) -> str:
    return " ".join(str(name).lower().replace("_", "-").split())


def register_model(card_or_factory):
    """Register a :class:`ModelCard` under its name and aliases; as a decorator, the card that the
    decorated function returns.  Registering a card of the same name again replaces it."""
    card = card_or_factory() if callable(card_or_factory) else card_or_factory
    if not isinstance(card, ModelCard):
        raise TypeError(f"register_model needs a ModelCard, got {type(card).__name__}")
    for k, old in list(_REGISTRY.items()):
        if old.name == card.name:
            del _REGISTRY[k]
    for n in (card.name,) + tuple(card.aliases):
        k = _key(n)
        if k in _REGISTRY and _REGISTRY[k].name != card.name:
            raise ValueError(f"model name {n!r} is registered twice")
        _REGISTRY[k] = card
    return card_or_factory


def _ensure_loaded():
    from . import models  # noqa: F401  (registers the built-in families and entries)


def model_cards() -> Tuple[ModelCard, ...]:
    """All registered model cards, once each, sorted by name."""
    _ensure_loaded()
    return tuple(sorted({c.name: c for c in _REGISTRY.values()}.values(), key=lambda c: c.name))


def get_card(name: str) -> ModelCard:
    """The card of ``name`` (or one of its aliases; case-insensitive).

    Raises
    ------
    ModelNotFoundError
        Naming the closest registered names.
    """
    _ensure_loaded()
    if not isinstance(name, str):
        raise ModelNotFoundError(f"model name must be a string, got {type(name).__name__}")
    card = _REGISTRY.get(_key(name))
    if card is None:
        names = sorted({n for c in _REGISTRY.values() for n in (c.name,) + tuple(c.aliases)})
        close = difflib.get_close_matches(_key(name), [_key(n) for n in names], n=3, cutoff=0.4)
        hint = (" Did you mean: " + ", ".join(n for n in names if _key(n) in close) + "?") if close else ""
        raise ModelNotFoundError(f"unknown model {name!r}.{hint} Run `capszoo list` to see all models.")
    return card


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list:
    """Names of the registered models matching a shell-style ``pattern`` (case-insensitive, names and
    aliases); with ``pretrained=True`` only those with published weights (as in timm)."""
    if not isinstance(pattern, str):
        raise InvalidInputError(f"pattern must be a string such as 'capsnet-*', got {type(pattern).__name__}")
    return [c.name for c in model_cards()
            if (fnmatch.fnmatch(c.name.lower(), pattern.lower())
                or any(fnmatch.fnmatch(a.lower(), pattern.lower()) for a in c.aliases))
            and (c.weights is not None or not pretrained)]
