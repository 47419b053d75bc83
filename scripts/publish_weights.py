"""Publish a training run's best weights as a zoo entry's pretrained weights.

    python scripts/publish_weights.py RUN_DIR --data-dir ../shared/data/mnist

The entry is the model the run's recipe names (``model = "..."``).

1. validates RUN_DIR/best.params against the entry's architecture, and the run: a run of a
   shipped recipe, and for a fine-tuning of the published weights, better than them on
   validation;
2. measures the test accuracy once, on the 10,000 MNIST test images;
3. copies the file to ``<name>-<sha256[:8]>.params`` in ``capszoo/pretrained`` for the entry
   whose weights ship inside the package (``capsnet-mnist``), else in ``weights/`` at the top
   of the repository (found there from a source checkout, and on the Hugging Face Hub by
   everyone else: ``capszoo push``); an older file of the same entry is removed;
4. writes ``capszoo/pretrained/<name>.json``, the manifest the model card is built
   from (file name, size, sha256, Hub location, metrics, training summary); a run that
   fine-tunes the published weights (``capszoo train RECIPE --init-weights <them>``, a
   second stage such as ``capsnet-mnist-finetune``) records them and their training
   summary as its ``init``;
5. copies the run's per-epoch log to recipes/<the run's recipe>.metrics.jsonl;
6. rewrites the README's model and ablation tables (scripts/zoo_tables.py);
7. for the bundled entry: redraws the README pictures in docs/figures with
   scripts/make_figures.py and rewrites the README's table of the shipped weights with
   scripts/readme_weights.py.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import capszoo
from capszoo.utils import atomic_write_json, atomic_write_text
from capszoo import load_params_into, sha256_file
from capszoo.data import load_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(REPO, "capszoo", "pretrained")
#: Weights of the entries that do not ship inside the package (a source checkout finds them here).
CHECKOUT_WEIGHTS = os.path.join(REPO, "weights")
#: The entry whose weights ship inside the package.
BUNDLED = "capsnet-mnist"


def _weights_summary(ema, init=None, finetuned=None):
    """What the shipped file holds, for the card: the raw weights or their moving average, and since when;
    for a run continued from another's weights (``run.json``'s ``init``), from which file and epoch; for a
    run fine-tuning published weights (``finetuned``, the ``init`` entry :func:`_finetuned_from` makes),
    from which."""
    n = init["epochs"] if init else 0
    cont = (f"; the run went on after epoch {n} from its epoch-{n} weights ({init['sha256'][:8]}) with a fresh "
            "optimizer state" + (" and the average restarted from them" if ema else "")) if n else ""
    if finetuned:
        cont += (f"; fine-tuned from the published weights {finetuned['sha256'][:8]} (recipe "
                 f"`{finetuned['recipe']}`, seed {finetuned['seed']}, epoch {finetuned['best_epoch']}) with a "
                 "fresh optimizer state")
    if not ema:
        return "the weights themselves" + cont
    since = "from the first step" if ema["started_epoch"] in (0, n) else f"started after epoch {ema['started_epoch']}"
    return f"exponential moving average of the weights (decay {ema['decay']}, {since}){cont}"


def _finetuned_from(init, card):
    """For a run started from a weights file without a log (``run.json``'s ``init``): the published weights
    it fine-tunes (``card``'s, which it must be: a file of unknown origin cannot be described), as the
    manifest's ``training.init`` entry (their recipe, seed, epochs, selection and figures). None for a
    run from the seeded initialization or one continuing a run (with its log)."""
    if not init or init.get("log") or init.get("epochs"):
        return None
    if card.weights is None or init["sha256"] != card.weights.sha256:
        raise SystemExit(f"the run starts from {init['weights']} (sha256 {init['sha256'][:12]}...), which are not "
                         "the published weights: publish runs from the seeded initialization, or fine-tuning "
                         "the published file")
    t = card.training
    return {"sha256": card.weights.sha256, "filename": card.weights.filename,
            **{k: t[k] for k in ("recipe", "seed", "best_epoch", "epochs_run", "wall_time_hours",
                                 "train_images_per_second", "ctx", "weights") if k in t},
            "val_accuracy": card.metrics["val_accuracy"]}


def _load_run(run_dir):
    """(checkpoint.json, run.json) of a training run folder."""
    with open(os.path.join(run_dir, "checkpoint.json"), encoding="utf-8") as fh:
        ck = json.load(fh)
    with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as fh:
        run = json.load(fh)
    return ck, run


def _check_recipe(run):
    """The run's recipe, which must be a shipped one (epochs, batch size and seed aside)."""
    recipe = run["recipe"]["name"]
    shipped = capszoo.load_recipe(recipe).to_dict()   # a RecipeError when capszoo does not ship it
    changed = sorted(k for k in shipped if k != "train" and shipped[k] != run["recipe"][k])
    if changed:
        raise SystemExit(f"the run's recipe differs from the shipped {recipe} in: {', '.join(changed)}; "
                         "publish only runs of a shipped recipe (--epochs, --batch-size, --seed aside)")
    return recipe


def _install(src, card, sha):
    """Copy ``src`` to its published place (atomically) and remove the entry's older file; the path."""
    folder = PRETRAINED if card.name == BUNDLED else CHECKOUT_WEIGHTS
    os.makedirs(folder, exist_ok=True)
    fname = f"{card.name}-{sha[:8]}.params"
    mine = re.compile(re.escape(card.name) + r"-[0-9a-f]{8}\.params")
    for f in os.listdir(folder):
        if mine.fullmatch(f) and f != fname:
            os.unlink(os.path.join(folder, f))
    dst = os.path.join(folder, fname)
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    return dst


def _manifest(card, dst, sha, result, ck, run, finetuned, hf_revision):
    history = ck["history"]
    return {
        "filename": os.path.basename(dst),
        "sha256": sha,
        "size_bytes": os.path.getsize(dst),
        "hf_repo_id": f"capszoo/{card.name}",
        "hf_revision": hf_revision or f"v0.1-{sha[:8]}",
        "bundled": card.name == BUNDLED,
        "metrics": {"test_accuracy": result.accuracy, "test_errors": result.errors,
                    "val_accuracy": ck["best"]["val_accuracy"]},
        # the test digits these weights get wrong: the tests check the card's figure on them cheaply
        "test_misclassified": list(result.misclassified),
        "training": {
            "recipe": run["recipe"]["name"],
            "seed": run["recipe"]["train"]["seed"],
            "best_epoch": ck["best"]["epoch"],
            "epochs_run": len(history),
            "wall_time_hours": round(sum(m["epoch_seconds"] for m in history) / 3600, 2),
            "train_images_per_second": round(sum(m["images_per_second"] for m in history) / len(history), 1),
            "ctx": run.get("ctx"),
            "selection": "best validation accuracy (5,000 held-out training images); test set used once",
            "weights": _weights_summary(ck.get("ema"), run.get("init"), finetuned),
            **({"init": finetuned} if finetuned else {}),
        },
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--hf-revision", default=None, help="Hub revision (default: v0.1-<sha8>)")
    args = ap.parse_args(argv)

    src = os.path.join(args.run_dir, "best.params")
    ck, run = _load_run(args.run_dir)
    recipe = _check_recipe(run)
    card = capszoo.get_card(run["recipe"]["model"])
    net = card.build()
    load_params_into(net, src)  # validates names, shapes, dtypes, finiteness
    finetuned = _finetuned_from(run.get("init"), card)
    if finetuned and not ck["best"]["val_accuracy"] > finetuned["val_accuracy"]:
        # the rule that publishes weights: better on validation than those they replace
        raise SystemExit(f"the run's best validation accuracy, {ck['best']['val_accuracy']}, does not beat that of "
                         f"the published weights it fine-tunes, {finetuned['val_accuracy']}: nothing to publish "
                         "(the test set is not measured)")
    # the test set, once, after every check, through what `capszoo evaluate NAME` runs
    images, labels = load_mnist("test", data_dir=args.data_dir)
    result = capszoo.evaluate(capszoo.load(card.name, weights=src), images, labels)
    sha = sha256_file(src)
    dst = _install(src, card, sha)
    manifest = _manifest(card, dst, sha, result, ck, run, finetuned, args.hf_revision)
    atomic_write_json(os.path.join(PRETRAINED, f"{card.name}.json"), manifest)
    atomic_write_text(os.path.join(REPO, "recipes", f"{recipe}.metrics.jsonl"),
                      "".join(json.dumps(m) + "\n" for m in ck["history"]))
    print(json.dumps(manifest, indent=2))
    print(result.format())
    # the README's model and ablation tables, in a new process (it reads the manifest just written)
    rc = subprocess.call([sys.executable, os.path.join(REPO, "scripts", "zoo_tables.py")])
    if rc or card.name != BUNDLED:
        return rc
    # the README pictures (training curve included, drawn the one way make_figures draws them) and
    # the README's weights table; in new processes, which read the manifest just written (this
    # one's card still names the old file)
    rc = subprocess.call([sys.executable, os.path.join(REPO, "scripts", "make_figures.py"),
                          "--data-dir", args.data_dir])
    return rc or subprocess.call([sys.executable, os.path.join(REPO, "scripts", "readme_weights.py")])


if __name__ == "__main__":
    sys.exit(main())
