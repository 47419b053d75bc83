"""Publish a training run's best weights as the package's bundled capsnet-mnist weights.

    python scripts/publish_weights.py RUN_DIR --data-dir ../shared/data/mnist

1. validates RUN_DIR/best.params against the architecture;
2. measures the test accuracy once, on the 10,000 MNIST test images;
3. copies the file to capszoo/pretrained/capsnet-mnist-<sha256[:8]>.params (and removes
   an older bundled file);
4. writes capszoo/pretrained/capsnet-mnist.json, the manifest the model card is built
   from (file name, size, sha256, Hub location, metrics, training summary);
5. copies the run's per-epoch log to recipes/capsnet-mnist.metrics.jsonl;
6. redraws the README pictures in docs/figures with scripts/make_figures.py (the
   training curve from that log, the rest from the newly bundled weights);
7. rewrites the README's table of the shipped weights with scripts/readme_weights.py.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import capszoo
from capszoo._io import atomic_write_json, atomic_write_text
from capszoo._weights import load_params_into, sha256_file
from capszoo.data import load_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(REPO, "capszoo", "pretrained")
HF_REPO_ID = "capszoo/capsnet-mnist"


def _weights_summary(ema, init=None):
    """What the shipped file holds, for the card: the raw weights or their moving average, and since when;
    for a run continued from another's weights (``run.json``'s ``init``), from which file and epoch."""
    n = init["epochs"] if init else 0
    cont = (f"; the run went on after epoch {n} from its epoch-{n} weights ({init['sha256'][:8]}) with a fresh "
            "optimizer state" + (" and the average restarted from them" if ema else "")) if n else ""
    if not ema:
        return "the weights themselves" + cont
    since = "from the first step" if ema["started_epoch"] in (0, n) else f"started after epoch {ema['started_epoch']}"
    return f"exponential moving average of the weights (decay {ema['decay']}, {since}){cont}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--hf-revision", default=None, help="Hub revision (default: v0.1-<sha8>)")
    args = ap.parse_args(argv)

    src = os.path.join(args.run_dir, "best.params")
    net = capszoo.CapsNet()
    load_params_into(net, src)  # validates names, shapes, dtypes, finiteness
    net.hybridize(static_alloc=True)
    images, labels = load_mnist("test", data_dir=args.data_dir)
    result = capszoo.evaluate(net, images, labels)
    sha = sha256_file(src)
    fname = f"capsnet-mnist-{sha[:8]}.params"
    with open(os.path.join(args.run_dir, "checkpoint.json"), encoding="utf-8") as fh:
        ck = json.load(fh)
    history = ck["history"]
    best_epoch = ck["best"]["epoch"]
    with open(os.path.join(args.run_dir, "run.json"), encoding="utf-8") as fh:
        run = json.load(fh)

    for f in os.listdir(PRETRAINED):
        if f.startswith("capsnet-mnist-") and f.endswith(".params") and f != fname:
            os.unlink(os.path.join(PRETRAINED, f))
    dst = os.path.join(PRETRAINED, fname)
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    manifest = {
        "filename": fname,
        "sha256": sha,
        "size_bytes": os.path.getsize(dst),
        "hf_repo_id": HF_REPO_ID,
        "hf_revision": args.hf_revision or f"v0.1-{sha[:8]}",
        "bundled": True,
        "metrics": {"test_accuracy": result.accuracy, "test_errors": result.errors,
                    "val_accuracy": ck["best"]["val_accuracy"]},
        "training": {
            "recipe": "capsnet-mnist",
            "seed": run["recipe"]["train"]["seed"],
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            "wall_time_hours": round(sum(m["epoch_seconds"] for m in history) / 3600, 2),
            "train_images_per_second": round(sum(m["images_per_second"] for m in history) / len(history), 1),
            "ctx": run.get("ctx"),
            "selection": "best validation accuracy (5,000 held-out training images); test set used once",
            "weights": _weights_summary(ck.get("ema"), run.get("init")),
        },
    }
    atomic_write_json(os.path.join(PRETRAINED, "capsnet-mnist.json"), manifest)
    atomic_write_text(os.path.join(REPO, "recipes", "capsnet-mnist.metrics.jsonl"),
                      "".join(json.dumps(m) + "\n" for m in history))
    print(json.dumps(manifest, indent=2))
    print(result.format())
    # the README pictures (training curve included, drawn the one way make_figures draws them) and
    # the README's weights table; in new processes, which read the manifest just written (this
    # one's card still names the old file)
    rc = subprocess.call([sys.executable, os.path.join(REPO, "scripts", "make_figures.py"),
                          "--data-dir", args.data_dir])
    return rc or subprocess.call([sys.executable, os.path.join(REPO, "scripts", "readme_weights.py")])


if __name__ == "__main__":
    sys.exit(main())
