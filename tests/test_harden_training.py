"""Hardening: training under faults -- kill -9 at seeded random points and in the middle of
checkpoint writes, then --resume; broken run directories; a full disk.

Kill and resume (the CLI, as tests/test_training.py::test_resume_after_kill_9_matches_uninterrupted):
``capszoo train capsnet-mnist --limit 600 --epochs 3 --batch-size 16 --max-steps 2 --seed 7
--validation-size 100`` with ``OMP_NUM_THREADS=1``, killed with SIGKILL at :data:`KILL_POINTS`,
resumed with ``--resume`` (again and again until it completes), and compared with an
uninterrupted run of the same command.

Tolerance: 0 (bit-identical weights, Adam states and metrics).  It holds because

* every random draw is a function of (seed, epoch): the validation split
  (``split_seed``), the epoch's permutation ``default_rng([seed, epoch])`` and shifts
  ``default_rng([seed, epoch, 1])``, and the initialization (``mx.random.seed(seed)``),
  which a resumed run overwrites with the checkpoint anyway -- nothing depends on
  how many numbers an earlier, killed process drew;
* the CPU kernels are deterministic with one OpenMP thread (``OMP_NUM_THREADS=1``:
  each reduction is summed in one fixed order);
* a checkpoint holds the exact float32 parameters (``.params``) and the exact Adam
  state (``.states``: both moments and the update counts behind the bias
  correction), and a resumed epoch starts from the learning rate of its epoch
  number; the checkpoint is only referenced by ``checkpoint.json`` (replaced last)
  once both files are whole.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent

ARGS = ["train", "capsnet-mnist", "--limit", "600", "--epochs", "3", "--batch-size", "16", "--max-steps", "2",
        "--seed", "7", "--validation-size", "100"]
SEED = 20240611

#: Where the run is killed: (name, what triggers the kill).
KILL_POINTS = [
    ("random-moment", "a seeded random moment between 25 % and 75 % of an uninterrupted run's duration"),
    ("random-moment-after-epoch-1", "a seeded random moment 0-3 s after epoch 1's checkpoint.json appears "
                                    "(training epoch 2 or writing its checkpoint)"),
    ("writing-epoch-2-params", "the moment .epoch-0002.params.*.tmp appears (save_params of the checkpoint)"),
    ("writing-epoch-2-states", "the moment .epoch-0002.states.*.tmp appears (Trainer.save_states)"),
]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


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


def _states_arrays(path):
    """The Adam state of a .states file as {key: bytes} (moments bit for bit) plus the update counts."""
    import mxnet as mx
    states, optimizer = pickle.loads(pathlib.Path(path).read_bytes())
    out = {}
    for k, v in states.items():
        for i, a in enumerate(v if isinstance(v, (tuple, list)) else [v]):
            out[f"{k}/{i}"] = a.asnumpy().tobytes() if isinstance(a, mx.nd.NDArray) else repr(a)
    out["num_update"] = optimizer.num_update
    out["index_update_count"] = sorted(optimizer._index_update_count.items())
    return out


def _metrics(run):
    h = json.loads((run / "checkpoint.json").read_text())["history"]
    return [{k: v for k, v in m.items() if k not in ("images_per_second", "epoch_seconds")} for m in h]


@pytest.fixture(scope="module")
def reference(mnist_dir, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.monotonic()
    p = _cli(ARGS + ["--data-dir", str(mnist_dir)], out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = p.communicate(timeout=600)[0].decode()
    assert p.returncode == 0, log
    return {"dir": out, "seconds": time.monotonic() - t0}


def _kill_and_resume(point, mnist_dir, run, duration, rng):
    args = ARGS + ["--data-dir", str(mnist_dir)]
    p = _cli(args, run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    deadline = t0 + 600
    if point == "random-moment":
        delay = rng.uniform(0.25, 0.75) * duration
        while time.monotonic() - t0 < delay and p.poll() is None:
            time.sleep(0.01)
        trigger = f"{delay:.1f} s after the start"
    elif point == "random-moment-after-epoch-1":
        while time.monotonic() < deadline and p.poll() is None and not (run.is_dir() and _ck_epoch(run) >= 1):
            time.sleep(0.005)
        delay = rng.uniform(0.0, 3.0)
        t1 = time.monotonic()
        while time.monotonic() - t1 < delay and p.poll() is None:
            time.sleep(0.005)
        trigger = f"{delay:.2f} s after epoch 1's checkpoint"
    else:
        prefix = ".epoch-0002.params." if point == "writing-epoch-2-params" else ".epoch-0002.states."
        trigger = None
        while time.monotonic() < deadline and p.poll() is None:
            if run.is_dir() and any(f.startswith(prefix) and f.endswith(".tmp") for f in os.listdir(run)):
                trigger = f"{prefix}*.tmp seen after {time.monotonic() - t0:.1f} s"
                break
            time.sleep(0.001)
    alive = p.poll() is None
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    state = {"trigger": trigger, "killed_while_running": alive,
             "checkpoint_epoch_at_kill": _ck_epoch(run) if run.is_dir() else 0,
             "files_at_kill": sorted(os.listdir(run)) if run.is_dir() else [],
             "temp_files_at_kill": _tmp_files(run) if run.is_dir() else []}
    for attempt in range(3):        # resume until it completes (a resume is never killed here)
        q = _cli(args + ["--resume"], run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        log = q.communicate(timeout=600)[0].decode()
        state[f"resume_{attempt}_status"] = q.returncode
        if q.returncode == 0:
            break
        state["resume_log"] = log[-2000:]
    state["temp_files_after_resume"] = _tmp_files(run)
    return state


@pytest.fixture(scope="module")
def killed_runs(reference, mnist_dir, tmp_path_factory):
    rng = random.Random(SEED)
    root = tmp_path_factory.mktemp("killed")
    out = {}
    for name, _ in KILL_POINTS:
        run = root / name
        out[name] = dict(_kill_and_resume(name, mnist_dir, run, reference["seconds"], rng), dir=run)
    return out


@pytest.mark.parametrize("point", [k for k, _ in KILL_POINTS])
def test_kill_9_then_resume_is_bit_identical(point, reference, killed_runs, record_property):
    from capszoo._weights import read_params
    st = killed_runs[point]
    record_property("harden", ("training: kill -9 then --resume", 1))
    record_property("kill_state", {k: v for k, v in st.items() if k not in ("dir", "resume_log")})
    assert st["killed_while_running"], f"the run finished before the kill point: {st}"
    if point.startswith("writing-"):
        assert st["trigger"], "the temporary file never appeared"
        assert st["checkpoint_epoch_at_kill"] == 1, st   # epoch 2's checkpoint was not complete
    if point == "random-moment-after-epoch-1":
        assert st["checkpoint_epoch_at_kill"] in (1, 2), st
    assert st.get("resume_0_status") == 0, st.get("resume_log")
    run, ref = st["dir"], reference["dir"]
    for name in ("epoch-0003.params", "best.params"):
        a, b = read_params(ref / name), read_params(run / name)
        assert a.keys() == b.keys()
        differ = [k for k in a if a[k].tobytes() != b[k].tobytes()]
        assert differ == [], f"{name}: {differ} differ (tolerance 0)"
    assert _states_arrays(ref / "epoch-0003.states") == _states_arrays(run / "epoch-0003.states")
    assert _metrics(run) == _metrics(ref)
    assert (run / "metrics.jsonl").read_text().count("\n") == 3


@pytest.mark.xfail(strict=True,
                   reason="capszoo/_train.py never removes a killed writer's temporary files: a kill during a "
                          "checkpoint leaves .epoch-NNNN.params.XXXX.tmp (up to 33 MB) or .states (65 MB) in the "
                          "run directory for good (_write_checkpoint's clean-up skips names starting with '.'). "
                          "train(resume=True) needs to delete stale '.epoch-*.tmp' / '.best.params.*.tmp' / "
                          "'.checkpoint.json.*.tmp' files of its run directory (rank 0) before training")
def test_resume_removes_stale_temp_files(killed_runs, record_property):
    record_property("harden", ("training: kill -9 then --resume", 1))
    left = {p: st["temp_files_after_resume"] for p, st in killed_runs.items() if st["temp_files_at_kill"]}
    if not left:
        pytest.skip("no kill landed while a temporary file existed")
    assert all(v == [] for v in left.values()), left


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


def _nan_params(run):
    from capszoo._weights import read_params
    sys.path.insert(0, str(HERE))
    import test_harden_weights as hw
    arrays = read_params(run / "epoch-0003.params")
    arrays["ReLUConv1.bias"] = arrays["ReLUConv1.bias"].copy()
    arrays["ReLUConv1.bias"][3] = np.nan
    _replace(run / "epoch-0003.params", hw.encode(arrays))


def _small_params(run):
    sys.path.insert(0, str(HERE))
    import test_harden_weights as hw
    _replace(run / "epoch-0003.params", hw.SMALL)


def _code_running_states(run):
    """A protocol-0 pickle calling os.mkdir(run / "pwned") when loaded (benign, but it is code)."""
    _replace(run / "epoch-0003.states", b"cos\nmkdir\n(V" + str(run / "pwned").encode() + b"\ntR.")


def _flip_mantissa(run):
    """Flip the lowest mantissa byte of one PrimaryCaps weight: a finite, wrong value."""
    from capszoo._weights import read_params
    path = run / "epoch-0003.params"
    pos = 24
    for k, a in read_params(path).items():
        pos += 12 + 8 * a.ndim + 12
        if k == "PrimaryCaps.weight":
            _flip(path, pos + 4 * 1000)
            return
        pos += a.nbytes
    raise AssertionError("PrimaryCaps.weight not found")


#: (id, mutation of a copy of the finished reference run, expected errors, regex, known gap or None)
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
    ("checkpoint-json-truncated", lambda r: _replace(r / "checkpoint.json", (r / "checkpoint.json").read_bytes()[:50]),
     ("CheckpointError",), r"checkpoint\.json is unreadable", None),
    ("checkpoint-json-binary", lambda r: _replace(r / "checkpoint.json", b"\xff\xfe\x00garbage"),
     ("CheckpointError",), r"checkpoint\.json is unreadable", None),
    ("checkpoint-json-a-list", lambda r: _replace(r / "checkpoint.json", b"[]"),
     ("CheckpointError",), r"not a capszoo checkpoint of format 1", None),
    ("checkpoint-json-format-2", _ck_edit(format=2), ("CheckpointError",), r"not a capszoo checkpoint", None),
    ("checkpoint-params-escapes", _ck_edit(params="../reference/epoch-0003.params"),
     ("CheckpointError",), r"bad params entry", None),
    ("checkpoint-params-absolute", _ck_edit(params="/etc/passwd"), ("CheckpointError",), r"bad params entry", None),
    ("checkpoint-params-null", _ck_edit(params=None), ("CheckpointError",), r"bad params entry None", None),
    ("checkpoint-states-hidden-file", _ck_edit(states=".epoch-0003.states"), ("CheckpointError",),
     r"bad states entry", None),
    # -- known gaps (capszoo/_train.py, not changed here)
    ("states-file-deleted", lambda r: (r / "epoch-0003.states").unlink(),
     ("CheckpointError",), r"epoch-0003\.states", "missing states: Trainer.load_states' open() raises FileNotFoundError"),
    ("states-truncated", lambda r: _replace(r / "epoch-0003.states", (r / "epoch-0003.states").read_bytes()[:1 << 20]),
     ("CheckpointError",), r"epoch-0003\.states", "pickle.loads raises UnpicklingError"),
    ("states-empty", lambda r: _replace(r / "epoch-0003.states", b""),
     ("CheckpointError",), r"epoch-0003\.states", "pickle.loads raises EOFError"),
    ("states-is-a-params-file", lambda r: _replace(r / "epoch-0003.states", (r / "best.params").read_bytes()),
     ("CheckpointError",), r"epoch-0003\.states", "pickle.loads raises UnpicklingError"),
    ("states-pickle-of-wrong-object", lambda r: _replace(r / "epoch-0003.states", pickle.dumps({"a": 1})),
     ("CheckpointError",), r"epoch-0003\.states", "Updater.set_states unpacks it: ValueError"),
    ("checkpoint-epoch-not-a-number", _ck_edit(epoch="three"), ("CheckpointError",), r"epoch",
     "int(ck['epoch']) raises ValueError"),
    ("checkpoint-history-null", _ck_edit(history=None), ("CheckpointError",), r"history",
     "list(ck['history']) raises TypeError"),
    ("checkpoint-best-missing", _ck_edit(best=...), ("CheckpointError",), r"best", "ck['best'] raises KeyError"),
    ("params-byte-flipped-in-data", _flip_mantissa,
     ("CheckpointError", "WeightsFormatError"), r"epoch-0003\.params",
     "=capszoo/_train.py::_write_checkpoint records no sha256 of the params and states files in "
     "checkpoint.json: one flipped bit in the weights (a finite value) is resumed from silently; it needs "
     "the sha256 of both files in checkpoint.json, checked by _read_checkpoint (CheckpointError)"),
    ("states-pickle-runs-code", _code_running_states, ("CheckpointError",), r"epoch-0003\.states",
     "=capszoo/_train.py saves the optimizer state with Trainer.save_states, a pickle, and --resume unpickles "
     "it: a crafted epoch-NNNN.states runs code (here it only makes a folder 'pwned'); it needs a data-only "
     "format (Adam's moments as a .params file via capszoo._weights, the update counts and lr in "
     "checkpoint.json)"),
]

_TRAIN_GAP = ("capszoo/_train.py::_train_loop calls trainer.load_states and reads checkpoint.json fields "
              "(int(ck['epoch']), list(ck['history']), dict(ck['best'])) without checks: it needs to validate the "
              "fields in _read_checkpoint and wrap load_states in try/except (OSError, EOFError, "
              "pickle.UnpicklingError, ValueError, TypeError, KeyError, AttributeError, MXNetError) -> "
              "CheckpointError naming the file")


def _case_params():
    out = []
    for cid, mutate, errors, pattern, gap in RUN_DIR_CASES:
        reason = gap[1:] if gap and gap.startswith("=") else f"{_TRAIN_GAP}. Here: {gap}"
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if gap else []
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
    from capszoo._recipe import load_recipe
    from capszoo._train import train
    return train(load_recipe("capsnet-mnist"), data=train_data, out_dir=run, epochs=3, batch_size=16, seed=7,
                 resume=True, max_steps_per_epoch=2, validation_size=100, progress=False)


@pytest.mark.parametrize("cid,mutate,errors,pattern", _case_params())
def test_broken_run_directory(cid, mutate, errors, pattern, reference, train_data, tmp_path, record_property):
    import re
    from capszoo.errors import CapszooError
    record_property("harden", ("training: --resume of a broken run directory", 1))
    run = _copy_run(reference["dir"], tmp_path / "run")
    mutate(run)
    with pytest.raises(Exception) as info:
        _resume(run, train_data)
    exc = info.value
    assert isinstance(exc, CapszooError), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    assert type(exc).__name__ in errors, f"{type(exc).__name__}: {exc}"
    assert re.search(pattern, str(exc)), str(exc)
    assert not (run / "pwned").exists()


def test_undamaged_copy_resumes(reference, train_data, tmp_path):
    """Control: the copy itself resumes (nothing left to train) with the reference's history."""
    run = _copy_run(reference["dir"], tmp_path / "run")
    res = _resume(run, train_data)
    assert res.epochs_completed == 3


@pytest.mark.parametrize("cid", ["params-file-deleted", "checkpoint-json-truncated"])
def test_broken_run_directory_through_the_cli(cid, reference, mnist_dir, tmp_path, record_property):
    from click.testing import CliRunner
    from capszoo.cli import main
    record_property("harden", ("training: --resume of a broken run directory (CLI)", 1))
    case = next(c for c in RUN_DIR_CASES if c[0] == cid)
    run = _copy_run(reference["dir"], tmp_path / "run")
    case[1](run)
    r = CliRunner().invoke(main, ARGS + ["--data-dir", str(mnist_dir), "--out", str(run), "--resume"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert "Traceback" not in r.output
    last = r.output.strip().splitlines()[-1]
    import re
    assert last.startswith("Error: ") and re.search(case[3], last), r.output


_FSIZE_TRAIN = r"""
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
sys.argv = ["capszoo"] + sys.argv[1:]
runpy.run_module("capszoo.cli", run_name="__main__")
"""


@pytest.mark.xfail(strict=True,
                   reason="capszoo/_train.py lets OSError from its checkpoint writes (save_params, "
                          "Trainer.save_states, atomic_write_json/_text) escape: `capszoo train` on a full disk "
                          "ends in a traceback. train() needs try/except OSError around _write_checkpoint and the "
                          "best.params/run.json writes -> CheckpointError('cannot write checkpoint ...: <strerror>; "
                          "free some space or choose another --out')")
def test_full_disk_during_training_is_a_clean_error(mnist_dir, tmp_path, record_property):
    record_property("harden", ("training: full disk (RLIMIT_FSIZE 1 MB)", 1))
    run = tmp_path / "run"
    args = ["train", "capsnet-mnist", "--data-dir", str(mnist_dir), "--limit", "200", "--epochs", "1",
            "--batch-size", "16", "--max-steps", "1", "--validation-size", "50", "--out", str(run)]
    proc = subprocess.run([sys.executable, "-c", _FSIZE_TRAIN, *args], capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=str(REPO))
    assert not _tmp_files(run), _tmp_files(run)          # holds today already
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("Error: "), \
        proc.stderr[-2000:]


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


@pytest.mark.parametrize("cid,make,pattern", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_file(cid, make, pattern, tmp_path, record_property):
    from capszoo._recipe import load_recipe
    from capszoo.errors import RecipeError
    record_property("harden", ("training: bad recipe -> load_recipe", 1))
    path = _write_recipe(make, tmp_path / "bad.toml")
    t0 = time.monotonic()
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    import re
    assert re.search(pattern, str(info.value)), str(info.value)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("cid,make,pattern", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_file_through_the_cli(cid, make, pattern, tmp_path, record_property):
    import re
    from click.testing import CliRunner
    from capszoo.cli import main
    record_property("harden", ("training: bad recipe -> capszoo train FILE", 1))
    path = _write_recipe(make, tmp_path / "bad.toml")
    r = CliRunner().invoke(main, ["train", str(path), "--out", str(tmp_path / "run"), "--data-dir",
                                  str(tmp_path / "no-mnist-needed")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output[-500:])
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and re.search(pattern, last), r.output[-500:]
    assert not (tmp_path / "run").exists()


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
    record_property("harden", ("training: bad capszoo train options", 1))
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


@pytest.mark.parametrize("cid,images,labels,error,pattern", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_mnist_files_to_train(cid, images, labels, error, pattern, tmp_path, record_property):
    import re
    from click.testing import CliRunner
    from capszoo.cli import main
    record_property("harden", ("training: bad MNIST files -> capszoo train --data-dir", 1))
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
    assert time.monotonic() - t0 < 30
    if error != "InvalidInputError":      # the same error, by class, from the library
        from capszoo.data import load_mnist
        with pytest.raises(Exception) as info:
            load_mnist("train", data_dir=data)
        assert type(info.value).__name__ == error and re.search(pattern, str(info.value)), info.value
