"""Weights as safetensors: a strict reader (no dependency) and a writer (the ``safetensors`` package).

The Hub's usual weights format holds the same named float32 arrays as capszoo's
``.params`` files.  :func:`capszoo._weights.read_params` hands a file whose name
ends in ``.safetensors`` to :func:`read_safetensors`, so ``capszoo.load(name,
weights="model.safetensors")`` works like a ``.params`` path, with the same
checks of names, shapes, dtypes and finiteness afterwards.

Format (https://github.com/huggingface/safetensors)::

    u64 N (little-endian), N bytes of UTF-8 JSON header (may end in spaces), the data buffer.
    header = {name: {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]}, ...,
              "__metadata__": {str: str}}   (metadata optional)

Offsets count from the start of the data buffer; arrays are little-endian, in C
order, and together cover the buffer exactly, with no gap and no overlap.  The
reader checks every one of these rules and bounds every length by the file size
before it allocates anything.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from ._io import atomic_write_bytes
from .errors import InvalidInputError, WeightsFormatError

__all__ = ["read_safetensors", "parse_safetensors", "safetensors_metadata", "save_safetensors",
           "is_safetensors_path", "SUFFIX"]

SUFFIX = ".safetensors"
#: Largest header read (the safetensors library's own limit).
MAX_HEADER_BYTES = 100 * 1000 * 1000
#: The dtypes a capszoo weights file may name (the ones the ``.params`` reader accepts).
_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "U8": np.uint8, "I32": np.int32,
           "I8": np.int8, "I64": np.int64}
_NUMPY_TO_CODE = {np.dtype(v): k for k, v in _DTYPES.items()}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def is_safetensors_path(path) -> bool:
    """True when ``path``'s name ends in ``.safetensors`` (any case)."""
    return os.fsdecode(os.fspath(path)).lower().endswith(SUFFIX)


def _fail(name, problem):
    return WeightsFormatError(f"{name}: {problem}; this is not a safetensors file of capszoo weights "
                              "(download it again, or write it again with `capszoo push ... --dry-run -o DIR`)")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _reject_constant(token):
    raise ValueError(f"{token} is not a number JSON allows")


def _header(data, name):
    """``(header dict, start of the data buffer)`` of the bytes of a safetensors file."""
    if len(data) < 8:
        raise _fail(name, f"{len(data)} bytes is too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise _fail(name, f"the header declares {n:,} bytes, but the file has {len(data) - 8:,} after the "
                          "length field")
    raw = data[8:8 + n]
    if raw[:1] != b"{":
        raise _fail(name, "the header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(name, f"the header is not valid UTF-8 JSON ({str(exc)[:200]})") from None
    if not isinstance(header, dict):
        raise _fail(name, "the header is not a JSON object")
    return header, 8 + n


def _check_metadata(meta, name):
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _fail(name, "__metadata__ must map strings to strings")
    return dict(meta)


def _entry(key, info, name, buffer_size):
    """``(begin, end, dtype, shape)`` of one header entry, checked."""
    if not key:
        raise _fail(name, "an array has an empty name")
    if not isinstance(info, dict) or set(info) != _ENTRY_KEYS:
        raise _fail(name, f"array {key!r} must have exactly the fields dtype, shape and data_offsets")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if code not in _DTYPES:
        raise _fail(name, f"array {key!r} has dtype {code!r}, which capszoo weights never use")
    if not (isinstance(shape, list) and len(shape) <= 8
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise _fail(name, f"array {key!r} has shape {str(shape)[:80]}: a list of at most 8 non-negative integers "
                          "is needed")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= buffer_size):
        raise _fail(name, f"array {key!r} has data_offsets {str(offsets)[:80]}, outside the "
                          f"{buffer_size:,}-byte data buffer")
    dtype = np.dtype(_DTYPES[code]).newbyteorder("<")
    count = 1
    for d in shape:
        count *= d
        if count * dtype.itemsize > buffer_size:
            raise _fail(name, f"array {key!r} declares shape {tuple(shape)}, larger than the file")
    if offsets[1] - offsets[0] != count * dtype.itemsize:
        raise _fail(name, f"array {key!r} of shape {tuple(shape)} and dtype {code} needs "
                          f"{count * dtype.itemsize:,} bytes, its data_offsets span {offsets[1] - offsets[0]:,}")
    return offsets[0], offsets[1], dtype, tuple(shape)


def parse_safetensors(data: bytes, name="<bytes>"):
    """``({array name: numpy array}, metadata)`` of the bytes of a safetensors file.

    Raises
    ------
    WeightsFormatError
        A file that breaks the format: a short or oversized header, a header that is not
        a JSON object (or repeats a key), unknown fields or dtypes, shapes that do not
        match their byte ranges, ranges outside the buffer, gaps, overlaps or trailing bytes.
    """
    header, start = _header(data, name)
    meta = _check_metadata(header.pop("__metadata__", {}), name)
    buffer_size = len(data) - start
    entries = sorted((_entry(k, v, name, buffer_size) + (k,) for k, v in header.items()),
                     key=lambda e: (e[0], e[1]))
    pos = 0
    for begin, end, _dtype, _shape, key in entries:
        if begin != pos:
            what = "overlaps the array before it" if begin < pos else f"leaves {begin - pos:,} unused bytes before it"
            raise _fail(name, f"array {key!r} {what}")
        pos = end
    if pos != buffer_size:
        raise _fail(name, f"{buffer_size - pos:,} unexpected bytes after the last array")
    view = memoryview(data)[start:]
    arrays = {key: np.frombuffer(view[begin:end], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="),
                                                                                      copy=False)
              for begin, end, dtype, shape, key in entries}
    return arrays, meta


def _read_bytes(path, max_bytes):
    from ._weights import MAX_PARAMS_BYTES, read_weights_bytes  # imported here: _weights imports this module

    return read_weights_bytes(path, max_bytes=MAX_PARAMS_BYTES if max_bytes is None else max_bytes)


def read_safetensors(path, *, max_bytes=None):
    """Read a ``.safetensors`` file into ``{name: numpy array}`` (read-only arrays), strictly.

    Raises
    ------
    WeightsFormatError
        A missing, unreadable or oversized file, or one that breaks the format (see
        :func:`parse_safetensors`).
    """
    name = os.fsdecode(os.fspath(path))
    return parse_safetensors(_read_bytes(name, max_bytes), name)[0]


def safetensors_metadata(path, *, max_bytes=None) -> dict:
    """The ``__metadata__`` strings of a ``.safetensors`` file (after the same checks as reading it)."""
    name = os.fsdecode(os.fspath(path))
    return parse_safetensors(_read_bytes(name, max_bytes), name)[1]


def save_safetensors(arrays, path, *, metadata=None):
    """Write ``{name: numpy array}`` to ``path`` as safetensors, atomically, and read it back.

    Written by the ``safetensors`` package's numpy API; the file is then parsed by
    :func:`parse_safetensors` and compared array by array with ``arrays`` before it
    replaces ``path``.

    Raises
    ------
    InvalidInputError
        An array of a dtype capszoo weights never use, or metadata that is not str -> str.
    """
    try:
        from safetensors.numpy import save
    except ImportError:  # pragma: no cover - a dependency
        raise InvalidInputError("writing safetensors needs the safetensors package: "
                                "pip install safetensors") from None
    clean = {}
    for key, a in arrays.items():
        a = np.asarray(a)
        if a.dtype not in _NUMPY_TO_CODE:
            raise InvalidInputError(f"array {key!r} has dtype {a.dtype}, which capszoo weights never use")
        clean[str(key)] = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
    meta = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise InvalidInputError("safetensors metadata must map strings to strings")
    data = save(clean, metadata=meta or None)
    back, _ = parse_safetensors(data, os.fspath(path))
    if set(back) != set(clean) or any(back[k].tobytes() != clean[k].tobytes() or back[k].shape != clean[k].shape
                                      for k in clean):  # pragma: no cover - writer and reader disagree
        raise WeightsFormatError(f"the safetensors bytes for {os.fspath(path)} do not read back as the arrays "
                                 "written; this is a bug, please report it")
    atomic_write_bytes(path, data)
    return path
