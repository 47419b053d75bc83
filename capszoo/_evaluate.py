"""Evaluation on labelled digits: accuracy, error count, per-class accuracy, confusion matrix."""
from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np

from .errors import InvalidInputError

__all__ = ["EvalResult", "evaluate", "evaluate_probabilities", "mnist_float"]


def mnist_float(images):
    """uint8 images ``(N, 28, 28)`` as the nets take them in training and evaluation: float32
    ``(N, 1, 28, 28)`` in [0, 1]."""
    return (images.astype(np.float32) * np.float32(1 / 255.0))[:, None, :, :]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Figures of one evaluation.

    ``confusion[i, j]`` counts images of true class ``i`` predicted as ``j``; ``misclassified``
    holds the indices of the wrong images, in order.
    """

    accuracy: float
    errors: int
    count: int
    per_class_accuracy: Tuple[float, ...]
    confusion: np.ndarray
    misclassified: Tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "errors": self.errors, "count": self.count,
                "per_class_accuracy": list(self.per_class_accuracy),
                "confusion": self.confusion.tolist(), "misclassified": list(self.misclassified)}

    def format(self) -> str:
        lines = [f"Test accuracy: {100 * self.accuracy:.2f} % ({self.count - self.errors:,}/{self.count:,}; "
                 f"{self.errors} errors)", "", "Per-class accuracy:"]
        lines += [f"  {k}: {100 * a:6.2f} %" for k, a in enumerate(self.per_class_accuracy)]
        lines += ["", "Confusion matrix (rows: true class, columns: predicted):",
                  "      " + " ".join(f"{j:>5}" for j in range(self.confusion.shape[1]))]
        lines += [f"  {i:>2}  " + " ".join(f"{v:>5}" for v in row) for i, row in enumerate(self.confusion)]
        return "\n".join(lines)


def evaluate_probabilities(probs, labels, num_classes=10) -> EvalResult:
    """Figures from class probabilities ``(N, C)`` and integer labels ``(N,)``."""
    probs, labels = np.asarray(probs), np.asarray(labels).astype(np.int64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or probs.shape[0] == 0:
        raise InvalidInputError(f"need probabilities (N, {num_classes}) and N labels, got {probs.shape} "
                                f"and {labels.shape}")
    pred = probs.argmax(axis=1)
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (labels, pred), 1)
    totals = conf.sum(axis=1)
    per_class = tuple(float(conf[k, k] / totals[k]) if totals[k] else float("nan") for k in range(num_classes))
    correct = int(np.trace(conf))
    return EvalResult(accuracy=correct / len(labels), errors=len(labels) - correct, count=len(labels),
                      per_class_accuracy=per_class, confusion=conf,
                      misclassified=tuple(int(i) for i in np.flatnonzero(pred != labels)))


def evaluate(model, images, labels, *, batch_size=500) -> EvalResult:
    """Evaluate a zoo model (or a Gluon block) on MNIST-format data.

    A model runs on its engine (``backend="auto"``: onnxruntime where it can, which on the 10,000
    test digits gives every published entry the same wrong digits as MXNet, in about 30 s against
    50); a block runs on MXNet.

    Parameters
    ----------
    model : CapsNetModel or CapsNet
    images : numpy.ndarray
        uint8 ``(N, 28, 28)`` (as read from the idx files) or float32 ``(N, 1, 28, 28)``.
    labels : numpy.ndarray
        ``(N,)`` integer class labels.
    """
    images = np.asarray(images)
    if hasattr(model, "run"):
        x = mnist_float(images) if images.dtype == np.uint8 else images
        probs = model.run(x, batch_size=batch_size, need_reco=False)[0] if len(x) else np.zeros((0, 10))
        return evaluate_probabilities(probs, labels)
    from ._train import predict_probabilities

    probs = predict_probabilities(model, images, ctx=None, batch_size=batch_size)
    return evaluate_probabilities(probs, labels)
