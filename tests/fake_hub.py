"""A small HTTP server posing as the Hugging Face Hub, for driving the real ``hf_hub_download``.

It serves what ``hf_hub_download`` (huggingface_hub 2.x, and the 0.2x series) asks for a repo file:

* ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}``.  In LFS mode (the default, like a
  weights file on huggingface.co) the answer is a ``302`` to a "CDN" URL on another origin
  (``localhost`` instead of ``127.0.0.1``) carrying ``X-Repo-Commit``, ``X-Linked-Etag`` (the
  sha256), ``X-Linked-Size`` and ``ETag``; huggingface_hub reads the metadata from the redirect
  itself and downloads from the CDN URL.  With ``lfs=False`` it answers ``200`` with ``ETag`` (a git
  blob id), ``Content-Length`` and ``X-Repo-Commit``, like a small regular file.
* ``HEAD``/``GET /cdn/{sha256}?commit=...``: the bytes.
* Unknown repo / revision / file: ``404`` with ``X-Error-Code`` ``RepoNotFound`` /
  ``RevisionNotFound`` / ``EntryNotFound`` (the latter with ``X-Repo-Commit``), which
  huggingface_hub turns into ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` /
  ``RemoteEntryNotFoundError``.

Per-test behaviours (plain attributes, change them at any time):

``corrupt``       None, ``"flip"`` (one byte inverted, same size) or ``"truncate"`` (first half,
                  with an honest ``Content-Length``; the metadata still announces the full size).
``status``        an HTTP status (e.g. 500) returned for every request instead of the file.
``omit_headers``  names of headers left out of every answer (e.g. ``{"X-Repo-Commit"}``).
``stall``         seconds to hang (bounded by ``max_stall`` and cut short by :meth:`stop`);
``stall_on``      the methods that hang (``{"GET"}``, ``{"HEAD"}``...);
``stall_phase``   ``"before"`` (before the status line) or ``"body"`` (after half the body).
``body_delay``    seconds spread over the body (sent in 8 pieces), to make downloads overlap.

Every request is recorded in :attr:`requests` as ``(method, path)``.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import urllib.parse

__all__ = ["FakeHub"]


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "FakeHub/1.0"
    hub: "FakeHub"  # set on the subclass

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, status, headers, body=b"", *, head):
        hub = self.hub
        headers = {k: v for k, v in headers.items() if k not in hub.omit_headers}
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        if head or not body:
            return
        if hub.stall and "GET" in hub.stall_on and hub.stall_phase == "body":
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            hub._wait(hub.stall)
            if hub.stopping.is_set():
                self.close_connection = True
                return
            body = body[half:]
        pieces = 8 if hub.body_delay else 1
        step = max(1, -(-len(body) // pieces))
        for i in range(0, len(body), step):
            if hub.body_delay:
                hub._wait(hub.body_delay / pieces)
            self.wfile.write(body[i:i + step])
            self.wfile.flush()

    def _error(self, status, code=None, message="", extra=None, *, head):
        headers = {"Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        if message:
            headers["X-Error-Message"] = message
        headers.update(extra or {})
        body = json.dumps({"error": message or http.HTTPStatus(status).phrase}).encode()
        headers["Content-Length"] = len(body)
        self._send(status, headers, body, head=head)

    def _serve(self, *, head):
        hub = self.hub
        method = "HEAD" if head else "GET"
        hub._record(method, self.path)
        if hub.stall and method in hub.stall_on and hub.stall_phase == "before":
            hub._wait(hub.stall)
            if hub.stopping.is_set():
                self.close_connection = True
                return
        if hub.status is not None:
            return self._error(hub.status, message="fake hub failure", head=head)

        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/cdn/"):
            return self._serve_cdn(url, head=head)
        if "/resolve/" not in url.path:
            return self._error(404, message="no such endpoint on the fake hub", head=head)
        left, right = url.path.split("/resolve/", 1)
        repo_id = urllib.parse.unquote(left.lstrip("/"))
        if "/" not in right:
            return self._error(404, "EntryNotFound", "Entry not found", head=head)
        rev_q, file_q = right.split("/", 1)
        revision, filename = urllib.parse.unquote(rev_q), urllib.parse.unquote(file_q)

        repo = hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found", head=head)
        commit = repo["refs"].get(revision) or (revision if revision in repo["commits"] else None)
        if commit is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision, head=head)
        data = repo["commits"][commit].get(filename)
        if data is None:
            return self._error(404, "EntryNotFound", "Entry not found",
                               {"X-Repo-Commit": commit}, head=head)

        sha = hashlib.sha256(data).hexdigest()
        if hub.lfs:
            cdn = f"http://{hub.cdn_host}:{hub.port}/cdn/{sha}?commit={commit}"
            headers = {"Location": cdn, "X-Repo-Commit": commit, "X-Linked-Etag": f'"{sha}"',
                       "X-Linked-Size": len(data), "ETag": f'"{_git_blob_id(sha.encode())}"',
                       "Content-Length": 0}
            return self._send(302, headers, head=head)
        body = hub._body(data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{_git_blob_id(data)}"',
                   "Content-Length": len(data) if head else len(body),
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        return self._send(200, headers, body, head=head)

    def _serve_cdn(self, url, *, head):
        hub = self.hub
        sha = url.path[len("/cdn/"):]
        data = hub.blobs.get(sha)
        if data is None:
            return self._error(404, message="no such blob", head=head)
        commit = urllib.parse.parse_qs(url.query).get("commit", [""])[0]
        body = hub._body(data)
        headers = {"ETag": f'"{sha}"', "Content-Length": len(data) if head else len(body),
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if commit:
            headers["X-Repo-Commit"] = commit
        return self._send(200, headers, body, head=head)


class FakeHub:
    """A threaded fake Hub on ``127.0.0.1`` (port chosen by the OS). Use as a context manager."""

    def __init__(self, *, max_stall: float = 8.0):
        self.repos = {}  # repo_id -> {"refs": {name: commit}, "commits": {commit: {filename: bytes}}}
        self.blobs = {}  # sha256 -> bytes
        self.requests = []
        self.corrupt = None
        self.status = None
        self.omit_headers = set()
        self.stall = 0.0
        self.stall_on = {"GET"}
        self.stall_phase = "before"
        self.body_delay = 0.0
        self.lfs = True
        self.max_stall = max_stall
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        self.port = None
        try:
            local = socket.gethostbyname("localhost") == "127.0.0.1"
        except OSError:
            local = False
        # Another origin than the Hub's, like a real CDN; same origin if "localhost" is not 127.0.0.1.
        self.cdn_host = "localhost" if local else "127.0.0.1"

    # -- content ----------------------------------------------------------------------------

    def add_file(self, repo_id: str, filename: str, data: bytes, *, revision: str = "main",
                 commit: str = None) -> str:
        """Serve ``data`` as ``filename`` of ``repo_id`` at ``revision`` (a branch or tag name)."""
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        if commit is None:
            commit = repo["refs"].get(revision) or hashlib.sha1(
                f"{repo_id}@{revision}".encode()).hexdigest()
        repo["refs"][revision] = commit
        repo["commits"].setdefault(commit, {})[filename] = bytes(data)
        self.blobs[hashlib.sha256(data).hexdigest()] = bytes(data)
        return commit

    def _body(self, data: bytes) -> bytes:
        if self.corrupt == "flip":
            out = bytearray(data)
            out[len(out) // 2] ^= 0xFF
            return bytes(out)
        if self.corrupt == "truncate":
            return data[: len(data) // 2]
        return data

    # -- bookkeeping ------------------------------------------------------------------------

    def _record(self, method, path):
        with self._lock:
            self.requests.append((method, path))

    def _wait(self, seconds):
        self.stopping.wait(min(float(seconds), self.max_stall))

    def count(self, method: str = None, contains: str = None) -> int:
        """Number of requests seen, optionally only of one method / whose path contains a string."""
        with self._lock:
            return sum(1 for m, p in self.requests
                       if (method is None or m == method) and (contains is None or contains in p))

    # -- life cycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeHub":
        handler = type("Handler", (_Handler,), {"hub": self})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0):
        """Stop serving: wake every stalled handler, close the socket, join the thread (bounded)."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` of a port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def resolve_in_child(card_fields: dict, import_env: dict, env: dict):
    """Entry point of the multiprocessing test: resolve the weights in a fresh (spawned) process.

    huggingface_hub is imported while ``import_env`` is in force (e.g. offline, another endpoint and
    cache); then ``env`` replaces it and the weights are resolved, so the call must use the
    environment as it is at call time.  capszoo's package ``__init__`` imports MXNet; this loads
    ``capszoo._hub`` under a bare package object instead, which also shows that the module itself
    does not need MXNet.  Returns a dict (``error`` set on failure).
    """
    import importlib.util
    import os
    import sys
    import types

    os.environ.update(import_env)
    from huggingface_hub import constants, file_download  # noqa: F401  (import-time settings)

    out = {"import_offline": constants.HF_HUB_OFFLINE, "import_endpoint": constants.ENDPOINT}
    os.environ.update(env)
    if "capszoo" not in sys.modules:
        spec = importlib.util.find_spec("capszoo")
        pkg = types.ModuleType("capszoo")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["capszoo"] = pkg
    from capszoo._hub import resolve_weights
    from capszoo._registry import ModelCard, WeightsSource

    card = _card(ModelCard, WeightsSource, **card_fields)
    try:
        path = resolve_weights(card, timeout=5)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    with open(path, "rb") as fh:
        out["sha256"] = hashlib.sha256(fh.read()).hexdigest()
    out.update(path=path, mxnet="mxnet" in sys.modules)
    return out


def _card(ModelCard, WeightsSource, *, name, filename, sha256, size_bytes, repo_id, revision, bundled=False):
    return ModelCard(
        name=name, aliases=(), display_name=name, description="test model", task="test",
        classes=(), input_shape=(1,), input_dtype="float32", input_range=(0.0, 1.0), preprocessing="",
        num_params=0, num_layers=0, subnets=(), reference="", license="", recipe=name,
        weights=WeightsSource(filename=filename, sha256=sha256, size_bytes=size_bytes,
                              hf_repo_id=repo_id, hf_revision=revision, bundled=bundled))
