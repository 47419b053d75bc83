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

The write API that ``huggingface_hub.HfApi`` (2.x) uses to publish a model is served too:

* ``POST /api/repos/create`` (``create_repo``; ``409`` when the repo exists, which
  ``exist_ok=True`` accepts); a new repo gets a first commit on ``main`` holding ``.gitattributes``;
* ``GET /api/models/{repo_id}[/revision/{rev}]`` (``repo_info``), ``GET .../refs``
  (``list_repo_refs``), ``GET .../tree/{rev}[/{path}]`` (``list_repo_tree``, one page);
* ``POST /api/validate-yaml`` (the README's front matter must parse as YAML);
* ``POST /api/models/{repo_id}/preupload/{rev}``: each file's upload mode (``lfs`` for a binary
  sample or more than 10 MB, else ``regular``) and the oid of the file already there;
* the Git LFS batch API ``POST /{repo_id}.git/info/lfs/objects/batch`` (``basic`` transfer, no
  ``actions`` for objects the hub already has), ``PUT /lfs-upload/{oid}`` (the bytes, checked
  against the oid) and ``POST /lfs-verify/{oid}``;
* ``POST /api/models/{repo_id}/commit/{branch}`` (the NDJSON commit: ``file`` and ``lfsFile``
  lines; an LFS line whose object was never uploaded is refused);
* ``POST /api/models/{repo_id}/tag/{rev}`` (``create_tag``; ``409`` when the tag exists).

Xet storage is not offered: ``/api/models/{repo_id}/xet-write-token/...`` answers ``501``.
huggingface_hub 2.x uploads through xet whenever the ``hf_xet`` package is installed, unless
``HF_HUB_DISABLE_XET=1``; the push tests set it, so the client takes the plain HTTP LFS path above
(capszoo passes the variable on to the client at call time).

Write-side switches:

``tokens``        None (no authentication) or the set of tokens accepted for writes; any other
                  ``Authorization`` (or none) gets ``401``.  Reads of private repos need one too.
``fail``          ``{endpoint: status}``: that endpoint answers ``status`` until the entry is
                  removed.  Endpoints: ``create_repo``, ``repo_info``, ``refs``, ``tree``,
                  ``validate_yaml``, ``preupload``, ``lfs_batch``, ``lfs_upload``, ``lfs_verify``,
                  ``commit``, ``tag``.
``cut_upload``    a set of sha256 oids (or True for all): their ``PUT`` is cut off midway (half the
                  body read, then the connection is closed without an answer).
``hidden``        file names that every revision seems not to hold (``404 EntryNotFound``).
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import socket
import struct
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

    def do_POST(self):
        self._serve_write("POST")  # the write API: see _serve_write below

    def do_PUT(self):
        self._serve_write("PUT")

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
        if url.path.startswith("/api/"):
            return _api_read(self, url, head=head)
        if "/resolve/" not in url.path:
            return self._error(404, message="no such endpoint on the fake hub", head=head)
        left, right = url.path.split("/resolve/", 1)
        repo_id = urllib.parse.unquote(left.lstrip("/"))
        if "/" not in right:
            return self._error(404, "EntryNotFound", "Entry not found", head=head)
        rev_q, file_q = right.split("/", 1)
        revision, filename = urllib.parse.unquote(rev_q), urllib.parse.unquote(file_q)

        repo = hub.repos.get(repo_id)
        if repo is None or not hub._may_read(repo, self.headers):
            return self._error(404, "RepoNotFound", "Repository not found", head=head)
        commit = repo["refs"].get(revision) or (revision if revision in repo["commits"] else None)
        if commit is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision, head=head)
        data = None if filename in hub.hidden else repo["commits"][commit].get(filename)
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
        self.tokens = None
        self.fail = {}
        self.cut_upload = set()
        self.hidden = set()
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

    def tag(self, repo_id: str, tag: str, revision: str = "main") -> str:
        """Create the tag ``tag`` on ``revision`` of ``repo_id`` (as ``create_tag`` would); its commit."""
        repo = self.repos[repo_id]
        commit = repo["refs"].get(revision) or revision
        repo["refs"][tag] = commit
        repo.setdefault("tags", set()).add(tag)
        return commit

    def files(self, repo_id: str, revision: str = "main") -> dict:
        """``{path: bytes}`` of ``repo_id`` at ``revision`` (a branch, tag or commit)."""
        repo = self.repos[repo_id]
        commit = repo["refs"].get(revision) or revision
        return dict(repo["commits"][commit])

    def tags(self, repo_id: str) -> dict:
        """``{tag: commit}`` of ``repo_id``."""
        repo = self.repos.get(repo_id, {})
        return {t: repo["refs"][t] for t in repo.get("tags", ())}

    def _may_read(self, repo, headers) -> bool:
        return not repo.get("private") or self.tokens is None or _bearer(headers) in self.tokens

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


# ---------------------------------------------------------------------------------------------
# The write API (and the read endpoints a publisher uses)
# ---------------------------------------------------------------------------------------------

_REPO_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)"
                       r"(?:/(?P<op>revision|refs|tree|preupload|commit|tag|xet-write-token)(?:/(?P<rest>.*))?)?$")
_LFS_BATCH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_GITATTRIBUTES = b"*.params filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
_LFS_MIN_SIZE = 10 * 1000 * 1000


def _bearer(headers):
    value = headers.get("Authorization") or ""
    return value[7:].strip() if value.lower().startswith("bearer ") else None


def _is_lfs(data: bytes) -> bool:
    """The Hub's rule, simplified: large or binary files go to LFS."""
    sample = data[:512]
    if len(data) > _LFS_MIN_SIZE or b"\0" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return len(sample) < 512  # a multi-byte character cut at the sample's end is still text
    return False


def _pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


def _oid(data: bytes) -> str:
    """What preupload reports for a file already there: sha256 for LFS files, the git blob id otherwise."""
    return hashlib.sha256(data).hexdigest() if _is_lfs(data) else _git_blob_id(data)


def _read_body(handler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _answer(handler, status, obj, *, head=False, headers=None):
    body = json.dumps(obj).encode()
    all_headers = {"Content-Type": "application/json", "Content-Length": len(body), **(headers or {})}
    handler._send(status, all_headers, body, head=head)


def _refused(handler, endpoint, *, head=False, write=True) -> bool:
    """Answer an injected fault or a missing/bad token; True when the request is answered."""
    hub = handler.hub
    status = hub.fail.get(endpoint)
    if status is not None:
        code = "RepoNotFound" if status == 404 else None
        handler._error(status, code, f"fake hub failure ({endpoint})", head=head)
        return True
    if write and hub.tokens is not None and _bearer(handler.headers) not in hub.tokens:
        handler._error(401, None, "Invalid credentials in Authorization header", head=head)
        return True
    return False


def _commit_of(repo, revision):
    return repo["refs"].get(revision) or (revision if revision in repo["commits"] else None)


def _api_read(handler, url, *, head):
    hub = handler.hub
    m = _REPO_API.match(url.path)
    if m is None:
        return handler._error(404, message="no such endpoint on the fake hub", head=head)
    repo_id, op, rest = urllib.parse.unquote(m["repo"]), m["op"], m["rest"] or ""
    if op == "xet-write-token":
        return handler._error(501, None, "the fake hub does not offer xet storage; set HF_HUB_DISABLE_XET=1",
                              head=head)
    endpoint = {"refs": "refs", "tree": "tree"}.get(op, "repo_info")
    if _refused(handler, endpoint, head=head, write=False):
        return None
    repo = hub.repos.get(repo_id)
    if repo is None or not hub._may_read(repo, handler.headers):
        return handler._error(404, "RepoNotFound", "Repository not found", head=head)
    if op == "refs":
        return _answer(handler, 200, _refs(repo), head=head)
    rev, _, path = rest.partition("/") if op == "tree" else (rest, "", "")
    commit = _commit_of(repo, urllib.parse.unquote(rev) or "main")
    if commit is None:
        return handler._error(404, "RevisionNotFound", "Invalid rev id: " + urllib.parse.unquote(rev), head=head)
    files = repo["commits"][commit]
    if op == "tree":
        recursive = urllib.parse.parse_qs(url.query).get("recursive", ["False"])[0].lower() == "true"
        return _answer(handler, 200, _tree(files, urllib.parse.unquote(path), recursive), head=head)
    info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": bool(repo.get("private")),
            "siblings": [{"rfilename": p} for p in sorted(files)], "tags": []}
    return _answer(handler, 200, info, head=head)


def _refs(repo):
    def ref(name, kind):
        return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": repo["refs"][name]}

    tags = repo.get("tags", set())
    return {"branches": [ref(n, "heads") for n in sorted(repo["refs"]) if n not in tags],
            "tags": [ref(n, "tags") for n in sorted(tags)], "converts": [], "pullRequests": []}


def _tree(files, path, recursive):
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    entries, folders = [], set()
    for p, data in sorted(files.items()):
        if not p.startswith(prefix):
            continue
        rel = p[len(prefix):]
        parts = rel.split("/")
        for i in range(1, len(parts)):
            folders.add(prefix + "/".join(parts[:i]))
        if len(parts) > 1 and not recursive:
            continue
        entry = {"type": "file", "path": p, "size": len(data)}
        if _is_lfs(data):
            pointer = _pointer(data)
            entry.update(oid=_git_blob_id(pointer),
                         lfs={"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)})
        else:
            entry["oid"] = _git_blob_id(data)
        entries.append(entry)
    for f in sorted(folders):
        if recursive or "/" not in f[len(prefix):]:
            entries.append({"type": "directory", "path": f, "size": 0, "oid": hashlib.sha1(f.encode()).hexdigest()})
    return entries


def _serve_write(self, method):
    hub = self.hub
    hub._record(method, self.path)
    if hub.status is not None:
        _read_body(self)
        return self._error(hub.status, message="fake hub failure", head=False)
    url = urllib.parse.urlsplit(self.path)
    if method == "PUT" and url.path.startswith("/lfs-upload/"):
        return _lfs_upload(self, url.path[len("/lfs-upload/"):])
    body = _read_body(self)
    if method != "POST":
        return self._error(405, message="method not allowed on the fake hub", head=False)
    if url.path == "/api/repos/create":
        return _create_repo(self, json.loads(body or b"{}"))
    if url.path == "/api/validate-yaml":
        return _validate_yaml(self, json.loads(body or b"{}"))
    if url.path.startswith("/lfs-verify/"):
        if _refused(self, "lfs_verify"):
            return None
        oid = url.path[len("/lfs-verify/"):]
        return _answer(self, 200 if oid in hub.blobs else 404, {"oid": oid})
    m = _LFS_BATCH.match(url.path)
    if m:
        return _lfs_batch(self, urllib.parse.unquote(m["repo"]), json.loads(body or b"{}"))
    m = _REPO_API.match(url.path)
    if m and m["op"] in ("preupload", "commit", "tag"):
        repo_id, rev = urllib.parse.unquote(m["repo"]), urllib.parse.unquote(m["rest"] or "main")
        handler = {"preupload": _preupload, "commit": _commit, "tag": _tag}[m["op"]]
        return handler(self, repo_id, rev, body)
    return self._error(404, message="no such endpoint on the fake hub", head=False)


_Handler._serve_write = _serve_write


def _create_repo(handler, payload):
    hub = handler.hub
    if _refused(handler, "create_repo"):
        return None
    org, name = payload.get("organization"), payload.get("name") or ""
    repo_id = f"{org}/{name}" if org else name
    url = f"{hub.url}/{repo_id}"
    with hub._lock:
        if repo_id in hub.repos:
            return _answer(handler, 409, {"error": "You already created this model repo", "url": url})
        first = hashlib.sha1(f"{repo_id}@initial".encode()).hexdigest()
        hub.repos[repo_id] = {"refs": {"main": first}, "commits": {first: {".gitattributes": _GITATTRIBUTES}},
                              "tags": set(), "private": payload.get("visibility") == "private"}
    return _answer(handler, 200, {"url": url, "name": repo_id, "id": repo_id})


def _validate_yaml(handler, payload):
    import yaml

    if _refused(handler, "validate_yaml"):
        return None
    text = payload.get("content") or ""
    errors = []
    if text.startswith("---"):
        end = text.find("\n---", 3)
        try:
            if end < 0:
                raise ValueError("the front matter has no closing ---")
            meta = yaml.safe_load(text[3:end])
            if meta is not None and not isinstance(meta, dict):
                raise ValueError("the front matter is not a mapping")
        except (yaml.YAMLError, ValueError) as exc:
            errors.append({"message": f"invalid YAML: {exc}"})
    return _answer(handler, 400 if errors else 200, {"errors": errors, "warnings": []})


def _writable_repo(handler, repo_id, endpoint):
    """The repo, or None when the request was answered (fault, token, unknown repo)."""
    if _refused(handler, endpoint):
        return None
    repo = handler.hub.repos.get(repo_id)
    if repo is None:
        handler._error(404, "RepoNotFound", "Repository not found", head=False)
    return repo


def _preupload(handler, repo_id, rev, body):
    repo = _writable_repo(handler, repo_id, "preupload")
    if repo is None:
        return None
    commit = _commit_of(repo, rev)
    current = repo["commits"][commit] if commit else {}
    out = []
    for f in json.loads(body or b"{}").get("files", []):
        sample = base64.b64decode(f.get("sample") or "")
        lfs = f.get("size", 0) > _LFS_MIN_SIZE or _is_lfs(sample)
        there = current.get(f["path"])
        oid = None if there is None else (hashlib.sha256(there).hexdigest() if lfs else _git_blob_id(there))
        out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
    return _answer(handler, 200, {"files": out, "commitOid": commit})


def _lfs_batch(handler, repo_id, payload):
    hub = handler.hub
    if _writable_repo(handler, repo_id, "lfs_batch") is None:
        return None
    objects = []
    for obj in payload.get("objects", []):
        oid, size = obj["oid"], obj["size"]
        entry = {"oid": oid, "size": size, "authenticated": True}
        have = hub.blobs.get(oid)
        if have is None or len(have) != size:
            entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{oid}"},
                                "verify": {"href": f"{hub.url}/lfs-verify/{oid}", "header": {}}}
        objects.append(entry)
    return _answer(handler, 200, {"transfer": "basic", "objects": objects},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})


def _lfs_upload(handler, oid):
    hub = handler.hub
    if hub.cut_upload is True or oid in hub.cut_upload:
        length = int(handler.headers.get("Content-Length") or 0)
        handler.rfile.read(length // 2)
        # Close at once with a reset: the client sees its transfer fail midway.
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True
        return None
    data = _read_body(handler)
    if _refused(handler, "lfs_upload", write=False):
        return None
    if hashlib.sha256(data).hexdigest() != oid:
        return handler._error(400, None, f"the uploaded bytes do not have sha256 {oid}", head=False)
    with hub._lock:
        hub.blobs[oid] = data
    return handler._send(200, {"Content-Length": 0}, head=False)


def _commit(handler, repo_id, rev, body):
    hub = handler.hub
    repo = _writable_repo(handler, repo_id, "commit")
    if repo is None:
        return None
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    head_value = next((ln["value"] for ln in lines if ln["key"] == "header"), {})
    with hub._lock:
        parent = repo["refs"].get(rev)
        if parent is None or rev in repo.get("tags", ()):
            return handler._error(404, "RevisionNotFound", f"Invalid rev id: {rev} (commits go to a branch)",
                                  head=False)
        if head_value.get("parentCommit") not in (None, parent):
            return handler._error(412, None, "the branch moved since parentCommit", head=False)
        files = dict(repo["commits"][parent])
        for ln in lines:
            key, value = ln["key"], ln.get("value", {})
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                data = hub.blobs.get(value["oid"])
                if data is None:
                    return handler._error(422, None, f"LFS object {value['oid']} of {value['path']} was never "
                                                     "uploaded", head=False)
                files[value["path"]] = data
            elif key in ("deletedFile", "deletedFolder"):
                gone = value["path"].rstrip("/")
                files = {p: d for p, d in files.items() if p != gone and not p.startswith(gone + "/")}
        listing = json.dumps([parent, head_value.get("summary"), sorted(
            (p, hashlib.sha256(d).hexdigest()) for p, d in files.items())]).encode()
        oid = hashlib.sha1(listing).hexdigest()
        repo["commits"][oid] = files
        repo["refs"][rev] = oid
        for data in files.values():
            hub.blobs[hashlib.sha256(data).hexdigest()] = data
    return _answer(handler, 200, {"success": True, "commitOid": oid, "commitUrl": f"{hub.url}/{repo_id}/commit/{oid}",
                                  "hookOutput": ""})


def _tag(handler, repo_id, rev, body):
    hub = handler.hub
    repo = _writable_repo(handler, repo_id, "tag")
    if repo is None:
        return None
    tag = json.loads(body or b"{}").get("tag") or ""
    with hub._lock:
        commit = _commit_of(repo, rev)
        if commit is None:
            return handler._error(404, "RevisionNotFound", "Invalid rev id: " + rev, head=False)
        if tag in repo["refs"]:
            return handler._error(409, None, f"Tag {tag} already exists", head=False)
        repo["refs"][tag] = commit
        repo.setdefault("tags", set()).add(tag)
    return _answer(handler, 200, {"success": True})


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
    from capszoo._hub import resolve_weights          # the bare package: its modules, not its names
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
