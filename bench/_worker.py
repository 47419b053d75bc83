"""A benchmark worker: one contender in its own process, driven over stdin/stdout.

``python -m bench._worker KIND --threads T --weights W --data D [--onnx PATH]``

KIND is one of ``capszoo-float32``, ``capszoo-int8``, ``capszoo-bfloat16``,
``torch``, ``onnxruntime`` or ``gemm``.  The coordinator sends one JSON
object per line and reads one JSON object per line back; the worker only
computes when asked, so contenders never run at the same time (except where
the coordinator says so, for accuracy runs that are not timed).

Each contender lives in its own process so that two OpenMP runtimes (MXNet's
and PyTorch's) never share a process, and so that ``ru_maxrss`` is per
contender.  File descriptor 1 is redirected to stderr at start: whatever a
library prints cannot corrupt the protocol, which uses a private copy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback

KINDS = ("capszoo-float32", "capszoo-float32-mxnet", "capszoo-int8", "capszoo-bfloat16", "torch", "torch-malloc",
         "onnxruntime", "gemm")


def _protocol_stream():
    fd = os.dup(1)
    os.dup2(2, 1)  # library prints go to stderr
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1)


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Contender:
    """Base: ``infer(x)`` on a float32 numpy batch (N,1,28,28) returns three numpy outputs."""

    def setup(self):
        raise NotImplementedError

    def infer(self, x):
        raise NotImplementedError

    def prepare(self, x):
        """Turn a numpy batch into what ``infer`` takes (done outside the timed region)."""
        return x

    def train_step(self, x, y):
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def prepare_train(self, x, y):
        return x, y


class CapszooContender(Contender):
    """capszoo's public API: ``capszoo.load(...).run(batch)`` (numpy in, numpy out)."""

    def __init__(self, args, dtype, backend="auto"):
        self.args, self.dtype, self.backend = args, dtype, backend

    def setup(self):
        import capszoo
        t = time.perf_counter()
        self.model = capszoo.load("capsnet-mnist", weights=self.args.weights, dtype=self.dtype, backend=self.backend)
        info = {"load_seconds": time.perf_counter() - t}
        import mxnet as mx
        self.mx = mx
        info["mxnet"] = mx.__version__
        info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
        info["backend"] = self.backend
        info["engines"] = {str(b): self.model.engine_for(b) for b in (1, 32, 128)}
        return info

    def infer(self, x):
        return self.model.run(x)

    # training: the step of capszoo._train._train_epoch, on a separate net with the same weights
    def _train_setup(self):
        mx = self.mx
        from mxnet import gluon
        from capszoo.models.capsnet.net import CapsNet
        from capszoo import load_recipe
        from capszoo.models.capsnet.training import CapsNetTrainingNet
        from capszoo import load_params_into
        recipe = load_recipe("capsnet-mnist")
        net = CapsNet(routing_iterations=recipe.net.routing_iterations)
        load_params_into(net, self.args.weights, ctx=[mx.cpu()])
        self.train_net = CapsNetTrainingNet.from_recipe(recipe, net)
        self.trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": recipe.optimizer.learning_rate},
                                     kvstore=None)
        self.train_net.hybridize(static_alloc=True)
        net.hybridize(static_alloc=True)

    def prepare_train(self, x, y):
        if not hasattr(self, "train_net"):
            self._train_setup()
        return self.mx.nd.array(x), self.mx.nd.array(y.astype("float32"))

    def train_step(self, x, y):
        from mxnet import autograd
        with autograd.record():
            cl, rl, probs = self.train_net(x, y)
            (cl + rl).backward()
        self.trainer.step(x.shape[0])
        # the training loop reads its metrics every step (a synchronisation point)
        return (cl.sum().asscalar(), rl.sum().asscalar(), (probs.argmax(axis=1) == y).sum().asscalar())


class TorchContender(Contender):
    def __init__(self, args):
        self.args = args

    def setup(self):
        import torch
        torch.set_num_threads(self.args.threads)
        torch.set_num_interop_threads(1)
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from bench import torch_capsnet
        self.torch, self.tc = torch, torch_capsnet
        self.weights = self.args.torch_weights or self.args.weights
        self.model = torch_capsnet.build(self.weights).eval()
        return {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "num_params": torch_capsnet.num_params(self.model), "mxnet_imported": "mxnet" in sys.modules}

    def prepare(self, x):
        return self.torch.from_numpy(x)

    def infer(self, x):
        with self.torch.inference_mode():
            return [o.numpy() for o in self.model(x)]

    def prepare_train(self, x, y):
        if not hasattr(self, "train_model"):
            self.train_model = self.tc.build(self.weights).train()
            self.optimizer = self.tc.make_optimizer(self.train_model)
        return self.torch.from_numpy(x), self.torch.from_numpy(y.astype("int64"))

    def train_step(self, x, y):
        return self.tc.train_step(self.train_model, self.optimizer, x, y)


class OrtContender(Contender):
    def __init__(self, args):
        self.args = args

    def setup(self):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(self.args.onnx, so, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        return {"onnxruntime": ort.__version__, "threads": self.args.threads}

    def infer(self, x):
        return self.sess.run(None, {self.input: x})


class GemmContender(Contender):
    """Large fp32 GEMMs (numpy, MXNet, PyTorch): the machine's measured fp32 peak."""

    N = 2048

    def __init__(self, args):
        self.args = args

    def setup(self):
        import numpy as np
        self.np = np
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((self.N, self.N), dtype=np.float32)
        self.b = rng.standard_normal((self.N, self.N), dtype=np.float32)
        return {"n": self.N, "flops": 2 * self.N ** 3}

    def gemm(self, lib, iters):
        if lib == "numpy":
            return _times(lambda: self.np.dot(self.a, self.b), iters)
        if lib == "mxnet":
            import mxnet as mx
            a, b = mx.nd.array(self.a), mx.nd.array(self.b)
            mx.nd.dot(a, b).wait_to_read()
            return _times(lambda: mx.nd.dot(a, b).wait_to_read(), iters)
        raise ValueError(lib)

    def conv(self, batch, iters, backward):
        """Times of MXNet's PrimaryCaps convolution alone (256 -> 256 channels, 9x9, stride 2, on
        (batch, 256, 20, 20)): forward, or forward and backward (data and weight gradients)."""
        import mxnet as mx
        from mxnet import autograd
        rng = self.np.random.default_rng(1)
        x = mx.nd.array(rng.uniform(0, 1, (batch, 256, 20, 20)).astype(self.np.float32))
        w = mx.nd.array(rng.uniform(-0.01, 0.01, (256, 256, 9, 9)).astype(self.np.float32))
        b = mx.nd.zeros(256)
        for a in (x, w, b):
            a.attach_grad()

        def run():
            if not backward:
                mx.nd.Convolution(x, w, b, kernel=(9, 9), stride=(2, 2), num_filter=256).wait_to_read()
                return
            with autograd.record():
                y = mx.nd.Convolution(x, w, b, kernel=(9, 9), stride=(2, 2), num_filter=256)
            y.backward()
            mx.nd.waitall()

        run()
        return _times(run, iters)


def _times(fn, iters):
    """Wall times of ``iters`` calls of ``fn``."""
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _make(args):
    if args.kind == "capszoo-float32-mxnet":
        return CapszooContender(args, "float32", backend="mxnet")
    if args.kind.startswith("capszoo-"):
        return CapszooContender(args, args.kind.split("-", 1)[1])
    kinds = {"torch": TorchContender, "torch-malloc": TorchContender, "onnxruntime": OrtContender,
             "gemm": GemmContender}
    return kinds[args.kind](args)


def _batch(images, n):
    import numpy as np
    reps = -(-n // len(images))
    x = np.concatenate([images] * reps)[:n] if reps > 1 else images[:n]
    return np.ascontiguousarray(x.astype(np.float32)[:, None] * np.float32(1 / 255.0))


def serve(args):
    import numpy as np
    out = _protocol_stream()
    data = np.load(args.data)
    images, labels = data["images"], data["labels"]
    c = _make(args)
    cache = {}

    def reply(obj):
        obj.setdefault("maxrss_mb", maxrss_mb())
        out.write(json.dumps(obj) + "\n")

    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.get("op")
        try:
            if op == "quit":
                reply({"ok": True})
                break
            if op == "setup":
                t = time.perf_counter()
                info = c.setup()
                reply({"ok": True, "info": info, "seconds": time.perf_counter() - t})
            elif op == "infer":
                b = int(cmd["batch"])
                if b not in cache:
                    cache[b] = c.prepare(_batch(images, b))
                x = cache[b]
                times = []
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                for _ in range(int(cmd.get("iters", 1))):
                    t = time.perf_counter()
                    c.infer(x)
                    times.append(time.perf_counter() - t)
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
                reply({"ok": True, "times": times, "page_faults": faults})
            elif op == "train":
                b = int(cmd["batch"])
                key = ("train", b)
                if key not in cache:
                    idx = np.arange(b) % len(images)
                    cache[key] = c.prepare_train(_batch(images, b), labels[idx])
                x, y = cache[key]
                times, metrics = [], []
                for _ in range(int(cmd.get("steps", 1))):
                    t = time.perf_counter()
                    m = c.train_step(x, y)
                    times.append(time.perf_counter() - t)
                    metrics.append([float(v) for v in m])
                reply({"ok": True, "times": times, "metrics": metrics})
            elif op == "predict":
                n = int(cmd["n"])
                bs = int(cmd.get("batch", 500))
                t = time.perf_counter()
                outs = [[], [], []]
                for s in range(0, n, bs):
                    o = c.infer(c.prepare(_batch(images[s:min(n, s + bs)], min(n, s + bs) - s)))
                    for k in range(3):
                        outs[k].append(np.asarray(o[k], dtype=np.float32))
                path = cmd["out"]
                np.savez(path, *[np.concatenate(o) for o in outs])
                reply({"ok": True, "path": path, "seconds": time.perf_counter() - t})
            elif op == "gemm":
                reply({"ok": True, "times": c.gemm(cmd["lib"], int(cmd.get("iters", 3)))})
            elif op == "conv":
                reply({"ok": True, "times": c.conv(int(cmd["batch"]), int(cmd.get("iters", 2)),
                                                   bool(cmd.get("backward")))})
            else:
                reply({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as exc:  # noqa: BLE001  (reported to the coordinator)
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench._worker")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--onnx")
    p.add_argument("--torch-weights", help="the weights as .npz (bench.torch_capsnet.save_npz): no MXNet import")
    serve(p.parse_args(argv))


if __name__ == "__main__":
    main()
