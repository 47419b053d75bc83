"""Training recipes: declarative TOML files validated against frozen dataclasses.

A recipe names every choice that determines the trained weights, and the zoo
entry it trains (``model``).  The schema is dataclasses: ``[optimizer]``,
``[data]`` and ``[train]`` are the same for every entry (below); ``[net]`` and
``[loss]`` are the entry's family's (:class:`capszoo._registry.Family`), and the
``[net]`` values that are architecture choices must equal the entry's card.
Unknown keys, missing keys (those without a default), wrong types, an unknown
model and a recipe that contradicts its card are :class:`~capszoo.errors.RecipeError`,
raised before anything is trained.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
import tomllib
import typing

from .errors import RecipeError

__all__ = ["Recipe", "OptimizerSection", "DataSection", "TrainSection", "load_recipe", "list_recipes",
           "parse_recipe", "check_positive", "check_finite_nonnegative"]


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    name: str
    learning_rate: float
    lr_decay: float
    #: Decay of the exponential moving average of the weights that validation, model
    #: selection and the saved weights use (0: none, the raw weights).  Optional.
    ema_decay: float = 0.0

    def _check(self):
        if self.name not in ("adam",):
            raise RecipeError(f"optimizer.name {self.name!r} is not supported; use 'adam'")
        _positive(self, "learning_rate")
        if not 0.0 < self.lr_decay <= 1.0:
            raise RecipeError(f"optimizer.lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0.0 <= self.ema_decay < 1.0:   # NaN fails the comparison
            raise RecipeError(f"optimizer.ema_decay must be in [0, 1) (0: no weight averaging), got {self.ema_decay}")

    def ema_decay_at(self, step: int) -> float:
        """Decay of the weight average after the run's 0-based optimizer ``step``:
        ``min(ema_decay, (1 + step) / (10 + step))``, so that the average follows the weights closely
        early in a run, while they are far from trained."""
        return min(self.ema_decay, (1.0 + step) / (10.0 + step))

    def learning_rate_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``."""
        return self.learning_rate * self.lr_decay ** epoch


@dataclasses.dataclass(frozen=True)
class DataSection:
    dataset: str
    max_shift: int
    validation_size: int
    split_seed: int

    def _check(self):
        if self.dataset != "mnist":
            raise RecipeError(f"data.dataset {self.dataset!r} is not supported; use 'mnist'")
        if not 0 <= self.max_shift <= 8:
            raise RecipeError(f"data.max_shift must be 0..8 pixels, got {self.max_shift}")
        if self.validation_size < 0:
            raise RecipeError(f"data.validation_size must be >= 0, got {self.validation_size}")
        if self.split_seed < 0:
            raise RecipeError(f"data.split_seed must be >= 0, got {self.split_seed}")


@dataclasses.dataclass(frozen=True)
class TrainSection:
    epochs: int
    batch_size: int
    seed: int

    def _check(self):
        _positive(self, "epochs", MAX_EPOCHS)
        _positive(self, "batch_size", MAX_BATCH_SIZE)
        if not 0 <= self.seed <= MAX_SEED:   # numpy's global seed takes 32 bits
            raise RecipeError(f"train.seed must be an integer from 0 to {MAX_SEED}, got {self.seed}")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated training recipe."""

    name: str
    model: str
    description: str
    net: object
    loss: object
    optimizer: OptimizerSection
    data: DataSection
    train: TrainSection
    source: str = ""

    def replace_train(self, **changes) -> "Recipe":
        """A copy with some ``[train]`` values changed (CLI overrides); validated."""
        train = dataclasses.replace(self.train, **{k: v for k, v in changes.items() if v is not None})
        train._check()
        return dataclasses.replace(self, train=train)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


#: Largest ``train.seed`` (numpy's global seed is 32 bits).
MAX_SEED = 2 ** 32 - 1
#: Bounds of ``train.epochs`` and ``train.batch_size`` (those of ``capszoo train --epochs/--batch-size``)
#: and of ``net.routing_iterations`` (each iteration is unrolled into the graph).
MAX_EPOCHS, MAX_BATCH_SIZE, MAX_ROUTING_ITERATIONS = 10_000, 100_000, 100
#: Largest recipe file read (the bundled one is 1.6 kB).
MAX_RECIPE_BYTES = 1 << 20

_SECTIONS = {"net": ("net", None), "loss": ("loss", None),   # the family's schema
             "optimizer": ("optimizer", OptimizerSection), "data": ("data", DataSection),
             "train": ("train", TrainSection)}
_TOP = ("name", "model", "description")


def check_finite_nonnegative(obj, name):
    """``obj.name`` must be a finite number >= 0 (RecipeError naming ``<table>.<name>``)."""
    value = getattr(obj, name)
    if not (value >= 0 and _finite(value)):   # NaN fails both comparisons
        raise RecipeError(f"{_table(obj)}.{name} must be a finite number >= 0, got {value}")


def _table(obj):
    return type(obj).__name__.replace("Section", "").lower()


def check_positive(obj, name, most=None):
    """``obj.name`` must be > 0, finite, and at most ``most`` (RecipeError naming ``<table>.<name>``)."""
    _positive(obj, name, most)


def _positive(obj, name, most=None):
    value = getattr(obj, name)
    where = f"{_table(obj)}.{name}"
    if not (value > 0 and _finite(value)):   # TOML has nan and inf; NaN fails every comparison
        raise RecipeError(f"{where} must be > 0{' and finite' if isinstance(value, float) else ''}, got {value}")
    if most is not None and value > most:   # tomllib's integers are unbounded
        shown = value if value < 10 ** 30 else f"an integer of {len(str(value))} digits"
        raise RecipeError(f"{where} must be at most {most}, got {shown}")


def _finite(value):
    return not isinstance(value, float) or math.isfinite(value)


def _typed(where, value, tp):
    ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 1e300:   # TOML integers are unbounded in tomllib; float() would overflow
            raise RecipeError(f"{where} must be a number of sensible size, got an integer of "
                              f"{len(str(abs(value)))} digits")
        return float(value)
    if not ok:
        raise RecipeError(f"{where} must be of type {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, table, where, owner=""):
    if not isinstance(table, dict):
        raise RecipeError(f"[{where}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise RecipeError(f"[{where}] unknown key(s) {', '.join(unknown)}{owner}; allowed: "
                          f"{', '.join(fields) or 'none (leave the table empty)'}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in table and f.default is dataclasses.MISSING]   # keys with a default are optional
    if missing:
        raise RecipeError(f"[{where}] missing key(s) {', '.join(missing)}")
    obj = cls(**{f: _typed(f"{where}.{f}", table[f], hints[f]) for f in fields if f in table})
    obj._check()
    return obj


def parse_recipe(doc: dict, source: str = "") -> Recipe:
    """Validate a recipe already parsed from TOML into a :class:`Recipe`: its tables against the
    schema of its model's family, and its architecture against the model's card."""
    allowed = set(_TOP) | set(_SECTIONS)
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise RecipeError(f"recipe {source}: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    missing = [k for k in list(_TOP) + list(_SECTIONS) if k not in doc]
    if missing:
        raise RecipeError(f"recipe {source}: missing {', '.join(missing)}")
    kw = {k: _typed(k, doc[k], str) for k in _TOP}
    card = _model_card(kw["model"], source)
    family = card.family
    schemas = {"net": family.net_section, "loss": family.loss_section}
    for key, (attr, cls) in _SECTIONS.items():
        owner = f" for model {card.name!r} (family {family.name})" if cls is None else ""
        kw[attr] = _build(cls or schemas[key], doc[key], key, owner)
    recipe = Recipe(source=source, **kw)
    _check_against_card(recipe, card)
    from ._registry import resolve_callable
    check = resolve_callable(family.check_recipe)
    if check is not None:
        check(recipe)
    return recipe


def _model_card(model, source):
    from ._registry import get_card
    from .errors import ModelNotFoundError
    try:
        return get_card(model)
    except ModelNotFoundError as exc:
        raise RecipeError(f"recipe {source}: model {model!r} is not a zoo entry ({exc}); set `model` to "
                          "the entry the recipe trains") from None


def _check_against_card(recipe, card):
    """The ``[net]`` values that choose the architecture must be the card's."""
    for key, value in card.arch_args.items():
        if hasattr(recipe.net, key) and getattr(recipe.net, key) != value:
            raise RecipeError(f"recipe {recipe.source}: net.{key} = {getattr(recipe.net, key)!r} but model "
                              f"{card.name!r} has {key} = {value!r}; use a recipe of that entry or name "
                              f"the entry whose architecture this is")


def _bundled():
    return importlib.resources.files("capszoo.recipes")


def list_recipes():
    """Names of the recipes shipped with capszoo."""
    return sorted(p.name[:-5] for p in _bundled().iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path) -> Recipe:
    """Load a recipe by bundled name (``"capsnet-mnist"``) or from a ``.toml`` path."""
    text = None
    source = os.fspath(name_or_path)
    if os.path.isfile(source):
        try:
            if os.path.getsize(source) > MAX_RECIPE_BYTES:
                raise RecipeError(f"recipe {source} is {os.path.getsize(source):,} bytes, larger than any "
                                  f"recipe ({MAX_RECIPE_BYTES:,} at most); pass the .toml recipe file")
            with open(source, "rb") as fh:
                text = fh.read(MAX_RECIPE_BYTES + 1)
        except OSError as exc:
            raise RecipeError(f"cannot read recipe {source}: {exc.strerror}") from None
    else:
        entry = _bundled() / f"{source}.toml"
        if "/" not in source and os.sep not in source and entry.is_file():
            text = entry.read_bytes()
            source = f"capszoo.recipes/{source}.toml"
    if text is None:
        raise RecipeError(f"no recipe {source!r}: pass a .toml file or one of: {', '.join(list_recipes())}")
    try:
        doc = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"recipe {source} is not valid TOML: {exc}") from None
    except RecursionError:   # tomllib recurses into nested arrays and tables
        raise RecipeError(f"recipe {source} is not a recipe: its arrays or tables are nested too deeply") from None
    return parse_recipe(doc, source)
