"""Argument types and options shared by several ``xcos`` commands (torch-free)."""

from __future__ import annotations

import argparse

from xcos.data.limits import DEFAULT_MAX_PIXELS


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive number, got {text}")
    return value


def max_pixels_argument(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels``: the decompression-bomb limit of ``xcos.data.limits``."""
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse images of more pixels, from their header, before decoding them "
        f"(default: {DEFAULT_MAX_PIXELS})",
    )


BUILTIN_HELP = (
    "an xcos checkpoint (default: the built-in dlib model, dlib's recognizer with the faithful "
    'head shipped in xcos; needs pip install -e ".[dlib]")'
)


def model_verifier(args: argparse.Namespace, align: str = "auto"):
    """The Verifier of ``-p`` (``--threshold``, ``--metrics``, ``--device``,
    ``--max-pixels``), or, without ``-p``, the built-in dlib model, said on stderr."""
    import sys

    from xcos.errors import ConfigError
    from xcos.explain.verifier import Verifier

    if args.pretrained:
        return Verifier.from_checkpoint(
            args.pretrained, args.threshold, args.metrics, args.device, align, args.max_pixels
        )
    if args.metrics:
        raise ConfigError("--metrics reads a test run of a checkpoint: pass -p with it")
    verifier = Verifier.pretrained("dlib", args.threshold, args.device, align, args.max_pixels)
    print(
        f"model: built-in dlib (dlib's ResNet + xCos head trained on "
        f"{verifier.info['trained_on']}); pass -p for another model",
        file=sys.stderr,
    )
    return verifier
