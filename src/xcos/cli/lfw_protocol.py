"""``xcos lfw-protocol``: LFW's 10-fold protocol for a head trained on LFW people
(``xcos.recipes.lfw_protocol``)."""

from __future__ import annotations

import argparse
import logging

from xcos.cli.common import Command
from xcos.cli.runs import Run, run_arguments, start_run

log = logging.getLogger("xcos")

DESCRIPTION = (
    "LFW 10-fold protocol for a head trained on LFW: per fold, train on the people of the "
    "other nine sets; cos vs xCos (learned and uniform attention) side by side."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    """The protocol in one process (its heads train in worker processes of its own)."""
    return start_run(args, run_protocol, processes="one")


def run_protocol(run: Run) -> int:
    from xcos.recipes.lfw_protocol import format_results, run_lfw_protocol

    args = run.args
    results = run_lfw_protocol(
        run.config,
        args.lfw,
        run.dir,
        run.device,
        folds=args.folds,
        view1=not args.no_view1,
        workers=args.workers,
    )
    log.info("%s", format_results(results))
    log.info("results: %s", run.dir / "results.json")
    return 0


COMMAND = Command(
    "lfw-protocol", "LFW 10-fold protocol: cos vs xCos, per fold", DESCRIPTION, add_arguments, run
)
