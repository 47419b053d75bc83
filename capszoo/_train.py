"""The training loop: data-parallel over contexts, per-epoch checkpoints, exact resume.

A run directory holds::

    run.json                     the recipe and options of the run
    checkpoint.json              the last completed epoch, its files and their sha256, the
                                 optimizer's scalars (update counts, learning rate, ...), the
                                 metric history and the best epoch
    epoch-NNNN.params            weights after epoch NNNN (only the newest is kept)
    epoch-NNNN.optimizer.params  Adam's moments after epoch NNNN: arrays ``mean:<name>`` and
                                 ``var:<name>`` per parameter, in the ``.params`` format (data
                                 only, read by capszoo._weights' strict reader; no pickle)
    epoch-NNNN.ema.params        the moving average of the weights after epoch NNNN, when the
                                 recipe sets ``optimizer.ema_decay``
    best.params                  the weights with the best validation accuracy (the moving
                                 average's, when there is one)
    metrics.jsonl                one line per completed epoch

Weight averaging (``optimizer.ema_decay`` > 0): after every optimizer step the
average ``a`` of each weight ``w`` becomes ``d a + (1 - d) w`` with ``d`` =
``min(ema_decay, (1 + t) / (10 + t))`` at the run's step ``t`` (optimizer steps
before this one, counted from the run's first epoch).  Validation,
model selection (``best.params``) and the reported accuracy use the average;
the history also records ``val_accuracy_raw``, that of the weights themselves.
A run resumed from a checkpoint without an average (an older run) starts it
from the checkpoint's weights, and ``checkpoint.json`` records the epoch it
started after (``ema.started_epoch``).

Every file is written to a temporary name and renamed, and ``checkpoint.json``
is replaced last, so a kill at any point leaves the previous checkpoint whole;
the temporary files a killed writer leaves are deleted when training starts
again in the directory.  ``--resume`` checks every field of ``checkpoint.json``
and the sha256 of both checkpoint files before it uses them.  Randomness (split,
shuffling, shifts, initialization) is derived from the seed and the epoch
number, so a resumed run continues exactly as an uninterrupted one (bit for bit
on CPU with ``OMP_NUM_THREADS=1``).

A new run can also start from a weights file (``init_weights``) instead of the seeded
initialization, and with the ``metrics.jsonl`` of the run those weights end
(``init_log``, N epochs) continue that run at epoch N + 1: how a run whose
directory is lost goes on from its published weights (see :func:`train`).

Checkpoints of format 1 (capszoo before the ``.optimizer.params`` file) name an
``epoch-NNNN.states`` file instead: a pickle written by ``Trainer.save_states``.
They still resume.  That pickle is only ever read because ``checkpoint.json`` of
the run directory names it (a run directory capszoo wrote), and even then not
with ``pickle.load``: a restricted unpickler accepts only the three globals such
a file holds (``NDArray``, ``Adam``, ``bytearray``), maps them to inert stand-ins
that run no code, and the raw array bytes are parsed by capszoo._weights'
strict reader.  The first checkpoint written after the resume is of format 2.

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
(so a multi-host job needs a shared one) and they check they agree.  In a
``dist_sync`` job every worker runs the optimizer itself (``update_on_kvstore``
off), so its state is saved and resumed as in one process; a ``dist_async``
job's optimizer state lives on the parameter servers: it is not saved
(``"optimizer": null``) and such a run cannot be resumed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import io
import json
import math
import os
import pickle
import stat
import struct
import sys
import time
import zlib

from . import _env  # noqa: F401

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from ._context import default_kvstore, parse_ctx
from ._evaluate import mnist_float
from ._io import atomic_write_json, atomic_write_text
from ._recipe import MAX_EPOCHS
from ._nets import as_outputs
from ._registry import get_card, resolve_callable
from ._weights import (MAX_PARAMS_BYTES, check_params, load_params_into, param_shapes, parse_params, read_params,
                       save_params, sha256_file)
from .errors import CheckpointError, DistributedError, InvalidInputError, WeightsFormatError

__all__ = ["TrainResult", "train", "initialize_net", "split_train_validation", "random_shift",
           "predict_probabilities", "check_kvstore", "KVSTORES"]

CHECKPOINT = "checkpoint.json"
#: The ``format`` of the checkpoint.json this module writes.
FORMAT_VERSION = 2
#: The format before: the optimizer state in a pickle (``states``); read, never written.
LEGACY_FORMAT_VERSION = 1
#: The top-level keys of checkpoint.json, per format.
_CHECKPOINT_KEYS = {
    FORMAT_VERSION: frozenset(("format", "epoch", "params", "optimizer", "sha256", "history", "best",
                               "architecture")),
    # format 2 with the moving average of the weights (optimizer.ema_decay > 0)
    (FORMAT_VERSION, "ema"): frozenset(("format", "epoch", "params", "optimizer", "sha256", "history", "best",
                                        "architecture", "ema")),
    LEGACY_FORMAT_VERSION: frozenset(("format", "epoch", "params", "states", "history", "best", "architecture")),
}
#: Largest checkpoint.json read (10,000 epochs of history take about 4 MB).
MAX_CHECKPOINT_BYTES = 64 << 20
#: Largest legacy ``.states`` pickle read (two float32 moments per weight: twice the weights).
MAX_STATES_BYTES = 2 * MAX_PARAMS_BYTES
#: The optimizer whose state checkpoints hold (the recipes' ``optimizer.name``).
OPTIMIZER = "adam"
#: Adam's per-parameter state, in the order of MXNet's ``Adam.create_state``.
_MOMENTS = ("mean", "var")
#: What a killed writer of this module can leave in a run directory: the temporary files of
#: capszoo._io.atomic_path (``"." + file name + ".XXXXXXXX.tmp"``) for each file it writes
#: (epoch files of both formats, best.params, checkpoint.json, run.json, metrics.jsonl,
#: final-rank<R>.params) and train()'s write probe (``.write-test-<pid>``).
STALE_TEMP_PATTERNS = (".epoch-*.tmp", ".best.params.*.tmp", ".checkpoint.json.*.tmp", ".run.json.*.tmp",
                       ".metrics.jsonl.*.tmp", ".final-rank*.params.*.tmp", ".write-test-*")
#: What to do about a checkpoint that cannot be used.
_FIX = "remove the run directory (or choose another --out) and start again without --resume"

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


def _init_trainer_kvstore(trainer):
    """What gluon.Trainer does at its first step before any gradient: create its kvstore and
    hand it the parameters (a no-op once done)."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()


def _finish_kvstore_setup(trainer, net):
    """Run the Trainer's kvstore set-up now (rank 0's value of every parameter, pulled by all)
    and wait until every worker holds it, before the first gradient is pushed.

    Works around a race in MXNet 1.9.1's dist kvstore on CPU: the set-up pulls a key into a
    buffer of its own, while the first gradient pushpull of that key uses the gradient array as
    its buffer, so nothing orders the two.  The pull can reach the server after the workers'
    gradients were summed and return that sum: the worker's weights became the summed
    gradient (seen as one worker's Reconstruct.2.weight near 0 and workers 0.058 apart).
    """
    _init_trainer_kvstore(trainer)
    for p in net.collect_params().values():
        for d in p.list_data():
            d.wait_to_read()


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
    """Seeded initialization of ``recipe``'s net, as its model's family does it (for CapsNets:
    Xavier for dense layers, He for the capsule convolutions, Uniform(-s, s) for W)."""
    mx.random.seed(seed)
    np.random.seed(seed)
    resolve_callable(recipe_card(recipe).family.initialize)(net, recipe, ctx)
    return net


def recipe_card(recipe):
    """The card of the entry ``recipe`` trains."""
    return get_card(recipe.model)


def build_recipe_net(recipe):
    """``recipe``'s net, uninitialized: its model's card's architecture."""
    return recipe_card(recipe).build()


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


def predict_probabilities(net, images, *, ctx=None, batch_size=500):
    """Class probabilities ``(N,10)`` of uint8 images ``(N,28,28)`` (or float ``(N,1,28,28)``)."""
    ctx = ctx or [mx.cpu()]
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = mnist_float(chunk) if chunk.dtype == np.uint8 else chunk
        parts = gluon.utils.split_and_load(mx.nd.array(x), ctx, even_split=False)
        out.extend(as_outputs(net(p))[0].asnumpy() for p in parts)
    return np.concatenate(out) if out else np.zeros((0, 10), np.float32)


class _Progress:
    """Training progress: a tqdm bar on a terminal; in a log file (``nohup``, CI) a plain line every
    ``every`` steps and at the end, since tqdm's carriage-return redraws would pile up there."""

    def __init__(self, total, epoch, epochs, stream=None, every=50):
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.bar = None
        if hasattr(self.stream, "isatty") and self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", file=self.stream, unit="step",
                            leave=True, dynamic_ncols=True)

    def update(self, step, loss, acc, ips):
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} acc {acc:.4f} {ips:.0f} img/s", refresh=False)
            self.bar.update(step - self.bar.n)
            if step == self.total:
                self.bar.close()
            return
        if step % self.every and step != self.total:
            return
        width = 24
        done = int(width * step / max(1, self.total))
        self.stream.write(f"epoch {self.epoch + 1}/{self.epochs} [{'#' * done}{'.' * (width - done)}] "
                          f"{step}/{self.total} loss {loss:.4f} acc {acc:.4f} {ips:.0f} img/s\n")
        self.stream.flush()


def _arch_signature(net):
    return {k: list(v) for k, v in param_shapes(net).items()}


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_plain_name(value):
    """A file name of the run directory itself: no folder part, not hidden, not '.' or '..'."""
    return (isinstance(value, str) and 0 < len(value) <= 255 and os.path.basename(value) == value
            and "/" not in value and "\\" not in value and "\0" not in value and not value.startswith("."))


def _is_sha256(value):
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_checkpoint(out_dir, net):
    """The validated ``checkpoint.json`` of ``out_dir`` (a dict), or None when there is none.

    Every field is checked before anything uses it: the format (1 or 2), the
    architecture (names and shapes of ``net``'s parameters), ``epoch``, the file
    names (plain names inside the run directory), the sha256 values, the
    optimizer's scalars (format 2), the history (one record per epoch) and
    ``best``.  The files themselves are checked when they are loaded (see
    :func:`_train_loop`).

    Raises
    ------
    CheckpointError
        A ``checkpoint.json`` that is unreadable, of another format or
        architecture, or has a missing, unexpected or invalid field (the message
        names the file and the field), or one of a ``dist_async`` run.
    """
    path = os.path.join(out_dir, CHECKPOINT)
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > MAX_CHECKPOINT_BYTES:
                raise ValueError(f"larger than {MAX_CHECKPOINT_BYTES:,} bytes")
            ck = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); remove the run directory or start "
                              "without --resume") from None

    def bad(problem):
        return CheckpointError(f"{path}: {problem}; {_FIX}")

    fmt = ck.get("format") if isinstance(ck, dict) else None
    if not _is_int(fmt) or fmt not in _CHECKPOINT_KEYS:
        raise CheckpointError(f"{path} is not a capszoo checkpoint of format {LEGACY_FORMAT_VERSION} or "
                              f"{FORMAT_VERSION}; {_FIX}")
    if ck.get("architecture") != _arch_signature(net):
        raise CheckpointError(f"{path} was written for another architecture (parameter names or shapes "
                              "differ); use a new --out directory")
    keys = _CHECKPOINT_KEYS[(fmt, "ema") if fmt == FORMAT_VERSION and "ema" in ck else fmt]
    missing, extra = sorted(keys - ck.keys()), sorted(ck.keys() - keys)
    if missing or extra:
        raise bad(", ".join(([f"missing {', '.join(missing)}"] if missing else [])
                            + ([f"unexpected {', '.join(map(_short, extra))}"] if extra else []))
                  + f" (format {fmt} checkpoints have {', '.join(sorted(keys))})")
    epoch = ck["epoch"]
    if not _is_int(epoch) or not 1 <= epoch <= MAX_EPOCHS:
        raise bad(f"epoch must be an integer from 1 to {MAX_EPOCHS}, got {_short(epoch)}")
    state_key = "states" if fmt == LEGACY_FORMAT_VERSION else "optimizer"
    if ck[state_key] is None:
        raise CheckpointError(f"{path} was written by a dist_async job, whose optimizer state lives on the "
                              "parameter servers and was not saved: it cannot be resumed; start a new run "
                              "(its weights are in best.params and the epoch-*.params file)")
    # Only plain file names inside our own run directory (a legacy states file is a pickle).
    if not _is_plain_name(ck["params"]):
        raise bad(f"bad params entry {_short(ck['params'])} (expected a file name in the run directory)")
    if fmt == LEGACY_FORMAT_VERSION:
        if not _is_plain_name(ck["states"]):
            raise bad(f"bad states entry {_short(ck['states'])} (expected a file name in the run directory)")
    else:
        _check_optimizer_scalars(ck["optimizer"], list(param_shapes(net)), bad, with_file=True)
        sha, files = ck["sha256"], {"params", "optimizer"} | ({"ema"} if "ema" in ck else set())
        if not isinstance(sha, dict) or set(sha) != files or not all(map(_is_sha256, sha.values())):
            raise bad(f"bad sha256 entry {_short(sha)} (expected {{" + ", ".join(f'\"{f}\": <64 hex digits>'
                                                                                 for f in sorted(files)) + "})")
        if "ema" in ck:
            _check_ema_entry(ck["ema"], ck["epoch"], bad)
    history = ck["history"]
    if not isinstance(history, list) or len(history) != epoch:
        raise bad(f"history must be a list of {epoch} epoch records (one per completed epoch), got "
                  + (f"a list of {len(history)}" if isinstance(history, list) else _short(history)))
    _check_history(history, bad)
    best = ck["best"]
    if not isinstance(best, dict) or set(best) != {"epoch", "val_accuracy"}:
        raise bad(f"best must be {{\"epoch\": E, \"val_accuracy\": A}}, got {_short(best)}")
    b_epoch, b_acc = best["epoch"], best["val_accuracy"]
    if not _is_int(b_epoch) or not (b_epoch == -1 or 1 <= b_epoch <= epoch):
        raise bad(f"best epoch must be -1 (none yet) or an epoch from 1 to {epoch}, got {_short(b_epoch)}")
    if b_epoch == -1:
        ok = _is_number(b_acc) and b_acc == -1
    else:
        ok = _is_number(b_acc) and 0 <= b_acc <= 1 and b_acc == history[b_epoch - 1].get("val_accuracy")
    if not ok:
        raise bad(f"best val_accuracy {_short(b_acc)} is not that of epoch {b_epoch} in the history")
    return ck


def _check_history(history, bad):
    """Check a metric history: record ``i`` is a dict of numbers (or null) by name, with ``"epoch": i + 1``."""
    for i, m in enumerate(history):
        if (not isinstance(m, dict) or not _is_int(m.get("epoch")) or m["epoch"] != i + 1
                or not all(isinstance(k, str) and (v is None or _is_number(v)) for k, v in m.items())):
            raise bad(f"history entry {i + 1} must be the metrics of epoch {i + 1} (numbers by name, "
                      f"\"epoch\": {i + 1}), got {_short(m)}")


def _read_init_log(path, epochs):
    """The per-epoch metrics log (``metrics.jsonl``) of the run that ``init_weights`` ends, checked.

    Returns the list of records (epochs 1 .. N, N < ``epochs``).

    Raises
    ------
    InvalidInputError
        An unreadable, oversized or malformed log (the message names the line), an
        empty one, or one that already holds the recipe's ``epochs``.
    """
    path = os.fspath(path)

    def bad(problem):
        return InvalidInputError(f"--init-log {path}: {problem}; pass the metrics.jsonl of the run whose "
                                 "weights --init-weights holds")

    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > MAX_CHECKPOINT_BYTES:
                raise bad(f"larger than {MAX_CHECKPOINT_BYTES:,} bytes")
            text = fh.read().decode("utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read --init-log {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    history = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            history.append(json.loads(line))
        except (ValueError, RecursionError):
            raise bad(f"line {n} is not JSON") from None
    if not history:
        raise bad("no epochs in it")
    _check_history(history, bad)
    if len(history) >= epochs:
        raise bad(f"it already holds {len(history)} epochs and the run has {epochs}; raise --epochs")
    return history


def _check_ema_entry(ema, epoch, bad):
    """Check the ``ema`` entry of checkpoint.json: ``{"file", "decay", "num_update", "started_epoch"}``."""
    keys = {"file", "decay", "num_update", "started_epoch"}
    if not isinstance(ema, dict) or set(ema) != keys:
        raise bad(f"bad ema entry: expected an object with {', '.join(sorted(keys))}, got "
                  + (str(sorted(ema)) if isinstance(ema, dict) else _short(ema)))
    if not _is_plain_name(ema["file"]):
        raise bad(f"bad ema file entry {_short(ema['file'])} (expected a file name in the run directory)")
    if not (_is_number(ema["decay"]) and 0 < ema["decay"] < 1):
        raise bad(f"ema decay must be a number in (0, 1), got {_short(ema['decay'])}")
    if not _is_int(ema["num_update"]) or not 0 <= ema["num_update"] <= 2 ** 53:
        raise bad(f"ema num_update must be an integer from 0 to 2**53, got {_short(ema['num_update'])}")
    if not _is_int(ema["started_epoch"]) or not 0 <= ema["started_epoch"] <= epoch:
        raise bad(f"ema started_epoch must be an integer from 0 to {epoch}, got {_short(ema['started_epoch'])}")


class _WeightAverage:
    """The exponential moving average of a net's weights, kept in a second net of the same architecture.

    ``update(t)`` after the run's optimizer step ``t``: ``a = d a + (1 - d) w`` with
    ``d = decay_at(t)`` (:meth:`capszoo._recipe.OptimizerSection.ema_decay_at`: a run's
    early weights, far from trained, are forgotten fast; an average started in a resumed,
    trained run gets the full decay at once),
    on the first context; ``net`` then holds the average on every context (for
    validation and saving) after :meth:`sync`."""

    def __init__(self, net, recipe, ctxs, *, started_epoch, num_update=0):
        self.source = net
        self.net = build_recipe_net(recipe)
        self.net.initialize(ctx=ctxs)
        self.decay, self.decay_at = recipe.optimizer.ema_decay, recipe.optimizer.ema_decay_at
        self.started_epoch, self.num_update = started_epoch, num_update
        self._pairs = [(p.data(ctxs[0]), self.net._collect_params_with_prefix()[n])
                       for n, p in net._collect_params_with_prefix().items()]
        self.copy_from_source()

    def copy_from_source(self):
        for w, p in self._pairs:
            for arr in p.list_data():
                arr[:] = w

    def update(self, step):
        """After the run's 0-based optimizer step ``step``."""
        d = self.decay_at(step)
        for w, p in self._pairs:
            a = p.list_data()[0]
            # a = d a + (1 - d) w as one fused in-place kernel: sgd_update computes
            # a - lr (rescale_grad w + wd a) = (1 - wd) a + (1 - d) w with lr = 1, wd = 1 - d,
            # rescale_grad = -(1 - d).  3x faster than ``a[:] = a * d + w * (1 - d)`` (4 temporaries
            # of the 33 MB of weights per step), same values (measured equal to the last bit).
            mx.nd.sgd_update(a, w, lr=1.0, wd=1.0 - d, rescale_grad=-(1.0 - d), out=a)
        self.num_update += 1

    def sync(self):
        """Copy the average of the first context to the others."""
        for _, p in self._pairs:
            first, *others = p.list_data()
            for arr in others:
                arr[:] = first
        return self.net

    def entry(self, file):
        return {"file": file, "decay": self.decay, "num_update": self.num_update, "started_epoch": self.started_epoch}


def _check_optimizer_scalars(opt, names, bad, *, with_file):
    """Check the optimizer entry of checkpoint.json (or the scalars read from a legacy pickle).

    ``names`` are the net's parameter names; ``bad(problem)`` makes the exception to raise."""
    keys = {"name", "num_update", "begin_num_update", "update_counts", "lr", "rescale_grad", "wd", "beta1",
            "beta2", "epsilon", "clip_gradient"} | ({"file"} if with_file else set())
    if not isinstance(opt, dict) or set(opt) != keys:
        got = sorted(opt) if isinstance(opt, dict) else _short(opt)
        raise bad(f"bad optimizer entry: expected an object with {', '.join(sorted(keys))}, got {got}")
    if opt["name"] != OPTIMIZER:
        raise bad(f"optimizer name must be {OPTIMIZER!r}, got {_short(opt['name'])}")
    if with_file and not _is_plain_name(opt["file"]):
        raise bad(f"bad optimizer file entry {_short(opt['file'])} (expected a file name in the run directory)")
    for key in ("num_update", "begin_num_update"):
        if not _is_int(opt[key]) or not 0 <= opt[key] <= 2 ** 53:
            raise bad(f"optimizer {key} must be an integer from 0 to 2**53, got {_short(opt[key])}")
    finite = {k: _is_number(opt[k]) and math.isfinite(opt[k]) for k in ("lr", "rescale_grad", "wd", "beta1",
                                                                         "beta2", "epsilon")}
    rules = [("lr", finite["lr"] and opt["lr"] > 0, "a finite number > 0"),
             ("rescale_grad", finite["rescale_grad"] and opt["rescale_grad"] > 0, "a finite number > 0"),
             ("wd", finite["wd"] and opt["wd"] >= 0, "a finite number >= 0"),
             ("beta1", finite["beta1"] and 0 <= opt["beta1"] < 1, "a number in [0, 1)"),
             ("beta2", finite["beta2"] and 0 <= opt["beta2"] < 1, "a number in [0, 1)"),
             ("epsilon", finite["epsilon"] and opt["epsilon"] > 0, "a finite number > 0"),
             ("clip_gradient", opt["clip_gradient"] is None or (_is_number(opt["clip_gradient"])
                                                                and math.isfinite(opt["clip_gradient"])
                                                                and opt["clip_gradient"] > 0),
              "null or a finite number > 0")]
    for key, ok, what in rules:
        if not ok:
            raise bad(f"optimizer {key} must be {what}, got {_short(opt[key])}")
    counts, known = opt["update_counts"], set(names)
    if (not isinstance(counts, dict)
            or not all(isinstance(d, str) and d.isdigit() and len(d) <= 6 and isinstance(per, dict)
                       for d, per in counts.items())):
        raise bad(f"optimizer update_counts must map device ids to {{parameter name: count}}, got {_short(counts)}")
    for d, per in counts.items():
        for name, c in per.items():
            if name not in known:
                raise bad(f"optimizer update_counts of device {d} names {_short(name)}, not a parameter of this net")
            if not _is_int(c) or not opt["begin_num_update"] <= c <= opt["num_update"]:
                raise bad(f"optimizer update count of {name} on device {d} must be an integer from "
                          f"begin_num_update to num_update, got {_short(c)}")
    return opt


def _counted_names(scalars):
    """The parameters Adam has state for: those it has updated (on any device)."""
    return sorted({n for per in scalars["update_counts"].values() for n in per})


def _expected_moments(net, scalars):
    shapes = param_shapes(net)
    return {f"{part}:{n}": shapes[n] for n in _counted_names(scalars) for part in _MOMENTS}


def _check_sha256(path, expected):
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"{path} has sha256 {actual}, but {CHECKPOINT} records {expected}: the file changed "
                              f"after its checkpoint was written (a damaged disk or an edit); {_FIX}")


def _describe(exc):
    """The message of an error met while loading a checkpoint file, without advice meant for other files."""
    text = str(exc).split("; this is not an MXNet .params file")[0]
    text = text.replace(" Use weights saved from the same architecture.", "")
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    if isinstance(exc, (CheckpointError, WeightsFormatError)):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- optimizer state: save, read (format 2 and the legacy pickle), restore -------------------


def _param_names(trainer, net):
    """The structural name (the weights-file name) of each of the Trainer's parameter indices."""
    by_id = {id(p): name for name, p in net._collect_params_with_prefix().items()}
    return [by_id[id(p)] for p in trainer._params]


def _updaters(trainer):
    """The Updater objects that hold the optimizer state: the Trainer's own (one per context), or
    the kvstore's when the kvstore runs the optimizer (``update_on_kvstore``: a ``local`` kvstore
    over several contexts, in this process).  ``dist_async`` is never saved nor resumed: its
    updater lives on the parameter servers."""
    if trainer._kv_initialized and trainer._update_on_kvstore:
        updater = getattr(trainer._kvstore, "_updater", None)
        if updater is None:
            raise CheckpointError("the optimizer runs on the parameter servers (dist_async): its state cannot be "
                                  "saved or restored; use dist_sync for a resumable run")
        return [updater]
    return list(trainer._updaters)


class _NamedArrays:
    """Named NDArrays that capszoo._weights.save_params writes like a net's parameters."""

    def __init__(self, arrays):
        self.arrays = arrays

    def save_parameters(self, path):
        mx.nd.save(path, self.arrays)


def _optimizer_state(trainer, net):
    """``(moments, scalars)`` of the Trainer's Adam: ``{"mean:<name>"/"var:<name>": NDArray}`` and the
    scalars of the ``optimizer`` entry of checkpoint.json (without ``file``)."""
    names = _param_names(trainer, net)
    updater = _updaters(trainer)[0]   # the contexts' updaters hold equal states (MXNet saves the first too)
    opt = updater.optimizer
    if not isinstance(opt, mx.optimizer.Adam):
        raise CheckpointError(f"cannot checkpoint the state of optimizer {type(opt).__name__}: capszoo "
                              f"checkpoints hold Adam's")
    moments = {}
    for idx, state in sorted(updater.states.items()):
        if not (isinstance(state, (tuple, list)) and len(state) == len(_MOMENTS)):
            raise CheckpointError(f"unexpected Adam state for {names[idx]}: {_short(state)}")
        for part, arr in zip(_MOMENTS, state):
            moments[f"{part}:{names[idx]}"] = arr
    scalars = {"name": OPTIMIZER, "num_update": int(opt.num_update), "begin_num_update": int(opt.begin_num_update),
               "update_counts": {str(dev): {names[i]: int(c) for i, c in sorted(per.items())}
                                 for dev, per in sorted(opt._all_index_update_counts.items())},
               "lr": float(opt.lr), "rescale_grad": float(opt.rescale_grad), "wd": float(opt.wd),
               "beta1": float(opt.beta1), "beta2": float(opt.beta2), "epsilon": float(opt.epsilon),
               "clip_gradient": None if opt.clip_gradient is None else float(opt.clip_gradient)}
    return moments, scalars


class _Inert:
    """Stands in for a class named by a legacy states pickle: keeps the pickled data, runs nothing."""

    def __init__(self, *args):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state


class _InertNDArray(_Inert):
    pass


class _InertAdam(_Inert):
    pass


def _bytes_only(data=b""):
    """``bytearray`` for the legacy unpickler: of bytes only (``bytearray(10**12)`` would allocate)."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"bytearray of {type(data).__name__}")
    return bytearray(data)


class _LegacyStatesUnpickler(pickle.Unpickler):
    """Reads a ``Trainer.save_states`` pickle of Adam (``(states, optimizer)``) as data only."""

    _GLOBALS = {("mxnet.ndarray.ndarray", "NDArray"): _InertNDArray,
                ("mxnet.optimizer.optimizer", "Adam"): _InertAdam,
                ("builtins", "bytearray"): _bytes_only}

    def find_class(self, module, name):
        try:
            return self._GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which the Adam state of a capszoo checkpoint never holds "
                "(refused: unpickling it could run code)") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds a persistent id, which a capszoo checkpoint never does")


def _legacy_array(obj, what, path):
    """The numpy array of a pickled NDArray (its ``MXNDArraySaveRawBytes`` bytes: one record of the
    ``.params`` format), parsed by capszoo._weights' strict reader."""
    handle = obj.state.get("handle") if isinstance(obj.state, dict) and obj.args == (None,) else None
    if not isinstance(handle, (bytes, bytearray)):
        raise CheckpointError(f"{path}: {what} is not a saved NDArray; {_FIX}")
    framed = (struct.pack("<QQQ", 0x112, 0, 1) + bytes(handle) + struct.pack("<QQ", 1, len(what))
              + what.encode())
    return parse_params(framed, f"{path} ({what})")[what]


def _read_legacy_states(path, net, names):
    """``(moments, scalars)`` from a format-1 ``.states`` pickle (see the module docstring)."""
    def bad(problem):
        return CheckpointError(f"{path}: {problem}; {_FIX}")

    if not os.path.isfile(path):
        raise bad("the optimizer state file is missing" if not os.path.lexists(path) else "not a regular file")
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size > MAX_STATES_BYTES:
            raise bad(f"larger than {MAX_STATES_BYTES:,} bytes, more than any optimizer state")
        data = fh.read()
    obj = _LegacyStatesUnpickler(io.BytesIO(data)).load()
    if not (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], dict) and isinstance(obj[1], _InertAdam)
            and isinstance(obj[1].state, dict)):
        raise bad(f"not the optimizer state of a capszoo checkpoint (a pickled (states, Adam) pair written by "
                  f"Trainer.save_states), but {_short(obj)}")
    states, adam = obj[0], obj[1].state
    moments = {}
    for idx, state in states.items():
        if not _is_int(idx) or not 0 <= idx < len(names):
            raise bad(f"state of parameter index {_short(idx)}, which this net does not have")
        if not (isinstance(state, tuple) and len(state) == len(_MOMENTS)
                and all(isinstance(a, _InertNDArray) for a in state)):
            raise bad(f"the state of {names[idx]} is not Adam's (mean, var) pair")
        for part, arr in zip(_MOMENTS, state):
            moments[f"{part}:{names[idx]}"] = _legacy_array(arr, f"{part}:{names[idx]}", path)
    if adam.get("lr_scheduler") is not None:
        raise bad("the optimizer has a learning-rate schedule, which capszoo checkpoints never hold")
    counts = adam.get("_all_index_update_counts")
    if not isinstance(counts, dict) or not all(_is_int(d) and 0 <= d < 10 ** 6 and isinstance(per, dict)
                                               and all(_is_int(i) and 0 <= i < len(names) for i in per)
                                               for d, per in counts.items()):
        raise bad(f"bad update counts {_short(counts)}")
    scalars = {k: adam.get(k) for k in ("num_update", "begin_num_update", "lr", "rescale_grad", "wd", "beta1",
                                         "beta2", "epsilon", "clip_gradient")}
    scalars.update(name=OPTIMIZER, update_counts={str(d): {names[i]: c for i, c in per.items()}
                                                  for d, per in counts.items()})
    _check_optimizer_scalars(scalars, names, bad, with_file=False)
    return moments, scalars


def _restore_optimizer(trainer, names, moments, scalars):
    """Give the Trainer's Adam the saved moments (a copy per context) and scalars."""
    # As Trainer.load_states: the kvstore first (it decides where the optimizer runs).
    _init_trainer_kvstore(trainer)
    index = {n: i for i, n in enumerate(names)}
    opt = trainer._optimizer
    for updater in _updaters(trainer):
        updater.optimizer = opt
        updater.states = {index[n]: tuple(mx.nd.array(moments[f"{part}:{n}"], dtype=np.float32) for part in _MOMENTS)
                          for n in _counted_names(scalars)}
        updater.states_synced = dict.fromkeys(updater.states, False)  # moved to the weights' context at first use
    counts = {int(d): {index[n]: c for n, c in per.items()} for d, per in scalars["update_counts"].items()}
    counts = counts or {0: {}}
    opt._all_index_update_counts = counts
    opt._index_update_count = counts[min(counts)]   # re-pointed at each update's device anyway
    opt.num_update, opt.begin_num_update = scalars["num_update"], scalars["begin_num_update"]
    for key in ("lr", "rescale_grad", "wd", "beta1", "beta2", "epsilon", "clip_gradient"):
        setattr(opt, key, scalars[key])


def _load_optimizer(trainer, net, out_dir, ck):
    """Read, check and restore the checkpoint's optimizer state (either format).

    Raises
    ------
    CheckpointError
        Whatever goes wrong (a missing, truncated, corrupt or foreign file, a
        sha256 mismatch, a refused pickle), naming the file.
    """
    names = _param_names(trainer, net)
    legacy = ck["format"] == LEGACY_FORMAT_VERSION
    path = os.path.join(out_dir, ck["states"] if legacy else ck["optimizer"]["file"])
    try:
        if legacy:
            moments, scalars = _read_legacy_states(path, net, names)
            check_params(moments, _expected_moments(net, scalars), source=f"the moments in {path}")
        else:
            if not os.path.lexists(path):
                raise CheckpointError(f"the optimizer state file {path} is missing; {_FIX}")
            scalars = ck["optimizer"]
            moments = read_params(path)
            check_params(moments, _expected_moments(net, scalars), source=f"the moments in {path}")
            _check_sha256(path, ck["sha256"]["optimizer"])   # last: a specific problem is named first
        _restore_optimizer(trainer, names, moments, scalars)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001  (anything: the file is unusable; say which)
        raise CheckpointError(f"cannot load the optimizer state {path}: {_describe(exc)}; {_FIX}") from exc


def train(recipe, *, data, ctx="cpu", out_dir, epochs=None, batch_size=None, seed=None, resume=False,
          kvstore=None, max_steps_per_epoch=None, validation_size=None, log=None, progress=True,
          init_weights=None, init_log=None):
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
        its last checkpoint (format 2, or format 1 with a pickled optimizer
        state: see the module docstring), after checking every field of its
        ``checkpoint.json`` and the sha256 of its files.  Temporary files a
        killed run left in it are deleted first (rank 0).
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
    init_weights : str, optional
        A ``.params`` file of the net to start from instead of the seeded
        initialization (checked like any weights file); the optimizer state and
        the moving average start afresh from it.  A new run only (not with ``resume``).
    init_log : str, optional
        With ``init_weights``: the ``metrics.jsonl`` of the run those weights end
        (epochs 1 .. N).  The new run continues that run: its history starts with
        the log, its first epoch is N + 1 (learning rate, shuffling and shifts of
        epoch N + 1), the moving average gets the full decay at once, and when
        the log's best validation epoch is N the given weights are its
        ``best.params`` (a later epoch replaces them only with a higher validation
        accuracy).  This continues a run whose checkpoint is lost from its
        published weights (the moving average's, when the recipe averages); the
        optimizer's moments cannot be recovered, so it is not bit-identical to an
        uninterrupted run.  ``run.json`` records both files and their sha256.

    Returns
    -------
    TrainResult

    Raises
    ------
    CheckpointError
        ``out_dir`` cannot be written (also a full disk during training: the
        message names the file), already holds a run and ``resume`` is false,
        or its checkpoint cannot be resumed (a bad ``checkpoint.json`` field,
        a missing, damaged or changed optimizer state or sha256 mismatch).
    WeightsFormatError
        The checkpoint's weights file is missing or not valid for the net.
    InvalidInputError, DistributedError
        Bad arguments (``init_log`` without ``init_weights``, either with
        ``resume``, a malformed log); a distributed job that cannot run.
    """
    recipe = recipe.replace_train(epochs=epochs, batch_size=batch_size, seed=seed)
    init = _init_request(init_weights, init_log, resume, recipe.train.epochs)
    ctxs = parse_ctx(ctx)
    kvstore, kv_type, dist, dist_async = _check_kvstore_arg(kvstore, resume)
    recipe, train_data, val_data = _split_data(recipe, data, validation_size, ctxs)
    net, train_net = _build_nets(recipe, ctxs, init)
    out_dir, ck = _open_run_dir(out_dir, net, resume)
    kv, rank, num_workers = _connect_kvstore(kvstore, kv_type, dist, ctxs)
    try:
        return _train_loop(recipe, recipe.train, ctxs, net, train_net, kv, dist, dist_async, rank, num_workers, ck,
                           out_dir, *train_data, *val_data, max_steps_per_epoch, log, progress, init)
    except BaseException:
        if dist:
            _no_barrier_on_exit(kv)
        raise


def _init_request(init_weights, init_log, resume, epochs):
    """What :func:`train` starts from instead of the seeded initialization: None, or
    ``{"weights": path, "history": the checked init_log's epochs ([] without), "log": path or None}``.

    Raises
    ------
    InvalidInputError
        ``init_log`` without ``init_weights``, ``init_weights`` with ``resume``, a malformed log.
    """
    if init_log is not None and init_weights is None:
        raise InvalidInputError("--init-log needs --init-weights: the weights after the log's last epoch")
    if init_weights is not None and resume:
        raise InvalidInputError("--init-weights starts a new run; --resume continues the one in --out: "
                                "pass one of them")
    if init_weights is None:
        return None
    return {"weights": os.path.abspath(os.fspath(init_weights)),
            "history": _read_init_log(init_log, epochs) if init_log is not None else [],
            "log": os.path.abspath(os.fspath(init_log)) if init_log is not None else None}


def _check_kvstore_arg(kvstore, resume):
    """``(kvstore, its type name, dist, dist_async)`` of :func:`train`'s ``kvstore`` argument,
    checked by :func:`check_kvstore`.

    Raises
    ------
    InvalidInputError, DistributedError
        As :func:`check_kvstore`; ``resume`` with ``dist_async``.
    """
    kvstore = check_kvstore(kvstore)
    kv_type = kvstore.type if isinstance(kvstore, mx.kvstore.KVStoreBase) else kvstore
    dist = kv_type is not None and kv_type.startswith("dist")
    dist_async = dist and "async" in kv_type
    if resume and dist_async:
        raise DistributedError("--resume is not supported with dist_async: the optimizer state lives on the "
                               "parameter servers and is not checkpointed; use dist_sync")
    return kvstore, kv_type, dist, dist_async


def _split_data(recipe, data, validation_size, ctxs):
    """``(recipe, (train images, labels), (validation images, labels))``: the recipe's hold-out
    split of ``data`` (``validation_size``, when given, replaces the recipe's), labels for
    training as float32.

    Raises
    ------
    InvalidInputError
        A bad validation size, or a batch larger than the training images or smaller
        than the number of contexts.
    """
    cfg = recipe.train
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
    return recipe, (tr_images, tr_labels), (va_images, va_labels)


def _build_nets(recipe, ctxs, init):
    """``(net, training net)`` of the recipe, with the seeded initialization or, given ``init``
    (:func:`_init_request`), its weights (``init`` then records the files' sha256).

    Raises
    ------
    WeightsFormatError
        The ``init`` weights file is missing or unfit for the net.
    """
    net = build_recipe_net(recipe)
    train_net = recipe_card(recipe).build_training(recipe, net)
    initialize_net(net, recipe, ctxs, recipe.train.seed)
    if init is not None:  # checked before --out is created: a refused file leaves nothing behind
        load_params_into(net, init["weights"], ctx=ctxs)   # WeightsFormatError: a missing or unfit file
        init["sha256"] = sha256_file(init["weights"])
        if init["log"] is not None:
            init["log_sha256"] = sha256_file(init["log"])
    return net, train_net


def _open_run_dir(out_dir, net, resume):
    """``(out_dir, checkpoint or None)``: the run directory, created and checked writable, and
    with ``resume`` its checked checkpoint (:func:`_read_checkpoint`).

    Raises
    ------
    CheckpointError
        ``out_dir`` cannot be written, holds a run and ``resume`` is false, or its
        checkpoint cannot be resumed.
    """
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

    ck = _read_checkpoint(out_dir, net) if resume else None
    if not resume and os.path.exists(os.path.join(out_dir, CHECKPOINT)):
        raise CheckpointError(f"{out_dir} already holds a run; pass --resume to continue it or choose "
                              "another --out")
    return out_dir, ck


def _connect_kvstore(kvstore, kv_type, dist, ctxs):
    """``(kvstore, rank, number of workers)``: a distributed job's kvstore created (this blocks
    until every node has joined), else ``kvstore`` or the default for ``ctxs``."""
    if dist and not isinstance(kvstore, mx.kvstore.KVStoreBase):
        # MXNet's parameter server reads PORT as the port of this node: an unrelated PORT
        # (set by many platforms) makes it fail.  capszoo launch removes it too.
        os.environ.pop("PORT", None)
        kvstore = mx.kv.create(kv_type)  # blocks until every node of the job has joined
    kv = kvstore if kvstore is not None else default_kvstore(ctxs)
    # The Trainer creates a non-distributed kvstore only at its first step: rank and
    # number of workers come from the kvstore object itself.
    rank, num_workers = (kv.rank, kv.num_workers) if dist else (0, 1)
    return kv, rank, num_workers


def _train_loop(recipe, cfg, ctxs, net, train_net, kv, dist, dist_async, rank, num_workers, ck, out_dir,
                tr_images, tr_labels, va_images, va_labels, max_steps_per_epoch, log, progress, init=None):
    """:func:`train` once its arguments are checked: set up the optimizer and the starting point
    (``ck``, ``init`` or a new run), train the remaining epochs, write the run directory (rank 0)."""
    if rank == 0:  # before any write: what a killed process left (only rank 0 writes the run directory)
        _remove_stale_temp_files(out_dir)
    # Each worker of a distributed job trains on its own part of each global batch.
    steps = len(tr_images) // (cfg.batch_size * num_workers)
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    if dist:  # first of all the job's collective operations: a worker that differs stops here
        _agree_on_run(kv, rank, recipe, tr_images, tr_labels, ck, init, steps)
    trainer, grad_scale = _make_trainer(recipe, net, kv, dist, dist_async, steps, num_workers)
    history, start_epoch, best = _starting_point(net, trainer, ctxs, rank, out_dir, ck, init)
    if dist:
        _share_start(kv, rank, net, trainer, ctxs, dist_async)
    if ck is None and rank == 0:
        _write_run_json(out_dir, recipe, ctxs, kv, num_workers, init)
    ema = _start_weight_average(net, recipe, ctxs, out_dir, ck, start_epoch)
    train_net.hybridize(static_alloc=True)
    net.hybridize(static_alloc=True)
    if ema is not None:
        ema.net.hybridize(static_alloc=True)

    for epoch in range(start_epoch, cfg.epochs):
        lr = recipe.optimizer.learning_rate_at(epoch)
        if not dist_async:
            trainer.set_learning_rate(lr)
        sums, seen, t0, train_time = _train_epoch(train_net, trainer, ema, recipe, cfg, ctxs, tr_images, tr_labels,
                                                  epoch, steps, rank, num_workers, grad_scale, progress)
        images_seen = seen * num_workers
        if dist and not dist_async:  # the epoch's training metrics over all workers' images
            sums, seen = _sum_over_workers(kv, sums, seen)
            images_seen = seen
        eval_net = ema.sync() if ema is not None else net   # validated, selected and saved
        va_acc, va_errors, extra = _validate(eval_net, net, ema, va_images, va_labels, ctxs)
        metrics = _epoch_metrics(epoch, lr, sums, seen, images_seen, train_time, t0, va_acc, va_errors, extra)
        history.append(metrics)
        if va_errors is not None and va_acc > best["val_accuracy"]:   # va_errors None: no validation images
            best = {"epoch": epoch + 1, "val_accuracy": va_acc}
            if rank == 0:
                with _writing(os.path.join(out_dir, "best.params")) as path:
                    save_params(eval_net, path)
        if rank == 0:
            _write_checkpoint(out_dir, net, trainer, epoch + 1, history, best, save_states=not dist_async, ema=ema)
        if log:
            log(metrics)
    _write_final_weights(out_dir, net, ema, best, rank)
    return TrainResult(out_dir, len(history), best["epoch"], best["val_accuracy"], tuple(history))


def _agree_on_run(kv, rank, recipe, tr_images, tr_labels, ck, init, steps):
    """Raise DistributedError unless this worker's run (start epoch, checkpoint, steps per epoch,
    recipe and training data) is rank 0's: :func:`_agree_with_rank0`."""
    def crc(obj):  # 24 bits: exact in any float type
        return zlib.crc32(json.dumps(obj, sort_keys=True, default=str).encode()) & 0xFFFFFF
    run_id = crc({"recipe": recipe.to_dict(), "train": [len(tr_images), int(tr_labels.sum())]})
    _agree_with_rank0(kv, rank, (int(ck["epoch"]) if ck is not None else len(init["history"]) if init else 0,
                                 int(ck is not None),
                                 crc(ck) if ck is not None else 0, steps, run_id))


def _make_trainer(recipe, net, kv, dist, dist_async, steps, num_workers):
    """``(trainer, grad_scale)``: the run's Adam ``gluon.Trainer`` and the factor by which the
    summed gradients exceed this worker's batch (the number of workers in ``dist_sync``)."""
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
    return trainer, grad_scale


def _starting_point(net, trainer, ctxs, rank, out_dir, ck, init):
    """``(history, start_epoch, best)`` of the run: the checkpoint ``ck``'s (its weights and
    optimizer state loaded into ``net`` and ``trainer``), the init log's when ``init`` has one
    (rank 0 writes ``best.params`` when the weights given are the best so far), or a new run's.

    Raises
    ------
    CheckpointError, WeightsFormatError
        A checkpoint file that is missing, damaged or not of this net.
    """
    history, start_epoch, best = [], 0, {"epoch": -1, "val_accuracy": -1.0}
    if ck is not None:  # _read_checkpoint checked every field; the files are checked here
        params_path = os.path.join(out_dir, ck["params"])
        load_params_into(net, params_path, ctx=ctxs)   # WeightsFormatError: a missing or damaged file
        if ck["format"] == FORMAT_VERSION:
            try:
                _check_sha256(params_path, ck["sha256"]["params"])
            except OSError as exc:
                raise CheckpointError(f"cannot read {params_path}: {exc.strerror}; {_FIX}") from None
        _load_optimizer(trainer, net, out_dir, ck)
        history, start_epoch, best = [dict(m) for m in ck["history"]], ck["epoch"], dict(ck["best"])
    elif init is not None and init["history"]:   # continuing a run from its weights and log
        history = [dict(m) for m in init["history"]]
        start_epoch = len(history)
        accs = [m.get("val_accuracy") for m in history]
        top = max((a for a in accs if a is not None and math.isfinite(a)), default=None)
        if top is not None and accs.index(top) == start_epoch - 1:   # the weights given are the best so far
            best = {"epoch": start_epoch, "val_accuracy": top}
            if rank == 0:
                with _writing(os.path.join(out_dir, "best.params")) as path:
                    save_params(net, path)
    return history, start_epoch, best


def _share_start(kv, rank, net, trainer, ctxs, dist_async):
    """Before a distributed job's first step: give every worker rank 0's weights, run the
    Trainer's kvstore set-up and (``dist_sync``) create the key epoch metrics are summed through."""
    init_diff = _broadcast_params(kv, net, ctxs)
    if init_diff > 0:
        print(f"capszoo: worker {rank}: initial weights differed from rank 0's (max abs diff {init_diff:.3g}); "
              "using rank 0's", file=sys.stderr)
    _finish_kvstore_setup(trainer, net)
    if not dist_async:
        kv.init(_KEY_METRICS, mx.nd.zeros(4, dtype="float64"))


def _write_run_json(out_dir, recipe, ctxs, kv, num_workers, init):
    """Write ``run.json`` of a new run: the recipe and options (and the ``init`` files, if any)."""
    with _writing(os.path.join(out_dir, "run.json")) as path:
        atomic_write_json(path, {"recipe": recipe.to_dict(), "ctx": [str(c) for c in ctxs],
                                 "kvstore": kv if isinstance(kv, str) else kv.type,
                                 "num_workers": num_workers, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 **({"init": {"weights": init["weights"], "sha256": init["sha256"],
                                              "log": init["log"], "log_sha256": init.get("log_sha256"),
                                              "epochs": len(init["history"])}} if init else {})})


def _train_epoch(train_net, trainer, ema, recipe, cfg, ctxs, tr_images, tr_labels, epoch, steps, rank, num_workers,
                 grad_scale, progress):
    """Run the ``steps`` optimizer steps of ``epoch`` on this worker's part of each global batch,
    updating the moving average ``ema`` after each.

    Returns ``(sums, seen, t0, train_time)``: the summed class loss, reconstruction loss and
    correct predictions, the number of images, the start time and the seconds the steps took.
    """
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
        x = mnist_float(_shift_part(tr_images[idx], shift_rng, recipe.data.max_shift, gbatch, part))
        xs = gluon.utils.split_and_load(mx.nd.array(x), ctxs, even_split=False)
        ys = gluon.utils.split_and_load(mx.nd.array(tr_labels[idx]), ctxs, even_split=False)
        outs = []
        with autograd.record():
            for xb, yb in zip(xs, ys):
                cl, rl, probs = train_net(xb, yb)
                outs.append((cl, rl, probs, yb))
                (cl + rl).backward()
        trainer.step(len(idx) * grad_scale)
        if ema is not None:
            ema.update(epoch * steps + step)
        for cl, rl, probs, yb in outs:
            sums += (cl.sum().asscalar(), rl.sum().asscalar(),
                     (probs.argmax(axis=1) == yb).sum().asscalar())
        seen += len(idx)
        if bar:
            bar.update(step + 1, (sums[0] + sums[1]) / seen, sums[2] / seen, seen / (time.time() - t0))
    return sums, seen, t0, time.time() - t0


def _sum_over_workers(kv, sums, seen):
    """``(sums, seen)`` of :func:`_train_epoch` summed over the workers of a ``dist_sync`` job."""
    total = mx.nd.array([sums[0], sums[1], sums[2], seen], dtype="float64")
    out = mx.nd.zeros(4, dtype="float64")
    kv.pushpull(_KEY_METRICS, total, out=out)
    *sums, seen = out.asnumpy()
    return np.array(sums), seen


def _validate(eval_net, net, ema, va_images, va_labels, ctxs):
    """``(val_accuracy, val_errors, extra)`` of ``eval_net`` on the validation images (nan and
    None without any); with a moving average, ``extra`` holds ``val_accuracy_raw``: ``net``'s."""
    va_probs = predict_probabilities(eval_net, va_images, ctx=ctxs) if len(va_images) else None
    va_acc = float((va_probs.argmax(1) == va_labels).mean()) if va_probs is not None else float("nan")
    extra = {}
    if ema is not None and va_probs is not None:
        raw = predict_probabilities(net, va_images, ctx=ctxs)
        extra["val_accuracy_raw"] = float((raw.argmax(1) == va_labels).mean())
    va_errors = int(round((1 - va_acc) * len(va_labels))) if va_probs is not None else None
    return va_acc, va_errors, extra


def _epoch_metrics(epoch, lr, sums, seen, images_seen, train_time, t0, va_acc, va_errors, extra):
    """The metrics line of 0-based ``epoch`` (plain floats), as ``metrics.jsonl`` records it."""
    metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": sums[:2].sum() / seen,
               "train_class_loss": sums[0] / seen, "train_reco_loss": sums[1] / seen,
               "train_accuracy": sums[2] / seen, "val_accuracy": va_acc, "val_errors": va_errors,
               "images_per_second": images_seen / train_time, "epoch_seconds": time.time() - t0,
               "train_images": int(images_seen), **extra}
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in metrics.items()}


def _write_final_weights(out_dir, net, ema, best, rank):
    """At the end of a run: ``best.params`` when there was no validation data (the last weights, the
    moving average's if any, are the result; rank 0), and ``final-rank<R>.params`` when
    :data:`SAVE_ALL_RANKS_ENV` asks for it (checking that workers agree)."""
    if best["epoch"] < 0 and rank == 0:  # no validation data: the last weights are the result
        with _writing(os.path.join(out_dir, "best.params")) as path:
            save_params(ema.sync() if ema is not None else net, path)
    if os.environ.get(SAVE_ALL_RANKS_ENV, "") not in ("", "0"):  # checking that workers agree
        with _writing(os.path.join(out_dir, f"final-rank{rank}.params")) as path:
            save_params(net, path)


@contextlib.contextmanager
def _writing(path):
    """Turn an OSError of writing ``path`` (a full disk, a file size limit, permissions) into a
    CheckpointError that names the file.  Yields ``path``."""
    try:
        yield path
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint file {path}: {exc.strerror or exc}; free some space or "
                              "choose another --out") from None


def _remove_stale_temp_files(out_dir):
    """Delete the temporary files a killed writer left in ``out_dir`` (:data:`STALE_TEMP_PATTERNS`).

    Only regular files (or symlinks) with those names, never folders; a file that
    cannot be deleted is left.  Returns the names deleted."""
    try:
        names = os.listdir(out_dir)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in STALE_TEMP_PATTERNS):
            continue
        path = os.path.join(out_dir, name)
        try:
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                os.unlink(path)
                removed.append(name)
        except OSError:
            pass
    return removed


def _start_weight_average(net, recipe, ctxs, out_dir, ck, start_epoch):
    """The run's :class:`_WeightAverage` (None when the recipe has no ``ema_decay``): the checkpoint's,
    or a new one that starts from the current weights.

    Raises
    ------
    CheckpointError
        The checkpoint's average has another decay than the recipe's, or its file is
        missing, damaged (sha256) or not of this net.
    """
    decay = recipe.optimizer.ema_decay
    entry = ck.get("ema") if ck is not None else None
    if not decay:
        return None
    if entry is None:   # a new run, or a checkpoint written without an average
        return _WeightAverage(net, recipe, ctxs, started_epoch=start_epoch)
    path = os.path.join(out_dir, entry["file"])
    if entry["decay"] != decay:
        raise CheckpointError(f"{os.path.join(out_dir, CHECKPOINT)}: the run averages its weights with "
                              f"ema_decay {entry['decay']}, the recipe says {decay}; resume with the run's recipe")
    ema = _WeightAverage(net, recipe, ctxs, started_epoch=entry["started_epoch"], num_update=entry["num_update"])
    load_params_into(ema.net, path, ctx=ctxs)   # WeightsFormatError: a missing or damaged file
    try:
        _check_sha256(path, ck["sha256"]["ema"])
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}; {_FIX}") from None
    return ema


def _write_checkpoint(out_dir, net, trainer, epoch, history, best, save_states=True, ema=None):
    """Write the checkpoint of ``epoch``: weights, optimizer state, then checkpoint.json and metrics.jsonl.

    Each file is written atomically and hashed; ``checkpoint.json`` (which names the
    files and records their sha256) replaces the previous one only once both are
    whole, then the previous epoch's files are deleted.  ``save_states=False``
    (``dist_async``) records ``"optimizer": null``.

    Raises
    ------
    CheckpointError
        A file cannot be written (full disk, file size limit, permissions).
    """
    params, opt_file = f"epoch-{epoch:04d}.params", f"epoch-{epoch:04d}.optimizer.params"
    with _writing(os.path.join(out_dir, params)) as path:
        save_params(net, path)
        sha = {"params": sha256_file(path)}
    if save_states:
        moments, scalars = _optimizer_state(trainer, net)
        with _writing(os.path.join(out_dir, opt_file)) as path:
            save_params(_NamedArrays(moments), path)   # the .params format, through capszoo._weights
            sha["optimizer"] = sha256_file(path)
        optimizer = dict(scalars, file=opt_file)
    else:  # dist_async: the optimizer state is on the servers
        optimizer, opt_file = None, None
    ck = {"format": FORMAT_VERSION, "epoch": epoch, "params": params, "optimizer": optimizer, "sha256": sha,
          "history": history, "best": best, "architecture": _arch_signature(net)}
    ema_file = None
    if ema is not None:
        ema_file = f"epoch-{epoch:04d}.ema.params"
        with _writing(os.path.join(out_dir, ema_file)) as path:
            save_params(ema.sync(), path)
            sha["ema"] = sha256_file(path)
        ck["ema"] = ema.entry(ema_file)
    with _writing(os.path.join(out_dir, CHECKPOINT)) as path:
        atomic_write_json(path, ck)
    with _writing(os.path.join(out_dir, "metrics.jsonl")) as path:
        atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in history))
    try:
        names = os.listdir(out_dir)
    except OSError:
        names = []
    for f in names:  # drop older epoch files (of either format), after the new checkpoint is in place
        if f.startswith("epoch-") and f not in (params, opt_file, ema_file) and not f.endswith(".tmp"):
            try:
                os.unlink(os.path.join(out_dir, f))
            except OSError:
                pass


def load_run_weights(out_dir, net, ctx=None):
    """Load ``best.params`` of a run directory into ``net``."""
    return load_params_into(net, os.path.join(out_dir, "best.params"), ctx=ctx)
