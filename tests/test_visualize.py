"""Pictures: reconstruction panel, pose-tweak grid, feature-space plot, summary graphic, training curve, CLI.

The drawing functions return matplotlib Figures, so these tests read what a
picture shows from its artists: the images in a panel equal the model's own
inputs and reconstructions, the thumbnails sit at the PCA coordinates in the
class colours, a curve's data equals the log's, ticks and legends say what
they should.  The rendered pixels are checked where it matters (a tile on
screen is its image enlarged), and files are written atomically and
byte-for-byte deterministically.  One test checks real reconstructions and
runs only when trained weights are available.
"""
import json
import os
import sys
import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import capszoo
from capszoo import _visualize as vis
from capszoo.cli import main
from capszoo.errors import CapszooError, ExportError, InvalidInputError, SubnetNotFoundError

SUBNETS = ("ReLUConv1", "PrimaryCaps", "PrimaryPredVects", "DigitCaps", "Pick", "Reconstruct")
SVG = "{http://www.w3.org/2000/svg}"


def _as_uint8(x):
    return np.clip(np.asarray(x) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _images(ax):
    """The axes' images by label."""
    return {im.get_label(): im for im in ax.images}


def _on_screen_error(fig, ax, im, scale):
    """Largest difference between the rendered pixels at image ``im``'s extent and ``im`` enlarged ``scale``
    times (nearest neighbour)."""
    expected = np.kron(np.asarray(im.get_array(), dtype=np.int64), np.ones((scale, scale), dtype=np.int64))
    return int(np.abs(_on_screen(fig, ax, im).astype(np.int64) - expected).max())


def _on_screen(fig, ax, im):
    """The rendered pixels of image ``im`` (grey channel), cut at its extent."""
    x0, x1, y1, y0 = im.get_extent()
    (px0, py0), (px1, py1) = ax.transData.transform([(x0, y0), (x1, y1)])
    h = vis.pixel_size(fig)[1]
    rgb = np.asarray(vis.to_image(fig))
    box = rgb[int(round(h - py0)):int(round(h - py1)), int(round(px0)):int(round(px1))]
    assert (box[..., 0] == box[..., 1]).all() and (box[..., 1] == box[..., 2]).all()
    return box[..., 0]


# -- reconstruction panel ----------------------------------------------------------------------
def test_reconstruction_panel_shows_inputs_and_reconstructions(seeded_model, mnist_test):
    images, labels = mnist_test
    n = 7
    fig, recos = vis.reconstruction_panel(seeded_model, list(images[:n]), labels=labels[:n], columns=3,
                                          return_images=True)
    expected = seeded_model(list(images[:n]), prop="Reconstruction")
    inputs = seeded_model.encode(list(images[:n]))[:, 0]
    pred = seeded_model(list(images[:n]))
    (ax,) = fig.axes
    shown = _images(ax)
    assert len(shown) == 2 * n
    tops = sorted({shown[f"input {i}"].get_extent()[3] for i in range(n)})
    assert len(tops) == 3  # 7 pairs in rows of 3
    for i in range(n):
        inp, rec = shown[f"input {i}"], shown[f"reconstruction {i}"]
        assert np.array_equal(np.asarray(recos[i]), np.asarray(expected[i]))
        assert np.array_equal(rec.get_array(), np.asarray(expected[i]))
        assert np.array_equal(inp.get_array(), _as_uint8(inputs[i]))
        (ix0, ix1, iy1, iy0), (rx0, _, ry1, ry0) = inp.get_extent(), rec.get_extent()
        assert ix1 < rx0 and (iy0, iy1) == (ry0, ry1)              # beside it, on the same row
        assert iy0 == tops[i // 3] and ix0 == shown[f"input {i % 3}"].get_extent()[0]
    # on screen, each tile is its image enlarged 3 times, at its place (grey levels within the colour map's rounding)
    for name in ("input 0", "reconstruction 4"):
        assert _on_screen_error(fig, ax, shown[name], 3) <= 1
    # captions: the predicted and the true class; red exactly under the wrong predictions
    captions = {t.get_gid(): t for t in ax.texts if (t.get_gid() or "").startswith("caption")}
    assert len(captions) == n
    for i in range(n):
        t = captions[f"caption {i}"]
        assert t.get_text() == f"pred {pred[i]}  \u00b7  true {labels[i]}"
        assert (t.get_color() == vis._WRONG) == (pred[i] != labels[i])
    assert vis.pixel_size(fig) == vis.to_image(fig).size
    plain = vis.reconstruction_panel(seeded_model, list(images[:n]), labels=labels[:n], columns=3)
    assert np.array_equal(np.asarray(vis.to_image(plain)), np.asarray(vis.to_image(fig)))


def test_reconstruction_panel_size_follows_rows_and_columns(seeded_model, mnist_test):
    images, _ = mnist_test
    w3, h1 = vis.pixel_size(vis.reconstruction_panel(seeded_model, list(images[:3]), columns=3))
    w4, _ = vis.pixel_size(vis.reconstruction_panel(seeded_model, list(images[:4]), columns=4))
    _, h2 = vis.pixel_size(vis.reconstruction_panel(seeded_model, list(images[:6]), columns=3))
    assert w4 - w3 == (2 * 28 + 2 + 10) * 3   # one more pair: two tiles, the inner gap and the gap between pairs
    assert h2 - h1 == (28 + 9 + 4) * 3        # one more row: tiles, caption and gap
    one = vis.reconstruction_panel(seeded_model, images[0], scale=5)
    assert vis.pixel_size(one)[0] == 540 and len(one.axes[0].images) == 2
    assert one.axes[0].transData.transform([(28, 0)])[0][0] - one.axes[0].transData.transform([(0, 0)])[0][0] == \
        pytest.approx(140)


def test_reconstruction_panel_bad_arguments(seeded_model, mnist_test):
    images, _ = mnist_test
    with pytest.raises(InvalidInputError, match="2 labels for 3 images"):
        vis.reconstruction_panel(seeded_model, list(images[:3]), labels=[1, 2])
    with pytest.raises(InvalidInputError, match="12 is not a class"):
        vis.reconstruction_panel(seeded_model, list(images[:2]), labels=[1, 12])
    with pytest.raises(InvalidInputError, match="scale must be an integer in 1..16"):
        vis.reconstruction_panel(seeded_model, list(images[:2]), scale=0)


def test_pictures_that_need_a_decoder_name_what_the_model_has(mnist_test):
    """A net without the Reconstruct sub-net (decoder "none") cannot draw reconstructions or tweaks."""
    net = types.SimpleNamespace(subnet_names=SUBNETS[:-1])
    model = types.SimpleNamespace(net=net, card=types.SimpleNamespace(name="capsnet-mnist-noreco"))
    for draw in (vis.reconstruction_panel, vis.tweak_images):
        with pytest.raises(SubnetNotFoundError, match=r"needs the Reconstruct sub-net \(a decoder\), but "
                                                      r"capsnet-mnist-noreco has none; its sub-nets: ReLUConv1, "
                                                      r"PrimaryCaps, PrimaryPredVects, DigitCaps, Pick"):
            draw(model, mnist_test[0][0])


# -- pose tweaks -------------------------------------------------------------------------------
def test_default_offsets_are_the_keras_grid():
    o = vis.DEFAULT_OFFSETS
    assert len(o) == 11 and o[0] == -0.25 and o[-1] == 0.25 and o[5] == 0.0
    assert np.allclose(np.diff(o), 0.05)
    d = vis._offset_decimals(o)
    assert [vis._offset_label(v, d) for v in o[[0, 5, 10]]] == ["-0.25", "0.00", "+0.25"]


def test_tweak_grid_cells_ticks_and_the_untweaked_column(seeded_model, mnist_test):
    images, _ = mnist_test
    img = images[0]
    dims = [11, 14, 16]
    cells, fig = vis.tweak_images(seeded_model, img, dims=dims)
    assert len(cells) == 3 and all(len(row) == 11 for row in cells)
    assert all(c.size == (28, 28) and c.mode == "L" for row in cells for c in row)
    grid, inp = fig.axes
    feature = seeded_model.features(img)[0]
    base = seeded_model.reconstruct(feature)
    full = seeded_model(img, prop="Reconstruction")
    assert np.abs(np.asarray(base, int) - np.asarray(full, int)).max() <= 1
    # one image per cell, under its offset's tick and beside its dimension's tick
    xt, yt = grid.get_xticks(), grid.get_yticks()
    assert [t.get_text() for t in grid.get_xticklabels()] == \
        ["-0.25", "-0.20", "-0.15", "-0.10", "-0.05", "0.00", "+0.05", "+0.10", "+0.15", "+0.20", "+0.25"]
    assert [t.get_text() for t in grid.get_yticklabels()] == ["dim 11", "dim 14", "dim 16"]
    shown = _images(grid)
    assert len(shown) == 33
    for r, d in enumerate(dims):
        assert np.array_equal(np.asarray(cells[r][5]), np.asarray(base))  # offset 0, pixel for pixel
        for c, o in enumerate(vis.DEFAULT_OFFSETS):
            im = shown[f"dim {d}, offset {o:g}"]
            x0, x1, y1, y0 = im.get_extent()
            assert ((x0 + x1) / 2, (y0 + y1) / 2) == (xt[c], yt[r])
            assert np.array_equal(im.get_array(), np.asarray(cells[r][c]))
    assert _on_screen_error(fig, grid, shown["dim 14, offset -0.25"], 2) <= 1
    # a tweaked cell is the reconstruction of capsule + offset * e_dim
    v = feature.astype(np.float64).copy()
    v[14 - 1] += -0.25
    assert np.abs(np.asarray(cells[1][0], int) - np.asarray(seeded_model.reconstruct(v), int)).max() <= 1
    # the offset-0 column is framed and its label coloured; the input is shown beside the grid
    (frame,) = [p for p in grid.patches if p.get_gid() == "untweaked column"]
    assert frame.get_x() < xt[5] - 14 and frame.get_x() + frame.get_width() > xt[5] + 14
    assert frame.get_height() > yt[-1] - yt[0] + 28
    assert grid.get_xticklabels()[5].get_color() == vis._hex(vis.PALETTE[0])
    x = seeded_model.encode(img)[0, 0]
    assert np.array_equal(_images(inp)["input"].get_array(), _as_uint8(x))
    assert f"predicted class {seeded_model(img)}" in " ".join(t.get_text() for t in fig.texts)


def test_tweak_grid_default_is_16_by_11_and_sizes_follow(seeded_model, mnist_test):
    images, _ = mnist_test
    fig = vis.tweak_grid(seeded_model, images[1], scale=1)
    assert len(fig.axes[0].images) == 16 * 11
    sizes = {k: vis.pixel_size(vis.tweak_grid(seeded_model, images[1], dims=list(range(1, k[0] + 1)),
                                              offsets=np.linspace(-0.2, 0.2, k[1])))
             for k in ((8, 11), (9, 11), (9, 12))}
    assert sizes[(9, 11)][1] - sizes[(8, 11)][1] == 2 * (28 + 4)   # a row: tile and gap, twice enlarged
    assert sizes[(9, 12)][0] - sizes[(9, 11)][0] == 2 * (28 + 4)
    cells, _ = vis.tweak_images(seeded_model, images[1], dims="all", offsets=[-0.1, 0.1])
    assert len(cells) == 16 and len(cells[0]) == 2


def test_parse_dims_and_range():
    assert vis.parse_dims("11,14,16") == [11, 14, 16]
    assert vis.parse_dims(" all ") == list(range(1, 17))
    assert vis.parse_dims("1, 16") == [1, 16]
    assert np.allclose(vis.parse_range("-0.25:0.25:0.05"), vis.DEFAULT_OFFSETS)
    assert vis.parse_range("-0.25:0.25:0.05")[5] == 0.0
    assert list(vis.parse_range("0:1:0.5")) == [0.0, 0.5, 1.0]
    assert list(vis.parse_range("0.1:0.1")) == [0.1]
    assert len(vis.parse_range("-0.2:0.2")) == 9
    for bad, msg in [("0", "1..16"), ("17", "1..16"), ("", "empty"), ("a", "not an integer"),
                     ("1,,2", "not an integer"), ("3,3", "twice"), ("-1", "1..16")]:
        with pytest.raises(InvalidInputError, match=msg):
            vis.parse_dims(bad)
    for bad, msg in [("0.25:-0.25:0.05", "reversed"), ("0:1:0", "step must be positive"),
                     ("0:1:-0.1", "step must be positive"), ("a:b:c", "cannot parse"), ("1", "cannot parse"),
                     ("0:100:0.01", "at most 41"), ("nan:1:0.1", "non-finite"), ("", "cannot parse")]:
        with pytest.raises(InvalidInputError, match=msg):
            vis.parse_range(bad)


def test_tweak_images_bad_arguments(seeded_model, mnist_test):
    images, _ = mnist_test
    for dims in ([0], [17], [], [2.5], [True]):
        with pytest.raises(InvalidInputError):
            vis.tweak_images(seeded_model, images[0], dims=dims)
    for offsets in ([], [np.nan], np.zeros((2, 2)), np.zeros(42)):
        with pytest.raises(InvalidInputError):
            vis.tweak_images(seeded_model, images[0], offsets=offsets)
    with pytest.raises(InvalidInputError, match="one image"):
        vis.tweak_images(seeded_model, images[:2])


# -- feature space -----------------------------------------------------------------------------
def test_project_features_is_pca():
    rng = np.random.RandomState(0)
    f = rng.randn(200, 16) @ np.diag(np.linspace(3, 0.1, 16))
    coords, ratio = vis.project_features(f)
    assert coords.shape == (200, 2) and ratio[0] >= ratio[1] > 0 and ratio.sum() < 1
    assert abs(np.corrcoef(coords.T)[0, 1]) < 1e-8
    w, v = np.linalg.eigh(np.cov((f - f.mean(0)).T))
    top = v[:, ::-1][:, :2]
    assert np.allclose(np.abs(coords), np.abs((f - f.mean(0)) @ top))
    assert np.allclose(ratio, w[::-1][:2] / w.sum())
    assert np.array_equal(vis.project_features(f)[0], coords)
    with pytest.raises(InvalidInputError, match="at least 2"):
        vis.project_features(f[:1])
    with pytest.raises(InvalidInputError, match="unknown projection"):
        vis.project_features(f, "tsne")


def test_feature_plot_places_each_digit_at_its_capsule_projection(seeded_model, mnist_test, tmp_path):
    from matplotlib.offsetbox import AnnotationBbox

    images, labels = mnist_test
    n = 60
    fig = vis.feature_space_plot(seeded_model, images[:n], labels[:n], seed=0)
    assert vis.pixel_size(fig) == (1000, 760)
    ax = fig.axes[0]
    coords, ratio = vis.project_features(seeded_model.features(images[:n]))
    boxes = {a.get_gid(): a for a in ax.get_children() if isinstance(a, AnnotationBbox)}
    assert len(boxes) == n
    x = seeded_model.encode(images[:n])[:, 0]
    for i in range(n):
        ab = boxes[f"image {i}"]
        assert np.allclose(ab.xy, coords[i], atol=1e-5)
        rgba = ab.offsetbox.get_data()
        assert np.allclose(rgba[..., :3], np.array(vis.PALETTE[labels[i]]) / 255.0)   # the true label's colour
        assert np.allclose(rgba[..., 3], x[i])                                           # its ink, as opacity
        assert ab.offsetbox.get_zoom() * 28 == pytest.approx(24)
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    assert xlim[0] < coords[:, 0].min() and coords[:, 0].max() < xlim[1]
    assert ylim[0] < coords[:, 1].min() and coords[:, 1].max() < ylim[1]
    assert ax.get_xlabel() == f"PC1 ({100 * ratio[0]:.1f} % var)"
    assert ax.get_ylabel() == f"PC2 ({100 * ratio[1]:.1f} % var)"
    legend = ax.get_legend()
    counts = np.bincount(labels[:n], minlength=10)
    assert [t.get_text() for t in legend.get_texts()] == [f"{k}  ({counts[k]})" for k in range(10)]
    assert [vis._hex(np.round(np.array(h.get_facecolor()[:3]) * 255).astype(int)) for h in legend.legend_handles] \
        == [vis._hex(c) for c in vis.PALETTE]
    assert legend.get_title().get_text() == "true label (count)"
    # the rendered picture has every present class's colour; the seed decides which digit lies on top
    px = np.asarray(vis.to_image(fig)).astype(int)
    for k in set(labels[:n]):
        assert (np.abs(px - np.array(vis.PALETTE[k])).sum(axis=2) < 25).sum() > 20, k
    a, b, c = (tmp_path / f"{name}.png" for name in "abc")
    vis.save_image(fig, a)
    vis.save_image(vis.feature_space_plot(seeded_model, images[:n], labels[:n], seed=0), b)
    vis.save_image(vis.feature_space_plot(seeded_model, images[:n], labels[:n], seed=1), c)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    # without labels, the colour is the predicted class
    fig = vis.feature_space_plot(seeded_model, images[:n], seed=0)
    pred = seeded_model(list(images[:n]))
    ab = next(a for a in fig.axes[0].get_children() if isinstance(a, AnnotationBbox) and a.get_gid() == "image 3")
    assert np.allclose(ab.offsetbox.get_data()[0, 0, :3], np.array(vis.PALETTE[pred[3]]) / 255.0)
    assert fig.axes[0].get_legend().get_title().get_text() == "predicted class (count)"


def test_feature_plot_bad_arguments(seeded_model, mnist_test):
    images, labels = mnist_test
    with pytest.raises(InvalidInputError, match="unknown projection"):
        vis.feature_space_plot(seeded_model, images[:5], method="tsne")
    with pytest.raises(InvalidInputError, match="at least 2 images"):
        vis.feature_space_plot(seeded_model, images[:1])
    with pytest.raises(InvalidInputError, match="3 labels for 5 images"):
        vis.feature_space_plot(seeded_model, images[:5], labels[:3])
    with pytest.raises(InvalidInputError, match="size"):
        vis.feature_space_plot(seeded_model, images[:5], size=(10, 10))


# -- summary graphic ---------------------------------------------------------------------------
def _summary_texts(fig):
    return [t.get_text() for t in fig.texts] + [t.get_text() for t in fig.axes[0].texts]


def test_summary_graphic_png_and_svg(tmp_path):
    info = capszoo.net_info(capszoo.CapsNet(), name="capsnet-mnist")
    fig = vis.summary_graphic(info)
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if (p.get_gid() or "").startswith("box ")]
    assert [p.get_gid()[4:] for p in boxes] == ["Input", *SUBNETS]          # every sub-net, once, in order
    assert all(a.get_y() + a.get_height() < b.get_y() for a, b in zip(boxes, boxes[1:]))  # top to bottom
    texts = _summary_texts(fig)
    assert "Number of layers: 82 | Parameter count: 8,141,840 | Trained size: 33 MB" in texts
    assert "5,308,672 parameters" in texts and "output 10 x 1152 x 16" in texts and "image 1 x 28 x 28" in texts
    assert {"probabilities (10): capsule lengths", "capsule (16)", "reconstruction (1 x 28 x 28)"} <= set(texts)
    vis.save_summary(info, tmp_path / "s.svg")
    vis.save_summary(info, tmp_path / "t.svg")
    vis.save_summary(info, tmp_path / "s.png")
    assert (tmp_path / "s.svg").read_bytes() == (tmp_path / "t.svg").read_bytes()   # fixed hash salt, no date
    root = ET.parse(str(tmp_path / "s.svg")).getroot()
    svg_texts = [t.text for t in root.iter(SVG + "text")]
    assert [t for t in svg_texts if t in SUBNETS] == list(SUBNETS)
    assert [g.get("id") for g in root.iter(SVG + "g") if (g.get("id") or "").startswith("box ")] == \
        ["box Input", *(f"box {n}" for n in SUBNETS)]
    with Image.open(tmp_path / "s.png") as png:
        assert png.format == "PNG" and png.size == vis.pixel_size(fig)
    assert sorted(os.listdir(tmp_path)) == ["s.png", "s.svg", "t.svg"]


def test_summary_graphic_of_a_net_without_decoder():
    info = capszoo.net_info(capszoo.CapsNet(), name="capsnet-mnist")
    info = type(info)(**{**info.__dict__, "name": "no decoder", "subnets": info.subnets[:-1]})
    fig = vis.summary_graphic(info)
    assert [p.get_gid()[4:] for p in fig.axes[0].patches if p.get_gid()] == ["Input", *SUBNETS[:-1]]
    texts = _summary_texts(fig)
    assert "capsule (16)" in texts and not any("reconstruction" in t for t in texts)


# -- output files ------------------------------------------------------------------------------
def test_output_paths_are_checked_and_written_atomically(tmp_path, monkeypatch):
    img = Image.new("RGB", (30, 20), (1, 2, 3))
    assert vis.save_image(img, tmp_path / "a.png") == tmp_path / "a.png"
    vis.save_image(img, tmp_path / "a.JPG")
    assert Image.open(tmp_path / "a.JPG").format == "JPEG"
    with pytest.raises(InvalidInputError, match=r"unknown extension '\.gif'.*\.png, \.jpg, \.jpeg$"):
        vis.save_image(img, tmp_path / "a.gif")
    with pytest.raises(InvalidInputError, match=r"\.svg"):
        vis.check_output_path(tmp_path / "a.pdf", svg=True)
    with pytest.raises(InvalidInputError, match="no file extension"):
        vis.save_image(img, tmp_path / "noext")
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "d.png").mkdir()
    for bad, msg in [(tmp_path / "missing" / "a.png", "does not exist"),
                     (tmp_path / "file.txt" / "a.png", "not a folder"),
                     (tmp_path / "d.png", "is a folder")]:
        with pytest.raises(ExportError, match=msg):
            vis.save_image(img, bad)

    def broken_save(self, fp, format=None, **kw):
        with open(fp, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ExportError, match="No space left"):
        vis.save_image(img, tmp_path / "b.png")
    with pytest.raises(ExportError, match="No space left"):   # a Figure goes through Pillow too
        vis.training_curve([_epoch(1, 0.98)], tmp_path / "c.png")
    assert sorted(os.listdir(tmp_path)) == ["a.JPG", "a.png", "d.png", "file.txt"]


def test_without_matplotlib_the_drawing_commands_say_how_to_install_it(monkeypatch, tmp_path, digit_files):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # `import matplotlib` raises ImportError
    with pytest.raises(ExportError, match=r"needs matplotlib, which is not installed; install it with "
                                          r"pip install 'capszoo\[viz\]'"):
        vis.training_curve([_epoch(1, 0.98)])
    vis.save_image(Image.new("RGB", (4, 4)), tmp_path / "pil.png")   # PIL pictures need no matplotlib
    for args in (["reconstruct", "capsnet-mnist", digit_files[0], "-o", str(tmp_path / "r.png")],
                 ["info", "capsnet-mnist", "--graphic", str(tmp_path / "s.svg")]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and r.output.strip().splitlines() == [
            "Error: drawing pictures needs matplotlib, which is not installed; install it with "
            "pip install 'capszoo[viz]'"], r.output
    assert sorted(os.listdir(tmp_path)) == ["d0.png", "d1.png", "d2.png", "pil.png"]


# -- command line ------------------------------------------------------------------------------
def test_cli_reconstruct_tweak_features_info(digit_files, seeded_weights, seeded_model, mnist_dir, tmp_path):
    runner = CliRunner()
    w = ["--weights", seeded_weights]
    out = tmp_path / "rec.png"
    r = runner.invoke(main, ["reconstruct", "capsnet-mnist", *digit_files, "-o", str(out), "--labels", "7,2,1", *w])
    assert r.exit_code == 0, r.output
    fig = vis.reconstruction_panel(seeded_model, digit_files, labels=[7, 2, 1])
    assert Image.open(out).size == vis.pixel_size(fig)
    assert r.output == f"wrote {out}  ({' x '.join(map(str, vis.pixel_size(fig)))})\n"
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(vis.to_image(fig)))

    out = tmp_path / "grid.png"
    r = runner.invoke(main, ["tweak", "capsnet-mnist", digit_files[0], "--dims", "11,14,16",
                             "--range", "-0.25:0.25:0.05", "-o", str(out), *w])
    assert r.exit_code == 0, r.output
    assert "(3 dims x 11 offsets, " in r.output
    size = vis.pixel_size(vis.tweak_grid(seeded_model, digit_files[0], dims=[11, 14, 16]))
    assert Image.open(out).size == size
    out = tmp_path / "grid.jpg"
    r = runner.invoke(main, ["tweak", "capsnet-mnist", digit_files[0], "--range=-0.1:0.1:0.1", "-o", str(out), *w])
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.format == "JPEG" and "(16 dims x 3 offsets, " in r.output

    out = tmp_path / "feat.png"
    r = runner.invoke(main, ["features", "capsnet-mnist", "--data-dir", str(mnist_dir), "--samples", "40",
                             "--seed", "3", "-o", str(out), *w])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (1000, 760) and "40 images" in r.output
    out2 = tmp_path / "feat2.png"
    r = runner.invoke(main, ["features", "capsnet-mnist", "--data-dir", str(mnist_dir), "--samples", "40",
                             "--seed", "3", "-o", str(out2), *w])
    assert out.read_bytes() == out2.read_bytes()
    r = runner.invoke(main, ["features", "capsnet-mnist", *digit_files, "-o", str(out2), *w])
    assert r.exit_code == 0, r.output

    out = tmp_path / "summary.svg"
    r = runner.invoke(main, ["info", "capsnet-mnist", "--graphic", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("Number of layers: 82") and r.stderr == f"wrote {out}\n"
    text = out.read_text()
    assert all(f">{n}<" in text for n in SUBNETS) and "8,141,840" in text
    r = runner.invoke(main, ["info", "capsnet-mnist", "--graphic", str(tmp_path / "summary.png"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["num_params"] == 8_141_840
    info = capszoo.net_info(capszoo.CapsNet(), name="capsnet-mnist")
    assert Image.open(tmp_path / "summary.png").size == vis.pixel_size(vis.summary_graphic(info))


@pytest.mark.parametrize("case", [
    "dims0", "dims17", "reversed", "step0", "badrange", "no-images-reconstruct", "no-images-features",
    "too-many-samples", "missing-folder", "parent-is-file", "unknown-ext", "unknown-ext-info", "bad-labels",
    "images-and-data",
])
def test_cli_bad_inputs_are_one_line_errors(case, digit_files, seeded_weights, mnist_dir, tmp_path):
    out = str(tmp_path / "out.png")
    w = ["--weights", seeded_weights]
    img = digit_files[0]
    args, expect = {
        "dims0": (["tweak", "capsnet-mnist", img, "--dims", "0", "-o", out, *w], "1..16"),
        "dims17": (["tweak", "capsnet-mnist", img, "--dims", "11,17", "-o", out, *w], "got 17"),
        "reversed": (["tweak", "capsnet-mnist", img, "--range", "0.25:-0.25:0.05", "-o", out, *w], "reversed"),
        "step0": (["tweak", "capsnet-mnist", img, "--range", "-0.25:0.25:0", "-o", out, *w], "step"),
        "badrange": (["tweak", "capsnet-mnist", img, "--range", "x:y", "-o", out, *w], "cannot parse"),
        "no-images-reconstruct": (["reconstruct", "capsnet-mnist", "-o", out, *w], "no images"),
        "no-images-features": (["features", "capsnet-mnist", "-o", out, *w], "no images"),
        "too-many-samples": (["features", "capsnet-mnist", "--data-dir", str(mnist_dir), "--samples", "10001",
                              "-o", out, *w], "more than the 10000"),
        "missing-folder": (["reconstruct", "capsnet-mnist", img, "-o", str(tmp_path / "nope" / "o.png"), *w],
                           "does not exist"),
        "parent-is-file": (["tweak", "capsnet-mnist", img, "-o", os.path.join(img, "o.png"), *w], "not a folder"),
        "unknown-ext": (["reconstruct", "capsnet-mnist", img, "-o", str(tmp_path / "out.gif"), *w],
                        "unknown extension '.gif'"),
        "unknown-ext-info": (["info", "capsnet-mnist", "--graphic", str(tmp_path / "out.pdf")], ".svg"),
        "bad-labels": (["reconstruct", "capsnet-mnist", img, "--labels", "1,2", "-o", out, *w], "2 labels"),
        "images-and-data": (["features", "capsnet-mnist", img, "--data-dir", str(mnist_dir), "-o", out, *w],
                            "not both"),
    }[case]
    before = sorted(os.listdir(tmp_path))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expect in lines[0], r.output
    assert "Traceback" not in r.output
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temporary file


# -- trained weights ---------------------------------------------------------------------------
#: Mean absolute pixel error (pixels in [0, 1]) allowed between a test digit and its reconstruction.
RECONSTRUCTION_MAE_BOUND = 0.1


def check_trained_reconstructions(model, images, labels):
    """The first test digit (a 7) is classified right, reconstructed within the bound, and its
    reconstruction is nearer to it than to any other-class digit among the first ten."""
    x = model.encode(list(images[:10]))[:, 0]
    recos = np.stack([np.asarray(r, dtype=np.float64) / 255.0
                      for r in model(list(images[:10]), prop="Reconstruction")])
    assert model(images[0]) == int(labels[0])
    mae = float(np.abs(recos[0] - x[0]).mean())
    assert mae < RECONSTRUCTION_MAE_BOUND, f"mean abs error {mae:.3f}"
    others = [i for i in range(1, 10) if labels[i] != labels[0]]
    assert all(mae < float(np.abs(recos[0] - x[i]).mean()) for i in others)


def test_trained_reconstruction_is_close_to_the_digit(mnist_test):
    try:
        model = capszoo.load("capsnet-mnist")
    except CapszooError as exc:
        pytest.skip(f"trained weights not available (capszoo.load('capsnet-mnist'): {exc})")
    images, labels = mnist_test
    check_trained_reconstructions(model, images, labels)
    fig = vis.reconstruction_panel(model, list(images[:10]), labels=labels[:10])
    assert all(t.get_color() == vis._INK for t in fig.axes[0].texts if (t.get_gid() or "").startswith("caption"))


# -- training curve ----------------------------------------------------------------------------
RECIPE_METRICS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes",
                              "capsnet-mnist.metrics.jsonl")


def _epoch(e, val, train=0.99, loss=0.03, **extra):
    row = {"epoch": e, "lr": 0.001, "train_loss": loss, "train_class_loss": loss * 0.6,
           "train_reco_loss": loss * 0.4, "train_accuracy": train, "val_accuracy": val,
           "val_errors": int(round((1 - val) * 5000))}
    row.update(extra)
    return row


def _lines(ax):
    """The labelled lines of ``ax`` (the legend's) by label."""
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def _best_line(ax):
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "best epoch"]
    return line


def test_training_curve_plots_the_log(tmp_path):
    out = tmp_path / "training.png"
    fig = vis.training_curve(RECIPE_METRICS, out, title="capsnet-mnist")
    with open(RECIPE_METRICS) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    epochs = [m["epoch"] for m in rows]
    best = max(rows, key=lambda m: (m["val_accuracy"], -m["epoch"]))["epoch"]  # the first of ties
    assert epochs == list(range(1, len(rows) + 1)) and len(rows) >= 3
    assert vis.pixel_size(fig) == (1100, 500)
    err, loss = fig.axes
    lines_err = _lines(err)
    for label, key in (("validation", "val_accuracy"), ("training", "train_accuracy")):
        assert np.array_equal(lines_err[label].get_xdata(), epochs)
        assert np.allclose(lines_err[label].get_ydata(), [100 - 100 * m[key] for m in rows])
    assert err.get_yscale() == "log" and err.get_title(loc="left") == "Error rate (%, log scale)"
    ticks = [t for t in err.get_yticks() if err.get_ylim()[0] <= t <= err.get_ylim()[1]]   # 1-2-5 steps
    assert len(ticks) >= 5 and all(np.round(t / 10 ** np.floor(np.log10(t)), 6) in (1, 2, 5) for t in ticks)
    assert [t.get_text() for t in err.get_yticklabels() if t.get_position()[1] in ticks] == [f"{t:g}" for t in ticks]
    lines = _lines(loss)
    for label, key in (("total", "train_loss"), ("margin (class)", "train_class_loss"),
                       ("reconstruction", "train_reco_loss")):
        assert np.allclose(lines[label].get_ydata(), [m[key] for m in rows])
    assert loss.get_ylim()[0] == 0 and loss.get_yscale() == "linear"
    # the best validation epoch of the log (the first of ties) is marked in both, and ringed on its value
    for ax in (err, loss):
        assert list(_best_line(ax).get_xdata()) == [best, best]
        assert ax.get_xlabel() == "epoch"
    assert all("val_accuracy_raw" in m for m in rows)   # a run validating a moving average of the weights
    assert np.allclose(lines_err["validation, raw weights"].get_ydata(), [100 - 100 * m["val_accuracy_raw"]
                                                                         for m in rows])
    ring = lines_err[f"best (epoch {best})"]
    assert list(ring.get_xdata()) == [best] and np.isclose(ring.get_ydata()[0], 100 - 100 * rows[best - 1]
                                                           ["val_accuracy"])
    assert [t.get_text() for t in err.get_legend().get_texts()] == \
        ["validation", "training", "validation, raw weights", f"best (epoch {best})"]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["total", "margin (class)", "reconstruction"]
    heading = [t.get_text() for t in fig.texts]
    assert heading[0] == "capsnet-mnist" and heading[1].startswith(f"{len(rows)} epochs (1..{len(rows)}); "
                                                                    "lowest validation error")
    # the written file holds the returned picture, and nothing else is left beside it
    with Image.open(out) as f:
        assert f.format == "PNG" and f.size == (1100, 500)
        assert np.array_equal(np.asarray(f.convert("RGB")), np.asarray(vis.to_image(fig)))
    assert os.listdir(tmp_path) == ["training.png"]


def test_training_curve_is_deterministic_and_accepts_dicts(tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    vis.training_curve(RECIPE_METRICS, a)
    vis.training_curve(RECIPE_METRICS, str(b))
    with open(RECIPE_METRICS) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    vis.save_image(vis.training_curve(rows), c)
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()


@pytest.mark.parametrize("best", [0, 2, 4])
def test_training_curve_marks_the_best_validation_epoch(best):
    vals = [0.97, 0.98, 0.985, 0.986, 0.984]
    vals[best] = 0.995
    rows = [_epoch(e, v, train=0.9 + 0.02 * i) for i, (e, v) in enumerate(zip(range(2, 7), vals))]
    fig = vis.training_curve(rows)
    for ax in fig.axes:
        assert list(_best_line(ax).get_xdata()) == [2 + best] * 2
    ring = _lines(fig.axes[0])[f"best validation (epoch {2 + best})"]
    assert list(ring.get_xdata()) == [2 + best] and np.isclose(ring.get_ydata()[0], 0.5)
    assert f"at epoch {2 + best};" in fig.texts[1].get_text() and "(25 errors)" in fig.texts[1].get_text()
    # equal best values: the first epoch wins
    tie = vis.training_curve([_epoch(1, 0.99), _epoch(2, 0.99), _epoch(3, 0.98)])
    assert list(_best_line(tie.axes[1]).get_xdata()) == [1, 1]


def test_training_curve_draws_the_raw_weights_validation_where_the_log_has_it():
    """A run with a moving average logs the raw weights' validation accuracy too (val_accuracy_raw, from the
    epoch the average started): a thin line over those epochs only, with its legend entry."""
    rows = [_epoch(e, 0.98 + 0.002 * e, train=0.97 + 0.004 * e) for e in range(1, 6)]
    plain = vis.training_curve(rows + [_epoch(e, 0.991, train=0.995) for e in (6, 7, 8)])
    assert "validation, raw weights" not in _lines(plain.axes[0])
    fig = vis.training_curve(rows + [_epoch(e, 0.991, train=0.995, val_accuracy_raw=0.985) for e in (6, 7, 8)])
    raw = _lines(fig.axes[0])["validation, raw weights"]
    y = raw.get_ydata()
    assert np.isnan(y[:5]).all() and np.allclose(y[5:], 1.5)       # epochs 6..8 only
    assert raw.get_linewidth() < _lines(fig.axes[0])["validation"].get_linewidth()
    assert "validation, raw weights" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "best (epoch 6)" in _lines(fig.axes[0])   # the first of the equal best
    with pytest.raises(InvalidInputError, match=r"metrics line 2: val_accuracy_raw must be a fraction in \[0, 1\], "
                                                r"got 1.5"):
        vis.training_curve([_epoch(1, 0.98), _epoch(2, 0.98, val_accuracy_raw=1.5)])


def test_training_curve_edge_cases_draw():
    one = vis.training_curve([_epoch(7, 0.98, train=0.95)])       # one epoch: a point, still marked as best
    assert list(_best_line(one.axes[0]).get_xdata()) == [7, 7]
    assert one.axes[0].get_xlim()[0] < 7 < one.axes[0].get_xlim()[1]
    # zero training error (linear axis from 0), only the total loss, extra keys, epochs that skip
    rows = [{"epoch": e, "train_accuracy": 1.0, "val_accuracy": 0.99, "train_loss": 0.0, "note": "x"}
            for e in (0, 5, 10)]
    fig = vis.training_curve(rows)
    err, loss = fig.axes
    assert err.get_yscale() == "linear" and err.get_ylim()[0] == 0 and "linear scale" in err.get_title(loc="left")
    assert np.allclose(_lines(err)["training"].get_ydata(), 0) and list(_lines(err)["training"].get_xdata()) == \
        [0, 5, 10]
    assert set(_lines(loss)) == {"total"}
    # a long run: no dots on the lines, still 1100 x 500
    many = [_epoch(e, 0.9 + 0.09 * (1 - 0.9 ** e), train=0.8 + 0.199 * (1 - 0.9 ** e), loss=1 / e)
            for e in range(1, 201)]
    fig = vis.training_curve(many)
    assert vis.pixel_size(fig) == (1100, 500) and _lines(fig.axes[0])["validation"].get_marker() == "None"
    assert vis.to_image(fig).size == (1100, 500)


def _jsonl(tmp_path, lines, name="m.jsonl"):
    p = tmp_path / name
    p.write_text("".join(line + "\n" for line in lines))
    return p


GOOD = json.dumps(_epoch(1, 0.98))


@pytest.mark.parametrize("lines, message", [
    ([], r"m\.jsonl' has no epochs"),
    (["", "   "], r"m\.jsonl' has no epochs"),
    ([GOOD, '{"epoch": 2, "val_accuracy": 0.9'], r"m\.jsonl line 2: invalid JSON: .*column"),
    ([GOOD, "", "not json"], r"m\.jsonl line 3: invalid JSON"),
    (["[1, 2]"], r"line 1: expected a JSON object \(one epoch\), got list"),
    ([GOOD, json.dumps({k: v for k, v in _epoch(2, 0.98).items() if k != "val_accuracy"})],
     r"line 2: missing key 'val_accuracy'"),
    ([json.dumps({k: v for k, v in _epoch(1, 0.98).items() if k != "epoch"})], r"line 1: missing key 'epoch'"),
    ([json.dumps({"epoch": 1, "train_accuracy": 0.9, "val_accuracy": 0.9})], r"line 1: missing key 'train_loss'"),
    ([json.dumps({"epoch": 1, "train_accuracy": 0.9, "val_accuracy": 0.9, "train_class_loss": 0.1})],
     r"line 1: missing key 'train_reco_loss'"),
    ([GOOD, json.dumps(_epoch(2, 0.98)).replace('"train_loss": 0.03', '"train_loss": NaN')],
     r"line 2: train_loss is nan, not a finite number"),
    ([json.dumps(_epoch(1, 0.98)).replace('"val_accuracy": 0.98', '"val_accuracy": Infinity')],
     r"line 1: val_accuracy is inf, not a finite number"),
    ([json.dumps(_epoch(1, 0.98)).replace('"val_accuracy": 0.98', '"val_accuracy": 1e999')],
     r"line 1: val_accuracy is inf"),
    ([json.dumps(_epoch(1, 0.98, val_accuracy="0.98"))], r"line 1: val_accuracy must be a number, got '0.98'"),
    ([json.dumps(_epoch(1, 98.0))], r"line 1: val_accuracy must be a fraction in \[0, 1\], got 98.0"),
    ([json.dumps(_epoch(1, 0.98, loss=-1.0))], r"line 1: train_loss must be >= 0"),
    ([json.dumps(_epoch(1.5, 0.98))], r"line 1: epoch must be an integer >= 0, got 1.5"),
    ([json.dumps(_epoch(True, 0.98))], r"line 1: epoch must be an integer"),
    ([GOOD, GOOD], r"line 2: epoch 1 comes after epoch 1; epochs must increase"),
])
def test_training_curve_bad_logs(tmp_path, lines, message):
    p = _jsonl(tmp_path, lines)
    with pytest.raises(InvalidInputError, match=message) as info:
        vis.training_curve(p, tmp_path / "out.png")
    assert str(p) in str(info.value)
    err = info.value  # one clean error: no json/matplotlib exception chained to it
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl"]  # nothing written


def test_training_curve_bad_sources_and_outputs(tmp_path):
    with pytest.raises(InvalidInputError, match=r"metrics file '.*nope\.jsonl' does not exist"):
        vis.training_curve(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidInputError, match="is a folder"):
        vis.training_curve(tmp_path)
    (tmp_path / "bin.jsonl").write_bytes(GOOD.encode() + b"\n\xff\xfe\n")
    with pytest.raises(InvalidInputError, match=r"bin\.jsonl line 2: not UTF-8 text"):
        vis.training_curve(tmp_path / "bin.jsonl")
    with pytest.raises(InvalidInputError, match="metrics has no epochs"):
        vis.training_curve([])
    with pytest.raises(InvalidInputError, match="metrics line 2: expected a JSON object"):
        vis.training_curve([_epoch(1, 0.98), "x"])
    with pytest.raises(InvalidInputError, match="metrics line 1: missing key 'train_accuracy'"):
        vis.training_curve([{"epoch": 1, "val_accuracy": 0.9, "train_loss": 0.1}])
    with pytest.raises(InvalidInputError, match="metrics line 1: train_reco_loss is nan"):
        vis.training_curve([_epoch(1, 0.98, train_reco_loss=float("nan"))])
    for bad in (None, 3, {"epoch": 1}):
        with pytest.raises(InvalidInputError, match="a path to a JSONL file or a list of dicts"):
            vis.training_curve(bad)
    with pytest.raises(InvalidInputError, match="title must be a string"):
        vis.training_curve([_epoch(1, 0.98)], title=3)
    # the output path is checked before anything is read or drawn
    with pytest.raises(InvalidInputError, match=r"unknown extension '\.gif'"):
        vis.training_curve(tmp_path / "nope.jsonl", tmp_path / "t.gif")
    with pytest.raises(ExportError, match="does not exist"):
        vis.training_curve([_epoch(1, 0.98)], tmp_path / "missing" / "t.png")
