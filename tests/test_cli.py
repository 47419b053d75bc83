"""The click CLI: list, info, classify, evaluate; exit codes and one-line errors."""
import json

import pytest
from click.testing import CliRunner

from capszoo.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_help_on_every_command(runner):
    r = runner.invoke(main, ["--help"])
    assert r.exit_code == 0
    assert {"list", "info", "classify", "evaluate", "train", "export", "launch", "reconstruct", "tweak",
            "features"} <= set(main.commands)
    for cmd in main.commands:
        assert cmd in r.output
        sub = runner.invoke(main, [cmd, "--help"])
        assert sub.exit_code == 0 and "Usage:" in sub.output


def test_list(runner):
    r = runner.invoke(main, ["list"])
    assert r.exit_code == 0 and r.output.startswith("capsnet-mnist")
    r = runner.invoke(main, ["list", "--json"])
    d = json.loads(r.output)
    assert d[0]["name"] == "capsnet-mnist" and d[0]["num_params"] == 8_141_840


def test_info_table_and_json(runner):
    r = runner.invoke(main, ["info", "capsnet-mnist"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "Number of layers: 82 | Parameter count: 8,141,840 | Trained size: 33 MB"
    r = runner.invoke(main, ["info", "CapsNet Trained on MNIST Data", "--json"])
    d = json.loads(r.output)
    assert d["num_params"] == 8_141_840 and d["num_layers"] == 82
    assert d["arrays"]["PrimaryCaps.weight"]["elements"] == 5_308_416


def test_unknown_model_is_one_line_error(runner):
    r = runner.invoke(main, ["info", "capsnet-mnst"])
    assert r.exit_code == 1
    assert r.output.strip().startswith("Error: unknown model 'capsnet-mnst'")
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_classify(runner, seeded_weights, seeded_model, mnist_test, digit_files):
    images, _ = mnist_test
    files = digit_files
    expected = seeded_model(list(images[:3]))
    r = runner.invoke(main, ["classify", "capsnet-mnist", *files, "--weights", seeded_weights, "--json", "--top", "3"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert [e["class"] for e in d] == expected and all(len(e["top"]) == 3 for e in d)
    r = runner.invoke(main, ["classify", "capsnet-mnist", *files, "--weights", seeded_weights])
    assert r.exit_code == 0 and len(r.output.splitlines()) == 3 and "(p=" in r.output


def test_classify_bad_file_is_clean_error(runner, seeded_weights, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    r = runner.invoke(main, ["classify", "capsnet-mnist", str(bad), "--weights", seeded_weights])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "Traceback" not in r.output
    r = runner.invoke(main, ["classify", "capsnet-mnist", str(tmp_path / "missing.png"), "--weights", seeded_weights])
    assert r.exit_code == 1 and "missing.png" in r.output


def _write_mnist_test_subset(folder, images, labels):
    """The first ``len(images)`` test digits as the two gzipped idx files ``capszoo evaluate`` reads."""
    import gzip
    import struct

    folder.mkdir()
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes())
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 2049, len(labels)) + labels.tobytes())
    return folder


@pytest.mark.slow
def test_evaluate_with_params_file(runner, seeded_weights, seeded_model, mnist_test, tmp_path):
    # 300 test digits: the CLI's figures are the library's, on the same weights and images (the full
    # test set through the CLI is run once, with the published weights, in test_pretrained.py)
    import capszoo

    images, labels = mnist_test[0][:300], mnist_test[1][:300]
    data = _write_mnist_test_subset(tmp_path / "mnist300", images, labels)
    r = runner.invoke(main, ["evaluate", seeded_weights, "--data-dir", str(data), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    want = capszoo.evaluate(seeded_model, images, labels)
    assert d["count"] == 300 and d["weights"] == seeded_weights
    assert (d["accuracy"], d["errors"]) == (want.accuracy, want.errors)
    assert d["confusion"] == want.confusion.tolist() and sum(map(sum, d["confusion"])) == 300
    assert d["errors"] == 300 - round(d["accuracy"] * 300)
    assert d["misclassified"] == list(want.misclassified) and len(d["misclassified"]) == d["errors"]
    pred = seeded_model.run(images[:, None].astype("float32") / 255)[0].argmax(axis=1)
    assert d["misclassified"] == [i for i in range(300) if pred[i] != labels[i]]


def test_bad_ctx_is_clean_error(runner, mnist_dir, tmp_path):
    r = runner.invoke(main, ["train", "capsnet-mnist", "--ctx", "tpu:0", "--data-dir", str(mnist_dir),
                             "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "cannot parse context 'tpu:0'" in r.output
    r = runner.invoke(main, ["train", "capsnet-mnist", "--ctx", "gpu:0", "--data-dir", str(mnist_dir),
                             "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "gpu(0) not available" in r.output


@pytest.mark.slow
def test_train_init_weights_and_log(runner, mnist_dir, tmp_path):
    """capszoo train --init-weights W --init-log LOG continues a finished run at the epoch after LOG's last;
    --init-log alone is a one-line error."""
    quick = ["--limit", "600", "--batch-size", "16", "--max-steps", "1", "--validation-size", "100",
             "--data-dir", str(mnist_dir)]
    a, b = tmp_path / "a", tmp_path / "b"
    r = runner.invoke(main, ["train", "capsnet-mnist", "--epochs", "1", "--out", str(a), *quick])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["train", "capsnet-mnist", "--epochs", "2", "--out", str(b), *quick,
                             "--init-log", str(a / "metrics.jsonl")])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == (
        "Error: --init-log needs --init-weights: the weights after the log's last epoch")
    r = runner.invoke(main, ["train", "capsnet-mnist", "--epochs", "2", "--out", str(b), *quick,
                             "--init-weights", str(a / "best.params"), "--init-log", str(a / "metrics.jsonl")])
    assert r.exit_code == 0, r.output
    assert "epoch 2: loss" in r.output and "epoch 1: loss" not in r.output
    lines = (b / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == (a / "metrics.jsonl").read_text().splitlines()[0] and json.loads(lines[1])["epoch"] == 2
