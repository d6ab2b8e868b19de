"""``xcos report``: a static HTML page of a model's worst errors on a pair set."""

from __future__ import annotations

import argparse


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="HTML report of a model's errors on a pair set",
        description="Write a static HTML report of a model's worst errors and a sample of "
        "its correct decisions on a pair set, each with its explanation figure.",
    )
    parser.add_argument("-p", "--pretrained", required=True, help="an xcos checkpoint")
    parser.add_argument("--pairs", required=True, help="a pair set: .pack, .csv, .bin or LFW .txt")
    parser.add_argument("--out", required=True, help="the report folder (index.html, figures/)")
    parser.add_argument("--errors", type=int, default=8, help="worst errors shown of each kind")
    parser.add_argument("--correct", type=int, default=8, help="correct decisions shown")
    decision_arguments(parser)


def decision_arguments(parser: argparse.ArgumentParser) -> None:
    """What `xcos explain` and `xcos report` share: the threshold, the figure layout, the
    device and --debug."""
    parser.add_argument("--threshold", type=float, help="decision threshold on the xCos score")
    parser.add_argument("--metrics", help="take the threshold from a test run's metrics.json")
    parser.add_argument(
        "--layout",
        choices=("paper", "overlay"),
        default="paper",
        help="figure layout: faces and maps side by side, or the maps over the faces",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def report_command(args: argparse.Namespace) -> int:
    from xcos.explain.report import pair_set_for_model, write_report
    from xcos.explain.verifier import Verifier

    verifier = Verifier.from_checkpoint(args.pretrained, args.threshold, args.metrics, args.device)
    threshold = verifier.require_threshold()
    pair_set = pair_set_for_model(args.pairs, verifier.model)
    page = write_report(
        verifier.model,
        pair_set,
        threshold,
        args.out,
        verifier.device,
        errors=args.errors,
        correct=args.correct,
        layout=args.layout,
    )
    print(f"report: {page} ({len(pair_set)} pairs, threshold {threshold:.4f})")
    return 0
