"""What the ``xcos`` commands share (torch-free): what a command is (``Command``), the options
every command takes (``shared_options``), argument types, and options of several commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from xcos.data.limits import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Command:
    """One ``xcos`` command: its name and one-line ``help`` (``xcos --help``), its
    ``description`` (``xcos <name> --help``), what adds its options to its parser, and what
    runs it, returning the exit status."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter


def shared_options() -> argparse.ArgumentParser:
    """The options every command takes, as an argparse parent parser (``parents=[...]``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


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


def decision_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``xcos explain`` and ``xcos report`` share: the threshold, the figure layout and
    the device."""
    parser.add_argument("--threshold", type=float, help="decision threshold on the xCos score")
    parser.add_argument("--metrics", help="take the threshold from a test run's metrics.json")
    parser.add_argument(
        "--layout",
        choices=("paper", "overlay"),
        default="paper",
        help="figure layout: faces and maps side by side, or the maps over the faces",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")


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
