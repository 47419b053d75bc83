"""Reduced-precision inference: a float32 CapsNet converted to bfloat16 or int8.

>>> model = capszoo.load("capsnet-mnist", dtype="int8")      # doctest: +SKIP
>>> model("digit.png")                                        # doctest: +SKIP
7

:func:`convert` turns a loaded, float32 net into one of :data:`DTYPES`:

``"float32"``
    The net itself, unchanged.
``"bfloat16"``
    ``mxnet.contrib.amp.convert_hybrid_block(net, target_dtype="bfloat16",
    cast_optional_params=True)``: convolutions and dense layers run in bfloat16
    through oneDNN, routing stays in float32.  Only on CPUs with native bfloat16
    instructions: :func:`supports_bfloat16` looks for ``avx512_bf16`` or
    ``amx_bf16`` in ``/proc/cpuinfo``.  **Elsewhere convert raises**
    :class:`~capszoo.errors.InvalidInputError` (it does not fall back to float32
    silently: a caller who asked for bfloat16 should know he did not get it).
    oneDNN 2.4 (MXNet 1.9.1) has no bfloat16 convolution at all below AVX-512,
    and only a slower-than-float32 emulation without ``avx512_bf16``.  The
    converted net is also run once on a blank image, so an MXNet build that
    cannot run it fails here, with the same advice, and not at the first call.
``"int8"``
    ``mxnet.contrib.quantization.quantize_net_v2`` (oneDNN): both convolutions
    and the three dense layers of the decoder in int8, with thresholds
    calibrated (min/max, ``calib_mode="naive"``) on real digits, by default the
    256 MNIST *training* digits shipped as ``capszoo/pretrained/``
    :data:`CALIBRATION_FILE`.  Kept in float32: the routing-logit additions
    (``elemwise_add``; quantizing them puts the logits, which grow with every
    iteration, on one int8 scale and moves the capsules by up to ~0.4), every
    ``batch_dot`` (prediction vectors and routing: MXNet has no int8
    ``batch_dot``) and the decoder's sigmoid.  Calibration needs digits: random
    noise gives thresholds far from those of real inputs (measured on 1,000 test
    digits with trained weights: decisions agree with float32 on 99.3 % and
    probabilities move by up to 0.31, against 100 % and 0.018 with digits).
    On an AVX2-only CPU (no VNNI) int8 is ~1.5x float32 from batch 32 up, and
    slower than float32 at batch 1 (oneDNN's int8 convolution of one 6x6 output
    image is no faster than float32's, and the net adds (de)quantization).
    With AVX-512 and VNNI (bench/results/2026-11-22T0937.json, 2 cores) int8
    runs 2.3x float32 at batch 128 (599 against 259 images/s) and bfloat16 1.6x
    (414), both still slower than float32 at batch 1.

The converted net keeps the CapsNet interface: it takes the same float32
``(N,1,28,28)`` batch in [0, 1] and returns float32 ``(probabilities (N,10),
capsule (N,16), reconstruction (N,1,28,28))``.  It is a :class:`ReducedPrecisionNet`:
its sub-nets (``net["DigitCaps"]``, and so ``model.take``, ``model.port``,
``model.reconstruct``, ``model.feature_extractor``) are those of the float32 net
it was made from and run in float32; only the whole-net call is reduced.

Conversion is CPU-only: a ``gpu`` context is refused.
"""
from __future__ import annotations

import os
import warnings

from . import _env  # noqa: F401

import numpy as np
from mxnet.gluon import Block

from ._env import BF16_FLAGS, cpu_flags, supports_bfloat16
from .errors import DataFileNotFoundError, DataFormatError, InvalidInputError

__all__ = ["DTYPES", "CALIBRATION_FILE", "convert", "supports_bfloat16", "cpu_flags", "BF16_FLAGS",
           "calibration_images", "as_calibration_batch", "make_calibration_file", "ReducedPrecisionNet"]

#: The dtypes :func:`convert` (and ``capszoo.load(..., dtype=)``) accept.
DTYPES = ("float32", "bfloat16", "int8")
#: Package data: 256 MNIST training digits for int8 calibration (see :func:`make_calibration_file`).
CALIBRATION_FILE = "calibration-mnist-train-256.npz"
#: Operators kept in float32 by int8 quantization (the routing logits' running sum).
INT8_EXCLUDED_OPERATORS = ("elemwise_add",)
#: Calibration: MXNet's min/max thresholds ("naive"); see the module docstring.
INT8_CALIB_MODE = "naive"
_CALIB_BATCH = 64
_IMAGE_SHAPE = (1, 28, 28)


def _bf16_unavailable(reason):
    return InvalidInputError(
        f"dtype='bfloat16' is not available on this machine: {reason}. MXNet 1.9.1's oneDNN runs "
        f"bfloat16 convolutions only on CPUs with AVX-512 (natively with {' or '.join(BF16_FLAGS)}); "
        "use dtype='float32' (same results, full speed here) or dtype='int8' (quantized, faster)")


# -- calibration data --------------------------------------------------------------------------
def _calibration_path():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", CALIBRATION_FILE)


def calibration_images(path=None):
    """The shipped calibration digits, uint8 ``(256, 28, 28)``, or None when the file is absent.

    Raises
    ------
    DataFormatError
        The file exists but does not hold uint8 ``(N, 28, 28)`` images.
    """
    path = os.fspath(path) if path is not None else _calibration_path()
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = np.asarray(npz["images"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataFormatError(f"{path}: not a capszoo calibration file ({exc}); reinstall capszoo") from None
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28) or not len(images):
        raise DataFormatError(f"{path}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}; "
                              "reinstall capszoo")
    return images


def as_calibration_batch(images):
    """Calibration images as float32 ``(N,1,28,28)`` in [0, 1].

    Accepts uint8 ``(N,28,28)`` (MNIST's format, scaled by 1/255) or float
    ``(N,1,28,28)`` / ``(N,28,28)`` already in [0, 1].
    """
    try:
        a = np.asarray(images)
    except Exception as exc:  # noqa: BLE001
        raise InvalidInputError(f"calibration_images must be an array of digit images: {exc}") from None
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1:] != _IMAGE_SHAPE or a.shape[0] == 0:
        raise InvalidInputError(f"calibration_images must have shape (N, 28, 28) or (N, 1, 28, 28) with N >= 1, "
                                f"got {np.shape(images)}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1 / 255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise InvalidInputError(f"calibration_images must be uint8 (0..255) or float in [0, 1], got {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
        raise InvalidInputError("float calibration_images must hold finite values in [0, 1] "
                                "(divide uint8 images by 255, or pass them as uint8)")
    return a


def make_calibration_file(data_dir, path=None, *, count=256, seed=20240601):
    """Write the calibration set: ``count`` MNIST training digits, uint8, as ``.npz``.

    The digits are the first ``count`` of a ``seed``-ed permutation of the 55,000
    training images the recipe trains on (its 5,000 validation images, split
    seed 0, are left out), sorted by index.  The file holds ``images`` (uint8
    ``(count,28,28)``), ``labels``, ``indices`` (into MNIST's training file) and
    ``source`` (how it was made).  Returns the path.
    """
    from ._train import split_train_validation
    from .data import load_mnist

    images, labels = load_mnist("train", data_dir=data_dir)
    train_idx, _ = split_train_validation(len(images), 5000, 0)
    pick = np.sort(np.random.default_rng(seed).permutation(train_idx)[:count])
    path = os.fspath(path) if path is not None else _calibration_path()
    source = (f"MNIST train-images-idx3-ubyte: {count} of the 55,000 training images (validation split "
              f"size 5000, split seed 0, excluded), first {count} of numpy default_rng({seed}).permutation, sorted")
    from ._io import atomic_path
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, images=images[pick].astype(np.uint8), labels=labels[pick].astype(np.uint8),
                                indices=pick.astype(np.int32), source=np.array(source))
    return path


# -- the converted net -------------------------------------------------------------------------
class ReducedPrecisionNet(Block):
    """A reduced-precision CapsNet: the converted graph for the whole-net call on
    NDArrays, the float32 net for everything else.

    Its children are the float32 net's sub-nets (shared, as in a NetSlice), so
    ``net["DigitCaps"]``, ``collect_params()`` and :func:`capszoo.net_info` see
    the float32 architecture (8,141,840 parameters, 82 layers); called on a
    Symbol it traces the float32 graph.

    Attributes
    ----------
    dtype : str
        ``"bfloat16"`` or ``"int8"``.
    converted : mxnet.gluon.SymbolBlock
        The converted graph (not a child: its parameters are the converted copies).
    float32_net : CapsNet
        The net it was made from.
    """

    def __init__(self, converted, float32_net, dtype):
        super().__init__(prefix=getattr(float32_net, "prefix", "capsnet_"))
        self.dtype = dtype
        object.__setattr__(self, "converted", converted)        # not registered as children
        object.__setattr__(self, "float32_net", float32_net)
        for name, block in float32_net._children.items():
            self.register_child(block, name)
        path = getattr(float32_net, "_capszoo_weights_path", None)
        if path is not None:
            self._capszoo_weights_path = path

    def forward(self, x):
        import mxnet as mx

        if isinstance(x, mx.sym.Symbol):  # tracing (net_info, export): the float32 graph
            return self.float32_net(x)
        outs = self.converted(x)
        return tuple(o if o.dtype == np.float32 else o.astype("float32") for o in outs)

    def hybridize(self, active=True, **kwargs):
        self.converted.hybridize(active, **kwargs)

    def __getitem__(self, name):
        return self.float32_net[name]

    def subnets(self):
        return self.float32_net.subnets()

    @property
    def routing_iterations(self):
        return self.float32_net.routing_iterations

    @property
    def output_names(self):
        return self.float32_net.output_names

    @property
    def subnet_names(self):
        return self.float32_net.subnet_names

    def __repr__(self):
        return f"ReducedPrecisionNet(dtype={self.dtype!r}, routing_iterations={self.routing_iterations})"


def _cpu_contexts(ctx, dtype):
    import mxnet as mx

    if ctx is None:
        ctxs = [mx.cpu()]
    elif isinstance(ctx, (list, tuple)):
        ctxs = list(ctx)
    else:
        ctxs = [ctx]
    if not ctxs or not all(isinstance(c, mx.Context) for c in ctxs):
        raise InvalidInputError(f"ctx must be an mxnet.Context or a list of them, got {ctx!r}")
    bad = [str(c) for c in ctxs if c.device_type != "cpu"]
    if bad:
        raise InvalidInputError(f"dtype={dtype!r} runs on CPUs only (oneDNN), not on {', '.join(bad)}; "
                                "use dtype='float32' on a GPU")
    return ctxs


def _traced(net):
    """Make sure ``net`` is hybridized and has a cached graph (amp and quantization need it)."""
    import mxnet as mx

    if not getattr(net, "_active", False):
        net.hybridize(static_alloc=True)
    if not net._cached_graph:
        outs = net(mx.nd.zeros((1,) + _IMAGE_SHAPE, ctx=mx.cpu()))
        for o in outs:
            o.wait_to_read()


def _check_runs(block, dtype):
    """Run ``block`` once on a blank image; turn a oneDNN failure into a capszoo error."""
    import mxnet as mx

    try:
        outs = block(mx.nd.zeros((1,) + _IMAGE_SHAPE, ctx=mx.cpu()))
        for o in outs:
            o.wait_to_read()
    except mx.base.MXNetError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if dtype == "bfloat16":
            raise _bf16_unavailable(f"MXNet failed to run the bfloat16 net ({first})") from None
        raise InvalidInputError(f"dtype={dtype!r}: MXNet failed to run the converted net ({first}); "
                                "use dtype='float32'") from None
    if len(outs) != 3:  # pragma: no cover - the converted graph keeps the CapsNet's outputs
        raise InvalidInputError(f"dtype={dtype!r}: the converted net has {len(outs)} outputs, expected 3")


def _to_bfloat16(net):
    from mxnet.contrib import amp
    import mxnet as mx

    if not supports_bfloat16():
        have = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx_vnni")))
        raise _bf16_unavailable("this CPU has no native bfloat16 instructions (no "
                                f"{' / '.join(BF16_FLAGS)} in /proc/cpuinfo; AVX-512 flags present: "
                                f"{', '.join(have) if have else 'none'})")
    _traced(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Cannot decide type for ... data: None"
        return amp.convert_hybrid_block(net, target_dtype="bfloat16", ctx=mx.cpu(), cast_optional_params=True)


def _to_int8(net, images):
    import mxnet as mx
    from mxnet.contrib import quantization

    if images is None:
        images = calibration_images()
        if images is None:
            raise DataFileNotFoundError(
                f"dtype='int8' needs real digits to calibrate on, and the calibration set "
                f"{_calibration_path()} is missing; pass calibration_images= (uint8 (N,28,28) MNIST-like digits, "
                "a few hundred) or reinstall capszoo")
    batch = as_calibration_batch(images)
    _traced(net)
    size = min(_CALIB_BATCH, len(batch))
    usable = len(batch) - len(batch) % size  # NDArrayIter pads the last batch: calibrate on whole batches
    calib = mx.io.NDArrayIter(data=mx.nd.array(batch[:usable]), batch_size=size, data_name="data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return quantization.quantize_net_v2(
            net, quantized_dtype="auto", quantize_mode="full", quantize_granularity="tensor-wise",
            exclude_operators=list(INT8_EXCLUDED_OPERATORS), calib_data=calib, calib_mode=INT8_CALIB_MODE,
            num_calib_examples=usable, ctx=mx.cpu())


def check_dtype(dtype):
    """Raise InvalidInputError unless ``dtype`` is one of :data:`DTYPES`."""
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidInputError(f"unsupported dtype {dtype!r}; use one of: {', '.join(DTYPES)}")
    return dtype


def convert(net, dtype, *, ctx=None, calibration_images=None):
    """The float32 CapsNet ``net`` in ``dtype`` (one of :data:`DTYPES`).

    Parameters
    ----------
    net : CapsNet
        A loaded float32 net (hybridized or not; it is hybridized and traced
        once if needed).  It is not modified.
    dtype : {"float32", "bfloat16", "int8"}
    ctx : mxnet.Context or list of them, optional
        CPU contexts the converted net runs on (default ``cpu()``).
    calibration_images : array, optional
        int8 only: digits to calibrate on, uint8 ``(N,28,28)`` or float
        ``(N,1,28,28)`` in [0, 1]; default the shipped :data:`CALIBRATION_FILE`.

    Returns
    -------
    ``net`` itself for ``"float32"``; else a :class:`ReducedPrecisionNet`
    (float32 input, three float32 outputs, the float32 sub-nets).

    Raises
    ------
    InvalidInputError
        An unsupported dtype (the message lists :data:`DTYPES`), a GPU context,
        ``"bfloat16"`` on a CPU without native bfloat16 (see the module
        docstring), bad ``calibration_images``.
    DataFileNotFoundError
        ``"int8"`` without ``calibration_images`` when the shipped set is missing.
    """
    check_dtype(dtype)
    if dtype == "float32":
        if calibration_images is not None:
            raise InvalidInputError("calibration_images is only used with dtype='int8'")
        return net
    if calibration_images is not None and dtype != "int8":
        raise InvalidInputError("calibration_images is only used with dtype='int8'")
    ctxs = _cpu_contexts(ctx, dtype)
    if isinstance(net, ReducedPrecisionNet):
        raise InvalidInputError(f"the net is already {net.dtype}; convert the float32 net")
    block = _to_bfloat16(net) if dtype == "bfloat16" else _to_int8(net, calibration_images)
    block.hybridize(static_alloc=True)
    _check_runs(block, dtype)
    if len(ctxs) > 1 or ctxs[0] != block.collect_params().list_ctx()[0]:
        block.collect_params().reset_ctx(ctxs)
    return ReducedPrecisionNet(block, net, dtype)
