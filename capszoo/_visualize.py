"""Pictures of a CapsNet: reconstructions, pose tweaks, feature space, summary graphic, training curve.

Everything is drawn with Pillow alone (no plotting library), headless and
deterministic: the same model, inputs and seed give the same bytes.

>>> from capszoo import _visualize as vis
>>> vis.reconstruction_panel(model, images, labels=labels)          # doctest: +SKIP
>>> cells, grid = vis.tweak_images(model, image, dims=[11, 14, 16])  # doctest: +SKIP
>>> vis.feature_space_plot(model, images, labels, seed=0)           # doctest: +SKIP
>>> vis.save_summary(model.info(), "summary.svg")                   # doctest: +SKIP
>>> vis.training_curve("runs/capsnet-mnist/metrics.jsonl", "training.png")  # doctest: +SKIP

Digits are shown as the net sees them: light ink on a dark field, 28x28,
enlarged by an integer factor with nearest-neighbour sampling, so each tile's
pixels are exactly the image's pixels repeated.

Output files (:func:`save_image`, :func:`save_summary`) are written
atomically; the format comes from the extension (.png, .jpg/.jpeg, and .svg
for the summary graphic).  An unknown extension raises
:class:`~capszoo.errors.InvalidInputError`; a path that cannot be written
(missing folder, a folder, no permission, disk full) raises
:class:`~capszoo.errors.ExportError` and leaves no file behind.
"""
from __future__ import annotations

import dataclasses
import json
import itertools
import math
import os
from typing import Tuple
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ._io import atomic_path, atomic_write_bytes
from .errors import ExportError, InvalidInputError

__all__ = [
    "PALETTE",
    "DEFAULT_OFFSETS",
    "MAX_OFFSETS",
    "reconstruction_panel",
    "reconstruction_layout",
    "tweak_images",
    "tweak_grid",
    "tweak_layout",
    "parse_dims",
    "parse_range",
    "project_features",
    "feature_space_plot",
    "feature_plot_layout",
    "summary_graphic",
    "summary_svg",
    "save_image",
    "save_summary",
    "output_format",
    "check_output_path",
    "parse_labels",
    "training_curve",
    "training_curve_layout",
]

#: Ten distinct class colours (the "tab10" palette), class ``k`` gets ``PALETTE[k]``.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
#: Offsets added to one capsule dimension in the pose-tweak grid (the Keras grid: 11 columns).
DEFAULT_OFFSETS = np.round(np.arange(-0.25, 0.2501, 0.05), 10) + 0.0
#: Most offsets (columns) a tweak grid may have.
MAX_OFFSETS = 41
CAPSULE_DIM = 16

_WHITE = (255, 255, 255)
_INK = (25, 25, 25)
_MUTED = (95, 95, 95)
_RULE = (200, 200, 200)
_WRONG = (200, 20, 20)
_FRAME = (31, 119, 180)
_BOX_FILL = (236, 243, 250)
_BOX_EDGE = (70, 110, 160)
_TITLE, _TEXT, _SMALL = 20, 14, 13
_MARGIN = 20
_MIN_WIDTH = 540

_IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}


# -- text --------------------------------------------------------------------------------------
_FONTS = {}


def _font(size):
    """The built-in scalable font at ``size`` px (Pillow >= 10.1); older Pillow: the bitmap font."""
    f = _FONTS.get(size)
    if f is None:
        try:
            f = ImageFont.load_default(size=size)
        except TypeError:  # pragma: no cover - Pillow < 10.1
            f = ImageFont.load_default()
        _FONTS[size] = f
    return f


def _line_h(size):
    """Height of one line of text of ``size`` (ascender to descender)."""
    f = _font(size)
    if hasattr(f, "getmetrics"):
        asc, desc = f.getmetrics()
        return asc + desc
    return f.getbbox("Hgjy")[3]  # pragma: no cover


def _ascent(size):
    f = _font(size)
    return f.getmetrics()[0] if hasattr(f, "getmetrics") else _line_h(size)


def _text_w(text, size):
    return int(math.ceil(_font(size).getlength(text)))


def _text(draw, x, y, text, size=_TEXT, fill=_INK, align="left"):
    """Draw one line with its top (ascender line) at ``y``; ``x`` is its left, centre or right."""
    w = _font(size).getlength(text)
    x0 = x - w / 2 if align == "center" else x - w if align == "right" else x
    draw.text((int(round(x0)), int(y)), text, font=_font(size), fill=fill)


def _wrap(text, size, width):
    """Greedy word wrap of ``text`` into lines no wider than ``width`` px (long words stay whole)."""
    lines, cur = [], ""
    for word in text.split():
        cand = word if not cur else cur + " " + word
        if not cur or _text_w(cand, size) <= width:
            cur = cand
        else:
            lines.append(cur)
            cur = word
    if cur:
        lines.append(cur)
    return lines


def _fit(text, size, width):
    """``text`` shortened with "..." until it fits ``width`` px."""
    if _text_w(text, size) <= width:
        return text
    while text and _text_w(text + "...", size) > width:
        text = text[:-1]
    return text + "..."


def _vtext(canvas, cx, cy, text, size=_TEXT, fill=_INK):
    """Draw ``text`` rotated 90 degrees (reading upwards) centred on ``(cx, cy)``."""
    w, h = _text_w(text, size) + 2, _line_h(size)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).text((1, 0), text, font=_font(size), fill=255)
    mask = mask.rotate(90, expand=True)
    canvas.paste(Image.new("RGB", mask.size, fill), (int(cx - mask.width / 2), int(cy - mask.height / 2)), mask)


def _paragraph_h(lines, size, spacing=2):
    return len(lines) * (_line_h(size) + spacing)


def _draw_paragraph(draw, x, y, lines, size, fill=_MUTED, spacing=2):
    for line in lines:
        _text(draw, x, y, line, size, fill)
        y += _line_h(size) + spacing
    return y


def _tile(arr28, scale):
    """A 28x28 [0, 1] array or L image enlarged ``scale`` times (nearest), as an L image."""
    img = arr28 if isinstance(arr28, Image.Image) else \
        Image.fromarray(np.clip(np.asarray(arr28).reshape(28, 28) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("L").resize((img.width * scale, img.height * scale), Image.NEAREST)


# -- output files ------------------------------------------------------------------------------
def output_format(path, *, svg=False):
    """The writer format for ``path`` from its extension: "PNG", "JPEG" (or "SVG" when ``svg``).

    Raises InvalidInputError for any other extension, naming the accepted ones.
    """
    allowed = dict(_IMAGE_FORMATS)
    if svg:
        allowed["svg"] = "SVG"
    p = os.fspath(path)
    ext = os.path.splitext(p)[1].lower().lstrip(".")
    if ext not in allowed:
        what = f"unknown extension '.{ext}'" if ext else "no file extension"
        raise InvalidInputError(f"cannot write {p!r}: {what}; use one of "
                                f"{', '.join('.' + e for e in allowed)}")
    return allowed[ext]


def check_output_path(path, *, svg=False):
    """Check ``path`` before any work: known extension and a writable folder.  Returns the format.

    Raises InvalidInputError (extension) or ExportError (cannot be written).
    """
    fmt = output_format(path, svg=svg)
    p = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(p))
    if os.path.isdir(p):
        raise ExportError(f"cannot write {p!r}: it is a folder")
    if not os.path.exists(folder):
        raise ExportError(f"cannot write {p!r}: folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise ExportError(f"cannot write {p!r}: {folder!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {p!r}: folder {folder!r} is not writable")
    return fmt


def _os_reason(exc):
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


def save_image(img, path):
    """Write PIL image ``img`` to ``path`` atomically (.png, .jpg, .jpeg); returns ``path``."""
    fmt = check_output_path(path)
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    try:
        with atomic_path(path) as tmp:
            img.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    except OSError as exc:
        raise ExportError(f"cannot write {os.fspath(path)!r}: {_os_reason(exc)}") from None
    return path


def save_summary(info, path):
    """Write the summary graphic of ``info`` to ``path``: SVG for .svg, else a PNG/JPEG picture."""
    fmt = check_output_path(path, svg=True)
    if fmt != "SVG":
        return save_image(summary_graphic(info), path)
    data = summary_svg(info).encode("utf-8")
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ExportError(f"cannot write {os.fspath(path)!r}: {_os_reason(exc)}") from None
    return path


# -- shared checks -----------------------------------------------------------------------------
def _check_int(value, what, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo \
            or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise InvalidInputError(f"{what} must be an integer {rng}, got {value!r}")
    return int(value)


def _run(model, images, polarity, batch_size=128, need_reco=True):
    """Encode ``images`` and run the net once: (x numpy (N,28,28), probs, capsules, reconstructions)."""
    x = model.encode(images, polarity=polarity)
    if x.shape[0] == 0:
        raise InvalidInputError("no images given (empty batch)")
    probs, caps, recos = model._run(x, batch_size, need_reco=need_reco)
    return x.asnumpy()[:, 0], probs, caps, recos


def _predicted(model, probs):
    classes = model.card.classes
    return [classes[int(i)] for i in probs.argmax(axis=1)]


def _class_index(model, label, where):
    classes = list(model.card.classes)
    try:
        if isinstance(label, (np.integer, np.floating)):
            label = label.item()
        return classes.index(label)
    except ValueError:
        raise InvalidInputError(f"{where}: {label!r} is not a class of {model.card.name} "
                                f"({', '.join(map(str, classes))})") from None


# -- 1. reconstructions ------------------------------------------------------------------------
_REC_HEAD = ("Left: the input as the net sees it (28 x 28). Right: what the Reconstruct sub-net decodes "
             "from the 16-D capsule of the predicted class.")
_REC_LEGEND = "pred: predicted class (the longest digit capsule)."
_REC_LEGEND_LABELS = " true: the given label; a red caption marks a wrong prediction."


@dataclasses.dataclass(frozen=True)
class ReconstructionLayout:
    """Geometry of :func:`reconstruction_panel`: picture size and where each tile goes."""

    n: int
    columns: int
    scale: int
    size: Tuple[int, int]
    grid_origin: Tuple[int, int]
    pair_pitch: Tuple[int, int]
    inner_gap: int
    head_lines: Tuple[str, ...]
    legend_lines: Tuple[str, ...]
    note_lines: Tuple[str, ...]
    legend_y: int

    @property
    def tile(self):
        return 28 * self.scale

    @property
    def rows(self):
        return -(-self.n // self.columns)

    def input_box(self, i):
        """(left, top, right, bottom) of input ``i``'s tile."""
        r, c = divmod(i, self.columns)
        x = self.grid_origin[0] + c * self.pair_pitch[0]
        y = self.grid_origin[1] + r * self.pair_pitch[1]
        return (x, y, x + self.tile, y + self.tile)

    def reconstruction_box(self, i):
        """(left, top, right, bottom) of reconstruction ``i``'s tile (right of its input)."""
        x0, y0, x1, y1 = self.input_box(i)
        d = self.tile + self.inner_gap
        return (x0 + d, y0, x1 + d, y1)


def reconstruction_layout(n, *, columns=None, scale=3, labels=False, note=None):
    """The :class:`ReconstructionLayout` of a panel of ``n`` inputs (``columns`` pairs per row)."""
    n = _check_int(n, "the number of images", 1)
    columns = min(n, 5) if columns is None else _check_int(columns, "columns", 1)
    columns = min(columns, n)
    scale = _check_int(scale, "scale", 1, 16)
    tile, inner, gap_x, gap_y = 28 * scale, 6, 28, 16
    pair_w = 2 * tile + inner
    caption_h = _line_h(_TEXT) + 8
    grid_w = columns * pair_w + (columns - 1) * gap_x
    width = max(grid_w + 2 * _MARGIN, _MIN_WIDTH)
    text_w = width - 2 * _MARGIN
    head = tuple(_wrap(_REC_HEAD, _SMALL, text_w))
    legend = tuple(_wrap(_REC_LEGEND + (_REC_LEGEND_LABELS if labels else ""), _SMALL, text_w))
    notes = tuple(_wrap(note, _SMALL, text_w)) if note else ()
    rows = -(-n // columns)
    top = 14 + _line_h(_TITLE) + 6 + _paragraph_h(head, _SMALL) + 12 + _line_h(_SMALL) + 6
    grid_h = rows * (tile + caption_h) + (rows - 1) * gap_y
    height = top + grid_h + 10 + _paragraph_h(legend, _SMALL) + _paragraph_h(notes, _SMALL) + 14
    return ReconstructionLayout(n=n, columns=columns, scale=scale, size=(width, height),
                                grid_origin=((width - grid_w) // 2, top),
                                pair_pitch=(pair_w + gap_x, tile + caption_h + gap_y), inner_gap=inner,
                                head_lines=head, legend_lines=legend, note_lines=notes,
                                legend_y=top + grid_h + 10)


def reconstruction_panel(model, images, *, labels=None, columns=None, scale=3, polarity="auto", note=None,
                         return_images=False):
    """Each input beside its reconstruction, captioned with the predicted class (and true label).

    Parameters
    ----------
    model : CapsNetModel
    images : image, list of images or batch
        Anything ``model(...)`` accepts; one image gives a one-pair panel.
    labels : sequence, optional
        True classes, one per image; a wrong prediction's caption is red.
    columns : int, optional
        Pairs per row (default: up to 5).
    scale : int
        Enlargement of the 28x28 tiles (nearest neighbour).
    note : str, optional
        A line of small print at the bottom (e.g. which weights drew the picture).
    return_images : bool
        Also return the reconstructions (PIL "L" 28x28, as ``model(x, prop="Reconstruction")``).

    Returns
    -------
    PIL.Image (RGB), or ``(panel, reconstructions)``.  Tile positions are given by
    :func:`reconstruction_layout` with the same arguments.
    """
    from ._api import _to_pil

    x, probs, _, recos = _run(model, images, polarity)
    n = len(x)
    if labels is not None:
        labels = list(labels)
        if len(labels) != n:
            raise InvalidInputError(f"labels: got {len(labels)} labels for {n} images")
        for i, lab in enumerate(labels):
            _class_index(model, lab, f"label {i}")
    lay = reconstruction_layout(n, columns=columns, scale=scale, labels=labels is not None, note=note)
    pred = _predicted(model, probs)
    rec_images = [_to_pil(r) for r in recos]

    canvas = Image.new("RGB", lay.size, _WHITE)
    draw = ImageDraw.Draw(canvas)
    width = lay.size[0]
    y = 14
    _text(draw, _MARGIN, y, _fit(f"Reconstructions by {model.card.name}", _TITLE, width - 2 * _MARGIN),
          _TITLE)
    y += _line_h(_TITLE) + 6
    _draw_paragraph(draw, _MARGIN, y, lay.head_lines, _SMALL)
    for c in range(lay.columns):
        bi, br = lay.input_box(c), lay.reconstruction_box(c)
        hy = bi[1] - 6 - _line_h(_SMALL)
        _text(draw, (bi[0] + bi[2]) / 2, hy, "input", _SMALL, _MUTED, "center")
        _text(draw, (br[0] + br[2]) / 2, hy, "reconstruction", _SMALL, _MUTED, "center")
    for i in range(n):
        bi, br = lay.input_box(i), lay.reconstruction_box(i)
        canvas.paste(_tile(x[i], lay.scale), bi[:2])
        canvas.paste(_tile(rec_images[i], lay.scale), br[:2])
        caption = f"pred {pred[i]}"
        colour = _INK
        if labels is not None:
            caption += f"  \u00b7  true {labels[i]}"
            if _class_index(model, labels[i], "") != _class_index(model, pred[i], ""):
                colour = _WRONG
        _text(draw, (bi[0] + br[2]) / 2, bi[3] + 5, caption, _TEXT, colour, "center")
    y = _draw_paragraph(draw, _MARGIN, lay.legend_y, lay.legend_lines, _SMALL)
    _draw_paragraph(draw, _MARGIN, y, lay.note_lines, _SMALL)
    return (canvas, rec_images) if return_images else canvas


# -- 2. pose tweaks ----------------------------------------------------------------------------
def _dims_error(value):
    return InvalidInputError(f"capsule dimensions are 1..{CAPSULE_DIM} (1-based), got {value!r}")


def _check_dims(dims):
    if dims is None or (isinstance(dims, str) and dims.strip().lower() == "all"):
        return list(range(1, CAPSULE_DIM + 1))
    if isinstance(dims, str):
        return parse_dims(dims)
    if isinstance(dims, (int, np.integer)) and not isinstance(dims, bool):
        dims = [dims]
    try:
        dims = list(dims)
    except TypeError:
        raise InvalidInputError(f"dims must be a list of capsule dimensions 1..{CAPSULE_DIM}, "
                                f"got {dims!r}") from None
    if not dims:
        raise InvalidInputError("dims is empty; give at least one capsule dimension (1..16) or None for all")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d <= CAPSULE_DIM:
            raise _dims_error(d)
        if int(d) in out:
            raise InvalidInputError(f"capsule dimension {int(d)} is given twice")
        out.append(int(d))
    return out


def parse_dims(spec):
    """Parse a ``--dims`` spec: ``"all"`` or comma-separated 1-based dimensions (``"11,14,16"``)."""
    s = str(spec).strip()
    if s.lower() == "all":
        return list(range(1, CAPSULE_DIM + 1))
    if not s:
        raise InvalidInputError("empty dims; give e.g. 11,14,16 or all")
    out = []
    for part in s.split(","):
        p = part.strip()
        try:
            out.append(int(p))
        except ValueError:
            raise InvalidInputError(f"cannot parse dims {spec!r}: {p!r} is not an integer; "
                                    f"give e.g. 11,14,16 or all") from None
    return _check_dims(out)


def _offset_decimals(offsets):
    for d in range(2, 7):
        if np.all(np.abs(np.round(offsets, d) - offsets) < 1e-9):
            return d
    return 6


def _offset_label(o, decimals):
    return f"{0.0:.{decimals}f}" if o == 0 else f"{o:+.{decimals}f}"


def _check_offsets(offsets):
    try:
        a = np.asarray(offsets, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"offsets must be numbers, got {offsets!r}") from None
    if a.ndim == 0:
        a = a[None]
    if a.ndim != 1 or a.size == 0:
        raise InvalidInputError(f"offsets must be a non-empty 1-D list of numbers, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InvalidInputError("offsets contain NaN or inf")
    if a.size > MAX_OFFSETS:
        raise InvalidInputError(f"too many offsets ({a.size}); at most {MAX_OFFSETS} columns")
    return np.round(a, 10) + 0.0  # snaps -2.8e-17 from arange to 0 (and -0.0 to 0.0)


def parse_range(spec):
    """Parse a ``--range`` spec ``"start:stop:step"`` (stop included; ``"start:stop"`` uses step 0.05).

    Raises InvalidInputError for unparseable specs, ``start > stop``, ``step <= 0`` and
    more than :data:`MAX_OFFSETS` offsets.
    """
    s = str(spec).strip()
    parts = s.split(":")
    if len(parts) not in (2, 3):
        raise InvalidInputError(f"cannot parse range {spec!r}; give start:stop:step, e.g. -0.25:0.25:0.05")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise InvalidInputError(f"cannot parse range {spec!r}: start, stop and step must be numbers, "
                                f"e.g. -0.25:0.25:0.05") from None
    start, stop = vals[0], vals[1]
    step = vals[2] if len(vals) == 3 else 0.05
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise InvalidInputError(f"range {spec!r} has a non-finite number")
    if step <= 0:
        raise InvalidInputError(f"range {spec!r}: the step must be positive, got {step:g}")
    if start > stop:
        raise InvalidInputError(f"range {spec!r} is reversed: start {start:g} is greater than stop {stop:g}")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > MAX_OFFSETS:
        raise InvalidInputError(f"range {spec!r} gives {count} offsets; at most {MAX_OFFSETS} "
                                f"(use a larger step)")
    return _check_offsets(start + step * np.arange(count))


@dataclasses.dataclass(frozen=True)
class TweakLayout:
    """Geometry of the tweak grid: picture size and the box of each cell."""

    rows: int
    cols: int
    scale: int
    size: Tuple[int, int]
    grid_origin: Tuple[int, int]
    gap: int
    input_origin: Tuple[int, int]
    head_lines: Tuple[str, ...]
    note_lines: Tuple[str, ...]
    note_y: int

    @property
    def tile(self):
        return 28 * self.scale

    def cell_box(self, r, c):
        """(left, top, right, bottom) of the cell in row ``r`` (dimension) and column ``c`` (offset)."""
        if not (0 <= r < self.rows and 0 <= c < self.cols):
            raise IndexError(f"cell ({r}, {c}) outside a {self.rows} x {self.cols} grid")
        x = self.grid_origin[0] + c * (self.tile + self.gap)
        y = self.grid_origin[1] + r * (self.tile + self.gap)
        return (x, y, x + self.tile, y + self.tile)

    def input_box(self):
        x, y = self.input_origin
        return (x, y, x + self.tile, y + self.tile)


_TWEAK_AXIS = "capsule dimension"
_TWEAK_HEAD = ("Each cell decodes the capsule with one dimension shifted: Reconstruct(capsule + offset · e_dim). "
               "The framed column (offset 0) is the untweaked reconstruction.")


def tweak_layout(rows, cols, *, scale=2, note=None):
    """The :class:`TweakLayout` of a grid of ``rows`` dimensions by ``cols`` offsets."""
    rows = _check_int(rows, "rows", 1, CAPSULE_DIM)
    cols = _check_int(cols, "cols", 1, MAX_OFFSETS)
    scale = _check_int(scale, "scale", 1, 16)
    tile, gap = 28 * scale, 8
    axis_w = _line_h(_TEXT) + 8
    label_w = _text_w(f"dim {CAPSULE_DIM}", _TEXT) + 12
    grid_x = _MARGIN + axis_w + label_w
    grid_w = cols * tile + (cols - 1) * gap
    panel_w = max(tile, _text_w("input", _TEXT), _text_w("pred 0", _TEXT)) + 16
    width = max(grid_x + grid_w + 24 + panel_w + _MARGIN, _MIN_WIDTH)
    text_w = width - 2 * _MARGIN
    head = tuple(_wrap(_TWEAK_HEAD, _SMALL, text_w))
    notes = tuple(_wrap(note, _SMALL, text_w)) if note else ()
    grid_y = 14 + _line_h(_TITLE) + 6 + _paragraph_h(head, _SMALL) + 12 + _line_h(_SMALL) + 6 \
        + _line_h(_TEXT) + 8
    grid_h = rows * tile + (rows - 1) * gap
    panel_h = _line_h(_TEXT) + 6 + tile + 6 + _line_h(_TEXT)
    body_h = max(grid_h, panel_h, _text_w(_TWEAK_AXIS, _TEXT) + 4)
    height = grid_y + body_h + 12 + _paragraph_h(notes, _SMALL) + 10
    in_x = grid_x + grid_w + 24 + (panel_w - tile) // 2
    in_y = grid_y + _line_h(_TEXT) + 6
    return TweakLayout(rows=rows, cols=cols, scale=scale, size=(width, height), grid_origin=(grid_x, grid_y),
                       gap=gap, input_origin=(in_x, in_y), head_lines=head, note_lines=notes,
                       note_y=grid_y + body_h + 12)


def tweak_images(model, image, *, dims=None, offsets=DEFAULT_OFFSETS, scale=2, polarity="auto", note=None):
    """Reconstructions of an image's capsule with one dimension tweaked (Hinton's pose grid).

    For each capsule dimension ``d`` in ``dims`` (1-based) and offset ``c`` the cell
    is ``model.reconstruct(v + c * e_d)``, with ``v`` the 16-D capsule of the
    predicted class (``model.features(image)[0]``): Wolfram's
    ``featureVect + c UnitVector[16, d]``.

    Parameters
    ----------
    model : CapsNetModel
    image : one image (path, PIL image, 2-D array, ...)
    dims : list of int, "all" or None
        Capsule dimensions 1..16 (default all 16), one row each.
    offsets : sequence of float
        One column each (default -0.25 ... +0.25 in steps of 0.05: 11 columns).
    scale : int
        Enlargement of the 28x28 cells.
    note : str, optional
        Small print at the bottom of the grid.

    Returns
    -------
    images : list of lists of PIL.Image
        ``images[r][c]`` (28x28, mode "L") for ``dims[r]`` and ``offsets[c]``.
    grid : PIL.Image
        The labelled grid (what :func:`tweak_grid` returns); cell positions from
        :func:`tweak_layout`.
    """
    dims = _check_dims(dims)
    offs = _check_offsets(offsets)
    x, probs, caps, _ = _run(model, image, polarity, need_reco=False)
    if len(x) != 1:
        raise InvalidInputError(f"tweak takes one image, got {len(x)}")
    lay = tweak_layout(len(dims), len(offs), scale=scale, note=note)
    v = caps[0].astype(np.float64)
    eye = np.eye(CAPSULE_DIM)[[d - 1 for d in dims]]                      # (R, 16)
    vecs = v[None, None, :] + offs[None, :, None] * eye[:, None, :]       # (R, C, 16)
    flat = model.reconstruct(vecs.reshape(-1, CAPSULE_DIM))
    base = model.reconstruct(caps[0])  # offset 0: exactly the untweaked capsule's reconstruction
    cols = len(offs)
    images = [[base if offs[c] == 0 else flat[r * cols + c] for c in range(cols)] for r in range(len(dims))]
    pred = _predicted(model, probs)[0]

    canvas = Image.new("RGB", lay.size, _WHITE)
    draw = ImageDraw.Draw(canvas)
    width = lay.size[0]
    y = 14
    _text(draw, _MARGIN, y, _fit(f"Pose tweaks of {model.card.name}, predicted class {pred}",
                                 _TITLE, width - 2 * _MARGIN), _TITLE)
    y += _line_h(_TITLE) + 6
    _draw_paragraph(draw, _MARGIN, y, lay.head_lines, _SMALL)
    gx, gy = lay.grid_origin
    grid_w = cols * lay.tile + (cols - 1) * lay.gap
    grid_h = len(dims) * lay.tile + (len(dims) - 1) * lay.gap
    col_label_y = gy - 6 - _line_h(_TEXT)
    _text(draw, gx + grid_w / 2, col_label_y - 6 - _line_h(_SMALL), "offset added to the dimension",
          _SMALL, _MUTED, "center")
    axis_len = _text_w(_TWEAK_AXIS, _TEXT)
    _vtext(canvas, _MARGIN + _line_h(_TEXT) / 2, gy + max(grid_h, axis_len) / 2, _TWEAK_AXIS, _TEXT, _MUTED)
    decimals = _offset_decimals(offs)
    for c, o in enumerate(offs):
        b = lay.cell_box(0, c)
        _text(draw, (b[0] + b[2]) / 2, col_label_y, _offset_label(o, decimals), _TEXT,
              _FRAME if o == 0 else _INK, "center")
        if o == 0:
            last = lay.cell_box(len(dims) - 1, c)
            draw.rectangle((b[0] - 4, b[1] - 4, last[2] + 3, last[3] + 3), outline=_FRAME, width=2)
    for r, d in enumerate(dims):
        b = lay.cell_box(r, 0)
        _text(draw, b[0] - 10, (b[1] + b[3]) / 2 - _line_h(_TEXT) / 2, f"dim {d}", _TEXT, _INK, "right")
        for c in range(cols):
            canvas.paste(_tile(images[r][c], lay.scale), lay.cell_box(r, c)[:2])
    ib = lay.input_box()
    cx = (ib[0] + ib[2]) / 2
    _text(draw, cx, ib[1] - 6 - _line_h(_TEXT), "input", _TEXT, _MUTED, "center")
    canvas.paste(_tile(x[0], lay.scale), ib[:2])
    _text(draw, cx, ib[3] + 6, f"pred {pred}", _TEXT, _INK, "center")
    _draw_paragraph(draw, _MARGIN, lay.note_y, lay.note_lines, _SMALL)
    return images, canvas


def tweak_grid(model, image, *, dims=None, offsets=DEFAULT_OFFSETS, scale=2, polarity="auto", note=None):
    """The labelled pose-tweak grid of :func:`tweak_images` (one row per dimension, one column per offset)."""
    return tweak_images(model, image, dims=dims, offsets=offsets, scale=scale, polarity=polarity, note=note)[1]


# -- 3. feature space --------------------------------------------------------------------------
def project_features(features, method="pca"):
    """2-D projection of feature vectors ``(N, D)``: ``(coords (N, 2), explained variance ratio (2,))``.

    PCA by SVD of the centred features; each component's sign is fixed so that its
    largest loading is positive (deterministic).
    """
    if method != "pca":
        raise InvalidInputError(f"unknown projection method {method!r}; use 'pca'")
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise InvalidInputError(f"need at least 2 feature vectors (N, D) for a projection, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise InvalidInputError("features contain NaN or inf")
    c = f - f.mean(axis=0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    big = np.argmax(np.abs(vt), axis=1)
    signs = np.sign(vt[np.arange(vt.shape[0]), big])
    signs[signs == 0] = 1.0
    vt = vt * signs[:, None]
    k = min(2, vt.shape[0])
    coords = np.zeros((f.shape[0], 2))
    coords[:, :k] = c @ vt[:k].T
    var = s ** 2
    ratio = np.zeros(2)
    if var.sum() > 0:
        ratio[:k] = var[:k] / var.sum()
    return coords, ratio


@dataclasses.dataclass(frozen=True)
class FeaturePlotLayout:
    """Geometry of :func:`feature_space_plot`."""

    size: Tuple[int, int]
    plot_box: Tuple[int, int, int, int]
    swatch_boxes: Tuple[Tuple[int, int, int, int], ...]
    legend_title_y: int


def feature_plot_layout(size=(1000, 760)):
    """The :class:`FeaturePlotLayout` of a feature-space plot of ``size`` (width, height)."""
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InvalidInputError(f"size must be (width, height), got {size!r}") from None
    if width < 500 or height < 400 or width > 8000 or height > 8000:
        raise InvalidInputError(f"size must be at least 500 x 400 and at most 8000 x 8000, got {size!r}")
    legend_w = 160
    top = 14 + _line_h(_TITLE) + 6 + 2 * (_line_h(_SMALL) + 2) + 12
    left = _MARGIN + _line_h(_TEXT) + 8 + 72
    right = width - _MARGIN - legend_w
    bottom = height - (_line_h(_TEXT) + 8 + _line_h(_TEXT) + 10 + _line_h(_SMALL) + 10)
    lx = right + 24
    ly = top + _line_h(_TEXT) + 10
    pitch = 26
    swatches = tuple((lx, ly + i * pitch, lx + 18, ly + i * pitch + 18) for i in range(10))
    return FeaturePlotLayout(size=(width, height), plot_box=(left, top, right, bottom), swatch_boxes=swatches,
                             legend_title_y=top)


def _nice_ticks(lo, hi, target=6):
    span = hi - lo
    if not span > 0:
        return [lo], 1.0
    raw = span / target
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        step = m * mag
        if span / step <= target + 2:
            break
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    k = first
    while k * step <= hi + 1e-9 * step:
        ticks.append(k * step)
        k += 1
    return ticks, step


def _tick_label(v, step):
    if abs(v) < step * 1e-6:
        v = 0.0
    d = 0
    while d < 8 and abs(round(step, d) - step) > step * 1e-6:
        d += 1
    if d > 4:
        return f"{v:.1e}"
    return f"{v:.{d}f}"


def feature_space_plot(model, images, labels=None, *, method="pca", seed=0, size=(1000, 760), thumb=24,
                       polarity="auto", note=None, batch_size=128):
    """Wolfram's FeatureSpacePlot: images placed by a 2-D projection of their 16-D capsules.

    Each image's thumbnail (its ink in the class colour) is drawn at its point;
    the colour is the true label when ``labels`` is given, else the predicted class.

    Parameters
    ----------
    model : CapsNetModel
    images : list of images or batch
        At least 2.
    labels : sequence, optional
        True classes, one per image.
    method : "pca"
        PCA of the 16-D ``Pick`` features (the capsule of the predicted class).
    seed : int
        Seeds the drawing order (which thumbnail lies on top).
    size : (int, int)
        Picture size; geometry from :func:`feature_plot_layout`.
    thumb : int
        Thumbnail side in px.

    Returns
    -------
    PIL.Image (RGB)
    """
    if method != "pca":
        raise InvalidInputError(f"unknown projection method {method!r}; use 'pca'")
    seed = _check_int(seed, "seed", 0)
    thumb = _check_int(thumb, "thumb", 8, 56)
    lay = feature_plot_layout(size)
    x, probs, caps, _ = _run(model, images, polarity, batch_size, need_reco=False)
    n = len(x)
    if n < 2:
        raise InvalidInputError(f"a feature-space plot needs at least 2 images, got {n}")
    if labels is not None:
        labels = list(labels)
        if len(labels) != n:
            raise InvalidInputError(f"labels: got {len(labels)} labels for {n} images")
        cls = [_class_index(model, lab, f"label {i}") for i, lab in enumerate(labels)]
    else:
        cls = [int(i) for i in probs.argmax(axis=1)]
    coords, ratio = project_features(caps, method)

    width, height = lay.size
    canvas = Image.new("RGB", lay.size, _WHITE)
    draw = ImageDraw.Draw(canvas)
    y = 14
    _text(draw, _MARGIN, y, _fit(f"Feature space of {model.card.name}: PCA of 16-D capsule features",
                                 _TITLE, width - 2 * _MARGIN), _TITLE)
    y += _line_h(_TITLE) + 6
    sub = (f"{n} images, each drawn at the first two principal components of its Pick capsule "
           f"(the 16-D capsule of the predicted class); colour: "
           f"{'true label' if labels is not None else 'predicted class'}.")
    _draw_paragraph(draw, _MARGIN, y, _wrap(sub, _SMALL, width - 2 * _MARGIN)[:2], _SMALL)

    x0, y0, x1, y1 = lay.plot_box
    pad = thumb / 2 + 6
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = hi - lo
    for k in range(2):
        if not span[k] > 0:
            half = max(abs(lo[k]), 1e-12)
            lo[k], hi[k], span[k] = lo[k] - half, hi[k] + half, 2 * half
    sx = (x1 - x0 - 2 * pad) / span[0]
    sy = (y1 - y0 - 2 * pad) / span[1]
    ax_lo = (lo[0] - pad / sx, lo[1] - pad / sy)
    ax_hi = (hi[0] + pad / sx, hi[1] + pad / sy)

    def px(v):
        return x0 + pad + (v - lo[0]) * sx

    def py(v):
        return y1 - pad - (v - lo[1]) * sy

    # axes, grid lines, ticks
    xt, xstep = _nice_ticks(ax_lo[0], ax_hi[0])
    yt, ystep = _nice_ticks(ax_lo[1], ax_hi[1])
    for t in xt:
        X = int(round(px(t)))
        draw.line((X, y0, X, y1), fill=(235, 235, 235))
        draw.line((X, y1, X, y1 + 5), fill=_INK)
        _text(draw, X, y1 + 8, _tick_label(t, xstep), _SMALL, _INK, "center")
    for t in yt:
        Y = int(round(py(t)))
        draw.line((x0, Y, x1, Y), fill=(235, 235, 235))
        draw.line((x0 - 5, Y, x0, Y), fill=_INK)
        _text(draw, x0 - 8, Y - _line_h(_SMALL) / 2, _tick_label(t, ystep), _SMALL, _INK, "right")
    draw.rectangle((x0, y0, x1, y1), outline=_INK)
    _text(draw, (x0 + x1) / 2, y1 + 8 + _line_h(_SMALL) + 6, f"PC1 ({100 * ratio[0]:.1f} % var)", _TEXT,
          _INK, "center")
    _vtext(canvas, _MARGIN + _line_h(_TEXT) / 2, (y0 + y1) / 2, f"PC2 ({100 * ratio[1]:.1f} % var)", _TEXT)

    # thumbnails, in a seeded order so no class always lies on top
    order = np.random.RandomState(seed).permutation(n)
    tiles = {}
    for i in order:
        k = cls[i]
        mask = Image.fromarray(np.clip(x[i] * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        mask = mask.resize((thumb, thumb), Image.BILINEAR)
        if k not in tiles:
            tiles[k] = Image.new("RGB", (thumb, thumb), PALETTE[k % len(PALETTE)])
        cx, cy = px(coords[i, 0]), py(coords[i, 1])
        canvas.paste(tiles[k], (int(round(cx - thumb / 2)), int(round(cy - thumb / 2))), mask)

    # legend
    counts = np.bincount(np.asarray(cls, dtype=np.int64), minlength=10)
    classes = model.card.classes
    _text(draw, lay.swatch_boxes[0][0], lay.legend_title_y,
          "true label" if labels is not None else "predicted class", _TEXT, _INK)
    for k, box in enumerate(lay.swatch_boxes):
        draw.rectangle(box, fill=PALETTE[k])
        name = classes[k] if k < len(classes) else k
        _text(draw, box[2] + 8, (box[1] + box[3]) / 2 - _line_h(_TEXT) / 2, f"{name}  ({counts[k]})", _TEXT)
    last = lay.swatch_boxes[-1]
    _draw_paragraph(draw, last[0], last[3] + 14, _wrap("(n): count", _SMALL, width - last[0] - _MARGIN),
                    _SMALL)
    if note:
        _text(draw, _MARGIN, height - 10 - _line_h(_SMALL), _fit(note, _SMALL, width - 2 * _MARGIN), _SMALL,
              _MUTED)
    return canvas


# -- 4. summary graphic ------------------------------------------------------------------------
_DESCRIPTIONS = {
    "ReLUConv1": "9x9 convolution, 256 channels, ReLU",
    "PrimaryCaps": "9x9 stride-2 convolution -> 1152 squashed 8-D capsules",
    "PrimaryPredVects": "prediction vectors W u, one 16x8 matrix per capsule pair",
    "DigitCaps": "routing by agreement -> 10 digit capsules",
    "Pick": "the capsule of the longest (predicted) class",
    "Reconstruct": "decoder: dense 512, 1024, 784 (sigmoid)",
}
_OUTPUTS = {
    "DigitCaps": "probabilities (10): capsule lengths",
    "Pick": "capsule (16)",
    "Reconstruct": "reconstruction (1 x 28 x 28)",
}


def _shape(shape):
    return " x ".join(str(int(d)) for d in shape) if shape else "?"


def _summary_items(info):
    """The summary graphic as drawing primitives: (size, items).

    Items: ("rect", box, fill, outline), ("arrow", (x0, y0, x1, y1)),
    ("text", x, y_top, text, size, colour, align).
    """
    from ._net import SUBNET_NAMES
    from ._slices import STAGE_SHAPES

    subnets = [(str(n), tuple(s), int(p)) for n, s, p in info.subnets]
    names = [n for n, _, _ in subnets]
    header = (f"Number of layers: {info.num_layers} | Parameter count: {info.num_params:,} | "
              f"Trained size: {info.trained_size_mb:.0f} MB")
    in_shape = None
    if names and names[0] in SUBNET_NAMES:
        i = SUBNET_NAMES.index(names[0])
        in_shape = STAGE_SHAPES["input" if i == 0 else SUBNET_NAMES[i - 1]]
    boxes = [("Input", "", f"{'image' if in_shape == (1, 28, 28) else 'array'} {_shape(in_shape)}",
              "float32 in [0, 1], light ink on dark" if in_shape == (1, 28, 28) else "")]
    for n, s, p in subnets:
        boxes.append((n, f"{p:,} parameters", f"output {_shape(s)}", _DESCRIPTIONS.get(n, "")))
    full = tuple(names) == tuple(SUBNET_NAMES)
    outputs = {}
    if full:
        outputs = dict(_OUTPUTS)
    elif subnets:
        outputs = {names[-1]: f"output ({_shape(subnets[-1][1])})"}

    pad, name_size = 12, 16
    box_w = max([_text_w(a, name_size) + 24 + _text_w(b, _TEXT) for a, b, _, _ in boxes]
                + [_text_w(c, _TEXT) for _, _, c, _ in boxes] + [_text_w(d, _SMALL) for _, _, _, d in boxes]
                + [300]) + 2 * pad + 8
    box_h = pad + _line_h(name_size) + 4 + _line_h(_TEXT) + 3 + _line_h(_SMALL) + pad
    arrow_h = 28
    out_arrow = 36
    out_w = max([_text_w(t, _TEXT) for t in outputs.values()] + [0])
    title = info.name or "net"
    items = []
    y = 14
    items.append(("text", _MARGIN, y, title, _TITLE, _INK, "left"))
    y += _line_h(_TITLE) + 6
    items.append(("text", _MARGIN, y, header, _TEXT, _INK, "left"))
    head_w = max(_text_w(title, _TITLE), _text_w(header, _TEXT))
    y += _line_h(_TEXT) + 18
    x0 = _MARGIN
    for i, (name, params, shape, desc) in enumerate(boxes):
        top = y + i * (box_h + arrow_h)
        fill = (245, 245, 245) if i == 0 else _BOX_FILL
        items.append(("rect", (x0, top, x0 + box_w, top + box_h), fill, _BOX_EDGE))
        ty = top + pad
        items.append(("text", x0 + pad, ty, name, name_size, _INK, "left"))
        if params:
            items.append(("text", x0 + box_w - pad, ty + (_line_h(name_size) - _line_h(_TEXT)), params, _TEXT,
                          _MUTED, "right"))
        ty += _line_h(name_size) + 4
        items.append(("text", x0 + pad, ty, shape, _TEXT, _INK, "left"))
        ty += _line_h(_TEXT) + 3
        if desc:
            items.append(("text", x0 + pad, ty, desc, _SMALL, _MUTED, "left"))
        if i > 0:
            items.append(("arrow", (x0 + box_w // 2, top - arrow_h, x0 + box_w // 2, top - 1)))
        if name in outputs and i > 0:
            my = top + box_h // 2
            items.append(("arrow", (x0 + box_w, my, x0 + box_w + out_arrow, my)))
            items.append(("text", x0 + box_w + out_arrow + 6, my - _line_h(_TEXT) // 2, outputs[name], _TEXT,
                          _INK, "left"))
    bottom = y + len(boxes) * (box_h + arrow_h) - arrow_h
    width = max(x0 + box_w + (out_arrow + 6 + out_w if outputs else 0), _MARGIN + head_w) + _MARGIN
    height = bottom + _MARGIN
    return (int(width), int(height)), items


def _arrow_head(x0, y0, x1, y1, size=8):
    ang = math.atan2(y1 - y0, x1 - x0)
    left = (x1 - size * math.cos(ang - 0.45), y1 - size * math.sin(ang - 0.45))
    right = (x1 - size * math.cos(ang + 0.45), y1 - size * math.sin(ang + 0.45))
    return [(x1, y1), left, right]


def summary_graphic(info):
    """NetInformation's "SummaryGraphic": the sub-nets in order as boxes with arrows (PIL image).

    Each box shows the sub-net's name, output shape and parameter count; the
    header gives layers, parameter count and trained size.  ``info`` is a
    :class:`~capszoo.NetInfo` (``model.info()``).
    """
    size, items = _summary_items(info)
    canvas = Image.new("RGB", size, _WHITE)
    draw = ImageDraw.Draw(canvas)
    for it in items:
        kind = it[0]
        if kind == "rect":
            draw.rounded_rectangle(it[1], radius=6, fill=it[2], outline=it[3], width=2)
        elif kind == "arrow":
            x0, y0, x1, y1 = it[1]
            draw.line((x0, y0, x1, y1), fill=_INK, width=2)
            draw.polygon(_arrow_head(x0, y0, x1, y1), fill=_INK)
        else:
            _, x, y, text, tsize, colour, align = it
            _text(draw, x, y, text, tsize, colour, align)
    return canvas


def _hex(rgb):
    return "#%02x%02x%02x" % tuple(rgb)


def summary_svg(info):
    """The summary graphic of ``info`` as an SVG document (a string)."""
    (w, h), items = _summary_items(info)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'font-family="Aileron, Helvetica, Arial, sans-serif">',
           f'<title>{escape(info.name or "net")} summary</title>',
           f'<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>']
    for it in items:
        kind = it[0]
        if kind == "rect":
            x0, y0, x1, y1 = it[1]
            out.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" rx="6" '
                       f'fill="{_hex(it[2])}" stroke="{_hex(it[3])}" stroke-width="2"/>')
        elif kind == "arrow":
            x0, y0, x1, y1 = it[1]
            pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in _arrow_head(x0, y0, x1, y1))
            out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="{_hex(_INK)}" stroke-width="2"/>')
            out.append(f'<polygon points="{pts}" fill="{_hex(_INK)}"/>')
        else:
            _, x, y, text, tsize, colour, align = it
            anchor = {"left": "start", "center": "middle", "right": "end"}[align]
            # textLength pins each line to the width measured with Pillow's font, so the
            # layout holds whatever sans-serif the viewer substitutes.
            out.append(f'<text x="{x}" y="{y + _ascent(tsize)}" font-size="{tsize}" fill="{_hex(colour)}" '
                       f'text-anchor="{anchor}" textLength="{_text_w(text, tsize)}" '
                       f'lengthAdjust="spacingAndGlyphs">{escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def parse_labels(spec, count=None):
    """Parse comma-separated integer class labels (``"7,2,1"``); ``count`` checks how many."""
    parts = [p.strip() for p in str(spec).split(",")]
    try:
        labels = [int(p) for p in parts]
    except ValueError:
        raise InvalidInputError(f"cannot parse labels {spec!r}; give integers separated by commas, "
                                f"e.g. 7,2,1") from None
    if count is not None and len(labels) != count:
        raise InvalidInputError(f"labels: got {len(labels)} labels for {count} images")
    return labels


# -- 5. training curve -------------------------------------------------------------------------
_VAL = PALETTE[0]
_TRAIN = PALETTE[1]
_BEST = PALETTE[2]
_CLASS_LOSS = PALETTE[3]
_RECO_LOSS = PALETTE[4]
_VAL_RAW = PALETTE[9]
_GRID = (235, 235, 235)
_CURVE_SIZE = (1100, 500)
_CURVE_PAD = 16  # px between a panel's frame and the first/last epoch, and above/below the data
_REQUIRED = ("epoch", "train_accuracy", "val_accuracy")


@dataclasses.dataclass(frozen=True)
class TrainingCurveLayout:
    """Geometry of :func:`training_curve`: picture size, the two plot frames, where each epoch goes."""

    size: Tuple[int, int]
    error_box: Tuple[int, int, int, int]
    loss_box: Tuple[int, int, int, int]
    first_epoch: int
    last_epoch: int

    def epoch_x(self, epoch, box=None):
        """The x pixel of ``epoch`` in ``box`` (default: the error panel)."""
        x0, _, x1, _ = self.error_box if box is None else box
        if self.last_epoch == self.first_epoch:
            return (x0 + x1) / 2
        frac = (epoch - self.first_epoch) / (self.last_epoch - self.first_epoch)
        return x0 + _CURVE_PAD + frac * (x1 - x0 - 2 * _CURVE_PAD)


def training_curve_layout(first_epoch=1, last_epoch=1):
    """The :class:`TrainingCurveLayout` of a training curve over epochs ``first_epoch..last_epoch``."""
    first = _check_int(first_epoch, "first_epoch", 0)
    last = _check_int(last_epoch, "last_epoch", first)
    width, height = _CURVE_SIZE
    top = 14 + _line_h(_TITLE) + 6 + _line_h(_SMALL) + 16 + _line_h(_TEXT) + 8
    bottom = height - (8 + _line_h(_SMALL) + 6 + _line_h(_TEXT) + 12 + _line_h(_SMALL) + 14)
    y_label = _line_h(_TEXT) + 8   # the rotated axis title
    ticks = 8 + 52                  # tick marks and their labels
    gap = 44
    panel_w = (width - 2 * _MARGIN - 2 * (y_label + ticks) - gap) // 2
    left0 = _MARGIN + y_label + ticks
    left1 = left0 + panel_w + gap + y_label + ticks
    return TrainingCurveLayout(size=(width, height), error_box=(left0, top, left0 + panel_w, bottom),
                               loss_box=(left1, top, left1 + panel_w, bottom), first_epoch=first,
                               last_epoch=last)


def _metrics_rows(metrics):
    """``metrics`` (a JSONL path or a list of dicts) as a list of (where, dict), ``where`` naming the line."""
    if isinstance(metrics, (str, bytes, os.PathLike)):
        p = os.fsdecode(os.fspath(metrics))
        try:
            with open(p, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise InvalidInputError(f"metrics file {p!r} does not exist") from None
        except IsADirectoryError:
            raise InvalidInputError(f"metrics file {p!r} is a folder, not a JSONL file") from None
        except OSError as exc:
            raise InvalidInputError(f"cannot read metrics file {p!r}: {_os_reason(exc)}") from None
        rows = []
        for n, raw in enumerate(data.split(b"\n"), 1):
            where = f"{p} line {n}"
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError:
                raise InvalidInputError(f"{where}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                col = f" (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
                raise InvalidInputError(f"{where}: invalid JSON: {reason}{col}") from None
            except RecursionError:
                raise InvalidInputError(f"{where}: invalid JSON: nested too deeply") from None
            rows.append((where, obj))
        if not rows:
            raise InvalidInputError(f"metrics file {p!r} has no epochs (it is empty)")
        return rows
    if isinstance(metrics, dict) or not hasattr(metrics, "__iter__"):
        raise InvalidInputError(f"metrics must be a path to a JSONL file or a list of dicts (one per epoch), "
                                f"got {type(metrics).__name__}")
    rows = [(f"metrics line {n}", obj) for n, obj in enumerate(metrics, 1)]
    if not rows:
        raise InvalidInputError("metrics has no epochs (the list is empty)")
    return rows


def _number(row, key, where):
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{where}: {key} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise InvalidInputError(f"{where}: {key} is {v}, not a finite number")
    return v


def _parse_metrics(metrics):
    """Check the per-epoch log: a dict of equal-length lists (epoch, errors, losses) plus the best epoch."""
    rows = _metrics_rows(metrics)
    epochs, val_err, train_err, loss, class_loss, reco_loss, val_errors = [], [], [], [], [], [], []
    val_raw_err = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise InvalidInputError(f"{where}: expected a JSON object (one epoch), got {type(row).__name__}")
        for key in _REQUIRED:
            if key not in row:
                raise InvalidInputError(f"{where}: missing key {key!r} (each epoch needs "
                                        f"{', '.join(_REQUIRED)} and train_loss or "
                                        f"train_class_loss + train_reco_loss)")
        e = row["epoch"]
        if isinstance(e, bool) or not isinstance(e, (int, np.integer, float)) or \
                (isinstance(e, float) and not e.is_integer()) or e < 0:
            raise InvalidInputError(f"{where}: epoch must be an integer >= 0, got {e!r}")
        e = int(e)
        if epochs and e <= epochs[-1]:
            raise InvalidInputError(f"{where}: epoch {e} comes after epoch {epochs[-1]}; "
                                    f"epochs must increase line by line")
        for key in ("train_accuracy", "val_accuracy") + (("val_accuracy_raw",) if "val_accuracy_raw" in row else ()):
            a = _number(row, key, where)
            if not 0.0 <= a <= 1.0:
                raise InvalidInputError(f"{where}: {key} must be a fraction in [0, 1], got {a!r}")
        parts = [k for k in ("train_class_loss", "train_reco_loss") if k in row]
        if "train_loss" not in row and len(parts) < 2:
            missing = "train_loss" if not parts else \
                ({"train_class_loss", "train_reco_loss"} - set(parts)).pop()
            raise InvalidInputError(f"{where}: missing key {missing!r} (give train_loss or both "
                                    f"train_class_loss and train_reco_loss)")
        losses = {}
        for key in ("train_loss", "train_class_loss", "train_reco_loss"):
            if key in row:
                losses[key] = _number(row, key, where)
                if losses[key] < 0:
                    raise InvalidInputError(f"{where}: {key} must be >= 0, got {losses[key]!r}")
        epochs.append(e)
        val_err.append(100.0 - 100.0 * float(row["val_accuracy"]))
        val_raw_err.append(max(100.0 - 100.0 * float(row["val_accuracy_raw"]), 0.0) if "val_accuracy_raw" in row
                           else None)
        train_err.append(100.0 - 100.0 * float(row["train_accuracy"]))
        both = "train_class_loss" in losses and "train_reco_loss" in losses
        class_loss.append(losses["train_class_loss"] if both else None)
        reco_loss.append(losses["train_reco_loss"] if both else None)
        loss.append(losses["train_loss"] if "train_loss" in losses else
                    losses["train_class_loss"] + losses["train_reco_loss"])
        ve = row.get("val_errors")
        val_errors.append(int(ve) if isinstance(ve, (int, np.integer)) and not isinstance(ve, bool) else None)
    val_err = [max(v, 0.0) for v in val_err]
    train_err = [max(v, 0.0) for v in train_err]
    components = all(c is not None for c in class_loss)
    best = min(range(len(epochs)), key=lambda i: (val_err[i], i))
    return dict(epoch=epochs, val_err=val_err, train_err=train_err, loss=loss,
                val_raw_err=val_raw_err if any(v is not None for v in val_raw_err) else None,
                class_loss=class_loss if components else None, reco_loss=reco_loss if components else None,
                val_errors=val_errors, best=best)


def _log_ticks(lo, hi):
    """Ticks 1-2-5 x 10^k spanning ``[lo, hi]`` (both > 0): the ticks; the first <= lo, the last >= hi."""
    def cands(k):
        return [round(m * 10.0 ** k, 12) for m in (1, 2, 5)]

    k = int(math.floor(math.log10(lo)))
    below = [c for c in cands(k - 1) + cands(k) if c <= lo * (1 + 1e-9)]
    ticks = [below[-1]]
    while ticks[-1] < hi * (1 - 1e-9):
        k = int(math.floor(math.log10(ticks[-1]) + 1e-9))
        ticks.append(next(c for c in cands(k) + cands(k + 1) if c > ticks[-1] * (1 + 1e-9)))
    if len(ticks) > 10:  # a wide range: label the powers of ten only (the ends stay)
        ticks = [t for i, t in enumerate(ticks) if i in (0, len(ticks) - 1) or
                 abs(math.log10(t) - round(math.log10(t))) < 1e-9]
    return ticks


def _linear_ticks(vmax):
    """Ticks from 0 up to the first "nice" value >= ``vmax``, and their step."""
    ticks, step = _nice_ticks(0.0, vmax) if vmax > 0 else ([0.0], 1.0)
    if ticks[-1] < vmax * (1 - 1e-9) or len(ticks) < 2:
        ticks.append(ticks[-1] + step)
    return ticks, step


def _epoch_ticks(first, last):
    span = last - first
    step = 1
    for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        step = s
        if span / s <= 8:
            break
    ticks = list(range(-(-first // step) * step, last + 1, step))
    return ticks or [first]


def _dashed_vline(draw, x, y0, y1, fill, dash=6, gap=4, width=1):
    y = y0
    while y < y1:
        draw.line((x, y, x, min(y + dash, y1)), fill=fill, width=width)
        y += dash + gap


def _ring(draw, x, y, r, fill, width=2):
    draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=width)


def _dot(draw, x, y, r, fill):
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _pct(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _legend_row(canvas, draw, x, y, entries):
    """Legend entries side by side at ``(x, y)``: (kind, colour, text), kind "line" or "ring"."""
    h = _line_h(_SMALL)
    for kind, colour, text in entries:
        my = int(y + h / 2)
        if kind == "ring":
            _ring(draw, x + 11, my, 6, colour)
        else:
            draw.line((x, my, x + 22, my), fill=colour, width=2)
            _dot(draw, x + 11, my, 3, colour)
        _text(draw, x + 28, y, text, _SMALL, _INK)
        x += 28 + _text_w(text, _SMALL) + 22


def _panel(canvas, draw, lay, box, series, ticks, to_y, tick_text, y_title, epochs):
    """Frame, grid, ticks and curves of one panel; ``series``: (colour, values, width)."""
    x0, y0, x1, y1 = box
    for t in ticks:
        Y = int(round(to_y(t)))
        draw.line((x0, Y, x1, Y), fill=_GRID)
        draw.line((x0 - 5, Y, x0, Y), fill=_INK)
        _text(draw, x0 - 8, Y - _line_h(_SMALL) / 2, tick_text(t), _SMALL, _INK, "right")
    for e in _epoch_ticks(epochs[0], epochs[-1]):
        X = int(round(lay.epoch_x(e, box)))
        draw.line((X, y1, X, y1 + 5), fill=_INK)
        _text(draw, X, y1 + 8, str(e), _SMALL, _INK, "center")
    draw.rectangle(box, outline=_INK)
    _text(draw, (x0 + x1) / 2, y1 + 8 + _line_h(_SMALL) + 6, "epoch", _TEXT, _INK, "center")
    _vtext(canvas, x0 - 8 - 52 - 8 - _line_h(_TEXT) / 2, (y0 + y1) / 2, y_title, _TEXT)
    dots = len(epochs) <= 60
    for colour, values, width in series:
        # a value of None (an epoch without it) breaks the line
        for present, run in itertools.groupby(zip(epochs, values), key=lambda ev: ev[1] is not None):
            if not present:
                continue
            pts = [(int(round(lay.epoch_x(e, box))), int(round(to_y(v)))) for e, v in run]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=width, joint="curve")
            if dots or len(pts) == 1:
                for px, py in pts:
                    _dot(draw, px, py, 3, colour)


def training_curve(metrics, path=None, *, title=None):
    """Training curves of a run: error rates (left) and training loss (right) per epoch.

    The left panel shows the validation error, ``100 - 100 * val_accuracy``,
    and the training error, ``100 - 100 * train_accuracy``, in percent (and,
    as a thin line over the epochs that have it, the validation error of the
    raw weights, ``val_accuracy_raw``, logged when validation uses a moving
    average of the weights), on a
    log axis when both are positive and span more than a factor of 3 (else a
    linear axis from 0).  The right panel shows the training loss: the total
    and, when every epoch has them, its two parts (margin/class loss and
    reconstruction loss).  The epoch with the lowest validation error (the
    first of equals) is marked in both panels with a green dashed line, and
    its value with a green ring.  Drawn with Pillow only; the same log gives
    the same bytes.

    Parameters
    ----------
    metrics : str, os.PathLike or list of dict
        A JSONL file, one JSON object per epoch (blank lines are skipped), as
        ``capszoo train`` writes it, or the objects themselves.  Each epoch
        needs ``epoch`` (integers, increasing), ``train_accuracy`` and
        ``val_accuracy`` (fractions in [0, 1]) and ``train_loss`` or both
        ``train_class_loss`` and ``train_reco_loss``; ``val_errors`` (a count)
        is shown for the best epoch when given; ``val_accuracy_raw`` (a
        fraction) is optional per epoch.  Other keys are ignored.
    path : str or os.PathLike, optional
        Also write the picture here (.png, .jpg, .jpeg), atomically; the path
        is checked before anything is drawn.
    title : str, optional
        The heading (default ``"Training curve"``).

    Returns
    -------
    PIL.Image (RGB)
        Of size ``training_curve_layout(...).size``; the plot frames and the
        epoch positions are those of :func:`training_curve_layout` with the
        first and last epoch.

    Raises
    ------
    InvalidInputError
        The log cannot be read or is not valid: a missing file, a line that is
        not JSON or not an object, no epochs, a missing key, a value that is
        not a finite number, epochs not increasing, an unknown extension of
        ``path``.  The message names the file and line (``metrics line N`` for
        a list, counting from 1).
    ExportError
        ``path`` cannot be written.
    """
    if title is not None and not isinstance(title, str):
        raise InvalidInputError(f"title must be a string, got {type(title).__name__}")
    if path is not None:
        check_output_path(path)
    m = _parse_metrics(metrics)
    epochs = m["epoch"]
    n = len(epochs)
    lay = training_curve_layout(epochs[0], epochs[-1])
    width, height = lay.size
    canvas = Image.new("RGB", lay.size, _WHITE)
    draw = ImageDraw.Draw(canvas)
    b = m["best"]

    # heading
    y = 14
    _text(draw, _MARGIN, y, _fit(title or "Training curve", _TITLE, width - 2 * _MARGIN), _TITLE)
    y += _line_h(_TITLE) + 6
    best_txt = f"{_pct(m['val_err'][b])} %"
    if m["val_errors"][b] is not None:
        best_txt += f" ({m['val_errors'][b]:,} errors)"
    sub = (f"{n} epoch{'s' if n != 1 else ''} ({epochs[0]}..{epochs[-1]}); lowest validation error "
           f"{best_txt} at epoch {epochs[b]}; last: {_pct(m['val_err'][-1])} %.")
    _text(draw, _MARGIN, y, _fit(sub, _SMALL, width - 2 * _MARGIN), _SMALL, _MUTED)

    # left: error rates
    ex0, ey0, ex1, ey1 = lay.error_box
    raw = m["val_raw_err"]
    errs = m["val_err"] + m["train_err"] + [v for v in raw or () if v is not None]
    lo, hi = min(errs), max(errs)
    log = lo > 0 and hi / lo > 3
    inner = (ey1 - _CURVE_PAD, ey0 + _CURVE_PAD)
    if log:
        eticks = _log_ticks(lo, hi)
        la, lb = math.log10(eticks[0]), math.log10(eticks[-1])

        def err_y(v):
            return inner[0] - (math.log10(v) - la) / (lb - la) * (inner[0] - inner[1])

        def err_label(v):
            return f"{v:g}"
    else:
        eticks, estep = _linear_ticks(hi)

        def err_y(v):
            return inner[0] - v / eticks[-1] * (inner[0] - inner[1])

        def err_label(v):
            return _tick_label(v, estep)
    _text(draw, ex0, ey0 - 8 - _line_h(_TEXT),
          f"Error rate (%, {'log' if log else 'linear'} scale)", _TEXT, _INK)
    bx = int(round(lay.epoch_x(epochs[b], lay.error_box)))
    _dashed_vline(draw, bx, ey0 + 1, ey1 - 1, _BEST, width=2)
    _panel(canvas, draw, lay, lay.error_box, [(_TRAIN, m["train_err"], 2)] + ([(_VAL_RAW, raw, 1)] if raw else [])
           + [(_VAL, m["val_err"], 2)], eticks, err_y, err_label, "error (%)", epochs)
    _ring(draw, bx, int(round(err_y(m["val_err"][b]))), 8, _BEST, width=2)

    # right: training loss
    lx0, ly0, lx1, ly1 = lay.loss_box
    lticks, lstep = _linear_ticks(max(m["loss"]))

    def loss_y(v):
        return inner[0] - v / lticks[-1] * (inner[0] - inner[1])

    _text(draw, lx0, ly0 - 8 - _line_h(_TEXT), "Training loss", _TEXT, _INK)
    _dashed_vline(draw, int(round(lay.epoch_x(epochs[b], lay.loss_box))), ly0 + 1, ly1 - 1, _BEST, width=2)
    series = [(_INK, m["loss"], 2)]
    if m["class_loss"] is not None:
        series += [(_CLASS_LOSS, m["class_loss"], 2), (_RECO_LOSS, m["reco_loss"], 2)]
    _panel(canvas, draw, lay, lay.loss_box, series, lticks, loss_y, lambda v: _tick_label(v, lstep), "loss",
           epochs)

    # legends under the panels
    ly = height - 14 - _line_h(_SMALL)
    _legend_row(canvas, draw, ex0, ly, [("line", _VAL, "validation"), ("line", _TRAIN, "training")]
                + ([("line", _VAL_RAW, "validation, raw weights")] if raw else [])
                + [("ring", _BEST, f"best (epoch {epochs[b]})" if raw else f"best validation (epoch {epochs[b]})")])
    entries = [("line", _INK, "total")]
    if m["class_loss"] is not None:
        entries += [("line", _CLASS_LOSS, "margin (class)"), ("line", _RECO_LOSS, "reconstruction")]
    _legend_row(canvas, draw, lx0, ly, entries)

    if path is not None:
        save_image(canvas, path)
    return canvas
