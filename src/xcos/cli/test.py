"""``xcos test`` (and ``python main.py -tc ... --mode test``): test weights on the config's pair
sets."""

from __future__ import annotations

import argparse
import logging

from xcos.cli.common import Command
from xcos.cli.runs import Run, run_arguments, start_run
from xcos.errors import ConfigError

log = logging.getLogger("xcos")

DESCRIPTION = (
    "Test weights (-p) on the config's pair sets; writes metrics.json, scores/, roc/ and "
    "figures/ into the run directory."
)


def run(args: argparse.Namespace) -> int:
    """Test in one process; under torchrun, the first process tests alone."""
    return start_run(args, evaluate_weights, processes="first")


def evaluate_weights(run: Run) -> int:
    from xcos.engine.tester import format_table, run_test

    if not run.args.pretrained:
        raise ConfigError("test mode needs weights: -p path/to/weights.pth")
    log.info("%s", format_table(run_test(run.config, run.dir, run.device, run.args.pretrained)))
    outputs = [run.dir / name for name in ("metrics.json", "scores", "roc", "figures")]
    log.info("metrics: %s, scores: %s, ROC: %s, figures: %s", *outputs)
    return 0


COMMAND = Command("test", "test weights on the config's pair sets", DESCRIPTION, run_arguments, run)
