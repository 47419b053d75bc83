"""Small helpers that work on the net of any zoo entry (no MXNet import at module level)."""
from __future__ import annotations

__all__ = ["as_outputs"]


def as_outputs(out) -> tuple:
    """A net's outputs as a tuple: a hybridized block with one output returns a bare NDArray."""
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


class SubnetChain:
    """Mixin for a zoo net that is a chain of named sub-nets (``subnet_names``, registered as children):
    ``net["Name"]`` and ``net.subnets()``."""

    def __getitem__(self, name):
        try:
            return self._children[name]
        except KeyError:
            raise KeyError(f"{type(self).__name__} has no sub-net {name!r}; sub-nets: "
                           f"{', '.join(self.subnet_names)}") from None

    def subnets(self):
        """``(name, block)`` pairs in data-flow order."""
        return [(n, self._children[n]) for n in self.subnet_names]
