"""Weights files: a strict reader of MXNet ``.params`` files, validation, sha256.

MXNet's own ``nd.load`` trusts the file (a huge declared shape allocates, a bad
one trips C++ checks) and Gluon's ``load_parameters`` validates with ``assert``,
which ``python -O`` strips.  capszoo parses the format itself, bounds every
length against the file size, and checks names, shapes, dtypes and finiteness
explicitly before any value reaches a net.

Format (``NDArray::Save`` of a named list, MXNet 1.x)::

    u64 0x112, u64 reserved, u64 count,
    count x [u32 magic 0xF993FAC9 (V2) or 0xF993FACA (V3), i32 storage type (0 = dense),
             i32 ndim, i64 dims[ndim], i32 dev_type, i32 dev_id, i32 dtype flag, data],
    u64 count, count x [u64 length, name bytes]
"""
from __future__ import annotations

import errno
import hashlib
import os
import struct

import numpy as np

from ._io import atomic_path
from .errors import WeightsFormatError, WeightsIntegrityError

__all__ = ["read_params", "read_weights_bytes", "check_params", "load_params_into", "save_params",
           "sha256_file", "verify_sha256", "param_shapes"]

_LIST_MAGIC = 0x112
_ND_MAGICS = (0xF993FAC9, 0xF993FACA)
_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}
_DTYPE_NAMES = {0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8", 6: "int64",
                7: "bool", 8: "int16", 9: "uint16", 10: "uint32", 11: "uint64", 12: "bfloat16"}
#: Largest weights file read (the CapsNet's is 33 MB).
MAX_PARAMS_BYTES = 1 << 30


class _Reader:
    def __init__(self, data, name):
        self.data, self.pos, self.name = data, 0, name

    def take(self, n, what):
        if n < 0 or self.pos + n > len(self.data):
            raise WeightsFormatError(f"{self.name}: truncated {what} at byte {self.pos} "
                                     f"(needs {n} bytes, {len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt, what):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def _fail(name, problem):
    return WeightsFormatError(f"{name}: {problem}; this is not an MXNet .params file of capszoo "
                              "weights (re-download it, or export it again with save_parameters)")


def read_params(path, *, max_bytes=MAX_PARAMS_BYTES):
    """Read a weights file into ``{name: numpy array}`` without MXNet.

    A name ending in ``.safetensors`` is read as safetensors
    (:func:`capszoo._safetensors.read_safetensors`), anything else as an MXNet
    ``.params`` file.

    Raises
    ------
    WeightsFormatError
        Anything that is not a well-formed, dense, named parameter list: wrong
        magic, truncation, trailing bytes, absurd counts or shapes, unknown
        dtypes, duplicate or non-UTF-8 names (for safetensors: the rules of
        :func:`capszoo._safetensors.parse_safetensors`).
    """
    from ._safetensors import is_safetensors_path, read_safetensors

    if is_safetensors_path(path):
        return read_safetensors(path, max_bytes=max_bytes)
    name = os.fspath(path)
    return parse_params(read_weights_bytes(name, max_bytes=max_bytes), name)


def read_weights_bytes(path, *, max_bytes=MAX_PARAMS_BYTES) -> bytes:
    """The bytes of the weights file ``path``: a regular file of at most ``max_bytes``.

    Raises
    ------
    WeightsFormatError
        A missing file (or dangling link), a folder or device, an oversized or unreadable file.
    """
    name = os.fspath(path)
    try:
        if not os.path.exists(name):   # also a dangling symlink
            raise WeightsFormatError(f"{name}: no such file; check the path")
        if not os.path.isfile(name):
            raise WeightsFormatError(f"{name}: not a regular file")
        size = os.path.getsize(name)
        if size > max_bytes:
            raise WeightsFormatError(f"{name}: {size:,} bytes is larger than any capszoo weights file")
        with open(name, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise WeightsFormatError(f"cannot read weights file {name}: {exc.strerror}") from None
    return data


def parse_params(data: bytes, name="<bytes>"):
    """Parse the bytes of a ``.params`` file; see :func:`read_params`."""
    r = _Reader(data, name)
    if len(data) < 24:
        raise _fail(name, f"{len(data)} bytes is too short")
    magic, _reserved, count = r.unpack("QQQ", "header")
    if magic != _LIST_MAGIC:
        raise _fail(name, f"wrong magic number 0x{magic:x} (expected 0x112)")
    if count > len(data) // 24:
        raise _fail(name, f"header declares {count:,} arrays, more than the file can hold")
    arrays = []
    for k in range(count):
        (nd_magic,) = r.unpack("I", f"array {k} magic")
        if nd_magic not in _ND_MAGICS:
            raise _fail(name, f"array {k} has magic 0x{nd_magic:x}")
        stype, ndim = r.unpack("ii", f"array {k} header")
        if stype != 0:
            raise _fail(name, f"array {k} has sparse storage type {stype}")
        if not 1 <= ndim <= 8:
            raise _fail(name, f"array {k} declares {ndim} dimensions")
        dims = r.unpack("q" * ndim, f"array {k} shape")
        if any(d < 0 for d in dims):
            raise _fail(name, f"array {k} has negative dimension in shape {dims}")
        _dev_type, _dev_id, flag = r.unpack("iii", f"array {k} context")
        if flag not in _DTYPES:
            raise _fail(name, f"array {k} has dtype {_DTYPE_NAMES.get(flag, f'code {flag}')}, "
                              "which capszoo weights never use")
        dtype = np.dtype(_DTYPES[flag])
        # Bound the product of the non-zero dimensions too: a zero dimension makes the element
        # count 0 but numpy still refuses a shape like (0, 2**62) ("array is too big").
        n = bound = 1
        for d in dims:
            n *= d
            bound *= max(d, 1)
            if bound * dtype.itemsize > len(data):
                raise _fail(name, f"array {k} declares shape {dims}, larger than the file")
        arr = np.frombuffer(r.take(n * dtype.itemsize, f"array {k} data"), dtype=dtype).reshape(dims)
        arrays.append(arr)
    (n_names,) = r.unpack("Q", "name count")
    if n_names != count:
        raise _fail(name, f"{count} arrays but {n_names} names")
    names = []
    for k in range(n_names):
        (length,) = r.unpack("Q", f"name {k} length")
        if length > 4096:
            raise _fail(name, f"name {k} is {length:,} bytes long")
        try:
            names.append(r.take(length, f"name {k}").decode("utf-8"))
        except UnicodeDecodeError:
            raise _fail(name, f"name {k} is not UTF-8") from None
    if r.pos != len(data):
        raise _fail(name, f"{len(data) - r.pos} unexpected bytes after the end of the parameter list")
    out = {}
    for n_, a in zip(names, arrays):
        key = n_[4:] if n_.startswith(("arg:", "aux:")) else n_
        if key in out:
            raise _fail(name, f"parameter {key!r} appears twice")
        out[key] = a
    return out


def param_shapes(net):
    """``{structural name: shape}`` of a Gluon block's parameters (the weights format)."""
    return {k: tuple(p.shape) for k, p in net._collect_params_with_prefix().items()}


def check_params(arrays, expected_shapes, *, source="weights"):
    """Check names, shapes, dtype and finiteness of ``arrays`` against ``expected_shapes``.

    Raises
    ------
    WeightsFormatError
        Listing missing, unexpected and mis-shaped parameters, non-float32
        dtypes and non-finite values.
    """
    problems = []
    missing = [k for k in expected_shapes if k not in arrays]
    extra = [k for k in arrays if k not in expected_shapes]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected {', '.join(extra)}")
    for k, shape in expected_shapes.items():
        a = arrays.get(k)
        if a is None:
            continue
        if tuple(a.shape) != tuple(shape):
            problems.append(f"{k} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        elif a.dtype != np.float32:
            problems.append(f"{k} has dtype {a.dtype}, expected float32")
        elif not np.isfinite(a).all():
            problems.append(f"{k} holds {int((~np.isfinite(a)).sum())} NaN/inf values")
    if problems:
        raise WeightsFormatError(f"{source} do not fit this net: " + "; ".join(problems)
                                 + ". Use weights saved from the same architecture.")


def load_params_into(net, path, *, ctx=None):
    """Validate the weights file at ``path`` (``.params``, or ``.safetensors`` by its name) and load it
    into ``net`` (initialized or not)."""
    return load_arrays_into(net, read_params(path), ctx=ctx, source=f"weights {os.fspath(path)}")


def load_arrays_into(net, arrays, *, ctx=None, source="weights"):
    """Check ``arrays`` (``{structural name: numpy array}``, as :func:`read_params` returns) against
    ``net``'s parameters and load them (WeightsFormatError naming ``source`` when they do not fit)."""
    import mxnet as mx

    params = net._collect_params_with_prefix()
    check_params(arrays, {k: p.shape for k, p in params.items()}, source=source)
    ctx = ctx if ctx is not None else [mx.cpu()]
    for k, p in params.items():
        p._load_init(mx.nd.array(arrays[k], dtype=np.float32), ctx)
    return net


def save_params(net, path):
    """Save ``net``'s parameters to ``path`` atomically (Gluon's structural names).

    Raises
    ------
    OSError
        The file cannot be written (also when MXNet's writer stops short, e.g. on a
        full disk or past a file size limit: MXNet reports that as an ``MXNetError``).
        The file at ``path`` is left as it was and no temporary file remains.
    """
    import mxnet as mx

    try:
        with atomic_path(path) as tmp:
            net.save_parameters(tmp)
    except mx.base.MXNetError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        line = next((ln for ln in lines if "Check failed" in ln or "Error" in ln), lines[0] if lines else "")
        why = ("the disk is full or a file size limit was reached" if "incomplete" in line.lower()
               else "MXNet could not write it")
        raise OSError(errno.EIO, f"cannot write weights file: {why} ({line})", os.fspath(path)) from None


def sha256_file(path, *, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path, expected, *, what="weights file"):
    """Raise :class:`WeightsIntegrityError` unless ``path`` has sha256 ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsIntegrityError(
            f"{what} {os.fspath(path)} has sha256 {actual}, expected {expected}: the file is corrupt "
            "or not the published one. Delete it and download again (capszoo will refetch it).")
    return actual
