"""Publish a zoo entry to the Hugging Face Hub: ``capszoo push`` and :func:`push_to_hub`.

The repository folder of an entry is built from its card (:func:`build_folder`):

* the weights in capszoo's ``.params`` format (the sha256-checked file that
  :func:`capszoo._hub.resolve_weights` finds) under the card's file name, and the
  same arrays, with the same names, as ``model.safetensors``;
* the MXNet export (``mxnet/``) and the ONNX export (``onnx/``), each reloaded in
  its runtime and compared with the net on MNIST test digits before anything is
  uploaded;
* ``config.json`` (architecture, sub-nets, input spec, preprocessing, classes,
  outputs, files) and ``README.md``, a model card with the Hub's YAML front matter
  (license, library, tags, dataset, pipeline tag and a ``model-index`` holding the
  card's test accuracy);
* the entry's figures, when the source checkout has them (``docs/figures``).

A folder is built once: ``.capszoo-build.json`` inside it records what it was built
from and every file's sha256, and a later push of the same entry reuses it while
both still hold.  That record is never uploaded.

:func:`push_to_hub` then creates the repository (``exist_ok``), uploads the folder
to ``main`` in one commit, checks that the Hub's commit holds every file with the
right content, and only then tags that commit with the revision (default: the
card's ``weights.hf_revision``).  A tag that already exists is accepted when it
holds the same files (a re-run after a failure at the tagging step), and refused
otherwise: a published tag is never moved.  Finally the entry's manifest,
``capszoo/pretrained/<name>.json``, records the repository, tag, commit and the
files' sha256 under ``"hub"`` (and points ``hf_repo_id``/``hf_revision`` at it), so
the card pins exactly what was uploaded.

Every failure is a :class:`~capszoo.errors.PublishError` (or a
:class:`~capszoo.errors.ModelNotFoundError` / :class:`~capszoo.errors.InvalidInputError`
for a bad name or option) that says what happened and what to do; running the
same command again after any failure completes the publication, and files the Hub
already holds are not sent again.

The token comes from ``token=``, else ``HF_TOKEN``, else the Hub client's login
(``hf auth login``; the token file under ``HF_HOME`` as the environment is at call
time).  huggingface_hub uploads through Xet storage when ``hf_xet`` is installed;
``HF_HUB_DISABLE_XET=1`` makes it use plain HTTP (Git LFS) uploads instead, read at
call time like capszoo's other Hub settings.

This module imports neither MXNet nor huggingface_hub until a function needs them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Callable, Dict, Optional

from ._hubrepo import COMMIT_ID, is_repo_id
from ._io import atomic_path, atomic_write_json, atomic_write_text
from .errors import InvalidInputError, PublishError

__all__ = ["push_to_hub", "build_folder", "PushResult", "manifest_dir", "manifest_path", "published_record",
           "check_repo_id", "check_tag", "SAFETENSORS_NAME", "BUILD_RECORD"]

SAFETENSORS_NAME = "model.safetensors"
BUILD_RECORD = ".capszoo-build.json"
BUILD_FORMAT = 1
#: MNIST test digits each export is verified on (``verify_count``).
DEFAULT_VERIFY_COUNT = 10_000
#: Largest difference allowed between an export and the net, per output.  The decoder's output
#: amplifies the capsules' float rounding (a few 1e-7) about thirty-fold, hence its own bound.
VERIFY_ATOL = 1e-5
VERIFY_ATOL_RECONSTRUCTION = 5e-5
#: The entry whose pictures ``scripts/make_figures.py`` draws into ``docs/figures`` itself;
#: any other entry's live in ``docs/figures/<name>/``.
_FIGURES_ROOT_ENTRY = "capsnet-mnist"
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HF_LICENSES = {"apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-sa-3.0",
                "cc-by-sa-4.0", "cc-by-nc-4.0", "gpl-3.0", "lgpl-3.0", "mpl-2.0", "unlicense", "openrail"}
_NETWORK_ERRORS = {"ConnectError", "ConnectionError", "NetworkError", "RemoteProtocolError", "ReadError",
                   "WriteError", "TimeoutException", "Timeout", "ReadTimeout", "ConnectTimeout", "ProtocolError",
                   "ConnectionResetError", "BrokenPipeError", "IncompleteRead", "ChunkedEncodingError"}


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What :func:`push_to_hub` did.

    Attributes
    ----------
    name, repo_id, revision : str
        The entry, the Hub repository and the tag.
    commit : str or None
        The tagged commit (None for a dry run).
    folder : str
        The built repository folder.
    dry_run : bool
        True when nothing was uploaded on purpose.
    files : dict
        ``{path in the repository: {"sha256": ..., "size": ...}}``.
    built : bool
        True when the folder was built now, False when an earlier build was reused.
    uploaded : bool
        True when this call sent the folder to the Hub (False: dry run, or the tag already held it).
    tagged : bool
        True when this call created the tag.
    manifest : str or None
        The manifest written (None for a dry run).
    url : str or None
        The repository's page at the tag.
    """

    name: str
    repo_id: str
    revision: str
    commit: Optional[str]
    folder: str
    files: Dict[str, dict]
    dry_run: bool
    built: bool
    uploaded: bool = False
    tagged: bool = False
    manifest: Optional[str] = None
    url: Optional[str] = None


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------

def manifest_dir() -> pathlib.Path:
    """Folder of the weights manifests, ``capszoo/pretrained`` (tests point it elsewhere)."""
    from importlib.resources import files

    return pathlib.Path(str(files("capszoo.pretrained")))


def manifest_path(name) -> pathlib.Path:
    """The manifest of entry ``name``: ``capszoo/pretrained/<name>.json``."""
    return manifest_dir() / f"{name}.json"


def published_record(name) -> Optional[dict]:
    """The ``"hub"`` record of entry ``name``'s manifest (what was pushed), or None.

    Never raises: a missing or unreadable manifest, or one without a well-formed record, gives None.
    """
    try:
        with open(manifest_path(name), encoding="utf-8") as fh:
            record = json.load(fh).get("hub")
    except (OSError, ValueError, AttributeError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("files"), dict)
            and isinstance(record.get("repo_id"), str) and isinstance(record.get("revision"), str)):
        return None
    return record


def _source_root() -> Optional[pathlib.Path]:
    root = pathlib.Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "capszoo").is_dir() else None


def figures_for(name):
    """The PNG figures of entry ``name`` in the source checkout (sorted), or [] when there are none."""
    root = _source_root()
    if root is None:
        return []
    own = root / "docs" / "figures" / name
    folder = own if own.is_dir() else (root / "docs" / "figures" if name == _FIGURES_ROOT_ENTRY else None)
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.png") if p.is_file())


def default_out_dir(name, sha256) -> pathlib.Path:
    """Where a push builds when no ``out_dir`` is given: ``$CAPSZOO_HOME/publish/<name>-<sha8>``."""
    home = os.environ.get("CAPSZOO_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(base, "capszoo")
    return pathlib.Path(os.path.expanduser(home)) / "publish" / f"{name}-{sha256[:8]}"


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

def check_repo_id(repo_id) -> str:
    """``repo_id`` when it is a Hub model repository id ``owner/name``; else InvalidInputError."""
    if not is_repo_id(repo_id):
        raise InvalidInputError(
            f"repository id {repo_id!r} is not 'owner/name': pass --repo-id as your user or organization name, "
            "a slash and the repository name, of letters, digits, '.', '_' and '-' (e.g. capszoo/capsnet-mnist)")
    return repo_id


def check_tag(tag) -> str:
    """``tag`` when it can name a Hub tag; else InvalidInputError."""
    ok = (isinstance(tag, str) and _TAG.fullmatch(tag) is not None and len(tag) <= 128 and ".." not in tag
          and not tag.endswith((".", ".lock")) and tag not in ("main", "HEAD") and not COMMIT_ID.fullmatch(tag))
    if not ok:
        raise InvalidInputError(
            f"revision {tag!r} cannot name a tag: use letters, digits, '.', '_' and '-', starting with a letter "
            "or digit (e.g. v0.2-1a2b3c4d); not 'main', 'HEAD' or a 40-digit commit id")
    return tag


def _hf_home() -> str:
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.expandvars(os.path.expanduser(home))


def _resolve_token(token) -> str:
    """The token to write with: ``token``, else ``HF_TOKEN``, else the Hub client's login."""
    if token is not None:
        if not isinstance(token, str) or not token.strip():
            raise InvalidInputError("token must be a non-empty string (a Hugging Face access token)")
        return token.strip()
    env = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if env and env.strip():
        return env.strip()
    from huggingface_hub import constants, get_token

    # The login's token file, where the environment says now (huggingface_hub fixed it at import).
    constants.HF_TOKEN_PATH = os.path.expandvars(os.path.expanduser(
        os.environ.get("HF_TOKEN_PATH") or os.path.join(_hf_home(), "token")))
    found = get_token()
    if not found:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN to an access token with write access "
            "(https://huggingface.co/settings/tokens), or log in with `hf auth login`; "
            "or pass --dry-run -o DIR to build the repository folder without uploading")
    return found


def _card_with_weights(name):
    from ._registry import get_card

    card = get_card(name)
    if card.weights is None:
        recipe = getattr(card, "recipe", None) or card.name
        raise PublishError(
            f"{card.name} has no published weights, so there is nothing to push: train them with "
            f"`capszoo train {recipe}` and publish them into the package with scripts/publish_weights.py, "
            "then push again")
    return card


# --------------------------------------------------------------------------------------------
# Building the folder
# --------------------------------------------------------------------------------------------

def _file_digest(path):
    sha, git = hashlib.sha256(), hashlib.sha1()
    size = os.path.getsize(path)
    git.update(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
            git.update(block)
    return {"sha256": sha.hexdigest(), "size": size, "git_oid": git.hexdigest()}


def _listing(folder):
    """``{relative posix path: digest}`` of every file in ``folder`` but the build record."""
    out = {}
    for p in sorted(pathlib.Path(folder).rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != BUILD_RECORD:
            out[rel] = _file_digest(p)
    return out


def _card_digest(card) -> str:
    text = json.dumps(card.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _build_key(card, verify_count):
    from . import __version__

    return {"format": BUILD_FORMAT, "entry": card.name, "card_sha256": _card_digest(card),
            "weights_sha256": card.weights.sha256, "capszoo_version": __version__,
            "verify_count": int(verify_count)}


def _reusable(folder, key) -> Optional[dict]:
    """The build record of ``folder`` when it was built from ``key`` and its files are intact."""
    try:
        with open(folder / BUILD_RECORD, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in key.items()):
        return None
    files = record.get("files")
    if not isinstance(files, dict) or _listing(folder) != files:
        return None
    return record


def _check_out_dir(folder):
    if folder.exists() and not folder.is_dir():
        raise PublishError(f"{folder} is a file, not a folder: pass -o a folder (it is created)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / BUILD_RECORD).is_file():
        raise PublishError(f"{folder} is not empty and holds no capszoo build: pass -o an empty or new folder "
                           "(everything in it would be uploaded)")


def build_folder(name, out_dir, *, data_dir=None, verify_count=DEFAULT_VERIFY_COUNT, log=None):
    """Build (or reuse) the repository folder of entry ``name`` in ``out_dir``; returns its build record.

    The folder is built in a temporary sibling folder and renamed into place, so ``out_dir`` holds
    either a complete, verified build or what it held before.

    Raises
    ------
    PublishError
        No weights; ``out_dir`` is a file or a non-empty folder that is not a capszoo build; an
        export does not match the net.
    ModelNotFoundError
        Unknown entry.
    """
    card = _card_with_weights(name)
    if isinstance(verify_count, bool) or not isinstance(verify_count, int) or not 1 <= verify_count <= 10_000:
        raise InvalidInputError(f"verify_count must be an integer from 1 to 10000, got {verify_count!r}")
    log = log or (lambda message: None)
    folder = pathlib.Path(os.path.abspath(os.path.expanduser(os.fspath(out_dir))))
    _check_out_dir(folder)
    key = _build_key(card, verify_count)
    record = _reusable(folder, key)
    if record is not None:
        log(f"reusing the build in {folder}")
        return dict(record, folder=str(folder), built=False)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.build-", dir=folder.parent))
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)  # mkdtemp makes 0700; give the usual mode
        record = dict(key, **_build_into(card, staging, data_dir=data_dir, verify_count=verify_count, log=log))
        record["files"] = _listing(staging)
        atomic_write_json(staging / BUILD_RECORD, record)
        _replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"built {folder}")
    return dict(record, folder=str(folder), built=True)


def _replace_folder(staging, folder):
    """Put ``staging`` in place of ``folder`` (absent, empty, or an earlier build)."""
    if folder.is_dir():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, folder)


def _build_into(card, folder, *, data_dir, verify_count, log):
    """Write every file of the repository into ``folder``; returns the parts of the build record."""
    from ._hub import resolve_weights
    from ._safetensors import save_safetensors
    from ._weights import read_params, sha256_file

    ws = card.weights
    source = resolve_weights(card)  # sha256-checked: the published file
    log(f"weights {source}")
    params = folder / ws.filename
    params.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(params) as tmp:
        shutil.copyfile(source, tmp)
    if sha256_file(params) != ws.sha256:
        raise PublishError(f"the copy of {source} in {folder} does not have the card's sha256 (the disk or the "
                           "file changed while copying); run the push again")
    arrays = read_params(params)
    save_safetensors(arrays, folder / SAFETENSORS_NAME,
                     metadata={"format": "np", "library": "capszoo", "model": card.name,
                               "params_file": ws.filename, "params_sha256": ws.sha256})
    log(f"wrote {SAFETENSORS_NAME} ({len(arrays)} arrays)")
    exports = _exports(card, folder, str(params), data_dir=data_dir, verify_count=verify_count, log=log)
    figures = _copy_figures(card, folder)
    atomic_write_json(folder / "config.json", _config(card, exports, len(arrays)))
    atomic_write_text(folder / "README.md", model_readme(card, exports, figures))
    return {"exports": exports, "figures": figures}


def _exports(card, folder, params, *, data_dir, verify_count, log):
    """The MXNet and ONNX exports in ``mxnet/`` and ``onnx/``, each verified against the net."""
    from ._export import export_model
    from .data import load_mnist

    out = {}
    for fmt in ("mxnet", "onnx"):
        report = export_model(card.name, fmt=fmt, out_dir=str(folder / fmt), weights=params, verify=False)
        out[fmt] = {"files": [pathlib.Path(f["path"]).relative_to(folder).as_posix() for f in report["files"]],
                    "metadata": pathlib.Path(report["metadata"]).relative_to(folder).as_posix()}
    images, labels = load_mnist("test", data_dir=data_dir)
    images, labels = images[:verify_count], labels[:verify_count]
    checks = _verify_exports(card, folder, out, params, images, labels)
    for fmt, check in checks.items():
        out[fmt]["verification"] = check
        _set_verification(folder / out[fmt]["metadata"], check)
        log(f"verified the {fmt} export on {check['num_inputs']} MNIST test digits: max abs diff "
            f"{check['max_abs_diff']:.3g}, accuracy {100 * check['accuracy']:.2f} %")
    return out


def _reference_outputs(net, x, batch=128):
    import mxnet as mx
    import numpy as np

    chunks = []
    for i in range(0, len(x), batch):
        outs = net(mx.nd.array(x[i:i + batch]))
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        chunks.append([o.asnumpy() for o in outs])
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def _verify_exports(card, folder, exports, params, images, labels):
    """Reload each export in its runtime and compare it with the net; PublishError past the bounds."""
    from . import exporters
    from ._api import get_model

    net = get_model(card.name, weights=params)
    x = exporters.as_model_input(images)
    reference = _reference_outputs(net, x)
    names = list(getattr(card, "outputs", ()) or getattr(net, "output_names", ()) or
                 [f"output{i}" for i in range(len(reference))])
    files = {fmt: [str(folder / f) for f in exports[fmt]["files"]] for fmt in exports}
    symbol = next(f for f in files["mxnet"] if f.endswith("-symbol.json"))
    weights = next(f for f in files["mxnet"] if f.endswith(".params"))
    mx_v = exporters.verify_mxnet(symbol, weights, net, x, reference=reference, labels=labels)
    onnx_v = exporters.verify_onnx(files["onnx"][0], net, x, reference=reference, labels=labels)
    diffs = {"mxnet": {f"{runtime}/{k}": v for runtime in ("symbolblock", "module") for k, v in mx_v[runtime].items()},
             "onnx": dict(onnx_v["onnxruntime"])}
    runtimes = {"mxnet": "mxnet (SymbolBlock.imports and Module)",
                "onnx": f"onnxruntime {onnx_v['onnxruntime_version']}"}
    accuracy = {"mxnet": min(mx_v["accuracy"].values()) if isinstance(mx_v.get("accuracy"), dict)
                else mx_v.get("accuracy"), "onnx": onnx_v.get("accuracy")}
    out = {}
    for fmt in ("mxnet", "onnx"):
        worst = {k: v for k, v in diffs[fmt].items()
                 if v > (VERIFY_ATOL_RECONSTRUCTION if "reconstruction" in k else VERIFY_ATOL)}
        if worst:
            raise PublishError(
                f"the {fmt} export of {card.name} differs from the net by more than the bound "
                f"({VERIFY_ATOL:g}, {VERIFY_ATOL_RECONSTRUCTION:g} for reconstructions): "
                + ", ".join(f"{k} {v:.3g}" for k, v in worst.items())
                + "; nothing was uploaded. Check the exporter (capszoo export --verify) and report a bug")
        out[fmt] = {"runtime": runtimes[fmt], "num_inputs": int(len(x)), "max_abs_diff": max(diffs[fmt].values()),
                    "per_output": diffs[fmt], "accuracy": accuracy[fmt],
                    "outputs": [{"name": n, "shape": ["N"] + list(r.shape[1:])} for n, r in zip(names, reference)]}
    return out


def _set_verification(metadata_path, check):
    with open(metadata_path, encoding="utf-8") as fh:
        meta = json.load(fh)
    meta["verification"] = {k: check[k] for k in ("runtime", "num_inputs", "max_abs_diff", "per_output",
                                                   "accuracy")}
    atomic_write_json(metadata_path, meta)


def _copy_figures(card, folder):
    out = []
    for src in figures_for(card.name):
        rel = f"figures/{src.name}"
        (folder / "figures").mkdir(exist_ok=True)
        with atomic_path(folder / rel) as tmp:
            shutil.copyfile(src, tmp)
        out.append(rel)
    return out


def _preprocessing(card):
    text = getattr(card, "preprocessing_text", None)
    if text is None:
        text = card.preprocessing if isinstance(card.preprocessing, str) else json.dumps(dict(card.preprocessing))
    spec = None if isinstance(card.preprocessing, str) else dict(card.preprocessing)
    return text, spec


def _config(card, exports, num_arrays):
    from . import __version__

    ws = card.weights
    text, spec = _preprocessing(card)
    arch = getattr(card, "arch", "") or card.name.split("-")[0]
    return {
        "library_name": "capszoo", "capszoo_version": __version__, "model": card.name,
        "display_name": card.display_name, "aliases": list(card.aliases), "task": card.task,
        "description": card.description,
        "architecture": {"family": arch, "arch_args": dict(getattr(card, "arch_args", {}) or {}),
                         "tag": getattr(card, "tag", ""), "subnets": list(card.subnets),
                         "num_params": card.num_params, "num_layers": card.num_layers},
        "input": {"name": "data", "shape": ["N"] + list(card.input_shape), "dtype": card.input_dtype,
                  "range": list(card.input_range)},
        "preprocessing": {"text": text, "spec": spec},
        "classes": [str(c) for c in card.classes],
        "outputs": exports["onnx"]["verification"]["outputs"],
        "weights": {"params": ws.filename, "safetensors": SAFETENSORS_NAME, "sha256": ws.sha256,
                    "size_bytes": ws.size_bytes, "arrays": num_arrays},
        "exports": {fmt: {"files": e["files"], "metadata": e["metadata"]} for fmt, e in exports.items()},
        "metrics": dict(card.metrics),
        "reference": card.reference, "license": card.license, "recipe": card.recipe,
    }


# --------------------------------------------------------------------------------------------
# The model card (README.md)
# --------------------------------------------------------------------------------------------

def hf_license(text) -> str:
    """The Hub's license id for a card's license text (``"Apache-2.0 (code...)"`` -> ``"apache-2.0"``)."""
    first = re.split(r"[;,(]", str(text or ""), maxsplit=1)[0].strip().lower().replace(" ", "-")
    return first if first in _HF_LICENSES else "other"


def _front_matter(card):
    from huggingface_hub import EvalResult, ModelCardData

    lic = hf_license(card.license)
    arch = getattr(card, "arch", "") or card.name.split("-")[0]
    results = None
    acc = card.metrics.get("test_accuracy")
    if acc is not None:
        results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                              dataset_type="mnist", dataset_name="MNIST", dataset_split="test",
                              metric_type="accuracy", metric_name="Test accuracy", metric_value=float(acc))]
    data = ModelCardData(
        license=lic, license_name=None if lic != "other" else card.name + "-license",
        library_name="capszoo", tags=sorted({"capszoo", "mxnet", "onnx", "safetensors", "image-classification",
                                             arch, "mnist"}),
        datasets=["mnist"], pipeline_tag="image-classification", model_name=card.name, eval_results=results)
    return data.to_yaml()


def _usage(card, exports):
    ws = card.weights
    repo, rev = ws.hf_repo_id, ws.hf_revision
    symbol = next(f for f in exports["mxnet"]["files"] if f.endswith("-symbol.json"))
    mx_params = next(f for f in exports["mxnet"]["files"] if f.endswith(".params"))
    onnx = exports["onnx"]["files"][0]
    first = exports["onnx"]["verification"]["outputs"][0]["name"]
    shape = ", ".join(str(d) for d in card.input_shape)
    return f"""## Usage

### Python (capszoo)

```python
import capszoo
model = capszoo.load("{card.name}")   # these weights, by name, sha256-checked
model("digit.png")                    # the class; prop="Probabilities" for all of them
model = capszoo.load("hf-hub:{repo}@{rev}")   # this repository and revision, by its Hub name
```

### Command line

```bash
pip install capszoo
capszoo classify {card.name} digit.png --top 3
capszoo info {card.name}
```

### Plain MXNet (no capszoo)

```python
import huggingface_hub as hf, mxnet as mx
d = hf.snapshot_download("{repo}", revision="{rev}", allow_patterns="mxnet/*") + "/"
outputs = mx.gluon.SymbolBlock.imports(d + "{symbol}", ["data"], d + "{mx_params}")(mx.nd.array(batch))
```

### onnxruntime (no MXNet)

```python
import huggingface_hub as hf, onnxruntime as ort
session = ort.InferenceSession(hf.hf_hub_download("{repo}", "{onnx}", revision="{rev}"))
{first} = session.run(None, {{"data": batch}})[0]
```

`batch` is a float32 array of shape (N, {shape}) in [{card.input_range[0]:g}, {card.input_range[1]:g}],
preprocessed as below (capszoo does it for files, PIL images and arrays). The weights are also here
as `{SAFETENSORS_NAME}` (`safetensors.numpy.load_file`) and `{ws.filename}` (capszoo's `.params`).
"""


def _training_section(card):
    t = dict(card.training)
    if not t:
        return "## Training\n\nThe card records no training details.\n"

    def stage(d):
        parts = [f"recipe `{d['recipe']}`" if d.get("recipe") else None,
                 f"seed {d['seed']}" if d.get("seed") is not None else None,
                 f"{d['epochs_run']} epochs run" if d.get("epochs_run") is not None else None,
                 f"best epoch {d['best_epoch']}" if d.get("best_epoch") is not None else None,
                 f"{d['wall_time_hours']} h wall" if d.get("wall_time_hours") is not None else None,
                 f"on {', '.join(d['ctx'])}" if d.get("ctx") else None]
        return ", ".join(p for p in parts if p)

    lines = ["## Training", "", f"- run: {stage(t)}"]
    if t.get("selection"):
        lines.append(f"- selection rule: {t['selection']}")
    if t.get("weights"):
        lines.append(f"- weights: {t['weights']}")
    init = t.get("init")
    if isinstance(init, dict):
        lines.append(f"- started from the weights `{init.get('filename', '?')}` (sha256 "
                     f"`{str(init.get('sha256', '?'))[:12]}...`): {stage(init)}")
    lines += ["", f"`capszoo train {t.get('recipe') or card.recipe}` repeats it "
                  "(`capszoo.load_recipe(...)` shows every setting)."]
    return "\n".join(lines) + "\n"


def _evaluation_section(card, exports):
    m = card.metrics
    rows = []
    if "test_accuracy" in m:
        errors = f" ({m['test_errors']:,} errors in 10,000)" if "test_errors" in m else ""
        rows.append(f"| MNIST test accuracy | {100 * m['test_accuracy']:.2f} %{errors} |")
    if "val_accuracy" in m:
        rows.append(f"| validation accuracy (held-out training images) | {100 * m['val_accuracy']:.2f} % |")
    lines = ["## Evaluation", "", "| | |", "| --- | --- |"] + rows
    lines += ["", "Each export was reloaded in its runtime and compared with the net before upload:", "",
              "| export | runtime | MNIST test digits | largest difference | accuracy on them |",
              "| --- | --- | ---: | ---: | ---: |"]
    for fmt in ("mxnet", "onnx"):
        v = exports[fmt]["verification"]
        acc = f"{100 * v['accuracy']:.2f} %" if v.get("accuracy") is not None else "-"
        lines.append(f"| {fmt} | {v['runtime']} | {v['num_inputs']:,} | {v['max_abs_diff']:.2g} | {acc} |")
    return "\n".join(lines) + "\n"


def _citation(reference):
    m = re.match(r'(?P<authors>.+?), "(?P<title>.+?)", (?P<venue>.*?)(?P<year>(?:19|20)\d\d)'
                 r'(?:, arXiv:(?P<arxiv>[\d.]+))?$', reference or "")
    text = f"## Citation\n\n{reference}\n"
    if m is None:
        return text
    authors = " and ".join(a.strip() for a in m["authors"].split(","))
    key = re.sub(r"[^a-z]", "", m["authors"].split(",")[0].split()[-1].lower()) + m["year"]
    fields = [f"  title = {{{m['title']}}}", f"  author = {{{authors}}}", f"  year = {{{m['year']}}}"]
    venue = m["venue"].strip().rstrip(",").strip()
    if venue:
        fields.append(f"  booktitle = {{{venue}}}")
    if m["arxiv"]:
        fields.append(f"  eprint = {{{m['arxiv']}}}")
    return text + "\n```bibtex\n@inproceedings{" + key + ",\n" + ",\n".join(fields) + "\n}\n```\n"


def model_readme(card, exports, figures) -> str:
    """The ``README.md`` of entry ``card``'s repository: YAML front matter, then the model card."""
    text, _ = _preprocessing(card)
    arch = getattr(card, "arch", "") or card.name.split("-")[0]
    outputs = ", ".join(f"`{o['name']}` ({', '.join(str(d) for d in o['shape'])})"
                        for o in exports["onnx"]["verification"]["outputs"])
    figs = "".join(f"![{pathlib.Path(f).stem}]({f})\n\n" for f in figures)
    return "\n".join([
        "---", _front_matter(card).strip(), "---", "",
        f"# {card.display_name}", "",
        card.description, "",
        f"The capszoo entry `{card.name}` (family `{arch}`): {card.num_params:,} parameters, "
        f"{card.num_layers} layers, sub-nets {', '.join(f'`{s}`' for s in card.subnets)}. "
        f"Weights: `{card.weights.filename}`, sha256 `{card.weights.sha256}`.", "",
        _usage(card, exports),
        "## Input and output", "",
        f"- input `data`: {card.input_dtype} (N, {', '.join(map(str, card.input_shape))}) in "
        f"[{card.input_range[0]:g}, {card.input_range[1]:g}]",
        f"- preprocessing: {text}",
        f"- classes: {', '.join(str(c) for c in card.classes)}",
        f"- outputs: {outputs}", "",
        _training_section(card),
        _evaluation_section(card, exports),
        ("## Figures\n\n" + figs) if figures else "",
        "## Limitations", "",
        "- Trained and tested on MNIST only: isolated handwritten digits, centred, 28x28 grayscale. Other "
        "images must be preprocessed as above (capszoo's encoder does it); images of anything else still get "
        "one of the classes.",
        "- The test accuracy was measured once on the 10,000 MNIST test digits; a few errors either way are "
        "within noise.",
        "- Class probabilities are " + ("capsule lengths in [0, 1) that need not sum to 1" if arch == "capsnet"
                                         else "the net's output") + "; they are not calibrated.",
        "- MXNet 1.9.1 needs Python 3.11 or older and numpy < 1.24; the ONNX export runs wherever onnxruntime "
        "does.", "",
        _citation(card.reference),
        "## License", "", f"{card.license}.", "",
    ])


# --------------------------------------------------------------------------------------------
# Talking to the Hub
# --------------------------------------------------------------------------------------------

def _chain(exc):
    seen = []
    while exc is not None and exc not in seen and len(seen) < 8:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _status_of(exc):
    for e in _chain(exc):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):
            return status, e
    return None, exc


def _http_detail(response, status) -> str:
    """``HTTP 500 Internal Server Error to POST /api/...: <the Hub's message>``."""
    import http

    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    text = f"HTTP {status} {phrase}"
    request = getattr(response, "request", None)
    url = str(getattr(request, "url", "") or "")
    if url:
        text += f" to {getattr(request, 'method', '')} {url}".replace("  ", " ")
    headers = getattr(response, "headers", None) or {}
    message = " ".join(str(headers.get("X-Error-Message") or "").split())[:200]
    return text + (f": {message}" if message else "")


def _reason(exc, repo_id):
    """``(what happened, what to do)`` for a failed Hub request."""
    status, carrier = _status_of(exc)
    owner = repo_id.split("/")[0]
    if status == 401:
        return ("the Hub did not accept the token (401 Unauthorized): it is invalid, expired or revoked",
                "Log in again with `hf auth login`, or set HF_TOKEN to a valid token with write access")
    if status == 403:
        return (f"the token may not write to {owner} (403 Forbidden)",
                f"Use a token with write access to {owner} (a fine-grained token needs write permission on it), "
                "or push to a namespace you own")
    if status == 404:
        return (f"{repo_id} was not found (404 Not Found)",
                "Check --repo-id; a repository your account cannot see answers 404 too: log in with an account "
                "that can write to it")
    if status == 409:
        return ("the Hub answered 409 Conflict: the repository changed during the push (another push to it?)",
                "Run the same command again")
    if isinstance(status, int):
        return (f"the Hub answered {_http_detail(carrier.response, status)}",
                "Run the same command again; if it keeps failing, try later (status.huggingface.co)")
    names = {type(e).__name__ for e in _chain(exc)}
    if names & _NETWORK_ERRORS:
        detail = " ".join(str(_chain(exc)[-1]).split())[:200] or "connection broken"
        return (f"the connection to the Hub broke ({detail})",
                "Check the network (and HF_ENDPOINT) and run the same command again")
    detail = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {detail}", "Run the same command again; report a bug if it persists"


@contextlib.contextmanager
def _hub_step(step, name, repo_id):
    """Turn any failure of a Hub request into a PublishError naming the step and the remedy.

    Every step runs before the tag exists (tagging is the last one), hence the note.
    """
    try:
        yield
    except PublishError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure of the client becomes a PublishError
        what, remedy = _reason(exc, repo_id)
        raise PublishError(f"cannot publish {name} to {repo_id}: {step} failed: {what}. {remedy}. Nothing was "
                           "tagged, so nothing is published yet; files the Hub received are kept and are not sent "
                           "again on the next run.") from exc


def _remote_mismatches(api, repo_id, revision, files):
    """Paths of ``files`` that the Hub's ``revision`` lacks or holds with other content."""
    remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=revision, recursive=True)
              if hasattr(f, "blob_id")}
    bad = []
    for path, digest in files.items():
        f = remote.get(path)
        lfs = getattr(f, "lfs", None) if f is not None else None
        same = f is not None and ((lfs is not None and lfs.sha256 == digest["sha256"] and lfs.size == digest["size"])
                                  or (lfs is None and f.blob_id == digest["git_oid"]))
        if not same:
            bad.append(path)
    return bad


def _existing_tag(api, repo_id, tag):
    refs = api.list_repo_refs(repo_id)
    for ref in refs.tags:
        if ref.name == tag:
            return ref.target_commit
    if any(ref.name == tag for ref in refs.branches):
        raise PublishError(f"{repo_id} has a branch named {tag!r}: a tag of that name would be ambiguous; "
                           "choose another --revision")
    return None


def _tag_conflict(name, repo_id, tag, bad):
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return PublishError(
        f"cannot publish {name} to {repo_id}: the tag {tag} already exists and holds other content (differing "
        f"or missing: {shown}); a published tag is never moved. Publish under another tag "
        f"(--revision ...), or, if that tag was a mistake, delete it (hf repos tag delete {repo_id} {tag}) and "
        "push again")


def _upload_and_tag(api, card, repo_id, tag, folder, files, *, private, log):
    """Create the repo, upload, check, tag; returns ``(commit, uploaded, tagged)``."""
    from . import __version__

    name = card.name
    with _hub_step("creating the repository", name, repo_id):
        api.create_repo(repo_id, private=True if private else None, exist_ok=True)  # None: the Hub's default
    with _hub_step(f"looking up the tag {tag}", name, repo_id):
        existing = _existing_tag(api, repo_id, tag)
        if existing is not None:
            bad = _remote_mismatches(api, repo_id, existing, files)
            if bad:
                raise _tag_conflict(name, repo_id, tag, bad)
            log(f"{repo_id}@{tag} already holds these files (commit {existing})")
            return existing, False, False
    with _hub_step("uploading the files", name, repo_id):
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision="main",
                                 ignore_patterns=[BUILD_RECORD],
                                 commit_message=f"capszoo {name} {tag} (capszoo {__version__})",
                                 commit_description=f"Weights {card.weights.filename} (sha256 "
                                                    f"{card.weights.sha256}) and their exports, model card "
                                                    "and configuration.")
        commit = info.oid
    with _hub_step("checking the uploaded files", name, repo_id):
        bad = _remote_mismatches(api, repo_id, commit, files)
    if bad:
        raise PublishError(f"cannot publish {name} to {repo_id}: after the upload, commit {commit} lacks or "
                           f"differs in {', '.join(bad)}. Nothing was tagged; run the same command again")
    log(f"uploaded {len(files)} files to {repo_id} (commit {commit})")
    try:
        with _hub_step(f"creating the tag {tag}", name, repo_id):
            api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"capszoo {name}")
    except PublishError as exc:
        status, _ = _status_of(exc.__cause__)
        if status != 409:
            raise
        with _hub_step(f"checking the existing tag {tag}", name, repo_id):
            existing = _existing_tag(api, repo_id, tag)
            bad = [] if existing is None else _remote_mismatches(api, repo_id, existing, files)
        if existing is None or bad:
            raise _tag_conflict(name, repo_id, tag, bad or ["the tag"]) from None
        return existing, True, False
    return commit, True, True


def _write_manifest(card, repo_id, tag, commit, files, *, private):
    """Record the publication in the entry's manifest; returns its path."""
    from . import __version__

    path = manifest_path(card.name)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        ws = card.weights
        manifest = {"filename": ws.filename, "sha256": ws.sha256, "size_bytes": ws.size_bytes,
                    "hf_repo_id": ws.hf_repo_id, "hf_revision": ws.hf_revision, "bundled": ws.bundled,
                    "metrics": dict(card.metrics), "training": dict(card.training)}
    except (OSError, ValueError) as exc:
        raise PublishError(f"{card.name} is published as {repo_id}@{tag} (commit {commit}), but its manifest "
                           f"{path} cannot be read ({exc}); restore it (git checkout) and push again to record "
                           "the publication") from None
    if manifest.get("sha256") != card.weights.sha256:
        raise PublishError(f"{card.name} is published as {repo_id}@{tag} (commit {commit}), but its manifest "
                           f"{path} now describes other weights (sha256 {manifest.get('sha256')}): it changed "
                           "since capszoo was imported. Push again in a new process to record the publication")
    manifest["hf_repo_id"], manifest["hf_revision"] = repo_id, tag
    manifest["hub"] = {"repo_id": repo_id, "revision": tag, "commit": commit, "private": bool(private),
                       "capszoo_version": __version__,
                       "files": {p: {"sha256": d["sha256"], "size": d["size"]} for p, d in files.items()}}
    try:
        atomic_write_json(path, manifest)
    except OSError as exc:
        raise PublishError(f"{card.name} is published as {repo_id}@{tag} (commit {commit}), but its manifest "
                           f"{path} cannot be written ({exc.strerror or exc}); push again from a writable "
                           "source checkout (pip install -e .) to record the publication") from None
    return str(path)


def push_to_hub(name, *, repo_id, revision=None, private=False, dry_run=False, out_dir=None, token=None,
                data_dir=None, verify_count=DEFAULT_VERIFY_COUNT, log: Optional[Callable[[str], None]] = None
                ) -> PushResult:
    """Build entry ``name``'s repository folder and publish it on the Hugging Face Hub.

    Parameters
    ----------
    name : str
        A zoo entry (name or alias) with published weights.
    repo_id : str
        ``owner/name`` of the Hub model repository (created when missing).
    revision : str, optional
        The tag to create on the uploaded commit; default the card's ``weights.hf_revision``.
    private : bool
        Create the repository private (an existing repository keeps its visibility).
    dry_run : bool
        Build the folder only: no token needed, nothing uploaded, the manifest untouched.
    out_dir : str or os.PathLike, optional
        Where to build (empty, new, or an earlier build, which is reused when still valid); default
        ``$CAPSZOO_HOME/publish/<name>-<sha8>``.
    token : str, optional
        A Hub token with write access; default ``HF_TOKEN``, else the login of ``hf auth login``.
    data_dir : str, optional
        The MNIST folder the exports are verified with (default: capszoo's download cache).
    verify_count : int
        MNIST test digits each export is verified on (1 to 10,000).
    log : callable, optional
        Called with a line of progress at each step.

    Returns
    -------
    PushResult

    Raises
    ------
    ModelNotFoundError
        Unknown entry.
    InvalidInputError
        ``repo_id`` is not ``owner/name``, or ``revision`` cannot name a tag.
    PublishError
        No weights, no token, offline mode, an export that does not match the net, any failure of
        the Hub (401, 403, 404, 409, 5xx, a broken connection), a tag that already exists with other
        content, or a manifest that cannot be written.  Each says what to do; nothing is tagged
        before every file is on the Hub, and running again completes the publication.
    """
    log = log or (lambda message: None)
    card = _card_with_weights(name)
    check_repo_id(repo_id)
    tag = check_tag(revision if revision is not None else card.weights.hf_revision)
    if not isinstance(private, bool) or not isinstance(dry_run, bool):
        raise InvalidInputError("private and dry_run must be True or False")
    from ._hub import hub_offline

    if not dry_run:
        if hub_offline():
            raise PublishError("offline mode is on (HF_HUB_OFFLINE): unset it (or set it to 0) to push, or "
                               "pass --dry-run -o DIR to build the folder only")
        token = _resolve_token(token)
    folder = out_dir if out_dir is not None else default_out_dir(card.name, card.weights.sha256)
    build = build_folder(card.name, folder, data_dir=data_dir, verify_count=verify_count, log=log)
    files = dict(build["files"])
    common = dict(name=card.name, repo_id=repo_id, revision=tag, folder=build["folder"], built=build["built"],
                  files={p: {"sha256": d["sha256"], "size": d["size"]} for p, d in files.items()})
    if dry_run:
        return PushResult(commit=None, dry_run=True, **common)
    commit, uploaded, tagged = _publish(card, repo_id, tag, build["folder"], files, token=token, private=private,
                                        log=log)
    manifest = _write_manifest(card, repo_id, tag, commit, files, private=private)
    log(f"recorded {repo_id}@{tag} (commit {commit}) in {manifest}")
    from ._hub import hub_endpoint

    return PushResult(commit=commit, dry_run=False, uploaded=uploaded, tagged=tagged, manifest=manifest,
                      url=f"{hub_endpoint()}/{repo_id}/tree/{tag}", **common)


def _publish(card, repo_id, tag, folder, files, *, token, private, log):
    from ._hub import _sync_hub_constants, hub_endpoint
    from . import __version__

    _sync_hub_constants()
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_endpoint(), token=token, library_name="capszoo", library_version=__version__)
    return _upload_and_tag(api, card, repo_id, tag, folder, files, private=private, log=log)
