"""``xcos report``: a static HTML page of a model's worst errors on a pair set."""

from __future__ import annotations

import argparse

from xcos.cli.common import Command, decision_arguments

DESCRIPTION = (
    "Write a static HTML report of a model's worst errors and a sample of its correct "
    "decisions on a pair set, each with its explanation figure."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--pretrained", required=True, help="an xcos checkpoint")
    parser.add_argument("--pairs", required=True, help="a pair set: .pack, .csv, .bin or LFW .txt")
    parser.add_argument("--out", required=True, help="the report folder (index.html, figures/)")
    parser.add_argument("--errors", type=int, default=8, help="worst errors shown of each kind")
    parser.add_argument("--correct", type=int, default=8, help="correct decisions shown")
    decision_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Score the pair set, write the page and its figures, print where it is."""
    from xcos.explain.report import pair_set_for_model, write_report
    from xcos.explain.verifier import model_from_checkpoint, required_threshold
    from xcos.runtime import resolve_device

    model, threshold, _ = model_from_checkpoint(args.pretrained, args.threshold, args.metrics)
    threshold = required_threshold(threshold)
    device = resolve_device(str(args.device))
    model = model.to(device)
    pair_set = pair_set_for_model(args.pairs, model)
    page = write_report(
        model,
        pair_set,
        threshold,
        args.out,
        device,
        errors=args.errors,
        correct=args.correct,
        layout=args.layout,
    )
    print(f"report: {page} ({len(pair_set)} pairs, threshold {threshold:.4f})")
    return 0


COMMAND = Command(
    "report", "HTML report of a model's errors on a pair set", DESCRIPTION, add_arguments, run
)
