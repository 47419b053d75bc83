"""The NetModel-style API: ``load``, ``get_model`` and the model object.

>>> import capszoo
>>> model = capszoo.load("capsnet-mnist")
>>> model("digit.png")                                  # doctest: +SKIP
7
>>> model("digit.png", prop="TopProbabilities", top=3)  # doctest: +SKIP
[(7, 0.98), (2, 0.04), (3, 0.02)]
"""
from __future__ import annotations

import os
from typing import Optional

from . import _env  # noqa: F401

import numpy as np

from ._hubrepo import card_for
from ._registry import ModelCard, get_card, list_models
from .errors import InvalidInputError, SubnetNotFoundError, WeightsFormatError

__all__ = ["load", "get_model", "ZooModel", "CapsNetModel", "engine_blockers", "PROPERTIES", "VARIANTS",
           "BACKENDS", "ORT_MAX_BATCH"]

#: What a model call can return (Wolfram's NetModel properties).
PROPERTIES = ("Decision", "Probabilities", "TopProbabilities", "Capsule", "Reconstruction",
              "CouplingCoefficients")
#: Variants ``load`` accepts besides the pretrained evaluation net.
VARIANTS = ("EvaluationNet", "UninitializedEvaluationNet", "TrainingNet")
DTYPES = ("float32", "bfloat16", "int8")
#: Engines of a model's whole-net calls: ``"auto"`` (onnxruntime when it can run the call, MXNet
#: otherwise), ``"mxnet"``, ``"onnxruntime"``.
BACKENDS = ("auto", "mxnet", "onnxruntime")
#: Largest batch ``backend="auto"`` runs on onnxruntime; None (today): no limit.  Since the ONNX
#: converter sinks the prediction vectors' transposes into the batched products, onnxruntime is ahead
#: at every batch size (2026-12-03, AVX-512 EPYC, 2 threads, ``model.run``, images/s onnxruntime vs
#: MXNet): batch 1 170 vs 75, 8 292 vs 112, 16 397 vs 156, 32 343 vs 168, 64 380 vs 205, 128 349 vs
#: 221, 256 336 vs 199.  (Before that change MXNet was ahead from batch 16 on, and this was 8.)
ORT_MAX_BATCH = None


def _is_single(inputs):
    """Whether ``inputs`` is one image (the call returns one result) rather than a batch."""
    if isinstance(inputs, (str, os.PathLike)):
        return True
    if isinstance(inputs, (list, tuple)):
        return False
    if isinstance(inputs, np.ndarray):
        from ._preprocess import is_single_image
        return is_single_image(inputs)
    if _is_ndarray(inputs):
        return False
    return True  # PIL image and anything the encoder will judge


def _is_ndarray(x):
    """Whether ``x`` is an ``mxnet.nd.NDArray``, without importing MXNet when it is not loaded."""
    import sys
    mx = sys.modules.get("mxnet")
    return mx is not None and isinstance(x, mx.nd.NDArray)


def _is_cpu0(ctx):
    """Whether a context spec means the first CPU only (None, "cpu", "cpu:0", mx.cpu(0), [mx.cpu(0)])."""
    if ctx is None:
        return True
    if isinstance(ctx, str):
        return ctx.strip().lower() in ("cpu", "cpu:0", "cpu(0)")
    if isinstance(ctx, (list, tuple)):
        return len(ctx) == 1 and _is_cpu0(ctx[0])
    return str(ctx) == "cpu(0)"


def engine_blockers(card, *, ctx=None, dtype="float32", routing_iterations=None):
    """Why ``card``'s whole net cannot run on onnxruntime with these options (empty: it can).

    The one engine policy of capszoo: the model object (and through it ``capszoo classify``)
    runs a whole-net call on onnxruntime only for float32 on one CPU with the card's routing,
    with a shipped weight-less graph and onnxruntime installed.  Needs no MXNet."""
    from ._ort import onnxruntime_available

    default_iterations = card.arch_args.get("routing_iterations")
    blockers = [why for why, bad in (
        (f"dtype {dtype!r} (it runs float32)", dtype != "float32"),
        (f"ctx {_ctx_text(ctx)} (it runs on one CPU)", not _is_cpu0(ctx)),
        (f"routing_iterations={routing_iterations} (its graph unrolls {default_iterations})",
         routing_iterations not in (None, default_iterations)),
        (f"{card.name} (no onnxruntime graph ships for it)", not card.runtime_graph),
    ) if bad]
    if not blockers and not onnxruntime_available():   # only then: importing onnxruntime takes ~0.4 s
        blockers.append("this installation (onnxruntime is not installed)")
    return blockers


#: Kept for scripts written against capszoo 0.1.
onnxruntime_blockers = engine_blockers


def _ctx_text(ctx):
    if isinstance(ctx, (list, tuple)):
        return str([str(c) for c in ctx])
    return repr(ctx) if isinstance(ctx, str) else str(ctx)


#: The net output each property reads.
_PROP_OUTPUT = {"Decision": "probabilities", "Probabilities": "probabilities", "TopProbabilities": "probabilities",
                "Capsule": "capsule", "Reconstruction": "reconstruction"}


class ZooModel:
    """A pretrained zoo entry with its card: classify, take apart, inspect.

    Call it on a file path, a PIL image, a numpy array (2-D, HxWxC, or a batch)
    or a list of these::

        model(x)                                  # the class (Decision)
        model(x, prop="Probabilities")            # {class: probability}
        model(x, prop="TopProbabilities", top=3)  # [(class, p), ...] best first
        model(x, prop="Capsule")                  # CapsNets: 16-D capsule of the predicted class
        model(x, prop="Reconstruction")           # CapsNets with a decoder: PIL image decoded from it
        model(x, prop="CouplingCoefficients")     # CapsNets: routing's c_ij, (iterations, 1152, 10)

    One image gives one result, a list or batch a list.  An ``mxnet.nd.NDArray``
    of shape (N,1,28,28) in [0, 1] skips preprocessing.  A property the entry
    lacks (a reconstruction from LeNet) is an error naming what it has.

    Engines: with ``backend="auto"`` (the default of :func:`load`) whole-net
    calls run on onnxruntime when it can run them, on the shipped weight-less
    graph with this model's current weights (1.6 to 2.6 times as fast as MXNet
    from batch 1 to 256), else on MXNet; outputs agree to 6e-7 on probabilities and capsules, 1.3e-5 on
    reconstructions.
    :func:`engine_blockers` says when onnxruntime cannot run (bfloat16, int8,
    several devices, other routing iterations, no shipped graph).  The MXNet net
    is built, and MXNet imported, only when a call needs it: a model that
    onnxruntime serves never imports MXNet.  Sub-nets
    (``take``, ``port``, ``reconstruct``, ...) always run on MXNet.

    For CapsNets, class probabilities are the lengths of the 10 digit capsules:
    each is in [0, 1) and they need not sum to 1 (several digits can be present).

    Attributes
    ----------
    card : ModelCard
    net : HybridBlock
        The Gluon net (hybridized), built on first use.
    ctx : list of mxnet.Context
    weights_path : str or None
    """

    def __init__(self, card: ModelCard, net, ctx, weights_path=None, dtype="float32", *, backend="mxnet",
                 routing_iterations=None):
        self.card, self._net, self._ctx_spec, self.weights_path, self.dtype = card, net, ctx, weights_path, dtype
        if backend not in BACKENDS:
            raise InvalidInputError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
        if net is None and weights_path is None:
            raise InvalidInputError("a model needs its net or its weights file")
        self.backend, self._routing_iterations = backend, routing_iterations
        self._ctx = None
        self._blockers = None if backend != "mxnet" else ["backend='mxnet'"]   # decided at the first call
        if backend == "onnxruntime":
            self._check_onnxruntime(raise_error=True)
        self._ort = None   # (OnnxRuntimeNet, the weights' fingerprint when it was built, or None: the file's)

    @property
    def ctx(self):
        if self._ctx is None:
            from ._context import parse_ctx
            self._ctx = parse_ctx(self._ctx_spec)
        return self._ctx

    @property
    def net(self):
        """The Gluon net with this model's weights (built and loaded on first use)."""
        if self._net is None:
            from ._weights import load_params_into
            net = self.card.build(**_net_kwargs(self.card, self._routing_iterations))
            load_params_into(net, self.weights_path, ctx=self.ctx)
            net.hybridize(static_alloc=True)
            self._net = net
        return self._net

    def _check_onnxruntime(self, raise_error=False):
        blockers = engine_blockers(self.card, ctx=self._ctx_spec, dtype=self.dtype,
                                   routing_iterations=self._routing_iterations)
        if blockers and raise_error:
            raise InvalidInputError("backend='onnxruntime' cannot run " + "; ".join(blockers)
                                    + "; use backend='mxnet' (or 'auto')")
        self._blockers = blockers
        return not blockers

    @property
    def properties(self):
        """The properties this entry's calls accept."""
        props = [p for p in PROPERTIES if _PROP_OUTPUT.get(p, "capsule") in self.card.outputs]
        return tuple(p for p in props if p != "CouplingCoefficients" or self.card.arch == "capsnet")

    # -- classification -------------------------------------------------------------------
    def __call__(self, inputs, prop="Decision", *, top=5, polarity="auto", fit="auto", batch_size=128):
        if prop not in PROPERTIES:
            raise InvalidInputError(f"unknown property {prop!r}; use one of: {', '.join(PROPERTIES)}")
        if prop not in self.properties:
            raise InvalidInputError(f"{self.card.name} has no property {prop!r} (its outputs: "
                                    f"{', '.join(self.card.outputs)}); its properties: {', '.join(self.properties)}")
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise InvalidInputError(f"top must be a positive integer, got {top!r}")
        single = _is_single(inputs)
        x = self.encode(inputs, polarity=polarity, fit=fit)
        if prop == "CouplingCoefficients":
            out = list(self.routing(x, batch_size=batch_size)["coupling"])
        else:
            outs = self._outputs(x, batch_size, need_reco=(prop == "Reconstruction"))
            out = decode_outputs(self.card.classes, prop, outs["probabilities"], outs.get("capsule"),
                                 outs.get("reconstruction"), top=top)
        return out[0] if single else out

    def encode(self, inputs, *, polarity="auto", fit="auto"):
        """Preprocess ``inputs`` into the net's float32 (N,1,28,28) batch, as the card's preprocessing says.

        An ``mxnet.nd.NDArray`` of that shape with finite values in [0, 1] passes
        through untouched (checked); see :func:`capszoo._preprocess.to_batch` for the rest.
        The result is numpy unless the input was an NDArray.
        """
        if _is_ndarray(inputs):
            if inputs.ndim != 4 or tuple(inputs.shape[1:]) != self.card.input_shape:
                raise InvalidInputError(f"an NDArray batch must have shape (N, 1, 28, 28), got {inputs.shape}")
            x = inputs.astype("float32", copy=False)
            if x.shape[0]:
                lo, hi = float(x.min().asscalar()), float(x.max().asscalar())
                if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
                    raise InvalidInputError(f"an NDArray batch must hold finite values in [0, 1], got range "
                                            f"[{lo}, {hi}]; scale it (x / 255) or pass numpy/PIL images")
            return x
        from ._preprocess import to_batch
        return to_batch(inputs, polarity=polarity, fit=fit, spec=self.card.preprocessing)

    def engine_for(self, batch: int) -> str:
        """The engine a whole-net call on ``batch`` images runs on: ``"onnxruntime"`` or ``"mxnet"``."""
        if self.backend == "mxnet" or (self.backend == "auto" and ORT_MAX_BATCH is not None
                                       and batch > ORT_MAX_BATCH):
            return "mxnet"
        if self._blockers is None:
            self._check_onnxruntime()
        return "mxnet" if self._blockers else "onnxruntime"

    def run(self, x, *, batch_size=128, need_reco=True):
        """The whole net on a ready batch: one numpy array per output of the card, in its order
        (``(probabilities (N,10), capsules (N,16), reconstructions (N,1,28,28) or None)`` for
        capsnet-mnist; ``(probabilities,)`` for LeNet).

        ``x`` is a float32 numpy array or ``mxnet.nd.NDArray`` of shape (N,1,28,28)
        with values in [0, 1] (no preprocessing, no range check: see ``encode``).
        """
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 4 or shape[1:] != tuple(self.card.input_shape):
            raise InvalidInputError(f"a batch must have shape (N, 1, 28, 28), got {shape or type(x).__name__}")
        if not isinstance(x, np.ndarray) and not _is_ndarray(x):
            raise InvalidInputError(f"a batch must be a numpy array or an mxnet NDArray, got {type(x).__name__}")
        outs = self._outputs(x, batch_size, need_reco=need_reco)
        return tuple(outs.get(name) for name in self.card.outputs)

    def _onnxruntime_net(self):
        """The onnxruntime net with the current weights (rebuilt when the MXNet net's changed)."""
        from ._ort import OnnxRuntimeNet
        if self._net is None:   # the model's weights file, read without MXNet
            if self._ort is None:
                self._ort = (OnnxRuntimeNet(self.card, self.weights_path), None)
            return self._ort[0]
        fingerprint = _weights_fingerprint(self._net, self.ctx[0])
        if self._ort is None or self._ort[1] is None or not np.array_equal(self._ort[1], fingerprint):
            arrays = {name: p.data(self.ctx[0]).asnumpy()
                      for name, p in self._net._collect_params_with_prefix().items()}
            self._ort = (OnnxRuntimeNet(self.card, arrays=arrays), fingerprint)
        return self._ort[0]

    def _outputs(self, x, batch_size, need_reco=False):
        """``{output name: numpy array}`` of the whole net on batch ``x`` (reconstruction only if asked)."""
        if x.shape[0] == 0:
            raise InvalidInputError("no images to classify (empty batch)")
        wanted = [o for o in self.card.outputs if need_reco or o != "reconstruction"]
        if self.engine_for(min(x.shape[0], batch_size)) == "onnxruntime":
            xs = x if isinstance(x, np.ndarray) else x.asnumpy()
            return self._onnxruntime_net()(xs, batch_size=batch_size, outputs=wanted)
        return self._mxnet_outputs(x, batch_size, wanted)

    def _mxnet_outputs(self, x, batch_size, wanted):
        import mxnet as mx
        from mxnet import gluon

        from ._nets import as_outputs

        net, ctx = self.net, self.ctx
        if isinstance(x, np.ndarray):
            x = mx.nd.array(x, ctx=ctx[0], dtype="float32")
        parts_out = {name: [] for name in wanted}
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size]
            parts = gluon.utils.split_and_load(chunk, ctx, even_split=False) if len(ctx) > 1 \
                else [chunk.as_in_context(ctx[0])]
            for part in parts:
                for name, arr in zip(self.card.outputs, as_outputs(net(part))):
                    if name in parts_out:
                        parts_out[name].append(arr.asnumpy())
        mx.nd.waitall()
        return {name: np.concatenate(v) for name, v in parts_out.items()}

    def predict(self, inputs, *, batch_size=128, polarity="auto"):
        """Class probabilities as a numpy array (N, 10)."""
        return self._outputs(self.encode(inputs, polarity=polarity), batch_size)["probabilities"]

    # -- taking the net apart -------------------------------------------------------------
    def __getitem__(self, name):
        """The named sub-net (``model["DigitCaps"]``), sharing parameters with the model."""
        if name not in self.card.subnets:
            raise SubnetNotFoundError(f"{self.card.name} has no sub-net {name!r}; sub-nets: "
                                      f"{', '.join(self.card.subnets)}")
        return self.net[name]

    @property
    def subnet_names(self):
        return self.card.subnets

    def take(self, start, end=None):
        """A HybridBlock running sub-nets ``start`` to ``end`` (NetTake); accepts ``"A:B"``."""
        from ._slices import take
        block = take(self.net, start, end)
        block.hybridize(static_alloc=True)
        return block

    def feature_extractor(self):
        """Image (N,1,28,28) -> the entry's feature vector: the predicted class's 16-D capsule for
        CapsNets (``take("ReLUConv1", "Pick")``), the 500-D hidden layer for LeNet."""
        return self.take(*self.card.feature_slice)

    def _require(self, subnet, what):
        if subnet not in self.card.subnets:
            raise SubnetNotFoundError(f"{self.card.name} has no {subnet} sub-net, so no {what}; its sub-nets: "
                                      f"{', '.join(self.card.subnets)}")

    def reconstructor(self):
        """Capsule -> image (N,1,28,28): the ``Reconstruct`` sub-net.  Its input is the 16-D capsule
        (Wolfram's decoder) or the masked 160-D capsules (the paper's and the deconvolution decoder)."""
        self._require("Reconstruct", "reconstructor")
        return self.take("Reconstruct")

    def features(self, inputs, *, polarity="auto", batch_size=128):
        """Feature vectors of ``inputs`` as numpy: the feature extractor's output (CapsNets: (N,16))."""
        if "capsule" in self.card.outputs:
            return self._outputs(self.encode(inputs, polarity=polarity), batch_size)["capsule"]
        return self.port(inputs, self.card.feature_slice[1], polarity=polarity, batch_size=batch_size)

    def reconstruct(self, vectors, classes=None):
        """Decode 16-D capsule vector(s) into PIL image(s) (one vector -> one image).

        Decoders that read the masked 160-D capsules need the class of each vector
        (``classes``: an int or one per vector): the vector is put in that class's slot.
        """
        import mxnet as mx

        self._require("Reconstruct", "reconstruction")
        v = np.asarray(vectors, dtype=np.float64)
        single = v.ndim == 1
        v = v[None] if single else v
        if v.ndim != 2 or v.shape[1] != 16 or v.shape[0] == 0:
            raise InvalidInputError(f"capsule vectors must have shape (16,) or (N, 16), got {np.shape(vectors)}")
        if not np.isfinite(v).all():
            raise InvalidInputError("capsule vectors contain NaN or inf")
        decoder = self.net["Reconstruct"]
        arr = mx.nd.array(v.astype(np.float32), ctx=self.ctx[0])
        if decoder.needs_class:
            out = decoder(arr, mx.nd.array(_classes_for(self.card, classes, len(v)), ctx=self.ctx[0]))
        else:
            out = decoder(arr)
        images = [_to_pil(r) for r in out.asnumpy()]
        return images[0] if single else images

    def port(self, inputs, name, *, polarity="auto", batch_size=128):
        """The output of sub-net ``name`` for ``inputs`` (NetPort), as numpy with a batch axis."""
        import mxnet as mx

        block = self.take(self.card.subnets[0], name)
        x = self.encode(inputs, polarity=polarity)
        if x.shape[0] == 0:
            raise InvalidInputError("no images given (empty batch)")
        x = x if _is_ndarray(x) else mx.nd.array(x, dtype="float32")
        return np.concatenate([block(x[i:i + batch_size].as_in_context(self.ctx[0])).asnumpy()
                               for i in range(0, x.shape[0], batch_size)])

    def routing(self, inputs, *, polarity="auto", batch_size=128):
        """What routing by agreement did, per image: ``{"coupling": (N, iterations, 1152, 10),
        "logits": (N, iterations, 1152, 10), "predictions": (N, 10, 1152, 16), "capsules": (N, 10, 16)}``
        as numpy: the coupling coefficients c_ij of each iteration (softmax of the logits b_ij over
        the 10 classes; uniform 0.1 in the first), the logits, the prediction vectors u_hat(j|i) and
        the digit capsules.  ``sum_i c_ij u_hat(j|i)``, squashed, is capsule j after the last iteration."""
        import mxnet as mx

        if self.card.arch != "capsnet":
            raise InvalidInputError(f"{self.card.name} is not a capsule network: it has no routing "
                                    f"(its sub-nets: {', '.join(self.card.subnets)})")
        block = self.take("ReLUConv1", "PrimaryPredVects")
        digit = self.net["DigitCaps"]
        x = self.encode(inputs, polarity=polarity)
        x = x if _is_ndarray(x) else mx.nd.array(x, dtype="float32")
        if x.shape[0] == 0:
            raise InvalidInputError("no images given (empty batch)")
        keys = ("capsules", "coupling", "logits", "predictions")
        out = {k: [] for k in keys}
        for i in range(0, x.shape[0], batch_size):
            u_hat = block(x[i:i + batch_size].as_in_context(self.ctx[0]))
            caps, coupling, logits = digit.route(mx.nd, u_hat)
            for k, v in zip(keys, (caps, coupling, logits, u_hat)):
                out[k].append(v.asnumpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    # -- information ----------------------------------------------------------------------
    def info(self):
        """:class:`~capszoo.NetInfo`: layers, parameters, arrays, layer types, trained size."""
        from ._info import net_info
        return net_info(self.net, name=self.card.name, weights_path=self.weights_path)

    def __repr__(self):
        ctx = [str(c) for c in self._ctx] if self._ctx is not None else self._ctx_spec or "cpu"
        return (f"{type(self).__name__}({self.card.name!r}, params={self.card.num_params:,}, "
                f"ctx={ctx}, weights={self.weights_path!r})")


#: The model object's name in capszoo 0.1 (it served CapsNets only).
CapsNetModel = ZooModel


def _classes_for(card, classes, n):
    """``classes`` (an int or one per vector) as class indices for ``n`` vectors."""
    if classes is None:
        raise InvalidInputError(f"{card.name}'s decoder reads the masked capsules of all classes: pass the "
                                "class of each vector (reconstruct(vectors, classes=...))")
    arr = np.atleast_1d(np.asarray(classes))
    if arr.ndim != 1 or len(arr) not in (1, n) or arr.dtype.kind not in "iu":
        raise InvalidInputError(f"classes must be an int or {n} ints, got {classes!r}")
    index = [list(card.classes).index(c) if c in card.classes else -1 for c in arr.tolist()]
    if min(index) < 0:
        raise InvalidInputError(f"classes must be among {list(card.classes)}, got {classes!r}")
    return np.resize(np.asarray(index, dtype=np.float32), n)


def decode_outputs(classes, prop, probs, caps=None, recos=None, *, top=5):
    """One result per image for property ``prop`` from the net's numpy outputs.

    Shared by :class:`CapsNetModel` and the onnxruntime path of ``capszoo classify``.
    """
    if prop == "Decision":
        return [classes[int(i)] for i in probs.argmax(axis=1)]
    if prop == "Probabilities":
        return [{c: float(p) for c, p in zip(classes, row)} for row in probs]
    if prop == "TopProbabilities":
        k = min(top, len(classes))
        return [[(classes[int(i)], float(row[i])) for i in np.argsort(-row, kind="stable")[:k]]
                for row in probs]
    if prop == "Capsule":
        return list(caps)
    return [_to_pil(r) for r in recos]


def _weights_fingerprint(net, ctx):
    """The first and last 4 values of every parameter (views, one copy): what changes when the weights are
    trained, loaded or set."""
    import mxnet as mx

    parts = []
    for p in net.collect_params().values():
        flat = p.data(ctx).reshape((-1,))
        parts += [flat[:4], flat[-4:]]
    return mx.nd.concat(*parts, dim=0).asnumpy()


def _to_pil(arr):
    from PIL import Image
    a = np.clip(np.asarray(arr).reshape(28, 28) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(a, mode="L")


def _check_dtype(dtype):
    if dtype not in DTYPES:
        raise InvalidInputError(f"unsupported dtype {dtype!r}; use one of: {', '.join(DTYPES)}")


def get_model(name, *, pretrained=True, ctx=None, weights=None, routing_iterations=None):
    """The bare Gluon net (a HybridBlock), GluonCV style.

    Parameters
    ----------
    name : str
        A registered model name or alias (case-insensitive).
    pretrained : bool
        Load the published weights (verified by sha256); False returns an
        uninitialized net.
    ctx : str or mxnet.Context or list, optional
        Devices (``"cpu"``, ``"gpu:0"``, ...); default CPU.
    weights : str, optional
        A ``.params`` file to load instead of the published weights.
    routing_iterations : int, optional
        CapsNets: override the routing iterations (the weights do not depend on it).
    """
    card = card_for(name)
    if not pretrained and weights is None:
        return card.build(**_net_kwargs(card, routing_iterations))
    return _pretrained_net(card, ctx, weights, routing_iterations)[0]


def _net_kwargs(card, routing_iterations):
    if routing_iterations is None:
        return {}
    if "routing_iterations" not in card.arch_args:
        raise InvalidInputError(f"{card.name} has no routing: routing_iterations applies to capsule networks")
    return {"routing_iterations": routing_iterations}


def _pretrained_net(card, ctx, weights, routing_iterations):
    """``(net, weights path)``: the card's net with verified weights loaded on ``ctx``."""
    from ._context import parse_ctx
    from ._hub import resolve_weights
    from ._weights import load_arrays_into, read_params

    ctxs = parse_ctx(ctx)
    net = card.build(**_net_kwargs(card, routing_iterations))
    path = resolve_weights(card, path=weights)
    arrays = read_params(path)
    try:
        load_arrays_into(net, arrays, ctx=ctxs, source=f"weights {os.fspath(path)}")
    except WeightsFormatError as exc:
        if weights is None:
            raise
        raise WeightsFormatError(str(exc) + _entries_fitting_hint(arrays, card.name)) from None
    return net, path


def _entries_fitting_hint(arrays, name) -> str:
    """`` They fit <entries>: ...`` when ``arrays`` have the names and shapes of other entries' nets
    (weights of one variant given to another), else ``""``."""
    from ._weights import param_shapes

    shapes = {k: tuple(a.shape) for k, a in arrays.items()}
    fits = [n for n in list_models() if n != name and param_shapes(get_card(n).build()) == shapes]
    if not fits:
        return ""
    return (f" They have the names and shapes of {' and '.join(fits)}: "
            f"load them with capszoo.load({fits[0]!r}, weights=...).")


def load(name, variant: Optional[str] = None, *, ctx=None, weights=None, dtype="float32",
         routing_iterations=None, backend="auto"):
    """Load a model by name, like Wolfram's ``NetModel[name]``.

    Parameters
    ----------
    name : str
        ``"capsnet-mnist"`` or an alias such as ``"CapsNet Trained on MNIST Data"``
        (case-insensitive); ``capszoo.list_models()`` lists them.
    variant : str, optional
        None or ``"EvaluationNet"``: the pretrained model object.
        ``"UninitializedEvaluationNet"``: the bare net with fresh parameters.
        ``"TrainingNet"``: the training architecture of the entry's recipe with its
        losses attached (CapsNets: ``ClassLoss`` and ``RecoLoss``), uninitialized.
    ctx : str or mxnet.Context or list, optional
        Devices for inference (``"cpu"``, ``"gpu:0"``, ``"cpu:0,cpu:1"``).
    weights : str, optional
        A ``.params`` file to use instead of the published weights.
    dtype : {"float32", "bfloat16", "int8"}
        Inference precision.  ``"bfloat16"`` uses MXNet AMP and needs a CPU with
        avx512_bf16 or amx_bf16 (else :class:`~capszoo.errors.InvalidInputError`);
        ``"int8"`` quantizes the convolutions and dense layers with oneDNN,
        calibrated on 256 real training digits shipped with the package.
    routing_iterations : int, optional
        CapsNets: routing iterations of ``DigitCaps`` (default: the card's).
    backend : {"auto", "mxnet", "onnxruntime"}
        Engine of the model's whole-net calls (see :class:`ZooModel`):
        ``"auto"`` runs them on onnxruntime when it can (:func:`engine_blockers`),
        else on MXNet; ``"onnxruntime"`` all of them (an error when it cannot), ``"mxnet"`` none.

    Returns
    -------
    ZooModel, or a HybridBlock for the uninitialized variants.

    Raises
    ------
    ModelNotFoundError
        Unknown name (the message suggests the nearest names).
    WeightsNotAvailableError
        No verified weights could be found.
    """
    card = card_for(name)
    if variant is not None and variant not in VARIANTS:
        raise InvalidInputError(f"unknown variant {variant!r}; use one of: {', '.join(VARIANTS)}")
    _check_dtype(dtype)
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    if variant == "TrainingNet":
        from ._recipe import load_recipe
        return card.build_training(load_recipe(card.recipe), card.build(**_net_kwargs(card, routing_iterations)))
    if variant == "UninitializedEvaluationNet":
        return card.build(**_net_kwargs(card, routing_iterations))
    _net_kwargs(card, routing_iterations)   # a routing override of a net without routing: an error now
    blockers = engine_blockers(card, ctx=ctx, dtype=dtype, routing_iterations=routing_iterations)
    if backend == "onnxruntime" and blockers:   # before the weights are loaded and converted
        raise InvalidInputError("backend='onnxruntime' cannot run " + "; ".join(blockers)
                                + "; use backend='mxnet' (or 'auto')")
    if weights is None and backend != "mxnet" and not blockers:
        # The published, sha256-verified file: onnxruntime reads it without MXNet; the MXNet net is
        # built when a call needs it.
        from ._hub import resolve_weights
        return ZooModel(card, None, ctx, weights_path=resolve_weights(card), backend=backend,
                        routing_iterations=routing_iterations)
    net, path = _pretrained_net(card, ctx, weights, routing_iterations)
    net.hybridize(static_alloc=True)
    from ._context import parse_ctx
    ctxs = parse_ctx(ctx)
    if dtype != "float32":  # bfloat16 (amp) or int8 (oneDNN, calibrated on the shipped digits)
        from . import _precision
        net = _precision.convert(net, dtype, ctx=ctxs)
    return ZooModel(card, net, ctxs, weights_path=path, dtype=dtype, backend=backend,
                    routing_iterations=routing_iterations)
