"""The published (bundled) weights: the card's figures checked against the real file and net."""
import os

import pytest

import capszoo
from capszoo._hub import bundled_dir
from capszoo._weights import read_params, sha256_file
from capszoo.errors import WeightsNotAvailableError

CARD = capszoo.get_card("capsnet-mnist")
published = pytest.mark.skipif(CARD.weights is None, reason="no weights published yet")


@pytest.mark.skipif(CARD.weights is not None, reason="weights are published")
def test_no_random_weights_handed_out_as_pretrained():
    with pytest.raises(WeightsNotAvailableError, match="no pretrained weights are published for capsnet-mnist"):
        capszoo.load("capsnet-mnist")


@published
def test_bundled_file_matches_card():
    path = bundled_dir() / CARD.weights.filename
    assert CARD.weights.bundled and path.is_file()
    assert os.path.getsize(path) == CARD.weights.size_bytes
    assert sha256_file(path) == CARD.weights.sha256
    arrays = read_params(path)
    assert sum(a.size for a in arrays.values()) == CARD.num_params == 8_141_840
    assert round(CARD.weights.size_bytes / 1e6) == 33


@published
def test_pretrained_accuracy_is_the_cards(mnist_dir):
    # what a user runs on a fresh clone: `capszoo evaluate capsnet-mnist --data-dir ../shared/data/mnist`
    from click.testing import CliRunner
    from capszoo.cli import main

    r = CliRunner().invoke(main, ["evaluate", "capsnet-mnist", "--data-dir", str(mnist_dir)])
    assert r.exit_code == 0, r.output
    head = r.output.splitlines()
    assert head[0] == f"Model: capsnet-mnist  weights: {bundled_dir() / CARD.weights.filename}"
    errors = CARD.metrics["test_errors"]
    assert CARD.metrics["test_accuracy"] == (10_000 - errors) / 10_000
    assert head[1] == (f"Test accuracy: {100 * CARD.metrics['test_accuracy']:.2f} % "
                       f"({10_000 - errors:,}/10,000; {errors} errors)")


@published
def test_example_digits_classified(tmp_path):
    from click.testing import CliRunner
    from capszoo.cli import main

    here = os.path.join(os.path.dirname(__file__), "..", "examples", "digits")
    files = sorted(os.path.join(here, f) for f in os.listdir(here))
    r = CliRunner().invoke(main, ["classify", "capsnet-mnist", *files, "--json"])
    assert r.exit_code == 0, r.output
    import json
    words = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
             "nine": 9}
    got = {os.path.basename(e["file"]): e["class"] for e in json.loads(r.output)}
    expected = {os.path.basename(f): words[os.path.basename(f).split("-")[0]] for f in files}
    assert got == expected


@published
def test_card_training_summary_is_the_shipped_log():
    """The card's training figures are those of ``recipes/capsnet-mnist.metrics.jsonl``, the run's own log."""
    import json

    log = os.path.join(os.path.dirname(__file__), "..", "recipes", "capsnet-mnist.metrics.jsonl")
    with open(log, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    t = CARD.training
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert t["epochs_run"] == len(rows)
    # selection on validation only: the first epoch with the best validation accuracy
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    assert t["best_epoch"] == best["epoch"]
    assert CARD.metrics["val_accuracy"] == best["val_accuracy"]
    assert round(sum(r["epoch_seconds"] for r in rows) / 3600, 2) == t["wall_time_hours"]
    assert round(sum(r["images_per_second"] for r in rows) / len(rows), 1) == t["train_images_per_second"]
    assert t["recipe"] == "capsnet-mnist" and isinstance(t["seed"], int)
