"""MNIST: local idx files, and the download of them for users with a network."""
from __future__ import annotations

import dataclasses
import os


from ..errors import DataFileNotFoundError, DataFormatError, InvalidInputError
from ._idx import read_images, read_labels

__all__ = ["MNIST_FILES", "MnistFile", "load_mnist", "find_mnist_file"]


@dataclasses.dataclass(frozen=True)
class MnistFile:
    """One MNIST idx file: its name and the md5 of its uncompressed bytes."""

    name: str            # e.g. "train-images-idx3-ubyte"
    md5: str             # published md5 of the uncompressed file
    split: str           # "train" or "test"
    kind: str            # "images" or "labels"
    count: int


#: The four files of MNIST with the md5 sums published with the original data set.
MNIST_FILES = (
    MnistFile("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", "train", "images", 60000),
    MnistFile("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", "train", "labels", 60000),
    MnistFile("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", "test", "images", 10000),
    MnistFile("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", "test", "labels", 10000),
)


def _file_for(split, kind):
    for f in MNIST_FILES:
        if f.split == split and f.kind == kind:
            return f
    raise InvalidInputError(f"unknown MNIST split {split!r}; use 'train' or 'test'")


def find_mnist_file(data_dir, entry):
    """Path of ``entry`` in ``data_dir``: ``<name>.gz`` or the raw ``<name>``."""
    for candidate in (entry.name + ".gz", entry.name):
        p = os.path.join(os.fspath(data_dir), candidate)
        if os.path.isfile(p):
            return p
    raise DataFileNotFoundError(
        f"{entry.name}(.gz) not found in {os.fspath(data_dir)}; pass --data-dir pointing at a folder "
        "with the four MNIST idx files, or omit it to download MNIST into the cache")


def load_mnist(split="train", *, data_dir=None):
    """Load an MNIST split as ``(images (N,28,28) uint8, labels (N,) uint8)``.

    Parameters
    ----------
    split : {"train", "test"}
    data_dir : str or os.PathLike, optional
        Folder with the idx files (``.gz`` or raw).  Without it the files are
        downloaded (checksums verified) into the capszoo cache.

    Returns
    -------
    images : numpy.ndarray
        ``(N, 28, 28) uint8``.
    labels : numpy.ndarray
        ``(N,) uint8`` in 0-9.

    Raises
    ------
    DataFileNotFoundError
        A file is missing from ``data_dir``.
    DataFormatError
        A file is corrupt, or images and labels do not belong together.
    """
    img_entry, lbl_entry = _file_for(split, "images"), _file_for(split, "labels")
    if data_dir is None:
        from ._download import download_mnist
        data_dir = download_mnist(split=split)
    images = read_images(find_mnist_file(data_dir, img_entry))
    labels = read_labels(find_mnist_file(data_dir, lbl_entry))
    if len(images) != len(labels):
        raise DataFormatError(f"MNIST {split}: {len(images)} images but {len(labels)} labels in "
                              f"{os.fspath(data_dir)}; the files do not belong together")
    return images, labels
