"""Pictures: reconstruction panel, pose-tweak grid, feature-space plot, summary graphic, their CLI.

The seeded random net draws no digits, so these tests check structure and the
relations that hold for any weights: tiles show exactly what the model returns,
at the places the layout says; sizes follow from rows and columns; the offset-0
column is the untweaked reconstruction; rendering is deterministic.  One test
checks real reconstructions and runs only when trained weights are available.
"""
import io
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import capszoo
from capszoo import _visualize as vis
from capszoo.cli import main
from capszoo.errors import CapszooError, ExportError, InvalidInputError

SUBNETS = ("ReLUConv1", "PrimaryCaps", "PrimaryPredVects", "DigitCaps", "Pick", "Reconstruct")


def _tiled(img28, scale):
    """What a tile of ``img28`` (PIL L or [0, 255] array) enlarged ``scale`` times must hold."""
    return np.kron(np.asarray(img28, dtype=np.uint8), np.ones((scale, scale), dtype=np.uint8))


def _grey_region(picture, box):
    """The pixels of ``box`` as one grey channel (asserting the region is grey: R == G == B)."""
    a = np.asarray(picture.crop(box))
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    return a[..., 0]


def _as_uint8(x):
    return np.clip(np.asarray(x) * 255.0 + 0.5, 0, 255).astype(np.uint8)


# -- reconstruction panel ----------------------------------------------------------------------
def test_reconstruction_panel_shows_inputs_and_reconstructions(seeded_model, mnist_test):
    images, labels = mnist_test
    n = 7
    panel, recos = vis.reconstruction_panel(seeded_model, list(images[:n]), labels=labels[:n], columns=3,
                                            return_images=True)
    expected = seeded_model(list(images[:n]), prop="Reconstruction")
    inputs = seeded_model.encode(list(images[:n])).asnumpy()[:, 0]
    lay = vis.reconstruction_layout(n, columns=3, labels=True)
    assert panel.mode == "RGB" and panel.size == lay.size
    assert lay.rows == 3 and lay.tile == 84
    for i in range(n):
        assert np.array_equal(np.asarray(recos[i]), np.asarray(expected[i]))
        assert np.array_equal(_grey_region(panel, lay.reconstruction_box(i)), _tiled(expected[i], 3))
        assert np.array_equal(_grey_region(panel, lay.input_box(i)), _tiled(_as_uint8(inputs[i]), 3))
    # captions: red exactly under the wrong predictions
    pred = seeded_model(list(images[:n]))
    for i in range(n):
        x0, _, _, y1 = lay.input_box(i)
        cap = np.asarray(panel.crop((x0, y1 + 2, lay.reconstruction_box(i)[2], y1 + 26))).astype(int)
        assert (cap.sum(axis=2) < 600).any(), "caption missing"
        red = ((cap[..., 0] - cap[..., 1]) > 60).any()
        assert red == (pred[i] != labels[i])
    # the plain call returns just the picture, and the same pixels
    again = vis.reconstruction_panel(seeded_model, list(images[:n]), labels=labels[:n], columns=3)
    assert isinstance(again, Image.Image) and again.tobytes() == panel.tobytes()


def test_reconstruction_layout_size_follows_rows_and_columns():
    w = [vis.reconstruction_layout(c, columns=c).size[0] for c in (3, 4, 5, 6)]
    pitch = vis.reconstruction_layout(3, columns=3).pair_pitch
    assert pitch[0] == 2 * 84 + 6 + 28
    assert [b - a for a, b in zip(w, w[1:])] == [pitch[0]] * 3
    h = [vis.reconstruction_layout(3 * r, columns=3).size[1] for r in (1, 2, 3, 4)]
    assert [b - a for a, b in zip(h, h[1:])] == [pitch[1]] * 3
    big = vis.reconstruction_layout(4, columns=4, scale=5)
    assert big.tile == 140 and big.reconstruction_box(3)[2] - big.input_box(0)[0] == 4 * (2 * 140 + 6) + 3 * 28
    # a lone pair is centred in the minimum width
    one = vis.reconstruction_layout(1)
    assert one.size[0] == 540 and one.columns == 1


def test_reconstruction_panel_bad_labels(seeded_model, mnist_test):
    images, _ = mnist_test
    with pytest.raises(InvalidInputError, match="2 labels for 3 images"):
        vis.reconstruction_panel(seeded_model, list(images[:3]), labels=[1, 2])
    with pytest.raises(InvalidInputError, match="12 is not a class"):
        vis.reconstruction_panel(seeded_model, list(images[:2]), labels=[1, 12])


# -- pose tweaks -------------------------------------------------------------------------------
def test_default_offsets_are_the_keras_grid():
    o = vis.DEFAULT_OFFSETS
    assert len(o) == 11 and o[0] == -0.25 and o[-1] == 0.25 and o[5] == 0.0
    assert np.allclose(np.diff(o), 0.05)
    d = vis._offset_decimals(o)
    assert [vis._offset_label(v, d) for v in o[[0, 5, 10]]] == ["-0.25", "0.00", "+0.25"]


def test_tweak_grid_cells_and_the_untweaked_column(seeded_model, mnist_test):
    images, _ = mnist_test
    img = images[0]
    dims = [11, 14, 16]
    cells, grid = vis.tweak_images(seeded_model, img, dims=dims)
    assert len(cells) == 3 and all(len(row) == 11 for row in cells)
    assert all(c.size == (28, 28) and c.mode == "L" for row in cells for c in row)
    lay = vis.tweak_layout(3, 11)
    assert grid.size == lay.size and lay.tile == 56
    feature = seeded_model.features(img)[0]
    base = seeded_model.reconstruct(feature)
    full = seeded_model(img, prop="Reconstruction")
    for r in range(3):
        assert np.array_equal(np.asarray(cells[r][5]), np.asarray(base))  # offset 0, pixel for pixel
        for c in range(11):
            assert np.array_equal(_grey_region(grid, lay.cell_box(r, c)), _tiled(cells[r][c], 2))
    assert np.abs(np.asarray(base, int) - np.asarray(full, int)).max() <= 1
    # a tweaked cell is the reconstruction of capsule + offset * e_dim
    v = feature.astype(np.float64).copy()
    v[14 - 1] += -0.25
    assert np.abs(np.asarray(cells[1][0], int) - np.asarray(seeded_model.reconstruct(v), int)).max() <= 1
    # the input is shown beside the grid
    x = seeded_model.encode(img).asnumpy()[0, 0]
    assert np.array_equal(_grey_region(grid, lay.input_box()), _tiled(_as_uint8(x), 2))
    with pytest.raises(IndexError):
        lay.cell_box(3, 0)


def test_tweak_grid_default_is_16_by_11_and_sizes_follow(seeded_model, mnist_test):
    images, _ = mnist_test
    grid = vis.tweak_grid(seeded_model, images[1], scale=1)
    assert grid.size == vis.tweak_layout(16, 11, scale=1).size
    a, b = vis.tweak_layout(8, 11).size, vis.tweak_layout(9, 11).size
    assert a[0] == b[0] and b[1] - a[1] == 56 + 8
    a, b = vis.tweak_layout(16, 11).size, vis.tweak_layout(16, 12).size
    assert b[0] - a[0] == 56 + 8 and a[1] == b[1]
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


def test_feature_plot_is_deterministic_with_ten_legend_entries(seeded_model, mnist_test):
    images, labels = mnist_test
    sel = slice(0, 60)

    def png(seed):
        buf = io.BytesIO()
        vis.feature_space_plot(seeded_model, images[sel], labels[sel], seed=seed).save(buf, format="PNG")
        return buf.getvalue()

    a, b = png(0), png(0)
    assert a == b
    assert png(1) != a  # the seed changes which thumbnail lies on top
    plot = Image.open(io.BytesIO(a)).convert("RGB")
    lay = vis.feature_plot_layout()
    assert plot.size == lay.size == (1000, 760)
    assert len(lay.swatch_boxes) == 10 and len(set(vis.PALETTE)) == 10
    for k, (x0, y0, x1, y1) in enumerate(lay.swatch_boxes):
        assert plot.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == vis.PALETTE[k]
    x0, y0, x1, y1 = lay.swatch_boxes[-1]
    pitch = y0 - lay.swatch_boxes[-2][1]
    assert plot.getpixel(((x0 + x1) // 2, (y0 + y1) // 2 + pitch)) == (255, 255, 255)  # no 11th entry
    # every class present has thumbnails of its colour inside the plot
    px = np.asarray(plot.crop(lay.plot_box)).astype(int)
    for k in set(int(v) for v in labels[sel]):
        assert (np.abs(px - np.array(vis.PALETTE[k])).sum(axis=2) < 25).any(), k


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
def test_summary_graphic_svg_and_png(seeded_model, tmp_path):
    info = seeded_model.info()
    svg = vis.summary_svg(info)
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    names = [t for t in texts if t in SUBNETS]
    assert names == list(SUBNETS)  # every sub-net, once, in data-flow order
    assert "Input" in texts
    header = next(t for t in texts if t.startswith("Number of layers"))
    assert header == "Number of layers: 82 | Parameter count: 8,141,840 | Trained size: 33 MB"
    assert "5,308,672 parameters" in texts and "output 10 x 1152 x 16" in texts
    assert len(list(root.iter("{http://www.w3.org/2000/svg}rect"))) == 1 + 7  # background + 7 boxes
    img = vis.summary_graphic(info)
    size, _ = vis._summary_items(info)
    assert img.size == size and img.mode == "RGB" and int(root.get("width")) == size[0]
    vis.save_summary(info, tmp_path / "s.svg")
    vis.save_summary(info, tmp_path / "s.png")
    assert (tmp_path / "s.svg").read_text() == svg
    assert Image.open(tmp_path / "s.png").size == size
    assert sorted(os.listdir(tmp_path)) == ["s.png", "s.svg"]


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
    assert sorted(os.listdir(tmp_path)) == ["a.JPG", "a.png", "d.png", "file.txt"]


# -- command line ------------------------------------------------------------------------------

def test_cli_reconstruct_tweak_features_info(digit_files, seeded_weights, mnist_dir, tmp_path):
    runner = CliRunner()
    w = ["--weights", seeded_weights]
    out = tmp_path / "rec.png"
    r = runner.invoke(main, ["reconstruct", "capsnet-mnist", *digit_files, "-o", str(out), "--labels", "7,2,1", *w])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == vis.reconstruction_layout(3, labels=True).size
    assert r.output.startswith(f"wrote {out}")

    out = tmp_path / "grid.png"
    r = runner.invoke(main, ["tweak", "capsnet-mnist", digit_files[0], "--dims", "11,14,16",
                             "--range", "-0.25:0.25:0.05", "-o", str(out), *w])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == vis.tweak_layout(3, 11).size
    out = tmp_path / "grid.jpg"
    r = runner.invoke(main, ["tweak", "capsnet-mnist", digit_files[0], "--range=-0.1:0.1:0.1", "-o", str(out), *w])
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size == vis.tweak_layout(16, 3).size

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
    assert Image.open(tmp_path / "summary.png").size == vis._summary_items(info)[0]


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
    x = model.encode(list(images[:10])).asnumpy()[:, 0]
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
    panel = vis.reconstruction_panel(model, list(images[:10]), labels=labels[:10])
    assert panel.size == vis.reconstruction_layout(10, labels=True).size


# -- training curve ----------------------------------------------------------------------------
RECIPE_METRICS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes",
                              "capsnet-mnist.metrics.jsonl")
_BEST_GREEN = vis.PALETTE[2]


def _epoch(e, val, train=0.99, loss=0.03, **extra):
    row = {"epoch": e, "lr": 0.001, "train_loss": loss, "train_class_loss": loss * 0.6,
           "train_reco_loss": loss * 0.4, "train_accuracy": train, "val_accuracy": val,
           "val_errors": int(round((1 - val) * 5000))}
    row.update(extra)
    return row


def _colour_columns(img, box, colour):
    """x pixels (absolute) inside ``box`` (frame excluded) holding exactly ``colour``."""
    a = np.asarray(img.crop((box[0] + 1, box[1] + 1, box[2], box[3]))).astype(int)
    ys, xs = np.nonzero((a == np.array(colour)).all(axis=2))
    return xs + box[0] + 1, ys + box[1] + 1


def _ink_in(img, box):
    a = np.asarray(img.crop((box[0] + 2, box[1] + 2, box[2] - 1, box[3] - 1))).astype(int)
    grid = (a == 235).all(axis=2)
    return int(((a < 250).any(axis=2) & ~grid).sum())


def test_training_curve_from_the_recipe_log(tmp_path):
    out = tmp_path / "training.png"
    img = vis.training_curve(RECIPE_METRICS, out, title="capsnet-mnist")
    with open(RECIPE_METRICS) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    last = rows[-1]["epoch"]
    best = max(rows, key=lambda m: (m["val_accuracy"], -m["epoch"]))["epoch"]  # the first of ties
    assert [m["epoch"] for m in rows] == list(range(1, last + 1)) and last >= 3
    lay = vis.training_curve_layout(1, last)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == lay.size == (1100, 500)
    # the written file holds the returned picture, and nothing else is left beside it
    with Image.open(out) as f:
        assert f.format == "PNG" and f.size == img.size
        assert np.array_equal(np.asarray(f.convert("RGB")), np.asarray(img))
    assert os.listdir(tmp_path) == ["training.png"]
    # both panels have curves: plenty of non-white, non-grid pixels inside each frame
    assert lay.error_box[2] < lay.loss_box[0]
    for box in (lay.error_box, lay.loss_box):
        assert _ink_in(img, box) > 500
    # each curve's colour is drawn in its panel, across the epochs
    for box, colours in ((lay.error_box, (vis.PALETTE[0], vis.PALETTE[1])),
                         (lay.loss_box, ((25, 25, 25), vis.PALETTE[3], vis.PALETTE[4]))):
        for c in colours:
            xs, _ = _colour_columns(img, box, c)
            assert xs.size and xs.min() <= lay.epoch_x(1, box) + 4 and xs.max() >= lay.epoch_x(last, box) - 4
    # the best validation epoch of the log (the first of ties) is marked in both panels
    for box in (lay.error_box, lay.loss_box):
        xs, ys = _colour_columns(img, box, _BEST_GREEN)
        assert xs.size > 50
        assert abs(np.median(xs) - lay.epoch_x(best, box)) <= 1.5
        assert ys.max() - ys.min() > 0.8 * (box[3] - box[1])  # a line across the panel


def test_training_curve_is_deterministic_and_accepts_dicts(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    vis.training_curve(RECIPE_METRICS, a)
    vis.training_curve(RECIPE_METRICS, str(b))
    assert a.read_bytes() == b.read_bytes()
    with open(RECIPE_METRICS) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    img = vis.training_curve(rows)
    assert img.tobytes() == Image.open(a).convert("RGB").tobytes()


@pytest.mark.parametrize("best", [0, 2, 4])
def test_training_curve_marks_the_best_validation_epoch(best):
    vals = [0.97, 0.98, 0.985, 0.986, 0.984]
    vals[best] = 0.995
    rows = [_epoch(e, v, train=0.9 + 0.02 * i) for i, (e, v) in enumerate(zip(range(2, 7), vals))]
    img = vis.training_curve(rows)
    lay = vis.training_curve_layout(2, 6)
    for box in (lay.error_box, lay.loss_box):
        xs, _ = _colour_columns(img, box, _BEST_GREEN)
        assert xs.size > 50 and abs(np.median(xs) - lay.epoch_x(2 + best, box)) <= 1.5
    # the ring sits on the validation point: green pixels around it in the error panel only
    xs, ys = _colour_columns(img, lay.error_box, _BEST_GREEN)
    off_line = np.abs(xs - lay.epoch_x(2 + best)) > 2
    assert off_line.sum() > 10 and np.abs(xs[off_line] - lay.epoch_x(2 + best)).max() <= 10
    xs, _ = _colour_columns(img, lay.loss_box, _BEST_GREEN)
    assert (np.abs(xs - lay.epoch_x(2 + best, lay.loss_box)) <= 1.5).all()
    # equal best values: the first epoch wins
    tie = [_epoch(1, 0.99), _epoch(2, 0.99), _epoch(3, 0.98)]
    lay = vis.training_curve_layout(1, 3)
    xs, _ = _colour_columns(vis.training_curve(tie), lay.loss_box, _BEST_GREEN)
    assert abs(np.median(xs) - lay.epoch_x(1, lay.loss_box)) <= 1.5


def test_training_curve_draws_the_raw_weights_validation_where_the_log_has_it():
    """A run with a moving average logs the raw weights' validation accuracy too (val_accuracy_raw, from the
    epoch the average started): a thin line over those epochs only, with its legend entry."""
    raw_colour = vis.PALETTE[9]
    rows = [_epoch(e, 0.98 + 0.002 * e, train=0.97 + 0.004 * e) for e in range(1, 6)]
    lay = vis.training_curve_layout(1, 8)
    plain = vis.training_curve(rows + [_epoch(e, 0.991, train=0.995) for e in (6, 7, 8)])
    assert _colour_columns(plain, lay.error_box, raw_colour)[0].size == 0
    legend = (0, lay.error_box[3] + 40, lay.size[0], lay.size[1])
    assert _colour_columns(plain, legend, raw_colour)[0].size == 0
    img = vis.training_curve(rows + [_epoch(e, 0.991, train=0.995, val_accuracy_raw=0.985) for e in (6, 7, 8)])
    xs, ys = _colour_columns(img, lay.error_box, raw_colour)
    assert xs.size > 20
    assert xs.min() >= lay.epoch_x(6) - 4 and xs.max() <= lay.epoch_x(8) + 4   # epochs 6..8 only
    assert _colour_columns(img, legend, raw_colour)[0].size > 10                 # and a legend entry
    with pytest.raises(InvalidInputError, match=r"metrics line 2: val_accuracy_raw must be a fraction in \[0, 1\], "
                                                r"got 1.5"):
        vis.training_curve([_epoch(1, 0.98), _epoch(2, 0.98, val_accuracy_raw=1.5)])


def test_training_curve_edge_cases_draw():
    lay = vis.training_curve_layout(7, 7)
    # one epoch: a point (centred), still marked as best
    one = vis.training_curve([_epoch(7, 0.98, train=0.95)])
    assert one.size == lay.size
    xs, _ = _colour_columns(one, lay.error_box, _BEST_GREEN)
    assert abs(np.median(xs) - (lay.error_box[0] + lay.error_box[2]) / 2) <= 1.5
    # zero training error (linear axis), only the total loss, extra keys, epochs that skip
    rows = [{"epoch": e, "train_accuracy": 1.0, "val_accuracy": 0.99, "train_loss": 0.0, "note": "x"}
            for e in (0, 5, 10)]
    img = vis.training_curve(rows)
    lay = vis.training_curve_layout(0, 10)
    for box in (lay.error_box, lay.loss_box):
        assert _ink_in(img, box) > 100
    xs, _ = _colour_columns(img, lay.loss_box, vis.PALETTE[3])  # no class-loss curve without its key
    assert xs.size == 0
    # a long run: many epochs still fit
    many = [_epoch(e, 0.9 + 0.09 * (1 - 0.9 ** e), train=0.8 + 0.199 * (1 - 0.9 ** e), loss=1 / e)
            for e in range(1, 201)]
    assert vis.training_curve(many).size == (1100, 500)


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
    err = info.value  # one clean error: no json/Pillow exception chained to it
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
