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
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from . import _env  # noqa: F401

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from ._context import default_kvstore, parse_ctx
from ._io import atomic_path, atomic_write_json, atomic_write_text
from ._net import CapsNet
from ._training_net import CapsNetTrainingNet
from ._weights import load_params_into, param_shapes, save_params
from .errors import CheckpointError, InvalidInputError

__all__ = ["TrainResult", "train", "initialize_net", "split_train_validation", "random_shift",
           "predict_probabilities"]

CHECKPOINT = "checkpoint.json"
FORMAT_VERSION = 1


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
    if max_shift == 0:
        return images
    n, h, w = images.shape
    pad = np.zeros((n, h + 2 * max_shift, w + 2 * max_shift), dtype=images.dtype)
    pad[:, max_shift:max_shift + h, max_shift:max_shift + w] = images
    dy = rng.integers(0, 2 * max_shift + 1, size=n)
    dx = rng.integers(0, 2 * max_shift + 1, size=n)
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
        Gradient reduction; default ``device`` for GPUs, ``local`` for CPUs.
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
        probe = os.path.join(out_dir, ".write-test")
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
    kv = kvstore if kvstore is not None else default_kvstore(ctxs)
    trainer = gluon.Trainer(net.collect_params(), "adam",
                            {"learning_rate": recipe.optimizer.learning_rate}, kvstore=kv)
    rank = getattr(trainer._kvstore, "rank", 0) if trainer._kvstore is not None else 0
    num_workers = getattr(trainer._kvstore, "num_workers", 1) if trainer._kvstore is not None else 1

    history, start_epoch, best = [], 0, {"epoch": -1, "val_accuracy": -1.0}
    if ck is not None:
        load_params_into(net, os.path.join(out_dir, ck["params"]), ctx=ctxs)
        trainer.load_states(os.path.join(out_dir, ck["states"]))
        history, start_epoch, best = list(ck["history"]), int(ck["epoch"]), dict(ck["best"])
    elif rank == 0:
        atomic_write_json(os.path.join(out_dir, "run.json"),
                          {"recipe": recipe.to_dict(), "ctx": [str(c) for c in ctxs],
                           "kvstore": kv if isinstance(kv, str) else type(kv).__name__,
                           "num_workers": num_workers, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    train_net.hybridize(static_alloc=True)
    net.hybridize(static_alloc=True)

    # Each worker of a distributed job trains on its own shard of the (shuffled) data.
    steps = len(tr_images) // (cfg.batch_size * num_workers)
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        lr = recipe.optimizer.learning_rate_at(epoch)
        trainer.set_learning_rate(lr)
        rng = np.random.default_rng([cfg.seed, epoch])
        perm = rng.permutation(len(tr_images))
        shift_rng = np.random.default_rng([cfg.seed, epoch, 1])
        bar = _Progress(steps, epoch, cfg.epochs) if progress else None
        t0 = time.time()
        sums = np.zeros(3)  # class loss, reco loss, correct
        seen = 0
        for step in range(steps):
            base = (step * num_workers + rank) * cfg.batch_size
            idx = perm[base:base + cfg.batch_size]
            x = _as_float(random_shift(tr_images[idx], shift_rng, recipe.data.max_shift))
            xs = gluon.utils.split_and_load(mx.nd.array(x), ctxs, even_split=False)
            ys = gluon.utils.split_and_load(mx.nd.array(tr_labels[idx]), ctxs, even_split=False)
            outs = []
            with autograd.record():
                for xb, yb in zip(xs, ys):
                    cl, rl, probs = train_net(xb, yb)
                    outs.append((cl, rl, probs, yb))
                    (cl + rl).backward()
            trainer.step(len(idx))
            for cl, rl, probs, yb in outs:
                sums += (cl.sum().asscalar(), rl.sum().asscalar(),
                         (probs.argmax(axis=1) == yb).sum().asscalar())
            seen += len(idx)
            if bar:
                bar.update(step + 1, (sums[0] + sums[1]) / seen, sums[2] / seen, seen / (time.time() - t0))
        train_time = time.time() - t0
        va_probs = predict_probabilities(net, va_images, ctx=ctxs) if len(va_images) else None
        va_acc = float((va_probs.argmax(1) == va_labels).mean()) if va_probs is not None else float("nan")
        metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": sums[:2].sum() / seen,
                   "train_class_loss": sums[0] / seen, "train_reco_loss": sums[1] / seen,
                   "train_accuracy": sums[2] / seen, "val_accuracy": va_acc,
                   "val_errors": int(round((1 - va_acc) * len(va_labels))) if va_probs is not None else None,
                   "images_per_second": seen * num_workers / train_time, "epoch_seconds": time.time() - t0,
                   "train_images": seen * num_workers}
        metrics = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in metrics.items()}
        history.append(metrics)
        if va_probs is not None and va_acc > best["val_accuracy"]:
            best = {"epoch": epoch + 1, "val_accuracy": va_acc}
            if rank == 0:
                save_params(net, os.path.join(out_dir, "best.params"))
        if rank == 0:
            _write_checkpoint(out_dir, net, trainer, epoch + 1, history, best)
        if log:
            log(metrics)
    if best["epoch"] < 0 and rank == 0:  # no validation data: the last weights are the result
        save_params(net, os.path.join(out_dir, "best.params"))
    return TrainResult(out_dir, len(history), best["epoch"], best["val_accuracy"], tuple(history))


def _write_checkpoint(out_dir, net, trainer, epoch, history, best):
    params, states = f"epoch-{epoch:04d}.params", f"epoch-{epoch:04d}.states"
    save_params(net, os.path.join(out_dir, params))
    with atomic_path(os.path.join(out_dir, states)) as tmp:
        trainer.save_states(tmp)
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
