"""Inference speed of every zoo entry at batch 128 on this machine: bench/results/<date>-zoo-speed.json.

    python scripts/zoo_speed.py --data-dir ../shared/data/mnist [--repeats 7]

Each entry's net (seeded weights: speed does not depend on their values) runs on both engines, on
the first 128 MNIST test digits: hybridized with static memory on MXNet (the path of ``capszoo
evaluate``), and ``model.run`` on onnxruntime (the path ``backend="auto"`` takes), every output
computed; two warm-up calls each, then ``--repeats`` timed calls alternating between the engines,
medians.  The file records the machine's CPU features and thread count beside the figures;
``scripts/zoo_tables.py`` puts them in the README's ablation table.
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

import capszoo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 128


def measure(name, x, repeats, folder):
    """``{engine: {"images_per_second", "seconds_per_batch"}}`` of entry ``name`` on batch ``x``."""
    import mxnet as mx
    from capszoo import initialize_net, save_params

    card = capszoo.get_card(name)
    net = initialize_net(card.build(), capszoo.load_recipe(card.recipe), [mx.cpu()], 0)
    weights = os.path.join(folder, f"{name}.params")
    save_params(net, weights)
    net.hybridize(static_alloc=True, static_shape=True)
    model, xs = capszoo.load(name, weights=weights, backend="onnxruntime"), x.asnumpy()
    calls = {"mxnet": lambda: (net(x), mx.nd.waitall()), "onnxruntime": lambda: model.run(xs)}
    for call in calls.values():
        call()
        call()
    times = {engine: [] for engine in calls}
    for _ in range(repeats):
        for engine, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[engine].append(time.perf_counter() - t0)
    return {engine: {"images_per_second": round(BATCH / statistics.median(t), 1),
                     "seconds_per_batch": [round(v, 4) for v in t]} for engine, t in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import mxnet as mx
    from capszoo.utils import atomic_write_json, cpu_flags
    from capszoo.data import load_mnist

    images, _ = load_mnist("test", data_dir=args.data_dir)
    x = mx.nd.array(images[:BATCH, None].astype("float32") / 255.0)
    entries = {}
    with tempfile.TemporaryDirectory(prefix="capszoo-zoo-speed-") as folder:
        for name in capszoo.list_models():
            entries[name] = measure(name, x, args.repeats, folder)
            print(f"{name:<26} " + "  ".join(f"{e} {m['images_per_second']:8.1f}" for e, m in entries[name].items())
                  + " images/s", flush=True)
    flags = cpu_flags()
    result = {
        "date": datetime.date.today().isoformat(), "batch_size": BATCH,
        "engines": {"mxnet": "hybridized, static memory", "onnxruntime": "model.run, the shipped graph"},
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "mxnet": mx.__version__,
        "cpu": {"avx2": "avx2" in flags, "avx512": sorted(f for f in flags if f.startswith("avx512"))},
        "entries": entries,
    }
    out = args.out or os.path.join(REPO, "bench", "results", f"{result['date']}-zoo-speed.json")
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
