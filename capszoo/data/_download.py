"""Download of the four MNIST idx files into a local folder, checksums verified.

Each file is fetched as ``<mirror base URL> + <name> + ".gz"`` from the first
mirror that answers with a body whose *decompressed* content has the md5
published with the data set (:data:`capszoo.data._mnist.MNIST_FILES`); the
compressed bytes may differ between mirrors.  A file is written only once it
has been verified, and atomically (temporary name in the same folder, then
``os.replace``), so the folder never holds a partial file, even after an
interrupt.  Files already present and verified are not downloaded again.

Environment
-----------
CAPSZOO_MNIST_MIRRORS
    Comma-separated base URLs used instead of :data:`DEFAULT_MIRRORS` when no
    ``mirrors`` argument is given (for a proxy, an internal mirror or tests).
CAPSZOO_HOME
    Root of the capszoo cache; MNIST goes to ``$CAPSZOO_HOME/data/mnist``.
    Without it: ``$XDG_CACHE_HOME/capszoo/data/mnist`` or
    ``~/.cache/capszoo/data/mnist``.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib

from .._io import atomic_write_bytes
from ..errors import CacheError, DownloadError, InvalidInputError
from ._idx import MAX_DECOMPRESSED_BYTES
from ._mnist import MNIST_FILES

__all__ = ["DEFAULT_MIRRORS", "MIRRORS_ENV", "MAX_DOWNLOAD_BYTES", "cache_dir", "download_mnist"]

#: Base URLs tried in order; a file is fetched as ``base + name + ".gz"``.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

#: Environment variable with comma-separated base URLs that replace :data:`DEFAULT_MIRRORS`.
MIRRORS_ENV = "CAPSZOO_MNIST_MIRRORS"

#: Largest compressed body accepted from a mirror (the biggest MNIST .gz is about 10 MB).
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024

_CHUNK = 1 << 20
_USER_AGENT = "capszoo-mnist-download"
_REMEDY = ("set CAPSZOO_HOME to a writable folder, or pass --data-dir with a folder "
           "holding the four MNIST idx files")


class _MirrorFailure(Exception):
    """One mirror's failure for one file; its message is the reason shown to the user."""


# --------------------------------------------------------------------------- cache folder

def _cache_root():
    home = os.environ.get("CAPSZOO_HOME")
    if home:
        return os.path.expanduser(home), "CAPSZOO_HOME"
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "capszoo"), None


def _make_dir(path):
    """Create ``path`` (and parents); :class:`CacheError` if that is impossible."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the MNIST folder {path} ({exc.strerror or exc}); "
                         f"{_REMEDY}") from None
    if not os.path.isdir(path):  # pragma: no cover - makedirs raises for files already
        raise CacheError(f"{path} exists and is not a folder; {_REMEDY}")


def _check_writable(path):
    """Prove that files can be created in ``path`` by creating (and removing) one."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".capszoo-write-test.", suffix=".tmp", dir=path)
    except OSError as exc:
        raise CacheError(f"the MNIST folder {path} is not writable ({exc.strerror or exc}); "
                         f"{_REMEDY}") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:  # pragma: no cover - we just created it
        pass


def cache_dir():
    """Folder where downloaded MNIST files are kept, created if needed.

    Returns
    -------
    str
        ``$CAPSZOO_HOME/data/mnist`` when ``CAPSZOO_HOME`` is set, else
        ``$XDG_CACHE_HOME/capszoo/data/mnist`` (absolute ``XDG_CACHE_HOME``
        only), else ``~/.cache/capszoo/data/mnist``.

    Raises
    ------
    CacheError
        The folder cannot be created or is not writable (``os.access``; the
        write itself is checked again before a download).
    """
    root, _ = _cache_root()
    path = os.path.join(root, "data", "mnist")
    _make_dir(path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise CacheError(f"the MNIST cache folder {path} is not writable; {_REMEDY}")
    return path


# --------------------------------------------------------------------------- arguments

def _resolve_mirrors(mirrors):
    source = "the mirrors argument"
    if mirrors is None:
        env = os.environ.get(MIRRORS_ENV, "").strip()
        if env:
            mirrors = [m.strip() for m in env.split(",") if m.strip()]
            source = f"${MIRRORS_ENV}"
        else:
            mirrors = DEFAULT_MIRRORS
    elif isinstance(mirrors, (str, bytes)):
        mirrors = [mirrors]
    try:
        mirrors = list(mirrors)
    except TypeError:
        raise InvalidInputError(f"mirrors must be a sequence of base URLs, got {type(mirrors).__name__}; "
                                "e.g. mirrors=['https://example.org/mnist/']") from None
    if not mirrors:
        raise InvalidInputError(f"no MNIST mirror given in {source}; give at least one base URL "
                                "such as 'https://example.org/mnist/'")
    out = []
    for m in mirrors:
        if not isinstance(m, str):
            raise InvalidInputError(f"mirror {m!r} in {source} is not a string; give base URLs "
                                    "such as 'https://example.org/mnist/'")
        parts = urllib.parse.urlsplit(m)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInputError(f"mirror {m!r} in {source} is not an http(s) URL; give base URLs "
                                    "such as 'https://example.org/mnist/'")
        out.append(m if m.endswith("/") else m + "/")
    return out


def _positive(name, value, kind=(int, float)):
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        raise InvalidInputError(f"{name} must be a positive number, got {value!r}")
    return value


def _select(split):
    if split is None:
        return MNIST_FILES
    if split not in ("train", "test"):
        raise InvalidInputError(f"unknown MNIST split {split!r}; use 'train', 'test' or None for both")
    return tuple(f for f in MNIST_FILES if f.split == split)


# --------------------------------------------------------------------------- verification

def _md5_of_content(fileobj, max_decompressed_bytes):
    """md5 of the content of ``fileobj``: gunzipped when it starts with the gzip magic.

    Raises :class:`_MirrorFailure` for corrupt gzip data or content over the cap.
    """
    head = fileobj.read(2)
    fileobj.seek(0)
    md5 = hashlib.md5()
    total = 0
    try:
        stream = gzip.GzipFile(fileobj=fileobj) if head == b"\x1f\x8b" else fileobj
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_decompressed_bytes:
                raise _MirrorFailure(f"content decompresses to more than {max_decompressed_bytes:,} "
                                     "bytes (not an MNIST file, possibly a gzip bomb)")
            md5.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise _MirrorFailure(f"corrupt or truncated gzip data ({exc})") from None
    return md5.hexdigest()


def _local_file_verifies(path, entry, max_decompressed_bytes):
    try:
        with open(path, "rb") as fh:
            return _md5_of_content(fh, max_decompressed_bytes) == entry.md5
    except (_MirrorFailure, OSError):
        return False


def _present(dest, entry, max_decompressed_bytes):
    """Path of a verified copy of ``entry`` in ``dest`` (the one load_mnist would read), else None."""
    gz = os.path.join(dest, entry.name + ".gz")
    raw = os.path.join(dest, entry.name)
    # Same preference as find_mnist_file: a .gz hides a raw file of the same name.
    candidate = gz if os.path.isfile(gz) else raw if os.path.isfile(raw) else None
    if candidate and _local_file_verifies(candidate, entry, max_decompressed_bytes):
        return candidate
    return None


# --------------------------------------------------------------------------- network

def _fetch(url, *, timeout, max_bytes):
    """Body of ``url`` (at most ``max_bytes``); :class:`_MirrorFailure` with a reason otherwise."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length", "")
            if length.strip().isdigit() and int(length) > max_bytes:
                raise _MirrorFailure(f"body of {int(length):,} bytes is larger than the "
                                     f"{max_bytes:,} accepted")
            body = bytearray()
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise _MirrorFailure(f"body is larger than the {max_bytes:,} bytes accepted")
            return bytes(body)
    except urllib.error.HTTPError as exc:
        raise _MirrorFailure(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _MirrorFailure(f"timed out after {timeout:g} s") from None
        raise _MirrorFailure(f"cannot connect ({exc.reason})") from None
    except TimeoutError:
        raise _MirrorFailure(f"timed out after {timeout:g} s") from None
    except http.client.HTTPException as exc:
        raise _MirrorFailure(f"broken HTTP response ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise _MirrorFailure(f"network error ({exc})") from None


def _download_one(entry, mirrors, *, timeout, max_bytes, max_decompressed_bytes, report):
    fname = entry.name + ".gz"
    failures = []
    for base in mirrors:
        url = base + fname
        report(f"{fname}: downloading {url}")
        try:
            body = _fetch(url, timeout=timeout, max_bytes=max_bytes)
            if body[:2] != b"\x1f\x8b":
                raise _MirrorFailure(f"not gzip data ({len(body):,} bytes starting with {body[:16]!r}); "
                                     "the server sent something else, e.g. an error page")
            md5 = _md5_of_content(io.BytesIO(body), max_decompressed_bytes)
            if md5 != entry.md5:
                raise _MirrorFailure(f"checksum mismatch: md5 of the decompressed content is {md5}, "
                                     f"expected {entry.md5}")
        except _MirrorFailure as exc:
            report(f"{fname}: {url} failed: {exc}")
            failures.append((url, str(exc)))
            continue
        return body
    lines = "\n".join(f"  - {url}: {reason}" for url, reason in failures)
    raise DownloadError(
        f"could not download {fname} from any of {len(mirrors)} mirror(s):\n{lines}\n"
        f"Check the network or proxy settings, point {MIRRORS_ENV} at a reachable mirror "
        "(comma-separated base URLs), or pass --data-dir with a folder holding the four "
        "MNIST idx files (.gz or raw).")


def download_mnist(*, mirrors=None, dest=None, split=None, timeout=30.0,
                   max_bytes=MAX_DOWNLOAD_BYTES, max_decompressed_bytes=MAX_DECOMPRESSED_BYTES,
                   progress=None):
    """Make sure the MNIST idx files are in a folder, downloading the missing ones.

    Parameters
    ----------
    mirrors : sequence of str, optional
        Base URLs tried in order (a single string is one mirror); a file is
        fetched as ``base + name + ".gz"``.  Default: ``$CAPSZOO_MNIST_MIRRORS``
        (comma-separated) when set, else :data:`DEFAULT_MIRRORS`.
    dest : str or os.PathLike, optional
        Target folder, created if needed.  Default: :func:`cache_dir`.
    split : {"train", "test"}, optional
        Only the two files of that split.  Default: all four.
    timeout : float
        Seconds allowed for connecting and for each read from the socket.
    max_bytes : int
        Largest compressed body accepted from a mirror.
    max_decompressed_bytes : int
        Largest decompressed content accepted (guards against gzip bombs).
    progress : callable, optional
        Called with one-line status messages (``str``); nothing is printed
        otherwise.

    Returns
    -------
    str
        The folder holding the verified files (``<name>.gz``, or a verified
        raw ``<name>`` that was already there).

    Raises
    ------
    DownloadError
        A file could not be fetched from any mirror; the message lists each
        mirror's failure (HTTP status, time-out, checksum mismatch, ...).  A
        checksum mismatch is a per-mirror failure, so it is reported this way
        (with the word "checksum") even when there is a single mirror;
        :class:`~capszoo.errors.ChecksumMismatchError` is not raised here.
    CacheError
        ``dest`` cannot be created or written.
    InvalidInputError
        A malformed mirror URL, split or size/time limit.

    Notes
    -----
    A file is verified by the md5 of its decompressed content against the
    published md5 in :data:`~capszoo.data._mnist.MNIST_FILES`, both for files
    already in ``dest`` (an unverified one is downloaded again and replaced)
    and for downloaded bodies.  A verified body is written atomically, so an
    interrupted or failed call leaves no partial or temporary file, and
    concurrent calls are safe.
    """
    mirrors = _resolve_mirrors(mirrors)
    _positive("timeout", timeout)
    _positive("max_bytes", max_bytes, int)
    _positive("max_decompressed_bytes", max_decompressed_bytes, int)
    entries = _select(split)
    if progress is not None and not callable(progress):
        raise InvalidInputError(f"progress must be callable (e.g. print), got {type(progress).__name__}")
    report = progress if progress is not None else (lambda message: None)

    if dest is None:
        dest = cache_dir()
    else:
        dest = os.path.abspath(os.fspath(dest))
        _make_dir(dest)

    writable = False
    for entry in entries:
        fname = entry.name + ".gz"
        found = _present(dest, entry, max_decompressed_bytes)
        if found:
            report(f"{os.path.basename(found)}: present in {dest}, checksum verified")
            continue
        if not writable:
            # Fail before spending time on the network.
            _check_writable(dest)
            writable = True
        body = _download_one(entry, mirrors, timeout=timeout, max_bytes=max_bytes,
                             max_decompressed_bytes=max_decompressed_bytes, report=report)
        target = os.path.join(dest, fname)
        try:
            atomic_write_bytes(target, body)
        except OSError as exc:
            raise CacheError(f"cannot write {target} ({exc.strerror or exc}); {_REMEDY}") from None
        report(f"{fname}: saved to {target} ({len(body):,} bytes, checksum verified)")
    return dest
