"""Find a model's pretrained weights: a user path, the Hugging Face cache, the bundled copy, the Hub.

:func:`resolve_weights` returns the path of a weights file whose sha256 is the
one on the model card (except a path the user gives, which is theirs to vouch
for).  It looks, in order, at

1. ``path``, when the caller gives one (used as is: it may be fine-tuned weights);
2. the Hugging Face Hub cache (``cache_dir``, else ``HF_HUB_CACHE``, else
   ``$HF_HOME/hub``), without any network access;
3. the copy bundled in ``capszoo/pretrained`` when the card says one ships, or, for
   the other entries, the copy in ``weights/`` of a source checkout (an editable
   install of a clone of the repository loads every entry offline);
4. the Hub itself, through :func:`huggingface_hub.hf_hub_download`, unless
   ``HF_HUB_OFFLINE`` is on.

When the entry's manifest records a ``capszoo push`` to the card's repository and
revision (its ``"hub"`` record), the ``model.safetensors`` pushed with the weights is
an alternative in 2 and 4: used when the revision holds it but not ``filename``, and
checked against the sha256 in that record.

Every copy from 2-4 is checked against the card's sha256 before it is returned
(huggingface_hub only checks the size); a cached or downloaded copy that fails
the check is removed from the cache, so it can never be picked up later.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``, ``HF_HUB_DOWNLOAD_TIMEOUT`` and ``HF_HUB_ETAG_TIMEOUT``
once, when it is imported.  capszoo reads them again on every call: the cache
folder and the endpoint are passed explicitly, offline mode is decided from the
environment (and nothing touches the network when it is on), and the
offline/timeout values in ``huggingface_hub.constants`` are brought in line with
the environment before capszoo talks to the Hub.

This module does not import MXNet; huggingface_hub is imported on first use.
"""
from __future__ import annotations

import contextlib
import http
import math
import os
import pathlib
import re
import tempfile
import threading
import time
from typing import List, Optional

from .errors import CacheError, InvalidInputError, WeightsIntegrityError, WeightsNotAvailableError
from ._hubrepo import SHA256_HEX, is_repo_id, is_revision
from ._weights import sha256_file

__all__ = ["resolve_weights", "bundled_dir", "checkout_weights_dir", "hub_cache_dir", "hub_endpoint", "hub_offline"]

#: The Hub used when ``HF_ENDPOINT`` is not set.
DEFAULT_ENDPOINT = "https://huggingface.co"
#: Seconds to wait for the Hub when neither ``timeout`` nor ``HF_HUB_DOWNLOAD_TIMEOUT`` says.
DEFAULT_TIMEOUT = 10.0
_TRUE = {"1", "ON", "YES", "TRUE"}
_LIBRARY_NAME = "capszoo"


# --------------------------------------------------------------------------------------------
# Environment, read at call time
# --------------------------------------------------------------------------------------------

def bundled_dir() -> pathlib.Path:
    """Folder holding the weights shipped inside the package (``capszoo/pretrained``).

    Tests monkeypatch this function to point at a folder of their own.
    """
    try:
        from importlib.resources import files

        return pathlib.Path(str(files("capszoo.pretrained")))
    except (ImportError, ModuleNotFoundError, TypeError):  # pragma: no cover - unusual installs
        return pathlib.Path(__file__).resolve().parent / "pretrained"


def checkout_weights_dir() -> Optional[pathlib.Path]:
    """``weights/`` of the source checkout capszoo runs from (an editable install), where the
    weights of the entries that do not ship inside the package live; None for an installed
    package.  Tests monkeypatch this function."""
    root = pathlib.Path(__file__).resolve().parent.parent
    folder = root / "weights"
    return folder if (root / "pyproject.toml").is_file() and folder.is_dir() else None


def hub_cache_dir(cache_dir=None) -> str:
    """The Hugging Face Hub cache folder, from the environment as it is now.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        An explicit folder; returned (expanded) as is.

    Returns
    -------
    str
        ``cache_dir``, else ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else
        ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
        ``~/.cache/huggingface/hub`` (huggingface_hub's own rules).
    """
    if cache_dir is not None:
        try:
            return os.path.expanduser(os.fspath(cache_dir))
        except TypeError:
            raise InvalidInputError(f"cache_dir must be a path, got {type(cache_dir).__name__}") from None
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return os.path.expandvars(os.path.expanduser(env[var]))
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(os.path.expandvars(os.path.expanduser(home)), "hub")


def hub_endpoint() -> str:
    """The Hub endpoint: ``HF_ENDPOINT`` as it is now, else ``https://huggingface.co``."""
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
    if not re.match(r"https?://[^/\s]+", endpoint):
        raise InvalidInputError(f"HF_ENDPOINT={endpoint!r} is not an http(s) URL; set it to the Hub "
                                "(or mirror) URL, e.g. https://huggingface.co, or unset it")
    return endpoint


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is on, as the environment is now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.strip().upper() in _TRUE


def _env_seconds(name) -> Optional[float]:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise InvalidInputError(f"{name}={raw!r} is not a positive number of seconds; fix or unset it")
    return value


def _resolve_timeout(timeout) -> float:
    if timeout is None:
        return _env_seconds("HF_HUB_DOWNLOAD_TIMEOUT") or DEFAULT_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            math.isfinite(timeout) and timeout > 0):
        raise InvalidInputError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _sync_hub_constants():
    """Bring huggingface_hub's import-time settings in line with the environment as it is now."""
    from huggingface_hub import constants as c

    offline = hub_offline()
    if getattr(c, "HF_HUB_OFFLINE", offline) != offline:
        c.HF_HUB_OFFLINE = offline
    env = os.environ
    telemetry_off = any(env.get(v, "").strip().upper() in _TRUE
                        for v in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK"))
    if getattr(c, "HF_HUB_DISABLE_TELEMETRY", telemetry_off) != telemetry_off:
        c.HF_HUB_DISABLE_TELEMETRY = telemetry_off
    xet_off = env.get("HF_HUB_DISABLE_XET", "").strip().upper() in _TRUE
    if getattr(c, "HF_HUB_DISABLE_XET", xet_off) != xet_off:
        c.HF_HUB_DISABLE_XET = xet_off  # uploads: plain HTTP (Git LFS) instead of Xet storage
    for name, default in (("HF_HUB_DOWNLOAD_TIMEOUT", "DEFAULT_DOWNLOAD_TIMEOUT"),
                          ("HF_HUB_ETAG_TIMEOUT", "DEFAULT_ETAG_TIMEOUT")):
        if not hasattr(c, name):
            continue
        value = _env_seconds(name)
        if value is None:
            value = getattr(c, default, DEFAULT_TIMEOUT)
        elif value == int(value):
            value = int(value)
        if getattr(c, name) != value:
            setattr(c, name, value)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def _check_filename(name, filename):
    problem = None
    if not isinstance(filename, str) or not filename:
        problem = "must be a non-empty string"
    elif "\\" in filename:
        problem = "contains a backslash"
    elif "\x00" in filename or any(ord(ch) < 32 for ch in filename):
        problem = "contains a control character"
    elif filename.startswith("/") or re.match(r"[A-Za-z]:", filename) or ":" in filename:
        problem = "is an absolute or drive path (or contains ':')"
    else:
        parts = filename.split("/")
        if any(p in ("", ".", "..") for p in parts):
            problem = "has an empty, '.' or '..' path segment"
        elif any(len(p.encode("utf-8")) > 255 for p in parts):
            problem = "has a segment longer than 255 bytes"
    if problem:
        raise InvalidInputError(f"weights filename {filename!r} of model {name!r} {problem}: it must be a "
                                "plain relative name such as 'capsnet-mnist.params'")


def _check_source(name, ws):
    _check_filename(name, ws.filename)
    if not isinstance(ws.sha256, str) or not SHA256_HEX.fullmatch(ws.sha256):
        raise InvalidInputError(f"sha256 {ws.sha256!r} of model {name!r} is not 64 hex digits")
    if not is_repo_id(ws.hf_repo_id):
        raise InvalidInputError(f"hf_repo_id {ws.hf_repo_id!r} of model {name!r} is not a Hub repository id "
                                "('owner/name' of letters, digits, '.', '_' and '-')")
    if not is_revision(ws.hf_revision):
        raise InvalidInputError(f"hf_revision {ws.hf_revision!r} of model {name!r} is not a branch, tag or "
                                "commit name")


def _user_path(path) -> str:
    try:
        p = os.fspath(path)
    except TypeError:
        raise InvalidInputError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not os.path.exists(p):
        raise WeightsNotAvailableError(f"weights file {p} does not exist; check the path (it is used as "
                                       "given, relative to the current folder)")
    if not os.path.isfile(p):
        what = "a folder" if os.path.isdir(p) else "a device, pipe or socket"
        raise WeightsNotAvailableError(f"weights path {p} is not a regular file ({what}); pass the "
                                       ".params file itself")
    return p


# --------------------------------------------------------------------------------------------
# Cache helpers
# --------------------------------------------------------------------------------------------

def _storage_folder(cache, repo_id):
    return os.path.join(cache, "models--" + repo_id.replace("/", "--"))


def _inside(path, folder) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)
    except ValueError:
        return False


def _discard(path, storage) -> Optional[str]:
    """Remove a cached file and the blob it points to (only inside ``storage``).

    Returns None when done, else a note on what could not be removed.
    """
    failures = []
    targets = [path]
    real = os.path.realpath(path)
    if real != os.path.abspath(path):
        targets.append(real)
    for t in targets:
        if not _inside(t, storage):
            continue
        try:
            os.unlink(t)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failures.append(f"{t} ({exc.strerror or exc})")
    if failures:
        return "could not remove " + ", ".join(failures) + "; delete it by hand"
    return None


def _sha_or_none(path):
    try:
        return sha256_file(path)
    except OSError:
        return None


def _ensure_writable(folder):
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".capszoo-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CacheError(
            f"cannot write to the weights cache folder {folder} ({exc.strerror or exc}); set HF_HOME "
            "(or HF_HUB_CACHE) to a writable folder, or pass cache_dir=..., or pass path= a local "
            "weights file") from None


# --------------------------------------------------------------------------------------------
# Describing failures
# --------------------------------------------------------------------------------------------

def _mro_names(exc):
    return {k.__name__ for k in type(exc).__mro__}


def _describe(exc, timeout) -> str:
    """A short, user-facing reason for a failed Hub request."""
    names = _mro_names(exc)
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if "GatedRepoError" in names:
        return f"{status or 403} gated repository (accept its conditions on the Hub and log in with `hf auth login`)"
    if "RepositoryNotFoundError" in names:
        return f"{status or 404} Repository Not Found"
    if "RevisionNotFoundError" in names:
        return f"{status or 404} Revision Not Found"
    if "EntryNotFoundError" in names and "LocalEntryNotFoundError" not in names:
        return f"{status or 404} Entry Not Found"
    if "OfflineModeIsEnabled" in names:
        return "offline mode is on (HF_HUB_OFFLINE)"
    if isinstance(status, int):
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        return f"HTTP {status} {phrase}"
    if names & {"TimeoutException", "Timeout", "ReadTimeout", "ConnectTimeout", "TimeoutError"}:
        return f"no answer within {timeout:g} s (timed out)"
    if names & {"ConnectError", "ConnectionError", "NetworkError", "ProxyError"}:
        detail = str(exc).strip() or type(exc).__name__
        return f"cannot connect ({detail})"
    if "LocalEntryNotFoundError" in names and exc.__cause__ is not None:
        return _describe(exc.__cause__, timeout)
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return f"{type(exc).__name__}: {detail}"


def _not_available(card, ws, tried, remedy):
    return WeightsNotAvailableError(
        f"no weights obtainable for model {card.name!r} ({ws.filename}); tried in order: "
        + "; ".join(tried) + f". {remedy}")


# --------------------------------------------------------------------------------------------
# The download, bounded in time
# --------------------------------------------------------------------------------------------

class _Cancelled(Exception):
    """Raised inside an abandoned download to stop it at its next chunk."""


class _Stalled(Exception):
    pass


def _progress_tqdm(state, cancelled):
    """A huggingface_hub tqdm class that records progress (and stops an abandoned download)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _ProgressTqdm(hf_tqdm):
        def update(self, n=1):
            state["last"] = time.monotonic()
            if cancelled.is_set():
                raise _Cancelled("download abandoned by capszoo")
            return super().update(n)

    return _ProgressTqdm


def _incomplete_sizes(blobs, etag):
    try:
        with os.scandir(blobs) as it:
            return {e.name: e.stat().st_size for e in it
                    if e.name.startswith(etag) and e.name.endswith(".incomplete")}
    except OSError:
        return {}


def _accepts(fn, name) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _download(kwargs, *, stall_limit, blobs, etag):
    """Run ``hf_hub_download(**kwargs)`` in a thread; give up after ``stall_limit`` s without progress.

    Progress is this download's (reported in huggingface_hub's chunks) or the growth of another
    process's temporary file for the same blob (it holds the lock we wait on).
    """
    from huggingface_hub import hf_hub_download

    state = {"last": time.monotonic()}
    cancelled = threading.Event()
    if _accepts(hf_hub_download, "tqdm_class"):
        kwargs = dict(kwargs, tqdm_class=_progress_tqdm(state, cancelled))
    result = {}

    def run():
        try:
            result["path"] = hf_hub_download(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc

    worker = threading.Thread(target=run, name="capszoo-hub-download", daemon=True)
    worker.start()
    sizes = _incomplete_sizes(blobs, etag)
    try:
        while True:
            worker.join(0.05)
            if not worker.is_alive():
                break
            now_sizes = _incomplete_sizes(blobs, etag)
            if now_sizes != sizes:
                sizes = now_sizes
                state["last"] = time.monotonic()
            if time.monotonic() - state["last"] > stall_limit:
                raise _Stalled()
    except BaseException:
        cancelled.set()
        raise
    if "error" in result:
        raise result["error"]
    return result["path"]


def _clean_legacy_incomplete(cache, repo_folder, blobs, etag):
    """Remove ``blobs/<etag>.incomplete`` left by a killed download, under huggingface_hub's lock.

    Older huggingface_hub versions resume from that file, so a poisoned leftover would become part of
    the blob (the sha256 check would catch it, but the download would fail).
    """
    leftover = os.path.join(blobs, etag + ".incomplete")
    if not os.path.lexists(leftover):
        return
    try:
        from filelock import FileLock, Timeout
    except ImportError:  # pragma: no cover - a huggingface_hub dependency
        return
    lock_path = os.path.join(cache, ".locks", repo_folder, etag + ".lock")
    try:
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        with FileLock(lock_path, timeout=2):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    except (OSError, Timeout):  # someone is downloading it right now: leave it
        pass


def _from_hub(card, ws, *, cache, expected, force_download, timeout, tried):
    label = f"hub {ws.hf_repo_id}@{ws.hf_revision}"
    endpoint = hub_endpoint()
    _ensure_writable(cache)
    _sync_hub_constants()
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
    except ImportError:  # pragma: no cover - a dependency
        tried.append(f"{label}: huggingface_hub is not installed")
        raise _not_available(card, ws, tried, "Install it (pip install huggingface_hub), or pass path= "
                                              "a local weights file.") from None

    url = hf_hub_url(ws.hf_repo_id, ws.filename, revision=ws.hf_revision, endpoint=endpoint)
    remedy_network = (f"Check your network connection and HF_ENDPOINT ({endpoint}) and try again, or "
                      f"download {url} yourself and pass path=... .")
    remedy_missing = ("The model card's Hub location does not exist there: upgrade capszoo, check "
                      f"HF_ENDPOINT ({endpoint}), or pass path= a local weights file.")

    # 1. Metadata, without huggingface_hub's retries: a clear reason, fast.
    meta_kwargs = dict(url=url, timeout=timeout, library_name=_LIBRARY_NAME)
    for name, value in (("endpoint", endpoint), ("retry_on_errors", False)):
        if _accepts(get_hf_file_metadata, name):
            meta_kwargs[name] = value
    try:
        meta = get_hf_file_metadata(**meta_kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a WeightsNotAvailableError
        reason = _describe(exc, timeout)
        tried.append(f"{label}: {reason}")
        missing = any(s in reason for s in ("Not Found", "gated"))
        raise _not_available(card, ws, tried, remedy_missing if missing else remedy_network) from exc
    etag = meta.etag
    if not meta.commit_hash or not etag or "/" in etag or "\\" in etag or etag in (".", ".."):
        lacking = "X-Repo-Commit" if not meta.commit_hash else "a usable ETag"
        tried.append(f"{label}: the server's answer lacks {lacking}, so {endpoint} does not look like a "
                     "Hugging Face Hub")
        raise _not_available(card, ws, tried, "Check HF_ENDPOINT (unset it for huggingface.co), your proxy "
                                              "and firewall, or pass path= a local weights file.")

    # 2. Leftovers that must not be reused: a bad blob or pointer, a legacy partial download.
    from huggingface_hub.file_download import repo_folder_name

    repo_folder = repo_folder_name(repo_id=ws.hf_repo_id, repo_type="model")
    storage = os.path.join(cache, repo_folder)
    blobs = os.path.join(storage, "blobs")
    pointer = os.path.join(storage, "snapshots", meta.commit_hash, *ws.filename.split("/"))
    for candidate in (pointer, os.path.join(blobs, etag)):
        if os.path.isfile(candidate) and _sha_or_none(candidate) != expected:
            _discard(candidate, storage)
    _clean_legacy_incomplete(cache, repo_folder, blobs, etag)

    # 3. The download, bounded: no progress for `stall_limit` seconds -> give up.
    stall_limit = 3 * timeout + 1
    kwargs = dict(repo_id=ws.hf_repo_id, filename=ws.filename, revision=ws.hf_revision, cache_dir=cache,
                  force_download=force_download, etag_timeout=timeout, endpoint=endpoint,
                  library_name=_LIBRARY_NAME)
    try:
        local = _download(kwargs, stall_limit=stall_limit, blobs=blobs, etag=etag)
    except _Stalled:
        tried.append(f"{label}: the download stalled (no data for {stall_limit:g} s)")
        raise _not_available(card, ws, tried, remedy_network + " On a slow link pass a larger timeout= "
                                                               "(or set HF_HUB_DOWNLOAD_TIMEOUT).") from None
    except Exception as exc:  # noqa: BLE001
        errno_ = getattr(exc, "errno", None)
        import errno as _errno

        if isinstance(exc, PermissionError) or errno_ in (_errno.EACCES, _errno.EPERM, _errno.EROFS,
                                                           _errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
            raise CacheError(
                f"cannot write the weights into the cache folder {cache} ({exc.strerror or exc}); set "
                "HF_HOME (or HF_HUB_CACHE) to a writable folder with free space, or pass cache_dir=...") from exc
        reason = _describe(exc, timeout)
        sizes = re.search(r"should be of size (\d+) but has size (\d+)", str(exc))
        if sizes:
            reason = f"the download was incomplete (got {sizes.group(2)} of {sizes.group(1)} bytes)"
        tried.append(f"{label}: {reason}")
        missing = any(s in reason for s in ("Not Found", "gated"))
        raise _not_available(card, ws, tried, remedy_missing if missing else remedy_network) from exc

    # 4. huggingface_hub checked the size only: check the content.
    actual = _sha_or_none(local)
    if actual != expected:
        note = _discard(local, storage)
        removed = f"it was not removed: {note}" if note else "the corrupt copy was removed from the cache"
        raise WeightsIntegrityError(
            f"the weights {ws.filename} downloaded from {ws.hf_repo_id}@{ws.hf_revision} ({endpoint}) have "
            f"sha256 {actual or 'unreadable'}, expected {expected}; {removed}. Run the command again to "
            "download it afresh (a transfer or proxy error); if it happens again, the file on the Hub is not "
            "the published one: report it, or pass path= a copy you trust.")
    return local


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------

def resolve_weights(card, *, path=None, cache_dir=None, force_download=False, timeout=None,
                    local_only=False) -> str:
    """Local path of ``card``'s pretrained weights, sha256-verified; downloads them if needed.

    Parameters
    ----------
    card : ModelCard
        The model card; ``card.weights`` says where the weights live and their sha256.
    path : str or os.PathLike, optional
        A weights file of the user's (e.g. fine-tuned): returned as given, without any sha256
        check, once it is known to be a regular file.
    cache_dir : str or os.PathLike, optional
        Hugging Face cache folder to use instead of ``HF_HUB_CACHE`` / ``$HF_HOME/hub``.
    force_download : bool, optional
        Ignore the cache and the bundled copy and fetch the file from the Hub again.
    timeout : float, optional
        Seconds to wait for the Hub (metadata request, connection). The download is abandoned when no
        data arrives for ``3 * timeout + 1`` seconds (progress is observed in huggingface_hub's
        10 MB chunks). Default: ``HF_HUB_DOWNLOAD_TIMEOUT`` if set, else 10.
    local_only : bool, optional
        Look only in the cache and the bundled folder, never on the network (e.g. for
        ``capszoo info``, which must not start a download).

    Returns
    -------
    str
        ``path`` when given; else a file in the Hub cache or the bundled folder whose sha256 is
        ``card.weights.sha256``.

    Raises
    ------
    WeightsNotAvailableError
        ``path`` is missing or not a file; the card has no weights; or no source had them (offline
        mode, not on the Hub, network failure, stalled or truncated download). The message lists
        every source tried, in order, and what to do.
    WeightsIntegrityError
        The bundled copy, or the file just downloaded, does not have the card's sha256 (a bad
        download is removed from the cache first).
    CacheError
        The cache folder cannot be written when a download is needed.
    InvalidInputError
        A card whose filename, repository, revision or sha256 is malformed (a filename with
        ``..``, an absolute path, a backslash...), or a bad option; raised before any request.
    """
    if path is not None:
        return _user_path(path)
    name = getattr(card, "name", repr(card))
    ws = getattr(card, "weights", None)
    if ws is None:
        recipe = getattr(card, "recipe", None) or name
        raise WeightsNotAvailableError(
            f"no pretrained weights are published for {name} yet; train them with "
            f"`capszoo train {recipe}` and pass the .params path (path=... / --weights)")
    _check_source(name, ws)
    if not isinstance(force_download, bool):
        raise InvalidInputError(f"force_download must be True or False, got {force_download!r}")
    timeout = _resolve_timeout(timeout)
    expected = ws.sha256.lower()
    cache = os.path.abspath(hub_cache_dir(cache_dir))
    offline = hub_offline()
    tried: List[str] = []

    alternate = _safetensors_alternate(card, ws)
    if force_download:
        tried.append("cache: skipped (force_download)")
        tried.append("bundled: skipped (force_download)")
    else:
        found = _from_cache(ws, cache=cache, expected=expected, tried=tried)
        if found:
            return found
        if alternate is not None:
            found = _from_cache(alternate, cache=cache, expected=alternate.sha256, tried=tried)
            if found:
                return found
        found = _from_bundled(ws, expected=expected, tried=tried)
        if found:
            return found

    if local_only:
        tried.append(f"hub {ws.hf_repo_id}@{ws.hf_revision}: skipped (local_only)")
        raise _not_available(card, ws, tried, "Call again without local_only to download, or pass path= "
                                              "a local weights file.")
    if offline:
        tried.append(f"hub {ws.hf_repo_id}@{ws.hf_revision}: skipped, offline mode is on "
                     f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE') or os.environ.get('TRANSFORMERS_OFFLINE')})")
        raise _not_available(card, ws, tried, "Offline mode is on: unset HF_HUB_OFFLINE (or set it to 0) "
                                              "to download, or pass path= a local weights file.")
    try:
        return _from_hub(card, ws, cache=cache, expected=expected, force_download=force_download,
                         timeout=timeout, tried=tried)
    except WeightsNotAvailableError as exc:
        if alternate is None or "404 Entry Not Found" not in str(exc):
            raise
    return _from_hub(card, alternate, cache=cache, expected=alternate.sha256, force_download=force_download,
                     timeout=timeout, tried=tried)


def _safetensors_alternate(card, ws):
    """The same weights as ``model.safetensors``, when the entry's manifest records that they were
    pushed there (``capszoo push``) to the card's repository and revision; else None."""
    from ._publish import SAFETENSORS_NAME, published_record

    record = published_record(getattr(card, "name", None))
    if not record or (record.get("repo_id"), record.get("revision")) != (ws.hf_repo_id, ws.hf_revision):
        return None
    files = record["files"]
    mine, alt = files.get(ws.filename), files.get(SAFETENSORS_NAME)
    if not (isinstance(mine, dict) and isinstance(alt, dict) and mine.get("sha256") == ws.sha256
            and isinstance(alt.get("sha256"), str) and SHA256_HEX.fullmatch(alt["sha256"])
            and isinstance(alt.get("size"), int)):
        return None
    import dataclasses

    return dataclasses.replace(ws, filename=SAFETENSORS_NAME, sha256=alt["sha256"].lower(), size_bytes=alt["size"],
                               bundled=False)


def _from_cache(ws, *, cache, expected, tried) -> Optional[str]:
    where = f"cache {cache}"
    if not os.path.isdir(cache):
        tried.append(f"{where}: not found")
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        tried.append(f"{where}: huggingface_hub is not installed")
        return None
    try:
        hit = try_to_load_from_cache(ws.hf_repo_id, ws.filename, cache_dir=cache, revision=ws.hf_revision)
    except (OSError, ValueError) as exc:
        tried.append(f"{where}: unreadable ({exc})")
        return None
    if not isinstance(hit, str):
        tried.append(f"{where}: not found")
        return None
    actual = _sha_or_none(hit)
    if actual == expected:
        return hit
    note = _discard(hit, _storage_folder(cache, ws.hf_repo_id))
    tried.append(f"{where}: a copy with sha256 {actual or 'unreadable'} (expected {expected}) was "
                 + ("found and removed" if not note else f"found and not used; {note}"))
    return None


def _from_checkout(ws, *, expected, tried) -> Optional[str]:
    folder = checkout_weights_dir()
    if folder is None:
        tried.append("bundled: not shipped in the package; checkout: capszoo is not running from a source "
                     "checkout (an editable install of a clone finds these weights in its weights/)")
        return None
    return _verified_file(
        folder, ws, expected, tried, missing=f"bundled: not shipped; checkout: not in {folder}",
        damaged="the weights {path} in the source checkout have sha256 {actual}, expected {expected}: restore the "
                "file (git checkout -- weights/{filename}), or pass path= a weights file you trust.")


def _from_bundled(ws, *, expected, tried) -> Optional[str]:
    if not ws.bundled:
        return _from_checkout(ws, expected=expected, tried=tried)
    folder = bundled_dir()
    return _verified_file(
        folder, ws, expected, tried, missing=f"bundled: missing from {folder} (damaged install: reinstall capszoo)",
        damaged="the bundled weights {path} have sha256 {actual}, expected {expected}: the capszoo installation "
                "is damaged or modified. Reinstall it (pip install --force-reinstall --no-deps capszoo), or pass "
                "path= a weights file you trust.")


def _verified_file(folder, ws, expected, tried, *, missing, damaged) -> Optional[str]:
    """``ws.filename`` in ``folder`` when its sha256 is ``expected``; None (noting ``missing`` in ``tried``) when
    absent; WeightsIntegrityError (``damaged`` with the path, digests and file name filled in) when it differs."""
    candidate = os.path.join(os.fspath(folder), *ws.filename.split("/"))
    if not os.path.isfile(candidate):
        tried.append(missing)
        return None
    actual = _sha_or_none(candidate)
    if actual != expected:
        raise WeightsIntegrityError(damaged.format(path=candidate, actual=actual or "unreadable", expected=expected,
                                                    filename=ws.filename))
    return candidate
