"""Device contexts: parse ``cpu``, ``cpu:0,cpu:1``, ``gpu:0``, ``gpu:all`` into MXNet contexts."""
from __future__ import annotations

from . import _env  # noqa: F401

import mxnet as mx

from .errors import ContextError

__all__ = ["parse_ctx", "default_kvstore", "num_gpus"]


def num_gpus() -> int:
    """GPUs MXNet can see (0 on a CPU build or a machine without GPUs)."""
    try:
        return mx.context.num_gpus()
    except mx.base.MXNetError:  # CPU-only build
        return 0


def parse_ctx(spec=None):
    """Parse a device specification into a list of MXNet contexts.

    Parameters
    ----------
    spec : str, mxnet.Context, list of those, or None
        ``"cpu"``, ``"cpu:0,cpu:1"``, ``"gpu:0"``, ``"gpu:0,gpu:1"``, ``"gpu:all"``;
        a Context or a list of them is passed through; None means ``cpu``.

    Returns
    -------
    list of mxnet.Context

    Raises
    ------
    ContextError
        A spec that does not parse, a repeated device, or a GPU that is not
        available (checked before any work starts).
    """
    if spec is None:
        return [mx.cpu()]
    if isinstance(spec, mx.Context):
        spec = [spec]
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ContextError("empty context list; use e.g. 'cpu' or 'gpu:0,gpu:1'")
        ctxs = []
        for c in spec:
            ctxs.extend(parse_ctx(c) if not isinstance(c, mx.Context) else [c])
        return _check(ctxs, str(spec))
    if not isinstance(spec, str):
        raise ContextError(f"context must be a string like 'cpu' or 'gpu:0,gpu:1', got {type(spec).__name__}")
    ctxs = []
    for part in (p.strip().lower() for p in spec.split(",")):
        kind, _, idx = part.partition(":")
        if kind not in ("cpu", "gpu"):
            raise ContextError(f"cannot parse context {part!r} in {spec!r}; use cpu, cpu:N, gpu:N, "
                               "gpu:all or a comma-separated list such as gpu:0,gpu:1")
        if idx == "":
            ctxs.append(mx.Context(kind, 0))
        elif idx == "all":
            if kind != "gpu":
                raise ContextError(f"{part!r}: 'all' is only for GPUs; use cpu or cpu:0,cpu:1")
            n = num_gpus()
            if n == 0:
                raise ContextError("gpu:all: MXNet sees no GPU on this machine; use --ctx cpu")
            ctxs.extend(mx.gpu(i) for i in range(n))
        elif idx.isdigit():
            ctxs.append(mx.Context(kind, int(idx)))
        else:
            raise ContextError(f"cannot parse context {part!r} in {spec!r}: device index must be a "
                               "non-negative integer or 'all'")
    return _check(ctxs, spec)


def _check(ctxs, spec):
    seen = set()
    for c in ctxs:
        key = (c.device_type, c.device_id)
        if key in seen:
            raise ContextError(f"device {c} is listed twice in {spec!r}")
        seen.add(key)
    gpus = [c for c in ctxs if c.device_type == "gpu"]
    if gpus:
        n = num_gpus()
        missing = [str(c) for c in gpus if c.device_id >= n]
        if missing:
            raise ContextError(f"{', '.join(missing)} not available: MXNet sees {n} GPU(s) on this "
                               "machine (is the CUDA build of mxnet installed?); use --ctx cpu")
    if len({c.device_type for c in ctxs}) > 1:
        raise ContextError(f"{spec!r} mixes CPU and GPU contexts; data parallel training needs one kind")
    return ctxs


def default_kvstore(ctxs):
    """The kvstore that reduces gradients across ``ctxs``: ``device`` for GPUs, ``local`` for CPUs."""
    return "device" if ctxs[0].device_type == "gpu" else "local"
