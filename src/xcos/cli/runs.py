"""What ``xcos train``, ``xcos test`` and ``xcos lfw-protocol`` share: the config options, and a
run directory with its config, its log and, under torchrun, several processes."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from xcos.config import Config, config_diff, load_config, merge_layers
from xcos.errors import ConfigError
from xcos.io_utils import atomic_save_json

if TYPE_CHECKING:  # torch is imported when a run starts, not when the parser is built
    import torch

    from xcos.distributed import Distributed

log = logging.getLogger("xcos")

AUTO_RESUME = "auto"  # -r auto: continue the --out run when it has a last.pth, else start fresh


@dataclass(frozen=True)
class Run:
    """A started run, as a command's work gets it: the parsed arguments, the loaded config,
    the run directory, the device and the process group."""

    args: argparse.Namespace
    config: Config
    dir: Path
    device: torch.device
    dist: Distributed


def run_arguments(parser: argparse.ArgumentParser) -> None:
    """A run's options: the config's layers and overrides, weights, resume, run directory and
    device."""
    parser.add_argument("-tc", "--template-config", required=True, help="template config (JSON)")
    parser.add_argument(
        "-sc",
        "--specified-configs",
        nargs="+",
        action="extend",
        default=[],
        help="configs merged over the template, later ones win",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set trainer.epochs=3 (value parsed as JSON, else string)",
    )
    parser.add_argument("-p", "--pretrained", help="weights to load non-strictly (test: required)")
    parser.add_argument(
        "-r",
        "--resume",
        help="training checkpoint to resume exactly, or 'auto' (needs --out): continue from "
        "OUT/checkpoints/last.pth when it exists, else start fresh (torchrun --max-restarts)",
    )
    parser.add_argument("--out", help="run directory (default: saved/<name>/<timestamp>/)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")


def start_run(
    args: argparse.Namespace,
    body: Callable[[Run], int],
    processes: Literal["all", "first", "one"],
) -> int:
    """Load the config, make the run directory, log there, generate synthetic data when the
    config asks for it, then run ``body`` and return its exit status.

    Under torchrun, ``processes`` says who runs it: ``all`` of them together (training),
    the ``first`` alone while the others end at once (testing is not sharded), or only
    ``one`` process may exist at all (anything else is refused).
    """
    from xcos.distributed import Distributed, init_distributed, shutdown_distributed

    if args.resume == AUTO_RESUME and not args.out:
        raise ConfigError(
            "-r auto: needs --out DIR, the run directory whose checkpoints/last.pth to continue"
        )
    base, _ = merge_layers(args.template_config)
    config = load_config(args.template_config, args.specified_configs, args.overrides)
    dist, device = init_distributed(args.device)
    try:
        if dist.enabled and processes != "all":
            if processes == "one":
                raise ConfigError(f"{args.command} runs in one process: start it without torchrun")
            if not dist.is_main:
                return 0  # e.g. testing is not sharded: rank 0 tests alone
            dist = Distributed()
        run_dir = Path(dist.broadcast(str(choose_run_dir(args, config)) if dist.is_main else ""))
        setup_logging(run_dir, dist.rank)
        changes = config_diff(base, config.raw)
        log.info(
            "config %s%s",
            args.template_config,
            "".join(f"\n  {line}" for line in changes) or " (unchanged)",
        )
        if dist.is_main:
            atomic_save_json(config.raw, run_dir / "config.json", indent=2)
        processes_text = f", {dist.world_size} processes" if dist.enabled else ""
        log.info("run directory %s, device %s%s", run_dir, device, processes_text)
        with dist.main_first():  # one process generates data the others then read
            prepare_data(config)
        return body(Run(args, config, run_dir, device, dist))
    finally:
        shutdown_distributed(wait=sys.exc_info()[0] is None)  # an error: leave at once


def choose_run_dir(args: argparse.Namespace, config: Config) -> Path:
    if args.out:
        run_dir = Path(args.out)
    elif args.resume and Path(args.resume).parent.name == "checkpoints":
        run_dir = Path(args.resume).parent.parent  # continue in the run being resumed
    else:
        run_dir = Path("saved") / config.name / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def close_logging() -> None:
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def setup_logging(run_dir: Path, rank: int = 0) -> None:
    """Rank 0 logs to the console and ``run_dir/log.txt``; other ranks print only warnings."""
    log.setLevel(logging.INFO)
    close_logging()
    console = logging.StreamHandler(sys.stdout)
    log.addHandler(console)
    if rank != 0:
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s: %(message)s"))
        return
    console.setFormatter(logging.Formatter("%(message)s"))
    to_file = logging.FileHandler(run_dir / "log.txt")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(to_file)


def prepare_data(config: Config) -> None:
    """Generate the synthetic data set when the config asks for one (reused when present)."""
    if config.data.synthetic is not None:
        from xcos.registry import GENERATORS

        GENERATORS.build(config.data.synthetic, "data.synthetic")
