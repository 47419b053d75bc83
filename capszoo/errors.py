"""The capszoo exception family.

Every error capszoo raises on purpose is a :class:`CapszooError`.  Each class
also inherits the builtin exception that matches it, so ``except LookupError``
or ``except FileNotFoundError`` keep working for callers who do not know
capszoo's classes.  Messages name the problem and what to do about it.
"""
from __future__ import annotations

__all__ = [
    "CapszooError",
    "ModelNotFoundError",
    "SubnetNotFoundError",
    "WeightsNotAvailableError",
    "WeightsIntegrityError",
    "WeightsFormatError",
    "InvalidImageError",
    "InvalidInputError",
    "DataFormatError",
    "DataFileNotFoundError",
    "ChecksumMismatchError",
    "DownloadError",
    "RecipeError",
    "ContextError",
    "CheckpointError",
    "CacheError",
    "ExportError",
    "UnsupportedOperatorError",
    "GraphFormatError",
    "DistributedError",
    "PublishError",
]


class CapszooError(Exception):
    """Base class of all capszoo errors."""


class ModelNotFoundError(CapszooError, LookupError):
    """No model of that name is registered."""


class SubnetNotFoundError(CapszooError, LookupError):
    """A sub-net name that the net does not have."""


class WeightsNotAvailableError(CapszooError, FileNotFoundError):
    """No pretrained weights could be found for the model."""


class WeightsIntegrityError(CapszooError, ValueError):
    """A weights file whose sha256 differs from the model card's."""


class WeightsFormatError(CapszooError, ValueError):
    """A weights file that is not a valid parameter file for this net."""


class InvalidImageError(CapszooError, ValueError):
    """An image file or object that cannot be used as a digit image."""


class InvalidInputError(CapszooError, ValueError):
    """An argument of the wrong type, shape, dtype or value."""


class DataFormatError(CapszooError, ValueError):
    """A data file (e.g. MNIST idx) that is corrupt or not of the expected format."""


class DataFileNotFoundError(CapszooError, FileNotFoundError):
    """A data file that is not where it was looked for."""


class ChecksumMismatchError(CapszooError, ValueError):
    """Downloaded or local bytes whose checksum differs from the expected one."""


class DownloadError(CapszooError, OSError):
    """A download failed on every source."""


class RecipeError(CapszooError, ValueError):
    """A training recipe that does not validate against the schema."""


class ContextError(CapszooError, ValueError):
    """A device context specification that does not parse or is not available."""


class CheckpointError(CapszooError, ValueError):
    """A checkpoint or run directory that cannot be used."""


class CacheError(CapszooError, OSError):
    """The cache directory cannot be created or written."""


class ExportError(CapszooError, ValueError):
    """An export that cannot be written or verified."""


class UnsupportedOperatorError(ExportError, NotImplementedError):
    """An MXNet operator the ONNX exporter does not know."""


class GraphFormatError(CapszooError, ValueError):
    """A symbol JSON or ONNX file that is not a valid graph."""


class DistributedError(CapszooError, RuntimeError):
    """A distributed (parameter server) job that cannot start or failed."""


class PublishError(CapszooError, RuntimeError):
    """A zoo entry that cannot be published to the Hugging Face Hub (no weights, no token, a Hub failure...)."""
