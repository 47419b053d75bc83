"""Evaluate every zoo entry with published weights on the 10,000 MNIST test digits, against its card.

    python scripts/evaluate_zoo.py --data-dir ../shared/data/mnist [--json OUT]

For each entry: the accuracy ``capszoo evaluate NAME`` gives on this machine, the card's
figure (measured once, on the machine that published the weights) and the difference in
errors.  Exit status 1 when an entry differs by more than ``--tolerance`` errors (default 2:
another CPU's float rounding may flip a digit on a decision boundary).  The tests check
each card's figures cheaply; this script runs the full evaluation of every entry.
"""
import argparse
import json
import os
import sys

import capszoo
from capszoo.data import load_mnist


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--tolerance", type=int, default=2)
    ap.add_argument("--json", default=None, help="Also write the results to this file.")
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
    if args.json:
        with open(args.json + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 1 if worst > args.tolerance else 0


if __name__ == "__main__":
    sys.exit(main())
