"""Shared fixtures.  MNIST comes from ../shared/data/mnist (verified copy; no network here)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

#: The training command whose uninterrupted run the resume tests compare with, bit for bit
#: (tests/test_training.py, tests/test_harden_training.py): 3 epochs of 2 steps of 16 images.
REFERENCE_ARGS = ["train", "capsnet-mnist", "--limit", "600", "--epochs", "3", "--batch-size", "16",
                  "--max-steps", "2", "--seed", "7", "--validation-size", "100"]
#: OpenMP threads of those runs.  Runs compared bit for bit need the same number: the kernels' summation
#: order depends on it (2 threads for epochs 1-2 and 1 for epoch 3 end 3e-8 away from 2 throughout).
#: With the same number, 1 or 2, a resumed run is bit-identical.
REFERENCE_THREADS = "2"


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core, at most 4 (each holds MXNet and its nets)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _mnist_dir():
    env = os.environ.get("CAPSZOO_TEST_MNIST")
    for cand in ([env] if env else []) + [REPO.parent / "shared" / "data" / "mnist", REPO / "shared" / "data" / "mnist"]:
        if cand and (pathlib.Path(cand) / "t10k-images-idx3-ubyte.gz").is_file():
            return pathlib.Path(cand)
    return None


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder with the four MNIST .gz idx files."""
    d = _mnist_dir()
    if d is None:
        pytest.fail("MNIST not found: expected ../shared/data/mnist beside the repo "
                    "(or set CAPSZOO_TEST_MNIST)")
    return d


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    """The 10,000 MNIST test images (uint8 (N,28,28)) and labels."""
    from capszoo.data import load_mnist
    return load_mnist("test", data_dir=mnist_dir)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep every test away from the user's caches and from the network."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CAPSZOO_HOME", str(home / "capszoo"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_ENDPOINT", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "CAPSZOO_MNIST_MIRRORS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("PORT", raising=False)


def train_env():
    """The environment of a ``capszoo train`` child of the resume tests (this checkout's capszoo first)."""
    return dict(os.environ, OMP_NUM_THREADS=REFERENCE_THREADS,
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="session")
def reference_run(mnist_dir, tmp_path_factory):
    """The run directory of an uninterrupted ``capszoo train`` of :data:`REFERENCE_ARGS` (made once)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run([sys.executable, "-m", "capszoo.cli", *REFERENCE_ARGS, "--data-dir", str(mnist_dir),
                           "--out", str(out)], env=train_env(), cwd=str(REPO), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def make_weights(path, seed=0):
    """Save a seeded, initialized CapsNet's parameters (capsule lengths not degenerate)."""
    from capszoo.models.capsnet.net import CapsNet
    from capszoo import load_recipe
    from capszoo import initialize_net
    from capszoo import save_params

    net = CapsNet()
    initialize_net(net, load_recipe("capsnet-mnist"), [__import__("mxnet").cpu()], seed)
    save_params(net, path)
    return path


@pytest.fixture(scope="session")
def seeded_entry_weights(tmp_path_factory):
    """``weights(name)``: a .params file of zoo entry ``name``'s net, seeded and initialized as its
    recipe says (made once per entry)."""
    folder = tmp_path_factory.mktemp("entry-weights")
    made = {}

    def weights(name):
        if name not in made:
            import mxnet as mx
            import capszoo
            from capszoo import initialize_net
            from capszoo import save_params

            card = capszoo.get_card(name)
            net = initialize_net(card.build(), capszoo.load_recipe(card.recipe), [mx.cpu()], 0)
            made[name] = str(folder / f"{name}.params")
            save_params(net, made[name])
        return made[name]
    return weights


@pytest.fixture(scope="session")
def seeded_weights(tmp_path_factory):
    """A .params file of a seeded random CapsNet (a stand-in for trained weights)."""
    return str(make_weights(tmp_path_factory.mktemp("weights") / "seeded.params"))


@pytest.fixture(scope="session")
def seeded_model(seeded_weights):
    import capszoo
    return capszoo.load("capsnet-mnist", weights=seeded_weights)


@pytest.fixture
def digit_files(tmp_path, mnist_test):
    """The first three MNIST test digits saved as PNG files (paths as str)."""
    from PIL import Image

    files = []
    for i in range(3):
        p = tmp_path / f"d{i}.png"
        Image.fromarray(mnist_test[0][i]).save(p)
        files.append(str(p))
    return files
