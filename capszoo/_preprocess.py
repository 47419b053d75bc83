"""Turn digit images of any common kind into the CapsNet's input batch.

The CapsNet of capszoo was trained on MNIST: ``float32`` arrays of shape
``(N, 1, 28, 28)`` with values in ``[0, 1]``, light ink on a dark (zero)
background, each digit's bounding box scaled to fit 20x20 and centred by its
centre of mass in the 28x28 field.  :func:`to_batch` brings image files, PIL
images and numpy arrays into that form; :func:`encode_image` does the same for
one image and returns its ``(28, 28)`` array.

This module imports only numpy and Pillow (never MXNet), so it is cheap to
import.

Processing of each image, in order:

1. **Decode** to one grey channel in ``[0, 1]`` plus, when there is one, an
   alpha channel (files and PIL images: EXIF orientation applied; colour turned
   to luma ``0.299 R + 0.587 G + 0.114 B``).
2. **Alpha**: composited onto a background (see ``polarity``).
3. **Polarity**: dark ink on a light background is inverted.
4. **Fit** into 28x28 (see ``fit``).
"""
from __future__ import annotations

import errno
import os
import re
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImageError, InvalidInputError
from .models._common import MNIST_PREPROCESSING

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_IMAGE_PIXELS",
    "POLARITIES",
    "FITS",
    "to_batch",
    "encode_image",
]

#: Image file formats that are opened (Pillow format names).  ``PPM`` covers
#: PBM, PGM, PPM and PNM; a multi-picture JPEG from a camera (MPO) is read as
#: JPEG.  Anything else (EPS, PDF, PSD, ICO, SVG, ...) is refused, whatever the
#: file is called, before Pillow parses more than its header.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")

#: Largest image accepted, in pixels (width x height).  Checked on the size
#: an image file declares, before its pixels are decoded (decompression bombs).
MAX_IMAGE_PIXELS = 50_000_000

#: Values of the ``polarity`` argument.
POLARITIES = ("auto", "dark-on-light", "light-on-dark")

#: Values of the ``fit`` argument.
FITS = ("auto", "always", "none")

_SIDE = MNIST_PREPROCESSING["size"]       # output side (28)
_BOX = MNIST_PREPROCESSING["fit_box"]     # side of the box the digit's bounding box is scaled into (20)
_CENTRE = _SIDE / 2.0                     # where the centre of mass goes (row/column index, as in MNIST)
_FLOAT_TOLERANCE = 0.01   # float pixels may stray this far outside [0, 1] (then clipped)
_MIN_CONTRAST = 0.05      # ink must exceed the background level by this much
_REDUCE_ABOVE = 4_000_000  # decoded images above this many pixels are box-reduced first
_INK_THRESHOLD = 0.2      # after levelling: pixels above this define the bounding box
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CHANNELS = (1, 3, 4)
_ACCEPTED_SHAPES = ("(H, W), (H, W, C), (N, H, W), (N, H, W, C) with C in {1, 3, 4}, "
                    "or (N, 1, H, W)")
_FORMAT_LIST = "PNG, JPEG, BMP, GIF, TIFF, WebP or PPM/PGM/PBM"
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")

#: Leading bytes of common file types, to name what a refused file is.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"%!PS-Adobe", "EPS/PostScript"),
    (b"%!", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD (Photoshop)"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"icns", "ICNS"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xd7\xcd\xc6\x9a", "WMF"),
    (b"SIMPLE  =", "FITS"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ\x00", "XZ archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"\x7fELF", "ELF executable"),
    (b"\x93NUMPY", "NumPy .npy"),
    (b"<svg", "SVG"),
)
_PPM_MAGIC = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"Pf", b"PF")
_ALLOWED_DETECTED = {"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"}


# ----------------------------------------------------------------------------- public API

def to_batch(inputs, *, polarity="auto", fit="auto", spec=None):
    """Turn digit images into a zoo entry's input batch.

    Parameters
    ----------
    spec : mapping, optional
        The card's ``preprocessing`` (``card.preprocessing``): the geometry to produce.  This
        encoder makes MNIST's (:data:`capszoo.models.MNIST_PREPROCESSING`); another spec is an
        error naming the difference.
    inputs : path, PIL.Image.Image, numpy.ndarray, or list/tuple of them
        * ``str`` or ``os.PathLike``: an image file in one of
          :data:`ALLOWED_FORMATS` (at most :data:`MAX_IMAGE_PIXELS` pixels).
          Multi-frame files (animated GIF/WebP/PNG, multi-page TIFF): the
          first frame only.  URLs are not fetched.  Files and PIL images
          above 4,000,000 pixels are first box-reduced by an integer factor
          to at most that (bounded memory; no visible effect at 28x28).
        * ``PIL.Image.Image``: any mode (``1``, ``L``, ``LA``, ``La``, ``P``,
          ``PA``, ``RGB``, ``RGBA``, ``RGBa``, ``RGBX``, ``CMYK``, ``YCbCr``,
          ``HSV``, ``LAB``, ``I;16*``, ``I``, ``F``); its current frame is used.
        * ``numpy.ndarray`` (or anything with ``__array__``):

          - 2-D ``(H, W)``: one image;
          - 3-D ``(H, W, C)`` with ``C`` in {1, 3, 4} and ``H, W > 4``: one
            image (grey, RGB or RGBA); any other 3-D shape is a batch
            ``(N, H, W)``;
          - 4-D ``(N, 1, H, W)`` (checked first) or ``(N, H, W, C)`` with
            ``C`` in {1, 3, 4}: a batch.

          dtypes: ``uint8`` (0-255), ``uint16`` (0-65535), ``bool``, floats
          in ``[0, 1]`` (up to 0.01 outside is clipped), and other integer
          types holding values in 0-255.
        * ``list`` or ``tuple`` of the above: processed in order and
          concatenated (nested lists are refused; pass arrays).

        A ``float32`` array of shape ``(N, 1, 28, 28)`` with values in
        ``[0, 1]`` is an already preprocessed batch: with ``polarity`` "auto"
        or "light-on-dark" and ``fit`` "auto" or "none" it is returned as it
        is (the same object when C-contiguous, no copy).
    polarity : {"auto", "dark-on-light", "light-on-dark"}
        "auto" inverts an image whose background is light: the median of its
        border pixels (outermost rows and columns) is above 0.5.
        "dark-on-light" always inverts, "light-on-dark" never does.
        Transparent pixels are composited first: onto white for
        "dark-on-light", black for "light-on-dark"; for "auto", onto the
        colour of the opaque border when the border is opaque, else (a digit
        drawn on a transparent canvas) onto white when the opaque ink is dark
        and black when it is light.
    fit : {"auto", "always", "none"}
        "always": MNIST normalization.  The background level (median of the
        border) is subtracted and the ink stretched to reach 1; the bounding
        box of the ink (pixels above 0.2 after that) is cropped, scaled to fit
        20x20 with its aspect ratio kept (Lanczos resampling of the float
        data, antialiased when shrinking), and pasted into a black 28x28 field
        so that its centre of mass lands on row/column 14 (shifted by the
        rounded offset, clipped to stay inside the field).
        "auto": as "always", except that an image that is already 28x28 is
        taken as it is (MNIST digits are already normalized).
        "none": only resized to 28x28 (aspect ratio kept, padded with black);
        28x28 images are untouched.

    Returns
    -------
    numpy.ndarray
        ``float32``, shape ``(N, 1, 28, 28)``, values in ``[0, 1]``, light ink
        on dark.

    Raises
    ------
    InvalidInputError
        An argument of the wrong type, shape, dtype or value: an unknown
        ``polarity`` or ``fit``, an empty list, a URL, arrays with NaN/inf,
        values out of range, complex/object/string dtypes, empty arrays or
        shapes other than those above.
    InvalidImageError
        A file or image that cannot be used: missing, not a regular file
        (directory, FIFO, device), empty, a symbolic-link loop, not in
        :data:`ALLOWED_FORMATS`, truncated or corrupt, larger than
        :data:`MAX_IMAGE_PIXELS`, fully transparent; or, when normalization
        runs (``fit`` "always", or "auto" on an image that is not 28x28), an
        image without a digit ("no digit found (the image is blank)").  A blank
        image with ``fit="none"`` (or a blank 28x28 one with "auto") gives
        zeros.  Pillow's own exceptions never escape: they are turned into
        this error.
    """
    _check_option("polarity", polarity, POLARITIES)
    _check_option("fit", fit, FITS)
    _check_spec(spec)
    if isinstance(inputs, (list, tuple)):
        if len(inputs) == 0:
            raise InvalidInputError(f"empty {type(inputs).__name__}: pass at least one image "
                                    "(a path, a PIL image or a numpy array)")
        parts = [_one_input(item, polarity, fit, f"item {i}", nested=True)
                 for i, item in enumerate(inputs)]
        return np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)
    return _one_input(inputs, polarity, fit, None, nested=False)


def _check_spec(spec):
    """The encoder makes MNIST's geometry; a card asking for another is refused, naming the difference."""
    if spec is None or isinstance(spec, str):
        return
    diff = {k: v for k, v in dict(spec).items() if MNIST_PREPROCESSING.get(k) != v}
    if diff:
        raise InvalidInputError(f"the image encoder makes {dict(MNIST_PREPROCESSING)}, but the model asks for "
                                f"{diff}; preprocess the images yourself and pass a ready (N, C, H, W) batch")


def encode_image(img, *, polarity="auto", fit="auto"):
    """Preprocess one digit image into the CapsNet's ``(28, 28)`` input.

    Parameters
    ----------
    img : path, PIL.Image.Image or numpy.ndarray
        One image, in any form :func:`to_batch` accepts (a batch of exactly
        one image is accepted too).
    polarity, fit : str
        As in :func:`to_batch`.

    Returns
    -------
    numpy.ndarray
        ``float32``, shape ``(28, 28)``, values in ``[0, 1]``.

    Raises
    ------
    InvalidInputError, InvalidImageError
        As :func:`to_batch`; also InvalidInputError when ``img`` holds more
        than one image.
    """
    batch = to_batch(img, polarity=polarity, fit=fit)
    if batch.shape[0] != 1:
        raise InvalidInputError(f"encode_image takes one image, got {batch.shape[0]}; "
                                "use to_batch for several images")
    return batch[0, 0]


# ----------------------------------------------------------------------------- dispatch

def _check_option(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise InvalidInputError(f"{name}={value!r} is not valid; use one of {listed}")


def _where(label, what):
    return f"{label} ({what})" if label else what


def _one_input(x, polarity, fit, label, nested):
    if isinstance(x, (str, os.PathLike)):
        gray, alpha, name = _load_path(x, label)
        return _finish(gray[None], None if alpha is None else alpha[None], polarity, fit, [name])
    if isinstance(x, Image.Image):
        name = _where(label, "PIL image")
        gray, alpha = _decode_pil(x, name, from_file=False)
        return _finish(gray[None], None if alpha is None else alpha[None], polarity, fit, [name])
    if isinstance(x, (bytes, bytearray, memoryview)):
        raise InvalidInputError(
            f"{_where(label, type(x).__name__)}: raw bytes are not accepted; write them to a file "
            "and pass its path, or pass PIL.Image.open(io.BytesIO(data))")
    if isinstance(x, (list, tuple)) and nested:
        raise InvalidInputError(
            f"{label}: nested {type(x).__name__}s are not accepted; pass a flat list of images, "
            "and turn nested lists of numbers into a numpy array (numpy.asarray)")
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") or hasattr(x, "__array_interface__"):
        return _from_array(x, polarity, fit, label)
    raise InvalidInputError(
        f"{_where(label, type(x).__name__)}: cannot be used as an image; pass a path to an image "
        "file, a PIL.Image.Image, a numpy array, or a list of those")


# ----------------------------------------------------------------------------- arrays

def _from_array(x, polarity, fit, label):
    where = _where(label, "array")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # a foreign object whose __array__ fails
        raise InvalidInputError(f"{where}: could not be converted to a numpy array "
                                f"({type(exc).__name__}: {exc})") from None
    if isinstance(arr, np.matrix):
        arr = np.array(arr)
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise InvalidInputError(
            f"{where}: dtype {arr.dtype} is not an image dtype; pass uint8 (0-255), uint16 "
            "(0-65535), bool, or floats in [0, 1]")
    if arr.ndim < 2 or arr.ndim > 4:
        raise InvalidInputError(f"{where}: shape {arr.shape} ({arr.ndim}-D) is not an image shape; "
                                f"accepted shapes are {_ACCEPTED_SHAPES}")
    if arr.size == 0:
        raise InvalidInputError(f"{where}: shape {arr.shape} has no pixels (a zero-size dimension); "
                                f"accepted shapes are {_ACCEPTED_SHAPES} with every size > 0")

    # A preprocessed batch goes straight through.
    if (arr.dtype == np.float32 and arr.ndim == 4 and arr.shape[1:] == (1, _SIDE, _SIDE)
            and polarity in ("auto", "light-on-dark") and fit in ("auto", "none")):
        with np.errstate(invalid="ignore"):
            ok = bool(np.isfinite(arr).all()) and float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0
        if ok:
            return np.ascontiguousarray(arr)

    nhwc = _layout(arr, where)
    values = _array_values(nhwc, where)
    n = values.shape[0]
    names = [where] if _single(arr) else [f"{where} image {i}" for i in range(n)]
    gray, alpha = _split_channels(values)
    return _finish(gray, alpha, polarity, fit, names)


def is_single_image(arr) -> bool:
    """Whether the array ``arr`` is one image (2-D, or ``(H, W, C)``) rather than a batch."""
    arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    return arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in _CHANNELS
                             and arr.shape[0] > 4 and arr.shape[1] > 4)


_single = is_single_image


def _layout(arr, where):
    """View of ``arr`` as ``(N, H, W, C)``."""
    if arr.ndim == 2:
        return arr[None, :, :, None]
    if arr.ndim == 3:
        if _single(arr):
            return arr[None]
        return arr[..., None]
    if arr.shape[1] == 1:
        return arr.transpose(0, 2, 3, 1)
    if arr.shape[3] in _CHANNELS:
        return arr
    raise InvalidInputError(f"{where}: 4-D shape {arr.shape} is neither (N, 1, H, W) nor "
                            f"(N, H, W, C) with C in {{1, 3, 4}}; accepted shapes are {_ACCEPTED_SHAPES}")


def _array_values(arr, where):
    """``arr`` as float32 in [0, 1], validating the values for its dtype."""
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255)
    if kind == "u" and arr.dtype.itemsize == 2:
        return arr.astype(np.float32) / np.float32(65535)
    if kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise InvalidInputError(
                f"{where}: {arr.dtype} values must lie in 0..255, got {lo}..{hi}; pass uint8 "
                "(0-255), uint16 (0-65535), or floats scaled to [0, 1]")
        return arr.astype(np.float32) / np.float32(255)
    # floats
    finite = np.isfinite(arr)
    if not finite.all():
        nan = int(np.isnan(arr).sum())
        inf = int(arr.size - finite.sum()) - nan
        raise InvalidInputError(
            f"{where}: contains {nan} NaN and {inf} infinite value(s); replace them (e.g. "
            "numpy.nan_to_num) and pass values in [0, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_FLOAT_TOLERANCE or hi > 1.0 + _FLOAT_TOLERANCE:
        raise InvalidInputError(
            f"{where}: float values must lie in [0, 1], got {lo:g}..{hi:g}; scale them to [0, 1] "
            "(e.g. x / 255) or pass a uint8 array")
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _split_channels(values):
    """``(N, H, W, C)`` float32 -> grey ``(N, H, W)`` and alpha ``(N, H, W)`` or None."""
    c = values.shape[3]
    if c == 1:
        return np.ascontiguousarray(values[..., 0]), None
    gray = values[..., :3] @ _LUMA
    if c == 3:
        return gray.astype(np.float32), None
    alpha = np.ascontiguousarray(values[..., 3])
    return gray.astype(np.float32), alpha


# ----------------------------------------------------------------------------- files

def _load_path(path, label):
    """Decode an image file: ``(grey (H, W), alpha (H, W) or None, name)``."""
    try:
        name = os.fspath(path)
    except TypeError as exc:
        raise InvalidInputError(f"{_where(label, type(path).__name__)}: not a usable path ({exc})") from None
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not isinstance(name, str):
        raise InvalidInputError(f"{_where(label, type(path).__name__)}: not a usable path")
    shown = f"{label}: {name}" if label else name
    if _URL_RE.match(name) or name.lower().startswith("data:"):
        raise InvalidInputError(f"{shown}: URLs are not fetched; download the file first and pass "
                                "its local path")
    if not name:
        raise InvalidInputError(f"{_where(label, 'path')}: the path is an empty string; pass the path "
                                "of an image file")
    if "\x00" in name:
        raise InvalidInputError(f"{shown!r}: the path contains a NUL character; pass a valid path")

    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
             | getattr(os, "O_BINARY", 0))
    try:
        # Non-blocking: opening a FIFO must not wait for a writer.  The type of
        # the file is checked on the open descriptor (no race with a swap).
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise InvalidImageError(f"{shown}: no such file; check the path") from None
    except IsADirectoryError:
        raise InvalidImageError(f"{shown}: is a directory, not an image file; pass the path of an "
                                "image file") from None
    except PermissionError:
        if os.path.isdir(name):
            raise InvalidImageError(f"{shown}: is a directory, not an image file; pass the path of "
                                    "an image file") from None
        raise InvalidImageError(f"{shown}: permission denied; make the file readable or copy it "
                                "somewhere readable") from None
    except OSError as exc:
        raise InvalidImageError(f"{shown}: {_os_reason(exc)}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidImageError(f"{shown}: is a directory, not an image file; pass the path of an "
                                    "image file")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidImageError(f"{shown}: is {_file_kind(st.st_mode)}, not a regular file; pass "
                                    "the path of an image file")
        if st.st_size == 0:
            raise InvalidImageError(f"{shown}: the file is empty (0 bytes); pass a {_FORMAT_LIST} "
                                    "digit image")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        try:
            head = fh.read(64)
            fh.seek(0)
        except OSError as exc:
            raise InvalidImageError(f"{shown}: cannot be read ({_os_reason(exc)})") from None
        im = _open_image(fh, shown, head)
        try:
            gray, alpha = _decode_pil(im, shown, from_file=True)
        finally:
            im.close()
    return gray, alpha, shown


def _os_reason(exc):
    if exc.errno == errno.ELOOP:
        return ("symbolic link loop (too many levels of symbolic links); fix the link or pass the "
                "file's real path")
    if exc.errno == errno.ENOTDIR:
        return "a component of the path is not a directory; check the path"
    if exc.errno == errno.ENAMETOOLONG:
        return "the path is too long; pass a shorter path"
    return f"cannot be opened ({exc.strerror or exc}); check the path and permissions"


def _file_kind(mode):
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _bomb_message(name, size=None, detail=None):
    if size is not None:
        what = f"{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels"
    else:
        m = re.search(r"\((\d+) pixels\)", detail or "")
        what = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
    return (f"{name}: the image declares {what}, more than the limit of {MAX_IMAGE_PIXELS:,} pixels "
            "(capszoo._preprocess.MAX_IMAGE_PIXELS; a possible decompression bomb); pass a smaller "
            "image (a digit needs only a few hundred pixels)")


class _BombGuard(warnings.catch_warnings):
    """Turn Pillow's DecompressionBombWarning into an exception while active."""

    def __enter__(self):
        out = super().__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return out


def _open_image(fh, name, head):
    try:
        with _BombGuard():
            return Image.open(fh, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(_bomb_message(name, detail=str(exc))) from None
    except UnidentifiedImageError:
        raise InvalidImageError(_unidentified_message(fh, name, head)) from None
    except Exception as exc:
        raise InvalidImageError(f"{name}: Pillow could not open it ({type(exc).__name__}: {exc}): "
                                "truncated or corrupt, or an unsupported variant; re-save or "
                                f"re-download it, or pass a {_FORMAT_LIST} digit image") from None


def _sniff(head):
    for magic, fmt in _SIGNATURES:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "HEIF"
        return "ISO media (MP4/MOV)"
    if head[:2] in _PPM_MAGIC and head[2:3] in (b" ", b"\t", b"\n", b"\r"):
        return "PPM"
    stripped = head.lstrip()
    if stripped[:5] in (b"<?xml",) or stripped[:4].lower() == b"<svg":
        return "XML/SVG"
    return None


def _looks_like_text(head):
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the end of the sample is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return bool(text) and all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def _a(fmt):
    """``fmt`` with its indefinite article ("a PNG", "an EPS")."""
    word = re.split(r"[ /(]", fmt)[0]
    vowel_sound = (word[:1] in "AEIOU" if not word.isupper() or len(word) > 4 or word in ("FITS", "HEIF")
                   else word[:1] in "AEFHILMNORSX")
    return ("an " if vowel_sound else "a ") + fmt


def _unidentified_message(fh, name, head):
    fmt = _sniff(head)
    if fmt in _ALLOWED_DETECTED:
        return (f"{name}: looks like {_a(fmt)} file, but Pillow cannot read it: truncated or corrupt, "
                f"or an unsupported variant; re-save or re-download it, or pass a {_FORMAT_LIST} "
                "digit image")
    if fmt is not None:
        return (f"{name}: is {_a(fmt)} file, which is not accepted; accepted formats are {_FORMAT_LIST} "
                "(whatever the file name); convert it to PNG")
    if _looks_like_text(head):
        return (f"{name}: is a text file, not an image Pillow can read (cannot identify image file); "
                f"pass a {_FORMAT_LIST} digit image")
    # Ask Pillow (all its formats; header only) what the file might be.
    try:
        fh.seek(0)
        with _BombGuard():
            with Image.open(fh) as other:
                fmt = other.format
    except Exception:
        fmt = None
    if fmt and fmt not in _ALLOWED_DETECTED:
        return (f"{name}: Pillow identifies it as {_a(fmt)} file, which is not accepted; accepted "
                f"formats are {_FORMAT_LIST} (whatever the file name); convert it to PNG")
    return (f"{name}: not an image Pillow can read (cannot identify image file); pass a "
            f"{_FORMAT_LIST} digit image")


# ----------------------------------------------------------------------------- PIL images

def _decode_pil(im, name, *, from_file):
    """A PIL image -> ``(grey (H, W) float32 in [0, 1], alpha or None)``."""
    try:
        w, h = im.size
        w, h = int(w), int(h)
    except Exception as exc:
        raise InvalidImageError(f"{name}: has no usable size ({type(exc).__name__}: {exc})") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise InvalidImageError(_bomb_message(name, size=(w, h)))
    if w <= 0 or h <= 0:
        raise InvalidImageError(f"{name}: the image is {w} x {h} pixels (empty); pass an image with "
                                "a digit in it")
    fmt = getattr(im, "format", None) or "image"
    try:
        with _BombGuard():
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(_bomb_message(name, detail=str(exc))) from None
    except MemoryError:
        raise InvalidImageError(f"{name}: not enough memory to decode the {w} x {h} image; pass a "
                                "smaller image") from None
    except Exception as exc:
        if from_file:
            raise InvalidImageError(
                f"{name}: the {fmt} data is truncated or corrupt ({type(exc).__name__}: {exc}); "
                "re-save or re-download the image") from None
        raise InvalidImageError(
            f"{name}: its pixels cannot be read ({type(exc).__name__}: {exc}); if it came from "
            "Image.open, pass it before its file is closed, or call .load() first") from None
    im = _exif_upright(im)
    try:
        im = _shrink_large(im)
        return _pil_arrays(im, name)
    except (InvalidImageError, InvalidInputError):
        raise
    except MemoryError:
        raise InvalidImageError(f"{name}: not enough memory to convert the {w} x {h} image; pass a "
                                "smaller image") from None
    except Exception as exc:
        raise InvalidImageError(f"{name}: cannot convert its {im.mode!r} pixels to grey "
                                f"({type(exc).__name__}: {exc}); re-save it as an 8-bit PNG") from None


def _exif_upright(im):
    """Apply the EXIF orientation tag; corrupt EXIF data is ignored (image as stored)."""
    try:
        orientation = im.getexif().get(0x0112)
    except Exception:
        return im
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def _shrink_large(im):
    """Box-average an image above ``_REDUCE_ABOVE`` pixels by an integer factor to at most that.

    Keeps memory and time bounded for big photos; the digit still spans far
    more pixels than the 20x20 it is scaled to.  Alpha is averaged
    premultiplied, palette and 1-bit images are expanded first.
    """
    w, h = im.size
    if w * h <= _REDUCE_ABOVE:
        return im
    factor = int(np.ceil(np.sqrt(w * h / _REDUCE_ABOVE)))
    mode = im.mode
    if mode == "1":
        return im.convert("L").reduce(factor)
    if mode in ("P", "PA") or "transparency" in im.info or mode == "RGBA":
        return im.convert("RGBA").convert("RGBa").reduce(factor).convert("RGBA")
    if mode == "LA":
        return im.convert("La").reduce(factor).convert("LA")
    if mode.startswith("I;16"):
        return im.convert("I").reduce(factor).convert("I;16")
    if mode in ("L", "La", "RGB", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV", "LAB", "I", "F"):
        return im.reduce(factor)
    return im


def _pil_arrays(im, name):
    mode = im.mode
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255), None
    if mode == "L" and "transparency" not in im.info:
        return np.asarray(im, dtype=np.uint8).astype(np.float32) / np.float32(255), None
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / np.float32(65535), None
    if mode == "I":
        return _scale_unknown(np.asarray(im), name, floats=False), None
    if mode == "F":
        return _scale_unknown(np.asarray(im), name, floats=True), None
    if mode == "LAB":  # band 0 is the lightness
        return np.asarray(im)[..., 0].astype(np.float32) / np.float32(255), None
    if mode == "LA":
        a = np.asarray(im).astype(np.float32) / np.float32(255)
        return _with_alpha(a[..., 0], a[..., 1])
    if mode == "La":  # premultiplied
        a = np.asarray(im).astype(np.float32) / np.float32(255)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(a[..., 1] > 0, a[..., 0] / a[..., 1], 0.0)
        return _with_alpha(np.clip(g, 0, 1).astype(np.float32), a[..., 1])
    if mode in ("RGBA", "RGBa", "PA", "P") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.float32) / np.float32(255)
        return _with_alpha((rgba[..., :3] @ _LUMA).astype(np.float32), rgba[..., 3])
    rgb = np.asarray(im.convert("RGB")).astype(np.float32) / np.float32(255)
    return (rgb @ _LUMA).astype(np.float32), None


def _with_alpha(gray, alpha):
    alpha = np.ascontiguousarray(alpha, dtype=np.float32)
    if float(alpha.min()) >= 1.0:
        return np.clip(gray, 0, 1).astype(np.float32), None
    return np.clip(gray, 0, 1).astype(np.float32), alpha


def _scale_unknown(arr, name, *, floats):
    """Scale ``I`` (int32) or ``F`` (float32) pixels of unknown range to [0, 1].

    Floats already in [0, 1] are kept; otherwise values in 0..255 are divided
    by 255, values in 0..65535 by 65535, and anything else is min-max scaled.
    """
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InvalidImageError(f"{name}: the image holds NaN or infinite pixel values; re-save it "
                                "with finite values")
    lo, hi = float(arr.min()), float(arr.max())
    if floats and lo >= -_FLOAT_TOLERANCE and hi <= 1.0 + _FLOAT_TOLERANCE:
        out = arr
    elif lo >= 0 and hi <= 255:
        out = arr / 255.0
    elif lo >= 0 and hi <= 65535:
        out = arr / 65535.0
    elif hi > lo:
        out = (arr - lo) / (hi - lo)
    else:
        out = np.zeros_like(arr)
    return np.clip(out, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- polarity and fit

def _border(a):
    """The outermost pixels of ``(..., H, W)`` (all of them for images under 3 px)."""
    h, w = a.shape[-2:]
    if h <= 2 or w <= 2:
        return a.reshape(a.shape[:-2] + (h * w,))
    return np.concatenate([a[..., 0, :], a[..., -1, :], a[..., 1:-1, 0], a[..., 1:-1, -1]], axis=-1)


def _composite(gray, alpha, polarity, name):
    """Composite one image onto the background its polarity implies."""
    if float(alpha.max()) <= 0.0:
        raise InvalidImageError(f"{name}: the image is fully transparent (every alpha value is 0), "
                                "so there is no digit to read; pass an image with visible ink")
    if polarity == "dark-on-light":
        bg = 1.0
    elif polarity == "light-on-dark":
        bg = 0.0
    else:
        border_alpha = _border(alpha)
        if float(np.median(border_alpha)) < 0.5:
            # A digit drawn on a transparent canvas: the opaque pixels are the ink.
            ink = float((gray * alpha).sum() / alpha.sum())
            bg = 1.0 if ink < 0.5 else 0.0
        else:
            # An opaque page with transparent holes: the page's colour fills them.
            bg = float(np.median(_border(gray)[border_alpha >= 0.5]))
    return (gray * alpha + np.float32(bg) * (1.0 - alpha)).astype(np.float32)


def _finish(gray, alpha, polarity, fit, names):
    """``(N, H, W)`` grey (+ alpha) in [0, 1] -> ``(N, 1, 28, 28)`` float32."""
    n, h, w = gray.shape
    gray = np.asarray(gray, dtype=np.float32)   # a fresh array of ours: modified in place
    if alpha is not None:
        for i in range(n):
            if float(alpha[i].min()) < 1.0:
                gray[i] = _composite(gray[i], alpha[i], polarity, _name(names, i))
    if polarity == "dark-on-light":
        gray = np.float32(1.0) - gray
    elif polarity == "auto":
        invert = np.median(_border(gray), axis=-1) > 0.5
        if invert.any():
            gray[invert] = np.float32(1.0) - gray[invert]
    if (h, w) == (_SIDE, _SIDE) and fit in ("auto", "none"):
        out = gray
    else:
        out = np.empty((n, _SIDE, _SIDE), dtype=np.float32)
        for i in range(n):
            out[i] = _pad_resize(gray[i]) if fit == "none" else _normalize(gray[i], _name(names, i))
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)[:, None, :, :]


def _name(names, i):
    return names[i] if i < len(names) else f"image {i}"


def _resize(a, w, h):
    """Resize a float image to ``w`` x ``h`` (Lanczos, antialiased when shrinking; clipped to [0, 1])."""
    if a.shape == (h, w):
        return a.astype(np.float32)
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    return np.clip(np.asarray(im.resize((w, h), Image.Resampling.LANCZOS), dtype=np.float32), 0.0, 1.0)


def _scaled_size(h, w, side):
    s = side / max(h, w)
    return (min(side, max(1, int(np.floor(h * s + 0.5)))),
            min(side, max(1, int(np.floor(w * s + 0.5)))))


def _pad_resize(g):
    """fit="none": resize to fit 28x28 with the aspect ratio kept, centred, padded with 0."""
    h, w = g.shape
    if (h, w) == (_SIDE, _SIDE):
        return g
    nh, nw = _scaled_size(h, w, _SIDE)
    patch = _resize(g, nw, nh)
    out = np.zeros((_SIDE, _SIDE), dtype=np.float32)
    top, left = (_SIDE - nh) // 2, (_SIDE - nw) // 2
    out[top:top + nh, left:left + nw] = patch
    return out


def _normalize(g, name):
    """MNIST normalization of one light-on-dark image."""
    lo = float(np.median(_border(g)))
    hi = float(g.max())
    if hi - lo < _MIN_CONTRAST:
        raise InvalidImageError(
            f"{name}: no digit found (the image is blank): nothing is brighter than the background "
            "after the polarity step; pass an image with a visible digit, check polarity=, or use "
            "fit='none' to accept blank images")
    v = np.clip((g - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)
    mask = v > _INK_THRESHOLD
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    crop = v[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    nh, nw = _scaled_size(crop.shape[0], crop.shape[1], _BOX)
    patch = _resize(crop, nw, nh)
    total = float(patch.sum(dtype=np.float64))
    if total > 0:
        cy = float((patch.sum(axis=1, dtype=np.float64) * np.arange(nh)).sum()) / total
        cx = float((patch.sum(axis=0, dtype=np.float64) * np.arange(nw)).sum()) / total
    else:  # pragma: no cover - the crop always holds a pixel above the threshold
        cy, cx = (nh - 1) / 2.0, (nw - 1) / 2.0
    top = min(max(int(np.floor(_CENTRE - cy + 0.5)), 0), _SIDE - nh)
    left = min(max(int(np.floor(_CENTRE - cx + 0.5)), 0), _SIDE - nw)
    out = np.zeros((_SIDE, _SIDE), dtype=np.float32)
    out[top:top + nh, left:left + nw] = patch
    return out
