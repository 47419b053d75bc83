"""MNIST: the idx reader on the real files and on broken ones, and the downloader
against HTTP servers started here on 127.0.0.1 (no other network)."""
from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import http.server
import os
import shutil
import stat
import struct
import threading
import time

import numpy as np
import pytest

import capszoo._io
from capszoo.data import load_mnist, read_idx, read_images, read_labels
from capszoo.data._download import (DEFAULT_MIRRORS, MIRRORS_ENV, cache_dir, download_mnist)
from capszoo.data._idx import MAX_DECOMPRESSED_BYTES
from capszoo.data._mnist import MNIST_FILES
from capszoo.errors import (CacheError, CapszooError, DataFileNotFoundError, DataFormatError,
                            DownloadError, InvalidInputError)

TEST_FILES = [f for f in MNIST_FILES if f.split == "test"]
ALL_NAMES = sorted(f.name + ".gz" for f in MNIST_FILES)
TEST_NAMES = sorted(f.name + ".gz" for f in TEST_FILES)

#: How long a stalling test server waits before it answers (it is released when the test ends): far
#: beyond the client's 0.5 s timeout, so a timeout that does not work shows as a hang.
STALL_SECONDS = 300
#: A hang guard of a download that must fail fast (the client's timeout is 0.5 s; speed is not tested).
FAIL_FAST_GUARD_SECONDS = 60

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _md5_of_gz(path):
    with gzip.open(path, "rb") as fh:
        return hashlib.md5(fh.read()).hexdigest()


@pytest.fixture(scope="module")
def raw(mnist_dir):
    """Decompressed bytes of the two (small) test files."""
    return {f.kind: gzip.decompress((mnist_dir / (f.name + ".gz")).read_bytes()) for f in TEST_FILES}


# =========================================================================== reader, real files

@pytest.fixture(scope="module")
def train(mnist_dir):
    return load_mnist("train", data_dir=mnist_dir)


def test_train_split(train):
    images, labels = train
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == TRAIN_COUNTS
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert images.min() == 0 and images.max() == 255


def test_test_split(mnist_test):
    images, labels = mnist_test
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == TEST_COUNTS
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # The first test image (a 7) has ink in its middle rows and a blank border.
    assert images[0, 0].sum() == 0 and images[0, 7:20].sum() > 0


def test_raw_and_gz_read_the_same(mnist_dir, raw, tmp_path):
    p = tmp_path / "t10k-labels-idx1-ubyte"
    p.write_bytes(raw["labels"])
    np.testing.assert_array_equal(read_labels(p), read_labels(mnist_dir / "t10k-labels-idx1-ubyte.gz"))


@pytest.mark.parametrize("entry", MNIST_FILES, ids=lambda f: f.name)
def test_published_md5(mnist_dir, entry):
    assert _md5_of_gz(mnist_dir / (entry.name + ".gz")) == entry.md5
    listed = dict(reversed(line.split()) for line in
                  (mnist_dir / "MD5SUMS.uncompressed").read_text().splitlines() if line.strip())
    assert any(entry.md5 == v and entry.name in k for k, v in listed.items())


# =========================================================================== reader, broken files

def _labels(n, values=None):
    values = bytes(i % 10 for i in range(n)) if values is None else bytes(values)
    return struct.pack(">II", 2049, n) + values


def _gz(data):
    return gzip.compress(data, mtime=0)


def _bomb_above_default_cap():
    # Concatenated gzip members of 1 MiB of zeros: ~260 KB that inflates beyond 256 MiB.
    member = gzip.compress(b"\0" * (1 << 20), compresslevel=9, mtime=0)
    return member * (MAX_DECOMPRESSED_BYTES // (1 << 20) + 1)


def _write(name, content):
    def build(tmp_path, raw):
        p = tmp_path / name
        p.write_bytes(content(raw) if callable(content) else content)
        return p
    return build


# (id, builder, reader, kwargs, error class, message fragment)
BAD_INPUTS = [
    ("labels-read-as-images", _write("l.gz", lambda r: _gz(r["labels"])), read_images, {},
     DataFormatError, "magic number 2049, expected 2051"),
    ("images-read-as-labels", _write("i", lambda r: r["images"][:16 + 784]), read_labels, {},
     DataFormatError, "magic number 2051, expected 2049"),
    ("not-idx", _write("x", b"PK\x03\x04" + bytes(100)), read_idx, {},
     DataFormatError, "not an idx file"),
    ("type-byte-float", _write("t", lambda r: b"\0\0\x0d\x01" + r["labels"][4:]), read_idx, {},
     DataFormatError, "idx type byte 0x0d"),
    ("type-byte-in-labels", _write("t", lambda r: b"\0\0\x0c\x01" + r["labels"][4:]), read_labels, {},
     DataFormatError, "magic number 3073"),
    ("too-many-dims", _write("d", b"\0\0\x08\x09" + bytes(64)), read_idx, {},
     DataFormatError, "declares 9 dimensions"),
    ("truncated-header", _write("h", lambda r: r["images"][:10]), read_images, {},
     DataFormatError, "truncated header (10 bytes)"),
    ("header-only-3-bytes", _write("h3", b"\0\0\x08"), read_idx, {},
     DataFormatError, "too short for an idx header"),
    ("truncated-data", _write("td", lambda r: r["images"][:16 + 784 * 100 + 5]), read_images, {},
     DataFormatError, "the file is truncated or corrupt"),
    ("trailing-junk", _write("tj", lambda r: r["labels"] + b"junk"), read_labels, {},
     DataFormatError, "but the file holds 10,004"),
    ("count-disagrees", _write("cd", lambda r: struct.pack(">II", 2049, 10001) + r["labels"][8:]),
     read_labels, {}, DataFormatError, "declares 10001 = 10,001 values but the file holds 10,000"),
    ("huge-declared-count", _write("hc", struct.pack(">IIII", 2051, 2**31, 28, 28) + bytes(10)),
     read_images, {}, DataFormatError, "values, more than the"),
    ("image-shape-not-28x28", _write("s", struct.pack(">IIII", 2051, 2, 32, 32) + bytes(2 * 32 * 32)),
     read_images, {}, DataFormatError, "expected (28, 28)"),
    ("label-10", _write("l10", _labels(20, [3] * 7 + [10] + [1] * 12)), read_labels, {},
     DataFormatError, "label 10 at index 7"),
    ("label-255-gz", _write("l255.gz", _gz(_labels(5, [0, 1, 2, 3, 255]))), read_labels, {},
     DataFormatError, "label 255 at index 4"),
    ("corrupt-gzip", _write("c.gz", b"\x1f\x8b\x08\x00" + b"\xff" * 200), read_labels, {},
     DataFormatError, "corrupt or truncated gzip"),
    ("gzip-crc-flipped", _write("crc.gz", lambda r: (lambda g: g[:-8] + bytes([g[-8] ^ 1]) + g[-7:])(
        _gz(r["labels"]))), read_labels, {}, DataFormatError, "corrupt or truncated gzip"),
    ("truncated-gzip", _write("tg.gz", lambda r: _gz(r["labels"])[:2000]), read_labels, {},
     DataFormatError, "corrupt or truncated gzip"),
    ("gzip-bomb-small-cap", _write("b.gz", lambda r: _gz(r["labels"])), read_labels, {"max_bytes": 1000},
     DataFormatError, "decompresses to more than 1,000 bytes"),
    ("gzip-bomb-default-cap", _write("big.gz", lambda r: _bomb_above_default_cap()), read_idx, {},
     DataFormatError, f"decompresses to more than {MAX_DECOMPRESSED_BYTES:,} bytes"),
    ("empty-file", _write("e", b""), read_labels, {}, DataFormatError, "0 bytes is too short"),
    ("empty-gzip", _write("e.gz", _gz(b"")), read_labels, {}, DataFormatError, "0 bytes is too short"),
    ("directory", lambda tmp_path, raw: tmp_path, read_images, {}, DataFormatError, "not a regular file"),
    ("missing", lambda tmp_path, raw: tmp_path / "nope-idx3-ubyte.gz", read_images, {},
     DataFileNotFoundError, "no such file"),
]


@pytest.mark.parametrize("build, reader, kwargs, cls, fragment",
                         [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_reader_rejects(tmp_path, raw, build, reader, kwargs, cls, fragment):
    path = build(tmp_path, raw)
    with pytest.raises(cls) as info:
        reader(path, **kwargs)
    assert type(info.value) is cls
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_load_mnist_count_mismatch(mnist_dir, tmp_path):
    # Test images with train labels under the test name: 10,000 vs 60,000.
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-images-idx3-ubyte.gz")
    shutil.copy(mnist_dir / "train-labels-idx1-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataFormatError, match="10000 images but 60000 labels"):
        load_mnist("test", data_dir=tmp_path)


def test_load_mnist_missing_file_and_bad_split(mnist_dir, tmp_path):
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(DataFileNotFoundError, match="t10k-labels-idx1-ubyte.*--data-dir"):
        load_mnist("test", data_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="unknown MNIST split"):
        load_mnist("validation", data_dir=tmp_path)


# =========================================================================== local HTTP servers

_BODIES = {}  # (mode, file name) -> body served, shared by the servers of this module


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 serving MNIST .gz files in one of several modes.

    good      the files as they are          corrupt   one byte of the .gz flipped
    wrong     valid gzip, one content byte flipped (a pure checksum mismatch)
    404       every path is Not Found        html      200 with an HTML page
    stall     sleeps before answering        stallbody headers, then sleeps
    nolength  the files without Content-Length (body ends when the connection closes)
    """

    def __init__(self, mnist_dir, mode):
        self.mnist_dir, self.mode = mnist_dir, mode
        self.requests = collections.Counter()
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests[self.path] += 1
                server.handle(self)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mnist/"
        if mode in ("corrupt", "wrong"):
            for n in TEST_NAMES:  # prepared before any request, so a short client timeout is fair
                self.body(n)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def body(self, name):
        key = (self.mode, name)
        if key not in _BODIES:
            _BODIES[key] = self._make_body(name)
        return _BODIES[key]

    def _make_body(self, name):
        p = self.mnist_dir / name
        if not p.is_file():
            return None
        data = p.read_bytes()
        if self.mode == "corrupt":
            i = len(data) // 2
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        elif self.mode == "wrong":
            content = bytearray(gzip.decompress(data))
            content[-1] ^= 0x01
            data = gzip.compress(bytes(content), compresslevel=1, mtime=0)
        return data

    def handle(self, h):
        name = h.path.rsplit("/", 1)[-1]
        if self.mode == "stall":
            self.release.wait(STALL_SECONDS)
            return
        data = self.body(name) if h.path.startswith("/mnist/") else None
        if self.mode == "404" or data is None:
            h.send_error(404, "Not Found")
            return
        if self.mode == "html":
            data = b"<html><body>Please log in</body></html>"
        h.send_response(200)
        h.send_header("Content-Type", "application/gzip")
        if self.mode != "nolength":
            h.send_header("Content-Length", str(len(data)))
        else:
            h.close_connection = True
        h.end_headers()
        if self.mode == "stallbody":
            h.wfile.write(data[:100])
            h.wfile.flush()
            self.release.wait(STALL_SECONDS)
            return
        h.wfile.write(data)

    @property
    def total(self):
        return sum(self.requests.values())

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve(mnist_dir, monkeypatch):
    """Factory: ``serve(mode)`` starts a server and returns it; all are closed after the test."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(MIRRORS_ENV, raising=False)
    servers = []

    def start(mode="good"):
        s = _Server(mnist_dir, mode)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def _listing(folder):
    return sorted(os.listdir(folder))


def _assert_verified(folder, names):
    by_name = {f.name + ".gz": f for f in MNIST_FILES}
    for n in names:
        assert _md5_of_gz(os.path.join(folder, n)) == by_name[n].md5


# =========================================================================== downloader

def test_download_all_then_nothing(serve, tmp_path):
    good = serve("good")
    dest = tmp_path / "dest"
    messages = []
    assert download_mnist(mirrors=[good.url], dest=dest, progress=messages.append) == str(dest)
    assert _listing(dest) == ALL_NAMES
    _assert_verified(dest, ALL_NAMES)
    assert good.total == 4 and all(v == 1 for v in good.requests.values())
    assert sum("saved to" in m for m in messages) == 4
    images, labels = load_mnist("train", data_dir=dest)
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)

    messages.clear()
    download_mnist(mirrors=[good.url], dest=dest, progress=messages.append)
    assert good.total == 4, "second call must not download again"
    assert sum("checksum verified" in m for m in messages) == 4
    assert _listing(dest) == ALL_NAMES


def test_download_split_only(serve, tmp_path):
    good = serve("good")
    download_mnist(mirrors=good.url, dest=tmp_path, split="test")
    assert _listing(tmp_path) == TEST_NAMES
    assert set(good.requests) == {"/mnist/" + n for n in TEST_NAMES}


@pytest.mark.parametrize("mode", ["corrupt", "wrong", "404", "html", "stall"])
def test_bad_mirror_then_good(serve, tmp_path, mode):
    bad, good = serve(mode), serve("good")
    messages = []
    download_mnist(mirrors=[bad.url, good.url], dest=tmp_path, split="test", timeout=0.5,
                   progress=messages.append)
    assert _listing(tmp_path) == TEST_NAMES
    _assert_verified(tmp_path, TEST_NAMES)
    assert bad.total == 2 and good.total == 2
    assert sum("failed" in m for m in messages) == 2


@pytest.mark.parametrize("mode, fragment", [
    ("corrupt", "corrupt or truncated gzip"),
    ("wrong", "checksum mismatch"),
    ("404", "HTTP 404"),
    ("html", "not gzip data"),
    ("stall", "timed out after 0.5 s"),
    ("stallbody", "timed out after 0.5 s"),
])
def test_single_bad_mirror(serve, tmp_path, mode, fragment):
    bad = serve(mode)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_mnist(mirrors=[bad.url], dest=tmp_path, split="test", timeout=0.5)
    assert time.monotonic() - t0 < FAIL_FAST_GUARD_SECONDS
    msg = str(info.value)
    assert fragment in msg
    assert bad.url + "t10k-images-idx3-ubyte.gz" in msg
    assert "--data-dir" in msg
    assert _listing(tmp_path) == []
    if mode == "wrong":
        assert "checksum" in msg and MNIST_FILES[2].md5 in msg


def test_all_mirrors_bad_lists_each(serve, tmp_path):
    mirrors = [serve("404"), serve("wrong"), serve("stall")]
    (tmp_path / "unrelated.txt").write_text("keep me")
    with pytest.raises(DownloadError) as info:
        download_mnist(mirrors=[s.url for s in mirrors], dest=tmp_path, split="test", timeout=0.5)
    msg = str(info.value)
    assert isinstance(info.value, CapszooError) and isinstance(info.value, OSError)
    assert "any of 3 mirror(s)" in msg
    lines = [line for line in msg.splitlines() if line.startswith("  - ")]
    assert len(lines) == 3
    assert "HTTP 404" in lines[0] and "checksum mismatch" in lines[1] and "timed out" in lines[2]
    assert "--data-dir" in msg and MIRRORS_ENV in msg
    assert _listing(tmp_path) == ["unrelated.txt"]


def test_size_caps(serve, tmp_path):
    good, nolength = serve("good"), serve("nolength")
    # Declared length over the cap, then a body without length streamed over the cap.
    with pytest.raises(DownloadError) as info:
        download_mnist(mirrors=[good.url, nolength.url], dest=tmp_path, split="test", max_bytes=3000)
    msg = str(info.value)
    assert "larger than the 3,000 accepted" in msg and "larger than the 3,000 bytes accepted" in msg
    # Decompressed-size cap (gzip bomb guard).
    with pytest.raises(DownloadError, match="decompresses to more than 1,000 bytes"):
        download_mnist(mirrors=[good.url], dest=tmp_path, split="test", max_decompressed_bytes=1000)
    assert _listing(tmp_path) == []
    # Without Content-Length and within the caps the download works.
    download_mnist(mirrors=[nolength.url], dest=tmp_path, split="test")
    _assert_verified(tmp_path, TEST_NAMES)


def test_corrupt_local_file_is_replaced(serve, tmp_path, mnist_dir):
    good = serve("good")
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", tmp_path)  # verified: kept
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")  # replaced
    download_mnist(mirrors=[good.url], dest=tmp_path, split="test")
    assert dict(good.requests) == {"/mnist/t10k-images-idx3-ubyte.gz": 1}
    _assert_verified(tmp_path, TEST_NAMES)


def test_verified_raw_file_counts(serve, tmp_path, raw):
    good = serve("good")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(raw["labels"])
    download_mnist(mirrors=[good.url], dest=tmp_path, split="test")
    assert dict(good.requests) == {"/mnist/t10k-images-idx3-ubyte.gz": 1}
    assert load_mnist("test", data_dir=tmp_path)[1][:3].tolist() == [7, 2, 1]


def test_interrupt_leaves_no_partial_file(serve, tmp_path, monkeypatch):
    good = serve("good")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(capszoo._io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_mnist(mirrors=[good.url], dest=tmp_path, split="test")
    assert _listing(tmp_path) == []


def test_env_override_through_load_mnist(serve, monkeypatch):
    dead, good = serve("404"), serve("good")
    monkeypatch.setenv(MIRRORS_ENV, f" {dead.url} ,{good.url.rstrip('/')}")
    images, labels = load_mnist("test")
    assert images.shape == (10000, 28, 28) and labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    folder = os.path.join(os.environ["CAPSZOO_HOME"], "data", "mnist")
    assert cache_dir() == folder
    # only the requested split is downloaded
    assert _listing(folder) == sorted(n for n in ALL_NAMES if n.startswith("t10k"))
    assert good.total == 2 and dead.total == 2


def test_default_mirrors_and_bad_arguments(monkeypatch, tmp_path):
    monkeypatch.delenv(MIRRORS_ENV, raising=False)
    assert all(m.startswith("https://") and m.endswith("/") for m in DEFAULT_MIRRORS)
    cases = [({"mirrors": []}, "no MNIST mirror"),
             ({"mirrors": ["ftp://example.org/"]}, "not an http(s) URL"),
             ({"mirrors": [3]}, "not a string"),
             ({"mirrors": ["http://x/"], "timeout": 0}, "timeout must be a positive"),
             ({"mirrors": ["http://x/"], "max_bytes": -1}, "max_bytes must be a positive"),
             ({"mirrors": ["http://x/"], "split": "val"}, "unknown MNIST split"),
             ({"mirrors": ["http://x/"], "progress": "loud"}, "progress must be callable")]
    for kwargs, fragment in cases:
        with pytest.raises(InvalidInputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            download_mnist(dest=tmp_path, **kwargs)
    monkeypatch.setenv(MIRRORS_ENV, "file:///etc/")
    with pytest.raises(InvalidInputError, match=r"\$CAPSZOO_MNIST_MIRRORS"):
        download_mnist(dest=tmp_path)
    assert _listing(tmp_path) == []


# =========================================================================== cache folder

def test_cache_dir_locations(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSZOO_HOME", str(tmp_path / "czhome"))
    assert cache_dir() == str(tmp_path / "czhome" / "data" / "mnist")
    assert os.path.isdir(cache_dir())
    monkeypatch.delenv("CAPSZOO_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "capszoo" / "data" / "mnist")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == str(tmp_path / "home" / ".cache" / "capszoo" / "data" / "mnist")


def test_cache_dir_under_a_file(monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("CAPSZOO_HOME", str(tmp_path / "afile" / "capszoo"))
    with pytest.raises(CacheError) as info:
        cache_dir()
    assert "afile" in str(info.value) and "CAPSZOO_HOME" in str(info.value)
    assert "--data-dir" in str(info.value)


def test_dest_under_a_file(serve, tmp_path):
    good = serve("good")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CacheError, match="cannot create the MNIST folder .*afile.*CAPSZOO_HOME"):
        download_mnist(mirrors=[good.url], dest=tmp_path / "afile" / "mnist", split="test")
    assert good.total == 0


@contextlib.contextmanager
def _read_only(path):
    os.chmod(path, stat.S_IRUSR | stat.S_IXUSR)
    try:
        yield os.access(path, os.W_OK)
    finally:
        os.chmod(path, stat.S_IRWXU)


def test_unwritable_dest(serve, tmp_path, mnist_dir):
    good = serve("good")
    dest = tmp_path / "ro"
    dest.mkdir()
    with _read_only(dest) as still_writable:
        if still_writable:
            pytest.skip("chmod does not stop this user (root) from writing; see test_dest_under_a_file")
        with pytest.raises(CacheError, match="not writable"):
            download_mnist(mirrors=[good.url], dest=dest, split="test")
        monkeypatch = pytest.MonkeyPatch()
        try:
            monkeypatch.setenv("CAPSZOO_HOME", str(dest))
            with pytest.raises(CacheError, match="CAPSZOO_HOME"):
                cache_dir()
        finally:
            monkeypatch.undo()
    assert good.total == 0


def test_read_only_dest_with_verified_files(serve, tmp_path, mnist_dir):
    good = serve("good")
    for f in TEST_FILES:
        shutil.copy(mnist_dir / (f.name + ".gz"), tmp_path)
    with _read_only(tmp_path):
        assert download_mnist(mirrors=[good.url], dest=tmp_path, split="test") == str(tmp_path)
    assert good.total == 0
