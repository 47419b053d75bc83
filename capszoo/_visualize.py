"""Pictures of a CapsNet: reconstructions, pose tweaks, feature space, summary graphic, training curve.

Drawn with matplotlib (the Agg canvas; installed with ``pip install 'capszoo[viz]'``),
imported only when a picture is drawn, so ``import capszoo`` stays fast.  Each
drawing function returns a :class:`matplotlib.figure.Figure` of a fixed pixel
size (100 dpi) whose axes, images, lines and texts are what tests and callers
can inspect; :func:`save_image` writes it.

>>> from capszoo import _visualize as vis
>>> fig = vis.reconstruction_panel(model, images, labels=labels)      # doctest: +SKIP
>>> cells, grid = vis.tweak_images(model, image, dims=[11, 14, 16])   # doctest: +SKIP
>>> vis.feature_space_plot(model, images, labels, seed=0)             # doctest: +SKIP
>>> vis.save_summary(model.info(), "summary.svg")                     # doctest: +SKIP
>>> vis.training_curve("runs/capsnet-mnist/metrics.jsonl", "training.png")  # doctest: +SKIP

Digits are shown as the net sees them: light ink on a dark field, 28x28,
enlarged by an integer factor with nearest-neighbour sampling.

Output files are written atomically; the format comes from the extension
(.png, .jpg/.jpeg, and .svg for the summary graphic).  PNG and JPEG are the
Agg canvas's pixels written by Pillow (no metadata), SVG is matplotlib's with a
fixed hash salt and no date, so the same inputs give the same bytes.  An
unknown extension raises :class:`~capszoo.errors.InvalidInputError`; a path
that cannot be written raises :class:`~capszoo.errors.ExportError` and leaves
no file behind; so does a missing matplotlib, naming the extra to install.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import textwrap

import numpy as np

from ._io import atomic_path
from .errors import ExportError, InvalidInputError, SubnetNotFoundError

__all__ = [
    "PALETTE",
    "DEFAULT_OFFSETS",
    "MAX_OFFSETS",
    "reconstruction_panel",
    "tweak_images",
    "tweak_grid",
    "parse_dims",
    "parse_range",
    "parse_labels",
    "project_features",
    "feature_space_plot",
    "summary_graphic",
    "routing_figure",
    "capsule_mosaic",
    "save_image",
    "save_summary",
    "to_image",
    "pixel_size",
    "output_format",
    "check_output_path",
    "require_matplotlib",
    "training_curve",
]

#: Ten distinct class colours (matplotlib's "tab10"), class ``k`` gets ``PALETTE[k]``.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
#: Offsets added to one capsule dimension in the pose-tweak grid (the Keras grid: 11 columns).
DEFAULT_OFFSETS = np.round(np.arange(-0.25, 0.2501, 0.05), 10) + 0.0
#: Most offsets (columns) a tweak grid may have.
MAX_OFFSETS = 41
CAPSULE_DIM = 16
VIZ_INSTALL = "pip install 'capszoo[viz]'"

_DPI = 100
_INK, _MUTED, _WRONG, _GRID = "#191919", "#5f5f5f", "#c81414", "#e6e6e6"
_TITLE, _TEXT, _SMALL = 14, 10, 9          # font sizes in points
_MARGIN = 20                               # px
_LINE = {_TITLE: 24, _TEXT: 17, _SMALL: 15}  # px per line of text of each size
_RC = {"font.family": "DejaVu Sans", "font.size": _TEXT, "axes.titlesize": 11, "axes.labelsize": _TEXT,
       "xtick.labelsize": _SMALL, "ytick.labelsize": _SMALL, "legend.fontsize": _SMALL,
       "axes.edgecolor": _INK, "text.color": _INK, "axes.labelcolor": _INK, "xtick.color": _INK,
       "ytick.color": _INK, "figure.dpi": _DPI, "savefig.dpi": _DPI, "svg.fonttype": "none",
       "svg.hashsalt": "capszoo", "text.parse_math": False}
_IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}


def _hex(rgb):
    return "#%02x%02x%02x" % tuple(rgb)


# -- matplotlib --------------------------------------------------------------------------------
def require_matplotlib():
    """Import matplotlib (Agg canvas, no pyplot); ExportError with the install command when it is missing."""
    try:
        import matplotlib
        import matplotlib.style  # noqa: F401
        from matplotlib.backends import backend_agg  # noqa: F401
    except ImportError:
        raise ExportError(f"drawing pictures needs matplotlib, which is not installed; install it with "
                          f"{VIZ_INSTALL}") from None
    return matplotlib


@contextlib.contextmanager
def _style():
    """matplotlib's defaults plus capszoo's fonts and sizes, whatever the user's matplotlibrc says."""
    mpl = require_matplotlib()
    with mpl.style.context(["default", _RC]):
        yield


def _drawing(fn):
    """Run ``fn`` in :func:`_style` (matplotlib is imported here, on first use)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _style():
            return fn(*args, **kwargs)
    return wrapper


def _figure(width, height):
    """A white Figure of ``width`` x ``height`` pixels on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # a hair over the size: Agg truncates width * dpi to pixels, and 19.31 in * 100 dpi is 1930.99...
    fig = Figure(figsize=((width + 0.01) / _DPI, (height + 0.01) / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _axes(fig, left, top, width, height):
    """Axes at a pixel box given from the top-left corner of ``fig``."""
    w, h = fig.bbox.width, fig.bbox.height
    return fig.add_axes((left / w, 1 - (top + height) / h, width / w, height / h))


def _text(fig, x, y, text, size=_TEXT, color=_INK, **kw):
    """Figure text with its top at pixel ``y`` from the top (``x`` from the left)."""
    w, h = fig.bbox.width, fig.bbox.height
    kw.setdefault("va", "top")
    return fig.text(x / w, 1 - y / h, text, fontsize=size, color=color, **kw)


def _wrap(text, width_px, size):
    """``text`` broken into lines that fit ``width_px`` (DejaVu Sans averages about 0.52 em per character)."""
    return textwrap.wrap(text, max(20, int(width_px / (0.52 * size * _DPI / 72)))) if text else []


def _paragraph(fig, y, lines, size=_SMALL, color=_MUTED):
    """Lines of small print from pixel ``y`` down; returns the ``y`` under them."""
    for line in lines:
        _text(fig, _MARGIN, y, line, size, color)
        y += _LINE[size]
    return y


def _measurer():
    """``width(text, size)``: the width in pixels of one line of ``text`` at ``size`` points."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer, props = RendererAgg(1, 1, _DPI), {}

    def width(text, size):
        if size not in props:
            props[size] = FontProperties(size=size)
        return renderer.get_text_width_height_descent(text, props[size], ismath=False)[0]
    return width


def pixel_size(picture):
    """``(width, height)`` in pixels of a Figure or a PIL image."""
    if hasattr(picture, "get_size_inches"):
        w, h = picture.get_size_inches() * picture.dpi
        return int(w), int(h)   # as Agg renders it
    return picture.size


def to_image(picture):
    """A Figure rendered by Agg as a PIL RGB image (a PIL image is returned as it is)."""
    if not hasattr(picture, "get_size_inches"):
        return picture
    from PIL import Image

    with _style():
        picture.canvas.draw()
        rgba = np.asarray(picture.canvas.buffer_rgba())
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB")


def _tile(ax, arr, x, y, label=None):
    """Show a 28x28 image (uint8 or [0, 1] floats) with its top-left corner at data ``(x, y)``."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        a = np.clip(a.reshape(28, 28) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return ax.imshow(a.reshape(28, 28), cmap="gray", vmin=0, vmax=255, interpolation="nearest",
                     extent=(x, x + 28, y + 28, y), label=label)


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


def _check_path(path, *, svg=False):
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


def check_output_path(path, *, svg=False):
    """Check, before any work, that a picture can be drawn into ``path``: a known extension, a
    writable folder, and matplotlib installed.  Returns the format ("PNG", "JPEG", "SVG").

    Raises InvalidInputError (extension) or ExportError (cannot be written; no matplotlib).
    """
    fmt = _check_path(path, svg=svg)
    require_matplotlib()
    return fmt


def _os_reason(exc):
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


def save_image(picture, path):
    """Write ``picture`` (a Figure or a PIL image) to ``path`` atomically; returns ``path``.

    .png, .jpg and .jpeg for both; .svg for a Figure.
    """
    is_figure = hasattr(picture, "savefig")
    fmt = _check_path(path, svg=is_figure)
    try:
        with atomic_path(path) as tmp:
            if fmt == "SVG":
                with _style():
                    picture.savefig(tmp, format="svg", metadata={"Date": None})
            else:
                img = to_image(picture)
                if fmt == "JPEG" and img.mode not in ("RGB", "L"):
                    img = img.convert("RGB")
                img.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    except OSError as exc:
        raise ExportError(f"cannot write {os.fspath(path)!r}: {_os_reason(exc)}") from None
    return path


def save_summary(info, path):
    """Write the summary graphic of ``info`` to ``path``: .svg, .png, .jpg or .jpeg."""
    check_output_path(path, svg=True)
    return save_image(summary_graphic(info), path)


# -- shared checks -----------------------------------------------------------------------------
def _check_int(value, what, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo \
            or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise InvalidInputError(f"{what} must be an integer {rng}, got {value!r}")
    return int(value)


def _need_decoder(model, what):
    """SubnetNotFoundError unless ``model``'s net has the Reconstruct sub-net ``what`` needs."""
    names = getattr(getattr(model, "net", None), "subnet_names", None) or getattr(model, "subnet_names", ())
    if "Reconstruct" not in tuple(names):
        name = getattr(getattr(model, "card", None), "name", "this model")
        raise SubnetNotFoundError(f"{what} needs the Reconstruct sub-net (a decoder), but {name} has none; its "
                                  f"sub-nets: {', '.join(names)}; use a model trained with a decoder")


def _run(model, images, polarity, batch_size=128, need_reco=True):
    """Encode ``images`` and run the net once: (x numpy (N,28,28), probs, capsules, reconstructions);
    the outputs the entry lacks are None."""
    x = model.encode(images, polarity=polarity)
    if x.shape[0] == 0:
        raise InvalidInputError("no images given (empty batch)")
    outs = dict(zip(model.card.outputs, model.run(x, batch_size=batch_size, need_reco=need_reco)))
    x = x.asnumpy() if hasattr(x, "asnumpy") else np.asarray(x)
    return x[:, 0], outs["probabilities"], outs.get("capsule"), outs.get("reconstruction")


def _class_index(model, label, where):
    classes = list(model.card.classes)
    try:
        if isinstance(label, (np.integer, np.floating)):
            label = label.item()
        return classes.index(label)
    except ValueError:
        raise InvalidInputError(f"{where}: {label!r} is not a class of {model.card.name} "
                                f"({', '.join(map(str, classes))})") from None


def _check_labels(model, labels, n):
    if labels is None:
        return None
    labels = list(labels)
    if len(labels) != n:
        raise InvalidInputError(f"labels: got {len(labels)} labels for {n} images")
    return [_class_index(model, lab, f"label {i}") for i, lab in enumerate(labels)]


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


# -- 1. reconstructions ------------------------------------------------------------------------
_REC_HEAD = ("Left: the input as the net sees it (28 x 28). Right: what the Reconstruct sub-net decodes "
             "from the 16-D capsule of the predicted class.")
_REC_LEGEND = "pred: predicted class (the longest digit capsule)."
_REC_LEGEND_LABELS = " true: the given label; a red caption marks a wrong prediction."


@_drawing
def reconstruction_panel(model, images, *, labels=None, columns=None, scale=3, polarity="auto", note=None,
                         return_images=False):
    """Each input beside its reconstruction, captioned with the predicted class (and true label).

    Parameters
    ----------
    model : CapsNetModel (with a Reconstruct sub-net)
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
    matplotlib Figure, or ``(figure, reconstructions)``.  Its one axes holds an
    image per tile, labelled ``"input i"`` and ``"reconstruction i"``, and a
    caption per pair.
    """
    from ._api import _to_pil

    _need_decoder(model, "a reconstruction panel")
    scale = _check_int(scale, "scale", 1, 16)
    x, probs, _, recos = _run(model, images, polarity)
    n = len(x)
    cols = min(n, 5 if columns is None else _check_int(columns, "columns", 1))
    truth = _check_labels(model, labels, n)
    pred = probs.argmax(axis=1)
    rows = -(-n // cols)
    # gaps in tile pixels, so that every tile lands on whole screen pixels
    inner, gap_x, caption, gap_y = (-(-px // scale) for px in (6, 28, 26, 12))
    pitch_x, pitch_y = 56 + inner + gap_x, 28 + caption + gap_y
    grid_w, grid_h = (cols * pitch_x - gap_x) * scale, (rows * pitch_y - gap_y) * scale
    width = max(grid_w + 2 * _MARGIN, 540)
    head = _wrap(_REC_HEAD, width - 2 * _MARGIN, _SMALL)
    legend = _wrap(_REC_LEGEND + (_REC_LEGEND_LABELS if truth else ""), width - 2 * _MARGIN, _SMALL)
    notes = _wrap(note, width - 2 * _MARGIN, _SMALL)
    top = 14 + _LINE[_TITLE] + 4 + len(head) * _LINE[_SMALL] + 10 + _LINE[_SMALL]
    fig = _figure(width, top + grid_h + 10 + (len(legend) + len(notes)) * _LINE[_SMALL] + 10)
    _text(fig, _MARGIN, 14, f"Reconstructions by {model.card.name}", _TITLE)
    _paragraph(fig, 14 + _LINE[_TITLE] + 4, head)
    ax = _axes(fig, (width - grid_w) // 2, top, grid_w, grid_h)
    ax.set_axis_off()
    classes = model.card.classes
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c * pitch_x, r * pitch_y
        _tile(ax, x[i], x0, y0, f"input {i}")
        _tile(ax, recos[i], x0 + 28 + inner, y0, f"reconstruction {i}")
        wrong = truth is not None and truth[i] != pred[i]
        text = f"pred {classes[pred[i]]}" + (f"  \u00b7  true {classes[truth[i]]}" if truth is not None else "")
        ax.annotate(text, (x0 + 28 + inner / 2, y0 + 28), xytext=(0, -4), textcoords="offset points",
                    ha="center", va="top", fontsize=_TEXT, color=_WRONG if wrong else _INK, gid=f"caption {i}")
    for c in range(cols):
        for dx, what in ((14, "input"), (42 + inner, "reconstruction")):
            ax.annotate(what, (c * pitch_x + dx, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=_SMALL, color=_MUTED)
    ax.set(xlim=(0, grid_w / scale), ylim=(grid_h / scale, 0))
    _paragraph(fig, _paragraph(fig, top + grid_h + 10, legend), notes)
    return (fig, [_to_pil(r) for r in recos]) if return_images else fig


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


_TWEAK_HEAD = ("Each cell decodes the capsule with one dimension shifted: Reconstruct(capsule + offset \u00b7 e_dim). "
               "The framed column (offset 0) is the untweaked reconstruction.")


@_drawing
def tweak_images(model, image, *, dims=None, offsets=DEFAULT_OFFSETS, scale=2, polarity="auto", note=None):
    """Reconstructions of an image's capsule with one dimension tweaked (Hinton's pose grid).

    For each capsule dimension ``d`` in ``dims`` (1-based) and offset ``c`` the cell
    is ``model.reconstruct(v + c * e_d)``, with ``v`` the 16-D capsule of the
    predicted class (``model.features(image)[0]``): Wolfram's
    ``featureVect + c UnitVector[16, d]``.

    Parameters
    ----------
    model : CapsNetModel (with a Reconstruct sub-net)
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
    grid : matplotlib Figure
        Its first axes holds one image per cell (labelled ``"dim d, offset o"``),
        the offsets as x tick labels and the dimensions as y tick labels at the
        cell centres; its second axes shows the input.
    """
    _need_decoder(model, "a pose-tweak grid")
    dims = _check_dims(dims)
    offs = _check_offsets(offsets)
    scale = _check_int(scale, "scale", 1, 16)
    x, probs, caps, _ = _run(model, image, polarity, need_reco=False)
    if len(x) != 1:
        raise InvalidInputError(f"tweak takes one image, got {len(x)}")
    v = caps[0].astype(np.float64)
    eye = np.eye(CAPSULE_DIM)[[d - 1 for d in dims]]                      # (R, 16)
    vecs = v[None, None, :] + offs[None, :, None] * eye[:, None, :]       # (R, C, 16)
    flat = model.reconstruct(vecs.reshape(-1, CAPSULE_DIM))
    base = model.reconstruct(caps[0])  # offset 0: exactly the untweaked capsule's reconstruction
    rows, cols = len(dims), len(offs)
    images = [[base if offs[c] == 0 else flat[r * cols + c] for c in range(cols)] for r in range(rows)]
    pred = model.card.classes[int(probs[0].argmax())]
    return images, _tweak_figure(model.card.name, pred, x[0], images, dims, offs, scale, note)


def _tweak_figure(name, pred, x, images, dims, offs, scale, note):
    rows, cols = len(dims), len(offs)
    gap = -(-8 // scale)
    pitch = 28 + gap
    grid_w, grid_h = (cols * pitch - gap) * scale, (rows * pitch - gap) * scale
    left, tile = _MARGIN + 100, 28 * scale
    width = max(left + grid_w + 30 + max(tile, 60) + _MARGIN, 540)
    head = _wrap(_TWEAK_HEAD, width - 2 * _MARGIN, _SMALL)
    notes = _wrap(note, width - 2 * _MARGIN, _SMALL)
    top = 14 + _LINE[_TITLE] + 4 + len(head) * _LINE[_SMALL] + 52
    body = max(grid_h, 140)
    fig = _figure(width, top + body + 16 + len(notes) * _LINE[_SMALL] + 8)
    _text(fig, _MARGIN, 14, f"Pose tweaks of {name}, predicted class {pred}", _TITLE)
    _paragraph(fig, 14 + _LINE[_TITLE] + 4, head)
    ax = _axes(fig, left, top, grid_w, grid_h)
    for r, d in enumerate(dims):
        for c, o in enumerate(offs):
            _tile(ax, np.asarray(images[r][c]), c * pitch, r * pitch, f"dim {d}, offset {o:g}")
    decimals = _offset_decimals(offs)
    ax.set(xlim=(0, grid_w / scale), ylim=(grid_h / scale, 0),
           xticks=[c * pitch + 14 for c in range(cols)], yticks=[r * pitch + 14 for r in range(rows)])
    ax.set_xticklabels([_offset_label(o, decimals) for o in offs])
    ax.set_yticklabels([f"dim {d}" for d in dims], fontsize=_TEXT)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("offset added to the dimension", color=_MUTED, fontsize=_SMALL, labelpad=6)
    ax.set_ylabel("capsule dimension", color=_MUTED, labelpad=8)
    ax.tick_params(length=0, pad=5)
    for spine in ax.spines.values():
        spine.set_visible(False)
    from matplotlib.patches import Rectangle

    for c in np.flatnonzero(offs == 0):
        ax.get_xticklabels()[c].set_color(_hex(PALETTE[0]))
        ax.add_patch(Rectangle((c * pitch - 1.5, -1.5), 31, rows * pitch - gap + 3, fill=False, lw=2,
                               edgecolor=_hex(PALETTE[0]), clip_on=False, gid="untweaked column"))
    inp = _axes(fig, left + grid_w + 30 + (max(tile, 60) - tile) // 2, top + 20, tile, tile)
    _tile(inp, x, 0, 0, "input")
    inp.set_axis_off()
    inp.set_title("input", color=_MUTED, fontsize=_TEXT, pad=5)
    inp.annotate(f"pred {pred}", (14, 28), xytext=(0, -5), textcoords="offset points", ha="center", va="top")
    _paragraph(fig, top + body + 16, notes)
    return fig


def tweak_grid(model, image, *, dims=None, offsets=DEFAULT_OFFSETS, scale=2, polarity="auto", note=None):
    """The labelled pose-tweak grid of :func:`tweak_images` (one row per dimension, one column per offset)."""
    return tweak_images(model, image, dims=dims, offsets=offsets, scale=scale, polarity=polarity, note=note)[1]


# -- routing ------------------------------------------------------------------------------------
_ROUTING_HEAD = ("Each panel shows the 1152 primary capsules as their 32 types (4 rows of 8 blocks), each type a "
                 "6x6 grid of image positions. Coupling panels: the coefficient c_ij that routes capsule i's vote "
                 "to the predicted class j (a softmax of the agreement logits over the 10 classes, 0.1 everywhere "
                 "before the first agreement; red: raised, blue: lowered). Last panel: c_ij times the length of the vote u_hat(j|i) after "
                 "the last iteration, as a share of the largest (square-root scale): where the class's capsule gets "
                 "its input.")


def capsule_mosaic(values, gap=1):
    """The 1152 primary-capsule values (``i = 36 t + 6 y + x``) as one picture: the 32 types in 4 rows
    of 8 blocks of 6x6 positions, ``gap`` NaN cells between blocks; shape (24 + 3 gap, 48 + 7 gap)."""
    v = np.asarray(values, dtype=np.float64).reshape(4, 8, 6, 6)
    out = np.full((24 + 3 * gap, 48 + 7 * gap), np.nan)
    for r in range(4):
        for c in range(8):
            out[r * (6 + gap):r * (6 + gap) + 6, c * (6 + gap):c * (6 + gap) + 6] = v[r, c]
    return out


def _routing_panels(model, image, polarity):
    """(input (28, 28), predicted class index, coupling to it per iteration (it, 1152), votes (1152,))."""
    x = model.encode(image, polarity=polarity)
    if x.shape[0] != 1:
        raise InvalidInputError(f"a routing picture takes one image, got {x.shape[0]}")
    r = model.routing(x)
    k = int(np.linalg.norm(r["capsules"][0], axis=-1).argmax())
    coupling = r["coupling"][0][:, :, k]
    votes = coupling[-1] * np.linalg.norm(r["predictions"][0][k], axis=-1)
    x = x.asnumpy() if hasattr(x, "asnumpy") else np.asarray(x)
    return x[0, 0], k, coupling, votes / max(float(votes.max()), 1e-12)


@_drawing
def routing_figure(model, image, *, polarity="auto", scale=5):
    """What routing by agreement does for one digit: per iteration, the coupling coefficients of the
    1152 primary capsules to the predicted class (:func:`capsule_mosaic` layout), and the share of the
    class's input each capsule sends after the last one.  A matplotlib Figure; its axes are labelled
    ``"iteration t"`` and ``"votes"``."""
    if model.card.arch != "capsnet":
        raise InvalidInputError(f"{model.card.name} is not a capsule network: a routing picture needs routing "
                                f"between capsules (its sub-nets: {', '.join(model.card.subnets)})")
    scale = _check_int(scale, "scale", 2, 16)
    x, k, coupling, votes = _routing_panels(model, image, polarity)
    iters = len(coupling)
    mh, mw = capsule_mosaic(votes).shape
    pw, ph, tile = mw * scale, mh * scale, 28 * 3
    left = _MARGIN + tile + 30
    xs = [left + t * (pw + 24) + (50 if t == iters else 0) for t in range(iters + 1)]   # room for a colour bar
    width = xs[-1] + pw + 60
    head = _wrap(_ROUTING_HEAD, width - 2 * _MARGIN, _SMALL)
    top = 14 + _LINE[_TITLE] + 4 + len(head) * _LINE[_SMALL] + 30
    fig = _figure(width, top + max(ph, tile) + 20)
    pred = model.card.classes[k]
    _text(fig, _MARGIN, 14, f"Routing in {model.card.name} ({iters} iteration{'s' * (iters > 1)}), "
                            f"predicted class {pred}", _TITLE)
    _paragraph(fig, 14 + _LINE[_TITLE] + 4, head)
    inp = _axes(fig, _MARGIN, top, tile, tile)
    _tile(inp, x, 0, 0, "input")
    inp.set_axis_off()
    inp.set_title("input", color=_MUTED, fontsize=_TEXT, pad=5)
    from matplotlib.colors import PowerNorm, TwoSlopeNorm

    # coupling: white at the uniform 0.1, red where routing raised it, blue where it lowered it
    cnorm = TwoSlopeNorm(vcenter=0.1, vmin=0.0, vmax=max(float(coupling.max()), 0.2))
    for t in range(iters + 1):
        ax = _axes(fig, xs[t], top, pw, ph)
        last = t == iters
        im = ax.imshow(capsule_mosaic(votes if last else coupling[t]), cmap="Purples" if last else "RdBu_r",
                       norm=PowerNorm(0.5, vmin=0, vmax=1) if last else cnorm, interpolation="nearest",
                       label="votes" if last else f"iteration {t + 1}")
        ax.set_axis_off()
        title = ("votes after the last iteration" if last else
                 f"iteration {t + 1}: largest c {coupling[t].max():.2f}")
        ax.set_title(title, color=_MUTED, fontsize=_SMALL, pad=4)
        if t in (iters - 1, iters):
            cax = _axes(fig, xs[t] + pw + 4, top, 8, ph)
            fig.colorbar(im, cax=cax)
            cax.tick_params(labelsize=7)
    return fig


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


def _check_size(size):
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InvalidInputError(f"size must be (width, height), got {size!r}") from None
    if width < 500 or height < 400 or width > 8000 or height > 8000:
        raise InvalidInputError(f"size must be at least 500 x 400 and at most 8000 x 8000, got {size!r}")
    return width, height


@_drawing
def feature_space_plot(model, images, labels=None, *, method="pca", seed=0, size=(1000, 760), thumb=24,
                       polarity="auto", note=None, batch_size=128):
    """Wolfram's FeatureSpacePlot: images placed by a 2-D projection of their 16-D capsules.

    Each image's thumbnail (its ink in the class colour, transparent elsewhere)
    is drawn centred on its point (an AnnotationBbox per image, in a seeded
    order, so no class always lies on top); the colour is the true label when
    ``labels`` is given, else the predicted class.

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
        Picture size in pixels.
    thumb : int
        Thumbnail side in px.

    Returns
    -------
    matplotlib Figure; its first axes is the plot, with a legend of the ten classes.
    """
    if method != "pca":
        raise InvalidInputError(f"unknown projection method {method!r}; use 'pca'")
    seed = _check_int(seed, "seed", 0)
    thumb = _check_int(thumb, "thumb", 8, 56)
    width, height = _check_size(size)
    x, probs, caps, _ = _run(model, images, polarity, batch_size, need_reco=False)
    n = len(x)
    if n < 2:
        raise InvalidInputError(f"a feature-space plot needs at least 2 images, got {n}")
    truth = _check_labels(model, labels, n)
    cls = truth if truth is not None else [int(i) for i in probs.argmax(axis=1)]
    feats = caps if caps is not None else model.features(x[:, None], batch_size=batch_size)
    coords, ratio = project_features(feats, method)

    fig = _figure(width, height)
    last = model.card.feature_slice[1]
    what = f"{feats.shape[1]}-D capsule" if caps is not None else f"{feats.shape[1]}-D {last}"
    _text(fig, _MARGIN, 14, f"Feature space of {model.card.name}: PCA of {what} features", _TITLE)
    sub = (f"{n} images, each drawn at the first two principal components of its " + (
           "Pick capsule (the 16-D capsule of the predicted class)" if caps is not None else
           f"{last} output (the feature extractor {model.card.feature_slice[0]} -> {last})")
           + f"; colour: {'true label' if truth else 'predicted class'}.")
    _paragraph(fig, 14 + _LINE[_TITLE] + 4, _wrap(sub, width - 2 * _MARGIN, _SMALL)[:2])
    box = (95, 90, width - 95 - 170, height - 90 - 70 - (_LINE[_SMALL] if note else 0))
    ax = _axes(fig, *box)
    _place_thumbnails(ax, x, coords, cls, np.random.RandomState(seed).permutation(n), thumb, box[2:])
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f} % var)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f} % var)")
    ax.grid(True, color=_GRID, lw=0.8)
    ax.set_axisbelow(True)
    from matplotlib.patches import Patch

    counts = np.bincount(np.asarray(cls, dtype=np.int64), minlength=10)
    names = list(model.card.classes) + list(range(len(model.card.classes), 10))
    handles = [Patch(color=_hex(PALETTE[k]), label=f"{names[k]}  ({counts[k]})") for k in range(10)]
    ax.legend(handles=handles, title=f"{'true label' if truth else 'predicted class'} (count)", loc="upper left",
              bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=_TEXT, handlelength=1.2, handleheight=1.2,
              alignment="left")
    if note:
        _text(fig, _MARGIN, height - 8 - _LINE[_SMALL], note, _SMALL, _MUTED)
    return fig


def _place_thumbnails(ax, x, coords, cls, order, thumb, box_px):
    """Each digit's ink, in its class colour, as a ``thumb`` px image centred on its point, in ``order``."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, np.maximum(np.abs(lo), 1e-12) * 2)
    mid = (lo + hi) / 2
    pad = (thumb / 2 + 6) * span / (np.asarray(box_px, dtype=np.float64) - thumb - 12)
    ax.set(xlim=(mid[0] - span[0] / 2 - pad[0], mid[0] + span[0] / 2 + pad[0]),
           ylim=(mid[1] - span[1] / 2 - pad[1], mid[1] + span[1] / 2 + pad[1]))
    for z, i in enumerate(order):
        rgba = np.empty((28, 28, 4), dtype=np.float32)
        rgba[..., :3] = np.asarray(PALETTE[cls[i] % len(PALETTE)]) / 255.0
        rgba[..., 3] = np.clip(x[i], 0.0, 1.0)
        ab = AnnotationBbox(OffsetImage(rgba, zoom=thumb / 28, dpi_cor=False, interpolation="bilinear"),
                            tuple(coords[i]), frameon=False, pad=0.0, zorder=2 + z * 1e-6, gid=f"image {i}")
        ax.add_artist(ab)


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
_BOX_FILL, _BOX_EDGE = "#ecf3fa", "#466ea0"


def _shape(shape):
    return " x ".join(str(int(d)) for d in shape) if shape else "?"


def _summary_boxes(info):
    """(boxes: (name, parameters, shape line, description), outputs: {name: text}) of the summary."""
    from ._slices import STAGE_SHAPES

    subnets = [(str(n), tuple(s), int(p)) for n, s, p in info.subnets]
    names = [n for n, _, _ in subnets]
    whole = bool(names) and names[0] == "ReLUConv1"   # the net from its input image
    in_shape = STAGE_SHAPES["input"] if whole else None
    boxes = [("Input", "", f"image {_shape(in_shape)}" if whole else "input",
              "float32 in [0, 1], light ink on dark" if whole else "")]
    boxes += [(n, f"{p:,} parameters", f"output {_shape(s)}", _DESCRIPTIONS.get(n, "")) for n, s, p in subnets]
    outputs = {k: v for k, v in _OUTPUTS.items() if k in names} if whole else {}
    if subnets and names[-1] not in outputs:
        outputs[names[-1]] = f"output ({_shape(subnets[-1][1])})"
    return boxes, outputs


@_drawing
def summary_graphic(info):
    """NetInformation's "SummaryGraphic": the sub-nets in order as boxes with arrows (a Figure).

    Each box (a FancyBboxPatch with gid ``"box <name>"``) shows the sub-net's
    name, parameter count, output shape and what it does; arrows on the right
    name the net's outputs; the header gives layers, parameter count and trained
    size.  ``info`` is a :class:`~capszoo.NetInfo` (``model.info()``).
    """
    from matplotlib.patches import FancyBboxPatch

    boxes, outputs = _summary_boxes(info)
    tw = _measurer()

    header = (f"Number of layers: {info.num_layers} | Parameter count: {info.num_params:,} | "
              f"Trained size: {info.trained_size_mb:.0f} MB")
    pad, box_h, step = 12, 78, 106
    box_w = math.ceil(max([tw(a, 12) + 24 + tw(b, _TEXT) for a, b, _, _ in boxes]
                          + [tw(d, _SMALL) for _, _, _, d in boxes] + [300]) + 2 * pad)
    out_w = max([tw(t, _TEXT) for t in outputs.values()] + [0])
    width = math.ceil(max(_MARGIN + box_w + 42 + out_w, _MARGIN + tw(header, _TEXT)) + _MARGIN)
    top = 14 + _LINE[_TITLE] + 4 + _LINE[_TEXT] + 16
    height = top + len(boxes) * step - (step - box_h) + _MARGIN
    fig = _figure(width, height)
    _text(fig, _MARGIN, 14, info.name or "net", _TITLE)
    _text(fig, _MARGIN, 14 + _LINE[_TITLE] + 4, header)
    ax = _axes(fig, 0, 0, width, height)
    ax.set(xlim=(0, width), ylim=(height, 0))
    ax.set_axis_off()
    arrow = dict(arrowstyle="-|>", color=_INK, lw=1.6, mutation_scale=14, shrinkA=0, shrinkB=0)
    x0, cx = _MARGIN, _MARGIN + box_w / 2
    for i, (name, params, shape, desc) in enumerate(boxes):
        y = top + i * step
        ax.add_patch(FancyBboxPatch((x0, y), box_w, box_h, boxstyle="round,pad=0,rounding_size=6", lw=1.6,
                                    facecolor="#f5f5f5" if i == 0 else _BOX_FILL, edgecolor=_BOX_EDGE,
                                    gid=f"box {name}"))
        ax.text(x0 + pad, y + pad, name, fontsize=12, va="top")
        ax.text(x0 + box_w - pad, y + pad + 2, params, fontsize=_TEXT, color=_MUTED, va="top", ha="right")
        ax.text(x0 + pad, y + pad + 24, shape, fontsize=_TEXT, va="top")
        ax.text(x0 + pad, y + pad + 46, desc, fontsize=_SMALL, color=_MUTED, va="top")
        if i:
            ax.annotate("", (cx, y), (cx, y - (step - box_h)), arrowprops=arrow)
        if name in outputs and i:
            ax.annotate("", (x0 + box_w + 36, y + box_h / 2), (x0 + box_w, y + box_h / 2), arrowprops=arrow)
            ax.text(x0 + box_w + 42, y + box_h / 2, outputs[name], fontsize=_TEXT, va="center")
    return fig


# -- 5. training curve -------------------------------------------------------------------------
_VAL, _TRAIN, _BEST, _CLASS_LOSS, _RECO_LOSS, _VAL_RAW = (_hex(PALETTE[i]) for i in (0, 1, 2, 3, 4, 9))
_REQUIRED = ("epoch", "train_accuracy", "val_accuracy")


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


def _parse_epoch(where, row, previous):
    """One checked epoch of the log: (epoch, {key: value}) with the error rates in percent."""
    if not isinstance(row, dict):
        raise InvalidInputError(f"{where}: expected a JSON object (one epoch), got {type(row).__name__}")
    for key in _REQUIRED:
        if key not in row:
            raise InvalidInputError(f"{where}: missing key {key!r} (each epoch needs {', '.join(_REQUIRED)} "
                                    f"and train_loss or train_class_loss + train_reco_loss)")
    e = row["epoch"]
    if isinstance(e, bool) or not isinstance(e, (int, np.integer, float)) or \
            (isinstance(e, float) and not e.is_integer()) or e < 0:
        raise InvalidInputError(f"{where}: epoch must be an integer >= 0, got {e!r}")
    e = int(e)
    if previous is not None and e <= previous:
        raise InvalidInputError(f"{where}: epoch {e} comes after epoch {previous}; epochs must increase line by line")
    out = {}
    for key in ("train_accuracy", "val_accuracy") + (("val_accuracy_raw",) if "val_accuracy_raw" in row else ()):
        a = _number(row, key, where)
        if not 0.0 <= a <= 1.0:
            raise InvalidInputError(f"{where}: {key} must be a fraction in [0, 1], got {a!r}")
        out[{"train_accuracy": "train_err", "val_accuracy": "val_err"}.get(key, "val_raw_err")] = \
            max(100.0 - 100.0 * a, 0.0)
    parts = [k for k in ("train_class_loss", "train_reco_loss") if k in row]
    if "train_loss" not in row and len(parts) < 2:
        missing = "train_loss" if not parts else ({"train_class_loss", "train_reco_loss"} - set(parts)).pop()
        raise InvalidInputError(f"{where}: missing key {missing!r} (give train_loss or both "
                                f"train_class_loss and train_reco_loss)")
    for key in ("train_loss", "train_class_loss", "train_reco_loss"):
        if key in row:
            out[key] = _number(row, key, where)
            if out[key] < 0:
                raise InvalidInputError(f"{where}: {key} must be >= 0, got {out[key]!r}")
    if "train_loss" not in out:
        out["train_loss"] = out["train_class_loss"] + out["train_reco_loss"]
    ve = row.get("val_errors")
    out["val_errors"] = int(ve) if isinstance(ve, (int, np.integer)) and not isinstance(ve, bool) else None
    return e, out


def _parse_metrics(metrics):
    """The checked per-epoch log: ``{"epoch": [...], "val_err": [...], ...}`` (None where an epoch lacks a
    value; the optional series are None when no epoch has them), plus ``best``, the index of the first
    epoch with the lowest validation error."""
    epochs, rows = [], []
    for where, row in _metrics_rows(metrics):
        e, values = _parse_epoch(where, row, epochs[-1] if epochs else None)
        epochs.append(e)
        rows.append(values)
    m = {"epoch": epochs}
    for key in ("val_err", "train_err", "train_loss", "val_raw_err", "train_class_loss", "train_reco_loss",
                "val_errors"):
        m[key] = [r.get(key) for r in rows]
    m["val_raw_err"] = m["val_raw_err"] if any(v is not None for v in m["val_raw_err"]) else None
    if any(r.get("train_class_loss") is None or r.get("train_reco_loss") is None for r in rows):
        m["train_class_loss"] = m["train_reco_loss"] = None
    m["best"] = min(range(len(epochs)), key=lambda i: (m["val_err"][i], i))
    return m


def _pct(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _series(values):
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


@_drawing
def training_curve(metrics, path=None, *, title=None):
    """Training curves of a run: error rates (left axes) and training loss (right axes) per epoch.

    The left axes shows the validation error, ``100 - 100 * val_accuracy``,
    and the training error, ``100 - 100 * train_accuracy``, in percent (and,
    as a thin line over the epochs that have it, the validation error of the
    raw weights, ``val_accuracy_raw``, logged when validation uses a moving
    average of the weights), on a log axis when both are positive and span
    more than a factor of 3 (else a linear axis from 0).  The right axes shows
    the training loss: the total and, when every epoch has them, its two parts
    (margin/class loss and reconstruction loss).  The epoch with the lowest
    validation error (the first of equals) is marked in both with a green
    dashed line, and its value with a green ring.  Each line's label is its
    legend text.

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
    matplotlib Figure (1100 x 500 px)

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
    epochs, b = m["epoch"], m["best"]
    fig = _figure(1100, 500)
    _text(fig, _MARGIN, 14, title or "Training curve", _TITLE)
    best = f"{_pct(m['val_err'][b])} %" + (f" ({m['val_errors'][b]:,} errors)" if m["val_errors"][b] is not None
                                           else "")
    _text(fig, _MARGIN, 14 + _LINE[_TITLE] + 4, f"{len(epochs)} epoch{'s' if len(epochs) != 1 else ''} "
          f"({epochs[0]}..{epochs[-1]}); lowest validation error {best} at epoch {epochs[b]}; last: "
          f"{_pct(m['val_err'][-1])} %.", _SMALL, _MUTED)
    err_ax, loss_ax = fig.subplots(1, 2, gridspec_kw=dict(left=0.075, right=0.985, top=0.8, bottom=0.26,
                                                          wspace=0.17))
    _error_axes(err_ax, m)
    series = [("total", _INK, m["train_loss"])]
    if m["train_class_loss"] is not None:
        series += [("margin (class)", _CLASS_LOSS, m["train_class_loss"]),
                   ("reconstruction", _RECO_LOSS, m["train_reco_loss"])]
    _curves(loss_ax, epochs, series)
    loss_ax.set_ylim(bottom=0)
    loss_ax.set_title("Training loss", loc="left")
    loss_ax.set_ylabel("loss")
    for ax in (err_ax, loss_ax):
        ax.axvline(epochs[b], color=_BEST, ls=(0, (5, 3)), lw=1.6, zorder=1, gid="best epoch")
        ax.set_xlabel("epoch")
        ax.grid(True, axis="y", color=_GRID, lw=0.8)
        ax.set_axisbelow(True)
        entries = len(ax.get_legend_handles_labels()[1])
        ax.legend(loc="upper left", bbox_to_anchor=(-0.02, -0.14), ncol=2 if entries > 3 else entries,
                  frameon=False, handlelength=1.8, columnspacing=1.6)
        span = max(epochs[-1] - epochs[0], 2)
        ax.set_xlim(epochs[0] - 0.04 * span, epochs[-1] + 0.04 * span)
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    if path is not None:
        save_image(fig, path)
    return fig


def _curves(ax, epochs, series):
    """One line per (label, colour, values), with dots for up to 60 epochs; None values break a line."""
    marker = "o" if len(epochs) <= 60 else None
    for label, colour, values in series:
        thin = label.endswith("raw weights")
        ax.plot(epochs, _series(values), color=colour, lw=1.0 if thin else 1.8, marker=marker,
                ms=3.0 if thin else 4.0, label=label, zorder=2 if thin else 3)


def _error_axes(ax, m):
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    epochs, b, raw = m["epoch"], m["best"], m["val_raw_err"]
    errs = [v for v in m["val_err"] + m["train_err"] + (raw or []) if v is not None]
    lo, hi = min(errs), max(errs)
    log = lo > 0 and hi / lo > 3
    series = [("validation", _VAL, m["val_err"]), ("training", _TRAIN, m["train_err"])]
    _curves(ax, epochs, series + ([("validation, raw weights", _VAL_RAW, raw)] if raw else []))
    ax.plot([epochs[b]], [m["val_err"][b]], "o", ms=12, mfc="none", mec=_BEST, mew=2, zorder=4,
            label=f"best (epoch {epochs[b]})" if raw else f"best validation (epoch {epochs[b]})")
    if log:
        ax.set_yscale("log")
        decades = math.log10(hi / lo)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5) if decades <= 3 else (1,)))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylim(lo / 1.5, hi * 1.5)
    else:
        ax.set_ylim(bottom=0, top=hi * 1.08 if hi > 0 else 1.0)
    ax.set_title(f"Error rate (%, {'log' if log else 'linear'} scale)", loc="left")
    ax.set_ylabel("error (%)")
