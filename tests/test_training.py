"""Training: recipe validation, a short real run, multi-context parity, resume after kill -9."""
import json
import os
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

import capszoo
from capszoo._context import parse_ctx
from capszoo._recipe import load_recipe, parse_recipe
from capszoo._train import random_shift, split_train_validation, train
from capszoo import read_params
from capszoo.errors import CheckpointError, ContextError, RecipeError

import tomllib


@pytest.fixture(scope="module")
def recipe_doc():
    import importlib.resources
    return tomllib.loads((importlib.resources.files("capszoo.recipes") / "capsnet-mnist.toml").read_text())


@pytest.fixture(scope="module")
def train_data(mnist_dir):
    from capszoo.data import load_mnist
    images, labels = load_mnist("train", data_dir=mnist_dir)
    return images[:1200], labels[:1200]


def test_bundled_recipe_is_wolframs_setup():
    r = load_recipe("capsnet-mnist")
    assert capszoo.list_recipes() == ["capsnet-mnist", "capsnet-mnist-deconv", "capsnet-mnist-finetune",
                                      "capsnet-mnist-masked", "capsnet-mnist-noreco", "capsnet-mnist-r1-masked",
                                      "capsnet-mnist-r1-noreco", "lenet-mnist"]
    assert r.net.routing_iterations == 3 and r.net.pred_vects_init_scale == 0.005
    assert (r.loss.margin_m_plus, r.loss.margin_m_minus, r.loss.margin_lambda) == (0.9, 0.1, 0.5)
    assert r.loss.class_weight == 1.0 and r.loss.reco_weight == pytest.approx(784 * 0.0005)
    assert r.optimizer.name == "adam" and r.optimizer.learning_rate == 0.001
    assert r.optimizer.learning_rate_at(2) == pytest.approx(0.001 * r.optimizer.lr_decay ** 2)
    assert r.data.max_shift == 2 and r.data.validation_size > 0
    assert r.train.epochs <= 50
    assert r.optimizer.ema_decay == 0.999
    assert [r.optimizer.ema_decay_at(t) for t in (0, 1, 10)] == [0.1, 2 / 11, 11 / 20]
    assert r.optimizer.ema_decay_at(10 ** 6) == 0.999


def test_finetune_recipe_is_the_first_stage_with_a_new_learning_rate_cycle():
    """capsnet-mnist-finetune trains on from capsnet-mnist's weights: the same net, losses, data split and
    shifts, batch and moving average; only the learning-rate cycle (and its length and seed) differ."""
    first, second = load_recipe("capsnet-mnist").to_dict(), load_recipe("capsnet-mnist-finetune").to_dict()
    assert second["model"] == first["model"] == "capsnet-mnist"
    for section in ("net", "loss", "data"):
        assert second[section] == first[section]
    assert {k: v for k, v in second["optimizer"].items() if k not in ("learning_rate", "lr_decay")} == \
        {k: v for k, v in first["optimizer"].items() if k not in ("learning_rate", "lr_decay")}
    assert (second["optimizer"]["learning_rate"], second["optimizer"]["lr_decay"]) == (3e-4, 0.82)
    assert second["train"]["batch_size"] == first["train"]["batch_size"]
    assert second["train"]["epochs"] == 10

def test_ema_decay_is_optional(recipe_doc):
    import copy
    d = copy.deepcopy(recipe_doc)
    d["optimizer"].pop("ema_decay")
    assert parse_recipe(d).optimizer.ema_decay == 0.0


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(extra=1), "unknown key"),
    (lambda d: d["loss"].update(margin_m_pluss=0.9), r"\[loss\] unknown key\(s\) margin_m_pluss"),
    (lambda d: d["train"].pop("epochs"), r"\[train\] missing key\(s\) epochs"),
    (lambda d: d["train"].update(epochs="ten"), "train.epochs must be of type int, got str"),
    (lambda d: d["train"].update(batch_size=True), "train.batch_size must be of type int, got bool"),
    (lambda d: d["train"].update(batch_size=0), "batch_size must be > 0"),
    (lambda d: d["optimizer"].update(name="sgd"), "optimizer.name 'sgd' is not supported"),
    (lambda d: d["optimizer"].update(ema_decay=1.0), r"optimizer\.ema_decay must be in \[0, 1\) \(0: no weight "
                                                      r"averaging\), got 1\.0"),
    (lambda d: d["optimizer"].update(ema_decay=float("nan")), r"ema_decay must be in \[0, 1\).*got nan"),
    (lambda d: d["optimizer"].update(ema_decay="0.9"), "optimizer.ema_decay must be of type float, got str"),
    (lambda d: d["loss"].update(margin_m_minus=0.95), "margin_m_minus < margin_m_plus"),
    (lambda d: d["data"].update(max_shift=20), "max_shift must be 0..8"),
    (lambda d: d.pop("net"), "missing net"),
    (lambda d: d.update(net=3), r"\[net\] must be a table"),
    (lambda d: d["net"].update(decoder="conv"), "net.decoder 'conv' is not a decoder; use one of: pick, masked, "
                                                "deconv, none"),
    (lambda d: d["net"].update(routing_iterations=0), "routing_iterations must be > 0"),
    (lambda d: d["net"].update(decoder="masked"), "net.decoder = 'masked' but model 'capsnet-mnist' has decoder "
                                                  "= 'pick'; use a recipe of that entry"),
    (lambda d: (d.update(model="capsnet-mnist-noreco"), d["net"].update(decoder="none")),
     "net.decoder is 'none' but loss.reco_weight is 0.392; a net without a decoder has no reconstruction loss"),
    (lambda d: d.update(model="capsnet-mnist-r1"), "model 'capsnet-mnist-r1' is not a zoo entry"),
    (lambda d: d.update(model="lenet-mnist"), r"\[net\] unknown key\(s\) pred_vects_init_scale, routing_iterations "
                                              r"for model 'lenet-mnist' \(family lenet\); allowed: none"),
])
def test_recipe_validation(recipe_doc, mutate, message):
    import copy
    d = copy.deepcopy(recipe_doc)
    mutate(d)
    with pytest.raises(RecipeError, match=message):
        parse_recipe(d)


def test_recipe_files(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("name = [unclosed")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(str(p))
    with pytest.raises(RecipeError, match="no recipe 'nope'.*capsnet-mnist"):
        load_recipe("nope")


@pytest.mark.parametrize("spec,expected", [("cpu", ["cpu(0)"]), ("cpu:0,cpu:1", ["cpu(0)", "cpu(1)"]),
                                           (" CPU:1 ", ["cpu(1)"]), (None, ["cpu(0)"])])
def test_parse_ctx(spec, expected):
    assert [str(c) for c in parse_ctx(spec)] == expected


@pytest.mark.parametrize("spec,message", [("tpu", "cannot parse context 'tpu'"), ("cpu:x", "device index"),
                                          ("cpu:0,cpu:0", "listed twice"), ("gpu:0", "not available"),
                                          ("gpu:all", "sees no GPU"), ("cpu:all", "only for GPUs"), ([], "empty")])
def test_parse_ctx_errors(spec, message):
    with pytest.raises(ContextError, match=message):
        parse_ctx(spec)


def test_split_and_shift_are_seeded():
    tr, va = split_train_validation(100, 10, 0)
    tr2, va2 = split_train_validation(100, 10, 0)
    assert len(tr) == 90 and len(va) == 10 and not set(tr) & set(va)
    assert (va == va2).all()
    img = np.zeros((1, 28, 28), np.uint8)
    img[0, 10:18, 10:18] = 255
    out = random_shift(np.repeat(img, 50, 0), np.random.default_rng(0), 2)
    assert out.shape == (50, 28, 28) and (out.sum(axis=(1, 2)) == img.sum()).all()  # moved, not cut
    ys = [np.nonzero(o.any(1))[0][0] - 10 for o in out]
    assert set(ys) == {-2, -1, 0, 1, 2}


@pytest.mark.slow
def test_short_run_loss_falls(train_data, tmp_path):
    r = load_recipe("capsnet-mnist")
    res = train(r, data=train_data, out_dir=tmp_path / "run", epochs=3, batch_size=32, progress=False,
                max_steps_per_epoch=6, seed=3, validation_size=200)
    losses = [m["train_loss"] for m in res.history]
    assert len(losses) == 3 and losses[2] < losses[0] * 0.9, losses
    files = sorted(os.listdir(tmp_path / "run"))
    assert files == ["best.params", "checkpoint.json", "epoch-0003.ema.params", "epoch-0003.optimizer.params",
                     "epoch-0003.params", "metrics.jsonl", "run.json"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    assert all(0 <= json.loads(x)["val_accuracy_raw"] <= 1 for x in lines)
    assert read_params(tmp_path / "run" / "best.params").keys() == read_params(
        tmp_path / "run" / "epoch-0003.params").keys()


@pytest.mark.slow
def test_existing_run_needs_resume(train_data, tmp_path):
    r = load_recipe("capsnet-mnist")
    train(r, data=train_data, out_dir=tmp_path / "run", epochs=1, batch_size=16, progress=False, max_steps_per_epoch=1,
          validation_size=100)
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        train(r, data=train_data, out_dir=tmp_path / "run", epochs=1, batch_size=16, progress=False,
              max_steps_per_epoch=1, validation_size=100)
    ck = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    shape = ck["architecture"]["PrimaryCaps.weight"]
    ck["architecture"]["PrimaryCaps.weight"] = [1, 2, 3]
    (tmp_path / "run" / "checkpoint.json").write_text(json.dumps(ck))
    with pytest.raises(CheckpointError, match="another architecture"):
        train(r, data=train_data, out_dir=tmp_path / "run", epochs=2, batch_size=16, progress=False,
              max_steps_per_epoch=1, resume=True, validation_size=100)
    ck2 = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    ck2["architecture"]["PrimaryCaps.weight"] = shape
    ck2["optimizer"]["file"] = "../../etc/passwd"
    (tmp_path / "run" / "checkpoint.json").write_text(json.dumps(ck2))
    with pytest.raises(CheckpointError, match=r"bad optimizer file entry '\.\./\.\./etc/passwd'"):
        train(r, data=train_data, out_dir=tmp_path / "run", epochs=2, batch_size=16, progress=False,
              max_steps_per_epoch=1, resume=True, validation_size=100)


def test_unwritable_out(train_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write to run directory"):
        train(load_recipe("capsnet-mnist"), data=train_data, out_dir=blocker / "run", epochs=1, progress=False,
              validation_size=100)


@pytest.mark.slow
def test_two_contexts_equal_one(train_data, tmp_path):
    r = load_recipe("capsnet-mnist")
    kw = dict(data=train_data, epochs=1, batch_size=16, progress=False, max_steps_per_epoch=3, seed=5,
              validation_size=100)
    one = train(r, ctx="cpu", out_dir=tmp_path / "one", **kw)
    two = train(r, ctx="cpu:0,cpu:1", out_dir=tmp_path / "two", **kw)
    assert abs(one.history[0]["train_loss"] - two.history[0]["train_loss"]) < 1e-5
    a, b = read_params(tmp_path / "one" / "best.params"), read_params(tmp_path / "two" / "best.params")
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert diff < 1e-5, diff
    # Adam's step hardly changes when every gradient is scaled by a constant (gradients summed over the
    # devices instead of averaged), but its moments scale with it: the first by c, the second by c^2.
    # Measured between one and two contexts: 1.6e-6 of each moment's largest value (summation order).
    ma, mb = (read_params(tmp_path / d / "epoch-0001.optimizer.params") for d in ("one", "two"))
    assert sorted(ma) == sorted(mb) and len(ma) == 2 * len(a)
    apart = [k for k in ma if not np.abs(ma[k] - mb[k]).max() <= 1e-4 * np.abs(ma[k]).max()]
    assert apart == [], {k: (float(np.abs(ma[k]).max()), float(np.abs(mb[k]).max())) for k in apart[:3]}
    ca, cb = (json.loads((tmp_path / d / "checkpoint.json").read_text())["optimizer"] for d in ("one", "two"))
    assert ca == cb and ca["num_update"] == 3 and ca["rescale_grad"] == 1 / 16


def _run_cli(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "capszoo.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_resume_after_kill_9_matches_uninterrupted(mnist_dir, reference_run, tmp_path):
    from conftest import REFERENCE_ARGS, train_env
    args = REFERENCE_ARGS + ["--data-dir", str(mnist_dir)]
    run = tmp_path / "killed"
    p = _run_cli(args + ["--out", str(run)], train_env())
    deadline = time.time() + 1800   # a hang guard only: the kill waits for the checkpoint, not for a time
    while time.time() < deadline and p.poll() is None:  # kill -9 once epoch 1 is checkpointed, during epoch 2
        ck = run / "checkpoint.json"
        if ck.exists() and json.loads(ck.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before epoch 1's checkpoint: " + p.stdout.read().decode()[-2000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    done = json.loads((run / "checkpoint.json").read_text())["epoch"]
    assert 1 <= done < 3
    q = _run_cli(args + ["--out", str(run), "--resume"], train_env())
    out = q.communicate(timeout=1800)[0].decode()
    assert q.returncode == 0, out
    a, b = read_params(reference_run / "epoch-0003.params"), read_params(run / "epoch-0003.params")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) == 0.0  # bit-identical
    assert [m["epoch"] for m in json.loads((run / "checkpoint.json").read_text())["history"]] == [1, 2, 3]
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]


# --- checkpoints: the optimizer state format, sha256, stale temporary files, exact resume ----------


@pytest.fixture(scope="module")
def one_epoch_run(train_data, tmp_path_factory):
    """A run directory after one epoch of two steps."""
    out = tmp_path_factory.mktemp("one-epoch") / "run"
    train(load_recipe("capsnet-mnist"), data=train_data, out_dir=out, epochs=1, batch_size=16, progress=False,
          max_steps_per_epoch=2, seed=3, validation_size=100)
    return out


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_optimizer_state_format_round_trip(one_epoch_run):
    """The Adam state is a .params file (no pickle) plus scalars in checkpoint.json, and loading it gives
    the Trainer exactly that state back."""
    from mxnet import gluon
    from capszoo.models.capsnet.net import CapsNet
    from capszoo._train import _load_optimizer, _optimizer_state, _read_checkpoint
    from capszoo._weights import param_shapes, sha256_file

    ck = json.loads((one_epoch_run / "checkpoint.json").read_text())
    assert ck["format"] == 2 and "states" not in ck
    opt = ck["optimizer"]
    assert opt["file"] == "epoch-0001.optimizer.params" and opt["name"] == "adam"
    assert (one_epoch_run / opt["file"]).read_bytes()[:8] == (0x112).to_bytes(8, "little")  # .params, not pickle
    assert ck["sha256"] == {"params": sha256_file(one_epoch_run / "epoch-0001.params"),
                            "optimizer": sha256_file(one_epoch_run / opt["file"]),
                            "ema": sha256_file(one_epoch_run / "epoch-0001.ema.params")}
    shapes = param_shapes(CapsNet())
    moments = read_params(one_epoch_run / opt["file"])
    assert sorted(moments) == sorted(f"{part}:{n}" for n in shapes for part in ("mean", "var"))
    assert all(moments[f"mean:{n}"].shape == s and moments[f"var:{n}"].dtype == np.float32 for n, s in shapes.items())
    assert (moments["var:PrimaryCaps.weight"] >= 0).all() and moments["mean:PrimaryCaps.weight"].any()
    assert opt["update_counts"] == {"0": {n: 2 for n in sorted(shapes)}} and opt["num_update"] == 2
    assert opt["lr"] == load_recipe("capsnet-mnist").optimizer.learning_rate and opt["rescale_grad"] == 1 / 16

    net = CapsNet()
    net.initialize(ctx=mx.cpu())
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.5})
    ck = _read_checkpoint(str(one_epoch_run), net)
    _load_optimizer(trainer, net, str(one_epoch_run), ck)
    back, scalars = _optimizer_state(trainer, net)
    assert scalars == {k: v for k, v in opt.items() if k != "file"}
    assert sorted(back) == sorted(moments)
    assert all(back[k].asnumpy().tobytes() == moments[k].tobytes() for k in moments)


@pytest.mark.parametrize("target", ["epoch-0001.params", "epoch-0001.optimizer.params", "epoch-0001.ema.params"])
def test_sha256_mismatch_is_refused(one_epoch_run, train_data, tmp_path, target):
    """One changed byte in the data of a checkpoint file (still a valid, finite file) stops --resume."""
    run = _copy(one_epoch_run, tmp_path / "run")
    data = bytearray((run / target).read_bytes())
    data[len(data) // 2] ^= 0x01   # a low mantissa bit of a value in the middle of the file
    (run / target).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{target.replace('.', '[.]')} has sha256 [0-9a-f]{{64}}, but "
                                              r"checkpoint\.json records [0-9a-f]{64}: the file changed"):
        train(load_recipe("capsnet-mnist"), data=train_data, out_dir=run, epochs=2, batch_size=16,
              progress=False, max_steps_per_epoch=2, seed=3, validation_size=100, resume=True)


def test_stale_temp_files_are_removed(one_epoch_run, train_data, tmp_path):
    """What a killed writer leaves (capszoo._io.atomic_path's temporary names) goes; nothing else does."""
    from capszoo._train import STALE_TEMP_PATTERNS, _remove_stale_temp_files
    run = _copy(one_epoch_run, tmp_path / "run")
    stale = [".epoch-0002.params.k2j4h5ab.tmp", ".epoch-0002.optimizer.params.x_y7zz1q.tmp",
             ".epoch-0002.states.abcdefgh.tmp", ".best.params.qwertyui.tmp", ".checkpoint.json.a1b2c3d4.tmp",
             ".run.json.zzzzzzzz.tmp", ".metrics.jsonl.0a0a0a0a.tmp", ".final-rank1.params.12345678.tmp",
             ".write-test-4242"]
    kept = ["notes.txt", ".hidden.tmp", "my.epoch-1.tmp", ".epoch-folder.tmp"]
    for f in stale + kept[:3]:
        (run / f).write_bytes(b"x")
    (run / kept[3]).mkdir()
    assert _remove_stale_temp_files(str(run)) == sorted(stale)
    assert len(STALE_TEMP_PATTERNS) == 7
    for f in stale:
        (run / f).write_bytes(b"x")
    train(load_recipe("capsnet-mnist"), data=train_data, out_dir=run, epochs=1, batch_size=16, progress=False,
          max_steps_per_epoch=2, seed=3, validation_size=100, resume=True)   # nothing left to train
    assert sorted(f for f in os.listdir(run) if f.startswith(".") or f == "notes.txt") == sorted(
        [".epoch-folder.tmp", ".hidden.tmp", "notes.txt"])


@pytest.mark.slow
def test_weight_average_is_what_validation_and_best_params_use(one_epoch_run, train_data, tmp_path):
    """One step from w0 to w1: the average is d0 w0 + (1 - d0) w1 with d0 = min(0.999, 1/10); best.params is the
    average, and the checkpoint's ema entry says so."""
    from capszoo.models.capsnet.net import CapsNet
    from capszoo import initialize_net
    r = load_recipe("capsnet-mnist")
    run = tmp_path / "run"
    train(r, data=train_data, out_dir=run, epochs=1, batch_size=16, progress=False, max_steps_per_epoch=1, seed=3,
          validation_size=100)
    net = CapsNet()
    initialize_net(net, r, [mx.cpu()], 3)   # the run's seed: its w0
    w0 = {n: p.data().asnumpy() for n, p in net._collect_params_with_prefix().items()}
    ck = json.loads((run / "checkpoint.json").read_text())
    assert ck["ema"] == {"file": "epoch-0001.ema.params", "decay": 0.999, "num_update": 1, "started_epoch": 0}
    ema, w1, best = (read_params(run / f) for f in ("epoch-0001.ema.params", "epoch-0001.params", "best.params"))
    assert sorted(ema) == sorted(w0) == sorted(w1) == sorted(best)
    assert all(best[n].tobytes() == ema[n].tobytes() for n in ema)
    d0 = r.optimizer.ema_decay_at(0)
    assert d0 == 0.1
    for n in ema:
        assert np.abs(ema[n] - (d0 * w0[n] + (1 - d0) * w1[n])).max() < 1e-7, n
    assert max(float(np.abs(w1[n] - w0[n]).max()) for n in w0) > 5e-4   # Adam moved the weights (lr 1e-3)
    assert 0 <= ck["history"][0]["val_accuracy_raw"] <= 1
    two = json.loads((one_epoch_run / "checkpoint.json").read_text())["ema"]
    assert two["num_update"] == 2 and two["file"] == "epoch-0001.ema.params"


def _with_ema_decay(recipe, decay):
    import dataclasses
    return dataclasses.replace(recipe, optimizer=dataclasses.replace(recipe.optimizer, ema_decay=decay))


def _epoch_without_average(train_data, tmp_path, *, steps, seed):
    """A run directory after one epoch of ``steps`` steps of the recipe without ema_decay: (recipe, run
    directory, the train() keywords to go on with)."""
    run = tmp_path / "run"
    kw = dict(data=train_data, out_dir=run, batch_size=16, progress=False, max_steps_per_epoch=steps, seed=seed,
              validation_size=100)
    train(_with_ema_decay(load_recipe("capsnet-mnist"), 0.0), epochs=1, **kw)
    return load_recipe("capsnet-mnist"), run, kw


@pytest.mark.slow
def test_resume_without_an_average_starts_one(train_data, tmp_path):
    """A checkpoint written without ema_decay (an older run) resumes with the recipe's average, started
    from the checkpoint's weights; a different decay is refused."""
    r, run, kw = _epoch_without_average(train_data, tmp_path, steps=2, seed=3)
    ck = json.loads((run / "checkpoint.json").read_text())
    assert "ema" not in ck and set(ck["sha256"]) == {"params", "optimizer"}
    res = train(r, epochs=2, resume=True, **kw)
    ck = json.loads((run / "checkpoint.json").read_text())
    assert ck["ema"] == {"file": "epoch-0002.ema.params", "decay": 0.999, "num_update": 2, "started_epoch": 1}
    assert set(ck["sha256"]) == {"params", "optimizer", "ema"} and "val_accuracy_raw" in res.history[1]
    assert "val_accuracy_raw" not in res.history[0]
    other = _with_ema_decay(r, 0.99)
    with pytest.raises(CheckpointError, match=r"averages its weights with ema_decay 0\.999, the recipe says 0\.99; "
                                              "resume with the run's recipe"):
        train(other, epochs=3, resume=True, **kw)


@pytest.mark.slow
def test_average_started_on_resume_takes_the_runs_step(train_data, tmp_path):
    """An average started in a resumed run decays by the run's step count, not its own: after epoch 1 (one
    step, no average) and epoch 2 (step t=1), a = d w1 + (1 - d) w2 with d = (1+1)/(10+1)."""
    r, run, kw = _epoch_without_average(train_data, tmp_path, steps=1, seed=5)
    w1 = read_params(run / "epoch-0001.params")
    train(r, epochs=2, resume=True, **kw)
    w2, ema = read_params(run / "epoch-0002.params"), read_params(run / "epoch-0002.ema.params")
    d = r.optimizer.ema_decay_at(1)
    assert d == 2 / 11
    assert max(float(np.abs(ema[n] - (d * w1[n] + (1 - d) * w2[n])).max()) for n in ema) < 1e-7
    assert max(float(np.abs(w2[n] - w1[n]).max()) for n in w1) > 5e-4


@pytest.mark.slow
def test_init_weights_and_log_continue_a_run(one_epoch_run, train_data, tmp_path):
    """--init-weights + --init-log: a new run that continues a finished one from its weights and log -- the
    history starts with the log, the next epoch has the schedule of epoch N + 1, the first step starts from
    the given weights (the average a = d w_init + (1 - d) w after it, d at the run's step N * steps), the
    weights are best.params until an epoch beats the log's best, and run.json names both files."""
    from capszoo._weights import sha256_file
    r = load_recipe("capsnet-mnist")
    log, init = one_epoch_run / "metrics.jsonl", one_epoch_run / "best.params"
    run = tmp_path / "run"
    kw = dict(data=train_data, out_dir=run, batch_size=16, progress=False, max_steps_per_epoch=1, seed=3,
              validation_size=100)
    res = train(r, epochs=2, init_weights=init, init_log=log, **kw)
    old = json.loads(log.read_text().splitlines()[0])
    assert [m["epoch"] for m in res.history] == [1, 2] and res.history[0] == old
    assert res.history[1]["lr"] == pytest.approx(1e-3 * 0.9)
    ck = json.loads((run / "checkpoint.json").read_text())
    assert ck["ema"] == {"file": "epoch-0002.ema.params", "decay": 0.999, "num_update": 1, "started_epoch": 1}
    w_init, w2 = read_params(init), read_params(run / "epoch-0002.params")
    ema = read_params(run / "epoch-0002.ema.params")
    d = r.optimizer.ema_decay_at(1)   # the run's step 1 (epoch 1 had one step): one step from w_init to w2
    assert d == 2 / 11
    assert max(float(np.abs(ema[n] - (d * w_init[n] + (1 - d) * w2[n])).max()) for n in ema) < 1e-7
    assert 0 < max(float(np.abs(w2[n] - w_init[n]).max()) for n in w_init) < 5e-3   # one Adam step (lr 9e-4)
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["init"] == {"weights": str(init), "sha256": sha256_file(init), "log": str(log),
                                "log_sha256": sha256_file(log), "epochs": 1}
    best = read_params(run / "best.params")
    if ck["best"]["epoch"] == 1:   # epoch 2 did not beat the log's best: the given weights stay best
        assert ck["best"]["val_accuracy"] == old["val_accuracy"]
        assert all(best[n].tobytes() == w_init[n].tobytes() for n in w_init)
    else:
        assert ck["best"] == {"epoch": 2, "val_accuracy": res.history[1]["val_accuracy"]}
        assert res.history[1]["val_accuracy"] > old["val_accuracy"]
        assert all(best[n].tobytes() == ema[n].tobytes() for n in ema)
    res3 = train(r, epochs=3, resume=True, **kw)   # the continued run is an ordinary run: it resumes
    assert [m["epoch"] for m in res3.history] == [1, 2, 3] and res3.history[:2] == res.history


def test_init_weights_without_log_starts_at_epoch_1(one_epoch_run, train_data, tmp_path):
    """--init-weights alone: fine-tuning from the file, a run of its own from epoch 1; no best.params before
    the first validation."""
    r = load_recipe("capsnet-mnist")
    res = train(r, data=train_data, out_dir=tmp_path / "run", epochs=1, batch_size=16, progress=False,
                max_steps_per_epoch=1, seed=3, validation_size=100, init_weights=one_epoch_run / "best.params")
    assert [m["epoch"] for m in res.history] == [1] and res.history[0]["lr"] == 1e-3
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["init"]["epochs"] == 0 and run_json["init"]["log"] is None
    w = read_params(one_epoch_run / "best.params")
    raw = read_params(tmp_path / "run" / "epoch-0001.params")
    assert 0 < max(float(np.abs(raw[n] - w[n]).max()) for n in w) < 5e-3   # one Adam step from the file


def test_init_log_best_elsewhere_restarts_selection(one_epoch_run, train_data, tmp_path):
    """When the log's best epoch is not its last (the weights given), selection starts afresh."""
    rec = json.loads((one_epoch_run / "metrics.jsonl").read_text().splitlines()[0])
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(dict(rec, val_accuracy=0.99)) + "\n" + json.dumps(dict(rec, epoch=2, val_accuracy=0.5))
                   + "\n")
    res = train(load_recipe("capsnet-mnist"), data=train_data, out_dir=tmp_path / "run", epochs=3, batch_size=16,
                progress=False, max_steps_per_epoch=1, seed=3, validation_size=100,
                init_weights=one_epoch_run / "best.params", init_log=log)
    assert [m["epoch"] for m in res.history] == [1, 2, 3]
    assert res.best_epoch == 3 and res.best_val_accuracy == res.history[2]["val_accuracy"]


@pytest.mark.parametrize("lines, message", [
    (None, r"--init-log needs --init-weights: the weights after the log's last epoch"),
    ("resume", r"--init-weights starts a new run; --resume continues the one in --out: pass one of them"),
    ("", r"--init-log \S+log\.jsonl: no epochs in it; pass the metrics\.jsonl of the run whose weights "
         r"--init-weights holds"),
    ('{"epoch": 1}\nnot json\n', r"--init-log \S+: line 2 is not JSON; pass the metrics"),
    ('{"epoch": 2}\n', r"--init-log \S+: history entry 1 must be the metrics of epoch 1 \(numbers by name, "
                       r"\"epoch\": 1\), got \{'epoch': 2\}"),
    ('{"epoch": 1, "note": "x"}\n', r"history entry 1 must be the metrics of epoch 1"),
    ('{"epoch": 1}\n{"epoch": 2}\n', r"--init-log \S+: it already holds 2 epochs and the run has 2; raise "
                                     r"--epochs"),
    ("\xff\n", r"--init-log \S+: not UTF-8 text"),
    ("missing", r"cannot read --init-log \S+missing\.jsonl: No such file or directory"),
])
def test_init_errors(one_epoch_run, train_data, tmp_path, lines, message):
    from capszoo.errors import InvalidInputError
    kw = dict(data=train_data, out_dir=tmp_path / "run", epochs=2, batch_size=16, progress=False,
              max_steps_per_epoch=1, seed=3, validation_size=100)
    log = tmp_path / "log.jsonl"
    if lines is None:
        kw["init_log"] = one_epoch_run / "metrics.jsonl"
    elif lines == "resume":
        kw.update(init_weights=one_epoch_run / "best.params", resume=True)
    elif lines == "missing":
        kw.update(init_weights=one_epoch_run / "best.params", init_log=tmp_path / "missing.jsonl")
    else:
        log.write_bytes(lines.encode("latin-1"))
        kw.update(init_weights=one_epoch_run / "best.params", init_log=log)
    with pytest.raises(InvalidInputError, match=message):
        train(load_recipe("capsnet-mnist"), **kw)
    assert not (tmp_path / "run").exists()   # refused before anything is written


def test_init_weights_of_another_net_is_refused(train_data, tmp_path):
    from capszoo.errors import WeightsFormatError
    bad = tmp_path / "w.params"
    mx.nd.save(str(bad), {"dense0_weight": mx.nd.zeros((2, 2))})
    with pytest.raises(WeightsFormatError):
        train(load_recipe("capsnet-mnist"), data=train_data, out_dir=tmp_path / "run", epochs=1, batch_size=16,
              progress=False, max_steps_per_epoch=1, seed=3, validation_size=100, init_weights=bad)
    assert not (tmp_path / "run").exists()   # refused before --out is created


def test_write_error_is_a_checkpoint_error(one_epoch_run, train_data, tmp_path, monkeypatch):
    """An OSError of a checkpoint write (here: ENOSPC from the checkpoint.json writer) names the file."""
    import errno
    import capszoo._train as t
    run = _copy(one_epoch_run, tmp_path / "run")

    def full(path, obj, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(t, "atomic_write_json", full)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint file \S+checkpoint\.json: No space left on "
                                              r"device; free some space or choose another --out"):
        train(load_recipe("capsnet-mnist"), data=train_data, out_dir=run, epochs=2, batch_size=16,
              progress=False, max_steps_per_epoch=2, seed=3, validation_size=100, resume=True)
    assert json.loads((run / "checkpoint.json").read_text())["epoch"] == 1   # the previous checkpoint is whole


def _cli_ok(args, env):
    p = _run_cli(args, env)
    out = p.communicate(timeout=1800)[0].decode()
    assert p.returncode == 0, out[-2000:]


def _epochs(args, n):
    args = list(args)
    args[args.index("--epochs") + 1] = str(n)
    return args


@pytest.mark.slow
@pytest.mark.parametrize("ctx", [None, "cpu:0,cpu:1"], ids=["cpu", "cpu:0,cpu:1"])
def test_resume_is_bit_identical(ctx, mnist_dir, reference_run, tmp_path):
    """3 epochs == 2 epochs, then --resume to 3: weights, Adam moments and scalars, metrics, bit for bit --
    with one context (the Trainer's updater) and two (a local kvstore, which runs the optimizer itself),
    each run with conftest.REFERENCE_THREADS (2) OpenMP threads."""
    from conftest import REFERENCE_ARGS, train_env
    env = train_env()
    args = REFERENCE_ARGS + ["--data-dir", str(mnist_dir)] + (["--ctx", ctx] if ctx else [])
    if ctx:
        _cli_ok(args + ["--out", str(tmp_path / "ref")], env)
    ref = tmp_path / "ref" if ctx else reference_run
    _cli_ok(_epochs(args, 2) + ["--out", str(tmp_path / "run")], env)
    _cli_ok(args + ["--out", str(tmp_path / "run"), "--resume"], env)
    run = tmp_path / "run"
    assert sorted(os.listdir(run)) == sorted(os.listdir(ref))
    for name in ("epoch-0003.params", "epoch-0003.optimizer.params", "epoch-0003.ema.params", "best.params"):
        a, b = read_params(ref / name), read_params(run / name)
        assert a.keys() == b.keys() and [k for k in a if a[k].tobytes() != b[k].tobytes()] == [], name
    ca, cb = (json.loads((d / "checkpoint.json").read_text()) for d in (ref, run))
    assert ca["optimizer"] == cb["optimizer"] and ca["sha256"] == cb["sha256"] and ca["ema"] == cb["ema"]
    assert ca["ema"] == {"file": "epoch-0003.ema.params", "decay": 0.999, "num_update": 6, "started_epoch": 0}
    assert ca["optimizer"]["num_update"] == 6
    timing = ("images_per_second", "epoch_seconds")
    assert [{k: v for k, v in m.items() if k not in timing} for m in ca["history"]] == \
        [{k: v for k, v in m.items() if k not in timing} for m in cb["history"]]
