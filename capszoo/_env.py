"""Process set-up that must happen before MXNet is imported.

MXNet's OpenMP runtime starts with one thread on this class of machine; with
``OMP_NUM_THREADS`` set to the usable cores before ``import mxnet`` the net runs
about twice as fast.  We set it only when the user has not.
"""
from __future__ import annotations

import os


def usable_cores() -> int:
    """Number of CPU cores this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


#: CPU flags (``/proc/cpuinfo``) that mean native bfloat16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path="/proc/cpuinfo"):
    """The set of CPU feature flags of the first processor in ``path`` (empty when unreadable)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def supports_bfloat16() -> bool:
    """Whether this CPU has native bfloat16 instructions (``avx512_bf16`` or ``amx_bf16``)."""
    return any(f in cpu_flags() for f in BF16_FLAGS)


def configure_threads() -> None:
    """Set ``OMP_NUM_THREADS`` to the usable cores unless the user chose a value."""
    if not os.environ.get("OMP_NUM_THREADS"):
        os.environ["OMP_NUM_THREADS"] = str(usable_cores())
    # MXNet prints "Subgraph backend MKLDNN is activated" on every Module bind otherwise.
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")


configure_threads()
