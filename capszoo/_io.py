"""Atomic file writing: write to a temporary name in the target folder, then ``os.replace``."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]

_MAX_STEM = 128


@contextlib.contextmanager
def atomic_path(target, *, suffix=""):
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    On any exception the temporary file is removed and ``target`` is left as it
    was, so a reader never sees a half-written file.  ``suffix`` keeps an
    extension that a writer insists on (MXNet appends nothing, but e.g. some
    writers check it).
    """
    target = os.fspath(target)
    folder = os.path.dirname(os.path.abspath(target))
    # The temporary name must itself be a legal name: a 250-byte target name is legal,
    # "." + it + ".XXXXXXXX.tmp" is not.  Keep at most _MAX_STEM bytes of it.
    stem = os.path.basename(target)
    while len(os.fsencode(stem)) > _MAX_STEM:
        stem = stem[:-1]
    fd, tmp = tempfile.mkstemp(prefix="." + stem + ".", suffix=suffix + ".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        # os.replace renames over a symlink at target (the link is replaced, never written through).
        os.replace(tmp, target)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(target, data: bytes):
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_text(target, text: str):
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target, obj, *, indent=2):
    atomic_write_text(target, json.dumps(obj, indent=indent, sort_keys=False) + "\n")
