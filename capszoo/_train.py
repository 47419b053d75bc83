"""The training loop: data-parallel over contexts, per-epoch checkpoints, exact resume.

A run directory holds::

    run.json            the recipe and options of the run
    checkpoint.json     the last completed epoch, its files, the metric history
    epoch-NNNN.params   weights after epoch NNNN (only the newest is kept)
    epoch-NNNN.states   optimizer states after epoch NNNN (a pickle: only ever
                        loaded from this run directory, which capszoo wrote)
    best.params         the weights with the best validation accuracy
    metrics.jsonl       one line per completed epoch

Every file is written to a temporary name and renamed, and ``checkpoint.json``
is replaced last, so a kill at any point leaves the previous checkpoint whole.
Randomness (split, shuffling, shifts, initialization) is derived from the seed
and the epoch number, so a resumed run continues exactly as an uninterrupted one.

Distributed training (``kvstore="dist_sync"``, ``"dist_device_sync"`` or
``"dist_async"``, in a process started by ``capszoo launch`` as a worker of an
MXNet parameter-server job): every worker starts from rank 0's weights (pushed
through the kvstore before the first step), worker ``r`` of ``W`` trains at step
``s`` on images ``perm[(s*W + r)*B : (s*W + r + 1)*B]`` of the epoch's
permutation, with the random shifts a single process with batch ``W*B`` would
draw for them, and the summed gradients are normalized by the global batch
``W*B``: a ``dist_sync`` job follows the same trajectory as one process with
batch ``W*B`` (up to float summation order).  Only rank 0 writes the run
directory; with ``resume`` every worker loads the checkpoint in its own ``out_dir``
(so a multi-host job needs a shared one) and they check they agree.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import zlib

from . import _env  # noqa: F401

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from ._context import default_kvstore, parse_ctx
from ._io import atomic_path, atomic_write_json, atomic_write_text
from ._net import CapsNet
from ._training_net import CapsNetTrainingNet
from ._weights import load_params_into, param_shapes, save_params
from .errors import CheckpointError, DistributedError, InvalidInputError

__all__ = ["TrainResult", "train", "initialize_net", "split_train_validation", "random_shift",
           "predict_probabilities", "check_kvstore", "KVSTORES"]

CHECKPOINT = "checkpoint.json"
FORMAT_VERSION = 1

#: The ``kvstore`` values :func:`train` accepts.
KVSTORES = ("local", "device", "dist_sync", "dist_async", "dist_device_sync")
#: What a worker of a parameter-server job finds in its environment (set by ``capszoo launch``).
DMLC_WORKER_VARS = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_NUM_WORKER")
#: Set (to anything but "" or "0") to make every worker write ``final-rank<R>.params`` at the end.
SAVE_ALL_RANKS_ENV = "CAPSZOO_SAVE_ALL_RANKS"
# kvstore keys of our own, far above the Trainer's (0 .. number of parameters - 1).
_KEY_AGREE, _KEY_METRICS, _KEY_PARAMS = 1 << 20, (1 << 20) + 1, (1 << 20) + 16


def check_kvstore(kvstore, environ=None):
    """Validate a ``kvstore`` argument before any work (and before MXNet creates it).

    Returns the normalized name (or the KVStore object / None unchanged).  A
    distributed kvstore needs this process to be a worker of a parameter-server
    job: creating one without a scheduler hangs or crashes inside MXNet, so the
    DMLC environment is checked first.

    Raises
    ------
    InvalidInputError
        An unknown kvstore name.
    DistributedError
        A ``dist_*`` kvstore in a process that was not started as a worker.
    """
    if kvstore is None or isinstance(kvstore, mx.kvstore.KVStoreBase):
        return kvstore
    if not isinstance(kvstore, str) or kvstore.strip().lower() not in KVSTORES:
        raise InvalidInputError(f"unknown kvstore {kvstore!r}; use one of {', '.join(KVSTORES)} (local/device: "
                                "one machine; dist_*: a parameter-server job started by capszoo launch)")
    name = kvstore.strip().lower()
    if name.startswith("dist"):
        env = os.environ if environ is None else environ
        missing = [v for v in DMLC_WORKER_VARS if not env.get(v)]
        hint = (f"start the job with `capszoo launch -n WORKERS -s SERVERS [--hosts FILE] -- capszoo train ... "
                f"--kvstore {name}` (see docs/distributed.md)")
        if missing:
            raise DistributedError(f"--kvstore {name} needs a parameter-server job, but this process is not one "
                                   f"of its workers ({', '.join(missing)} not set); {hint}")
        if env["DMLC_ROLE"] != "worker":
            raise DistributedError(f"--kvstore {name}: DMLC_ROLE is {env['DMLC_ROLE']!r}, expected 'worker'; {hint}")
        for v in ("DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_NUM_WORKER"):
            if not env[v].isdigit() or int(env[v]) < 1:
                raise DistributedError(f"--kvstore {name}: {v}={env[v]!r} is not a positive integer; {hint}")
    return name


def _no_barrier_on_exit(kv):
    """Let a failing worker exit at once: by default MXNet's dist kvstore waits, when it is
    destroyed, for every other worker at a barrier they will never reach (they wait for this
    worker's gradients), so the whole job would hang instead of failing."""
    import ctypes
    from mxnet.base import _LIB
    try:
        _LIB.MXKVStoreSetBarrierBeforeExit(kv.handle, ctypes.c_int(0))
    except Exception:  # noqa: BLE001  (best effort on the way out)
        pass


def _broadcast_params(kv, net, ctxs):
    """Give every worker rank 0's parameters (kvstore init by rank 0, then pull by all).

    Returns the largest difference between this worker's values before and after
    (0.0 when seeded initialization already made them identical)."""
    params = sorted(net._collect_params_with_prefix().items())
    before = [p.data(ctxs[0]).copy() for _, p in params]
    keys = [_KEY_PARAMS + i for i in range(len(params))]
    kv.broadcast(keys, [p.data(ctxs[0]) for _, p in params], out=[p.list_data() for _, p in params])
    return max(float(mx.nd.abs(b - p.data(ctxs[0])).max().asscalar()) for b, (_, p) in zip(before, params))


def _agree_with_rank0(kv, rank, state):
    """Raise DistributedError unless this worker's ``state`` (small non-negative ints) equals rank 0's."""
    mine = mx.nd.array(state, dtype="float64")
    theirs = mx.nd.zeros(len(state), dtype="float64")
    kv.broadcast(_KEY_AGREE, mine, out=theirs)
    theirs = [int(v) for v in theirs.asnumpy()]
    if theirs != list(state):
        names = ("start epoch", "checkpoint found", "checkpoint id", "steps per epoch", "recipe and data id")
        here = ", ".join(f"{n} {a}" for n, a in zip(names, state))
        there = ", ".join(f"{n} {b}" for n, b in zip(names, theirs))
        raise DistributedError(
            f"worker {rank} does not see the run rank 0 sees ({here}; rank 0: {there}): every worker must "
            "train on the same data with the same options and, with --resume, read the same run directory "
            "(put --out on a shared file system for a multi-host job)")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`."""

    out_dir: str
    epochs_completed: int
    best_epoch: int
    best_val_accuracy: float
    history: tuple


def initialize_net(net, recipe, ctx, seed):
    """Seeded initialization: Xavier for convolutions and dense layers,
    Uniform(-s, s) for the prediction-vector weights W."""
    mx.random.seed(seed)
    np.random.seed(seed)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    for conv in (net["ReLUConv1"].weight, net["PrimaryCaps"].weight):
        conv.initialize(mx.init.MSRAPrelu(factor_type="in", slope=0.0), ctx=ctx, force_reinit=True)
    w = net["PrimaryPredVects"].weight
    w.set_data(mx.nd.random.uniform(-recipe.net.pred_vects_init_scale, recipe.net.pred_vects_init_scale,
                                    shape=w.shape))
    return net


def split_train_validation(n, validation_size, split_seed):
    """Indices ``(train, validation)`` of a seeded hold-out split of ``n`` examples."""
    if validation_size >= n:
        raise InvalidInputError(f"validation_size {validation_size} leaves no training data out of {n} images; "
                                "use more data or a smaller validation size")
    perm = np.random.default_rng(split_seed).permutation(n)
    return np.sort(perm[validation_size:]), np.sort(perm[:validation_size])


def random_shift(images, rng, max_shift):
    """Shift each ``(28,28)`` image by up to ``max_shift`` pixels in x and y (zero fill)."""
    return _shift_part(images, rng, max_shift, len(images), 0)


def _shift_part(images, rng, max_shift, total, start):
    """:func:`random_shift` of items ``start .. start+len(images)`` of a batch of ``total``.

    The shifts are drawn for the whole batch, so a worker of a distributed job,
    which holds one part of the global batch, shifts its images exactly as a
    single process with the global batch would (and draws as many numbers)."""
    if max_shift == 0:
        return images
    n, h, w = images.shape
    pad = np.zeros((n, h + 2 * max_shift, w + 2 * max_shift), dtype=images.dtype)
    pad[:, max_shift:max_shift + h, max_shift:max_shift + w] = images
    dy = rng.integers(0, 2 * max_shift + 1, size=total)[start:start + n]
    dx = rng.integers(0, 2 * max_shift + 1, size=total)[start:start + n]
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    return pad[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _as_float(images):
    return (images.astype(np.float32) * np.float32(1 / 255.0))[:, None, :, :]


def predict_probabilities(net, images, *, ctx=None, batch_size=500):
    """Class probabilities ``(N,10)`` of uint8 images ``(N,28,28)`` (or float ``(N,1,28,28)``)."""
    ctx = ctx or [mx.cpu()]
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = _as_float(chunk) if chunk.dtype == np.uint8 else chunk
        parts = gluon.utils.split_and_load(mx.nd.array(x), ctx, even_split=False)
        out.extend(net(p)[0].asnumpy() for p in parts)
    return np.concatenate(out) if out else np.zeros((0, 10), np.float32)


class _Progress:
    """A one-line progress display on a terminal, a line every ``every`` steps otherwise."""

    def __init__(self, total, epoch, epochs, stream=None, every=50):
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every

    def update(self, step, loss, acc, ips):
        if not self.tty and step % self.every and step != self.total:
            return
        width = 24
        done = int(width * step / max(1, self.total))
        line = (f"epoch {self.epoch + 1}/{self.epochs} [{'#' * done}{'.' * (width - done)}] "
                f"{step}/{self.total} loss {loss:.4f} acc {acc:.4f} {ips:.0f} img/s")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and step == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _arch_signature(net):
    return {k: list(v) for k, v in param_shapes(net).items()}


def _read_checkpoint(out_dir, net):
    path = os.path.join(out_dir, CHECKPOINT)
    try:
        with open(path, encoding="utf-8") as fh:
            ck = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); remove the run directory or start "
                              "without --resume") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a capszoo checkpoint of format {FORMAT_VERSION}")
    if ck.get("architecture") != _arch_signature(net):
        raise CheckpointError(f"{path} was written for another architecture (parameter names or shapes "
                              "differ); use a new --out directory")
    if "states" in ck and ck["states"] is None:
        raise CheckpointError(f"{path} was written by a dist_async job, whose optimizer state lives on the "
                              "parameter servers and was not saved: it cannot be resumed; start a new run "
                              "(its weights are in best.params and the epoch-*.params file)")
    for key in ("params", "states"):
        fname = ck.get(key)
        # Only plain file names inside our own run directory: the states file is a pickle.
        if not isinstance(fname, str) or os.path.basename(fname) != fname or fname.startswith("."):
            raise CheckpointError(f"{path}: bad {key} entry {fname!r}")
    return ck


def train(recipe, *, data, ctx="cpu", out_dir, epochs=None, batch_size=None, seed=None, resume=False,
          kvstore=None, max_steps_per_epoch=None, validation_size=None, log=None, progress=True):
    """Train the recipe's net; write checkpoints and metrics to ``out_dir``.

    Parameters
    ----------
    recipe : capszoo.Recipe
    data : tuple
        ``(train_images (N,28,28) uint8, train_labels (N,))``; the recipe's
        validation split is taken from it.
    ctx : str or list of mxnet.Context
        Devices for data parallelism, e.g. ``"cpu"``, ``"cpu:0,cpu:1"``, ``"gpu:0,gpu:1"``.
    out_dir : str
        Run directory (created).  With ``resume=True`` training continues from
        its last checkpoint.
    epochs, batch_size, seed : int, optional
        Override the recipe's ``[train]`` values.
    kvstore : str or mxnet.kvstore.KVStore, optional
        Gradient reduction, one of :data:`KVSTORES`; default ``device`` for
        GPUs, ``local`` for CPUs.  ``dist_sync``, ``dist_device_sync`` and
        ``dist_async`` need this process to be a worker of a parameter-server
        job (``capszoo launch``); see the module docstring.
    max_steps_per_epoch : int, optional
        Cap on steps per epoch (quick runs and tests).
    validation_size : int, optional
        Override the recipe's held-out validation size (quick runs on subsets).
    log : callable, optional
        Called with each epoch's metrics dict.

    Returns
    -------
    TrainResult
    """
    recipe = recipe.replace_train(epochs=epochs, batch_size=batch_size, seed=seed)
    cfg = recipe.train
    ctxs = parse_ctx(ctx)
    kvstore = check_kvstore(kvstore)
    kv_type = kvstore.type if isinstance(kvstore, mx.kvstore.KVStoreBase) else kvstore
    dist = kv_type is not None and kv_type.startswith("dist")
    dist_async = dist and "async" in kv_type
    if resume and dist_async:
        raise DistributedError("--resume is not supported with dist_async: the optimizer state lives on the "
                               "parameter servers and is not checkpointed; use dist_sync")
    images, labels = data
    if validation_size is not None:
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, validation_size=validation_size))
        recipe.data._check()
    tr_idx, va_idx = split_train_validation(len(images), recipe.data.validation_size, recipe.data.split_seed)
    tr_images, tr_labels = images[tr_idx], labels[tr_idx].astype(np.float32)
    va_images, va_labels = images[va_idx], labels[va_idx]
    if cfg.batch_size > len(tr_images):
        raise InvalidInputError(f"batch size {cfg.batch_size} is larger than the {len(tr_images)} training images")
    if cfg.batch_size < len(ctxs):
        raise InvalidInputError(f"batch size {cfg.batch_size} is smaller than the {len(ctxs)} contexts")

    out_dir = os.fspath(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test-{os.getpid()}")  # workers may share out_dir
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(f"cannot write to run directory {out_dir}: {exc.strerror}; choose "
                              "another --out") from None

    net = CapsNet(routing_iterations=recipe.net.routing_iterations)
    train_net = CapsNetTrainingNet.from_recipe(recipe, net)
    ck = _read_checkpoint(out_dir, net) if resume else None
    if not resume and os.path.exists(os.path.join(out_dir, CHECKPOINT)):
        raise CheckpointError(f"{out_dir} already holds a run; pass --resume to continue it or choose "
                              "another --out")
    initialize_net(net, recipe, ctxs, cfg.seed)
    if dist and not isinstance(kvstore, mx.kvstore.KVStoreBase):
        # MXNet's parameter server reads PORT as the port of this node: an unrelated PORT
        # (set by many platforms) makes it fail.  capszoo launch removes it too.
        os.environ.pop("PORT", None)
        kvstore = mx.kv.create(kv_type)  # blocks until every node of the job has joined
    kv = kvstore if kvstore is not None else default_kvstore(ctxs)
    # The Trainer creates a non-distributed kvstore only at its first step: rank and
    # number of workers come from the kvstore object itself.
    rank, num_workers = (kv.rank, kv.num_workers) if dist else (0, 1)
    try:
        return _train_loop(recipe, cfg, ctxs, net, train_net, kv, dist, dist_async, rank, num_workers, ck,
                           out_dir, tr_images, tr_labels, va_images, va_labels, max_steps_per_epoch, log, progress)
    except BaseException:
        if dist:
            _no_barrier_on_exit(kv)
        raise


def _train_loop(recipe, cfg, ctxs, net, train_net, kv, dist, dist_async, rank, num_workers, ck, out_dir,
                tr_images, tr_labels, va_images, va_labels, max_steps_per_epoch, log, progress):
    # Each worker of a distributed job trains on its own part of each global batch.
    steps = len(tr_images) // (cfg.batch_size * num_workers)
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    if dist:  # first of all the job's collective operations: a worker that differs stops here
        def crc(obj):  # 24 bits: exact in any float type
            return zlib.crc32(json.dumps(obj, sort_keys=True, default=str).encode()) & 0xFFFFFF
        run_id = crc({"recipe": recipe.to_dict(), "train": [len(tr_images), int(tr_labels.sum())]})
        _agree_with_rank0(kv, rank, (int(ck["epoch"]) if ck is not None else 0, int(ck is not None),
                                     crc(ck) if ck is not None else 0, steps, run_id))
    opt_params = {"learning_rate": recipe.optimizer.learning_rate}
    if dist_async:
        # The servers run the optimizer: the per-epoch decay goes with it as a schedule
        # (an update per worker per step).
        opt_params["lr_scheduler"] = mx.lr_scheduler.FactorScheduler(
            step=max(1, steps * num_workers), factor=recipe.optimizer.lr_decay,
            base_lr=recipe.optimizer.learning_rate, stop_factor_lr=0.0)
    # dist_sync: the workers sum their gradients through the servers and each runs the same
    # optimizer step locally (update_on_kvstore=False), so learning-rate changes and saved
    # optimizer states work as in a single process.  dist_async can only update on the servers.
    trainer = gluon.Trainer(net.collect_params(), "adam", opt_params, kvstore=kv,
                            update_on_kvstore=(False if dist and not dist_async else None))
    # Gradients are summed over the workers in dist_sync: normalize by the global batch.
    grad_scale = num_workers if dist and not dist_async else 1

    history, start_epoch, best = [], 0, {"epoch": -1, "val_accuracy": -1.0}
    if ck is not None:
        load_params_into(net, os.path.join(out_dir, ck["params"]), ctx=ctxs)
        trainer.load_states(os.path.join(out_dir, ck["states"]))
        history, start_epoch, best = list(ck["history"]), int(ck["epoch"]), dict(ck["best"])
    if dist:
        init_diff = _broadcast_params(kv, net, ctxs)
        if init_diff > 0:
            print(f"capszoo: worker {rank}: initial weights differed from rank 0's (max abs diff {init_diff:.3g}); "
                  "using rank 0's", file=sys.stderr)
        if not dist_async:
            kv.init(_KEY_METRICS, mx.nd.zeros(4, dtype="float64"))
    if ck is None and rank == 0:
        atomic_write_json(os.path.join(out_dir, "run.json"),
                          {"recipe": recipe.to_dict(), "ctx": [str(c) for c in ctxs],
                           "kvstore": kv if isinstance(kv, str) else kv.type,
                           "num_workers": num_workers, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    train_net.hybridize(static_alloc=True)
    net.hybridize(static_alloc=True)

    for epoch in range(start_epoch, cfg.epochs):
        lr = recipe.optimizer.learning_rate_at(epoch)
        if not dist_async:
            trainer.set_learning_rate(lr)
        rng = np.random.default_rng([cfg.seed, epoch])
        perm = rng.permutation(len(tr_images))
        shift_rng = np.random.default_rng([cfg.seed, epoch, 1])
        bar = _Progress(steps, epoch, cfg.epochs) if progress else None
        t0 = time.time()
        sums = np.zeros(3)  # class loss, reco loss, correct
        seen = 0
        gbatch = cfg.batch_size * num_workers
        part = rank * cfg.batch_size
        for step in range(steps):
            # Worker r's images are part r of global batch `step`: perm[(step*W + r)*B : (step*W + r + 1)*B].
            idx = perm[step * gbatch + part:step * gbatch + part + cfg.batch_size]
            x = _as_float(_shift_part(tr_images[idx], shift_rng, recipe.data.max_shift, gbatch, part))
            xs = gluon.utils.split_and_load(mx.nd.array(x), ctxs, even_split=False)
            ys = gluon.utils.split_and_load(mx.nd.array(tr_labels[idx]), ctxs, even_split=False)
            outs = []
            with autograd.record():
                for xb, yb in zip(xs, ys):
                    cl, rl, probs = train_net(xb, yb)
                    outs.append((cl, rl, probs, yb))
                    (cl + rl).backward()
            trainer.step(len(idx) * grad_scale)
            for cl, rl, probs, yb in outs:
                sums += (cl.sum().asscalar(), rl.sum().asscalar(),
                         (probs.argmax(axis=1) == yb).sum().asscalar())
            seen += len(idx)
            if bar:
                bar.update(step + 1, (sums[0] + sums[1]) / seen, sums[2] / seen, seen / (time.time() - t0))
        train_time = time.time() - t0
        images_seen = seen * num_workers
        if dist and not dist_async:  # the epoch's training metrics over all workers' images
            total = mx.nd.array([sums[0], sums[1], sums[2], seen], dtype="float64")
            out = mx.nd.zeros(4, dtype="float64")
            kv.pushpull(_KEY_METRICS, total, out=out)
            *sums, seen = out.asnumpy()
            sums, images_seen = np.array(sums), seen
        va_probs = predict_probabilities(net, va_images, ctx=ctxs) if len(va_images) else None
        va_acc = float((va_probs.argmax(1) == va_labels).mean()) if va_probs is not None else float("nan")
        metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": sums[:2].sum() / seen,
                   "train_class_loss": sums[0] / seen, "train_reco_loss": sums[1] / seen,
                   "train_accuracy": sums[2] / seen, "val_accuracy": va_acc,
                   "val_errors": int(round((1 - va_acc) * len(va_labels))) if va_probs is not None else None,
                   "images_per_second": images_seen / train_time, "epoch_seconds": time.time() - t0,
                   "train_images": int(images_seen)}
        metrics = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in metrics.items()}
        history.append(metrics)
        if va_probs is not None and va_acc > best["val_accuracy"]:
            best = {"epoch": epoch + 1, "val_accuracy": va_acc}
            if rank == 0:
                save_params(net, os.path.join(out_dir, "best.params"))
        if rank == 0:
            _write_checkpoint(out_dir, net, trainer, epoch + 1, history, best, save_states=not dist_async)
        if log:
            log(metrics)
    if best["epoch"] < 0 and rank == 0:  # no validation data: the last weights are the result
        save_params(net, os.path.join(out_dir, "best.params"))
    if os.environ.get(SAVE_ALL_RANKS_ENV, "") not in ("", "0"):  # checking that workers agree
        save_params(net, os.path.join(out_dir, f"final-rank{rank}.params"))
    return TrainResult(out_dir, len(history), best["epoch"], best["val_accuracy"], tuple(history))


def _write_checkpoint(out_dir, net, trainer, epoch, history, best, save_states=True):
    params, states = f"epoch-{epoch:04d}.params", f"epoch-{epoch:04d}.states"
    save_params(net, os.path.join(out_dir, params))
    if save_states:
        with atomic_path(os.path.join(out_dir, states)) as tmp:
            trainer.save_states(tmp)
    else:  # dist_async: the optimizer state is on the servers
        states = None
    ck = {"format": FORMAT_VERSION, "epoch": epoch, "params": params, "states": states,
          "history": history, "best": best, "architecture": _arch_signature(net)}
    atomic_write_json(os.path.join(out_dir, CHECKPOINT), ck)
    atomic_write_text(os.path.join(out_dir, "metrics.jsonl"),
                      "".join(json.dumps(m) + "\n" for m in history))
    for f in os.listdir(out_dir):  # drop older epoch files, after the new checkpoint is in place
        if f.startswith("epoch-") and f not in (params, states) and not f.endswith(".tmp"):
            try:
                os.unlink(os.path.join(out_dir, f))
            except OSError:
                pass


def load_run_weights(out_dir, net, ctx=None):
    """Load ``best.params`` of a run directory into ``net``."""
    return load_params_into(net, os.path.join(out_dir, "best.params"), ctx=ctx)
