"""``xcos train`` (and ``python main.py -tc ...``): train a model from a config's layers."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from xcos.cli.common import Command
from xcos.cli.runs import AUTO_RESUME, Run, run_arguments, start_run

if TYPE_CHECKING:
    from xcos.distributed import Distributed

log = logging.getLogger("xcos")

DESCRIPTION = (
    "Train a model: the template config (-tc), configs merged over it (-sc) and --set "
    "overrides; writes config.json, log.txt, metrics.csv, checkpoints/ and tensorboard/ "
    "into the run directory."
)


def run(args: argparse.Namespace) -> int:
    """Train in one process, or in each process of a torchrun job, sharded."""
    return start_run(args, train, processes="all")


def train(run: Run) -> int:
    from xcos.engine.trainer import Trainer

    resume = resolve_resume(run.args.resume, run.dir, run.dist)
    weights = run.args.pretrained
    Trainer(run.config, run.dir, run.device, resume=resume, weights=weights, dist=run.dist).fit()
    checkpoints = run.dir / "checkpoints"
    log.info("checkpoints: %s and %s", checkpoints / "last.pth", checkpoints / "best.pth")
    return 0


def resolve_resume(
    resume: str | None, run_dir: Path, dist: Distributed | None = None
) -> str | None:
    """``-r auto``: ``run_dir/checkpoints/last.pth`` when it exists, else None (a fresh start).

    Rank 0 looks and tells the others, so all processes of a job take the same decision even
    if one of them sees the file system late. Any other value is returned unchanged.
    """
    from xcos.distributed import Distributed

    if resume != AUTO_RESUME:
        return resume
    dist = dist or Distributed()
    last = run_dir / "checkpoints" / "last.pth"
    if dist.broadcast(last.is_file() if dist.is_main else None):
        log.info("-r auto: resuming from %s", last)
        return str(last)
    log.info("-r auto: %s does not exist, starting fresh", last)
    return None


COMMAND = Command("train", "train a model", DESCRIPTION, run_arguments, run)
