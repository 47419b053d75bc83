"""Helpers that scripts, benchmarks and tests share with capszoo (public, stable names).

- atomic file writes: ``atomic_write_bytes``, ``atomic_write_text``, ``atomic_write_json``,
  ``atomic_path`` (a temporary name in the target's folder, ``os.replace`` at the end: a reader
  never sees half a file);
- the CPU's features as the kernel reports them: ``cpu_flags``, ``supports_bfloat16``.

This module does not import MXNet.
"""
from ._io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from ._env import cpu_flags, supports_bfloat16

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "cpu_flags",
           "supports_bfloat16"]
