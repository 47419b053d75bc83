"""Tests of capszoo._preprocess: images, files and arrays -> the CapsNet's (N, 1, 28, 28) batch.

Measured figures the assertions rest on (Pillow 13, numpy 1.23, MNIST test digits):

* an inverted digit saved as PNG and read back with polarity "auto": max abs
  diff 6e-8 (float rounding of 1 - (255 - x)/255); asserted <= 1e-6;
* the same through JPEG (quality 95): max abs diff 0.031 (8/255) over the
  first 100 test digits; asserted < 0.06 per digit and mean abs diff < 0.01;
* a digit upscaled 4x (bicubic) into a 200x150 white canvas with dark ink,
  then normalized: centre of mass within 0.5 px of (14, 14), ink inside 20x20,
  Pearson r against the original mean 0.957 (min 0.70), > 0.8 for 98 of 100
  digits, and >= 0.90 for every digit once a shift of at most 1 px is allowed
  (the low ones are 1-px offsets from rounding the centre of mass, as MNIST
  itself did); asserted: mean > 0.93, > 0.8 for >= 95%, shifted > 0.8.
  Nearest-neighbour upscaling gives a median r of 0.998 (asserted > 0.99).
"""
from __future__ import annotations

import io
import os
import pathlib
import signal
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from capszoo import errors
from capszoo._preprocess import (ALLOWED_FORMATS, FITS, MAX_IMAGE_PIXELS, POLARITIES, encode_image,
                                 to_batch)
from capszoo.errors import CapszooError, InvalidImageError, InvalidInputError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

PKG_DIR = pathlib.Path(__file__).resolve().parents[1] / "capszoo"
FUZZ = settings(derandomize=True, max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def digits(mnist_test):
    """The first 100 MNIST test digits, uint8 (100, 28, 28), light ink on dark."""
    images, _ = mnist_test
    return np.ascontiguousarray(images[:100])


def exact(x):
    """What the model sees for a uint8 MNIST digit: x / 255 in float32."""
    return x.astype(np.float32) / np.float32(255)


def pearson(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def centre_of_mass(img):
    idx = np.arange(img.shape[0])
    total = img.sum()
    return float((img.sum(axis=1) * idx).sum() / total), float((img.sum(axis=0) * idx).sum() / total)


def ink_bbox(img, threshold=0.0):
    rows = np.flatnonzero((img > threshold).any(axis=1))
    cols = np.flatnonzero((img > threshold).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def check_batch(out, n=1):
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.shape == (n, 1, 28, 28)
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width, height):
    """A ~60-byte 1-bit PNG whose header declares width x height (pixel data absent)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))


class Alarm:
    """Fail instead of hanging forever (e.g. on a FIFO)."""

    def __init__(self, seconds=10):
        self.seconds = seconds

    def __enter__(self):
        if hasattr(signal, "SIGALRM"):
            def boom(*_):
                raise TimeoutError("to_batch hung")
            self.old = signal.signal(signal.SIGALRM, boom)
            signal.alarm(self.seconds)

    def __exit__(self, *exc):
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.old)


# ----------------------------------------------------------------------------- module surface

def test_constants():
    assert MAX_IMAGE_PIXELS == 50_000_000
    assert set(ALLOWED_FORMATS) == {"PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM"}
    assert POLARITIES == ("auto", "dark-on-light", "light-on-dark")
    assert FITS == ("auto", "always", "none")


def test_module_does_not_import_mxnet():
    # Load capszoo._preprocess without running capszoo/__init__.py (which may load MXNet).
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('capszoo'); pkg.__path__ = [{str(PKG_DIR)!r}]\n"
        "sys.modules['capszoo'] = pkg\n"
        "import capszoo._preprocess\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mxnet', 'onnx', 'torch'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


# ----------------------------------------------------------------------------- real MNIST digits

def test_mnist_array_passes_through_exactly(digits):
    for x in digits[:20]:
        out = to_batch(x)
        check_batch(out)
        assert np.array_equal(out[0, 0], exact(x))
        assert np.array_equal(encode_image(x), exact(x))


def test_mnist_whole_test_set_as_batch(mnist_test):
    images, _ = mnist_test
    out = to_batch(images)
    check_batch(out, len(images))
    assert np.array_equal(out[:, 0], exact(images))


def test_mnist_png_path_gives_same_values(digits, tmp_path):
    for i, x in enumerate(digits[:10]):
        p = tmp_path / f"d{i}.png"
        Image.fromarray(x).save(p)
        assert np.array_equal(to_batch(p)[0, 0], exact(x))        # pathlib.Path
        assert np.array_equal(to_batch(str(p))[0, 0], exact(x))   # str


def test_inverted_png_comes_back_with_auto_polarity(digits, tmp_path):
    for i, x in enumerate(digits[:20]):
        p = tmp_path / f"inv{i}.png"
        Image.fromarray(255 - x).save(p)
        out = encode_image(p)
        assert np.abs(out - exact(x)).max() <= 1e-6


def test_inverted_jpeg_comes_back_with_auto_polarity(digits, tmp_path):
    worst = 0.0
    for i, x in enumerate(digits):
        p = tmp_path / f"inv{i}.jpg"
        Image.fromarray(255 - x).save(p, quality=95)
        out = encode_image(p)
        diff = np.abs(out - exact(x))
        assert diff.max() < 0.06, (i, diff.max())
        assert diff.mean() < 0.01, (i, diff.mean())
        worst = max(worst, float(diff.max()))
    assert worst > 0  # JPEG really was lossy: this is not the PNG test again


def _embed(x, resample, where=(13, 29)):
    big = Image.fromarray(255 - x).resize((112, 112), resample)
    canvas = Image.new("L", (200, 150), 255)   # 200 wide, 150 high, white
    canvas.paste(big, where)
    return canvas


def test_upscaled_off_centre_digit_is_normalized_like_mnist(digits):
    rs, shifted = [], []
    for i, x in enumerate(digits):
        out = to_batch(_embed(x, Image.Resampling.BICUBIC))
        check_batch(out)
        img = out[0, 0]
        cy, cx = centre_of_mass(img)
        assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1, (i, cy, cx)
        h, w = ink_bbox(img)
        assert h <= 20 and w <= 20 and max(h, w) >= 19, (i, h, w)
        rs.append(pearson(img, exact(x)))
        shifted.append(max(pearson(np.roll(img, (dy, dx), axis=(0, 1)), exact(x))
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1)))
    rs = np.array(rs)
    assert rs.mean() > 0.93, rs.mean()
    assert (rs > 0.8).mean() >= 0.95, np.sort(rs)[:10]
    assert min(shifted) > 0.8, min(shifted)


def test_nearest_upscaled_digit_is_recovered(digits):
    rs = [pearson(encode_image(_embed(x, Image.Resampling.NEAREST, where=(70, 5))), exact(x))
          for x in digits[:50]]
    assert np.median(rs) > 0.99


def test_fit_always_on_mnist_digits(digits):
    for x in digits[:30]:
        img = encode_image(x, fit="always")
        cy, cx = centre_of_mass(img)
        assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
        assert max(ink_bbox(img)) <= 20
        assert pearson(img, exact(x)) > 0.6


# ----------------------------------------------------------------------------- modes and formats

def _mode_image(x, mode):
    base = Image.fromarray(x)
    if mode == "1":
        return base.convert("1", dither=Image.Dither.NONE)
    if mode == "I;16":
        return Image.fromarray(x.astype(np.uint16) * 257)
    if mode == "I;16B":
        return Image.frombytes("I;16B", (28, 28), (x.astype(">u2") * 257).tobytes())
    if mode == "I":
        return Image.fromarray(x.astype(np.int32))
    if mode == "F":
        return Image.fromarray(x.astype(np.float32) / 255)
    if mode == "La":
        return base.convert("LA").convert("La")
    if mode == "RGBa":
        return base.convert("RGBA").convert("RGBa")
    return base.convert(mode)


MODES = ["L", "RGB", "RGBA", "P", "1", "I;16", "I;16B", "I", "F", "CMYK", "LA", "PA", "La",
         "RGBa", "YCbCr", "HSV", "LAB", "RGBX"]


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode(digits, mode):
    x = digits[0]
    im = _mode_image(x, mode)
    assert im.mode == mode
    out = to_batch(im)
    check_batch(out)
    if mode in ("1", "LAB"):
        assert pearson(out[0, 0], exact(x)) > 0.9
    else:
        assert np.abs(out[0, 0] - exact(x)).max() <= 1e-6, mode


FILE_CASES = [  # (mode, format, suffix, lossless)
    ("L", "PNG", ".png", True), ("L", "BMP", ".bmp", True), ("L", "TIFF", ".tif", True),
    ("L", "PPM", ".pgm", True), ("L", "GIF", ".gif", True), ("L", "WEBP", ".webp", True),
    ("L", "JPEG", ".jpg", False),
    ("RGB", "PNG", ".png", True), ("RGB", "JPEG", ".jpg", False), ("RGB", "PPM", ".ppm", True),
    ("RGB", "WEBP", ".webp", False), ("RGB", "BMP", ".bmp", True),
    ("RGBA", "PNG", ".png", True), ("RGBA", "TIFF", ".tif", True), ("RGBA", "WEBP", ".webp", True),
    ("P", "PNG", ".png", True), ("P", "GIF", ".gif", True), ("P", "BMP", ".bmp", True),
    ("1", "PNG", ".png", True), ("1", "BMP", ".bmp", True), ("1", "TIFF", ".tif", True),
    ("1", "PPM", ".pbm", True),
    ("I;16", "PNG", ".png", True), ("I;16", "TIFF", ".tif", True),
    ("I", "TIFF", ".tif", True), ("F", "TIFF", ".tif", True),
    ("CMYK", "JPEG", ".jpg", False), ("CMYK", "TIFF", ".tif", True),
    ("LA", "PNG", ".png", True),
]


@pytest.mark.parametrize("mode,fmt,suffix,lossless", FILE_CASES,
                         ids=[f"{m}-{f}{s}" for m, f, s, _ in FILE_CASES])
def test_every_mode_through_a_file(digits, tmp_path, mode, fmt, suffix, lossless):
    x = digits[1]
    p = tmp_path / f"digit{suffix}"
    kw = {"lossless": True} if (fmt == "WEBP" and lossless) else {}
    _mode_image(x, mode).save(p, fmt, **kw)
    out = to_batch(p)
    check_batch(out)
    if lossless and mode != "1":
        assert np.abs(out[0, 0] - exact(x)).max() <= 1e-6
    else:
        assert pearson(out[0, 0], exact(x)) > 0.9


def test_16bit_png_roundtrip(digits, tmp_path):
    x = digits[2]
    p = tmp_path / "d16.png"
    Image.fromarray(x.astype(np.uint16) * 257).save(p)
    with Image.open(p) as im:
        assert im.mode.startswith("I")
    assert np.abs(encode_image(p) - exact(x)).max() <= 1e-6
    # A uint16 array means 0..65535 too.
    assert np.abs(encode_image(x.astype(np.uint16) * 257) - exact(x)).max() <= 1e-6


def test_exif_orientation_is_applied(digits, tmp_path):
    x = digits[0]   # a 7: no rotational symmetry
    upright = Image.fromarray(255 - x)                 # dark ink on light, as it should be seen
    stored = upright.transpose(Image.Transpose.ROTATE_90)   # stored turned 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6                                   # "rotate 90 degrees clockwise to display"
    p = tmp_path / "rotated.jpg"
    stored.save(p, "JPEG", quality=95, exif=exif)
    out = encode_image(p)
    assert np.abs(out - exact(x)).max() < 0.06
    assert pearson(out, exact(x)) > 0.99
    # without the tag the same pixels come out turned
    p2 = tmp_path / "no-exif.jpg"
    stored.save(p2, "JPEG", quality=95)
    turned = encode_image(p2)
    assert pearson(turned, np.rot90(exact(x))) > 0.99
    assert pearson(turned, exact(x)) < 0.3


def test_animated_gif_uses_first_frame(digits, tmp_path):
    a, b = digits[4], digits[5]
    p = tmp_path / "anim.gif"
    Image.fromarray(a).save(p, save_all=True, append_images=[Image.fromarray(b)], duration=100, loop=0)
    with Image.open(p) as im:
        assert im.n_frames == 2
    out = encode_image(p)
    assert np.abs(out - exact(a)).max() <= 1e-6
    assert pearson(out, exact(b)) < 0.9


def test_pil_image_passed_directly_uses_exif_and_leaves_image_usable(digits, tmp_path):
    x = digits[0]
    p = tmp_path / "rot.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(x).transpose(Image.Transpose.ROTATE_90).save(p, exif=exif)
    with Image.open(p) as im:
        out = encode_image(im)
        assert im.size == (28, 28)
    assert np.abs(out - exact(x)).max() <= 1e-6


# ----------------------------------------------------------------------------- batches and lists

def test_batch_shapes(digits):
    xs = digits[:6]
    want = exact(xs)
    assert np.array_equal(to_batch(xs)[:, 0], want)                                   # (N,28,28)
    rgb = np.repeat(xs[..., None], 3, axis=-1)
    assert np.abs(to_batch(rgb)[:, 0] - want).max() <= 1e-6                           # (N,28,28,3)
    assert np.array_equal(to_batch(xs[..., None])[:, 0], want)                        # (N,28,28,1)
    assert np.array_equal(to_batch(xs[:, None])[:, 0], want)                          # (N,1,28,28) uint8
    rgba = np.concatenate([rgb, np.full(xs.shape + (1,), 255, np.uint8)], axis=-1)
    assert np.abs(to_batch(rgba)[:, 0] - want).max() <= 1e-6                          # (N,28,28,4)
    assert np.array_equal(to_batch(xs[0][..., None])[0, 0], want[0])                  # (28,28,1)
    assert np.abs(to_batch(rgb[0])[0, 0] - want[0]).max() <= 1e-6                     # (28,28,3)
    # 3-D with a channel-like last axis but tiny H or W is a batch (N, H, W)
    assert to_batch(np.zeros((4, 28, 3), np.uint8), fit="none").shape == (4, 1, 28, 28)


def test_preprocessed_float32_batch_passes_through_unchanged(digits):
    batch = exact(digits[:8])[:, None]
    out = to_batch(batch)
    assert out is batch
    assert to_batch(batch, polarity="light-on-dark", fit="none") is batch
    strided = np.asfortranarray(batch)
    assert np.array_equal(to_batch(strided), batch)
    # float64 and float16 versions are converted, values kept
    assert np.array_equal(to_batch(batch.astype(np.float64)), batch)
    assert np.abs(to_batch(batch.astype(np.float16)) - batch).max() < 1e-3


def test_dtypes(digits):
    x = digits[0]
    assert np.array_equal(encode_image(x.astype(np.int64)), exact(x))
    assert np.array_equal(encode_image(x.astype(np.int16)), exact(x))
    assert np.array_equal(encode_image(x.astype(np.float64) / 255), exact(x))
    b = x > 127
    assert np.array_equal(encode_image(b), b.astype(np.float32))
    # floats a hair outside [0, 1] are clipped
    y = exact(x).astype(np.float64) * 1.005 - 0.002
    out = encode_image(y)
    assert out.min() >= 0 and out.max() <= 1


def test_list_of_mixed_inputs(digits, tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(digits[0]).save(p)
    items = [p, Image.fromarray(digits[1]), digits[2], digits[3:6], exact(digits[6:8])[:, None]]
    out = to_batch(items)
    check_batch(out, 8)
    assert np.array_equal(out[:, 0], exact(digits[:8]))
    assert np.array_equal(to_batch(tuple(items)), out)


def test_encode_image_wants_one_image(digits):
    assert encode_image(digits[:1]).shape == (28, 28)
    with pytest.raises(InvalidInputError, match="one image"):
        encode_image(digits[:2])


# ----------------------------------------------------------------------------- polarity, alpha, fit

def test_forced_polarity(digits):
    x = digits[0]
    assert np.array_equal(encode_image(x, polarity="dark-on-light"), np.float32(1) - exact(x))
    inv = 255 - x
    assert np.array_equal(encode_image(inv, polarity="light-on-dark"), exact(inv))
    assert np.abs(encode_image(inv) - exact(x)).max() <= 1e-6


def test_alpha_compositing(digits):
    x = digits[7]
    a = x[..., None]
    black_ink = np.concatenate([np.zeros((28, 28, 3), np.uint8), a], axis=-1)      # on transparent
    white_ink = np.concatenate([np.full((28, 28, 3), 255, np.uint8), a], axis=-1)
    for rgba in (black_ink, white_ink):
        assert np.abs(encode_image(rgba) - exact(x)).max() <= 1e-6
        assert np.abs(encode_image(Image.fromarray(rgba, "RGBA")) - exact(x)).max() <= 1e-6
    assert np.abs(encode_image(black_ink, polarity="dark-on-light") - exact(x)).max() <= 1e-6
    assert np.abs(encode_image(white_ink, polarity="light-on-dark") - exact(x)).max() <= 1e-6
    # An opaque white page with dark ink and transparent (black, alpha 0) holes in the page:
    # the holes take the page's colour.
    page = np.repeat((255 - x)[..., None], 4, axis=-1)
    page[..., 3] = 255
    holes = np.zeros((28, 28), bool)
    holes[2:5, 2:5] = True
    holes &= x == 0
    page[holes] = (0, 0, 0, 0)
    assert np.abs(encode_image(page) - exact(x)).max() <= 1e-6


def test_fit_none_resizes_keeping_aspect(digits):
    x = digits[8]
    big = np.asarray(Image.fromarray(x).resize((56, 56), Image.Resampling.NEAREST))
    out = encode_image(big, fit="none")
    assert pearson(out, exact(x)) > 0.95
    wide = np.zeros((28, 56), np.uint8)
    wide[:, :28] = x
    out = encode_image(wide, fit="none")
    assert not out[:7].any() and not out[21:].any()          # padded above and below
    assert out[7:21].any()


def test_blank_images():
    zeros28 = np.zeros((28, 28), np.uint8)
    assert not encode_image(zeros28).any()                    # 28x28 taken as is
    assert not encode_image(np.zeros((40, 30)), fit="none").any()
    assert not encode_image(np.full((40, 30), 255, np.uint8), fit="none").any()  # white -> inverted
    for arr, fit in ((np.zeros((40, 30), np.uint8), "auto"), (zeros28, "always"),
                     (np.full((40, 30), 255, np.uint8), "auto")):
        with pytest.raises(InvalidImageError, match=r"no digit found \(the image is blank\)"):
            to_batch(arr, fit=fit)
    with pytest.raises(InvalidImageError, match=r"array image 1\b.*blank"):
        to_batch(np.stack([np.eye(30, dtype=np.uint8) * 255, np.zeros((30, 30), np.uint8)]))


def test_extremely_elongated_images(tmp_path):
    row = np.full((1, 100_000), 255, np.uint8)
    row[0, 30_000:70_000] = 0                                 # a dark dash on white
    p = tmp_path / "dash.png"
    Image.fromarray(row).save(p)
    for inp in (p, row, row.T):
        img = encode_image(inp)
        assert img.shape == (28, 28)
        h, w = ink_bbox(img, 0.5)
        assert sorted((h, w)) == [1, 20]
        cy, cx = centre_of_mass(img)
        assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    assert encode_image(row, fit="none").max() > 0.5


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "1", "I;16", "LA"])
def test_big_images_are_reduced_and_still_normalized(digits, tmp_path, mode):
    # 2300 x 2000 = 4.6 Mpx: above the 4 Mpx at which images are box-reduced before conversion.
    x = digits[9]
    ink = Image.fromarray(x).resize((28 * 48, 28 * 48), Image.Resampling.NEAREST)
    canvas = Image.new("L", (2300, 2000), 0)
    canvas.paste(ink, (700, 300))
    dark_on_light = Image.eval(canvas, lambda v: 255 - v)
    if mode == "RGBA":      # black ink on a transparent canvas
        im = Image.merge("RGBA", [Image.new("L", canvas.size, 0)] * 3 + [canvas])
    elif mode == "LA":      # white ink on a transparent canvas
        im = Image.merge("LA", [Image.new("L", canvas.size, 255), canvas])
    elif mode == "I;16":
        im = Image.fromarray(np.asarray(dark_on_light).astype(np.uint16) * 257)
    elif mode == "1":
        im = dark_on_light.convert("1", dither=Image.Dither.NONE)
    else:
        im = dark_on_light.convert(mode)
    p = tmp_path / "big.png"
    im.save(p, compress_level=1)
    for inp in (p, im):
        img = encode_image(inp)
        cy, cx = centre_of_mass(img)
        assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
        assert max(ink_bbox(img)) <= 20
        assert pearson(img, exact(x)) > 0.9, mode


def test_files_are_closed(digits, tmp_path):
    fd_dir = pathlib.Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc/self/fd")
    good = tmp_path / "ok.png"
    Image.fromarray(digits[0]).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "t.png"
    text.write_text("not an image\n")
    before = len(os.listdir(fd_dir))
    for _ in range(20):
        to_batch(good)
        for p in (bad, text):
            with pytest.raises(InvalidImageError):
                to_batch(p)
    assert len(os.listdir(fd_dir)) == before


# ----------------------------------------------------------------------------- bad inputs

def _truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "trunc.png"
    Image.fromarray(rng.integers(0, 256, (150, 200), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 6 // 10])
    return p


def _file(name, data):
    def make(tmp_path):
        p = tmp_path / name
        p.write_bytes(data)
        return p
    return make


def _saved(tmp_path, name, fmt):
    """A real digit image in a format that is not accepted, under a misleading name."""
    p = tmp_path / name
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(p, fmt)
    return p


def _fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    p = tmp_path / "pipe.png"
    os.mkfifo(p)
    return p


def _dev_zero(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    return "/dev/zero"


def _symlink_loop(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    os.symlink(b, a)
    os.symlink(a, b)
    return a


def _directory(tmp_path):
    d = tmp_path / "folder.png"
    d.mkdir()
    return d


def _closed_lazy_pil(tmp_path):
    p = tmp_path / "lazy.png"
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(p)
    im = Image.open(p)
    im.fp.close()
    return im


def _lazy_bomb_pil(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_declaring(8000, 8000))
    return Image.open(p)


def _transparent_png(tmp_path):
    p = tmp_path / "clear.png"
    Image.new("RGBA", (30, 30), (0, 0, 0, 0)).save(p)
    return p


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
       b"newpath 4 4 moveto 24 24 lineto stroke\nshowpage\n%%EOF\n")
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PSD = b"8BPS\x00\x01" + b"\x00" * 20


BAD_FILES = [
    # id, factory(tmp_path) -> input, error class, message fragment
    ("bomb-20000x20000", _file("bomb.png", png_declaring(20000, 20000)), InvalidImageError,
     "400,000,000 pixels, more than the limit of 50,000,000"),
    ("bomb-10000x10000", _file("bomb.png", png_declaring(10000, 10000)), InvalidImageError,
     "100,000,000 pixels, more than the limit of 50,000,000"),
    ("bomb-8000x8000", _file("bomb.png", png_declaring(8000, 8000)), InvalidImageError,
     "8000 x 8000 = 64,000,000 pixels, more than the limit of 50,000,000"),
    ("bomb-1x60000000", _file("thin.png", png_declaring(1, 60_000_000)), InvalidImageError,
     "60,000,000 pixels"),
    ("truncated-png", _truncated_png, InvalidImageError, "truncated or corrupt"),
    ("png-header-only", _file("h.png", png_declaring(28, 28)[:33]), InvalidImageError,
     "truncated or corrupt"),
    ("png-bad-magic", _file("m.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), InvalidImageError,
     "looks like a PNG file, but Pillow cannot read it: truncated or corrupt"),
    ("zero-bytes", _file("empty.png", b""), InvalidImageError, "empty (0 bytes)"),
    ("text-named-png", _file("notes.png", b"just some text\nnot pixels\n"), InvalidImageError,
     "text file, not an image"),
    ("binary-junk", _file("junk.png", bytes(range(256)) * 4), InvalidImageError,
     "not an image Pillow can read"),
    ("eps-named-png", _file("drawing.png", EPS), InvalidImageError, "is an EPS/PostScript file"),
    ("pdf-header", _file("doc.png", PDF), InvalidImageError, "is a PDF file"),
    ("psd", _file("layers.png", PSD), InvalidImageError, "is a PSD (Photoshop) file"),
    ("ico", _file("favicon.png", b"\x00\x00\x01\x00\x01\x00" + b"\x00" * 40), InvalidImageError,
     "is an ICO file"),
    ("tga-named-png", lambda t: _saved(t, "seven.png", "TGA"), InvalidImageError,
     "Pillow identifies it as a TGA file, which is not accepted"),
    ("real-ico", lambda t: _saved(t, "icon.png", "ICO"), InvalidImageError, "is an ICO file"),
    ("svg", _file("vec.png", b"<svg xmlns='http://www.w3.org/2000/svg'/>"), InvalidImageError,
     "SVG"),
    ("directory", _directory, InvalidImageError, "is a directory"),
    ("fifo", _fifo, InvalidImageError, "FIFO (named pipe), not a regular file"),
    ("dev-zero", _dev_zero, InvalidImageError, "character device, not a regular file"),
    ("symlink-loop", _symlink_loop, InvalidImageError, "symbolic link loop"),
    ("missing", lambda t: t / "nope.png", InvalidImageError, "no such file"),
    ("missing-parent", lambda t: str(t / "nope" / "x.png"), InvalidImageError, "no such file"),
    ("not-a-dir-component", lambda t: _file("f.png", b"x")(t) / "inside.png", InvalidImageError,
     "not a directory"),
    ("url-http", lambda t: "http://example.com/seven.png", InvalidInputError,
     "URLs are not fetched; download the file first"),
    ("url-https", lambda t: "https://example.com/7.png", InvalidInputError, "URLs are not fetched"),
    ("data-uri", lambda t: "data:image/png;base64,iVBORw0KGgo=", InvalidInputError,
     "URLs are not fetched"),
    ("empty-path", lambda t: "", InvalidInputError, "empty string"),
    ("nul-in-path", lambda t: "a\x00b.png", InvalidInputError, "NUL"),
    ("transparent-png", _transparent_png, InvalidImageError, "fully transparent"),
    ("transparent-pil", lambda t: Image.new("LA", (28, 28), (255, 0)), InvalidImageError,
     "fully transparent"),
    ("closed-lazy-pil", _closed_lazy_pil, InvalidImageError, "pixels cannot be read"),
    ("lazy-bomb-pil", _lazy_bomb_pil, InvalidImageError, "64,000,000 pixels"),
    ("empty-pil", lambda t: Image.new("L", (0, 5)), InvalidImageError, "0 x 5 pixels (empty)"),
]


@pytest.mark.parametrize("make,cls,fragment", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_files(tmp_path, make, cls, fragment):
    inp = make(tmp_path)
    with Alarm(20):
        with pytest.raises(cls) as info:
            to_batch(inp)
    assert type(info.value) is cls
    assert fragment in str(info.value), str(info.value)
    # and through a list, with the item named
    with Alarm(20):
        with pytest.raises(cls, match="item 1"):
            to_batch([np.zeros((28, 28), np.uint8), inp])


def test_file_errors_name_the_file_and_the_formats(tmp_path):
    p = tmp_path / "drawing.png"
    p.write_bytes(EPS)
    with pytest.raises(InvalidImageError) as info:
        to_batch(p)
    msg = str(info.value)
    assert str(p) in msg and "PNG, JPEG, BMP, GIF, TIFF, WebP" in msg


def test_missing_file_is_a_value_error_and_capszoo_error(tmp_path):
    with pytest.raises(ValueError):
        to_batch(tmp_path / "missing.png")
    with pytest.raises(CapszooError):
        to_batch(tmp_path / "missing.png")


def test_unreadable_file(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root reads everything")
    p = tmp_path / "secret.png"
    Image.new("L", (28, 28)).save(p)
    p.chmod(0)
    with pytest.raises(InvalidImageError, match="permission denied"):
        to_batch(p)


def test_pillow_exceptions_are_wrapped(tmp_path, monkeypatch):
    p = tmp_path / "ok.png"
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(p)

    def broken(self, *a, **k):
        raise SyntaxError("broken PNG file")

    monkeypatch.setattr(Image.Image, "convert", broken)
    with pytest.raises(InvalidImageError, match="cannot convert"):
        to_batch(Image.open(p).copy().quantize())   # mode P needs convert


NAN = np.full((28, 28), np.nan)
INF = np.zeros((28, 28), np.float32)
INF[3, 3] = np.inf

BAD_VALUES = [
    ("nan", NAN, {}, InvalidInputError, "784 NaN and 0 infinite"),
    ("inf", INF, {}, InvalidInputError, "1 infinite"),
    ("float16-inf", INF.astype(np.float16), {}, InvalidInputError, "infinite"),
    ("object", np.zeros((28, 28), dtype=object), {}, InvalidInputError, "dtype object"),
    ("complex", np.zeros((28, 28), np.complex64), {}, InvalidInputError, "dtype complex64"),
    ("str", np.full((28, 28), "a"), {}, InvalidInputError, "dtype <U1"),
    ("datetime", np.zeros((28, 28), "datetime64[s]"), {}, InvalidInputError, "dtype datetime64"),
    ("float-0-255", np.full((28, 28), 200.0), {}, InvalidInputError, "scale them to [0, 1]"),
    ("float-negative", np.full((28, 28), -0.5), {}, InvalidInputError, "must lie in [0, 1]"),
    ("int-negative", np.full((28, 28), -1, np.int32), {}, InvalidInputError, "must lie in 0..255"),
    ("int-too-big", np.full((28, 28), 256, np.int64), {}, InvalidInputError, "got 256..256"),
    ("uint32-big", np.full((28, 28), 70000, np.uint32), {}, InvalidInputError, "0..255"),
    ("ndim-0", np.array(3, np.uint8), {}, InvalidInputError, "shape () (0-D)"),
    ("ndim-1", np.zeros(784, np.uint8), {}, InvalidInputError, "shape (784,) (1-D)"),
    ("ndim-5", np.zeros((1, 1, 1, 28, 28), np.uint8), {}, InvalidInputError, "(5-D)"),
    ("bool-0d", np.bool_(True), {}, InvalidInputError, "0-D"),
    ("empty-0x28x28", np.zeros((0, 28, 28), np.uint8), {}, InvalidInputError, "zero-size"),
    ("empty-28x0", np.zeros((28, 0), np.float32), {}, InvalidInputError, "(28, 0)"),
    ("4d-odd", np.zeros((2, 3, 28, 28), np.uint8), {}, InvalidInputError,
     "neither (N, 1, H, W) nor (N, H, W, C)"),
    ("fully-transparent-array", np.zeros((28, 28, 4), np.uint8), {}, InvalidImageError,
     "fully transparent"),
    ("empty-list", [], {}, InvalidInputError, "empty list"),
    ("empty-tuple", (), {}, InvalidInputError, "empty tuple"),
    ("nested-list", [[0, 1], [1, 0]], {}, InvalidInputError, "nested lists are not accepted"),
    ("none", None, {}, InvalidInputError, "NoneType: cannot be used as an image"),
    ("int", 7, {}, InvalidInputError, "int: cannot be used as an image"),
    ("python-bool", True, {}, InvalidInputError, "bool: cannot be used as an image"),
    ("bytes", b"\x89PNG\r\n\x1a\n", {}, InvalidInputError, "raw bytes are not accepted"),
    ("dict", {"a": 1}, {}, InvalidInputError, "dict: cannot be used"),
    ("bad-polarity", np.zeros((28, 28), np.uint8), {"polarity": "inverted"}, InvalidInputError,
     "polarity='inverted' is not valid; use one of 'auto', 'dark-on-light', 'light-on-dark'"),
    ("polarity-none", np.zeros((28, 28), np.uint8), {"polarity": None}, InvalidInputError,
     "polarity=None"),
    ("bad-fit", np.zeros((28, 28), np.uint8), {"fit": "stretch"}, InvalidInputError,
     "fit='stretch' is not valid; use one of 'auto', 'always', 'none'"),
    ("blank", np.zeros((30, 30), np.uint8), {}, InvalidImageError, "no digit found"),
]


@pytest.mark.parametrize("inp,kw,cls,fragment", [c[1:] for c in BAD_VALUES],
                         ids=[c[0] for c in BAD_VALUES])
def test_bad_values(inp, kw, cls, fragment):
    with pytest.raises(cls) as info:
        to_batch(inp, **kw)
    assert type(info.value) is cls
    assert fragment in str(info.value), str(info.value)


def test_bad_option_checked_even_for_pass_through():
    batch = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(InvalidInputError, match="fit="):
        to_batch(batch, fit="crop")


def test_error_classes_are_capszoo_errors():
    assert issubclass(InvalidImageError, errors.CapszooError)
    assert issubclass(InvalidInputError, errors.CapszooError)


# ----------------------------------------------------------------------------- property tests

_DTYPES = [np.uint8, np.uint16, np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64,
           np.bool_, np.float16, np.float32, np.float64, np.complex64]
_SIDES = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 28])
_SHAPES = st.one_of(
    st.lists(_SIDES, min_size=0, max_size=4),                        # anything, 0-D to 4-D
    st.lists(st.sampled_from([1, 2, 3, 5, 7, 28]), min_size=2, max_size=3),   # 2-D/3-D, no zeros
    st.tuples(st.integers(1, 3), st.sampled_from([1, 5, 28]), st.sampled_from([5, 28]),
              st.sampled_from([1, 3, 4, 28])),                       # NHWC / NCHW-like 4-D
).map(tuple).filter(lambda s: int(np.prod(s)) <= 4 * 28 * 28)


def _valid_elements(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return st.floats(0, 1, width=dtype.itemsize * 8)
    if dtype.kind in "iu":
        return st.integers(0, min(255, int(np.iinfo(dtype).max)))
    return None


@st.composite
def any_array(draw):
    dtype = draw(st.sampled_from(_DTYPES))
    shape = draw(_SHAPES)
    if draw(st.integers(0, 2)) and _valid_elements(dtype) is not None:   # 2 in 3: valid values
        return draw(hnp.arrays(dtype, shape, elements=_valid_elements(dtype)))
    return draw(hnp.arrays(dtype, shape))


def _check_result_or_capszoo_error(call):
    try:
        out = call()
    except CapszooError:
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.ndim == 4 and out.shape[1:] == (1, 28, 28) and out.shape[0] >= 1
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@FUZZ
@given(arr=any_array(), polarity=st.sampled_from(POLARITIES), fit=st.sampled_from(FITS))
def test_property_arrays(arr, polarity, fit):
    _check_result_or_capszoo_error(lambda: to_batch(arr, polarity=polarity, fit=fit))


def _seed_files():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8))
    seeds = []
    for fmt, im, kw in (("PNG", img, {}), ("GIF", img, {}), ("BMP", img, {}),
                        ("TIFF", img, {}), ("JPEG", img, {}), ("WEBP", img, {}),
                        ("PPM", img, {}), ("PNG", img.convert("RGBA"), {}),
                        ("TIFF", img.convert("F"), {}), ("PNG", img.convert("P"), {})):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        seeds.append(buf.getvalue())
    return seeds


_SEEDS = _seed_files()


@st.composite
def any_file_bytes(draw):
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(st.binary(max_size=400))
    if choice == 1:   # a real signature followed by junk
        magic = draw(st.sampled_from([s[:8] for s in _SEEDS] + [b"P5\n", b"II*\x00", b"BM", b"GIF89a"]))
        return magic + draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(_SEEDS)))   # a real small image, mutated
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(1, len(data)))]
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=any_file_bytes(), polarity=st.sampled_from(POLARITIES), fit=st.sampled_from(FITS))
def test_property_files(fuzz_dir, data, polarity, fit):
    p = fuzz_dir / "fuzz.png"
    p.write_bytes(data)
    with Alarm(60):
        _check_result_or_capszoo_error(lambda: to_batch(p, polarity=polarity, fit=fit))


def test_seed_files_are_valid_images(fuzz_dir):
    for i, data in enumerate(_SEEDS):
        p = fuzz_dir / f"seed{i}"
        p.write_bytes(data)
        check_batch(to_batch(p, fit="none"))
