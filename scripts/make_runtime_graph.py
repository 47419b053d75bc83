"""Write the weight-less ONNX graphs that ``capszoo classify`` runs on onnxruntime.

    python scripts/make_runtime_graph.py

For every model card with a ``runtime_graph``, exports the net with capszoo's ONNX
exporter, strips the weights (see capszoo/_ort.py) and writes
capszoo/pretrained/<runtime_graph>.  Run it after changing the net's graph;
tests/test_ort.py fails until the shipped graph equals a fresh build.
"""
import os
import sys

from capszoo.utils import atomic_write_bytes
from capszoo._ort import build_runtime_graph
from capszoo import model_cards

PRETRAINED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "capszoo", "pretrained")


def main():
    for card in model_cards():
        if not card.runtime_graph:
            continue
        data = build_runtime_graph(card)
        path = os.path.join(PRETRAINED, card.runtime_graph)
        atomic_write_bytes(path, data)
        print(f"wrote {path} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
