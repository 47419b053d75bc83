"""Inference on onnxruntime without MXNet: the fast path of ``capszoo classify``.

``import mxnet`` alone costs about a second, more than everything else a
one-image ``capszoo classify`` does.  So the package ships, beside the weights,
the net's ONNX graph *without* its weights (``capsnet-mnist.graph.onnx``, about
19 kB).  Every initializer in it is declared as external data and named like the
arrays of the ``.params`` file (``PrimaryCaps.weight``, ...).  At run time the
arrays are read from the sha256-verified ``.params`` file by
:mod:`capszoo._weights` (numpy only) and handed to onnxruntime through
``SessionOptions.add_external_initializers``: no second 33 MB copy of the
weights on disk and no MXNet in the process.

The graph is made by :func:`build_runtime_graph` with capszoo's own ONNX
exporter; ``scripts/make_runtime_graph.py`` writes it and a test checks that the
shipped file equals a fresh build, so it cannot drift from the net.  The
outputs equal the MXNet net's to about 1e-6 (the export's parity).
"""
from __future__ import annotations

import importlib.resources
import os
from typing import Optional

import numpy as np

from ._env import usable_cores
from .errors import InvalidInputError, WeightsFormatError

__all__ = ["OnnxRuntimeNet", "build_runtime_graph", "runtime_graph_bytes", "onnxruntime_available"]

#: The ``location`` recorded for every external initializer of a runtime graph.  No such file
#: exists beside the graph: an array missing from the ``.params`` file makes onnxruntime fail
#: to open it, never read something else.
WEIGHTS_LOCATION = "weights-are-passed-in-memory.params"


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported (it is a dependency, but may be broken or absent)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def runtime_graph_bytes(card) -> bytes:
    """The shipped weight-less ONNX graph of ``card``.

    Raises
    ------
    InvalidInputError
        The card has no runtime graph, or its file is missing from the package.
    """
    if not card.runtime_graph:
        raise InvalidInputError(f"{card.name} has no onnxruntime graph; use backend='mxnet'")
    entry = importlib.resources.files("capszoo.pretrained") / card.runtime_graph
    if not entry.is_file():
        raise InvalidInputError(f"the onnxruntime graph {card.runtime_graph} of {card.name} is missing from "
                                "the installed package; reinstall capszoo or use backend='mxnet'")
    return entry.read_bytes()


def _runtime_graph_path(card) -> str:
    """File path of the shipped runtime graph (checked as :func:`runtime_graph_bytes` does)."""
    runtime_graph_bytes(card)
    return os.fspath(importlib.resources.files("capszoo.pretrained") / card.runtime_graph)


def build_runtime_graph(card) -> bytes:
    """Export ``card``'s net to ONNX and strip its weights: the bytes of the runtime graph.

    Needs MXNet and onnx (a build step, not a run-time one).  Initializers keep
    their dtype and shape but no data; each is renamed to its ``.params`` name
    and marked external, so onnxruntime takes the arrays from
    ``add_external_initializers``.
    """
    import mxnet as mx
    import onnx

    from .exporters._mxnet import block_to_symbol
    from .exporters._onnx import mxnet_to_onnx_model

    net = card.build()
    net.initialize(mx.init.Zero())
    prefixed = {p.name: key for key, p in net._collect_params_with_prefix().items()}
    sym, params, names = block_to_symbol(net, input_shape=(1,) + tuple(card.input_shape))
    model = mxnet_to_onnx_model(sym, params, input_shape=(1,) + tuple(card.input_shape), output_names=names,
                                model_name=card.name,
                                doc_string=f"{card.display_name}: graph only; weights come from the .params file")
    # No versions: the file depends on the net alone and is reproducible byte for byte.
    del model.metadata_props[:]
    model.producer_version = ""
    renames = {}
    for t in model.graph.initializer:
        if t.name not in prefixed:
            continue  # a constant of the graph, not a parameter: keep its data
        renames[t.name] = prefixed[t.name]
        t.name = prefixed[t.name]
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        entry = t.external_data.add()
        entry.key, entry.value = "location", WEIGHTS_LOCATION
    missing = sorted(set(prefixed.values()) - set(renames.values()))
    if missing:  # pragma: no cover - the exporter keeps every parameter the graph uses
        raise RuntimeError(f"the ONNX export does not use the parameters {missing}")
    for node in model.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
    if tuple(o.name for o in model.graph.output) != tuple(card.outputs):  # pragma: no cover
        raise RuntimeError(f"unexpected outputs {[o.name for o in model.graph.output]}")
    return model.SerializeToString()


class OnnxRuntimeNet:
    """The full net of ``card`` on onnxruntime, with the weights of a ``.params`` file.

    Parameters
    ----------
    card : ModelCard
        A card with a ``runtime_graph``.
    weights_path : str or os.PathLike, optional
        The ``.params`` file (normally the card's sha256-verified weights).
    num_threads : int, optional
        onnxruntime intra-op threads; default the usable cores.
    arrays : dict of numpy arrays, optional
        The weights by ``.params`` name, instead of a file (what
        :class:`capszoo.CapsNetModel` passes: its net's current parameters).

    Raises
    ------
    InvalidInputError
        onnxruntime is not installed, or the card has no runtime graph.
    WeightsFormatError
        The file is not a valid ``.params`` file, or its arrays do not fit the graph.
    """

    def __init__(self, card, weights_path=None, *, num_threads: Optional[int] = None, arrays=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise InvalidInputError("the onnxruntime backend needs onnxruntime: pip install onnxruntime, "
                                    "or use backend 'mxnet'") from None
        from ._weights import read_params

        if (weights_path is None) == (arrays is None):
            raise InvalidInputError("pass the weights as weights_path or as arrays (one of them)")
        graph = _runtime_graph_path(card)  # a path, not bytes: external data would resolve against the cwd
        self.card = card
        self.weights_path = os.fspath(weights_path) if weights_path is not None else "<arrays>"
        if arrays is None:
            arrays = read_params(weights_path)
        # The session reads the arrays in place: keep them alive as long as it lives.
        self._arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(num_threads or usable_cores())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        names = list(self._arrays)
        opts.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(self._arrays[k]) for k in names])
        try:
            self.session = ort.InferenceSession(graph, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime has its own exception classes
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsFormatError(f"weights {self.weights_path} do not fit the {card.name} graph "
                                     f"({line[:300]}); use weights saved from the same architecture") from None
        self._input = self.session.get_inputs()[0].name

    def __call__(self, x, *, batch_size: int = 128, outputs=None):
        """``{output name: numpy array}`` of a float32 batch ``(N,1,28,28)``: the card's outputs, or the
        names in ``outputs``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.card.input_shape):
            raise InvalidInputError(f"a batch must have shape (N, 1, 28, 28), got {x.shape}")
        if x.shape[0] == 0:
            raise InvalidInputError("no images to classify (empty batch)")
        wanted = list(self.card.outputs if outputs is None else outputs)
        parts = [self.session.run(wanted, {self._input: x[i:i + batch_size]})
                 for i in range(0, x.shape[0], batch_size)]
        return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(wanted)}

    def __repr__(self):
        return f"OnnxRuntimeNet({self.card.name!r}, weights={self.weights_path!r})"
