"""A capszoo repository on the Hugging Face Hub as a model name: ``hf-hub:owner/name[@revision]``.

``capszoo.load("hf-hub:capszoo/capsnet-mnist-masked@v0.1-8bfd37e2")`` loads the weights a
``capszoo push`` put in that repository, as timm's ``create_model("hf-hub:...")`` does: the
repository's ``config.json`` names the zoo entry (its net) and the weights file with its sha256;
:func:`hub_card` returns that entry's card with its weights pointed at the repository, pinned to
the commit the config came from, and the usual :func:`capszoo._hub.resolve_weights` fetches the
file (cache first, then the Hub) and checks its sha256.  Without ``@revision`` the repository's
``main`` is read.

The sha256 comes from the repository's own config, so it guards against a damaged transfer or
cache, not against the repository's owner: load repositories you trust.  An entry's own name
(``capsnet-mnist-masked``) stays the pinned, reviewed way to get its published weights.

This module imports neither MXNet nor, until a repository is read, huggingface_hub.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

from .errors import InvalidInputError, ModelNotFoundError, WeightsNotAvailableError

__all__ = ["HUB_PREFIX", "is_hub_name", "parse_hub_name", "hub_card", "card_for", "pinned_card", "is_repo_id",
           "is_revision", "SHA256_HEX", "COMMIT_ID"]

#: The prefix that makes a model name a Hub repository.
HUB_PREFIX = "hf-hub:"
#: Largest config.json read (capszoo writes about 5 kB).
MAX_CONFIG_BYTES = 1 << 20
#: A sha256 digest as the Hub and capszoo's manifests write it (64 hex digits; compare lowercased).
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
#: A git commit id as the Hub reports it.
COMMIT_ID = re.compile(r"[0-9a-f]{40}")
_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_FORM = "'hf-hub:owner/name' or 'hf-hub:owner/name@revision' (a tag, branch or commit)"
_CARDS = {}   # (repo_id, revision, endpoint, cache) -> card, for the life of the process


def is_hub_name(name) -> bool:
    """True when ``name`` is a string starting with ``hf-hub:`` (any case)."""
    return isinstance(name, str) and name[:len(HUB_PREFIX)].lower() == HUB_PREFIX


def is_repo_id(repo_id) -> bool:
    """True when ``repo_id`` is a Hub model repository id ``owner/name`` (letters, digits, '.', '_', '-';
    starting with a letter or digit, not ending with '.' or '-', no '..' or '--', owner at most 42 and
    name at most 96 characters)."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    return (len(parts) == 2 and all(_PART.fullmatch(p) for p in parts) and ".." not in repo_id
            and "--" not in repo_id and len(parts[0]) <= 42 and len(parts[1]) <= 96)


def is_revision(revision) -> bool:
    """True when ``revision`` can name a branch, tag or commit: letters, digits, '.', '_', '-' and '/',
    starting with a letter or digit, no empty, '.' or '..' path part, at most 255 characters."""
    return (isinstance(revision, str) and _REVISION.fullmatch(revision) is not None and ".." not in revision
            and all(p not in ("", ".") for p in revision.split("/")) and len(revision) <= 255)


def parse_hub_name(name):
    """``(repo_id, revision)`` of ``hf-hub:owner/name[@revision]`` (revision ``"main"`` when absent).

    Raises
    ------
    InvalidInputError
        Not of that form.
    """
    spec = name[len(HUB_PREFIX):].strip() if is_hub_name(name) else None
    repo_id, _, revision = (spec or "").partition("@")
    revision = revision if "@" in (spec or "") else "main"
    if not (is_repo_id(repo_id) and is_revision(revision)):
        raise InvalidInputError(f"{name!r} is not a Hub model name: use {_FORM}, e.g. "
                                "hf-hub:capszoo/capsnet-mnist-masked")
    return repo_id, revision


def hub_card(name, *, cache_dir=None, timeout=None):
    """The card of the capszoo repository ``name`` (``hf-hub:owner/repo[@revision]``).

    It is the registered entry named by the repository's ``config.json``, with ``weights`` pointing
    at the repository's weights file (its sha256 from that config) at the commit the config was read
    from, ``metrics`` from the config, and the entry's ``training`` record only when the weights are
    its published ones (the same sha256).

    Raises
    ------
    InvalidInputError
        ``name`` is not of the form; the repository's config.json is not a capszoo config.
    ModelNotFoundError
        The config names an entry this version of capszoo does not have.
    WeightsNotAvailableError
        The repository, revision or config.json cannot be read (offline, not found, network).
    """
    from ._hub import hub_cache_dir, hub_endpoint

    repo_id, revision = parse_hub_name(name)
    key = (repo_id, revision, hub_endpoint(), os.path.abspath(hub_cache_dir(cache_dir)))
    if key not in _CARDS or not COMMIT_ID.fullmatch(revision):   # a branch or tag may move: read it again
        path, commit = _download_config(repo_id, revision, cache=key[3], timeout=timeout)
        _CARDS[key] = _card_from_config(_read_config(path, name), repo_id, commit, name)
        _CARDS[(repo_id, commit) + key[2:]] = _CARDS[key]   # the same card by its commit, read no more
    return _CARDS[key]


def card_for(name):
    """The card of a model name: a registered entry or alias, or a Hub repository (:func:`hub_card`)."""
    from ._registry import get_card

    return hub_card(name) if is_hub_name(name) else get_card(name)


def pinned_card(name):
    """``(card, name)``: the card of a model name (:func:`card_for`) and a name that loads exactly it.

    A Hub name comes back pinned to the commit its config.json was just read from, so that loading it
    reads nothing more from the Hub and gets the same weights even if a branch or tag moves meanwhile;
    any other name comes back as given.
    """
    card = card_for(name)
    if is_hub_name(name):
        name = f"{HUB_PREFIX}{card.weights.hf_repo_id}@{card.weights.hf_revision}"
    return card, name


def _download_config(repo_id, revision, *, cache, timeout):
    """``(local path, commit)`` of the repository's config.json at ``revision``."""
    from ._hub import _describe, _resolve_timeout, _sync_hub_constants, hub_endpoint, hub_offline

    timeout = _resolve_timeout(timeout)
    _sync_hub_constants()
    from huggingface_hub import hf_hub_download

    label = f"hf-hub:{repo_id}@{revision}"
    try:
        path = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache, endpoint=hub_endpoint(),
                               etag_timeout=timeout, library_name="capszoo")
    except Exception as exc:  # noqa: BLE001 - every failure becomes a WeightsNotAvailableError
        reason = _describe(exc, timeout)
        if hub_offline():
            remedy = ("offline mode is on (HF_HUB_OFFLINE) and this revision is not in the cache: unset "
                      "HF_HUB_OFFLINE to download it")
        elif "Not Found" in reason:
            remedy = ("check the repository id and revision (a capszoo repository holds the config.json "
                      "that `capszoo push` writes)")
        else:
            remedy = f"check your network connection and HF_ENDPOINT ({hub_endpoint()}) and try again"
        raise WeightsNotAvailableError(f"cannot read config.json of {label}: {reason}; {remedy}") from None
    commit = os.path.basename(os.path.dirname(path))
    if not COMMIT_ID.fullmatch(commit):
        raise WeightsNotAvailableError(f"config.json of {label} was not stored under a commit id ({path}); "
                                       "clear that repository from the Hugging Face cache and try again")
    return path, commit


def _read_config(path, name):
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES} bytes")
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"config.json of {name} is not a capszoo config ({exc}); is this a repository "
                                "that `capszoo push` wrote?") from None
    if not isinstance(config, dict) or config.get("library_name") != "capszoo":
        got = config.get("library_name") if isinstance(config, dict) else None
        raise InvalidInputError(f"{name} is not a capszoo repository (its config.json says library_name "
                                f"{got!r}); load it with the library it was made for")
    return config


def _card_from_config(config, repo_id, commit, name):
    from ._registry import WeightsSource, get_card

    model = config.get("model")
    try:
        card = get_card(model)
    except ModelNotFoundError:
        raise ModelNotFoundError(f"{name} holds capszoo model {model!r}, which this capszoo does not know: "
                                 "upgrade capszoo (pip install -U capszoo)") from None
    w = config.get("weights")
    ok = (isinstance(w, dict) and isinstance(w.get("params"), str) and _PART.fullmatch(w["params"])
          and isinstance(w.get("sha256"), str) and SHA256_HEX.fullmatch(w["sha256"])
          and isinstance(w.get("size_bytes"), int) and w["size_bytes"] > 0)
    if not ok:
        raise InvalidInputError(f"config.json of {name} has no usable \"weights\" record (params file name, "
                                "sha256, size_bytes); push the entry again with `capszoo push`")
    metrics = config.get("metrics") if isinstance(config.get("metrics"), dict) else {}
    ws = WeightsSource(filename=w["params"], sha256=w["sha256"].lower(), size_bytes=w["size_bytes"],
                       hf_repo_id=repo_id, hf_revision=commit, bundled=False)
    # the registered card's training record describes its own weights only
    same = card.weights is not None and card.weights.sha256 == ws.sha256
    return dataclasses.replace(card, weights=ws, metrics={k: v for k, v in metrics.items()
                                                          if isinstance(v, (int, float))},
                               training=dict(card.training) if same else {})
