"""Run capszoo's ONNX exports in every installed ONNX runtime and compare them with onnxruntime.

    python scripts/onnx_runtimes.py OUT.json [--data-dir ../shared/data/mnist] [--digits 4]
                                             [--models capsnet-mnist,capsnet-mnist-deconv] [--runtimes ...]

For every registered model (the published weights where there are some, else the net initialized
as training does, seed 0) the whole net and its slices (the feature extractor and
``Reconstruct``, where the net has them) are exported with capszoo's converter and run in
onnxruntime, the ONNX reference evaluator, OpenVINO, OpenCV's DNN module and tract, each on real
MNIST test digits: once at batch 1, then at batch ``--digits`` in the same loaded model.  Prints
a markdown table (runtime, version, model, largest difference from onnxruntime at batch 1 and at
batch N, status) and writes the rows as JSON to OUT.json (atomically).  A runtime that refuses a
graph is reported with the operator and the node.  Exit status 1 when a runtime refuses a graph
or differs by more than 1e-5.

The reference evaluator runs transposed convolutions in Python loops: the ``deconv`` decoder
takes it about a minute and a half per call.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-5


def _model(name, workdir):
    """The loaded model ``name``: its published weights, else a seeded initialization."""
    import mxnet as mx

    import capszoo
    from capszoo import load_recipe
    from capszoo import initialize_net
    from capszoo import save_params

    card = capszoo.get_card(name)
    if card.weights is not None:
        return capszoo.load(name, backend="mxnet"), "published weights"
    net = initialize_net(card.build(), load_recipe(card.recipe), [mx.cpu()], 0)
    path = os.path.join(workdir, f"{name}-seed0.params")
    save_params(net, path)
    return capszoo.load(name, weights=path, backend="mxnet"), "initialized as training does (seed 0)"


def _blocks(model):
    """``(label, block, input shape)`` of the whole net and of its feature extractor and decoder."""
    out = [(model.card.name, model.net, (1,) + tuple(model.card.input_shape))]
    specs = []
    if model.card.feature_slice:
        specs.append(":".join(model.card.feature_slice))
    if "Reconstruct" in model.net.subnet_names:
        specs.append("Reconstruct")
    for spec in specs:
        block = model.take(spec)
        out.append((f"{model.card.name} [{spec}]", block, (1,) + tuple(block.input_shape)))
    return out


def _rows(names, images, runtimes, workdir):
    from capszoo._export import slice_inputs
    from capszoo.exporters import compare_runtimes, export_onnx

    rows = []
    for name in names:
        model, weights = _model(name, workdir)
        for label, block, shape in _blocks(model):
            path = os.path.join(workdir, label.replace(" ", "").replace("[", "-").replace(":", "-")
                                .replace("]", "") + ".onnx")
            export_onnx(block, path, input_shape=shape, output_names=list(block.output_names), model_name=label)
            x = slice_inputs(model, block, images)
            t = time.time()
            for row in compare_runtimes(path, x, runtimes=runtimes, model_label=label, atol=ATOL):
                row["weights"] = weights
                rows.append(row)
                print(f"  {label}: {row['runtime']} {row['status']}", file=sys.stderr, flush=True)
            print(f"{label}: {time.time() - t:.1f} s", file=sys.stderr, flush=True)
    return rows


def _fmt(d):
    return "-" if d is None else f"{d:.2g}"


def table(rows):
    """The rows as a markdown table."""
    n = rows[0]["batch"] if rows else "N"
    lines = [f"| runtime | version | model | batch 1 max abs diff | batch {n} max abs diff | status |",
             "| --- | --- | --- | ---: | ---: | --- |"]
    for r in rows:
        status = r["status"] if not r["error"] else f"{r['status']}: {r['error']}"
        lines.append(f"| {r['runtime']} | {r['version'] or '-'} | {r['model']} | {_fmt(r['diff_1'])} | "
                     f"{_fmt(r['diff_n'])} | {status.replace('|', '/')} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python scripts/onnx_runtimes.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="JSON file to write (atomically)")
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(REPO), "shared", "data", "mnist"),
                   help="folder with the MNIST idx files")
    p.add_argument("--digits", type=int, default=4, help="test digits: batch 1, then all of them (>= 2)")
    p.add_argument("--models", default=None, help="comma-separated model names (default: every registered one)")
    p.add_argument("--runtimes", default=None, help="comma-separated runtimes (default: all)")
    args = p.parse_args(argv)

    import capszoo
    from capszoo.utils import atomic_write_json
    from capszoo.data import load_mnist
    from capszoo.exporters import RUNTIMES, available_runtimes

    if args.digits < 2:
        p.error("--digits must be at least 2")
    images, _ = load_mnist("test", data_dir=args.data_dir)
    names = args.models.split(",") if args.models else capszoo.list_models()
    runtimes = args.runtimes.split(",") if args.runtimes else list(RUNTIMES)
    with tempfile.TemporaryDirectory(prefix="capszoo-runtimes-") as workdir:
        rows = _rows(names, images[:args.digits], runtimes, workdir)
    print(table(rows))
    atomic_write_json(args.out, {"atol": ATOL, "digits": args.digits, "available": available_runtimes(),
                                 "rows": rows, "table": table(rows)})
    print(f"\nwrote {args.out}")
    return 0 if all(r["status"] in ("ok", "not installed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
