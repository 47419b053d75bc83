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

from ._registry import ModelCard, get_card
from .errors import InvalidInputError, SubnetNotFoundError

__all__ = ["load", "get_model", "CapsNetModel", "PROPERTIES", "VARIANTS", "BACKENDS", "ORT_MAX_BATCH"]

#: What a model call can return (Wolfram's NetModel properties).
PROPERTIES = ("Decision", "Probabilities", "TopProbabilities", "Capsule", "Reconstruction")
#: Variants ``load`` accepts besides the pretrained evaluation net.
VARIANTS = ("EvaluationNet", "UninitializedEvaluationNet", "TrainingNet")
DTYPES = ("float32", "bfloat16", "int8")
#: Engines of a model's whole-net calls: ``"auto"`` (onnxruntime for batches of up to
#: :data:`ORT_MAX_BATCH` images when it can run them, MXNet otherwise), ``"mxnet"``, ``"onnxruntime"``.
BACKENDS = ("auto", "mxnet", "onnxruntime")
#: Largest batch ``backend="auto"`` runs on onnxruntime.  Measured on the 2-core AVX2 machine of
#: bench/ (images/s, MXNet vs onnxruntime): batch 1 70 vs 148, 2 84 vs 140, 4 117 vs 180,
#: 8 162 vs 194, 16 220 vs 210; from batch 32 on MXNet is well ahead (220 vs 145 at 32).  On the
#: AVX-512 machine (2026-11-22, predict() of published weights): 1 108 vs 173, 2 160 vs 232,
#: 4 211 vs 276, 8 257 vs 289, 16 271 vs 258, 32 289 vs 218: the same crossover.
ORT_MAX_BATCH = 8


def _is_single(inputs):
    """Whether ``inputs`` is one image (the call returns one result) rather than a batch."""
    if isinstance(inputs, (str, os.PathLike)):
        return True
    if isinstance(inputs, (list, tuple)):
        return False
    if isinstance(inputs, np.ndarray):
        from ._preprocess import is_single_image
        return is_single_image(inputs)
    try:
        import mxnet as mx
        if isinstance(inputs, mx.nd.NDArray):
            return False
    except ImportError:  # pragma: no cover
        pass
    return True  # PIL image and anything the encoder will judge


class CapsNetModel:
    """A pretrained CapsNet with its card: classify, take apart, inspect.

    Call it on a file path, a PIL image, a numpy array (2-D, HxWxC, or a batch)
    or a list of these::

        model(x)                                  # the class (Decision)
        model(x, prop="Probabilities")            # {class: capsule length}
        model(x, prop="TopProbabilities", top=3)  # [(class, p), ...] best first
        model(x, prop="Capsule")                  # 16-D capsule of the predicted class
        model(x, prop="Reconstruction")           # PIL image decoded from that capsule

    One image gives one result, a list or batch a list.  An ``mxnet.nd.NDArray``
    of shape (N,1,28,28) in [0, 1] skips preprocessing.

    Engines: with ``backend="auto"`` (the default of :func:`load`) batches of up
    to :data:`ORT_MAX_BATCH` images run on onnxruntime, on the shipped
    weight-less graph with this model's current weights (about twice as fast as
    MXNet at batch 1), larger ones on MXNet; outputs agree to about 1e-6.  The
    onnxruntime session is built at the first small batch from ``net``'s
    parameters, and rebuilt when they change (sampled before each call).  It is
    used only for float32 on one CPU with the card's routing iterations;
    ``backend="mxnet"`` always runs ``net``.  Sub-nets (``take``, ``port``,
    ``reconstruct``, ...) always run on MXNet.

    Class probabilities are the lengths of the 10 digit capsules: each is in
    [0, 1) and they need not sum to 1 (several digits can be present).

    Attributes
    ----------
    card : ModelCard
    net : CapsNet
        The Gluon HybridBlock (hybridized).
    ctx : list of mxnet.Context
    weights_path : str or None
    """

    def __init__(self, card: ModelCard, net, ctx, weights_path=None, dtype="float32", *, backend="mxnet",
                 routing_iterations=None):
        self.card, self.net, self.ctx, self.weights_path, self.dtype = card, net, ctx, weights_path, dtype
        if backend not in BACKENDS:
            raise InvalidInputError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
        self.backend, self._routing_iterations = backend, routing_iterations
        self._ort_possible = None if backend != "mxnet" else False   # decided at the first small batch
        if backend == "onnxruntime":
            self._check_onnxruntime(raise_error=True)
        self._ort = None   # (OnnxRuntimeNet, the weights' fingerprint when it was built)

    def _check_onnxruntime(self, raise_error=False):
        blockers = onnxruntime_blockers(self.card, ctx=self.ctx, dtype=self.dtype,
                                        routing_iterations=self._routing_iterations)
        if blockers and raise_error:
            raise InvalidInputError("backend='onnxruntime' cannot run " + "; ".join(blockers)
                                    + "; use backend='mxnet' (or 'auto')")
        self._ort_possible = not blockers
        return self._ort_possible

    # -- classification -------------------------------------------------------------------
    def __call__(self, inputs, prop="Decision", *, top=5, polarity="auto", fit="auto", batch_size=128):
        if prop not in PROPERTIES:
            raise InvalidInputError(f"unknown property {prop!r}; use one of: {', '.join(PROPERTIES)}")
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise InvalidInputError(f"top must be a positive integer, got {top!r}")
        single = _is_single(inputs)
        x = self.encode(inputs, polarity=polarity, fit=fit)
        probs, caps, recos = self._run(x, batch_size, need_reco=(prop == "Reconstruction"))
        out = decode_outputs(self.card.classes, prop, probs, caps, recos, top=top)
        return out[0] if single else out

    def encode(self, inputs, *, polarity="auto", fit="auto"):
        """Preprocess ``inputs`` into the net's float32 (N,1,28,28) batch.

        An ``mxnet.nd.NDArray`` of that shape with finite values in [0, 1] passes
        through untouched; see :func:`capszoo._preprocess.to_batch` for the rest.
        """
        import mxnet as mx

        if isinstance(inputs, mx.nd.NDArray):
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
        return mx.nd.array(to_batch(inputs, polarity=polarity, fit=fit), dtype="float32")

    def engine_for(self, batch: int) -> str:
        """The engine a whole-net call on ``batch`` images runs on: ``"onnxruntime"`` or ``"mxnet"``."""
        if self.backend == "mxnet" or (self.backend == "auto" and batch > ORT_MAX_BATCH):
            return "mxnet"
        possible = self._ort_possible if self._ort_possible is not None else self._check_onnxruntime()
        return "onnxruntime" if possible else "mxnet"

    def run(self, x, *, batch_size=128, need_reco=True):
        """The whole net on a ready batch: ``(probabilities (N,10), capsules (N,16), reconstructions
        (N,1,28,28) or None)`` as numpy.

        ``x`` is a float32 numpy array or ``mxnet.nd.NDArray`` of shape (N,1,28,28)
        with values in [0, 1] (no preprocessing, no range check: see ``encode``).
        """
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 4 or shape[1:] != tuple(self.card.input_shape):
            raise InvalidInputError(f"a batch must have shape (N, 1, 28, 28), got {shape or type(x).__name__}")
        if not isinstance(x, np.ndarray):
            import mxnet as mx
            if not isinstance(x, mx.nd.NDArray):
                raise InvalidInputError(f"a batch must be a numpy array or an mxnet NDArray, got {type(x).__name__}")
        return self._run(x, batch_size, need_reco=need_reco)

    def _onnxruntime_net(self):
        """The onnxruntime net with the current weights of ``net`` (rebuilt when they changed)."""
        from ._ort import OnnxRuntimeNet
        fingerprint = _weights_fingerprint(self.net, self.ctx[0])
        if self._ort is None or not np.array_equal(self._ort[1], fingerprint):
            arrays = {name: p.data(self.ctx[0]).asnumpy()
                      for name, p in self.net._collect_params_with_prefix().items()}
            self._ort = (OnnxRuntimeNet(self.card, arrays=arrays), fingerprint)
        return self._ort[0]

    def _run(self, x, batch_size, need_reco=False):
        import mxnet as mx
        from mxnet import gluon

        if x.shape[0] == 0:
            raise InvalidInputError("no images to classify (empty batch)")
        if self.engine_for(min(x.shape[0], batch_size)) == "onnxruntime":
            xs = x if isinstance(x, np.ndarray) else x.asnumpy()
            return self._onnxruntime_net()(xs, batch_size=batch_size, need_reco=need_reco)
        if isinstance(x, np.ndarray):
            x = mx.nd.array(x, ctx=self.ctx[0], dtype="float32")
        probs, caps, recos = [], [], []
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size]
            parts = gluon.utils.split_and_load(chunk, self.ctx, even_split=False) if len(self.ctx) > 1 \
                else [chunk.as_in_context(self.ctx[0])]
            for part in parts:
                p, c, r = self.net(part)
                probs.append(p.asnumpy())
                caps.append(c.asnumpy())
                if need_reco:
                    recos.append(r.asnumpy())
        mx.nd.waitall()
        return (np.concatenate(probs), np.concatenate(caps), np.concatenate(recos) if recos else None)

    def predict(self, inputs, *, batch_size=128, polarity="auto"):
        """Class probabilities as a numpy array (N, 10)."""
        return self._run(self.encode(inputs, polarity=polarity), batch_size)[0]

    # -- taking the net apart -------------------------------------------------------------
    def __getitem__(self, name):
        """The named sub-net (``model["DigitCaps"]``), sharing parameters with the model."""
        try:
            return self.net[name]
        except KeyError:
            raise SubnetNotFoundError(f"{self.card.name} has no sub-net {name!r}; sub-nets: "
                                      f"{', '.join(self.card.subnets)}") from None

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
        """Image (N,1,28,28) -> the predicted class's 16-D capsule (N,16): ``take("ReLUConv1", "Pick")``."""
        return self.take("ReLUConv1", "Pick")

    def reconstructor(self):
        """16-D capsule (N,16) -> image (N,1,28,28): the ``Reconstruct`` sub-net."""
        return self.take("Reconstruct")

    def features(self, inputs, *, polarity="auto", batch_size=128):
        """16-D Pick features of ``inputs`` as numpy (N,16)."""
        return self._run(self.encode(inputs, polarity=polarity), batch_size)[1]

    def reconstruct(self, vectors):
        """Decode 16-D capsule vector(s) into PIL image(s) (one vector -> one image)."""
        import mxnet as mx

        v = np.asarray(vectors, dtype=np.float64)
        single = v.ndim == 1
        v = v[None] if single else v
        if v.ndim != 2 or v.shape[1] != 16 or v.shape[0] == 0:
            raise InvalidInputError(f"capsule vectors must have shape (16,) or (N, 16), got {np.shape(vectors)}")
        if not np.isfinite(v).all():
            raise InvalidInputError("capsule vectors contain NaN or inf")
        out = self.net["Reconstruct"](mx.nd.array(v.astype(np.float32), ctx=self.ctx[0])).asnumpy()
        images = [_to_pil(r) for r in out]
        return images[0] if single else images

    def port(self, inputs, name, *, polarity="auto", batch_size=128):
        """The output of sub-net ``name`` for ``inputs`` (NetPort), as numpy with a batch axis."""
        block = self.take("ReLUConv1", name)
        x = self.encode(inputs, polarity=polarity)
        if x.shape[0] == 0:
            raise InvalidInputError("no images given (empty batch)")
        return np.concatenate([block(x[i:i + batch_size].as_in_context(self.ctx[0])).asnumpy()
                               for i in range(0, x.shape[0], batch_size)])

    # -- information ----------------------------------------------------------------------
    def info(self):
        """:class:`~capszoo.NetInfo`: layers, parameters, arrays, layer types, trained size."""
        from ._info import net_info
        return net_info(self.net, name=self.card.name, weights_path=self.weights_path)

    def __repr__(self):
        return (f"CapsNetModel({self.card.name!r}, params={self.card.num_params:,}, "
                f"ctx={[str(c) for c in self.ctx]}, weights={self.weights_path!r})")


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


def onnxruntime_blockers(card, *, ctx, dtype="float32", routing_iterations=None):
    """Why ``card``'s whole net cannot run on onnxruntime with these options (an empty list: it can)."""
    from ._ort import onnxruntime_available
    import mxnet as mx

    default_iterations = card.builder().routing_iterations
    return [why for why, bad in (
        (f"dtype {dtype!r} (it runs float32)", dtype != "float32"),
        (f"ctx {[str(c) for c in ctx]} (it runs on one CPU)", list(ctx) != [mx.cpu(0)]),
        (f"routing_iterations={routing_iterations} (its graph unrolls {default_iterations})",
         routing_iterations not in (None, default_iterations)),
        (f"{card.name} (no onnxruntime graph ships for it)", not card.runtime_graph),
        ("this installation (onnxruntime is not installed)", not onnxruntime_available()),
    ) if bad]


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
        Override the routing iterations (the weights do not depend on it).
    """
    card = get_card(name)
    if not pretrained and weights is None:
        return card.builder(**_net_kwargs(routing_iterations))
    return _pretrained_net(card, ctx, weights, routing_iterations)[0]


def _net_kwargs(routing_iterations):
    return {} if routing_iterations is None else {"routing_iterations": routing_iterations}


def _pretrained_net(card, ctx, weights, routing_iterations):
    """``(net, weights path)``: the card's net with verified weights loaded on ``ctx``."""
    from ._context import parse_ctx
    from ._hub import resolve_weights
    from ._weights import load_params_into

    ctxs = parse_ctx(ctx)
    net = card.builder(**_net_kwargs(routing_iterations))
    path = resolve_weights(card, path=weights)
    load_params_into(net, path, ctx=ctxs)
    return net, path


def load(name, variant: Optional[str] = None, *, ctx=None, weights=None, dtype="float32",
         routing_iterations=None, backend="auto"):
    """Load a model by name, like Wolfram's ``NetModel[name]``.

    Parameters
    ----------
    name : str
        ``"capsnet-mnist"`` or an alias such as ``"CapsNet Trained on MNIST Data"``
        (case-insensitive).
    variant : str, optional
        None or ``"EvaluationNet"``: the pretrained model object.
        ``"UninitializedEvaluationNet"``: the bare net with fresh parameters.
        ``"TrainingNet"``: the training architecture with its losses ``ClassLoss``
        and ``RecoLoss`` attached, uninitialized.
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
        Routing iterations of ``DigitCaps`` (default: the card's, 3).
    backend : {"auto", "mxnet", "onnxruntime"}
        Engine of the model's whole-net calls (see :class:`CapsNetModel`):
        ``"auto"`` runs batches of up to :data:`ORT_MAX_BATCH` images on
        onnxruntime when it can (float32, one CPU), ``"onnxruntime"`` all of
        them (an error when it cannot), ``"mxnet"`` none.

    Returns
    -------
    CapsNetModel, or a HybridBlock for the uninitialized variants.

    Raises
    ------
    ModelNotFoundError
        Unknown name (the message suggests the nearest names).
    WeightsNotAvailableError
        No verified weights could be found.
    """
    card = get_card(name)
    if variant is not None and variant not in VARIANTS:
        raise InvalidInputError(f"unknown variant {variant!r}; use one of: {', '.join(VARIANTS)}")
    _check_dtype(dtype)
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    if variant == "TrainingNet":
        return card.training_builder(**_net_kwargs(routing_iterations))
    if variant == "UninitializedEvaluationNet":
        return card.builder(**_net_kwargs(routing_iterations))
    from ._context import parse_ctx
    ctxs = parse_ctx(ctx)
    if backend == "onnxruntime":   # before the weights are loaded and converted
        blockers = onnxruntime_blockers(card, ctx=ctxs, dtype=dtype, routing_iterations=routing_iterations)
        if blockers:
            raise InvalidInputError("backend='onnxruntime' cannot run " + "; ".join(blockers)
                                    + "; use backend='mxnet' (or 'auto')")
    net, path = _pretrained_net(card, ctxs, weights, routing_iterations)
    net.hybridize(static_alloc=True)
    if dtype != "float32":  # bfloat16 (amp) or int8 (oneDNN, calibrated on the shipped digits)
        from . import _precision
        net = _precision.convert(net, dtype, ctx=ctxs)
    return CapsNetModel(card, net, ctxs, weights_path=path, dtype=dtype, backend=backend,
                        routing_iterations=routing_iterations)
