"""Hardening: every bad weights file we could think of, through every surface that reads one.

Each entry of :data:`CASES` is a bad ``.params`` file (built byte by byte; the
encoder below reproduces MXNet's own ``NDArray::Save`` output exactly, see
``test_encoder_writes_what_mxnet_writes``).  Each goes through the three
surfaces of :data:`SURFACES`:

``read_params``  ``capszoo._weights.read_params`` and then ``check_params``
                 against the CapsNet's parameter shapes (the library layer);
``load``         ``capszoo.load("capsnet-mnist", weights=path)``;
``cli``          ``capszoo classify capsnet-mnist x.png --weights path`` (click's CliRunner).

Each must end in the capszoo error the case names (``WeightsFormatError`` for
anything that is not a well-formed weights file of the CapsNet), with a message
matching the case's pattern (it names the problem), raised by capszoo's own code
(never an MXNet ``Check failed`` or a numpy error escaping), and the CLI must
print one ``Error: ...`` line and exit 1 (2 for click's own usage errors), never
a traceback.  Cases marked ``huge`` declare absurd sizes (2^40 elements, 2^62
arrays or names...): they must fail fast, and ``test_huge_declarations_under_rlimit_as``
runs them again in a process whose address space is capped at 2 GB.

Every case goes through ``read_params``; ``load`` and the CLI read the file with
``read_params`` too and only wrap its error, so through them, and again under
``python -O`` (which strips Gluon's ``assert`` validation: this file run as a
script, :func:`test_same_errors_under_python_O`), go the cases of :data:`SAMPLE`:
one per failure mode (:func:`failure_mode`: the check of the reader that refuses
it), ~70 of the ~240.  :func:`test_cases_of_a_mode_fail_alike` checks that the
cases left out fail in ``read_params`` exactly as their mode's case does.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import pickle
import re
import struct
import subprocess
import sys
import time
import traceback
import zipfile
import gzip

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harden_summary import harden  # noqa: E402
REPO = HERE.parent
CAPSZOO_DIR = REPO / "capszoo"

SURFACES = ("read_params", "load", "cli")

# ---------------------------------------------------------------------------------------------
# An encoder of MXNet's .params format (NDArray::Save of a named list, MXNet 1.x)

LIST_MAGIC = 0x112
V2, V3 = 0xF993FAC9, 0xF993FACA
FLAGS = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2, np.dtype(np.uint8): 3,
         np.dtype(np.int32): 4, np.dtype(np.int8): 5, np.dtype(np.int64): 6}


def nd_record(shape, flag=0, data=b"", *, magic=V2, stype=0, ndim=None, dev=(1, 0)):
    """One NDArray: magic, storage type, shape (ndim + int64 dims), context, dtype flag, data."""
    nd = len(shape) if ndim is None else ndim
    return (struct.pack("<Iii", magic, stype, nd) + struct.pack(f"<{len(shape)}q", *shape)
            + struct.pack("<iii", dev[0], dev[1], flag) + data)


def array_record(a, **kw):
    a = np.ascontiguousarray(a)
    return nd_record(a.shape, FLAGS[a.dtype], a.tobytes(), **kw)


def params_file(records, names, *, magic=LIST_MAGIC, count=None, n_names=None):
    """A whole file: header, the records, the names (str or raw bytes)."""
    out = [struct.pack("<QQQ", magic, 0, len(records) if count is None else count), *records,
           struct.pack("<Q", len(names) if n_names is None else n_names)]
    for n in names:
        b = n.encode("utf-8") if isinstance(n, str) else n
        out += [struct.pack("<Q", len(b)), b]
    return b"".join(out)


def encode(arrays):
    """``{name: numpy array}`` -> the bytes ``mx.nd.save`` writes for it."""
    return params_file([array_record(a) for a in arrays.values()], list(arrays))


def field_offsets(data):
    """Start offsets of every field of a well-formed file (for truncations at header boundaries)."""
    offs = [0, 8, 16, 24]
    pos = 24
    (count,) = struct.unpack_from("<Q", data, 16)
    for _ in range(count):
        _, _, ndim = struct.unpack_from("<Iii", data, pos)
        offs += [pos, pos + 4, pos + 8, pos + 12]
        dims = struct.unpack_from(f"<{ndim}q", data, pos + 12)
        pos += 12 + 8 * ndim
        offs += [pos, pos + 4, pos + 8]
        flag = struct.unpack_from("<i", data, pos + 8)[0]
        pos += 12
        offs.append(pos)
        pos += int(np.prod(dims)) * np.dtype({v: k for k, v in FLAGS.items()}[flag]).itemsize
    offs.append(pos)
    (n_names,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    for _ in range(n_names):
        offs.append(pos)
        (length,) = struct.unpack_from("<Q", data, pos)
        offs.append(pos + 8)
        pos += 8 + length
    assert pos == len(data)
    return offs


# The "real small file": what Gluon's save_parameters writes for a two-layer perceptron
# (checked byte for byte against MXNet in test_encoder_writes_what_mxnet_writes).
def small_arrays():
    rng = np.random.default_rng(997)
    return {"0.weight": rng.standard_normal((64, 128)).astype(np.float32),
            "0.bias": rng.standard_normal(64).astype(np.float32),
            "1.weight": rng.standard_normal((10, 64)).astype(np.float32),
            "1.bias": rng.standard_normal(10).astype(np.float32)}


SMALL = encode(small_arrays())
_BOUNDARIES = {o + d for o in field_offsets(SMALL) for d in (-1, 0, 1)}
TRUNCATE_AT = sorted(k for k in set(range(0, len(SMALL), 997)) | _BOUNDARIES if 0 <= k < len(SMALL))

# ---------------------------------------------------------------------------------------------
# The cases


@dataclasses.dataclass
class Ctx:
    """What case builders need: the CapsNet's parameter shapes and a scratch folder."""

    shapes: dict
    _zeros: dict = None

    def zeros(self):
        """Zero-filled float32 arrays of the CapsNet's names and shapes (a fresh dict each time)."""
        if self._zeros is None:
            self._zeros = {k: np.zeros(s, np.float32) for k, s in self.shapes.items()}
        return dict(self._zeros)

    def capsnet(self, **changes):
        """CapsNet-shaped bytes with some arrays replaced (None drops one)."""
        arrays = self.zeros()
        for k, v in changes.items():
            k = k.replace("__", ".")
            if v is None:
                del arrays[k]
            else:
                arrays[k] = v
        return encode(arrays)


@dataclasses.dataclass
class Case:
    id: str
    make: object                 # (ctx, path) -> None, writes the bad file at path
    pattern: str                 # regex the message must match
    error: str = "WeightsFormatError"
    huge: bool = False           # declares an absurd size: must fail fast, never allocate it
    capsnet: bool = False        # needs the 33 MB CapsNet-shaped body
    per_surface: dict = dataclasses.field(default_factory=dict)   # surface -> (error, pattern, cli exit code)
    what: str = ""

    def expect(self, surface):
        error, pattern, code = self.error, self.pattern, 1
        if surface in self.per_surface:
            error, pattern, code = self.per_surface[surface]
        return error, pattern, code


def _bytes(fn):
    def make(ctx, path):
        pathlib.Path(path).write_bytes(fn(ctx))
    return make


def _pickle_file(ctx):
    return pickle.dumps({k: v for k, v in small_arrays().items()}, protocol=4)


def _zip_file(ctx):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.params", SMALL)
    return buf.getvalue()


def _npz_file(ctx):
    buf = io.BytesIO()
    np.savez(buf, **{k.replace(".", "_"): v for k, v in small_arrays().items()})
    return buf.getvalue()


def _onnx_file(ctx):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["data"], ["out"])], "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _sparse_real(ctx):
    """A real file written by MXNet: one row_sparse array (storage type 1)."""
    rec = (struct.pack("<Iii", V2, 1, 2) + struct.pack("<2q", 2, 3)   # storage shape (2, 3)
           + struct.pack("<i", 2) + struct.pack("<2q", 4, 3)          # shape (4, 3)
           + struct.pack("<iii", 1, 0, 0)                              # cpu(0), float32
           + struct.pack("<i", 6) + struct.pack("<i", 1) + struct.pack("<q", 2)  # aux: int64 (2,)
           + np.ones((2, 3), np.float32).tobytes() + np.array([0, 2], np.int64).tobytes())
    return params_file([rec], ["x"])


def _fifo(ctx, path):
    os.mkfifo(path)


def _directory(ctx, path):
    os.mkdir(path)


def _missing(ctx, path):
    pass


def _dangling_link(ctx, path):
    os.symlink(os.path.join(os.path.dirname(path), "gone", "weights.params"), path)


def _dev_zero_link(ctx, path):
    os.symlink("/dev/zero", path)


def _sparse_1gb(ctx, path):
    with open(path, "wb") as fh:       # a hole: no disk used
        fh.truncate((1 << 30) + 1)


def _one(shape, flag=0, data=b"", names=("x",), **kw):
    return params_file([nd_record(shape, flag, data, **kw)], list(names))


def _names_tail(names_section):
    """SMALL with its names section replaced by raw bytes."""
    records = [array_record(a) for a in small_arrays().values()]
    head = struct.pack("<QQQ", LIST_MAGIC, 0, len(records)) + b"".join(records)
    return head + names_section


def _nan_at(ctx, name, value):
    a = np.zeros(ctx.shapes[name], np.float32)
    a.flat[len(a.flat) // 2] = value
    return ctx.capsnet(**{name.replace(".", "__"): a})


TRUNC = r"too short|truncated|more than the file can hold"
NOT_PARAMS = r"wrong magic number"

CASES = [
    # -- not a .params file at all
    Case("empty", _bytes(lambda c: b""), r"0 bytes is too short"),
    Case("one-byte", _bytes(lambda c: b"\x12"), r"1 bytes is too short"),
    Case("23-bytes", _bytes(lambda c: SMALL[:23]), r"23 bytes is too short"),
    Case("random-1k", _bytes(lambda c: np.random.default_rng(1).bytes(1024)), NOT_PARAMS),
    Case("random-64k", _bytes(lambda c: np.random.default_rng(2).bytes(65536)), NOT_PARAMS),
    Case("zeros-4k", _bytes(lambda c: bytes(4096)), r"wrong magic number 0x0 "),
    Case("wrong-magic-0x113", _bytes(lambda c: struct.pack("<Q", 0x113) + SMALL[8:]), r"wrong magic number 0x113"),
    Case("byteswapped-magic", _bytes(lambda c: struct.pack(">Q", LIST_MAGIC) + SMALL[8:]), NOT_PARAMS),
    Case("pickle-renamed", _bytes(_pickle_file), NOT_PARAMS, what="a pickle of numpy arrays renamed .params"),
    Case("zip-renamed", _bytes(_zip_file), NOT_PARAMS, what="a zip holding a .params file"),
    Case("npz-renamed", _bytes(_npz_file), NOT_PARAMS),
    Case("gzip-of-params", _bytes(lambda c: gzip.compress(SMALL, mtime=0)), NOT_PARAMS),
    Case("onnx-renamed", _bytes(_onnx_file), NOT_PARAMS),
    Case("html-error-page", _bytes(lambda c: b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"),
         NOT_PARAMS),
    Case("symbol-json-renamed", _bytes(lambda c: b'{"nodes": [], "arg_nodes": [], "heads": []}\n'), NOT_PARAMS),
    Case("git-lfs-pointer", _bytes(lambda c: b"version https://git-lfs.github.com/spec/v1\noid sha256:"
                                             + b"0" * 64 + b"\nsize 32568129\n"), NOT_PARAMS),
    # -- trailing junk
    Case("trailing-1-byte", _bytes(lambda c: SMALL + b"\0"), r"1 unexpected bytes after the end"),
    Case("trailing-junk-100", _bytes(lambda c: SMALL + b"junk" * 25), r"100 unexpected bytes after the end"),
    Case("two-files-concatenated", _bytes(lambda c: SMALL + SMALL), r"unexpected bytes after the end"),
    # -- absurd counts and shapes (must be refused before anything is allocated)
    Case("count-2^62", _bytes(lambda c: struct.pack("<QQQ", LIST_MAGIC, 0, 1 << 62) + SMALL[24:]),
         r"declares 4,611,686,018,427,387,904 arrays, more than the file can hold", huge=True),
    Case("count-2^64-1", _bytes(lambda c: struct.pack("<QQQ", LIST_MAGIC, 0, (1 << 64) - 1)),
         r"arrays, more than the file can hold", huge=True),
    Case("shape-2^40-elements", _bytes(lambda c: _one((1 << 20, 1 << 20))),
         r"array 0 declares shape \(1048576, 1048576\), larger than the file", huge=True),
    Case("shape-2^62", _bytes(lambda c: _one((1 << 62,))), r"larger than the file", huge=True),
    Case("shape-int64-max", _bytes(lambda c: _one(((1 << 63) - 1, (1 << 63) - 1))), r"larger than the file", huge=True),
    Case("shape-zero-times-2^62", _bytes(lambda c: _one((0, 1 << 62))), r"larger than the file", huge=True,
         what="a zero dimension hides a huge one from the element count"),
    Case("shape-zero-times-int64-max-8d", _bytes(lambda c: _one((0,) + ((1 << 63) - 1,) * 7)),
         r"larger than the file", huge=True),
    Case("shape-2^40-with-data-claimed-float64", _bytes(lambda c: _one((1 << 40,), flag=1)),
         r"larger than the file", huge=True),
    Case("names-count-2^62", _bytes(lambda c: _names_tail(struct.pack("<Q", 1 << 62))),
         r"4 arrays but 4611686018427387904 names", huge=True),
    Case("name-length-2^62", _bytes(lambda c: _names_tail(struct.pack("<QQ", 4, 1 << 62))),
         r"name 0 is 4,611,686,018,427,387,904 bytes long", huge=True),
    Case("name-length-4097", _bytes(lambda c: _names_tail(struct.pack("<QQ", 4, 4097) + b"a" * 4097)),
         r"name 0 is 4,097 bytes long"),
    Case("ndim-2^31-1", _bytes(lambda c: struct.pack("<QQQ", LIST_MAGIC, 0, 1) + struct.pack("<Iii", V2, 0, 2**31 - 1)),
         r"array 0 declares 2147483647 dimensions", huge=True),
    # -- malformed headers
    Case("ndim-0", _bytes(lambda c: _one((), ndim=0)), r"array 0 declares 0 dimensions"),
    Case("ndim-9", _bytes(lambda c: _one((1,) * 9, data=b"\0" * 4)), r"declares 9 dimensions"),
    Case("ndim-negative", _bytes(lambda c: _one((), ndim=-1)), r"declares -1 dimensions"),
    Case("negative-dimension", _bytes(lambda c: _one((4, -1))), r"negative dimension in shape \(4, -1\)"),
    Case("array-magic-wrong", _bytes(lambda c: _one((1,), data=b"\0" * 4, magic=0xDEADBEEF)),
         r"array 0 has magic 0xdeadbeef"),
    Case("sparse-row-sparse", _bytes(_sparse_real), r"array 0 has sparse storage type 1",
         what="a row_sparse array as MXNet writes it"),
    Case("sparse-csr", _bytes(lambda c: _one((2, 2), data=b"\0" * 16, stype=2)), r"sparse storage type 2"),
    Case("storage-type-undefined", _bytes(lambda c: _one((2, 2), data=b"\0" * 16, stype=-1)),
         r"sparse storage type -1"),
    Case("dtype-unknown-99", _bytes(lambda c: _one((1,), flag=99, data=b"\0" * 4)), r"dtype code 99"),
    Case("dtype-negative", _bytes(lambda c: _one((1,), flag=-1, data=b"\0" * 4)), r"dtype code -1"),
    Case("dtype-bool", _bytes(lambda c: _one((4,), flag=7, data=b"\0" * 4)), r"dtype bool, which capszoo weights never use"),
    Case("dtype-bfloat16", _bytes(lambda c: _one((2,), flag=12, data=b"\0" * 4)), r"dtype bfloat16"),
    Case("unnamed-list", _bytes(lambda c: params_file([array_record(np.zeros(3, np.float32))], [])),
         r"1 arrays but 0 names", what="mx.nd.save of a list"),
    Case("more-names-than-arrays", _bytes(lambda c: params_file([array_record(np.zeros(3, np.float32))], ["a", "b"])),
         r"1 arrays but 2 names"),
    Case("duplicate-names", _bytes(lambda c: params_file([array_record(np.zeros(3, np.float32))] * 2, ["x", "x"])),
         r"parameter 'x' appears twice"),
    Case("duplicate-after-arg-prefix", _bytes(lambda c: params_file([array_record(np.zeros(3, np.float32))] * 2,
                                                                     ["arg:x", "x"])), r"parameter 'x' appears twice"),
    Case("non-utf8-name", _bytes(lambda c: params_file([array_record(np.zeros(3, np.float32))], [b"\xff\xfeweight"])),
         r"name 0 is not UTF-8"),
    Case("name-truncated", _bytes(lambda c: _names_tail(struct.pack("<QQ", 4, 40) + b"abc")), r"truncated name 0"),
    # -- well-formed files that do not fit the CapsNet (need its 33 MB of shapes)
    Case("empty-list", _bytes(lambda c: params_file([], [])), r"missing ReLUConv1\.weight, .*Reconstruct\.2\.bias"),
    Case("other-net", _bytes(lambda c: SMALL), r"missing ReLUConv1\.weight.*; unexpected 0\.weight, 0\.bias"),
    Case("missing-parameter", _bytes(lambda c: c.capsnet(Reconstruct__2__bias=None)),
         r"do not fit this net: missing Reconstruct\.2\.bias", capsnet=True),
    Case("extra-parameter", _bytes(lambda c: c.capsnet(Extra__weight=np.zeros(3, np.float32))),
         r"unexpected Extra\.weight", capsnet=True),
    Case("wrong-shape", _bytes(lambda c: c.capsnet(PrimaryCaps__bias=np.zeros(255, np.float32))),
         r"PrimaryCaps\.bias has shape \(255,\), expected \(256,\)", capsnet=True),
    Case("transposed", _bytes(lambda c: c.capsnet(Reconstruct__1__weight=np.zeros((512, 1024), np.float32))),
         r"Reconstruct\.1\.weight has shape \(512, 1024\), expected \(1024, 512\)", capsnet=True),
    Case("extra-axis", _bytes(lambda c: c.capsnet(ReLUConv1__bias=np.zeros((256, 1), np.float32))),
         r"ReLUConv1\.bias has shape \(256, 1\)", capsnet=True),
    Case("gluon-prefixed-names", _bytes(lambda c: encode({"capsnet0_" + k.replace(".", "_"): v
                                                          for k, v in c.zeros().items()})),
         r"missing ReLUConv1\.weight.*unexpected capsnet0_ReLUConv1_weight", capsnet=True,
         what="the deprecated save_params naming"),
    Case("float64-values", _bytes(lambda c: c.capsnet(ReLUConv1__bias=np.zeros(256, np.float64))),
         r"ReLUConv1\.bias has dtype float64, expected float32", capsnet=True),
    Case("float16-values", _bytes(lambda c: c.capsnet(ReLUConv1__weight=np.zeros((256, 1, 9, 9), np.float16))),
         r"ReLUConv1\.weight has dtype float16, expected float32", capsnet=True),
    Case("int32-values", _bytes(lambda c: c.capsnet(Reconstruct__0__bias=np.zeros(512, np.int32))),
         r"Reconstruct\.0\.bias has dtype int32", capsnet=True),
    Case("nan-value", _bytes(lambda c: _nan_at(c, "PrimaryCaps.weight", np.nan)),
         r"PrimaryCaps\.weight holds 1 NaN/inf values", capsnet=True),
    Case("inf-value", _bytes(lambda c: _nan_at(c, "Reconstruct.2.bias", np.inf)),
         r"Reconstruct\.2\.bias holds 1 NaN/inf values", capsnet=True),
    Case("minus-inf-value", _bytes(lambda c: _nan_at(c, "PrimaryPredVects.weight", -np.inf)),
         r"PrimaryPredVects\.weight holds 1 NaN/inf values", capsnet=True),
    Case("all-nan", _bytes(lambda c: c.capsnet(ReLUConv1__bias=np.full(256, np.nan, np.float32))),
         r"ReLUConv1\.bias holds 256 NaN/inf values", capsnet=True),
    Case("capsnet-truncated-last-byte", _bytes(lambda c: c.capsnet()[:-1]), r"truncated name 10", capsnet=True),
    Case("capsnet-truncated-mid-data", _bytes(lambda c: c.capsnet()[:20_000_000]),
         r"array 2 declares shape \(256, 256, 9, 9\), larger than the file", capsnet=True),
    # -- not a regular file
    Case("directory", _directory, r"not a regular file",
         per_surface={"load": ("WeightsNotAvailableError", r"is not a regular file \(a folder\)", 1),
                      "cli": ("UsageError", r"is a directory", 2)}),
    Case("missing-file", _missing, r"no such file; check the path",
         per_surface={"load": ("WeightsNotAvailableError", r"does not exist; check the path", 1),
                      "cli": ("WeightsNotAvailableError", r"does not exist; check the path", 1)}),
    Case("dangling-symlink", _dangling_link, r"no such file; check the path",
         per_surface={"load": ("WeightsNotAvailableError", r"does not exist; check the path", 1),
                      "cli": ("WeightsNotAvailableError", r"does not exist; check the path", 1)}),
    Case("fifo", _fifo, r"not a regular file",
         per_surface={"load": ("WeightsNotAvailableError", r"is not a regular file \(a device, pipe or socket\)", 1),
                      "cli": ("WeightsNotAvailableError", r"is not a regular file \(a device, pipe or socket\)", 1)},
         what="a named pipe: reading it would block forever"),
    Case("symlink-to-dev-zero", _dev_zero_link, r"not a regular file",
         per_surface={"load": ("WeightsNotAvailableError", r"is not a regular file", 1),
                      "cli": ("WeightsNotAvailableError", r"is not a regular file", 1)}),
    Case("sparse-file-1GB+1", _sparse_1gb, r"1,073,741,825 bytes is larger than any capszoo weights file",
         huge=True, what="a 1 GB hole: refused by its size, never read"),
] + [
    Case(f"truncated-at-{k}", _bytes(lambda c, k=k: SMALL[:k]), TRUNC) for k in TRUNCATE_AT
]

CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


def _truncation_message(case):
    """The message of capszoo's reader for a truncated-at-K case (its bytes are SMALL[:K])."""
    from capszoo._weights import parse_params
    from capszoo.errors import WeightsFormatError
    try:
        parse_params(SMALL[:int(case.id.rsplit("-", 1)[1])], "x.params")
    except WeightsFormatError as exc:
        return str(exc)
    raise AssertionError(f"{case.id} is read without error")


def _normalized(message):
    """``message`` with its numbers as # and its shapes as (#)."""
    numbers = re.sub(r"0x[0-9a-f]+|\d+(,\d{3})*", "#", message)
    return re.sub(r"\(#(, #)*,?\)", "(#)", numbers)


def failure_mode(case):
    """What refuses ``case``: for a truncation of SMALL, the check its bytes trip (the reader's message with
    its numbers left out: "truncated array # shape at byte #..."); for any other case, the error and
    pattern it expects on each surface (cases sharing them are refused by the same check)."""
    if case.id.startswith("truncated-at-"):
        return _normalized(_truncation_message(case))
    return (case.error, case.pattern, tuple(sorted(case.per_surface.items())))


def _sample():
    first = {}
    for case in CASES:
        first.setdefault(failure_mode(case), case)
    return [c for c in CASES if first[failure_mode(c)] is c]


#: One case per failure mode: those that go through every surface, and again under python -O.
SAMPLE = _sample()
SAMPLE_IDS = {c.id for c in SAMPLE}
#: The (case, surface) pairs of test_bad_weights: every case through read_params, the sample through all.
RUNS = [(c, s) for c in CASES for s in SURFACES if s == "read_params" or c.id in SAMPLE_IDS]

# ---------------------------------------------------------------------------------------------
# Running one case on one surface (shared by the tests and by the python -O / rlimit script mode)


def capsnet_shapes():
    from capszoo.models.capsnet.net import CapsNet
    from capszoo._weights import param_shapes
    return param_shapes(CapsNet())


def build_case(case, ctx, folder):
    path = pathlib.Path(folder) / f"{case.id}.params"
    if not os.path.lexists(path):
        case.make(ctx, str(path))
    return str(path)


def make_png(folder):
    from PIL import Image
    path = pathlib.Path(folder) / "x.png"
    if not path.exists():
        img = np.zeros((28, 28), np.uint8)
        img[6:22, 12:16] = 255
        Image.fromarray(img).save(path)
    return str(path)


def _raised_in_capszoo(exc):
    """The innermost frame of ``exc``'s traceback is capszoo's own code (a deliberate raise)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and pathlib.Path(frames[-1].filename).resolve().is_relative_to(CAPSZOO_DIR)


#: Longest a huge case may take on one surface.
HUGE_HANG_SECONDS = 60.0


def run_case(case, surface, path, png, shapes):
    """Feed ``path`` to ``surface``; return a list of problems (empty: a clean, specific error)."""
    import capszoo.errors as errors

    error, pattern, code = case.expect(surface)
    problems = []
    t0 = time.monotonic()
    if surface == "cli":
        from click.testing import CliRunner
        from capszoo.cli import main
        r = CliRunner().invoke(main, ["classify", "capsnet-mnist", png, "--weights", path])
        out = r.output
        if r.exit_code != code:
            problems.append(f"exit code {r.exit_code}, expected {code}")
        if not isinstance(r.exception, SystemExit):
            problems.append(f"an exception escaped the CLI: {type(r.exception).__name__}: {r.exception}")
        if "Traceback" in out or "Check failed" in out or "Stack trace" in out:
            problems.append("a traceback in the output")
        last = out.strip().splitlines()[-1] if out.strip() else ""
        if not last.startswith("Error: "):
            problems.append(f"last line is not 'Error: ...': {last!r}")
        elif not re.search(pattern, last):
            problems.append(f"message {last!r} does not match {pattern!r}")
        message = last
    else:
        try:
            if surface == "read_params":
                from capszoo._weights import check_params, read_params
                check_params(read_params(path), shapes, source=f"weights {path}")
            else:
                import capszoo
                capszoo.load("capsnet-mnist", weights=path)
        except Exception as exc:  # noqa: BLE001 - judged below
            message = str(exc)
            if not isinstance(exc, errors.CapszooError):
                problems.append(f"{type(exc).__module__}.{type(exc).__name__} is not a capszoo error: {exc}")
            elif type(exc).__name__ != error:
                problems.append(f"{type(exc).__name__}, expected {error}: {exc}")
            if not re.search(pattern, message):
                problems.append(f"message {message!r} does not match {pattern!r}")
            if not _raised_in_capszoo(exc):
                problems.append("not raised by capszoo's own code: "
                                + "".join(traceback.format_tb(exc.__traceback__)[-2:]))
            if "Check failed" in message or "Stack trace" in message:
                problems.append("an MXNet traceback in the message")
        else:
            message = None
            problems.append("no error: the bad file was accepted")
    elapsed = time.monotonic() - t0
    # A hang guard only (allocation is what test_huge_declarations_under_rlimit_as catches): a declared size
    # acted upon means reading or zeroing up to 2^62 bytes, which takes far longer than this.
    if case.huge and elapsed > HUGE_HANG_SECONDS:
        problems.append(f"took {elapsed:.1f} s: the declared size was acted upon")
    return problems


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def shapes():
    return capsnet_shapes()


@pytest.fixture(scope="module")
def ctx(shapes):
    return Ctx(shapes)


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bad-weights")


@pytest.fixture(scope="module")
def png(case_dir):
    return make_png(case_dir)


_SURFACE_NAMES = {"read_params": "read_params", "load": "capszoo.load", "cli": "capszoo classify --weights"}


@harden("weights files", lambda p: _SURFACE_NAMES[p["surface"]], inputs=lambda p: [p["case"].id])
@pytest.mark.parametrize("case,surface", RUNS, ids=[f"{c.id}-{s}" for c, s in RUNS])
def test_bad_weights(case, surface, ctx, case_dir, png, shapes):
    path = build_case(case, ctx, case_dir)
    try:
        problems = run_case(case, surface, path, png, shapes)
    finally:
        if case.capsnet and (surface == SURFACES[-1] or case.id not in SAMPLE_IDS):
            os.unlink(path)    # 33 MB each; rebuilt if another surface asks again
    assert not problems, "\n".join(problems)


def test_cases_of_a_mode_fail_alike(ctx, tmp_path, shapes):
    """A case outside SAMPLE is refused by read_params with its mode's message (numbers and file name apart):
    the check that load, the CLI and python -O see with the sampled case is the one it would trip."""
    import capszoo.errors as errors
    from capszoo._weights import check_params, read_params

    def message(case):
        path = build_case(case, ctx, tmp_path)
        with pytest.raises(errors.WeightsFormatError) as info:
            check_params(read_params(path), shapes, source=f"weights {path}")
        return _normalized(str(info.value).replace(path, "FILE"))
    by_mode = {failure_mode(c): message(c) for c in SAMPLE if not c.capsnet and c.error == "WeightsFormatError"}
    left_out = [c for c in CASES if c.id not in SAMPLE_IDS]
    assert len(left_out) > 100 and len(SAMPLE) + len(left_out) == len(CASES)
    differ = {c.id: message(c) for c in left_out if message(c) != by_mode[failure_mode(c)]}
    assert differ == {}, differ


def test_encoder_writes_what_mxnet_writes(tmp_path, seeded_weights):
    """The cases are built by an encoder that writes exactly what MXNet writes."""
    import mxnet as mx
    from mxnet.gluon import nn
    from capszoo import read_params

    net = nn.HybridSequential()
    net.add(nn.Dense(64, in_units=128), nn.Dense(10, in_units=64))
    net.initialize()
    for k, p in net._collect_params_with_prefix().items():
        p.set_data(mx.nd.array(small_arrays()[k]))
    net.save_parameters(str(tmp_path / "small.params"))
    assert (tmp_path / "small.params").read_bytes() == SMALL
    real = read_params(seeded_weights)
    assert encode(real) == pathlib.Path(seeded_weights).read_bytes()
    assert len(TRUNCATE_AT) > 100 and set(range(0, len(SMALL), 997)) <= set(TRUNCATE_AT)


def test_good_files_still_load(seeded_weights, tmp_path, shapes):
    """Controls: the real file, the same arrays under V3 magic and with arg:/aux: prefixes."""
    import capszoo
    from capszoo._weights import check_params, read_params

    real = read_params(seeded_weights)
    v3 = params_file([array_record(a, magic=V3) for a in real.values()], list(real))
    prefixed = encode({("aux:" if i % 2 else "arg:") + k: a for i, (k, a) in enumerate(real.items())})
    for name, data in (("v3", v3), ("prefixed", prefixed)):
        p = tmp_path / f"{name}.params"
        p.write_bytes(data)
        got = read_params(p)
        check_params(got, shapes)
        assert all(np.array_equal(got[k], real[k]) for k in real)
    model = capszoo.load("capsnet-mnist", weights=str(tmp_path / "prefixed.params"))
    assert model(np.zeros((28, 28), np.uint8)) in model.card.classes


HUGE_IDS = [c.id for c in CASES if c.huge]


@harden("weights files", ["read_params", "capszoo.load"], inputs=HUGE_IDS, variant="RLIMIT_AS 2 GB")
def test_huge_declarations_under_rlimit_as(tmp_path):
    """The huge cases in a process whose address space is capped at 2 GB: same clean errors."""
    ids = HUGE_IDS
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__)), "--rlimit-as", str(2 << 30),
                           "--dir", str(tmp_path), "--surfaces", "read_params,load", *ids],
                          capture_output=True, text=True, timeout=600, env=_child_env(), cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rlimit_as"] == 2 << 30
    bad = {k: v for k, v in report["results"].items() if v}
    assert not bad, json.dumps(bad, indent=1)
    assert len(report["results"]) == 2 * len(ids)


@harden("weights files", list(_SURFACE_NAMES.values()), inputs=sorted(SAMPLE_IDS), variant="python -O")
@pytest.mark.slow
def test_same_errors_under_python_O(tmp_path):
    """One case per failure mode on every surface again under ``python -O`` (asserts stripped): the same
    errors."""
    proc = subprocess.run([sys.executable, "-O", str(pathlib.Path(__file__)), "--dir", str(tmp_path),
                           "--surfaces", ",".join(SURFACES), *[c.id for c in SAMPLE]],
                          capture_output=True, text=True, timeout=1800, env=_child_env(), cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["optimize"] == 1 and report["asserts_stripped"] is True
    bad = {k: v for k, v in report["results"].items() if v}
    assert not bad, json.dumps(bad, indent=1)
    assert sorted(report["results"]) == sorted(f"{c.id}/{s}" for c in SAMPLE for s in SURFACES)


def _child_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


# ---------------------------------------------------------------------------------------------
# Script mode: python [-O] tests/test_harden_weights.py [--rlimit-as BYTES] --dir D [--surfaces a,b] [ids...]
# prints one JSON line {"optimize", "asserts_stripped", "rlimit_as", "results": {"id/surface": [problems]}}


def _main(argv):
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--rlimit-as", type=int, default=None)
    ap.add_argument("--surfaces", default=",".join(SURFACES))
    ap.add_argument("ids", nargs="*")
    args = ap.parse_args(argv)
    if args.rlimit_as:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (args.rlimit_as, args.rlimit_as))
    stripped = True
    try:
        assert False
    except AssertionError:
        stripped = False
    os.environ.setdefault("CAPSZOO_HOME", os.path.join(args.dir, "home"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    cases = [CASES_BY_ID[i] for i in args.ids] if args.ids else CASES
    shapes = capsnet_shapes()
    ctx = Ctx(shapes)
    png = make_png(args.dir)
    results = {}
    for case in cases:
        path = build_case(case, ctx, args.dir)
        for surface in args.surfaces.split(","):
            try:
                results[f"{case.id}/{surface}"] = run_case(case, surface, path, png, shapes)
            except BaseException as exc:  # noqa: BLE001 - reported, not raised
                results[f"{case.id}/{surface}"] = [f"the runner itself failed: {type(exc).__name__}: {exc}"]
        if case.capsnet:
            os.unlink(path)   # 33 MB each
    print(json.dumps({"optimize": sys.flags.optimize, "asserts_stripped": stripped,
                      "rlimit_as": args.rlimit_as, "results": results}))


if __name__ == "__main__":
    _main(sys.argv[1:])
