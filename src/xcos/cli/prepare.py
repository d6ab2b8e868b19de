"""``xcos prepare``: detect, align and pack a verification pair set (``xcos.data.prepare``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from xcos.cli.common import Command, max_pixels_argument
from xcos.errors import ConfigError

DESCRIPTION = "detect, align and pack a pair set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", help="LFW-style pairs file (View 2 pairs.txt or View 1)")
    source.add_argument("--bin", help="InsightFace .bin validation set (already aligned)")
    source.add_argument("--csv", help="CSV with header path_a,path_b,label[,fold]")
    parser.add_argument("--images", help="with --pairs: the folder of <Name>/<Name>_NNNN.jpg")
    parser.add_argument("--out", required=True, help="the pack folder to write (<name>.pack)")
    parser.add_argument("--folds", type=int, nargs="+", help="keep only these folds")
    parser.add_argument(
        "--select",
        choices=("largest", "central"),
        default="largest",
        help="which face of an image with several: the largest or the most central",
    )
    parser.add_argument(
        "--aligner",
        choices=("mtcnn", "dlib"),
        default="mtcnn",
        help="MTCNN (default), or dlib's own detector, 5 landmarks and 150x150 chips (needs "
        "the dlib-align extra; makes --template dlib faces only)",
    )
    parser.add_argument(
        "--template",
        choices=("arcface", "dlib"),
        help="face layout: ArcFace 112x112 (default), or dlib's 150x150 chip (for dlib_resnet; "
        "the default with --aligner dlib)",
    )
    parser.add_argument("--size", type=int, help="side of the aligned faces (default: template's)")
    parser.add_argument(
        "--no-face",
        choices=("error", "center_crop"),
        default="error",
        help="when no face is found: stop, or (pre-centred sets such as LFW) take a centred crop",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (detection)")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="images aligned together (default: 16)"
    )
    parser.add_argument(
        "--min-face-size",
        type=float,
        help="MTCNN's smallest face in pixels: the largest scale of its image pyramid (default: "
        "20; with --pairs, LFW's 56.1, the default pyramid without its three largest scales)",
    )
    parser.add_argument(
        "--workers", type=int, help="alignment threads (default: one per CPU core, at most 8)"
    )
    max_pixels_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pack")


def run(args: argparse.Namespace) -> int:
    """Read the pair set, align its images (unless they are aligned already), write the pack
    and print one summary line."""
    from xcos.data.pair_set_specs import load_pair_set
    from xcos.data.prepare import prepare_pack, subset_folds

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.pairs:
        spec = {"type": "lfw", "path": args.pairs, "images": args.images, "align": False}
        source = args.pairs
    else:
        source = args.bin or args.csv
        spec = {"type": "insightface_bin" if args.bin else "csv", "path": source}
    pair_set = load_pair_set(spec, "--" + ("pairs" if args.pairs else "bin" if args.bin else "csv"))
    if args.folds:
        pair_set = subset_folds(pair_set, args.folds)
    aligner = None
    if not isinstance(pair_set.images, np.ndarray):
        from xcos.data.aligners import make_aligner

        aligner = make_aligner(aligner_settings(args), "xcos prepare")
    out = prepare_pack(
        pair_set, args.out, aligner, [Path(source)], args.batch_size, args.overwrite, args.workers
    )
    fallbacks = aligner.stats.fallbacks if aligner is not None else 0
    print(
        f"{out}: {len(pair_set)} pairs, {len(pair_set.images)} distinct images, "
        f"{fallbacks} centre-crop fallback(s)"
    )
    return 0


def aligner_settings(args: argparse.Namespace) -> dict:
    """The aligner settings of the command's options (``make_aligner``'s input)."""
    from xcos.data.pair_sets import LFW_MIN_FACE, TEMPLATE_SIZES  # torch: not for --help
    from xcos.runtime import resolve_device

    common = {"select": args.select, "no_face": args.no_face, "pixel_limit": args.max_pixels}
    if args.aligner == "dlib":
        # dlib's aligner has one layout: its own chip; refuse anything else up front
        chip = TEMPLATE_SIZES["dlib"]
        if args.template not in (None, "dlib") or args.size not in (None, chip):
            raise ConfigError(
                f"--aligner dlib makes dlib's own {chip}x{chip} chips only (template dlib), not "
                f"--template {args.template or 'dlib'} --size {args.size or chip}; drop those "
                "options, or use --aligner mtcnn for other layouts and sizes"
            )
        return {"aligner": "dlib", **common}
    template = args.template or "arcface"
    size = args.size or TEMPLATE_SIZES[template]
    device = str(resolve_device(args.device))
    min_face = args.min_face_size or (LFW_MIN_FACE if args.pairs else 20)
    mtcnn = {"image_size": size, "template": template, "device": device, "min_face_size": min_face}
    return {**mtcnn, **common}


COMMAND = Command("prepare", DESCRIPTION, DESCRIPTION, add_arguments, run)
