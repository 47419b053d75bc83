"""capszoo push / capszoo.push_to_hub, end to end with the real huggingface_hub client and tests/fake_hub.py.

The repository folder of capsnet-mnist is built once for the module (a dry run: exports verified on 256
MNIST test digits) and every push reuses it.  Pushes go to a FakeHub on 127.0.0.1 (HF_ENDPOINT), with
HF_HUB_DISABLE_XET=1 so that the client uploads over plain HTTP (the Git LFS batch API), and record the
publication in a temporary copy of capszoo/pretrained/<name>.json: the repository's manifests are never
written (checked after every test).  huggingface_hub retries failed transfers with back-off; the waits
are skipped here, the retries are not.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import struct
import time
import types

import numpy as np
import pytest

import capszoo
from capszoo import _hub, _publish
from capszoo._publish import BUILD_RECORD, SAFETENSORS_NAME, hf_license, push_to_hub
from capszoo.errors import CapszooError, InvalidInputError, ModelNotFoundError, PublishError, WeightsFormatError

from fake_hub import FakeHub

NAME = "capsnet-mnist"
TOKEN = "hf_capszoo_test_write_token"
VERIFY_COUNT = 256
REAL_MANIFESTS = pathlib.Path(capszoo.__file__).resolve().parent / "pretrained"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_digests():
    return {p.name: _sha(p.read_bytes()) for p in sorted(REAL_MANIFESTS.glob("*.json"))}


@pytest.fixture(scope="module")
def card():
    return capszoo.get_card(NAME)


@pytest.fixture(scope="module")
def built(tmp_path_factory, mnist_dir):
    """The repository folder of capsnet-mnist, built once by a dry run (no Hub, no token, offline)."""
    out = tmp_path_factory.mktemp("push") / "build"
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home / "hf"))
        mp.setenv("CAPSZOO_HOME", str(home / "capszoo"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        for var in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
            mp.delenv(var, raising=False)
        t0 = time.monotonic()
        res = push_to_hub(NAME, repo_id="capszoo/capsnet-mnist", dry_run=True, out_dir=out, data_dir=mnist_dir,
                          verify_count=VERIFY_COUNT)
        res_seconds = time.monotonic() - t0
    assert res.dry_run and res.built and res.commit is None and res.manifest is None
    return types.SimpleNamespace(result=res, folder=pathlib.Path(res.folder), seconds=res_seconds)


@pytest.fixture(autouse=True)
def _manifests_untouched():
    before = _manifest_digests()
    yield
    assert _manifest_digests() == before, "a test wrote the repository's capszoo/pretrained/*.json"


@pytest.fixture(autouse=True)
def _no_backoff_waits(monkeypatch):
    """huggingface_hub sleeps 1-8 s between its retries of a failed transfer; keep the retries, skip the waits."""
    from huggingface_hub.utils import _http

    fast = {n: getattr(time, n) for n in dir(time) if not n.startswith("_")}
    fast["sleep"] = lambda seconds: None
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(**fast))


@pytest.fixture
def manifests(tmp_path, monkeypatch):
    """A temporary copy of capszoo/pretrained's manifests, where push_to_hub records publications."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    for p in REAL_MANIFESTS.glob("*.json"):
        shutil.copyfile(p, folder / p.name)
    monkeypatch.setattr(_publish, "manifest_dir", lambda: folder)
    return folder


@pytest.fixture
def hub(monkeypatch, manifests):
    """A running fake Hub accepting TOKEN; the environment points at it, online, token in HF_TOKEN."""
    h = FakeHub()
    h.tokens = {TOKEN}
    h.start()
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    try:
        yield h
    finally:
        h.stop()


def push(built, card, mnist_dir, **kwargs):
    kwargs.setdefault("repo_id", card.weights.hf_repo_id)
    return push_to_hub(NAME, out_dir=built.folder, data_dir=mnist_dir, verify_count=VERIFY_COUNT, **kwargs)


def published_files(hub, repo_id, revision):
    return {p: _sha(d) for p, d in hub.files(repo_id, revision).items() if p != ".gitattributes"}


def local_files(folder):
    return {p.relative_to(folder).as_posix(): _sha(p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != BUILD_RECORD}


def digits(mnist_dir, n=48):
    from capszoo.data import load_mnist

    images, _ = load_mnist("test", data_dir=mnist_dir)
    return (images[:n].astype(np.float32) / 255.0)[:, None]


def outputs_of(weights, x):
    model = capszoo.load(NAME, weights=weights, backend="mxnet")
    return [np.asarray(o) for o in model.run(x) if o is not None]


# ---------------------------------------------------------------------------------------------
# The folder (dry run)
# ---------------------------------------------------------------------------------------------

def test_dry_run_builds_every_file_of_the_repository(built, card):
    files = local_files(built.folder)
    expected = {"README.md", "config.json", card.weights.filename, SAFETENSORS_NAME,
                "mxnet/capsnet-mnist-symbol.json", "mxnet/capsnet-mnist-0000.params", "mxnet/metadata.json",
                "onnx/capsnet-mnist.onnx", "onnx/metadata.json"}
    figures = {f"figures/{p.name}" for p in _publish.figures_for(NAME)}
    assert set(files) == expected | figures
    assert "figures/training.png" in figures  # docs/figures of the source checkout
    assert files[card.weights.filename] == card.weights.sha256
    assert {p: d["sha256"] for p, d in built.result.files.items()} == files
    record = json.loads((built.folder / BUILD_RECORD).read_text())
    assert record["weights_sha256"] == card.weights.sha256 and record["verify_count"] == VERIFY_COUNT
    for fmt in ("mxnet", "onnx"):
        meta = json.loads((built.folder / fmt / "metadata.json").read_text())
        v = meta["verification"]
        assert v["num_inputs"] == VERIFY_COUNT and 0 <= v["max_abs_diff"] <= 5e-5
        assert v["accuracy"] > 0.98
        for f in meta["files"]:
            assert _sha((built.folder / fmt / f["name"]).read_bytes()) == f["sha256"]


def test_safetensors_holds_the_same_arrays_under_the_same_names(built, card):
    from safetensors.numpy import load_file

    from capszoo._safetensors import safetensors_metadata
    from capszoo import read_params

    params = read_params(built.folder / card.weights.filename)
    mine = read_params(built.folder / SAFETENSORS_NAME)     # capszoo's own reader, by suffix
    theirs = load_file(str(built.folder / SAFETENSORS_NAME))  # the safetensors package
    assert sorted(params) == sorted(mine) == sorted(theirs)
    assert len(params) == 11 and "PrimaryPredVects.weight" in params
    for k, a in params.items():
        assert mine[k].dtype == theirs[k].dtype == np.float32 and mine[k].shape == a.shape
        assert mine[k].tobytes() == a.tobytes() == theirs[k].tobytes()
    meta = safetensors_metadata(built.folder / SAFETENSORS_NAME)
    assert meta["params_sha256"] == card.weights.sha256 and meta["model"] == NAME


def test_params_and_safetensors_give_identical_outputs(built, card, mnist_dir):
    x = digits(mnist_dir)
    a = outputs_of(str(built.folder / card.weights.filename), x)
    b = outputs_of(str(built.folder / SAFETENSORS_NAME), x)
    assert len(a) == 3 and a[0].shape == (len(x), 10)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    from capszoo.data import load_mnist

    assert (a[0].argmax(axis=1) == load_mnist("test", data_dir=mnist_dir)[1][:len(x)]).mean() > 0.95


def test_readme_is_a_model_card_the_hub_client_parses(built, card):
    from huggingface_hub import ModelCard

    text = (built.folder / "README.md").read_text(encoding="utf-8")
    mc = ModelCard(text)
    assert mc.data.license == hf_license(card.license) == "apache-2.0"
    assert mc.data.library_name == "capszoo"
    assert mc.data.pipeline_tag == "image-classification" and mc.data.datasets == ["mnist"]
    assert {"capszoo", "mxnet", "onnx", "mnist"} <= set(mc.data.tags)
    (result,) = mc.data.eval_results
    assert result.metric_type == "accuracy" and result.dataset_split == "test"
    assert result.metric_value == card.metrics["test_accuracy"] == 0.9961
    body = mc.text
    for heading in ("## Usage", "### Python (capszoo)", "### Command line", "### Plain MXNet",
                    "### onnxruntime", "## Training", "## Evaluation", "## Limitations", "## Citation"):
        assert heading in body, heading
    assert f'capszoo.load("{NAME}")' in body and f"capszoo classify {NAME}" in body
    assert f'capszoo.load("hf-hub:{card.weights.hf_repo_id}@{card.weights.hf_revision}")' in body
    assert "mxnet/capsnet-mnist-symbol.json" in body and "onnx/capsnet-mnist.onnx" in body
    assert card.training["recipe"] in body and card.training["selection"] in body
    assert "99.61 %" in body and "(39 errors in 10,000)" in body
    assert "![training](figures/training.png)" in body


def test_config_describes_the_net(built, card):
    cfg = json.loads((built.folder / "config.json").read_text())
    assert cfg["library_name"] == "capszoo" and cfg["model"] == NAME
    assert cfg["architecture"]["subnets"] == list(card.subnets)
    assert cfg["architecture"]["num_params"] == card.num_params == 8_141_840
    assert cfg["input"] == {"name": "data", "shape": ["N", 1, 28, 28], "dtype": "float32", "range": [0.0, 1.0]}
    assert cfg["classes"] == [str(c) for c in range(10)]
    assert [(o["name"], o["shape"]) for o in cfg["outputs"]] == [
        ("probabilities", ["N", 10]), ("capsule", ["N", 16]), ("reconstruction", ["N", 1, 28, 28])]
    assert cfg["weights"]["sha256"] == card.weights.sha256 and cfg["weights"]["safetensors"] == SAFETENSORS_NAME
    assert "centre of mass" in cfg["preprocessing"]["text"]


def test_an_earlier_build_is_reused_only_when_intact(built, tmp_path):
    record = _publish._reusable(built.folder, _publish._build_key(capszoo.get_card(NAME), VERIFY_COUNT))
    assert record is not None and record["files"] == _publish._listing(built.folder)
    assert _publish._reusable(built.folder, _publish._build_key(capszoo.get_card(NAME), VERIFY_COUNT + 1)) is None
    copy = tmp_path / "copy"
    shutil.copytree(built.folder, copy)
    with open(copy / "config.json", "a") as fh:
        fh.write(" ")
    assert _publish._reusable(copy, _publish._build_key(capszoo.get_card(NAME), VERIFY_COUNT)) is None


def test_out_dir_with_other_files_is_refused(tmp_path, mnist_dir):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PublishError, match="not empty") as info:
        push_to_hub(NAME, repo_id="me/x", dry_run=True, out_dir=tmp_path, data_dir=mnist_dir)
    assert "-o" in str(info.value)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# Publishing, then loading by name from a fresh cache
# ---------------------------------------------------------------------------------------------

def test_push_then_a_fresh_cache_loads_it_by_name(built, card, hub, manifests, mnist_dir, tmp_path, monkeypatch):
    repo, tag = card.weights.hf_repo_id, card.weights.hf_revision
    res = push(built, card, mnist_dir)
    assert res.tagged and res.uploaded and not res.built and res.revision == tag
    assert hub.tags(repo) == {tag: res.commit}
    assert published_files(hub, repo, tag) == local_files(built.folder)
    assert BUILD_RECORD not in hub.files(repo, tag)
    # the manifest (a temporary copy) pins what was uploaded
    m = json.loads((manifests / f"{NAME}.json").read_text())
    assert (m["hf_repo_id"], m["hf_revision"], m["sha256"]) == (repo, tag, card.weights.sha256)
    assert m["hub"]["commit"] == res.commit and m["hub"]["repo_id"] == repo and m["hub"]["revision"] == tag
    assert {p: d["sha256"] for p, d in m["hub"]["files"].items()} == local_files(built.folder)
    assert res.manifest == str(manifests / f"{NAME}.json")
    # a user with a fresh cache and no bundled copy gets the weights from the Hub, by name
    monkeypatch.setenv("HF_HOME", str(tmp_path / "fresh-hf"))
    monkeypatch.delenv("HF_TOKEN")
    empty = tmp_path / "no-bundled"
    empty.mkdir()
    monkeypatch.setattr(_hub, "bundled_dir", lambda: empty)
    path = _hub.resolve_weights(card)
    assert pathlib.Path(path).resolve().is_relative_to((tmp_path / "fresh-hf").resolve())
    assert _sha(pathlib.Path(path).read_bytes()) == card.weights.sha256
    assert hub.count("GET", "/cdn/") == 1
    x = digits(mnist_dir)
    downloaded = [np.asarray(o) for o in capszoo.load(NAME, backend="mxnet").run(x) if o is not None]
    local = outputs_of(str(built.folder / card.weights.filename), x)
    assert all(np.array_equal(a, b) for a, b in zip(downloaded, local)) and len(downloaded) == 3


def test_a_revision_holding_only_safetensors_is_loaded_by_name(built, card, hub, manifests, mnist_dir, tmp_path,
                                                               monkeypatch):
    push(built, card, mnist_dir)
    hub.hidden = {card.weights.filename}  # the revision seems to hold model.safetensors only
    monkeypatch.setenv("HF_HOME", str(tmp_path / "fresh-hf"))
    empty = tmp_path / "no-bundled"
    empty.mkdir()
    monkeypatch.setattr(_hub, "bundled_dir", lambda: empty)
    path = _hub.resolve_weights(card)
    assert pathlib.Path(path).name == SAFETENSORS_NAME
    assert _sha(pathlib.Path(path).read_bytes()) == _sha((built.folder / SAFETENSORS_NAME).read_bytes())
    x = digits(mnist_dir, 16)
    got = [np.asarray(o) for o in capszoo.load(NAME, backend="mxnet").run(x) if o is not None]
    want = outputs_of(str(built.folder / card.weights.filename), x)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    # offline now: the cached safetensors copy is found without the Hub, checked against the record
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _hub.resolve_weights(card) == path and hub.requests == []


def test_pushing_again_changes_nothing(built, card, hub, mnist_dir):
    first = push(built, card, mnist_dir)
    hub.requests.clear()
    again = push(built, card, mnist_dir)
    assert again.commit == first.commit and not again.tagged and not again.uploaded
    assert hub.count("PUT") == 0 and hub.count("POST", "/commit/") == 0


def test_private_repository_and_another_tag(built, card, hub, mnist_dir, manifests):
    res = push(built, card, mnist_dir, repo_id="someone/capsnet-private", revision="v9-test", private=True)
    assert hub.repos["someone/capsnet-private"]["private"] is True
    assert hub.tags("someone/capsnet-private") == {"v9-test": res.commit}
    m = json.loads((manifests / f"{NAME}.json").read_text())
    assert (m["hf_repo_id"], m["hf_revision"], m["hub"]["private"]) == ("someone/capsnet-private", "v9-test", True)


def test_cli_push_and_dry_run(built, card, hub, mnist_dir, manifests):
    from click.testing import CliRunner

    from capszoo.cli import main

    common = ["-o", str(built.folder), "--data-dir", str(mnist_dir), "--verify-count", str(VERIFY_COUNT)]
    r = CliRunner().invoke(main, ["push", NAME, "--repo-id", "me/cli-test", "--dry-run", *common])
    assert r.exit_code == 0, r.output
    assert "dry run" in r.output and SAFETENSORS_NAME in r.output and "me/cli-test" not in hub.repos
    r = CliRunner().invoke(main, ["push", NAME, "--repo-id", "me/cli-test", "--revision", "v1", *common])
    assert r.exit_code == 0, r.output
    assert "published me/cli-test@v1" in r.output and hub.tags("me/cli-test")
    r = CliRunner().invoke(main, ["push", NAME, "--repo-id", "not-a-repo-id", *common])
    assert r.exit_code == 1 and "Error: repository id 'not-a-repo-id' is not 'owner/name'" in r.output


# ---------------------------------------------------------------------------------------------
# Bad input and Hub failures: clear errors, nothing tagged, a re-run completes
# ---------------------------------------------------------------------------------------------

def test_unknown_entry(hub):
    with pytest.raises(ModelNotFoundError, match="capszoo list"):
        push_to_hub("no-such-model", repo_id="me/x")
    assert hub.requests == []


def test_entry_without_weights(hub, card, monkeypatch):
    import dataclasses

    from capszoo import _registry

    bare = dataclasses.replace(card, name="capsnet-untrained", aliases=(), weights=None, recipe="capsnet-mnist")
    monkeypatch.setitem(_registry._REGISTRY, "capsnet-untrained", bare)
    with pytest.raises(PublishError) as info:
        push_to_hub("capsnet-untrained", repo_id="me/x")
    assert "no published weights" in str(info.value) and "capszoo train capsnet-mnist" in str(info.value)
    assert hub.requests == []


def test_no_token(hub, built, card, mnist_dir, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    with pytest.raises(PublishError) as info:
        push(built, card, mnist_dir)
    msg = str(info.value)
    assert "no Hugging Face token" in msg and "HF_TOKEN" in msg and "hf auth login" in msg and "--dry-run" in msg
    assert hub.requests == []
    # the login's token file, where HF_HOME says now, is used
    (tmp_path / "no-login").mkdir()
    (tmp_path / "no-login" / "token").write_text(TOKEN)
    assert push(built, card, mnist_dir).tagged


@pytest.mark.parametrize("repo_id", ["capsnet-mnist", "a/b/c", "/capsnet", "me/", "-me/x", "me/x-", "me--x/y",
                                     "me/../x", "me/x y", "", None, 7])
def test_repository_id_must_be_owner_slash_name(hub, repo_id):
    with pytest.raises(InvalidInputError) as info:
        push_to_hub(NAME, repo_id=repo_id)
    assert "owner/name" in str(info.value) and "--repo-id" in str(info.value)
    assert isinstance(info.value, CapszooError) and hub.requests == []


@pytest.mark.parametrize("tag", ["main", "a" * 40 + "", "0" * 40, "v1..2", "-v1", "v 1", "v1/x", ""])
def test_revision_must_name_a_tag(hub, tag):
    with pytest.raises(InvalidInputError, match="cannot name a tag"):
        push_to_hub(NAME, repo_id="me/x", revision=tag)
    assert hub.requests == []


@pytest.mark.parametrize("status,endpoint,says", [
    (401, "create_repo", ["401 Unauthorized", "hf auth login", "HF_TOKEN"]),
    (403, "create_repo", ["403 Forbidden", "may not write to someone", "write access"]),
    (404, "preupload", ["someone/capsnet was not found (404", "--repo-id"]),
    (409, "commit", ["409 Conflict", "Run the same command again"]),
    (500, "commit", ["HTTP 500", "Run the same command again"]),
    (500, "tag", ["creating the tag", "HTTP 500"]),
])
def test_hub_failures_are_clear_and_a_rerun_completes(built, card, hub, mnist_dir, manifests, status, endpoint,
                                                      says):
    manifest_before = (manifests / f"{NAME}.json").read_bytes()
    hub.fail = {endpoint: status}
    with pytest.raises(PublishError) as info:
        push(built, card, mnist_dir, repo_id="someone/capsnet", revision="v1")
    msg = str(info.value)
    assert msg.startswith(f"cannot publish {NAME} to someone/capsnet: ")
    for s in says:
        assert s in msg, msg
    assert "Nothing was tagged" in msg
    assert hub.tags("someone/capsnet") == {}
    assert (manifests / f"{NAME}.json").read_bytes() == manifest_before
    hub.fail = {}
    res = push(built, card, mnist_dir, repo_id="someone/capsnet", revision="v1")
    assert hub.tags("someone/capsnet") == {"v1": res.commit}
    assert published_files(hub, "someone/capsnet", "v1") == local_files(built.folder)
    assert json.loads((manifests / f"{NAME}.json").read_text())["hub"]["commit"] == res.commit


def test_upload_cut_off_midway_then_rerun_sends_only_the_rest(built, card, hub, mnist_dir, manifests):
    cut = _sha((built.folder / SAFETENSORS_NAME).read_bytes())
    hub.cut_upload = {cut}
    with pytest.raises(PublishError) as info:
        push(built, card, mnist_dir, repo_id="someone/capsnet", revision="v1")
    msg = str(info.value)
    assert "uploading the files failed" in msg and "connection to the Hub broke" in msg
    assert "Nothing was tagged" in msg and "not sent again" in msg
    assert hub.tags("someone/capsnet") == {}
    assert set(hub.files("someone/capsnet", "main")) == {".gitattributes"}  # no commit was made
    assert cut not in hub.blobs
    assert _sha((built.folder / card.weights.filename).read_bytes()) in hub.blobs  # the others arrived
    hub.cut_upload = set()
    hub.requests.clear()
    res = push(built, card, mnist_dir, repo_id="someone/capsnet", revision="v1")
    assert hub.count("PUT", "/lfs-upload/") == 1 and hub.count("PUT", cut) == 1
    assert published_files(hub, "someone/capsnet", "v1") == local_files(built.folder)
    assert res.tagged


def test_tag_that_exists_with_other_content_is_refused(built, card, hub, mnist_dir, manifests):
    hub.add_file("someone/capsnet", "README.md", b"an older model\n", revision="main")
    old = hub.tag("someone/capsnet", "v1")
    manifest_before = (manifests / f"{NAME}.json").read_bytes()
    with pytest.raises(PublishError) as info:
        push(built, card, mnist_dir, repo_id="someone/capsnet", revision="v1")
    msg = str(info.value)
    assert "the tag v1 already exists and holds other content" in msg and "never moved" in msg
    assert "--revision" in msg and "hf repos tag delete someone/capsnet v1" in msg
    assert hub.tags("someone/capsnet") == {"v1": old} and hub.count("PUT") == 0
    assert (manifests / f"{NAME}.json").read_bytes() == manifest_before
    res = push(built, card, mnist_dir, repo_id="someone/capsnet", revision="v2")
    assert hub.tags("someone/capsnet") == {"v1": old, "v2": res.commit}


def test_offline_mode_is_refused_before_anything(hub, built, card, mnist_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PublishError, match="offline mode is on"):
        push(built, card, mnist_dir)
    assert hub.requests == []


# ---------------------------------------------------------------------------------------------
# Reading safetensors: the same strict checks as .params
# ---------------------------------------------------------------------------------------------

def _st(header: dict, data: bytes, *, pad=b"") -> bytes:
    raw = json.dumps(header).encode() + pad
    return struct.pack("<Q", len(raw)) + raw + data


_ONE = np.arange(6, dtype=np.float32).tobytes()


@pytest.mark.parametrize("blob,says", [
    (b"", "too short"),
    (struct.pack("<Q", 10 ** 9) + b"{}", "header declares"),
    (struct.pack("<Q", 4) + b"[1] ", "not a JSON object"),
    (struct.pack("<Q", 6) + b"{\"a\":}", "not valid UTF-8 JSON"),
    (struct.pack("<Q", 17) + b'{"a": 1, "a": 2} ', "appears twice"),
    (_st({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, _ONE + b"xx"), "unexpected bytes"),
    (_st({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, _ONE[:20]), "outside"),
    (_st({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 24]}}, _ONE), "needs 16 bytes"),
    (_st({"w": {"dtype": "BF16", "shape": [12], "data_offsets": [0, 24]}}, _ONE), "never use"),
    (_st({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 24]}}, _ONE), "non-negative"),
    (_st({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24], "x": 1}}, _ONE), "exactly the fields"),
    (_st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, _ONE[:20]), "unused bytes"),
    (_st({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
          "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]}}, _ONE[:20]), "overlaps"),
    (_st({"__metadata__": {"a": 1}, "w": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}, _ONE),
     "__metadata__"),
    (_st({"w": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 24]}}, _ONE), "larger than"),
])
def test_bad_safetensors_files_are_clear_errors(tmp_path, blob, says):
    from capszoo import read_params

    p = tmp_path / "bad.safetensors"
    p.write_bytes(blob)
    with pytest.raises(WeightsFormatError) as info:
        read_params(p)
    msg = str(info.value)
    assert says in msg and str(p) in msg and "not a safetensors file of capszoo weights" in msg


def test_good_small_safetensors_with_padding_reads(tmp_path):
    from capszoo import read_params

    p = tmp_path / "ok.SafeTensors"
    p.write_bytes(_st({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, _ONE, pad=b"   "))
    got = read_params(p)
    assert list(got) == ["w"] and got["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_loading_unfit_safetensors_names_the_problem(built, card, tmp_path):
    from capszoo._safetensors import save_safetensors
    from capszoo import read_params

    arrays = dict(read_params(built.folder / SAFETENSORS_NAME))
    nan = dict(arrays, **{"Reconstruct.0.bias": np.full_like(arrays["Reconstruct.0.bias"], np.nan)})
    save_safetensors(nan, tmp_path / "nan.safetensors")
    with pytest.raises(WeightsFormatError, match=r"Reconstruct\.0\.bias holds \d+ NaN/inf values"):
        capszoo.load(NAME, weights=str(tmp_path / "nan.safetensors"), backend="mxnet")
    renamed = {("X" + k if k == "ReLUConv1.bias" else k): v for k, v in arrays.items()}
    save_safetensors(renamed, tmp_path / "renamed.safetensors")
    with pytest.raises(WeightsFormatError, match="missing ReLUConv1.bias; unexpected XReLUConv1.bias"):
        capszoo.load(NAME, weights=str(tmp_path / "renamed.safetensors"), backend="mxnet")
    half = dict(arrays, **{"PrimaryPredVects.weight": arrays["PrimaryPredVects.weight"].astype(np.float16)})
    save_safetensors(half, tmp_path / "half.safetensors")
    with pytest.raises(WeightsFormatError, match="dtype float16, expected float32"):
        capszoo.load(NAME, weights=str(tmp_path / "half.safetensors"), backend="mxnet")


def test_import_capszoo_stays_light():
    import subprocess
    import sys

    code = ("import sys, capszoo; capszoo.push_to_hub; "
            "print(sorted(m for m in ('mxnet', 'huggingface_hub', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.stdout.strip() == "[]"


OTHER_PUBLISHED = [n for n in capszoo.list_models() if n != NAME and capszoo.get_card(n).weights is not None]


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHER_PUBLISHED)
def test_every_published_entry_round_trips_through_the_hub(name, hub, manifests, mnist_dir, tmp_path, monkeypatch):
    """Each entry with weights: pushed to the (local) Hub, then loaded by name from a fresh cache with no
    checkout copy, giving the outputs of the file pushed."""
    card = capszoo.get_card(name)
    repo, tag = card.weights.hf_repo_id, card.weights.hf_revision
    res = push_to_hub(name, repo_id=repo, out_dir=tmp_path / "build", data_dir=mnist_dir, verify_count=VERIFY_COUNT)
    assert res.tagged and res.revision == tag and hub.tags(repo) == {tag: res.commit}
    assert published_files(hub, repo, tag) == local_files(tmp_path / "build")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "fresh-hf"))
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(_hub, "checkout_weights_dir", lambda: None)
    path = _hub.resolve_weights(card)
    assert pathlib.Path(path).resolve().is_relative_to((tmp_path / "fresh-hf").resolve())
    assert _sha(pathlib.Path(path).read_bytes()) == card.weights.sha256
    x = digits(mnist_dir)
    by_name = capszoo.load(name, backend="mxnet").run(x)
    pushed = capszoo.load(name, weights=str(tmp_path / "build" / card.weights.filename), backend="mxnet").run(x)
    assert len(by_name) == len(card.outputs)
    assert all(np.array_equal(a, b) for a, b in zip(by_name, pushed))


# ---------------------------------------------------------------------------------------------
# A repository as a model name: hf-hub:owner/name[@revision]
# ---------------------------------------------------------------------------------------------

def _become_fresh_user(tmp_path, monkeypatch):
    """From here on: a user with an empty Hugging Face cache (returned), no token, no bundled copy and no
    checkout copy."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "fresh-hf"))
    monkeypatch.delenv("HF_TOKEN")
    empty = tmp_path / "no-bundled"
    empty.mkdir()
    monkeypatch.setattr(_hub, "bundled_dir", lambda: empty)
    monkeypatch.setattr(_hub, "checkout_weights_dir", lambda: None)
    return tmp_path / "fresh-hf"


@pytest.fixture
def fresh_user(hub, tmp_path, monkeypatch):
    return _become_fresh_user(tmp_path, monkeypatch)


def test_a_pushed_repository_loads_by_its_hub_name(built, card, hub, manifests, mnist_dir, tmp_path, monkeypatch):
    res = push(built, card, mnist_dir, repo_id="someone/my-capsnet", revision="v1")
    fresh_user = _become_fresh_user(tmp_path, monkeypatch)
    x = digits(mnist_dir, 16)
    want = outputs_of(str(built.folder / card.weights.filename), x)
    for name in ("hf-hub:someone/my-capsnet@v1", "hf-hub:someone/my-capsnet", f"HF-HUB:someone/my-capsnet@{res.commit}"):
        model = capszoo.load(name, backend="mxnet")
        assert model.card.name == NAME and model.card.weights.hf_revision == res.commit
        assert model.card.metrics["test_accuracy"] == card.metrics["test_accuracy"]
        assert model.card.training == card.training     # the entry's own weights: its training record
        assert pathlib.Path(model.weights_path).resolve().is_relative_to(fresh_user.resolve())
        got = [np.asarray(o) for o in model.run(x) if o is not None]
        assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert hub.count("GET", "/cdn/") == 1 + 1      # the weights once, the config once (one commit)
    # the default engine, and offline from the cache now
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    model = capszoo.load("hf-hub:someone/my-capsnet@v1")
    assert model(x[:4], prop="Decision") == capszoo.load(NAME, weights=str(built.folder / card.weights.filename),
                                                          backend="mxnet")(x[:4], prop="Decision")
    assert hub.requests == []
    from click.testing import CliRunner
    from capszoo.cli import main

    seven = str(pathlib.Path(__file__).resolve().parent.parent / "examples" / "digits" / "seven-mnist.png")
    r = CliRunner().invoke(main, ["classify", "hf-hub:someone/my-capsnet@v1", seven])
    assert r.exit_code == 0 and r.output.split()[:2] == [seven, "7"], r.output
    # online again: a command that checks the name first reads the tag's config.json once, then loads that commit
    monkeypatch.delenv("HF_HUB_OFFLINE")
    r = CliRunner().invoke(main, ["reconstruct", "hf-hub:someone/my-capsnet@v1", seven, "-o", str(tmp_path / "r.png")])
    assert r.exit_code == 0 and r.output.startswith(f"wrote {tmp_path / 'r.png'}"), r.output
    assert hub.count(contains="config.json") == 1 and hub.count(contains=card.weights.filename) == 0


def _repo_with(hub, repo_id, config=None, weights=None):
    if config is not None:
        hub.add_file(repo_id, "config.json", json.dumps(config).encode())
    if weights is not None:
        hub.add_file(repo_id, *weights)


@pytest.mark.parametrize("name,error,says", [
    ("hf-hub:", InvalidInputError, "is not a Hub model name: use 'hf-hub:owner/name'"),
    ("hf-hub:capsnet-mnist", InvalidInputError, "is not a Hub model name"),
    ("hf-hub:a/b/c", InvalidInputError, "is not a Hub model name"),
    ("hf-hub:me/x@", InvalidInputError, "is not a Hub model name"),
    ("hf-hub:me/x@../main", InvalidInputError, "is not a Hub model name"),
    ("hf-hub:someone/missing", capszoo.errors.WeightsNotAvailableError,
     "cannot read config.json of hf-hub:someone/missing@main: 404 Repository Not Found; check the repository id"),
    ("hf-hub:someone/not-capszoo", InvalidInputError,
     "hf-hub:someone/not-capszoo is not a capszoo repository (its config.json says library_name 'timm')"),
    ("hf-hub:someone/future", ModelNotFoundError,
     "holds capszoo model 'capsnet-cifar10', which this capszoo does not know: upgrade capszoo"),
    ("hf-hub:someone/no-weights", InvalidInputError, "has no usable \"weights\" record"),
    ("hf-hub:someone/broken-json", InvalidInputError, "config.json of hf-hub:someone/broken-json is not a capszoo config"),
])
def test_bad_hub_names_and_repositories(name, error, says, hub, fresh_user):
    _repo_with(hub, "someone/not-capszoo", {"library_name": "timm", "architecture": "resnet50"})
    _repo_with(hub, "someone/future", {"library_name": "capszoo", "model": "capsnet-cifar10"})
    _repo_with(hub, "someone/no-weights", {"library_name": "capszoo", "model": NAME, "weights": {"params": "../x"}})
    hub.add_file("someone/broken-json", "config.json", b"{not json")
    with pytest.raises(error) as e:
        capszoo.load(name)
    assert says in str(e.value), str(e.value)


def test_hub_weights_that_differ_from_their_config_are_refused(built, card, hub, fresh_user):
    config = json.loads((built.folder / "config.json").read_text())
    data = bytearray((built.folder / card.weights.filename).read_bytes())
    data[len(data) // 2] ^= 0xFF
    _repo_with(hub, "someone/tampered", config, (card.weights.filename, bytes(data)))
    with pytest.raises(capszoo.errors.WeightsIntegrityError, match=f"expected {card.weights.sha256}"):
        capszoo.load("hf-hub:someone/tampered")
    # other weights (a config naming another file and sha256): the card keeps no training record of the entry's
    other = dict(config, weights=dict(config["weights"], params="mine.params", sha256="ab" * 32),
                 metrics={"test_accuracy": 0.5, "note": "text is dropped"})
    _repo_with(hub, "someone/other-weights", other)
    from capszoo._hubrepo import hub_card
    theirs = hub_card("hf-hub:someone/other-weights")
    assert theirs.name == NAME and theirs.training == {} and theirs.metrics == {"test_accuracy": 0.5}
    assert (theirs.weights.filename, theirs.weights.sha256, theirs.weights.hf_repo_id) == (
        "mine.params", "ab" * 32, "someone/other-weights")
    assert not list(fresh_user.rglob(card.weights.filename))   # the bad copy is not kept


def test_hub_names_offline_without_a_cached_copy(hub, fresh_user, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(capszoo.errors.WeightsNotAvailableError, match="offline mode is on .* unset HF_HUB_OFFLINE"):
        capszoo.load("hf-hub:someone/my-capsnet@v1")
    assert hub.requests == []
