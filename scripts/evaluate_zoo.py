"""Evaluate every zoo entry with published weights on the 10,000 MNIST test digits, against its card.

    python scripts/evaluate_zoo.py --data-dir ../shared/data/mnist [--json OUT] [--record]

For each entry: the accuracy ``capszoo evaluate NAME`` gives on this machine, the card's
figure (measured once, on the machine that published the weights) and the difference in
errors.  Exit status 1 when an entry differs by more than ``--tolerance`` errors (default 2:
another CPU's float rounding may flip a digit on a decision boundary).  The tests check
each card's figures cheaply, on the test digits the weights get wrong (the manifest's
``test_misclassified``, which ``scripts/publish_weights.py`` records) and a sample of the rest;
this script runs the full evaluation of every entry.  ``--record`` writes ``test_misclassified``
into a manifest that lacks it, only when this machine's error count is the card's.
"""
import argparse
import json
import os
import sys

import capszoo
from capszoo.data import load_mnist
from capszoo.utils import atomic_write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def manifest_path(name):
    """Entry ``name``'s weights manifest in this checkout, ``capszoo/pretrained/<name>.json``."""
    return os.path.join(REPO, "capszoo", "pretrained", f"{name}.json")


def record_misclassified(name, result):
    """Write ``result.misclassified`` into entry ``name``'s manifest (None: it has them already); refused
    when the counts differ."""
    path = manifest_path(name)
    with open(path, encoding="utf-8") as fh:
        manifest = json.load(fh)
    if "test_misclassified" in manifest:
        return None
    if result.errors != manifest["metrics"]["test_errors"]:
        return f"not recorded: {result.errors} errors here against the card's {manifest['metrics']['test_errors']}"
    manifest["test_misclassified"] = list(result.misclassified)
    atomic_write_json(path, manifest)
    return f"recorded {len(result.misclassified)} misclassified digits in {os.path.basename(path)}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--tolerance", type=int, default=2)
    ap.add_argument("--json", default=None, help="Also write the results to this file.")
    ap.add_argument("--record", action="store_true",
                    help="Write the misclassified digits into manifests that lack them (same error count only).")
    args = ap.parse_args(argv)
    images, labels = load_mnist("test", data_dir=args.data_dir)
    rows, worst = {}, 0
    for name in capszoo.list_models():
        card = capszoo.get_card(name)
        if card.weights is None:
            print(f"{name:<26} no published weights")
            continue
        result = capszoo.evaluate(capszoo.load(name), images, labels)
        diff = result.errors - card.metrics["test_errors"]
        worst = max(worst, abs(diff))
        rows[name] = {"accuracy": result.accuracy, "errors": result.errors,
                      "card_errors": card.metrics["test_errors"], "difference": diff}
        print(f"{name:<26} {100 * result.accuracy:.2f} % ({result.errors} errors; card {card.metrics['test_errors']},"
              f" difference {diff:+d})", flush=True)
        said = record_misclassified(name, result) if args.record else None
        if said:
            print(f"{'':<26} {said}")
    if args.json:
        atomic_write_json(args.json, rows)
    return 1 if worst > args.tolerance else 0


if __name__ == "__main__":
    sys.exit(main())
