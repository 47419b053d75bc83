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


def _check_summary(t, rows, val_accuracy):
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert t["epochs_run"] == len(rows)
    # selection on validation only: the first epoch with the best validation accuracy
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    assert t["best_epoch"] == best["epoch"]
    assert val_accuracy == best["val_accuracy"]
    assert round(sum(r["epoch_seconds"] for r in rows) / 3600, 2) == t["wall_time_hours"]
    assert round(sum(r["images_per_second"] for r in rows) / len(rows), 1) == t["train_images_per_second"]
    assert t["recipe"] in capszoo.list_recipes() and isinstance(t["seed"], int)


@published
def test_card_training_summary_is_the_shipped_log():
    """The card's training figures are those of ``recipes/<recipe>.metrics.jsonl``, the run's own log; for
    weights fine-tuned from earlier published ones, the card's ``init`` holds those of the earlier run, from
    its log (the fine-tuning beat them on validation: the rule that publishes weights)."""
    read_log = _script("readme_weights").read_log
    t = CARD.training
    _check_summary(t, read_log(t["recipe"]), CARD.metrics["val_accuracy"])
    init = t.get("init")
    if init:
        _check_summary(init, read_log(init["recipe"]), init["val_accuracy"])
        assert CARD.metrics["val_accuracy"] > init["val_accuracy"]
        assert init["sha256"] != CARD.weights.sha256 and len(init["sha256"]) == 64
        assert f"fine-tuned from the published weights {init['sha256'][:8]}" in t["weights"]


def _script(name):
    """``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_publish_weights_summary():
    """The card's description of the shipped file: raw or averaged weights, since when, and for a run continued
    with --init-weights/--init-log, from which weights."""
    summary = _script("publish_weights")._weights_summary
    assert summary(None) == "the weights themselves"
    assert summary({"decay": 0.999, "started_epoch": 0}) == (
        "exponential moving average of the weights (decay 0.999, from the first step)")
    assert summary({"decay": 0.999, "started_epoch": 3}) == (
        "exponential moving average of the weights (decay 0.999, started after epoch 3)")
    init = {"epochs": 12, "sha256": "86a1f49a" + "0" * 56}
    assert summary({"decay": 0.999, "started_epoch": 12}, init) == (
        "exponential moving average of the weights (decay 0.999, from the first step); the run went on after "
        "epoch 12 from its epoch-12 weights (86a1f49a) with a fresh optimizer state and the average restarted "
        "from them")
    assert summary(None, init) == ("the weights themselves; the run went on after epoch 12 from its epoch-12 "
                                   "weights (86a1f49a) with a fresh optimizer state")
    assert summary({"decay": 0.999, "started_epoch": 0}, {"epochs": 0, "sha256": init["sha256"]}) == (
        "exponential moving average of the weights (decay 0.999, from the first step)")
    finetuned = {"sha256": "17456aad" + "0" * 56, "recipe": "capsnet-mnist", "seed": 2, "best_epoch": 16}
    assert summary({"decay": 0.999, "started_epoch": 0}, {"epochs": 0, "sha256": finetuned["sha256"]},
                   finetuned) == (
        "exponential moving average of the weights (decay 0.999, from the first step); fine-tuned from the "
        "published weights 17456aad (recipe `capsnet-mnist`, seed 2, epoch 16) with a fresh optimizer state")


def test_publish_weights_finetuned_from():
    """A run started from a weights file without a log is published only when that file is the published one;
    the manifest then records it, with the figures of the run that made it."""
    import dataclasses

    from_ = _script("publish_weights")._finetuned_from
    assert from_(None, CARD) is None
    assert from_({"epochs": 12, "log": "m.jsonl", "sha256": "0" * 64, "weights": "w"}, CARD) is None
    card = dataclasses.replace(
        CARD, weights=capszoo.WeightsSource("capsnet-mnist-0123abcd.params", "0123abcd" * 8, 1, "r", "v"),
        metrics={"test_accuracy": 0.9956, "test_errors": 44, "val_accuracy": 0.9954},
        training={"recipe": "capsnet-mnist", "seed": 2, "best_epoch": 16, "epochs_run": 16, "wall_time_hours": 5.34,
                  "train_images_per_second": 52.4, "ctx": ["cpu(0)"], "weights": "w", "selection": "s"})
    init = {"epochs": 0, "log": None, "sha256": "0123abcd" * 8, "weights": "/x/capsnet-mnist-0123abcd.params"}
    assert from_(init, card) == {
        "sha256": "0123abcd" * 8, "filename": "capsnet-mnist-0123abcd.params", "recipe": "capsnet-mnist",
        "seed": 2, "best_epoch": 16, "epochs_run": 16, "wall_time_hours": 5.34, "train_images_per_second": 52.4,
        "ctx": ["cpu(0)"], "weights": "w", "val_accuracy": 0.9954}
    with pytest.raises(SystemExit, match="which are not the published weights"):
        from_({**init, "sha256": "f" * 64}, card)


@published
def test_readme_weights_table_is_the_cards():
    rw = _script("readme_weights")
    with open(rw.README, encoding="utf-8") as fh:
        text = fh.read()
    start, stop = rw.readme_section(text)
    table = text[start:stop]
    assert table == rw.current(), "README.md's weights table is stale: run python scripts/readme_weights.py"
    # the figures a reader looks for, from the card itself
    assert f"**{100 * CARD.metrics['test_accuracy']:.2f} %** ({CARD.metrics['test_errors']} errors in 10,000)" in table
    assert f"`capszoo/pretrained/{CARD.weights.filename}`, {CARD.weights.size_bytes:,} bytes" in table
    assert f"(seed {CARD.training['seed']})" in table


def test_readme_weights_table_render():
    import dataclasses

    rw = _script("readme_weights")
    card = dataclasses.replace(
        CARD,
        weights=capszoo.WeightsSource("capsnet-mnist-0123abcd.params", "0123abcd" * 8, 32_568_129, "r", "v"),
        metrics={"test_accuracy": 0.9968, "test_errors": 32, "val_accuracy": 0.9952},
        training={"recipe": "capsnet-mnist", "seed": 2, "best_epoch": 3, "epochs_run": 4, "wall_time_hours": 1.26,
                  "train_images_per_second": 50.04, "ctx": ["cpu(0)", "cpu(1)"], "weights": "the weights themselves"})
    history = [{"epoch": e, "val_errors": v} for e, v in [(1, 40), (2, 30), (3, 24), (4, 26)]]
    history[2]["val_accuracy_raw"] = 0.9940
    recipe = {"train": {"epochs": 4}, "data": {"validation_size": 5000}}
    assert rw.render(card, history, recipe).splitlines() == [
        "| | |",
        "| --- | --- |",
        "| MNIST test accuracy | **99.68 %** (32 errors in 10,000), measured once, no selection on the test set |",
        "| validation accuracy | 99.52 % (5,000 held-out training images; used to pick the epoch, "
        "the first with the fewest errors: 3 of 4 run; epoch 4: 26 errors against 24) |",
        "| weights | the weights themselves; raw weights 99.40 % on validation at epoch 3 |",
        "| training | recipe `capsnet-mnist` (seed 2), 4 of 4 epochs, context cpu(0), cpu(1), 1.3 h wall, "
        "50 images/s on average |",
        "| file | `capszoo/pretrained/capsnet-mnist-0123abcd.params`, 32,568,129 bytes, sha256 `0123abcd0123...` |",
    ]
    # the best epoch is the last: no "later epochs" clause; an unfinished run says so
    recipe["train"]["epochs"] = 50
    card = dataclasses.replace(card, training={**card.training, "best_epoch": 4})
    row = rw.render(card, history, recipe).splitlines()[3]
    assert row == ("| validation accuracy | 99.52 % (5,000 held-out training images; used to pick the epoch, "
                   "the first with the fewest errors: 4 of 4 run so far) |")
    # weights fine-tuned from earlier published ones: the earlier run in the training row, its validation figure
    init = {"recipe": "capsnet-mnist", "seed": 2, "best_epoch": 16, "epochs_run": 16, "wall_time_hours": 5.34,
            "train_images_per_second": 52.4, "val_accuracy": 0.9954}
    card = dataclasses.replace(card, training={**card.training, "recipe": "capsnet-mnist-finetune", "init": init})
    rows = rw.render(card, history, recipe).splitlines()
    assert rows[3].endswith("4 of 4 run so far; 99.54 % before fine-tuning) |")
    assert rows[5] == ("| training | recipe `capsnet-mnist-finetune` (seed 2), 4 of 50 epochs, context cpu(0), cpu(1), "
                       "1.3 h wall, 50 images/s on average; fine-tuned from recipe `capsnet-mnist` (seed 2): its "
                       "epoch 16 of 16 run, 5.3 h wall, 52 images/s on average |")


def test_readme_weights_check_mode(tmp_path, monkeypatch, capsys):
    rw = _script("readme_weights")
    with open(rw.README, encoding="utf-8") as fh:
        text = fh.read()
    start, stop = rw.readme_section(text)
    stale = tmp_path / "README.md"
    stale.write_text(text[:start] + "| old | table |\n" + text[stop:], encoding="utf-8")
    monkeypatch.setattr(rw, "README", str(stale))
    monkeypatch.setattr(rw, "current", lambda: text[start:stop])
    assert rw.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert "| old | table |" in stale.read_text(encoding="utf-8")  # --check writes nothing
    assert rw.main([]) == 0
    assert stale.read_text(encoding="utf-8") == text
    assert rw.main(["--check"]) == 0
    with pytest.raises(ValueError, match="lacks the markers"):
        rw.readme_section("no markers here")


@published
@pytest.mark.parametrize("case", ["not better", "other recipe", "other weights"])
def test_publish_weights_refuses_before_measuring_the_test_set(tmp_path, case):
    """A fine-tuning run is published only when it beats the published weights on validation, from a shipped
    recipe and from the published file; a refused run never reaches the test set (here a folder without it)."""
    import json
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(bundled_dir() / CARD.weights.filename, run / "best.params")
    recipe = capszoo.load_recipe("capsnet-mnist-finetune").to_dict()
    if case == "other recipe":
        recipe["optimizer"]["learning_rate"] = 0.01
    init = {"weights": "w.params", "sha256": "f" * 64 if case == "other weights" else CARD.weights.sha256,
            "log": None, "log_sha256": None, "epochs": 0}
    (run / "run.json").write_text(json.dumps({"recipe": recipe, "ctx": ["cpu(0)"], "init": init}))
    val = CARD.metrics["val_accuracy"] + (0 if case == "not better" else 0.0002)
    (run / "checkpoint.json").write_text(json.dumps({"history": [], "best": {"epoch": 1, "val_accuracy": val}}))
    message = {"not better": "does not beat that of the published weights it fine-tunes",
               "other recipe": "differs from the shipped capsnet-mnist-finetune in: optimizer",
               "other weights": "which are not the published weights"}[case]
    before = sorted(os.listdir(bundled_dir()))
    with pytest.raises(SystemExit, match=message):
        _script("publish_weights").main([str(run), "--data-dir", str(tmp_path / "no-mnist-here")])
    assert sorted(os.listdir(bundled_dir())) == before


@published
def test_published_training_figure_is_the_logs_drawing(tmp_path):
    """docs/figures/training.png is training_curve's drawing of every epoch behind the published weights (as
    scripts/make_figures.py draws it: the run they fine-tune, if any, then their own run)."""
    from capszoo import _visualize as vis

    fig = os.path.join(os.path.dirname(__file__), "..", "docs", "figures", "training.png")
    out = tmp_path / "training.png"
    vis.training_curve(_script("readme_weights").full_history(CARD), out, title="capsnet-mnist: training curve")
    assert out.read_bytes() == open(fig, "rb").read()
