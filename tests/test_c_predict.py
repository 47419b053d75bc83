"""examples/c/classify.c: the MXNet export run from C through MXNet's C predict API.

The program is compiled once per module with the system C compiler against the
header and library of the installed MXNet wheel, then run on real MNIST test
digits; its class probabilities must match ``capszoo.load(...).run``.
"""
import importlib.util
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = REPO / "examples" / "c" / "classify.c"
NUM_DIGITS = 8
# The C program (a batch of 1) and capszoo's MXNet backend (a batch of N) differ by at most
# 6e-8 on these digits' capsule lengths, 1.2e-7 on the first 100 MNIST test digits.
ATOL = 1e-6


def _mxnet_dir():
    """The installed mxnet package folder, found without importing mxnet."""
    spec = importlib.util.find_spec("mxnet")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) if spec else None


def _run(binary, *args):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def classify(tmp_path_factory):
    """Path of the compiled classify program."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc or gcc) on PATH")
    mx_dir = _mxnet_dir()
    if mx_dir is None:
        pytest.skip("the mxnet package is not installed")
    header = mx_dir / "include" / "mxnet" / "c_predict_api.h"
    library = mx_dir / "libmxnet.so"
    for path in (header, library):
        if not path.is_file():
            pytest.skip(f"the mxnet wheel has no {path.relative_to(mx_dir)} (looked in {mx_dir})")
    out = tmp_path_factory.mktemp("c") / "classify"
    r = subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", str(SOURCE),
                        "-I", str(mx_dir / "include"), "-L", str(mx_dir), "-lmxnet",
                        f"-Wl,-rpath,{mx_dir}", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cc} failed:\n{r.stderr}"
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """(symbol, params) of `capszoo export capsnet-mnist --format mxnet` with the published weights."""
    from click.testing import CliRunner
    from capszoo.cli import main

    home = tmp_path_factory.mktemp("home")
    out = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:  # the module-scoped twin of conftest's _isolated_home
        mp.setenv("CAPSZOO_HOME", str(home / "capszoo"))
        mp.setenv("HF_HOME", str(home / "hf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        r = CliRunner().invoke(main, ["export", "capsnet-mnist", "--format", "mxnet", "-o", str(out)])
    assert r.exit_code == 0, r.output or repr(r.exception)
    symbol, params = out / "capsnet-mnist-symbol.json", out / "capsnet-mnist-0000.params"
    assert symbol.is_file() and params.is_file()
    return symbol, params


@pytest.fixture(scope="module")
def digits(mnist_test, tmp_path_factory):
    """The first MNIST test digits as raw 784-byte files: (paths, uint8 images, labels)."""
    images, labels = mnist_test[0][:NUM_DIGITS], mnist_test[1][:NUM_DIGITS]
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i, image in enumerate(images):
        p = folder / f"digit{i}-label{labels[i]}.raw"
        p.write_bytes(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        paths.append(p)
    return paths, images, labels


def _parse(stdout):
    """Lines ``IMAGE: class K probabilities p0 ... p9`` -> (images, classes, probabilities (N, 10))."""
    names, classes, probs = [], [], []
    for line in stdout.splitlines():
        name, _, rest = line.rpartition(": class ")
        words = rest.split()
        assert words[1] == "probabilities" and len(words) == 12, line
        names.append(name)
        classes.append(int(words[0]))
        probs.append([float(w) for w in words[2:]])
    return names, np.array(classes), np.array(probs)


def test_c_program_matches_python(classify, export, digits):
    import capszoo

    paths, images, labels = digits
    r = _run(classify, *export, *paths)
    assert r.returncode == 0, r.stderr
    names, classes, probs = _parse(r.stdout)
    assert names == [str(p) for p in paths]

    model = capszoo.load("capsnet-mnist", backend="mxnet")
    x = (images.astype(np.float32) / 255.0)[:, None]
    want, _, _ = model.run(x, need_reco=False)
    assert probs.shape == (NUM_DIGITS, 10)
    np.testing.assert_allclose(probs, want, rtol=0, atol=ATOL)
    assert classes.tolist() == want.argmax(axis=1).tolist() == probs.argmax(axis=1).tolist()
    assert classes.tolist() == labels.tolist()   # these digits are all classified right
    assert (probs.max(axis=1) > 0.5).all() and (probs >= 0).all() and (probs <= 1).all()


@pytest.fixture
def stand_ins(tmp_path, digits):
    """Small files in place of the export, for the checks made before MXNet sees the model:
    (symbol, params, a good raw image)."""
    symbol, params = tmp_path / "stand-in-symbol.json", tmp_path / "stand-in.params"
    symbol.write_text("{}")
    params.write_bytes(b"\x12\x01\x00\x00\x00\x00\x00\x00")
    return symbol, params, digits[0][0]


@pytest.mark.parametrize("which", ["symbol", "params", "image"])
def test_missing_file(classify, stand_ins, tmp_path, which):
    args = dict(zip(["symbol", "params", "image"], stand_ins))
    missing = tmp_path / f"no-such-{which}"
    args[which] = missing
    r = _run(classify, args["symbol"], args["params"], args["image"])
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.strip() == f"classify: {missing}: No such file or directory"


@pytest.mark.parametrize("which", ["symbol", "params"])
def test_empty_model_file(classify, stand_ins, tmp_path, which):
    args = dict(zip(["symbol", "params", "image"], stand_ins))
    args[which] = tmp_path / "empty"
    args[which].write_bytes(b"")
    r = _run(classify, args["symbol"], args["params"], args["image"])
    assert (r.returncode, r.stdout, r.stderr.strip()) == (1, "", f"classify: {args[which]}: empty file")


@pytest.mark.parametrize("size", [0, 783, 785, 28 * 28 * 3])
def test_image_of_the_wrong_size(classify, stand_ins, tmp_path, size):
    bad = tmp_path / "bad.raw"
    bad.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
    symbol, params, good = stand_ins
    # A good image first: the images are all checked before any is classified.
    r = _run(classify, symbol, params, good, bad)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.strip() == f"classify: {bad}: {size} bytes, expected 784 (a raw 28x28 uint8 image)"


def test_folder_instead_of_a_file(classify, stand_ins, tmp_path):
    symbol, params, _ = stand_ins
    r = _run(classify, symbol, params, tmp_path)
    assert (r.returncode, r.stdout, r.stderr.strip()) == (1, "", f"classify: {tmp_path}: Is a directory")


def test_mxnet_error_is_reported(classify, stand_ins):
    # "{}" is JSON but no MXNet graph: MXPredCreate fails and MXGetLastError says why.
    r = _run(classify, *stand_ins)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith("classify: MXPredCreate: ")
    assert 'Missing field "arg_nodes"' in r.stderr


def test_usage(classify, stand_ins):
    r = _run(classify, *stand_ins[:2])
    assert r.returncode == 1
    assert r.stderr.strip() == f"usage: {classify} SYMBOL_JSON PARAMS_FILE IMAGE.raw [more images...]"
