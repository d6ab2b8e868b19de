"""``xcos explain``: verify and explain one pair of faces (``xcos.explain.Verifier``)."""

from __future__ import annotations

import argparse

from xcos.cli.common import (
    BUILTIN_HELP,
    Command,
    decision_arguments,
    max_pixels_argument,
    model_verifier,
)
from xcos.io_utils import atomic_save_json

DESCRIPTION = "verify and explain one pair of faces"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image_a", help="first face: an image file")
    parser.add_argument("image_b", help="second face: an image file")
    parser.add_argument("-p", "--pretrained", help=BUILTIN_HELP)
    parser.add_argument("--out", help="write the explanation figure (PNG) here")
    parser.add_argument("--json", help="write the explanation's fields (JSON) here")
    parser.add_argument(
        "--align",
        choices=("auto", "always", "never"),
        default="auto",
        help="align faces with MTCNN: auto (unless already squares of the model's input size), "
        "always, or never (default: auto)",
    )
    max_pixels_argument(parser)
    decision_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Print the decision; write the figure (``--out``) and the fields (``--json``)."""
    verifier = model_verifier(args, args.align)
    result = verifier.explain(args.image_a, args.image_b)
    verdict = "same person" if result.same else "different people"
    print(
        f"xCos {result.score:.4f} (cos {result.cos:.4f}), threshold {result.threshold:.4f}: "
        f"{verdict}"
    )
    if args.out:
        result.figure(args.layout).savefig(args.out, bbox_inches="tight")
        print(f"figure: {args.out}")
    if args.json:
        atomic_save_json(result.as_dict(), args.json, indent=2)
        print(f"json: {args.json}")
    return 0


COMMAND = Command("explain", DESCRIPTION, DESCRIPTION, add_arguments, run)
