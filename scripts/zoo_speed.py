"""Inference speed of every zoo entry at batch 128 on this machine: bench/results/<date>-zoo-speed.json.

    python scripts/zoo_speed.py --data-dir ../shared/data/mnist [--repeats 7]

Each entry's net (seeded weights: speed does not depend on their values) runs hybridized
with static memory on MXNet, the path ``capszoo evaluate`` and large batches take, on the
first 128 MNIST test digits: two warm-up calls, then the median of ``--repeats`` timed
calls.  The file records the machine's CPU features and thread count beside the figures;
``scripts/zoo_tables.py`` puts them in the README's ablation table.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import capszoo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 128


def measure(name, x, repeats):
    import mxnet as mx
    from capszoo import initialize_net

    card = capszoo.get_card(name)
    net = initialize_net(card.build(), capszoo.load_recipe(card.recipe), [mx.cpu()], 0)
    net.hybridize(static_alloc=True, static_shape=True)
    for _ in range(2):
        net(x)
        mx.nd.waitall()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net(x)
        mx.nd.waitall()
        times.append(time.perf_counter() - t0)
    return {"images_per_second": round(BATCH / statistics.median(times), 1),
            "seconds_per_batch": [round(t, 4) for t in times]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import mxnet as mx
    from capszoo.utils import cpu_flags
    from capszoo.data import load_mnist

    images, _ = load_mnist("test", data_dir=args.data_dir)
    x = mx.nd.array(images[:BATCH, None].astype("float32") / 255.0)
    entries = {}
    for name in capszoo.list_models():
        entries[name] = measure(name, x, args.repeats)
        print(f"{name:<26} {entries[name]['images_per_second']:8.1f} images/s", flush=True)
    flags = cpu_flags()
    result = {
        "date": datetime.date.today().isoformat(), "batch_size": BATCH, "engine": "mxnet (hybridized, static)",
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "mxnet": mx.__version__,
        "cpu": {"avx2": "avx2" in flags, "avx512": sorted(f for f in flags if f.startswith("avx512"))},
        "entries": entries,
    }
    out = args.out or os.path.join(REPO, "bench", "results", f"{result['date']}-zoo-speed.json")
    with open(out + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
