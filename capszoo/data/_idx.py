"""Reader for the idx files of MNIST (LeCun et al.), plain or gzipped.

The format: a 4-byte magic ``0x00 0x00 <type> <ndim>`` followed by ``ndim``
big-endian uint32 dimensions and the data.  MNIST uses type ``0x08`` (uint8):
images have magic 2051 (``ndim = 3``), labels 2049 (``ndim = 1``).
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from ..errors import DataFileNotFoundError, DataFormatError

__all__ = ["read_idx", "read_images", "read_labels", "IMAGES_MAGIC", "LABELS_MAGIC"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UINT8 = 0x08
#: Largest decompressed idx file accepted (MNIST train images are 47 MB).
MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024


def _read_bytes(path, max_bytes):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataFileNotFoundError(f"{path}: no such file; pass --data-dir with the MNIST idx files "
                                    "or let capszoo download them")
    if not os.path.isfile(path):
        raise DataFormatError(f"{path}: not a regular file; pass the path of an MNIST idx file (.gz or raw)")
    try:
        return _read_file(path, max_bytes)
    except OSError as exc:
        raise DataFormatError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions "
                              "or pass another --data-dir") from None


def _read_file(path, max_bytes):
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head == b"\x1f\x8b":
            try:
                with gzip.GzipFile(fileobj=fh) as gz:
                    data = gz.read(max_bytes + 1)
            except (OSError, EOFError, zlib.error) as exc:
                raise DataFormatError(f"{path}: corrupt or truncated gzip data ({exc}); "
                                      "delete the file and download it again") from None
        else:
            data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DataFormatError(f"{path}: decompresses to more than {max_bytes:,} bytes; "
                              "this is not an MNIST idx file")
    return data


def read_idx(path, *, expected_magic=None, max_bytes=MAX_DECOMPRESSED_BYTES):
    """Read an idx file of unsigned bytes into a numpy array.

    Parameters
    ----------
    path : str or os.PathLike
        ``.gz`` (detected by content) or raw idx file.
    expected_magic : int, optional
        2051 for images, 2049 for labels.
    max_bytes : int
        Cap on the decompressed size (guards against gzip bombs).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array with the file's dimensions.

    Raises
    ------
    DataFormatError
        Wrong magic, type byte or dimensions, or a length that disagrees with
        the header.
    """
    data = _read_bytes(path, max_bytes)
    name = os.fspath(path)
    if len(data) < 4:
        raise DataFormatError(f"{name}: {len(data)} bytes is too short for an idx header")
    zero1, zero2, dtype, ndim = data[0], data[1], data[2], data[3]
    magic = struct.unpack(">I", data[:4])[0]
    if zero1 or zero2:
        raise DataFormatError(f"{name}: not an idx file (magic number {magic})")
    if expected_magic is not None and magic != expected_magic:
        raise DataFormatError(f"{name}: magic number {magic}, expected {expected_magic} "
                              f"({'images' if expected_magic == IMAGES_MAGIC else 'labels'}); "
                              "are the image and label files swapped?")
    if dtype != _UINT8:
        raise DataFormatError(f"{name}: idx type byte 0x{dtype:02x}, expected 0x08 (unsigned byte)")
    if ndim < 1 or ndim > 4:
        raise DataFormatError(f"{name}: idx header declares {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{name}: truncated header ({len(data)} bytes)")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    expected = bound = 1
    for d in dims:
        expected *= d
        bound *= max(d, 1)   # a zero dimension must not hide huge ones: numpy refuses (0, 2**32-1, ...)
    if expected > max_bytes or bound > max_bytes:
        raise DataFormatError(f"{name}: header declares {'x'.join(map(str, dims))} = {expected:,} values, more "
                              f"than the {max_bytes:,} accepted")
    if len(data) - header != expected:
        raise DataFormatError(f"{name}: header declares {'x'.join(map(str, dims))} = {expected:,} values "
                              f"but the file holds {len(data) - header:,}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_images(path, **kw):
    """Read an MNIST images file: ``(N, 28, 28) uint8``."""
    arr = read_idx(path, expected_magic=IMAGES_MAGIC, **kw)
    if arr.ndim != 3 or arr.shape[1:] != (28, 28):
        raise DataFormatError(f"{os.fspath(path)}: images of shape {arr.shape[1:]}, expected (28, 28)")
    return arr


def read_labels(path, **kw):
    """Read an MNIST labels file: ``(N,) uint8`` with values 0-9."""
    arr = read_idx(path, expected_magic=LABELS_MAGIC, **kw)
    if arr.ndim != 1:
        raise DataFormatError(f"{os.fspath(path)}: labels must be 1-D, got shape {arr.shape}")
    if arr.size and int(arr.max()) > 9:
        bad = int(np.argmax(arr > 9))
        raise DataFormatError(f"{os.fspath(path)}: label {int(arr[bad])} at index {bad}; "
                              "MNIST labels are 0-9")
    return arr
