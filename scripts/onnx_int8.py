"""Accuracy and speed of capszoo's int8 ONNX export against the float32 one, in onnxruntime.

    python scripts/onnx_int8.py [--model capsnet-mnist] [--data-dir ../shared/data/mnist] [--threads 2]
                                [--rounds 5] [--out results.json]

Exports the model in float32 and int8 (``capszoo export --format onnx [--dtype int8]``), classifies
the 10,000 MNIST test digits with both, then times both at batch 1, 32 and 128, alternating between
them (rounds of about a second each, medians), and prints the figures (JSON to ``--out``, atomically).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _accuracy(sess, x, labels):
    p = np.concatenate([sess.run(["probabilities"], {"data": x[i:i + 250]})[0] for i in range(0, len(x), 250)])
    return float((p.argmax(1) == labels).mean()), p.argmax(1)


def _speed(sessions, x, batches, rounds):
    out = {}
    for b in batches:
        xb = np.ascontiguousarray(x[:b])
        iters = {}
        for name, s in sessions.items():
            s.run(None, {"data": xb})
            t = time.perf_counter()
            s.run(None, {"data": xb})
            iters[name] = max(1, round(1.0 / (time.perf_counter() - t)))
        ips = {name: [] for name in sessions}
        names = list(sessions)
        for r in range(rounds):
            for name in names[r % 2:] + names[:r % 2]:
                t = time.perf_counter()
                for _ in range(iters[name]):
                    sessions[name].run(None, {"data": xb})
                ips[name].append(b * iters[name] / (time.perf_counter() - t))
        out[b] = {name: statistics.median(v) for name, v in ips.items()}
        print(f"batch {b:4d}: " + "  ".join(f"{n} {v:.1f} images/s" for n, v in out[b].items())
              + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python scripts/onnx_int8.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="capsnet-mnist")
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(REPO), "shared", "data", "mnist"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON file for the figures")
    args = p.parse_args(argv)

    from capszoo import export_model
    from capszoo.utils import atomic_write_json
    from capszoo.data import load_mnist

    images, labels = load_mnist("test", data_dir=args.data_dir)
    x = (images.astype(np.float32) / 255)[:, None]
    with tempfile.TemporaryDirectory(prefix="capszoo-int8-") as tmp:
        paths = {d: export_model(args.model, fmt="onnx", dtype=d, out_dir=tmp)["files"][0]["path"]
                 for d in ("float32", "int8")}
        sizes = {d: os.path.getsize(p) for d, p in paths.items()}
        sessions = {d: _session(p, args.threads) for d, p in paths.items()}
        acc32, pred32 = _accuracy(sessions["float32"], x, labels)
        acc8, pred8 = _accuracy(sessions["int8"], x, labels)
        print(f"{args.model}, {len(x):,} MNIST test digits: float32 {100 * acc32:.2f} %, int8 {100 * acc8:.2f} %, "
              f"decisions agree {100 * float((pred32 == pred8).mean()):.2f} %; files {sizes['float32']:,} and "
              f"{sizes['int8']:,} bytes", flush=True)
        speed = _speed(sessions, x, (1, 32, 128), args.rounds)
    if args.out:
        atomic_write_json(args.out, {"model": args.model, "test_images": int(len(x)), "accuracy": {
            "float32": acc32, "int8": acc8}, "agreement": float((pred32 == pred8).mean()), "bytes": sizes,
            "images_per_second": {str(b): v for b, v in speed.items()}, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
