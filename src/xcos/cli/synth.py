"""``xcos synth``: generate the SynthFaces data set (``xcos.data.synthfaces``)."""

from __future__ import annotations

import argparse
import json
import logging

from xcos.cli.common import Command
from xcos.config import load_config
from xcos.errors import ConfigError

DESCRIPTION = "generate the SynthFaces data set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write the data set into")
    parser.add_argument(
        "--config", help="take the generator settings from this config's data.synthetic"
    )
    parser.add_argument("--seed", type=int, help="generator seed (overrides the config)")


def run(args: argparse.Namespace) -> int:
    """Generate (or reuse) the set and print its counts."""
    from xcos.data.synthfaces import ensure_synthfaces

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = {}
    if args.config:
        config = load_config(args.config)
        if config.data.synthetic is None:
            raise ConfigError(f"{args.config}: data.synthetic is not set")
        settings = {k: v for k, v in config.data.synthetic.items() if k not in ("type", "root")}
    if args.seed is not None:
        settings["seed"] = args.seed
    manifest = ensure_synthfaces(args.out, **settings)
    print(f"SynthFaces in {args.out}: {json.dumps(manifest.get('counts', {}))}")
    return 0


COMMAND = Command("synth", DESCRIPTION, DESCRIPTION, add_arguments, run)
