"""Hardening: training under faults -- kill -9 at points of a run and in the middle of checkpoint
writes, then --resume; broken run directories; a full disk.

Kill and resume (the CLI): ``capszoo train`` of ``conftest.REFERENCE_ARGS`` (``capszoo train capsnet-mnist
--limit 600 --epochs 3 --batch-size 16 --max-steps 2 --seed 7 --validation-size 100``, with
``OMP_NUM_THREADS=conftest.REFERENCE_THREADS``) is killed with SIGKILL at each of :data:`KILL_POINTS` in
turn -- each kill in the process that resumed after the previous one -- then resumed to the end, and
compared with an uninterrupted run of the same command (``conftest.reference_run``).  Every kill waits
for an event of the run (a line of its output, a temporary file appearing), never for a time, so it
lands in the same phase on a fast machine and on a loaded one.

Tolerance: 0 (bit-identical weights, Adam states and metrics).  It holds because

* every random draw is a function of (seed, epoch): the validation split
  (``split_seed``), the epoch's permutation ``default_rng([seed, epoch])`` and shifts
  ``default_rng([seed, epoch, 1])``, and the initialization (``mx.random.seed(seed)``),
  which a resumed run overwrites with the checkpoint anyway -- nothing depends on
  how many numbers an earlier, killed process drew;
* the CPU kernels are deterministic for a given number of OpenMP threads (each
  reduction is summed in one fixed order), and every run here has the same number;
* a checkpoint holds the exact float32 parameters (``epoch-NNNN.params``) and the
  exact Adam state (both moments in ``epoch-NNNN.optimizer.params``, the update
  counts behind the bias correction and the other scalars in ``checkpoint.json``),
  and a resumed epoch starts from the learning rate of its epoch number; the
  checkpoint is only referenced by ``checkpoint.json`` (replaced last, with the
  sha256 of both files) once both files are whole.

A run directory of checkpoint format 1 (the optimizer state in a pickled
``epoch-NNNN.states``, written by capszoo before format 2) resumes too, bit for
bit (:func:`test_legacy_checkpoint_resumes_bit_identical`); its broken variants
are :data:`LEGACY_CASES`.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REFERENCE_ARGS as ARGS, train_env as _env
from harden_summary import harden

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent

#: Where the run is killed, in this order: (name, (kind, what the kill waits for), the phase it lands in,
#: the epoch whose checkpoint is complete at the kill).  "line": a line of the run's output (stdout and
#: stderr) matching the regex; "file": a new temporary file of the run directory whose name starts so.
KILL_POINTS = [
    ("validating-epoch-1", ("line", r"^epoch 1/3 \[#+\] 2/2 "),
     "epoch 1's last step is done and it validates: no checkpoint yet (the resume starts afresh)", 0),
    ("training-epoch-2", ("line", r"^epoch 1: loss "),
     "epoch 1's checkpoint is complete (this line follows it): the steps of epoch 2", 1),
    ("validating-epoch-2", ("line", r"^epoch 2/3 \[#+\] 2/2 "), "epoch 2 validates; nothing of it written", 1),
    ("writing-epoch-2-params", ("file", ".epoch-0002.params."), "save_params of epoch 2's weights", 1),
    ("writing-epoch-2-optimizer", ("file", ".epoch-0002.optimizer.params."),
     "Adam's moments of epoch 2 (its weights file is whole and unreferenced)", 1),
    ("writing-epoch-2-ema", ("file", ".epoch-0002.ema.params."),
     "the moving average of epoch 2 (its weights and moments files are whole and unreferenced)", 1),
]
#: A hang guard for each process (a run of the reference command takes about 1 minute on 2 busy cores).
HANG_SECONDS = 1800
#: A hang guard for a refusal that reads no more than a header: reading a 1 GB file or recursing through
#: 100,000 levels of nesting would take far longer; speed itself is not tested here.
HANG_GUARD_SECONDS = 120


def _cli(args, out, **kw):
    return subprocess.Popen([sys.executable, "-m", "capszoo.cli", *args, "--out", str(out)], env=_env(),
                            cwd=str(REPO), **kw)


def _tmp_files(run):
    return sorted(f for f in os.listdir(run) if f.startswith(".") and f.endswith(".tmp"))


def _ck_epoch(run):
    try:
        return json.loads((run / "checkpoint.json").read_text())["epoch"]
    except (OSError, ValueError):
        return 0


def _optimizer_state(run):
    """The Adam state of a run's checkpoint: its moments as {name: bytes} (bit for bit) and the scalars of
    checkpoint.json (update counts, num_update, lr, ...; the file name and sha256 included)."""
    from capszoo import read_params
    ck = json.loads((run / "checkpoint.json").read_text())
    assert ck["format"] == 2, ck["format"]
    moments = {k: a.tobytes() for k, a in read_params(run / ck["optimizer"]["file"]).items()}
    return {"moments": moments, "scalars": ck["optimizer"], "sha256": ck["sha256"]}


def _metrics(run):
    h = json.loads((run / "checkpoint.json").read_text())["history"]
    return [{k: v for k, v in m.items() if k not in ("images_per_second", "epoch_seconds")} for m in h]


@pytest.fixture(scope="module")
def reference(reference_run):
    """The uninterrupted run (shared with tests/test_training.py)."""
    return {"dir": reference_run}


def _kill_at(event, args, run):
    """Start ``capszoo train args``, kill it with SIGKILL the moment ``event`` happens; what it left."""
    kind, what = event
    before = set(_tmp_files(run)) if run.is_dir() else set()
    p = subprocess.Popen([sys.executable, "-m", "capszoo.cli", *args, "--out", str(run)], cwd=str(REPO),
                         env=dict(_env(), PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    fired, lines = threading.Event(), []

    def read():   # the line event kills from here, as soon as the line is read
        for raw in p.stdout:
            lines.append(raw.decode(errors="replace"))
            if kind == "line" and not fired.is_set() and re.search(what, lines[-1]):
                fired.set()
                os.kill(p.pid, signal.SIGKILL)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + HANG_SECONDS
    trigger = None
    while time.monotonic() < deadline and p.poll() is None and not fired.is_set():
        if kind == "file" and run.is_dir():
            new = [f for f in _tmp_files(run) if f.startswith(what) and f not in before]
            if new:
                os.kill(p.pid, signal.SIGKILL)   # a dead process's pid is not reused before it is waited for
                fired.set()
                trigger = new[0]
                break
        time.sleep(0.001)
    if not fired.is_set() and p.poll() is None:
        p.kill()
    status = p.wait(timeout=60)
    reader.join(30)
    return {"trigger": trigger or (lines[-1].strip() if fired.is_set() else None),
            "killed_while_running": fired.is_set() and status == -signal.SIGKILL,
            "checkpoint_epoch_at_kill": _ck_epoch(run) if run.is_dir() else 0,
            "temp_files_at_kill": _tmp_files(run) if run.is_dir() else [], "log": "".join(lines)[-2000:]}


@pytest.fixture(scope="module")
def killed_runs(reference, mnist_dir, tmp_path_factory):
    """One run killed at every point of KILL_POINTS in turn, resumed after each kill, then to its end."""
    run = tmp_path_factory.mktemp("killed") / "run"
    args = ARGS + ["--data-dir", str(mnist_dir)]
    points = {}
    for i, (name, event, _, _) in enumerate(KILL_POINTS):
        points[name] = _kill_at(event, args + (["--resume"] if i else []), run)
    q = _cli(args + ["--resume"], run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = q.communicate(timeout=HANG_SECONDS)[0].decode()
    return {"dir": run, "points": points, "status": q.returncode, "log": log[-2000:],
            "temp_files_after_resume": _tmp_files(run)}


@harden("training", "capszoo train --resume", inputs=lambda p: [f"kill -9 at {p['point']}"])
@pytest.mark.slow
@pytest.mark.parametrize("point", [k[0] for k in KILL_POINTS])
def test_kill_9_lands_at_its_point(point, killed_runs, record_property):
    i = [k[0] for k in KILL_POINTS].index(point)
    _, (kind, what), _, epoch = KILL_POINTS[i]
    st = killed_runs["points"][point]
    record_property("kill_state", {k: v for k, v in st.items() if k != "log"})
    assert st["killed_while_running"], f"the run ended before the kill point: {st}"
    assert st["checkpoint_epoch_at_kill"] == epoch, st
    if kind == "file":
        assert st["trigger"].startswith(what) and st["trigger"] in st["temp_files_at_kill"], st
    if i:   # the resume removed what the previous kill left behind before it went on
        assert not set(killed_runs["points"][KILL_POINTS[i - 1][0]]["temp_files_at_kill"]) & \
            set(st["temp_files_at_kill"]), st


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(reference, killed_runs):
    """After the six kills and resumes: the uninterrupted run's weights, Adam state and metrics, exactly."""
    from capszoo import read_params
    assert killed_runs["status"] == 0, killed_runs["log"]
    run, ref = killed_runs["dir"], reference["dir"]
    for name in ("epoch-0003.params", "epoch-0003.ema.params", "best.params"):
        a, b = read_params(ref / name), read_params(run / name)
        assert a.keys() == b.keys()
        differ = [k for k in a if a[k].tobytes() != b[k].tobytes()]
        assert differ == [], f"{name}: {differ} differ (tolerance 0)"
    assert _optimizer_state(run) == _optimizer_state(ref)
    assert _metrics(run) == _metrics(ref)
    assert (run / "metrics.jsonl").read_text().count("\n") == 3
    assert sorted(os.listdir(run)) == sorted(os.listdir(ref))


@pytest.mark.slow
def test_resume_removes_stale_temp_files(killed_runs):
    """A kill during a checkpoint leaves .epoch-NNNN.params.XXXX.tmp (up to 33 MB) or .optimizer.params (65 MB):
    train() deletes such files of its run directory (rank 0, capszoo._train.STALE_TEMP_PATTERNS) before training."""
    left = [f for st in killed_runs["points"].values() for f in st["temp_files_at_kill"]]
    assert len(left) >= 3, left   # the three writing-* kills each left one
    assert killed_runs["temp_files_after_resume"] == []


# ---------------------------------------------------------------------------------------------
# Broken run directories, resumed through the API (one process) and, for a few, through the CLI


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    _replace(path, bytes(data))


def _replace(path, data):
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.write_bytes(data)


def _ck_edit(**changes):
    def mutate(run):
        ck = json.loads((run / "checkpoint.json").read_text())
        for k, v in changes.items():
            if v is ...:
                ck.pop(k, None)
            else:
                ck[k] = v
        _replace(run / "checkpoint.json", json.dumps(ck).encode())
    return mutate


def _non_finite(name, key, index, value):
    """Set element ``index`` of array ``key`` of the .params file ``name`` to ``value`` (NaN or inf)."""
    def mutate(run):
        from capszoo import read_params
        sys.path.insert(0, str(HERE))
        import test_harden_weights as hw
        arrays = read_params(run / name)
        arrays[key] = arrays[key].copy()
        arrays[key][index] = value
        _replace(run / name, hw.encode(arrays))
    return mutate


def _nan_params_in(name):
    return _non_finite(name, "ReLUConv1.bias", 3, np.nan)


_nan_params = _nan_params_in("epoch-0003.params")
_nan_moment = _non_finite("epoch-0003.optimizer.params", "var:PrimaryCaps.bias", 5, np.inf)


def _small_params(run):
    sys.path.insert(0, str(HERE))
    import test_harden_weights as hw
    _replace(run / "epoch-0003.params", hw.SMALL)


def _code_running_pickle(path):
    """A protocol-0 pickle calling os.mkdir(<run>/pwned) when loaded (benign, but it is code)."""
    def mutate(run):
        _replace(run / path, b"cos\nmkdir\n(V" + str(run / "pwned").encode() + b"\ntR.")
    return mutate


def _flip_mantissa(fname, key):
    """Flip the lowest mantissa byte of one value of array ``key`` of ``fname``: a finite, wrong value."""
    def mutate(run):
        from capszoo import read_params
        path = run / fname
        pos = 24
        for k, a in read_params(path).items():
            pos += 12 + 8 * a.ndim + 12
            if k == key:
                _flip(path, pos + 4 * min(1000, a.size - 1))
                return
            pos += a.nbytes
        raise AssertionError(f"{key} not found")
    return mutate


def _ck_edit_in(key, **changes):
    """Change (or, with ..., remove) entries of the object ``key`` of checkpoint.json."""
    def mutate(run):
        ck = json.loads((run / "checkpoint.json").read_text())
        for k, v in changes.items():
            if v is ...:
                ck[key].pop(k, None)
            else:
                ck[key][k] = v
        _replace(run / "checkpoint.json", json.dumps(ck).encode())
    return mutate


def _ck_apply(fn):
    """checkpoint.json changed by ``fn(ck)`` (in place)."""
    def mutate(run):
        ck = json.loads((run / "checkpoint.json").read_text())
        fn(ck)
        _replace(run / "checkpoint.json", json.dumps(ck).encode())
    return mutate


#: The optimizer state file of the reference run (checkpoint format 2: Adam's moments, .params format).
OPT = "epoch-0003.optimizer.params"
#: Its moving average of the weights (the recipe's optimizer.ema_decay).
EMA = "epoch-0003.ema.params"

#: (id, mutation of a copy of the finished reference run, expected errors, regex, known gap or None).
#: A known gap (a strict xfail) is a reason string; none is left: the gaps of capszoo/_train.py listed
#: here before (unchecked checkpoint.json fields, unwrapped optimizer-state loading, no sha256, a pickled
#: optimizer state) are closed.
RUN_DIR_CASES = [
    ("params-file-deleted", lambda r: (r / "epoch-0003.params").unlink(),
     ("WeightsFormatError",), r"epoch-0003\.params: no such file", None),
    ("checkpoint-names-missing-params", _ck_edit(params="epoch-0009.params"),
     ("WeightsFormatError",), r"epoch-0009\.params: no such file", None),
    ("params-truncated", lambda r: _replace(r / "epoch-0003.params", (r / "epoch-0003.params").read_bytes()[:1 << 20]),
     ("WeightsFormatError",), r"epoch-0003\.params: .*larger than the file", None),
    ("params-wrong-magic", lambda r: _flip(r / "epoch-0003.params", 0),
     ("WeightsFormatError",), r"wrong magic number", None),
    ("params-empty", lambda r: _replace(r / "epoch-0003.params", b""),
     ("WeightsFormatError",), r"0 bytes is too short", None),
    ("params-nan", _nan_params, ("WeightsFormatError",), r"ReLUConv1\.bias holds 1 NaN/inf values", None),
    ("params-of-another-net", _small_params, ("WeightsFormatError",), r"missing ReLUConv1\.weight", None),
    ("params-is-a-folder", lambda r: ((r / "epoch-0003.params").unlink(), (r / "epoch-0003.params").mkdir()),
     ("WeightsFormatError",), r"not a regular file", None),
    ("params-byte-flipped-in-data", _flip_mantissa("epoch-0003.params", "PrimaryCaps.weight"),
     ("CheckpointError",), r"epoch-0003\.params has sha256 [0-9a-f]{64}, but checkpoint\.json records", None),
    ("checkpoint-json-truncated", lambda r: _replace(r / "checkpoint.json", (r / "checkpoint.json").read_bytes()[:50]),
     ("CheckpointError",), r"checkpoint\.json is unreadable", None),
    ("checkpoint-json-binary", lambda r: _replace(r / "checkpoint.json", b"\xff\xfe\x00garbage"),
     ("CheckpointError",), r"checkpoint\.json is unreadable", None),
    ("checkpoint-json-nested-deeply", lambda r: _replace(r / "checkpoint.json", b"[" * 100_000 + b"]" * 100_000),
     ("CheckpointError",), r"checkpoint\.json is unreadable", None),
    ("checkpoint-json-a-list", lambda r: _replace(r / "checkpoint.json", b"[]"),
     ("CheckpointError",), r"not a capszoo checkpoint of format 1", None),
    ("checkpoint-json-format-3", _ck_edit(format=3), ("CheckpointError",), r"not a capszoo checkpoint", None),
    ("checkpoint-json-format-true", _ck_edit(format=True), ("CheckpointError",), r"not a capszoo checkpoint", None),
    ("checkpoint-unknown-key", _ck_edit(states="epoch-0003.states"), ("CheckpointError",),
     r"unexpected 'states' \(format 2 checkpoints have", None),
    ("checkpoint-params-escapes", _ck_edit(params="../reference/epoch-0003.params"),
     ("CheckpointError",), r"bad params entry", None),
    ("checkpoint-params-absolute", _ck_edit(params="/etc/passwd"), ("CheckpointError",), r"bad params entry", None),
    ("checkpoint-params-null", _ck_edit(params=None), ("CheckpointError",), r"bad params entry None", None),
    ("checkpoint-epoch-not-a-number", _ck_edit(epoch="three"), ("CheckpointError",),
     r"epoch must be an integer from 1 to 10000, got 'three'", None),
    ("checkpoint-epoch-zero", _ck_edit(epoch=0), ("CheckpointError",), r"epoch must be an integer from 1", None),
    ("checkpoint-epoch-true", _ck_edit(epoch=True), ("CheckpointError",), r"epoch must be an integer from 1", None),
    ("checkpoint-epoch-huge", _ck_edit(epoch=10 ** 30), ("CheckpointError",), r"epoch must be an integer", None),
    ("checkpoint-epoch-missing", _ck_edit(epoch=...), ("CheckpointError",), r"missing epoch", None),
    ("checkpoint-history-null", _ck_edit(history=None), ("CheckpointError",),
     r"history must be a list of 3 epoch records", None),
    ("checkpoint-history-too-short", _ck_apply(lambda ck: ck["history"].pop()), ("CheckpointError",),
     r"history must be a list of 3 epoch records .*got a list of 2", None),
    ("checkpoint-history-entry-a-string", _ck_apply(lambda ck: ck["history"].__setitem__(1, "epoch 2")),
     ("CheckpointError",), r"history entry 2 must be the metrics of epoch 2", None),
    ("checkpoint-history-out-of-order", _ck_apply(lambda ck: ck["history"].reverse()), ("CheckpointError",),
     r"history entry 1 must be the metrics of epoch 1", None),
    ("checkpoint-history-value-a-list", _ck_apply(lambda ck: ck["history"][0].update(train_loss=[1])),
     ("CheckpointError",), r"history entry 1", None),
    ("checkpoint-best-missing", _ck_edit(best=...), ("CheckpointError",), r"missing best", None),
    ("checkpoint-best-a-number", _ck_edit(best=0.99), ("CheckpointError",), r"best must be", None),
    ("checkpoint-best-epoch-beyond", _ck_edit_in("best", epoch=9), ("CheckpointError",),
     r"best epoch must be -1 \(none yet\) or an epoch from 1 to 3, got 9", None),
    ("checkpoint-best-accuracy-edited", _ck_edit_in("best", val_accuracy=0.999), ("CheckpointError",),
     r"best val_accuracy 0\.999 is not that of epoch", None),
    ("checkpoint-optimizer-not-an-object", _ck_edit(optimizer=OPT), ("CheckpointError",),
     r"bad optimizer entry", None),
    ("checkpoint-optimizer-file-escapes", _ck_edit_in("optimizer", file="../reference/" + OPT),
     ("CheckpointError",), r"bad optimizer file entry", None),
    ("checkpoint-optimizer-file-hidden", _ck_edit_in("optimizer", file="." + OPT),
     ("CheckpointError",), r"bad optimizer file entry", None),
    ("checkpoint-optimizer-names-missing-file", _ck_edit_in("optimizer", file="epoch-0009.optimizer.params"),
     ("CheckpointError",), r"epoch-0009\.optimizer\.params is missing", None),
    ("checkpoint-optimizer-name-sgd", _ck_edit_in("optimizer", name="sgd"), ("CheckpointError",),
     r"optimizer name must be 'adam', got 'sgd'", None),
    ("checkpoint-optimizer-num-update-string", _ck_edit_in("optimizer", num_update="6"), ("CheckpointError",),
     r"optimizer num_update must be an integer", None),
    ("checkpoint-optimizer-lr-nan", _ck_edit_in("optimizer", lr=float("nan")), ("CheckpointError",),
     r"optimizer lr must be a finite number > 0, got nan", None),
    ("checkpoint-optimizer-beta1-one", _ck_edit_in("optimizer", beta1=1.0), ("CheckpointError",),
     r"optimizer beta1 must be a number in \[0, 1\)", None),
    ("checkpoint-optimizer-key-missing", _ck_edit_in("optimizer", rescale_grad=...), ("CheckpointError",),
     r"bad optimizer entry: expected an object with", None),
    ("checkpoint-optimizer-count-negative",
     _ck_apply(lambda ck: ck["optimizer"]["update_counts"]["0"].update({"ReLUConv1.weight": -1})),
     ("CheckpointError",), r"update count of ReLUConv1\.weight on device 0 must be an integer", None),
    ("checkpoint-optimizer-count-of-unknown-parameter",
     _ck_apply(lambda ck: ck["optimizer"]["update_counts"]["0"].update({"Bogus.weight": 1})),
     ("CheckpointError",), r"names 'Bogus\.weight', not a parameter of this net", None),
    ("checkpoint-optimizer-count-dropped",
     _ck_apply(lambda ck: ck["optimizer"]["update_counts"]["0"].pop("ReLUConv1.weight")),
     ("CheckpointError",), r"epoch-0003\.optimizer\.params: .*unexpected mean:ReLUConv1\.weight", None),
    ("checkpoint-optimizer-bad-device-id",
     _ck_apply(lambda ck: ck["optimizer"]["update_counts"].update({"cpu": {}})),
     ("CheckpointError",), r"update_counts must map device ids", None),
    ("checkpoint-sha256-missing", _ck_edit(sha256=...), ("CheckpointError",), r"missing sha256", None),
    ("checkpoint-sha256-not-hex", _ck_edit_in("sha256", params="0" * 63 + "g"), ("CheckpointError",),
     r"bad sha256 entry", None),
    ("checkpoint-sha256-swapped",
     _ck_apply(lambda ck: ck["sha256"].update(params=ck["sha256"]["optimizer"], optimizer=ck["sha256"]["params"])),
     ("CheckpointError",), r"epoch-0003\.params has sha256 [0-9a-f]{64}, but checkpoint\.json records", None),
    ("checkpoint-sha256-without-ema", _ck_apply(lambda ck: ck["sha256"].pop("ema")), ("CheckpointError",),
     r"bad sha256 entry .*expected \{\"ema\": <64 hex digits>, \"optimizer\"", None),
    ("checkpoint-ema-not-an-object", _ck_edit(ema=EMA), ("CheckpointError",),
     r"bad ema entry: expected an object with decay, file, num_update, started_epoch", None),
    ("checkpoint-ema-file-escapes", _ck_edit_in("ema", file="../reference/" + EMA), ("CheckpointError",),
     r"bad ema file entry", None),
    ("checkpoint-ema-decay-one", _ck_edit_in("ema", decay=1.0), ("CheckpointError",),
     r"ema decay must be a number in \(0, 1\), got 1\.0", None),
    ("checkpoint-ema-started-later", _ck_edit_in("ema", started_epoch=4), ("CheckpointError",),
     r"ema started_epoch must be an integer from 0 to 3, got 4", None),
    ("checkpoint-ema-num-update-negative", _ck_edit_in("ema", num_update=-1), ("CheckpointError",),
     r"ema num_update must be an integer", None),
    ("checkpoint-ema-key-missing", _ck_edit_in("ema", started_epoch=...), ("CheckpointError",),
     r"bad ema entry: expected an object with", None),
    ("ema-file-deleted", lambda r: (r / EMA).unlink(), ("WeightsFormatError",),
     r"epoch-0003\.ema\.params: no such file", None),
    ("ema-nan", _nan_params_in(EMA), ("WeightsFormatError",), r"ReLUConv1\.bias holds 1 NaN/inf values", None),
    ("ema-byte-flipped-in-data", _flip_mantissa(EMA, "PrimaryCaps.weight"), ("CheckpointError",),
     r"epoch-0003\.ema\.params has sha256 [0-9a-f]{64}, but checkpoint\.json records", None),
    ("optimizer-file-deleted", lambda r: (r / OPT).unlink(), ("CheckpointError",),
     r"optimizer state file .*epoch-0003\.optimizer\.params is missing", None),
    ("optimizer-truncated", lambda r: _replace(r / OPT, (r / OPT).read_bytes()[:1 << 20]), ("CheckpointError",),
     r"cannot load the optimizer state .*epoch-0003\.optimizer\.params: .*larger than the file", None),
    ("optimizer-empty", lambda r: _replace(r / OPT, b""), ("CheckpointError",),
     r"epoch-0003\.optimizer\.params: 0 bytes is too short", None),
    ("optimizer-is-a-folder", lambda r: ((r / OPT).unlink(), (r / OPT).mkdir()), ("CheckpointError",),
     r"epoch-0003\.optimizer\.params: not a regular file", None),
    ("optimizer-is-a-weights-file", lambda r: _replace(r / OPT, (r / "best.params").read_bytes()),
     ("CheckpointError",), r"epoch-0003\.optimizer\.params.*missing mean:", None),
    ("optimizer-inf", _nan_moment, ("CheckpointError",),
     r"epoch-0003\.optimizer\.params.*var:PrimaryCaps\.bias holds 1 NaN/inf values", None),
    ("optimizer-byte-flipped-in-data", _flip_mantissa(OPT, "var:PrimaryCaps.weight"), ("CheckpointError",),
     r"epoch-0003\.optimizer\.params has sha256 [0-9a-f]{64}, but checkpoint\.json records", None),
    ("optimizer-is-a-code-running-pickle", _code_running_pickle(OPT), ("CheckpointError",),
     r"epoch-0003\.optimizer\.params: .*wrong magic number", None),
]


def _legacy_states_edit(fn):
    """The legacy states pickle (trusted here: the test wrote it) loaded, changed by fn(states, optimizer), saved."""
    def mutate(run):
        import mxnet  # noqa: F401  (the pickle names mxnet classes)
        states, optimizer = pickle.loads((run / LEGACY_STATES).read_bytes())
        fn(states, optimizer)
        _replace(run / LEGACY_STATES, pickle.dumps((states, optimizer)))
    return mutate


def _legacy_nan(states, optimizer):
    import mxnet as mx
    mean = states[0][0].asnumpy()
    mean.flat[0] = np.nan
    states[0] = (mx.nd.array(mean), states[0][1])


def _legacy_scheduler(states, optimizer):
    import mxnet as mx
    optimizer.lr_scheduler = mx.lr_scheduler.FactorScheduler(step=10)


#: The optimizer state of the legacy run (checkpoint format 1, at epoch 2): a Trainer.save_states pickle.
LEGACY_STATES = "epoch-0002.states"

#: (id, mutation of a copy of the legacy run, expected errors, regex): a format-1 run directory.
LEGACY_CASES = [
    ("legacy-states-file-deleted", lambda r: (r / LEGACY_STATES).unlink(), ("CheckpointError",),
     r"epoch-0002\.states: the optimizer state file is missing"),
    ("legacy-states-truncated",
     lambda r: _replace(r / LEGACY_STATES, (r / LEGACY_STATES).read_bytes()[:1 << 20]), ("CheckpointError",),
     r"cannot load the optimizer state .*epoch-0002\.states: (UnpicklingError|EOFError)"),
    ("legacy-states-empty", lambda r: _replace(r / LEGACY_STATES, b""), ("CheckpointError",),
     r"epoch-0002\.states: EOFError"),
    ("legacy-states-is-a-params-file", lambda r: _replace(r / LEGACY_STATES, (r / "best.params").read_bytes()),
     ("CheckpointError",), r"epoch-0002\.states: UnpicklingError"),
    ("legacy-states-pickle-of-wrong-object", lambda r: _replace(r / LEGACY_STATES, pickle.dumps({"a": 1})),
     ("CheckpointError",), r"epoch-0002\.states: not the optimizer state of a capszoo checkpoint"),
    ("legacy-states-pickle-runs-code", _code_running_pickle(LEGACY_STATES), ("CheckpointError",),
     r"epoch-0002\.states: UnpicklingError: it refers to os\.mkdir.*refused"),
    ("legacy-states-pickle-allocates-1TB",
     lambda r: _replace(r / LEGACY_STATES, b"cbuiltins\nbytearray\n(I1000000000000\ntR."), ("CheckpointError",),
     r"epoch-0002\.states: UnpicklingError: bytearray of int"),
    ("legacy-states-with-a-scheduler", _legacy_states_edit(_legacy_scheduler), ("CheckpointError",),
     r"refers to mxnet\.lr_scheduler\.FactorScheduler"),
    ("legacy-states-nan", _legacy_states_edit(_legacy_nan), ("CheckpointError",),
     r"epoch-0002\.states.*mean:\S+ holds 1 NaN/inf values"),
    ("legacy-states-of-parameter-99", _legacy_states_edit(lambda s, o: s.update({99: s[0]})),
     ("CheckpointError",), r"epoch-0002\.states: state of parameter index 99"),
    ("legacy-states-count-negative",
     _legacy_states_edit(lambda s, o: o._all_index_update_counts[0].update({0: -1})),
     ("CheckpointError",), r"epoch-0002\.states: optimizer update count of \S+ on device 0"),
    ("legacy-checkpoint-states-hidden-file", _ck_edit(states=".epoch-0002.states"), ("CheckpointError",),
     r"bad states entry"),
    ("legacy-checkpoint-states-escapes", _ck_edit(states="../reference/epoch-0003.states"), ("CheckpointError",),
     r"bad states entry"),
    ("legacy-checkpoint-with-optimizer-entry", _ck_edit(optimizer=None), ("CheckpointError",),
     r"unexpected 'optimizer' \(format 1 checkpoints have"),
    ("legacy-checkpoint-of-dist-async", _ck_edit(states=None), ("CheckpointError",),
     r"written by a dist_async job"),
]


def _case_params():
    out = []
    for cid, mutate, errors, pattern, gap in RUN_DIR_CASES:
        marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
        out.append(pytest.param(cid, mutate, errors, pattern, id=cid, marks=marks))
    return out


@pytest.fixture(scope="module")
def train_data(mnist_dir):
    from capszoo.data import load_mnist
    images, labels = load_mnist("train", data_dir=mnist_dir)
    return images[:600], labels[:600]


def _copy_run(src, dst):
    """A copy of a run directory (hard links: every mutation replaces files, never edits them)."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def _resume(run, train_data):
    from capszoo import load_recipe
    from capszoo._train import train
    return train(load_recipe("capsnet-mnist"), data=train_data, out_dir=run, epochs=3, batch_size=16, seed=7,
                 resume=True, max_steps_per_epoch=2, validation_size=100, progress=False)


@pytest.mark.slow
@harden("training", "train(resume=True)", inputs=lambda p: [p["cid"]])
@pytest.mark.parametrize("cid,mutate,errors,pattern", _case_params())
def test_broken_run_directory(cid, mutate, errors, pattern, reference, train_data, tmp_path, record_property):
    _assert_resume_refused(reference["dir"], mutate, errors, pattern, train_data, tmp_path)


def _assert_resume_refused(source, mutate, errors, pattern, train_data, tmp_path):
    """Resume a mutated copy of ``source``: a capszoo error of a type in ``errors`` matching
    ``pattern``, and no code of a crafted file ever ran.  Returns the error."""
    import re
    from capszoo.errors import CapszooError
    run = _copy_run(source, tmp_path / "run")
    mutate(run)
    with pytest.raises(Exception) as info:
        _resume(run, train_data)
    exc = info.value
    assert isinstance(exc, CapszooError), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    assert type(exc).__name__ in errors, f"{type(exc).__name__}: {exc}"
    assert re.search(pattern, str(exc)), str(exc)
    assert not (run / "pwned").exists()
    return exc


@pytest.mark.slow
def test_undamaged_copy_resumes(reference, train_data, tmp_path):
    """Control: the copy itself resumes (nothing left to train) with the reference's history."""
    run = _copy_run(reference["dir"], tmp_path / "run")
    res = _resume(run, train_data)
    assert res.epochs_completed == 3


@pytest.mark.slow
@harden("training", "capszoo train --resume", inputs=lambda p: [p["cid"]])
@pytest.mark.parametrize("cid", ["params-file-deleted", "checkpoint-json-truncated"])
def test_broken_run_directory_through_the_cli(cid, reference, mnist_dir, tmp_path, record_property):
    from click.testing import CliRunner
    from capszoo.cli import main
    case = next(c for c in RUN_DIR_CASES if c[0] == cid)
    run = _copy_run(reference["dir"], tmp_path / "run")
    case[1](run)
    r = CliRunner().invoke(main, ARGS + ["--data-dir", str(mnist_dir), "--out", str(run), "--resume"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert "Traceback" not in r.output
    last = r.output.strip().splitlines()[-1]
    import re
    assert last.startswith("Error: ") and re.search(case[3], last), r.output


# ---------------------------------------------------------------------------------------------
# Checkpoint format 1 (before format 2): the optimizer state in a pickled epoch-NNNN.states.  Such run
# directories exist (long runs started with an older capszoo) and must resume, bit for bit.

_LEGACY_TRAIN = r'''
import json, os, runpy, sys
import capszoo._train as t
from capszoo.utils import atomic_path, atomic_write_json, atomic_write_text
from capszoo import save_params


def legacy_write_checkpoint(out_dir, net, trainer, epoch, history, best, save_states=True, ema=None):
    """capszoo's checkpoint writer of format 1 (verbatim but for _arch_signature's module; it knew no
    moving average of the weights: ``ema`` is ignored)."""
    params, states = f"epoch-{epoch:04d}.params", f"epoch-{epoch:04d}.states"
    save_params(net, os.path.join(out_dir, params))
    if save_states:
        with atomic_path(os.path.join(out_dir, states)) as tmp:
            trainer.save_states(tmp)
    else:  # dist_async: the optimizer state is on the servers
        states = None
    ck = {"format": 1, "epoch": epoch, "params": params, "states": states,
          "history": history, "best": best, "architecture": t._arch_signature(net)}
    atomic_write_json(os.path.join(out_dir, "checkpoint.json"), ck)
    atomic_write_text(os.path.join(out_dir, "metrics.jsonl"),
                      "".join(json.dumps(m) + "\n" for m in history))
    for f in os.listdir(out_dir):  # drop older epoch files, after the new checkpoint is in place
        if f.startswith("epoch-") and f not in (params, states) and not f.endswith(".tmp"):
            try:
                os.unlink(os.path.join(out_dir, f))
            except OSError:
                pass


t._write_checkpoint = legacy_write_checkpoint
sys.argv = ["capszoo"] + sys.argv[1:]
runpy.run_module("capszoo.cli", run_name="__main__")
'''


def _with(args, option, value):
    args = list(args)
    args[args.index(option) + 1] = value
    return args


@pytest.fixture(scope="module")
def legacy_run(mnist_dir, tmp_path_factory):
    """A run directory of checkpoint format 1 after epoch 2 of the reference command (to be resumed to 3)."""
    out = tmp_path_factory.mktemp("legacy") / "run"
    args = _with(ARGS, "--epochs", "2") + ["--data-dir", str(mnist_dir), "--out", str(out)]
    p = subprocess.run([sys.executable, "-c", _LEGACY_TRAIN, *args], capture_output=True, text=True,
                       timeout=HANG_SECONDS, env=_env(), cwd=str(REPO))
    assert p.returncode == 0, p.stderr[-2000:]
    ck = json.loads((out / "checkpoint.json").read_text())
    assert ck["format"] == 1 and ck["states"] == LEGACY_STATES and "sha256" not in ck, ck.keys()
    assert sorted(os.listdir(out)) == ["best.params", "checkpoint.json", "epoch-0002.params", LEGACY_STATES,
                                       "metrics.jsonl", "run.json"]
    return out


@pytest.mark.slow
def test_legacy_checkpoint_resumes_bit_identical(reference, legacy_run, mnist_dir, tmp_path, record_property):
    """Format 1 -> --resume with this capszoo -> the reference's weights, Adam state and training metrics,
    exactly; the checkpoint after the resumed epoch is of format 2 and the pickle is gone.  Format 1 had no
    moving average of the weights: the resumed run starts one after epoch 2 (the reference's started at 0),
    so the averaged weights (best.params, validation) are the one thing that differs."""
    from capszoo import read_params
    run = _copy_run(legacy_run, tmp_path / "run")
    q = _cli(ARGS + ["--data-dir", str(mnist_dir), "--resume"], run, stdout=subprocess.PIPE,
             stderr=subprocess.STDOUT)
    log = q.communicate(timeout=HANG_SECONDS)[0].decode()
    assert q.returncode == 0, log[-2000:]
    ref = reference["dir"]
    a, b = read_params(ref / "epoch-0003.params"), read_params(run / "epoch-0003.params")
    assert a.keys() == b.keys() and [k for k in a if a[k].tobytes() != b[k].tobytes()] == []
    got, want = _optimizer_state(run), _optimizer_state(ref)
    assert got["sha256"].pop("ema") != want["sha256"].pop("ema")
    assert got == want
    averaged = ("val_accuracy", "val_errors", "val_accuracy_raw")
    assert [{k: v for k, v in m.items() if k not in averaged} for m in _metrics(run)] == \
        [{k: v for k, v in m.items() if k not in averaged} for m in _metrics(ref)]
    assert _metrics(run)[2]["val_accuracy_raw"] == _metrics(ref)[2]["val_accuracy_raw"]   # the same weights
    ema = json.loads((run / "checkpoint.json").read_text())["ema"]
    assert ema == {"file": "epoch-0003.ema.params", "decay": 0.999, "num_update": 2, "started_epoch": 2}
    assert sorted(os.listdir(run)) == sorted(os.listdir(ref)) == [
        "best.params", "checkpoint.json", "epoch-0003.ema.params", "epoch-0003.optimizer.params",
        "epoch-0003.params", "metrics.jsonl", "run.json"]


@pytest.mark.slow
@harden("training", "train(resume=True)", inputs=lambda p: [p["cid"]])
@pytest.mark.parametrize("cid,mutate,errors,pattern", LEGACY_CASES, ids=[c[0] for c in LEGACY_CASES])
def test_broken_legacy_run_directory(cid, mutate, errors, pattern, legacy_run, train_data, tmp_path,
                                     record_property):
    exc = _assert_resume_refused(legacy_run, mutate, errors, pattern, train_data, tmp_path)
    assert "remove the run directory" in str(exc) or "start a new run" in str(exc), str(exc)


_FSIZE_TRAIN = r"""
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
sys.argv = ["capszoo"] + sys.argv[1:]
runpy.run_module("capszoo.cli", run_name="__main__")
"""


@pytest.mark.slow
@harden("training", "capszoo train", inputs=["a full disk (RLIMIT_FSIZE 1 MB)"])
def test_full_disk_during_training_is_a_clean_error(mnist_dir, tmp_path, record_property):
    """A write of the run directory that fails (here RLIMIT_FSIZE: the 33 MB weights hit 1 MB) is a
    CheckpointError naming the file and what to do, not a traceback."""
    run = tmp_path / "run"
    args = ["train", "capsnet-mnist", "--data-dir", str(mnist_dir), "--limit", "200", "--epochs", "1",
            "--batch-size", "16", "--max-steps", "1", "--validation-size", "50", "--out", str(run)]
    proc = subprocess.run([sys.executable, "-c", _FSIZE_TRAIN, *args], capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=str(REPO))
    assert not _tmp_files(run), _tmp_files(run)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    import re
    assert re.match(r"Error: cannot write checkpoint file \S+\.params: .*; free some space or choose another --out$",
                    last), last


# ---------------------------------------------------------------------------------------------
# Bad recipes: a .toml file given to load_recipe and to `capszoo train FILE`, and bad CLI overrides


def _bundled_recipe_text():
    import importlib.resources
    return (importlib.resources.files("capszoo.recipes") / "capsnet-mnist.toml").read_text()


def _set(key, value):
    """The bundled recipe with the (unique) line ``key = ...`` changed."""
    import re

    def make():
        text, n = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", _bundled_recipe_text())
        assert n == 1, key
        return text.encode()
    return make


def _sparse_recipe(path):
    with open(path, "wb") as fh:
        fh.truncate(1 << 30)


#: (id, bytes of the .toml file (or a function writing it), regex of the RecipeError)
RECIPE_CASES = [
    ("learning-rate-nan", _set("learning_rate", "nan"), r"optimizer\.learning_rate must be > 0 and finite, got nan"),
    ("learning-rate-inf", _set("learning_rate", "inf"), r"learning_rate must be > 0 and finite, got inf"),
    ("learning-rate-minus-inf", _set("learning_rate", "-inf"), r"learning_rate must be > 0"),
    ("learning-rate-zero", _set("learning_rate", "0.0"), r"learning_rate must be > 0"),
    ("lr-decay-nan", _set("lr_decay", "nan"), r"lr_decay must be in \(0, 1\], got nan"),
    ("init-scale-inf", _set("pred_vects_init_scale", "inf"), r"pred_vects_init_scale must be > 0 and finite"),
    ("reco-weight-nan", _set("reco_weight", "nan"), r"loss\.reco_weight must be a finite number >= 0, got nan"),
    ("class-weight-inf", _set("class_weight", "inf"), r"loss\.class_weight must be a finite number >= 0, got inf"),
    ("margin-lambda-negative", _set("margin_lambda", "-1.0"), r"margin_lambda must be a finite number >= 0"),
    ("margin-plus-nan", _set("margin_m_plus", "nan"), r"need 0 <= margin_m_minus < margin_m_plus <= 1"),
    ("margin-lambda-400-digit-int", _set("margin_lambda", "1" + "0" * 400), r"integer of 401 digits"),
    ("epochs-400-digits", _set("epochs", "1" + "0" * 400), r"train\.epochs must be at most 10000, got an integer "
                                                           r"of 401 digits"),
    ("epochs-10001", _set("epochs", "10001"), r"train\.epochs must be at most 10000, got 10001"),
    ("epochs-float", _set("epochs", "3.0"), r"train\.epochs must be of type int, got float"),
    ("epochs-string", _set("epochs", '"3"'), r"train\.epochs must be of type int, got str"),
    ("batch-size-huge", _set("batch_size", "100001"), r"train\.batch_size must be at most 100000"),
    ("seed-negative", _set("seed", "-1"), r"train\.seed must be an integer from 0 to 4294967295, got -1"),
    ("seed-2^32", _set("seed", str(2 ** 32)), r"train\.seed must be an integer from 0 to 4294967295"),
    ("split-seed-negative", _set("split_seed", "-1"), r"data\.split_seed must be >= 0, got -1"),
    ("routing-iterations-10^6", _set("routing_iterations", "1000000"), r"net\.routing_iterations must be at most 100"),
    ("max-shift-negative", _set("max_shift", "-1"), r"max_shift must be 0\.\.8"),
    ("validation-size-negative", _set("validation_size", "-5"), r"validation_size must be >= 0"),
    ("dataset-unknown", _set("dataset", '"cifar10"'), r"data\.dataset 'cifar10' is not supported"),
    ("duplicate-key", lambda: (_bundled_recipe_text() + "seed = 2\n").encode(), r"not valid TOML"),
    ("not-utf8", lambda: b"\xff\xfe" + _bundled_recipe_text().encode("utf-16-le"), r"not valid TOML"),
    ("binary-garbage", lambda: bytes(range(256)) * 4, r"not valid TOML"),
    ("empty-file", lambda: b"", r"missing name, model, description, net, loss, optimizer, data, train"),
    ("deeply-nested-array", lambda: ("a = " + "[" * 100_000 + "]" * 100_000).encode(), r"nested too deeply"),
    ("deeply-nested-table", lambda: ("a = " + "{b = " * 5000 + "1" + "}" * 5000).encode(), r"nested too deeply"),
    ("sparse-1GB-file", _sparse_recipe, r"1,073,741,824 bytes, larger than any recipe"),
]


def _write_recipe(make, path):
    if make is _sparse_recipe:
        make(path)
    else:
        path.write_bytes(make())
    return path


@harden("training", "load_recipe", inputs=lambda p: [f"recipe: {p['cid']}"])
@pytest.mark.parametrize("cid,make,pattern", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_file(cid, make, pattern, tmp_path, record_property):
    from capszoo import load_recipe
    from capszoo.errors import RecipeError
    path = _write_recipe(make, tmp_path / "bad.toml")
    t0 = time.monotonic()
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    import re
    assert re.search(pattern, str(info.value)), str(info.value)
    assert time.monotonic() - t0 < HANG_GUARD_SECONDS


@harden("training", "capszoo train FILE", inputs=lambda p: [f"recipe: {p['cid']}"])
@pytest.mark.parametrize("cid,make,pattern", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_file_through_the_cli(cid, make, pattern, tmp_path, record_property):
    import re
    from click.testing import CliRunner
    from capszoo.cli import main
    path = _write_recipe(make, tmp_path / "bad.toml")
    r = CliRunner().invoke(main, ["train", str(path), "--out", str(tmp_path / "run"), "--data-dir",
                                  str(tmp_path / "no-mnist-needed")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output[-500:])
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and re.search(pattern, last), r.output[-500:]
    assert not (tmp_path / "run").exists()


@harden("training", "capszoo train options", inputs=lambda p: [f"{p['option']} {p['value']}"])
@pytest.mark.parametrize("option,value,pattern", [
    ("--seed", "-1", r"train\.seed must be an integer from 0 to 4294967295, got -1"),
    ("--seed", str(2 ** 32), r"train\.seed must be an integer from 0 to 4294967295"),
    ("--seed", "1" + "0" * 40, r"train\.seed must be an integer from 0"),
    ("--epochs", "0", r"Invalid value for '--epochs'"),
    ("--batch-size", "-3", r"Invalid value for '--batch-size'"),
    ("--validation-size", "600", r"validation_size 600 leaves no training data out of 600 images"),
    ("--limit", "0", r"Invalid value for '--limit'"),
])
def test_bad_train_options(option, value, pattern, mnist_dir, tmp_path, record_property):
    import re
    from click.testing import CliRunner
    from capszoo.cli import main
    args = ["train", "capsnet-mnist", "--data-dir", str(mnist_dir), "--limit", "600", "--epochs", "1",
            "--max-steps", "1", "--out", str(tmp_path / "run"), option, value]
    r = CliRunner().invoke(main, args)
    assert r.exit_code in (1, 2) and isinstance(r.exception, SystemExit), (r.exception, r.output[-800:])
    assert "Traceback" not in r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and re.search(pattern, last), r.output[-800:]


# ---------------------------------------------------------------------------------------------
# Bad MNIST files in `capszoo train --data-dir` (the idx reader itself: tests/test_data_mnist.py)


def _idx(magic_ndim, dims, data=b""):
    return bytes([0, 0, 8, magic_ndim]) + struct.pack(f">{len(dims)}I", *dims) + data


_IMAGES_OK = _idx(3, (200, 28, 28), bytes(200 * 784))
_LABELS_OK = _idx(1, (200,), bytes(i % 10 for i in range(200)))

#: (id, images file bytes (None: a folder), labels file bytes, error class, regex)
DATA_CASES = [
    ("images-zero-count-hides-huge-dims", _idx(3, (0, 2 ** 32 - 1, 2 ** 32 - 1)), _LABELS_OK, "DataFormatError",
     r"header declares 0x4294967295x4294967295 = 0 values, more than the 268,435,456 accepted"),
    ("images-count-2^32-1", _idx(3, (2 ** 32 - 1, 28, 28)), _LABELS_OK, "DataFormatError",
     r"more than the 268,435,456 accepted"),
    ("images-truncated", _IMAGES_OK[:-100], _LABELS_OK, "DataFormatError", r"the file is truncated or corrupt"),
    ("images-are-labels", _LABELS_OK, _LABELS_OK, "DataFormatError", r"magic number 2049, expected 2051"),
    ("images-16x16", _idx(3, (200, 16, 16), bytes(200 * 256)), _LABELS_OK, "DataFormatError",
     r"images of shape \(16, 16\), expected \(28, 28\)"),
    ("labels-value-10", _IMAGES_OK, _idx(1, (200,), bytes([10]) * 200), "DataFormatError",
     r"label 10 at index 0; MNIST labels are 0-9"),
    ("labels-count-mismatch", _IMAGES_OK, _idx(1, (199,), bytes(199)), "DataFormatError",
     r"200 images but 199 labels"),
    ("images-a-folder", None, _LABELS_OK, "DataFileNotFoundError", r"train-images-idx3-ubyte\(\.gz\) not found"),
    ("no-images-at-all", _idx(3, (0, 28, 28)), _idx(1, (0,)), "InvalidInputError",
     r"validation_size 100 leaves no training data out of 0 images"),
]


@harden("MNIST files", "capszoo train --data-dir", inputs=lambda p: [p["cid"]])
@pytest.mark.parametrize("cid,images,labels,error,pattern", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_mnist_files_to_train(cid, images, labels, error, pattern, tmp_path, record_property):
    import re
    from click.testing import CliRunner
    from capszoo.cli import main
    data = tmp_path / "mnist"
    data.mkdir()
    if images is None:
        (data / "train-images-idx3-ubyte.gz").mkdir()
    else:
        (data / "train-images-idx3-ubyte").write_bytes(images)
    (data / "train-labels-idx1-ubyte").write_bytes(labels)
    t0 = time.monotonic()
    r = CliRunner().invoke(main, ["train", "capsnet-mnist", "--data-dir", str(data), "--epochs", "1",
                                  "--batch-size", "16", "--max-steps", "1", "--validation-size", "100",
                                  "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output[-800:])
    assert "Traceback" not in r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and re.search(pattern, last), r.output[-800:]
    assert time.monotonic() - t0 < HANG_GUARD_SECONDS
    if error != "InvalidInputError":      # the same error, by class, from the library
        from capszoo.data import load_mnist
        with pytest.raises(Exception) as info:
            load_mnist("train", data_dir=data)
        assert type(info.value).__name__ == error and re.search(pattern, str(info.value)), info.value
