"""The model registry: one frozen :class:`ModelCard` per model, registered by decorator.

A card carries everything known about a model and its pretrained weights
(torchvision's ``Weights`` metadata, timm's ``pretrained_cfg``).  The card drives
the registry, ``capszoo list``/``info``, the docs and the tests, which check the
card's figures against the real net.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Callable, Dict, Optional, Tuple

from .errors import ModelNotFoundError

__all__ = ["ModelCard", "WeightsSource", "register_model", "get_card", "list_models", "model_cards"]


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

    @property
    def file_size_mb(self) -> float:
        """Size of the fp32 weights in MB (10^6 bytes): the file's size when known."""
        size = self.weights.size_bytes if self.weights else self.num_params * 4
        return size / 1e6

    def to_dict(self) -> dict:
        """A JSON-friendly dict of the card (without the builders)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("builder", "training_builder")}
        d["weights"] = dataclasses.asdict(self.weights) if self.weights else None
        for k, v in list(d.items()):
            if isinstance(v, tuple):
                d[k] = list(v)
        d["metrics"] = dict(self.metrics)
        d["training"] = dict(self.training)
        return d


_REGISTRY: Dict[str, ModelCard] = {}


def _key(name: str) -> str:
    return " ".join(str(name).lower().replace("_", "-").split())


def register_model(card_factory: Callable[[], ModelCard]) -> Callable[[], ModelCard]:
    """Decorator: register the card that ``card_factory()`` returns under its name and aliases."""
    card = card_factory()
    for n in (card.name,) + tuple(card.aliases):
        k = _key(n)
        if k in _REGISTRY and _REGISTRY[k].name != card.name:
            raise ValueError(f"model name {n!r} is registered twice")
        _REGISTRY[k] = card
    return card_factory


def _ensure_loaded():
    from . import _models  # noqa: F401  (registers the built-in models)


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


def list_models(pattern: str = "*") -> list:
    """Names of the registered models matching a shell-style ``pattern`` (case-insensitive)."""
    return [c.name for c in model_cards()
            if fnmatch.fnmatch(c.name.lower(), pattern.lower())
            or any(fnmatch.fnmatch(a.lower(), pattern.lower()) for a in c.aliases)]
