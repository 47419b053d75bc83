#!/usr/bin/env python
"""Draw the README pictures into docs/figures from the MNIST test set.

    python scripts/make_figures.py                                      # the published weights
    python scripts/make_figures.py --weights runs/capsnet-mnist/best.params

Needs matplotlib (pip install -c constraints.txt -e ".[viz]").  Writes, deterministically (same
weights, data, seed and matplotlib -> same bytes):

    reconstructions.png  the first test digit of each class beside its reconstruction
    tweaks.png           the 16 x 11 pose-tweak grid of the first test digit
    features.png         PCA of the 16-D capsules of --samples test digits (seeded choice)
    summary.png          the summary graphic (sub-nets, shapes, parameter counts)
    routing.png          routing by agreement for the first test digit: coupling coefficients of the
                         1152 primary capsules to the predicted class per iteration, and the votes
    training.png         error rates and training loss per epoch, from --metrics (default: the
                         published weights' logs, recipes/<recipe>.metrics.jsonl, with the
                         run they fine-tune before them; see readme_weights.full_history)
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="A .params file (default: the published capsnet-mnist weights).")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "mnist"),
                    help="Folder with the MNIST idx files (default: ../shared/data/mnist beside the repository).")
    ap.add_argument("--out", default=str(REPO / "docs" / "figures"), help="Output folder (default: docs/figures).")
    ap.add_argument("--samples", type=int, default=500, help="Test digits in the feature-space plot (default 500).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the sample choice and drawing order (default 0).")
    ap.add_argument("--metrics", default=None,
                    help="Per-epoch training log (JSONL) for training.png (default: the published weights' "
                         "logs in recipes/).")
    ap.add_argument("--note", default=None,
                    help="Small print under each picture, e.g. to mark placeholder pictures from untrained weights.")
    args = ap.parse_args(argv)

    import numpy as np

    import capszoo
    from capszoo import viz as vis
    from capszoo.data import load_mnist
    from capszoo.errors import CapszooError, InvalidInputError

    try:
        if args.samples < 2:
            raise InvalidInputError(f"--samples must be at least 2, got {args.samples}")
        os.makedirs(args.out, exist_ok=True)
        out = pathlib.Path(args.out)
        # the training curve needs no model or data: drawn first, from the per-epoch log
        from readme_weights import full_history   # beside this script (sys.path[0] when it runs)
        metrics = args.metrics or full_history(capszoo.get_card("capsnet-mnist"))
        fig = vis.training_curve(metrics, out / "training.png", title="capsnet-mnist: training curve")
        print(f"wrote {out / 'training.png'}  ({' x '.join(map(str, vis.pixel_size(fig)))})")
        images, labels = load_mnist("test", data_dir=args.data_dir)
        if args.samples > len(images):
            raise InvalidInputError(
                f"--samples {args.samples} is more than the {len(images)} MNIST test images")
        model = capszoo.load("capsnet-mnist", weights=args.weights)

        first = [int(np.flatnonzero(labels == k)[0]) for k in range(10)]
        pictures = {
            "reconstructions.png": lambda: vis.reconstruction_panel(
                model, images[first], labels=labels[first], columns=5, note=args.note),
            "tweaks.png": lambda: vis.tweak_grid(model, images[0], note=args.note),
            "features.png": lambda: vis.feature_space_plot(
                model, *_sample(images, labels, args.samples, args.seed), seed=args.seed, note=args.note),
            "summary.png": lambda: vis.summary_graphic(model.info()),
            "routing.png": lambda: vis.routing_figure(model, images[0]),
        }
        for name, draw in pictures.items():
            fig = draw()
            vis.save_image(fig, out / name)
            print(f"wrote {out / name}  ({' x '.join(map(str, vis.pixel_size(fig)))})")
    except CapszooError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


def _sample(images, labels, n, seed):
    import numpy as np

    idx = np.sort(np.random.RandomState(seed).choice(len(images), n, replace=False))
    return images[idx], labels[idx]


if __name__ == "__main__":
    sys.exit(main())
