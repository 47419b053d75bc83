"""capszoo._hub.resolve_weights against the real huggingface_hub client and a fake Hub (tests/fake_hub.py).

No network: HF_ENDPOINT points at a FakeHub on 127.0.0.1. conftest.py gives every test its own
HF_HOME / CAPSZOO_HOME and turns HF_HUB_OFFLINE on; tests of the online path turn it off (after
huggingface_hub was imported, which is the point: capszoo must honour the environment at call time).
"""
from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import pathlib
import time

import pytest

from capszoo import _hub
from capszoo import resolve_weights
from capszoo import ModelCard, WeightsSource
from capszoo.errors import (CacheError, CapszooError, InvalidInputError, WeightsIntegrityError,
                            WeightsNotAvailableError)

from fake_hub import FakeHub, _card, closed_port_url, resolve_in_child

REPO = "capszoo/test-model"
REV = "v1.0"
FILE = "test-model.params"
DATA = bytes(range(256)) * 64 + b"capszoo test weights"  # any bytes: the sha256 is what is checked
SHA = hashlib.sha256(DATA).hexdigest()


def make_card(*, data=DATA, filename=FILE, repo=REPO, revision=REV, bundled=False, sha=None, name="test-model"):
    return _card(ModelCard, WeightsSource, name=name, filename=filename,
                 sha256=sha or hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                 repo_id=repo, revision=revision, bundled=bundled)


def file_requests(hub):
    """Requests for the file itself (metadata or bytes)."""
    return hub.count(contains="/resolve/") + hub.count(contains="/cdn/")


def hf_cache():
    return pathlib.Path(os.environ["HF_HOME"]) / "hub"


def storage(cache=None):
    return pathlib.Path(cache or hf_cache()) / ("models--" + REPO.replace("/", "--"))


def cached_files(cache=None):
    """Every file (or link) under the repo's cache folder, relative names."""
    root = storage(cache)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


@pytest.fixture
def hub(monkeypatch):
    """A running fake Hub serving DATA as FILE of REPO at REV; the environment points at it, online."""
    h = FakeHub()
    h.add_file(REPO, FILE, DATA, revision=REV)
    h.start()
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
                "HF_TOKEN", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """An empty stand-in for capszoo/pretrained."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "pretrained"
    folder.mkdir()
    monkeypatch.setattr(_hub, "bundled_dir", lambda: folder)
    return folder


# ---------------------------------------------------------------------------------------------
# The Hub path
# ---------------------------------------------------------------------------------------------

def test_happy_path_downloads_into_hf_home_and_verifies(hub):
    path = resolve_weights(make_card())
    assert pathlib.Path(path).read_bytes() == DATA
    # HF_HOME was set by conftest after huggingface_hub was imported: honoured at call time.
    assert pathlib.Path(path).resolve().is_relative_to(hf_cache().resolve())
    assert hub.count("GET", "/cdn/") == 1
    assert not [f for f in cached_files() if f.endswith(".incomplete")]


def test_non_lfs_file_served_directly(hub):
    hub.lfs = False
    path = resolve_weights(make_card())
    assert pathlib.Path(path).read_bytes() == DATA
    assert hub.count("GET", "/resolve/") == 1 and hub.count(contains="/cdn/") == 0


def test_second_call_served_from_cache_without_requests(hub, monkeypatch):
    first = resolve_weights(make_card())
    hub.requests.clear()
    second = resolve_weights(make_card())
    assert second == first
    assert hub.requests == []
    # ... even with the Hub gone
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    assert resolve_weights(make_card()) == first


def test_cache_dir_argument_is_used(hub, tmp_path):
    path = resolve_weights(make_card(), cache_dir=tmp_path / "mycache")
    assert pathlib.Path(path).resolve().is_relative_to((tmp_path / "mycache").resolve())
    assert not hf_cache().exists()


def test_flipped_byte_is_caught_and_removed_then_fixed_server_succeeds(hub):
    hub.corrupt = "flip"
    with pytest.raises(WeightsIntegrityError) as info:
        resolve_weights(make_card())
    msg = str(info.value)
    bad = bytearray(DATA)
    bad[len(bad) // 2] ^= 0xFF
    assert SHA in msg and hashlib.sha256(bytes(bad)).hexdigest() in msg
    assert REPO in msg and REV in msg and FILE in msg and "removed" in msg
    # nothing with the corrupt bytes is left: no snapshot entry, no blob
    left = cached_files()
    assert not [f for f in left if f.startswith(("snapshots", "blobs"))], left
    hub.corrupt = None
    path = resolve_weights(make_card())
    assert pathlib.Path(path).read_bytes() == DATA


def test_truncated_body_is_an_error_and_nothing_is_kept(hub):
    hub.corrupt = "truncate"
    with pytest.raises(WeightsNotAvailableError) as info:
        resolve_weights(make_card())
    assert "incomplete" in str(info.value) and str(len(DATA)) in str(info.value)
    assert not [f for f in cached_files() if f.startswith(("snapshots", "blobs"))]
    hub.corrupt = None
    assert pathlib.Path(resolve_weights(make_card())).read_bytes() == DATA


def test_missing_file_lists_what_was_tried_in_order(hub):
    with pytest.raises(WeightsNotAvailableError) as info:
        resolve_weights(make_card(filename="other.params"))
    msg = str(info.value)
    parts = ["cache ", ": not found", "bundled: not shipped", f"hub {REPO}@{REV}: 404 Entry Not Found"]
    positions = [msg.index(p) for p in parts]
    assert positions == sorted(positions), msg
    assert "path=" in msg


def test_repository_not_found(hub):
    with pytest.raises(WeightsNotAvailableError, match="404 Repository Not Found"):
        resolve_weights(make_card(repo="capszoo/no-such-model"))


def test_revision_not_found(hub):
    with pytest.raises(WeightsNotAvailableError, match=r"capszoo/test-model@v9\.9: 404 Revision Not Found"):
        resolve_weights(make_card(revision="v9.9"))


def test_server_error_fails_fast(hub):
    hub.status = 500
    t0 = time.monotonic()
    with pytest.raises(WeightsNotAvailableError, match="HTTP 500 Internal Server Error"):
        resolve_weights(make_card())
    assert time.monotonic() - t0 < 5  # no retry storm
    assert not [f for f in cached_files() if f.startswith(("snapshots", "blobs"))]


def test_missing_hub_headers_are_reported(hub):
    hub.omit_headers = {"X-Repo-Commit"}
    with pytest.raises(WeightsNotAvailableError, match="X-Repo-Commit"):
        resolve_weights(make_card())


def test_connection_refused(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    t0 = time.monotonic()
    with pytest.raises(WeightsNotAvailableError, match="cannot connect"):
        resolve_weights(make_card())
    assert time.monotonic() - t0 < 5


def test_stalled_download_is_bounded_by_timeout(hub):
    hub.stall, hub.stall_on, hub.stall_phase = 8, {"GET"}, "body"
    t0 = time.monotonic()
    with pytest.raises(WeightsNotAvailableError, match="stalled"):
        resolve_weights(make_card(), timeout=1)
    assert time.monotonic() - t0 < 7
    assert not (storage() / "snapshots").exists() or not any((storage() / "snapshots").rglob(FILE))


def test_stalled_metadata_request_bounded_by_env_timeout(hub, monkeypatch):
    hub.stall, hub.stall_on, hub.stall_phase = 8, {"HEAD"}, "before"
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "1")  # set after import: read at call time
    t0 = time.monotonic()
    with pytest.raises(WeightsNotAvailableError, match="timed out"):
        resolve_weights(make_card())
    assert time.monotonic() - t0 < 5


def test_force_download_fetches_again(hub):
    resolve_weights(make_card())
    assert hub.count("GET", "/cdn/") == 1
    path = resolve_weights(make_card(), force_download=True)
    assert hub.count("GET", "/cdn/") == 2
    assert pathlib.Path(path).read_bytes() == DATA


def test_endpoint_changed_between_calls_is_followed(hub, monkeypatch, tmp_path):
    resolve_weights(make_card())
    with FakeHub() as other:
        other.add_file(REPO, FILE, DATA, revision=REV)
        monkeypatch.setenv("HF_ENDPOINT", other.url + "/")
        path = resolve_weights(make_card(), cache_dir=tmp_path / "c2")
        assert pathlib.Path(path).read_bytes() == DATA
        assert other.count("GET", "/cdn/") == 1
    assert hub.count("GET", "/cdn/") == 1


# ---------------------------------------------------------------------------------------------
# The cache, offline mode
# ---------------------------------------------------------------------------------------------

def test_offline_with_empty_cache_says_offline_and_sends_nothing(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailableError) as info:
        resolve_weights(make_card())
    assert "offline" in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)
    assert hub.requests == []


def test_offline_with_populated_cache_works(hub, monkeypatch):
    online = resolve_weights(make_card())
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_weights(make_card()) == online
    assert hub.requests == []


def test_corrupted_cached_copy_is_removed_and_downloaded_again(hub):
    path = resolve_weights(make_card())
    blob = pathlib.Path(os.path.realpath(path))
    blob.write_bytes(b"\0" * len(DATA))  # same size, wrong content
    hub.requests.clear()
    again = resolve_weights(make_card())
    assert pathlib.Path(again).read_bytes() == DATA
    assert hub.count("GET", "/cdn/") == 1


def test_corrupted_cached_copy_offline_is_not_used(hub, monkeypatch):
    path = resolve_weights(make_card())
    pathlib.Path(os.path.realpath(path)).write_bytes(b"\0" * len(DATA))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailableError) as info:
        resolve_weights(make_card())
    assert "removed" in str(info.value) and "offline" in str(info.value)
    assert not os.path.lexists(path)


def test_poisoned_leftovers_are_never_the_result(hub):
    blobs = storage() / "blobs"
    blobs.mkdir(parents=True)
    poison = b"\xee" * len(DATA)
    (blobs / f"{SHA}.incomplete").write_bytes(poison)             # older huggingface_hub's name
    (blobs / f"{SHA}.deadbeef.incomplete").write_bytes(poison)    # huggingface_hub 1.x/2.x names
    (blobs / SHA).write_bytes(poison)                              # a "finished" blob with bad content
    path = resolve_weights(make_card())
    assert pathlib.Path(path).read_bytes() == DATA
    assert hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest() == SHA
    assert not (blobs / f"{SHA}.incomplete").exists()


def test_unwritable_cache_dir_is_a_cache_error(hub, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(CacheError) as info:
        resolve_weights(make_card(), cache_dir=blocker / "cache")
    msg = str(info.value)
    assert str(blocker / "cache") in msg and "HF_HOME" in msg and "cache_dir" in msg
    assert file_requests(hub) == 0


def test_unwritable_hf_home_is_a_cache_error(hub, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("HF_HOME", str(blocker / "hf"))
    with pytest.raises(CacheError, match="HF_HOME"):
        resolve_weights(make_card())


# ---------------------------------------------------------------------------------------------
# The bundled copy, the user's path, the card
# ---------------------------------------------------------------------------------------------

def test_bundled_copy_used_when_hub_unreachable(bundled, monkeypatch):
    (bundled / FILE).write_bytes(DATA)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    assert resolve_weights(make_card(bundled=True)) == str(bundled / FILE)


def test_bundled_copy_used_before_the_hub(bundled, hub):
    (bundled / FILE).write_bytes(DATA)
    assert resolve_weights(make_card(bundled=True)) == str(bundled / FILE)
    assert hub.requests == []


def test_bundled_copy_with_wrong_sha256_names_reinstall(bundled, hub):
    (bundled / FILE).write_bytes(DATA[:-1] + b"!")
    with pytest.raises(WeightsIntegrityError) as info:
        resolve_weights(make_card(bundled=True))
    assert "reinstall" in str(info.value).lower() and SHA in str(info.value)
    assert hub.requests == []


def test_bundled_but_missing_falls_back_to_the_hub(bundled, hub):
    path = resolve_weights(make_card(bundled=True))
    assert pathlib.Path(path).read_bytes() == DATA


def test_user_path_used_as_is(hub, tmp_path):
    mine = tmp_path / "finetuned.params"
    mine.write_bytes(b"my own weights")  # does not match the card: not checked
    assert resolve_weights(make_card(), path=str(mine)) == str(mine)
    assert resolve_weights(make_card(), path=mine) == str(mine)
    no_weights = dataclasses.replace(make_card(), weights=None)
    assert resolve_weights(no_weights, path=mine) == str(mine)
    assert hub.requests == []


def test_user_path_missing_or_folder(tmp_path):
    with pytest.raises(WeightsNotAvailableError, match="does not exist"):
        resolve_weights(make_card(), path=tmp_path / "nope.params")
    with pytest.raises(WeightsNotAvailableError, match="not a regular file"):
        resolve_weights(make_card(), path=tmp_path)


def test_card_without_weights():
    card = dataclasses.replace(make_card(), weights=None, recipe="my-recipe")
    with pytest.raises(WeightsNotAvailableError) as info:
        resolve_weights(card)
    assert "no pretrained weights are published" in str(info.value)
    assert "capszoo train my-recipe" in str(info.value)


@pytest.mark.parametrize("filename", [
    "../evil.params", "a/../../evil.params", "/etc/passwd", "a\\b.params", "..\\evil.params",
    "C:evil.params", "", "a//b.params", "./x.params",
])
def test_bad_filenames_rejected_before_any_request(hub, filename):
    with pytest.raises(InvalidInputError) as info:
        resolve_weights(make_card(filename=filename))
    assert isinstance(info.value, ValueError) and isinstance(info.value, CapszooError)
    assert hub.requests == []


@pytest.mark.parametrize("field,value", [
    ("repo", "../x"), ("repo", "a/b/c"), ("repo", "a--b/c"),
    ("revision", "../../etc"), ("revision", "/main"), ("revision", "a b"),
    ("sha", "not-a-sha"),
])
def test_bad_card_fields_rejected_before_any_request(hub, field, value):
    with pytest.raises(InvalidInputError):
        resolve_weights(make_card(**{field: value}))
    assert hub.requests == []


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "10", True])
def test_bad_timeout_rejected(hub, timeout):
    with pytest.raises(InvalidInputError):
        resolve_weights(make_card(), timeout=timeout)


def test_hub_settings_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    assert _hub.hub_cache_dir() == str(tmp_path / "h" / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert _hub.hub_cache_dir() == str(tmp_path / "c")
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert _hub.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not _hub.hub_offline()
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080/")
    assert _hub.hub_endpoint() == "http://mirror.example:8080"
    monkeypatch.setenv("HF_ENDPOINT", "ftp://nope")
    with pytest.raises(InvalidInputError, match="HF_ENDPOINT"):
        _hub.hub_endpoint()


# ---------------------------------------------------------------------------------------------
# Several processes, one cache
# ---------------------------------------------------------------------------------------------

def test_several_processes_download_into_one_cache(hub, tmp_path):
    hub.body_delay = 0.8  # keep the first download going while the others arrive
    cache = tmp_path / "shared-cache"
    fields = dict(name="test-model", filename=FILE, sha256=SHA, size_bytes=len(DATA), repo_id=REPO, revision=REV)
    # huggingface_hub is imported offline, with another endpoint and cache, and a long timeout ...
    import_env = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": closed_port_url(),
                  "HF_HOME": str(tmp_path / "import-time-home"), "HF_HUB_DOWNLOAD_TIMEOUT": "1000"}
    # ... and the call happens with these:
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_CACHE": str(cache), "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        results = pool.starmap_async(resolve_in_child, [(fields, import_env, env)] * 3).get(timeout=60)
    assert all("error" not in r for r in results), results
    assert all(r["import_offline"] and r["import_endpoint"] != hub.url for r in results)
    assert {r["sha256"] for r in results} == {SHA}
    assert len({r["path"] for r in results}) == 1
    assert pathlib.Path(results[0]["path"]).resolve().is_relative_to(cache.resolve())
    assert not any(r["mxnet"] for r in results), "capszoo._hub imported mxnet"
    assert 1 <= hub.count("GET", "/cdn/") <= 3
    assert not list(cache.rglob("*.incomplete"))
    assert not (tmp_path / "import-time-home").exists()


def test_import_time_hub_settings_do_not_stick(hub, monkeypatch, tmp_path):
    """As if huggingface_hub had been imported offline with another cache and timeouts."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "import-time-cache"))
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1000)
    path = resolve_weights(make_card())
    assert pathlib.Path(path).read_bytes() == DATA
    assert pathlib.Path(path).resolve().is_relative_to(hf_cache().resolve())
    assert not (tmp_path / "import-time-cache").exists()
    assert constants.HF_HUB_OFFLINE is False and constants.HF_HUB_DOWNLOAD_TIMEOUT == 10
