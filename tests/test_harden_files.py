"""Hardening: writing files (atomic writes, weights, exports, checkpoints) under faults,
and reading graphs (symbol JSON, export .params, ONNX) that are broken or hostile.

Writers (:data:`WRITERS`): ``capszoo._io.atomic_write_bytes/text/json``,
``capszoo._weights.save_params``, ``exporters.export_mxnet``, ``exporters.export_onnx``,
``exporters.write_metadata``, ``capszoo._visualize.save_image`` and
``capszoo._train._write_checkpoint``.  Each is driven into

* a folder under a regular file (as root, ``chmod`` does not stop writes; a path
  through a file fails for everyone),
* a full disk: a child process with ``RLIMIT_FSIZE`` lowered (``SIGXFSZ``
  ignored, so a write past it fails with ``EFBIG``) over an earlier good file,
* a symlink already at the target (it must be replaced, never written through),
* kill -9 in the middle of writes (seeded random moments),

and the earlier good file must survive byte for byte with no temporary file left.

Readers (the import paths capszoo has): ``exporters.convert_mxnet_to_onnx`` and
``exporters.verify_mxnet`` (symbol JSON + .params) and ``exporters.verify_onnx``
(an ONNX file, through onnxruntime).  Each bad input must give a capszoo error
(``GraphFormatError``, ``UnsupportedOperatorError``, ``ExportError``) naming the
problem, never crash the process or read outside the model's folder.  The
symbol JSON is checked before MXNet sees it (``exporters._mxnet._check_graph``:
structure, node and output indices, cycles) and export ``.params`` files are
read with ``capszoo._weights.read_params``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import test_harden_weights as hw  # noqa: E402  (the .params encoder)
from harden_summary import harden  # noqa: E402

#: The import paths of graphs and export .params files, by their short names in the tests' ids.
GRAPH_SURFACES = {"convert": "convert_mxnet_to_onnx", "verify_mxnet": "verify_mxnet"}


def _sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def temp_files(folder):
    """Temporary files of capszoo's atomic writes (``.<name>.XXXXXXXX.tmp``) under ``folder``."""
    out = []
    for root, _, files in os.walk(folder):
        out += [os.path.join(root, f) for f in files if f.startswith(".") and f.endswith(".tmp")]
    return sorted(out)


def _child_env():
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# ---------------------------------------------------------------------------------------------
# The writers: write(folder, big) writes version "small" or "big" of the writer's files


def _block(big, prefix):
    import mxnet as mx
    from mxnet.gluon import nn
    mx.random.seed(3 if big else 2)
    units, in_units = (200, 300) if big else (2, 2)
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Dense(units, in_units=in_units))
    net.initialize(mx.init.Xavier())
    return net, (1, in_units)


def w_bytes(folder, big):
    from capszoo.utils import atomic_write_bytes
    atomic_write_bytes(os.path.join(folder, "blob.bin"), b"N" * 200_000 if big else b"old contents\n")


def w_text(folder, big):
    from capszoo.utils import atomic_write_text
    atomic_write_text(os.path.join(folder, "notes.txt"), "é" * 100_000 if big else "old notes\n")


def w_json(folder, big):
    from capszoo.utils import atomic_write_json
    atomic_write_json(os.path.join(folder, "doc.json"), {"v": "y" * 200_000} if big else {"v": "old"})


def w_save_params(folder, big):
    from capszoo import save_params
    net, _ = _block(big, "p_")
    save_params(net, os.path.join(folder, "w.params"))


def w_export_mxnet(folder, big):
    from capszoo import exporters
    net, shape = _block(big, "m_")
    exporters.export_mxnet(net, folder, prefix="m", input_shape=shape)


def w_export_onnx(folder, big):
    from capszoo import exporters
    net, shape = _block(big, "o_")
    exporters.export_onnx(net, os.path.join(folder, "m.onnx"), input_shape=shape)


def w_metadata(folder, big):
    from capszoo import exporters
    model = os.path.join(folder, "model.onnx")
    if os.path.isdir(folder) and not os.path.exists(model):   # the file described; written before any limit
        with open(model, "wb") as fh:
            fh.write(b"onnx bytes")
    exporters.write_metadata(folder, model_name="m", version="1", files=["model.onnx"], classes=["0", "1"],
                             input_spec={"name": "data"}, preprocessing="p" * (200_000 if big else 10))


def w_save_image(folder, big):
    from PIL import Image
    from capszoo._visualize import save_image
    n = 600 if big else 28
    img = Image.fromarray(np.random.default_rng(n).integers(0, 256, (n, n, 3), dtype=np.uint8))
    save_image(img, os.path.join(folder, "pic.png"))


_TRAINERS = {}


def _net_and_trainer(units=200, in_units=300):
    """A small net and an Adam trainer that has taken one step (so it has moments to save)."""
    import mxnet as mx
    from mxnet import autograd, gluon
    from mxnet.gluon import nn
    key = (units, in_units)
    if key not in _TRAINERS:
        mx.random.seed(5)
        net = nn.HybridSequential(prefix="c_")
        with net.name_scope():
            net.add(nn.Dense(units, in_units=in_units))
        net.initialize(mx.init.Xavier())
        trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-3})
        with autograd.record():
            loss = net(mx.nd.ones((4, in_units))).sum()
        loss.backward()
        trainer.step(4)
        _TRAINERS[key] = (net, trainer)
    return _TRAINERS[key]


def w_checkpoint(folder, big, *, note=0):
    """Epoch 1 (small) or epoch 2 (big) of a run; ``note`` pads the history (checkpoint.json size).

    Format 2 (200x300 Dense): epoch-NNNN.params 240,934 bytes, epoch-NNNN.optimizer.params (Adam's
    two moments) 481,854 bytes, checkpoint.json about 1 KB, or 1,200,946 bytes with ``note=600_000``
    on the big version (two history records)."""
    from capszoo._train import _write_checkpoint
    net, trainer = _net_and_trainer()
    epoch = 2 if big else 1
    history = [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "note": "h" * note} for e in range(epoch)]
    _write_checkpoint(folder, net, trainer, epoch, history, {"epoch": 1, "val_accuracy": 0.5})


@dataclasses.dataclass
class Writer:
    name: str
    write: object
    targets: tuple           # file names written (relative to the folder)
    error: str               # exception class name expected on a failed write


WRITERS = [
    Writer("atomic_write_bytes", w_bytes, ("blob.bin",), "OSError"),
    Writer("atomic_write_text", w_text, ("notes.txt",), "OSError"),
    Writer("atomic_write_json", w_json, ("doc.json",), "OSError"),
    Writer("save_params", w_save_params, ("w.params",), "OSError"),
    Writer("export_mxnet", w_export_mxnet, ("m-symbol.json", "m-0000.params"), "ExportError"),
    Writer("export_onnx", w_export_onnx, ("m.onnx",), "ExportError"),
    Writer("write_metadata", w_metadata, ("metadata.json",), "ExportError"),
    Writer("save_image", w_save_image, ("pic.png",), "ExportError"),
    Writer("_write_checkpoint", w_checkpoint, ("epoch-0001.params", "epoch-0001.optimizer.params",
                                               "checkpoint.json", "metrics.jsonl"), "CheckpointError"),
]
WRITERS_BY_NAME = {w.name: w for w in WRITERS}


def _error_name(exc):
    for cls in type(exc).__mro__:
        if cls.__module__ in ("capszoo.errors", "builtins") and cls.__name__ in (
                "OSError", "ExportError", "CheckpointError", "GraphFormatError"):
            return cls.__name__
    return f"{type(exc).__module__}.{type(exc).__name__}"


# ---------------------------------------------------------------------------------------------
# 1. A folder under a regular file (export_mxnet/export_onnx: tests/test_export.py::test_unwritable_target)

UNDER_FILE = [w for w in WRITERS if w.name not in ("export_mxnet", "export_onnx")]


@harden("files written", lambda p: p["writer"].name, inputs=["a folder under a regular file"])
@pytest.mark.parametrize("writer", UNDER_FILE, ids=[w.name for w in UNDER_FILE])
def test_folder_under_a_regular_file(writer, tmp_path, record_property):
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"keep me")
    folder = blocker / "sub"
    with pytest.raises(Exception) as info:
        writer.write(str(folder), False)
    assert _error_name(info.value) == writer.error, repr(info.value)
    msg = str(info.value)
    assert "Not a directory" in msg or "a_file" in msg or "does not exist" in msg, msg
    if writer.error == "CheckpointError":   # names the first file it could not write, and what to do
        assert re.search(r"cannot write checkpoint file \S*/a_file/sub/epoch-0001\.params: Not a directory; "
                         r"free some space or choose another --out", msg), msg
    assert blocker.read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


# ---------------------------------------------------------------------------------------------
# 2. A full disk (RLIMIT_FSIZE) over an earlier good file, in a child process

# (writer, limit in bytes, what the limit stops)
FSIZE_CASES = [
    ("atomic_write_bytes", 64 << 10, "the data"),
    ("atomic_write_text", 64 << 10, "the text"),
    ("atomic_write_json", 64 << 10, "the JSON"),
    ("save_params", 64 << 10, "MXNet's writer"),
    ("export_mxnet", 64 << 10, "the params file (the symbol file fits)"),
    ("export_onnx", 64 << 10, "the model"),
    ("write_metadata", 64 << 10, "metadata.json"),
    ("save_image", 64 << 10, "the PNG"),
    # epoch-0002.params 240,934 bytes, epoch-0002.optimizer.params 481,854, big-history checkpoint.json
    # 1,200,946 (see w_checkpoint); the first word names the file that must fail (checked in the message)
    ("_write_checkpoint", 64 << 10, "epoch-0002.params"),
    ("_write_checkpoint", 300 << 10, "epoch-0002.optimizer.params (the params file fits)"),
    ("_write_checkpoint:big-history", 550 << 10, "checkpoint.json (the params and optimizer files fit)"),
]
#: The files a checkpoint writes, in order (metrics.jsonl comes after checkpoint.json).
CHECKPOINT_ORDER = ("epoch-0002.params", "epoch-0002.optimizer.params", "checkpoint.json")


def _fsize_input(i):
    """The fault of FSIZE_CASES[i]: a full disk, and for a checkpoint the file it stops."""
    name, _, stops = FSIZE_CASES[i]
    return f"a full disk stopping {stops.split()[0]}" if name.startswith("_write_checkpoint") else "a full disk"


def _fsize_child(folder, name, limit):
    """Run in the child: good version, then the big one under the limit.  Returns a report dict."""
    import resource
    base = name.split(":")[0]
    writer = WRITERS_BY_NAME[base]
    note = 600_000 if name.endswith("big-history") else 0
    write = (lambda f, big: w_checkpoint(f, big, note=note)) if base == "_write_checkpoint" else writer.write
    os.makedirs(folder)
    write(folder, False)
    before = {f: _sha(os.path.join(folder, f)) for f in os.listdir(folder)}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        write(folder, True)
        error = None
    except Exception as exc:  # noqa: BLE001 - reported
        error = {"class": _error_name(exc), "message": str(exc)[:1000]}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    after = {f: _sha(os.path.join(folder, f)) for f in os.listdir(folder) if not f.endswith(".tmp")}
    ck = None
    if base == "_write_checkpoint":
        ck = _checkpoint_report(folder)
    return {"error": error, "changed": sorted(f for f in before if after.get(f) != before[f]),
            "new_files": sorted(set(after) - set(before)), "temp_files": [os.path.basename(t) for t in
                                                                           temp_files(folder)],
            "checkpoint": ck}


CHECKPOINT_KEYS = ["architecture", "best", "epoch", "format", "history", "optimizer", "params", "sha256"]


def _checkpoint_report(folder):
    """What checkpoint.json of ``folder`` (parsed as JSON) is and names, with the arrays of both files it
    names (read with capszoo._weights.read_params) and whether each file's sha256 is the one
    checkpoint.json records.  (Not capszoo._train._read_checkpoint: the histories written here are not
    those of a real run.)"""
    from capszoo._weights import read_params, sha256_file
    with open(os.path.join(folder, "checkpoint.json"), "rb") as fh:
        ck = json.loads(fh.read().decode("utf-8"))
    files = {"params": ck["params"], "optimizer": ck["optimizer"]["file"]}
    arrays = {k: {n: list(a.shape) for n, a in read_params(os.path.join(folder, f)).items()}
              for k, f in files.items()}
    return {"format": ck["format"], "keys": sorted(ck), "optimizer_name": ck["optimizer"]["name"],
            "epoch": ck["epoch"], "history": [h["epoch"] for h in ck["history"]], **files, "arrays": arrays,
            "sha256_ok": {k: sha256_file(os.path.join(folder, f)) == ck["sha256"][k] for k, f in files.items()}}


def _checkpoint_arrays(units, in_units):
    """The arrays (name -> shape) of a checkpoint of _net_and_trainer(units, in_units)."""
    shapes = {"0.weight": [units, in_units], "0.bias": [units]}
    return {"params": shapes, "optimizer": {f"{m}:{n}": s for m in ("mean", "var") for n, s in shapes.items()}}


@pytest.fixture(scope="module")
def fsize_reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsize")
    spec = json.dumps([[f"{n}@{i}", n, lim] for i, (n, lim, _) in enumerate(FSIZE_CASES)])
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__)), "--fsize", str(folder), spec],
                          capture_output=True, text=True, timeout=600, env=_child_env(), cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@harden("files written", lambda p: FSIZE_CASES[p["i"]][0].split(":")[0],
        inputs=lambda p: [_fsize_input(p["i"])])
@pytest.mark.parametrize("i", range(len(FSIZE_CASES)),
                         ids=[f"{n}-{lim >> 10}k" for n, lim, _ in FSIZE_CASES])
def test_full_disk_keeps_the_earlier_file(fsize_reports, i, record_property):
    name, limit, stops = FSIZE_CASES[i]
    rep = fsize_reports[f"{name}@{i}"]
    writer = WRITERS_BY_NAME[name.split(":")[0]]
    assert rep["error"] is not None, f"writing past the limit ({stops}) did not fail"
    assert rep["error"]["class"] == writer.error, rep["error"]
    assert "File too large" in rep["error"]["message"] or "file size limit" in rep["error"]["message"], \
        rep["error"]
    assert rep["changed"] == [], f"earlier files changed: {rep['changed']}"
    assert rep["temp_files"] == [], f"temporary files left: {rep['temp_files']}"
    if writer.name == "_write_checkpoint":
        # The CheckpointError names the file the limit stopped, and what to do.
        failing = stops.split()[0]
        message = rep["error"]["message"]
        assert re.search(r"^cannot write checkpoint file \S*/" + re.escape(failing) + r": (File too large|"
                         r"cannot write weights file: the disk is full or a file size limit was reached \(.*\)); "
                         r"free some space or choose another --out$", message), (stops, message)
        assert "Traceback (most recent call last)" not in message, message
        # checkpoint.json (format 2) still names the epoch-1 files: both read with read_params and
        # match the sha256 it records (checked in the child)
        assert rep["checkpoint"] == {"format": 2, "keys": CHECKPOINT_KEYS, "optimizer_name": "adam", "epoch": 1,
                                     "history": [1], "params": "epoch-0001.params",
                                     "optimizer": "epoch-0001.optimizer.params",
                                     "arrays": _checkpoint_arrays(200, 300),
                                     "sha256_ok": {"params": True, "optimizer": True}}, rep["checkpoint"]
        # A checkpoint that failed after its params (or params and optimizer file) were written leaves
        # exactly those epoch-0002 files behind, unreferenced: the next checkpoint of epoch 2 replaces them.
        written = [f for f in CHECKPOINT_ORDER[:CHECKPOINT_ORDER.index(failing)] if f.startswith("epoch-")]
        assert rep["new_files"] == sorted(written), rep["new_files"]
    else:
        assert rep["new_files"] == [], rep["new_files"]


@pytest.mark.slow
def test_full_disk_message_of_export_mxnet(fsize_reports, record_property):
    i = next(i for i, (n, _, _) in enumerate(FSIZE_CASES) if n == "export_mxnet")
    message = fsize_reports[f"export_mxnet@{i}"]["error"]["message"]
    assert "Traceback (most recent call last)" not in message, message
    assert "the disk is full or a file size limit was reached" in message, message


# ---------------------------------------------------------------------------------------------
# 3. A symlink already at the target: replaced, never written through


@harden("files written", lambda p: p["writer"].name, inputs=["a symlink at the target"])
@pytest.mark.parametrize("writer", WRITERS, ids=[w.name for w in WRITERS])
def test_symlink_at_target_is_replaced_not_followed(writer, tmp_path, record_property):
    folder = tmp_path / "out"
    folder.mkdir()
    victims = tmp_path / "elsewhere"
    victims.mkdir()
    for t in writer.targets:
        victim = victims / (t + ".victim")
        victim.write_bytes(b"precious " + t.encode())
        os.symlink(victim, folder / t)
    writer.write(str(folder), False)
    for t in writer.targets:
        assert not os.path.islink(folder / t), f"{t} is still a symlink"
        assert (folder / t).is_file()
        assert (victims / (t + ".victim")).read_bytes() == b"precious " + t.encode(), f"wrote through {t}"
    assert temp_files(tmp_path) == []


@harden("files written", "atomic_write_bytes", inputs=lambda p: [f"a {p['kind']} symlink at the target"])
@pytest.mark.parametrize("kind", ["dangling", "loop", "to-folder-outside"])
def test_odd_symlinks_at_target(kind, tmp_path, record_property):
    from capszoo.utils import atomic_write_bytes
    target = tmp_path / "blob.bin"
    if kind == "dangling":
        os.symlink(tmp_path / "nowhere" / "x", target)
    elif kind == "loop":
        os.symlink(target, target)
    else:
        (tmp_path / "d").mkdir()
        os.symlink(tmp_path / "d", target)
    atomic_write_bytes(target, b"new")
    assert not target.is_symlink() and target.read_bytes() == b"new"
    assert temp_files(tmp_path) == []
    if kind == "to-folder-outside":
        assert os.listdir(tmp_path / "d") == []


@harden("files written", "atomic_write_bytes", inputs=["a folder at the target"])
def test_target_is_a_folder(tmp_path, record_property):
    from capszoo.utils import atomic_write_bytes
    (tmp_path / "blob.bin").mkdir()
    (tmp_path / "blob.bin" / "inside").write_bytes(b"x")
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path / "blob.bin", b"new")
    assert (tmp_path / "blob.bin" / "inside").read_bytes() == b"x"
    assert temp_files(tmp_path) == []


@harden("files written", "atomic_write_bytes",
        inputs=lambda p: [f"a target name of {len(os.fsencode(p['name']))} bytes"])
@pytest.mark.parametrize("name", ["a" * 250 + ".bin", "é" * 120 + ".bin", "x" * 255])
def test_longest_legal_target_names(name, tmp_path, record_property):
    """A target whose name is legal (up to 255 bytes) must be writable: the temporary name beside
    it used to be "." + name + ".XXXXXXXX.tmp", longer than the file system allows."""
    from capszoo.utils import atomic_write_bytes
    assert len(os.fsencode(name)) <= 255
    atomic_write_bytes(tmp_path / name, b"data")
    assert (tmp_path / name).read_bytes() == b"data"
    assert temp_files(tmp_path) == []


@harden("files written", ["save_params", "export_onnx"], inputs=["a target name of 255 bytes"])
def test_long_names_through_save_params_and_export_onnx(tmp_path, record_property):
    from capszoo import exporters
    from capszoo import read_params, save_params
    net, shape = _block(False, "l_")
    p = tmp_path / ("w" * 248 + ".params")
    save_params(net, p)
    assert set(read_params(p)) == {"0.weight", "0.bias"}
    o = tmp_path / ("m" * 250 + ".onnx")
    exporters.export_onnx(net, o, input_shape=shape)
    assert o.stat().st_size > 0 and temp_files(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 4. kill -9 in the middle of writes

_WRITER_LOOP = r"""
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("capszoo_io", sys.argv[1])
io_ = importlib.util.module_from_spec(spec); spec.loader.exec_module(io_)
target, size = sys.argv[2], int(sys.argv[3])
versions = [bytes([65 + v]) * size for v in range(3)]
i = 0
while True:
    io_.atomic_write_bytes(target, versions[i % 3])
    if i == 0:
        print("ready", flush=True)
    i += 1
"""


@pytest.mark.slow
@harden("files written", "atomic_write_bytes", inputs=["kill -9 mid-write"])
def test_kill_9_during_atomic_writes(tmp_path, record_property):
    """A child rewrites a 4 MB file in a loop (three versions); it is killed at 20 seeded random
    moments.  After every kill the file is one of the versions, whole."""
    rng = random.Random(20240611)
    size = 4 << 20
    target = tmp_path / "big.bin"
    versions = {hashlib.sha256(bytes([65 + v]) * size).hexdigest() for v in range(3)}
    io_path = str(REPO / "capszoo" / "_io.py")
    kills, mid_write, whole = 20, 0, 0
    for _ in range(kills):
        before = set(temp_files(tmp_path))
        p = subprocess.Popen([sys.executable, "-c", _WRITER_LOOP, io_path, str(target), str(size)],
                             stdout=subprocess.PIPE, env=_child_env())
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
        left = set(temp_files(tmp_path)) - before
        mid_write += bool(left)
        assert _sha(target) in versions, "the target is not one whole version"
        whole += 1
        for t in left:            # a dead writer's temporary file: nobody else removes it
            os.unlink(t)
    record_property("kill9_mid_write", mid_write)
    assert mid_write >= 1, "no kill landed during a write; the test did not test anything"


_CHECKPOINT_LOOP = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
import test_harden_files as hf
folder = sys.argv[1]
epoch = 0
while True:
    epoch += 1
    from capszoo._train import _write_checkpoint
    net, trainer = hf._net_and_trainer(256, 1024)
    _write_checkpoint(folder, net, trainer, epoch, [{"epoch": e + 1} for e in range(epoch)],
                      {"epoch": 1, "val_accuracy": 0.5})
    if epoch == 1:
        print("ready", flush=True)
"""


@pytest.mark.slow
@harden("files written", "_write_checkpoint", inputs=["kill -9 mid-write"])
def test_kill_9_during_checkpoint_writes(tmp_path, record_property):
    """A child writes checkpoints (1 MB params, 2 MB optimizer file) of epoch 1, 2, 3...; killed at 5
    seeded random moments.  checkpoint.json always parses (format 2) and names whole files, readable
    with read_params, whose sha256 is the one it records."""
    rng = random.Random(7)
    folder = tmp_path / "run"
    folder.mkdir()
    kills, good = 5, 0
    epochs = []
    for _ in range(kills):
        p = subprocess.Popen([sys.executable, "-c", _CHECKPOINT_LOOP, str(folder), str(HERE)],
                             stdout=subprocess.PIPE, env=_child_env(), cwd=str(REPO))
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 1.0))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
        ck = _checkpoint_report(str(folder))
        e = ck["epoch"]
        assert (ck["format"], ck["keys"], ck["optimizer_name"]) == (2, CHECKPOINT_KEYS, "adam"), ck
        assert (ck["params"], ck["optimizer"]) == (f"epoch-{e:04d}.params", f"epoch-{e:04d}.optimizer.params")
        assert ck["arrays"] == _checkpoint_arrays(256, 1024), ck["arrays"]
        assert ck["sha256_ok"] == {"params": True, "optimizer": True}, ck
        assert ck["history"] == list(range(1, e + 1))
        epochs.append(e)
        good += 1
        for t in temp_files(folder):
            os.unlink(t)
    record_property("checkpoint_epochs_at_kill", epochs)


# ---------------------------------------------------------------------------------------------
# 5. Symbol JSON to the import paths: convert_mxnet_to_onnx and verify_mxnet


@pytest.fixture(scope="module")
def mx_export(tmp_path_factory):
    """A real MXNet export of a two-layer perceptron (symbol JSON + params) to corrupt."""
    import mxnet as mx
    from mxnet.gluon import nn
    from capszoo import exporters
    mx.random.seed(11)
    net = nn.HybridSequential(prefix="m_")
    with net.name_scope():
        net.add(nn.Dense(4, in_units=3, activation="relu"), nn.Dense(2, in_units=4))
    net.initialize(mx.init.Xavier())
    folder = tmp_path_factory.mktemp("mx-export")
    r = exporters.export_mxnet(net, folder, prefix="m", input_shape=(1, 3))
    with open(r["symbol"]) as fh:
        graph = json.load(fh)
    assert [n["op"] for n in graph["nodes"]] == ["null", "null", "null", "FullyConnected", "Activation",
                                                 "null", "null", "FullyConnected", "_copy"]
    return {"net": net, "folder": folder, "symbol": r["symbol"], "params": r["params"], "graph": graph}


def _g(fn):
    """A mutation of the export's graph, as JSON text."""
    def make(graph):
        g = json.loads(json.dumps(graph))
        fn(g)
        return json.dumps(g)
    return make


def _txt(text):
    return lambda graph: text


def _node(i, **kw):
    return _g(lambda g: g["nodes"][i].update(**kw))


def _attr(i, **kw):
    return _g(lambda g: g["nodes"][i].setdefault("attrs", {}).update(**kw))


def _nested_subgraphs(depth):
    """A graph whose one operator holds a subgraph, ``depth`` levels deep."""
    sub = {"nodes": [{"op": "null", "name": "v", "inputs": []}], "arg_nodes": [0], "heads": [[0, 0, 0]]}
    for _ in range(depth):
        sub = {"nodes": [{"op": "null", "name": "v", "inputs": []},
                         {"op": "_copy", "name": "c", "inputs": [[0, 0, 0]], "subgraphs": [sub]}],
               "arg_nodes": [0], "heads": [[1, 0, 0]]}
    return sub


@dataclasses.dataclass
class GraphCase:
    id: str
    make: object
    surfaces: dict           # surface -> (error class name, regex)


NOT_SYMBOL = ("GraphFormatError", r"is not an MXNet symbol JSON")
SYMBOL_CASES = [
    GraphCase("empty", _txt(""), {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("truncated", lambda g: json.dumps(g)[:200], {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("binary-garbage", _txt("\x00\x01\x02{\x7f"), {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("json-null", _txt("null"), {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("json-list", _txt("[]"), {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("json-empty-object", _txt("{}"), {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("nodes-not-a-list", _g(lambda g: g.update(nodes="x")),
              {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("op-missing", _g(lambda g: g["nodes"][4].pop("op")),
              {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("unknown-op", _node(4, op="NoSuchOp"),
              {"convert": ("GraphFormatError", r"Failed loading Op m_dense0_relu_fwd of type NoSuchOp"),
               "verify_mxnet": ("GraphFormatError", r"Failed loading Op m_dense0_relu_fwd of type NoSuchOp")}),
    GraphCase("op-the-converter-lacks", _g(lambda g: g["nodes"][4].update(op="arccos", attrs={})),
              {"convert": ("UnsupportedOperatorError", r"operator 'arccos' \(node 'm_dense0_relu_fwd'\).*does not "
                                                       r"know it")}),
    GraphCase("input-index-out-of-range", _node(4, inputs=[[99, 0, 0]]),
              {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("input-index-negative", _node(4, inputs=[[-1, 0, 0]]),
              {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("input-index-2^62", _node(4, inputs=[[2 ** 62, 0, 0]]),
              {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("head-index-out-of-range", _g(lambda g: g.update(heads=[[99, 0, 0]])),
              {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    GraphCase("arg-node-out-of-range", _g(lambda g: g.update(arg_nodes=[0, 1, 2, 5, 99])),
              {"convert": NOT_SYMBOL, "verify_mxnet": NOT_SYMBOL}),
    # verify_mxnet of these two: in a child, test_out_of_range_output_index_does_not_crash_verify_mxnet
    GraphCase("input-output-index-out-of-range", _node(4, inputs=[[3, 5, 0]]),
              {"convert": ("GraphFormatError", r"is not an MXNet symbol JSON: node 4 \('m_dense0_relu_fwd', "
                                               r"Activation\): input 0 names output 5 of node 3 \('m_dense0_fwd', "
                                               r"FullyConnected\), which has 1 output")}),
    GraphCase("head-output-index-out-of-range", _g(lambda g: g.update(heads=[[8, 7, 0]])),
              {"convert": ("GraphFormatError", r"is not an MXNet symbol JSON: head 0 names output 7 of node 8 "
                                               r"\('output', _copy\), which has 1 output")}),
    GraphCase("num_hidden-2^40", _attr(3, num_hidden=str(2 ** 40)),
              {"convert": ("GraphFormatError", r"Invalid Parameter format for num_hidden expect int"),
               "verify_mxnet": ("GraphFormatError", r"Invalid Parameter format for num_hidden expect int")}),
    GraphCase("num_hidden-negative", _attr(3, num_hidden="-4"),
              {"convert": ("GraphFormatError", r"num_hidden should be greater equal to 1"),
               "verify_mxnet": ("GraphFormatError", r"num_hidden should be greater equal to 1")}),
    GraphCase("num_hidden-not-a-number", _attr(3, num_hidden="four"),
              {"convert": ("GraphFormatError", r"value='four'"),
               "verify_mxnet": ("GraphFormatError", r"value='four'")}),
    GraphCase("one_hot-depth-2^40", _g(lambda g: (
        g["nodes"].insert(8, {"op": "one_hot", "name": "oh", "attrs": {"depth": str(2 ** 40)}, "inputs": [[7, 0, 0]]}),
        g["nodes"][9].update(inputs=[[8, 0, 0]]), g.update(heads=[[9, 0, 0]], node_row_ptr=list(range(11))))),
        {"convert": ("GraphFormatError", r"depth expect int but value='1099511627776'"),
         "verify_mxnet": ("GraphFormatError", r"depth expect int but value='1099511627776'")}),
    GraphCase("unknown-attribute", _attr(4, bogus="1"),
              {"convert": ("GraphFormatError", r"Cannot find argument 'bogus'"),
               "verify_mxnet": ("GraphFormatError", r"Cannot find argument 'bogus'")}),
    GraphCase("variable-shape-attr-2^80-elements", _attr(1, __shape__="(1099511627776, 1099511627776)"),
              {"verify_mxnet": ("GraphFormatError", r"Module cannot bind")}),
    # capszoo's structural checks (exporters._mxnet._check_graph), before MXNet builds the graph
    *[GraphCase(cid, make, {"convert": ("GraphFormatError", pattern), "verify_mxnet": ("GraphFormatError", pattern)})
      for cid, make, pattern in [
          ("cycle", _g(lambda g: (g["nodes"][3].update(inputs=[[4, 0, 0], [1, 0, 0], [2, 0, 0]]))),
           r"node 3 \('m_dense0_fwd', FullyConnected\): input 0 refers to node 4, which comes after it \(MXNet "
           r"writes nodes in topological order, so this is a cycle"),
          ("self-reference", _node(4, inputs=[[4, 0, 0]]), r"node 4 .*: input 0 refers to the node itself"),
          ("entry-not-integers", _node(4, inputs=[[3.0, 0, 0]]),
           r"input 0 must be \[node, output, version\] integers, got \[3\.0, 0, 0\]"),
          ("entry-of-four", _node(4, inputs=[[3, 0, 0, 0]]), r"input 0 must be \[node, output, version\] integers"),
          ("entry-not-a-list", _node(4, inputs=[3]), r"input 0 must be \[node, output, version\] integers"),
          ("output-index-negative", _node(4, inputs=[[3, -1, 0]]), r"input 0 names output -1 .*must be >= 0"),
          ("head-index-negative", _g(lambda g: g.update(heads=[[-1, 0, 0]])),
           r"head 0 refers to node -1, but the graph has nodes 0\.\.8"),
          ("heads-empty", _g(lambda g: g.update(heads=[])), r"'heads' must be a non-empty list"),
          ("heads-missing", _g(lambda g: g.pop("heads")), r"it has no 'heads'"),
          ("nodes-empty", _g(lambda g: g.update(nodes=[])), r"'nodes' must be a non-empty list"),
          ("node-not-an-object", _g(lambda g: g["nodes"].__setitem__(4, "Activation")),
           r"node 4 is a JSON str, not an object with op, name and inputs"),
          ("name-not-a-string", _node(4, name=5), r"node 4: 'name' must be a non-empty string, got 5"),
          ("inputs-not-a-list", _node(4, inputs={"0": 3}), r"node 4 .*: 'inputs' must be a list, got dict"),
          ("variable-with-inputs", _node(1, inputs=[[0, 0, 0]]),
           r"node 1 \('m_dense0_weight', null\) is a variable \(op \"null\"\) but has inputs"),
          ("arg-node-is-an-operator", _g(lambda g: g.update(arg_nodes=[0, 1, 2, 3])),
           r"'arg_nodes' lists node 3 \('m_dense0_fwd'\), an operator \(FullyConnected\), not a variable"),
          ("control-dep-on-a-later-node", _node(3, control_deps=[8]), r"'control_deps' must list earlier nodes"),
          ("attribute-not-a-string", _attr(3, num_hidden=4), r"node 3 .*: 'attrs' must be an object of strings"),
          ("subgraphs-nested-too-deep", _node(4, subgraphs=[_nested_subgraphs(10)]),
           r"subgraphs are nested more than 8 deep"),
      ]],
]
SYMBOL_RUNS = [(c, s) for c in SYMBOL_CASES for s in c.surfaces]


def _run_graph_surface(surface, symbol, params, export, tmp_path):
    from capszoo import exporters
    if surface == "convert":
        exporters.convert_mxnet_to_onnx(symbol, params, tmp_path / "out.onnx", input_shape=(1, 3))
    else:
        exporters.verify_mxnet(symbol, params, export["net"], np.zeros((2, 3), np.float32))


def _check_capszoo_error(exc, error, pattern):
    import re
    from capszoo.errors import CapszooError
    assert isinstance(exc, CapszooError), f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:300]}"
    assert type(exc).__name__ == error, f"{type(exc).__name__}, expected {error}: {str(exc)[:300]}"
    assert re.search(pattern, str(exc)), f"{str(exc)[:400]!r} does not match {pattern!r}"


@harden("graphs", lambda p: GRAPH_SURFACES[p["surface"]], inputs=lambda p: [f"symbol JSON: {p['case'].id}"])
@pytest.mark.parametrize("case,surface", SYMBOL_RUNS, ids=[f"{c.id}-{s}" for c, s in SYMBOL_RUNS])
def test_bad_symbol_json(case, surface, mx_export, tmp_path, record_property):
    sym = tmp_path / "bad-symbol.json"
    sym.write_text(case.make(mx_export["graph"]), encoding="utf-8")
    error, pattern = case.surfaces[surface]
    with pytest.raises(Exception) as info:
        _run_graph_surface(surface, sym, mx_export["params"], mx_export, tmp_path)
    _check_capszoo_error(info.value, error, pattern)
    assert "Traceback (most recent call last)" not in str(info.value) and len(str(info.value)) < 1000, \
        str(info.value)[:1000]
    assert not (tmp_path / "out.onnx").exists() and temp_files(tmp_path) == []


@harden("graphs", "convert_mxnet_to_onnx", inputs=["symbol JSON: no values for its variables"])
def test_no_parameters_for_the_graph(mx_export, tmp_path, record_property):
    from capszoo import exporters
    from capszoo.errors import ExportError
    with pytest.raises(ExportError, match=r"no value for the graph variable\(s\) m_dense0_weight"):
        exporters.convert_mxnet_to_onnx(mx_export["symbol"], {"m_dense9_weight": np.zeros(3)},
                                        tmp_path / "out.onnx", input_shape=(1, 3))
    assert os.listdir(tmp_path) == []


# -- what MXNet does not check itself (exporters._mxnet._check_graph) and how its messages are quoted

_DEEP = "[" * 100_000 + "]" * 100_000


@harden("graphs", lambda p: GRAPH_SURFACES[p["surface"]], inputs=["symbol JSON: nested 100,000 deep"])
@pytest.mark.parametrize("surface", ["convert", "verify_mxnet"])
def test_deeply_nested_json(surface, mx_export, tmp_path, record_property):
    sym = tmp_path / "deep-symbol.json"
    sym.write_text('{"nodes": ' + _DEEP + "}")
    with pytest.raises(Exception) as info:
        _run_graph_surface(surface, sym, mx_export["params"], mx_export, tmp_path)
    _check_capszoo_error(info.value, "GraphFormatError", "not an MXNet symbol JSON")


_SEGV_CHILD = r"""
import json, sys
import numpy as np
from mxnet.gluon import nn
from capszoo import exporters
net = nn.Dense(2, in_units=3); net.initialize()
try:
    exporters.verify_mxnet(sys.argv[1], sys.argv[2], net, np.zeros((2, 3), np.float32))
    print(json.dumps({"error": None}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)[:300]}))
"""


@pytest.mark.slow
@harden("graphs", "verify_mxnet", inputs=lambda p: [f"symbol JSON: {p['mutation']}"])
@pytest.mark.parametrize("mutation", ["input-output-index-out-of-range", "head-output-index-out-of-range"])
def test_out_of_range_output_index_does_not_crash_verify_mxnet(mutation, mx_export, tmp_path, record_property):
    """MXNet itself reads past its arrays for such an index (SIGSEGV): run in a child, in case."""
    case = next(c for c in SYMBOL_CASES if c.id == mutation)
    sym = tmp_path / "bad-symbol.json"
    sym.write_text(case.make(mx_export["graph"]))
    proc = subprocess.run([sys.executable, "-c", _SEGV_CHILD, str(sym), str(mx_export["params"])],
                          capture_output=True, text=True, timeout=300, env=_child_env())
    assert proc.returncode == 0, f"the process died (status {proc.returncode}): {proc.stderr.strip()[-300:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] == "GraphFormatError", out
    assert "is not an MXNet symbol JSON" in out["message"] and "which has 1 output" in out["message"], out


@harden("graphs", "verify_mxnet", inputs=["symbol JSON: broadcast_to 2^41 elements at run time"])
def test_graph_failing_at_run_time(mx_export, tmp_path, record_property):
    mutate = _g(lambda g: (
        g["nodes"].insert(8, {"op": "broadcast_to", "name": "bt", "attrs": {"shape": "(1099511627776, 2)"},
                              "inputs": [[7, 0, 0]]}),
        g["nodes"][9].update(inputs=[[8, 0, 0]]), g.update(heads=[[9, 0, 0]], node_row_ptr=list(range(11)))))
    sym = tmp_path / "bad-symbol.json"
    sym.write_text(mutate(mx_export["graph"]))
    with pytest.raises(Exception) as info:
        _run_graph_surface("verify_mxnet", sym, mx_export["params"], mx_export, tmp_path)
    _check_capszoo_error(info.value, "GraphFormatError", "broadcast")


MESSAGE_GAPS = ["json-null", "json-list", "json-empty-object", "nodes-not-a-list", "op-missing",
                "input-index-out-of-range", "head-index-out-of-range", "arg-node-out-of-range"]


def test_symbol_errors_name_the_problem(mx_export, tmp_path, record_property):
    """Structural errors MXNet reports as 'Traceback (most recent call last):' are named by capszoo."""
    vague = []
    for cid in MESSAGE_GAPS:
        case = next(c for c in SYMBOL_CASES if c.id == cid)
        sym = tmp_path / f"{cid}-symbol.json"
        sym.write_text(case.make(mx_export["graph"]))
        for surface in ("convert", "verify_mxnet"):
            try:
                _run_graph_surface(surface, sym, mx_export["params"], mx_export, tmp_path)
            except Exception as exc:  # noqa: BLE001
                if "Traceback (most recent call last)" in str(exc) or "is not an MXNet symbol JSON: " not in str(exc):
                    vague.append(f"{cid}/{surface}: {str(exc)[:200]}")
            else:
                vague.append(f"{cid}/{surface}: no error")
    n = 2 * len(MESSAGE_GAPS)
    assert vague == [], "messages that do not name the problem:\n" + "\n".join(vague)


@harden("graphs", "convert_mxnet_to_onnx", inputs=["symbol JSON: an attribute of 10^7 characters"])
def test_huge_attribute_message_is_bounded(mx_export, tmp_path, record_property):
    from capszoo import exporters
    from capszoo.errors import GraphFormatError
    sym = tmp_path / "huge-attr-symbol.json"
    sym.write_text(_attr(4, act_type="r" * 10_000_000)(mx_export["graph"]))
    with pytest.raises(GraphFormatError) as info:
        exporters.convert_mxnet_to_onnx(sym, mx_export["params"], tmp_path / "o.onnx", input_shape=(1, 3))
    assert len(str(info.value)) < 2000, f"message of {len(str(info.value)):,} characters"


@harden("graphs", "convert_mxnet_to_onnx", inputs=["symbol JSON: a node name of 10^7 characters"])
def test_huge_node_name_message_is_bounded(mx_export, tmp_path, record_property):
    from capszoo import exporters
    from capszoo.errors import GraphFormatError
    sym = tmp_path / "huge-name-symbol.json"
    sym.write_text(_node(4, name="n" * 10_000_000, inputs=[[99, 0, 0]])(mx_export["graph"]))
    with pytest.raises(GraphFormatError, match=r"node 4 \('n{60}\.\.\.', Activation\): input 0 refers to node 99"):
        exporters.convert_mxnet_to_onnx(sym, mx_export["params"], tmp_path / "o.onnx", input_shape=(1, 3))


def _split_graph():
    """data -> split into 3 -> one head per output (as JSON)."""
    import mxnet as mx
    parts = mx.sym.split(mx.sym.var("data"), num_outputs=3, axis=1, name="sp")
    return json.loads(mx.sym.Group([mx.sym.identity(parts[k], name=f"o{k}") for k in range(3)]).tojson())


@harden("graphs", "verify_mxnet", inputs=["symbol JSON: output 3 of a 3-output operator"])
def test_output_indices_of_a_multi_output_operator(tmp_path, record_property):
    """Output k of an operator is checked against its own number of outputs (MXNet asked for the node
    alone): outputs 1 and 2 of a 3-way split are fine, output 3 is not."""
    import mxnet as mx
    from mxnet.gluon import nn
    from capszoo import exporters
    from capszoo.errors import GraphFormatError
    graph = _split_graph()
    assert [n["op"] for n in graph["nodes"]] == ["null", "SliceChannel", "_copy", "_copy", "_copy"]
    assert graph["nodes"][3]["inputs"][0][:2] == [1, 1] and graph["nodes"][4]["inputs"][0][:2] == [1, 2]
    good = tmp_path / "good-symbol.json"
    good.write_text(json.dumps(graph))
    mx.nd.save(str(tmp_path / "good-0000.params"), {})
    ref = nn.HybridLambda(lambda F, x: F.split(x, num_outputs=3, axis=1))
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    r = exporters.verify_mxnet(good, tmp_path / "good-0000.params", ref, x)
    assert r["max_abs_diff"] == 0.0 and r["outputs"] == ["o0", "o1", "o2"]
    graph["nodes"][4]["inputs"][0][1] = 3
    bad = tmp_path / "bad-symbol.json"
    bad.write_text(json.dumps(graph))
    with pytest.raises(GraphFormatError, match=r"is not an MXNet symbol JSON: node 4 \('o2', _copy\): input 0 "
                                               r"names output 3 of node 1 \('sp', SliceChannel\), which has 3 outputs"):
        exporters.verify_mxnet(bad, tmp_path / "good-0000.params", ref, x)


def test_first_error_line_of_mxnet_messages():
    """The quoted line is the one that says what is wrong, without MXNet's decorations, and short."""
    from capszoo.exporters._mxnet import MAX_QUOTE_CHARS, _first_error_line
    traceback = ('Traceback (most recent call last):\n  File "../3rdparty/tvm/nnvm/src/pass/saveload_json.cc", '
                 'line 230\nMXNetError: Check failed: e.node_id < jgraph.nodes.size(): ')
    assert _first_error_line(RuntimeError(traceback)) == "Check failed: e.node_id < jgraph.nodes.size():"
    stamped = ("MXNetError: Failed loading Op x of type NoSuchOp: [13:44:34] ../3rdparty/tvm/nnvm/src/core/"
               "op.cc:73: Check failed: op != nullptr: Operator NoSuchOp is not registered")
    assert _first_error_line(RuntimeError(stamped)) == ("Failed loading Op x of type NoSuchOp: Check failed: "
                                                        "op != nullptr: Operator NoSuchOp is not registered")
    assert _first_error_line(RuntimeError("Traceback (most recent call last):\n  File \"a.cc\", line 1\n"
                                          "something broke")) == "something broke"
    assert _first_error_line(RuntimeError("")) == "RuntimeError"
    huge = _first_error_line(RuntimeError("Error: " + "r" * 10_000_000))
    assert huge.startswith("Error: rrr") and huge.endswith("(10,000,007 characters in all)")
    assert len(huge) < MAX_QUOTE_CHARS + 50


# ---------------------------------------------------------------------------------------------
# 6. Export .params files to the import paths (exporters._mxnet._load_params: capszoo._weights.read_params)

PARAMS_CASES = ["empty", "random-1k", "truncated-at-997", "count-2^62", "shape-2^40-elements", "ndim-2^31-1",
                "names-count-2^62", "name-length-2^62", "dtype-unknown-99", "unnamed-list"]
JUNK = "export-params+100-junk-bytes"   # the export's own .params with bytes appended


@pytest.fixture(scope="module")
def params_reports(tmp_path_factory, mx_export):
    """Every PARAMS_CASES file through convert and verify_mxnet, in a child capped at 2 GB of address space."""
    folder = tmp_path_factory.mktemp("bad-export-params")
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__)), "--params", str(folder),
                           str(mx_export["symbol"]), *PARAMS_CASES, JUNK],
                          capture_output=True, text=True, timeout=600, env=_child_env(), cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _params_child(folder, symbol, ids):
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from mxnet.gluon import nn
    from capszoo import exporters
    ctx = hw.Ctx({})
    net = nn.Dense(2, in_units=3)
    net.initialize()
    out = {}
    for cid in ids:
        if cid == JUNK:
            path = os.path.join(folder, "junk.params")
            with open(symbol.replace("-symbol.json", "-0000.params"), "rb") as src, open(path, "wb") as fh:
                fh.write(src.read() + b"junk" * 25)
        else:
            path = hw.build_case(hw.CASES_BY_ID[cid], ctx, folder)
        for surface in ("convert", "verify_mxnet"):
            try:
                if surface == "convert":
                    exporters.convert_mxnet_to_onnx(symbol, path, os.path.join(folder, "o.onnx"), input_shape=(1, 3))
                else:
                    exporters.verify_mxnet(symbol, path, net, np.zeros((2, 3), np.float32))
                out[f"{cid}/{surface}"] = {"error": None}
            except Exception as exc:  # noqa: BLE001
                out[f"{cid}/{surface}"] = {"error": _error_name(exc), "message": str(exc)[:400]}
    return out


PARAMS_RUNS = [(c, s) for c in PARAMS_CASES for s in ("convert", "verify_mxnet")]


@pytest.mark.slow
@harden("weights files", lambda p: GRAPH_SURFACES[p["surface"]], inputs=lambda p: [p["cid"]])
@pytest.mark.parametrize("cid,surface", PARAMS_RUNS, ids=[f"{c}-{s}" for c, s in PARAMS_RUNS])
def test_bad_export_params(params_reports, cid, surface, record_property):
    rep = params_reports[f"{cid}/{surface}"]
    assert rep["error"] == "GraphFormatError", rep
    assert "is not an MXNet .params file" in rep["message"] or "unnamed array list" in rep["message"], rep


@pytest.mark.slow
def test_export_params_errors_name_the_problem(params_reports, record_property):
    vague = {k: v["message"] for k, v in params_reports.items()
             if not k.startswith(JUNK) and v["error"] and ("Traceback (most recent call last)" in v["message"] or "bad_alloc" in v["message"]
                                or "_M_default_append" in v["message"] or "::resize" in v["message"])}
    n = len(PARAMS_CASES) * 2
    assert vague == {}, json.dumps(vague, indent=1)


@pytest.mark.slow
@harden("weights files", lambda p: GRAPH_SURFACES[p["surface"]], inputs=[JUNK])
@pytest.mark.parametrize("surface", ["convert", "verify_mxnet"])
def test_export_params_with_trailing_junk(params_reports, surface, record_property):
    rep = params_reports[f"{JUNK}/{surface}"]
    assert rep["error"] == "GraphFormatError", rep


# ---------------------------------------------------------------------------------------------
# 7. ONNX files to verify_onnx (onnxruntime): broken files and external data escaping the folder


def _onnx_model(location=None, *, length=None, ir_version=8, opset=17, op=("MatMul", "")):
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    if location is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("length", None if length is None else str(length))):
            if v is not None:
                e = w.external_data.add()
                e.key, e.value = k, v
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2])
    node = helper.make_node(op[0], ["data", "w"], ["output"], domain=op[1])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(op[1], 1)] if op[1] else [])
    g = helper.make_graph([node], "g", [x], [y], initializer=[w])
    return helper.make_model(g, opset_imports=opsets, ir_version=ir_version)


SECRET = np.arange(6, dtype=np.float32).tobytes()   # exactly the bytes the initializer needs


def _write_onnx_case(case, folder):
    """Write case ``case`` into ``folder/model``; returns the .onnx path.  ``folder/secret.bin`` (outside
    the model's folder) holds exactly the 24 bytes the initializer needs: were it read, the model would load."""
    model_dir = folder / "model"
    model_dir.mkdir(exist_ok=True)
    (folder / "secret.bin").write_bytes(SECRET)
    path = model_dir / f"{case}.onnx"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random-bytes":
        path.write_bytes(np.random.default_rng(3).bytes(4096))
    elif case == "json-renamed":
        path.write_text('{"nodes": []}')
    elif case == "truncated":
        path.write_bytes(_onnx_model().SerializeToString()[:-20])
    elif case == "missing-file":
        pass
    elif case == "folder":
        path.mkdir()
    elif case == "external-dotdot-etc-passwd":
        path.write_bytes(_onnx_model("../../../../../../../../etc/passwd").SerializeToString())
    elif case == "external-dotdot-secret":
        path.write_bytes(_onnx_model("../secret.bin").SerializeToString())
    elif case == "external-absolute-path":
        path.write_bytes(_onnx_model(str(folder / "secret.bin")).SerializeToString())
    elif case == "external-dev-zero":
        path.write_bytes(_onnx_model("/dev/zero").SerializeToString())
    elif case == "external-symlink-escaping":
        link = model_dir / "link.bin"
        if not os.path.lexists(link):
            os.symlink(folder / "secret.bin", link)
        path.write_bytes(_onnx_model("link.bin").SerializeToString())
    elif case == "external-length-2^40":
        (model_dir / "w.bin").write_bytes(SECRET)
        path.write_bytes(_onnx_model("w.bin", length=2 ** 40).SerializeToString())
    elif case == "external-missing-file":
        path.write_bytes(_onnx_model("nowhere.bin").SerializeToString())
    elif case == "ir-version-99":
        path.write_bytes(_onnx_model(ir_version=99).SerializeToString())
    elif case == "opset-99":
        path.write_bytes(_onnx_model(opset=99).SerializeToString())
    elif case == "custom-domain-op":
        path.write_bytes(_onnx_model(op=("Frobnicate", "com.example")).SerializeToString())
    else:
        raise KeyError(case)
    return path


ONNX_CASES = {
    "empty": r"onnxruntime cannot load",
    "random-bytes": r"onnxruntime cannot load",
    "json-renamed": r"onnxruntime cannot load",
    "truncated": r"onnxruntime cannot load",
    "missing-file": r"no such ONNX file",
    "folder": r"no such ONNX file|cannot load",
    "external-dotdot-etc-passwd": r"External data path escapes model directory",
    "external-dotdot-secret": r"External data path escapes model directory",
    "external-absolute-path": r"Absolute path not allowed for external data",
    "external-dev-zero": r"Absolute path not allowed for external data",
    "external-symlink-escaping": r"External data path escapes model directory",
    "external-length-2^40": r"external data size mismatch",
    "external-missing-file": r"onnxruntime cannot load",
    "ir-version-99": r"Unsupported model IR version",
    "opset-99": r"onnxruntime cannot load",
    "custom-domain-op": r"onnxruntime cannot load",
}


@harden("graphs", "verify_onnx", inputs=lambda p: [f"ONNX: {p['case']}"])
@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_bad_onnx_file(case, tmp_path, record_property):
    import mxnet as mx
    from mxnet.gluon import nn
    from capszoo import exporters
    net = nn.Dense(2, in_units=3, use_bias=False)
    net.initialize(mx.init.One())
    path = _write_onnx_case(case, tmp_path)
    with pytest.raises(Exception) as info:
        exporters.verify_onnx(path, net, np.ones((2, 3), np.float32), num_threads=1)
    _check_capszoo_error(info.value, "GraphFormatError", ONNX_CASES[case])
    assert (tmp_path / "secret.bin").read_bytes() == SECRET


def test_onnx_external_data_inside_the_folder_still_works(tmp_path):
    """Control: the same model with its weights in a file beside it loads and matches."""
    import mxnet as mx
    from mxnet.gluon import nn
    from capszoo import exporters
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(np.ones((3, 2), np.float32).tobytes())
    path = tmp_path / "model" / "ok.onnx"
    path.write_bytes(_onnx_model("w.bin").SerializeToString())
    net = nn.Dense(2, in_units=3, use_bias=False)
    net.initialize(mx.init.One())
    r = exporters.verify_onnx(path, net, np.ones((2, 3), np.float32), num_threads=1)
    assert r["max_abs_diff"] == 0.0


# ---------------------------------------------------------------------------------------------
# Script mode (children of the tests above)


def _main(argv):
    if argv[0] == "--fsize":
        import signal as sig
        sig.signal(sig.SIGXFSZ, sig.SIG_IGN)
        folder, spec = argv[1], json.loads(argv[2])
        out = {key: _fsize_child(os.path.join(folder, key.replace(":", "_").replace("@", "_")), name, limit)
               for key, name, limit in spec}
        print(json.dumps(out))
    elif argv[0] == "--params":
        print(json.dumps(_params_child(argv[1], argv[2], argv[3:])))
    else:
        raise SystemExit(f"unknown mode {argv[0]}")


if __name__ == "__main__":
    _main(sys.argv[1:])
