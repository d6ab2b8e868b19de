"""Command line: ``xcos <command>`` and the classic ``python main.py -tc config.json``.

Commands: train, test, explain, report, serve, prepare, pack, synth, import, export,
lfw-protocol.
``xcos``, ``xcos --help`` and ``xcos --version`` introduce the program.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xcos.cli_args import BUILTIN_HELP, max_pixels_argument, model_verifier
from xcos.cli_export import add_export_parser, export_command
from xcos.cli_pack import add_pack_parser, pack_command
from xcos.cli_recognizers import (
    add_import_parser,
    add_protocol_parser,
    import_command,
    protocol_command,
)
from xcos.cli_report import add_report_parser, decision_arguments, report_command
from xcos.cli_serve import add_serve_parser, serve_command
from xcos.config import Config, config_diff, load_config, merge_layers
from xcos.errors import ConfigError, XcosError
from xcos.version import package_version

log = logging.getLogger("xcos")

AUTO_RESUME = "auto"  # -r auto: continue the --out run when it has a last.pth, else start fresh

COMMANDS = (  # in the order `xcos --help` lists them
    "train",
    "test",
    "explain",
    "report",
    "serve",
    "prepare",
    "pack",
    "synth",
    "import",
    "export",
    "lfw-protocol",
)
TOP_LEVEL_OPTIONS = ("-h", "--help", "--version")


def run_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps each command of the list on one line: argparse sizes the name column without the
    extra indent of sub-commands, so the longest name (lfw-protocol) would wrap."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction) and action.help != argparse.SUPPRESS:
            names = [self._format_action_invocation(sub) for sub in action._choices_actions]
            longest = self._current_indent + self._indent_increment + max(map(len, names))
            self._action_max_length = max(self._action_max_length, longest)


EPILOG = """\
The classic form, the same as `xcos train` / `xcos test`:
  python main.py -tc CONFIG [-sc DIFF ...] [--set KEY=VALUE] [--mode test -p WEIGHTS]
"""

TRAIN_TEXT = (
    "Train a model: the template config (-tc), configs merged over it (-sc) and --set "
    "overrides; writes config.json, log.txt, metrics.csv, checkpoints/ and tensorboard/ "
    "into the run directory."
)
TEST_TEXT = (
    "Test weights (-p) on the config's pair sets; writes metrics.json, scores/, roc/ and "
    "figures/ into the run directory."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``xcos`` parser: one sub-parser per command, listed by ``--help`` in ``COMMANDS``
    order, each with a one-line help (and a longer description on ``xcos <command> -h``)."""
    parser = argparse.ArgumentParser(
        prog="xcos",
        description="Explainable face verification with xCos.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        title="commands",
        metavar="<command>",
        help="one of these (`xcos <command> --help` shows its options)",
    )
    run_arguments(commands.add_parser("train", help="train a model", description=TRAIN_TEXT))
    run_arguments(
        commands.add_parser(
            "test", help="test weights on the config's pair sets", description=TEST_TEXT
        )
    )
    text = "verify and explain one pair of faces"
    explain_arguments(commands.add_parser("explain", help=text, description=text))
    add_report_parser(commands)
    add_serve_parser(commands)
    text = "detect, align and pack a pair set"
    prepare_arguments(commands.add_parser("prepare", help=text, description=text))
    add_pack_parser(commands)
    text = "generate the SynthFaces data set"
    synth_arguments(commands.add_parser("synth", help=text, description=text))
    add_import_parser(commands)
    add_export_parser(commands)
    add_protocol_parser(commands, run_arguments)
    return parser


def explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image_a", help="first face: an image file")
    parser.add_argument("image_b", help="second face: an image file")
    parser.add_argument("-p", "--pretrained", help=BUILTIN_HELP)
    parser.add_argument("--out", help="write the explanation figure (PNG) here")
    parser.add_argument("--json", help="write the explanation's fields (JSON) here")
    parser.add_argument(
        "--align",
        choices=("auto", "always", "never"),
        default="auto",
        help="align faces with MTCNN: auto (unless already squares of the model's input size), "
        "always, or never (default: auto)",
    )
    max_pixels_argument(parser)
    decision_arguments(parser)


def synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write the data set into")
    parser.add_argument(
        "--config", help="take the generator settings from this config's data.synthetic"
    )
    parser.add_argument("--seed", type=int, help="generator seed (overrides the config)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def prepare_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def classic_parser() -> argparse.ArgumentParser:
    """``python main.py -tc config.json [--mode test]``: the arguments of ``xcos train``."""
    parser = argparse.ArgumentParser(prog="main.py", description="xCos training and testing.")
    run_arguments(parser)
    parser.add_argument(
        "--mode", choices=("train", "test"), default="train", help="train or test (default: train)"
    )
    return parser


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """A command, ``-h`` or ``--version`` first: the ``xcos`` parser; an option first: the
    classic form. Nothing at all is a usage error: the command list and status 2."""
    if not argv:
        parser = build_parser()
        parser.print_help(sys.stderr)
        parser.exit(2, f"{parser.prog}: error: choose a command from the list above\n")
    if argv[0] in TOP_LEVEL_OPTIONS or not argv[0].startswith("-"):
        return build_parser().parse_args(argv)  # an unknown command names the choices
    args = classic_parser().parse_args(argv)
    args.command = args.mode
    return args


class KnownHarmlessWarning(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." warning, which
    ``torch.compile`` makes on a CPU-only machine that has a CUDA toolkit (nvcc) installed:
    it concerns building CUDA extensions, which xcos never does. Any other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_known_warnings() -> None:
    """Keep a CPU run's console free of known harmless compiler noise (idempotent)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, KnownHarmlessWarning) for f in logger.filters):
        logger.addFilter(KnownHarmlessWarning())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xcos`` console script (and of ``main.py``); returns the status."""
    args = parse_arguments(list(sys.argv[1:] if argv is None else argv))
    quiet_known_warnings()
    try:
        return dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line for user errors; --debug shows the traceback
        if getattr(args, "debug", False) or not is_user_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        close_logging()


def is_user_error(err: Exception) -> bool:
    """Exactly the project's errors (``xcos.errors.XcosError``) are the user's to fix; any
    other exception is a bug in xcos and keeps its traceback."""
    return isinstance(err, XcosError)


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "synth":
        return synth_command(args)
    if args.command == "prepare":
        return prepare_command(args)
    if args.command == "explain":
        return explain_command(args)
    if args.command == "import":
        return import_command(args)
    if args.command == "export":
        return export_command(args)
    if args.command == "pack":
        return pack_command(args)
    if args.command == "report":
        return report_command(args)
    if args.command == "serve":
        return serve_command(args)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """train / test / lfw-protocol: one process, or one of several started by torchrun."""
    from xcos.distributed import Distributed, init_distributed, shutdown_distributed

    if args.resume == AUTO_RESUME and not args.out:
        raise ConfigError(
            "-r auto: needs --out DIR, the run directory whose checkpoints/last.pth to continue"
        )
    base, _ = merge_layers(args.template_config)
    config = load_config(args.template_config, args.specified_configs, args.overrides)
    dist, device = init_distributed(args.device)
    try:
        if dist.enabled and args.command != "train":
            if args.command == "lfw-protocol":
                raise ConfigError("lfw-protocol runs in one process: start it without torchrun")
            if not dist.is_main:
                return 0  # testing is not sharded: rank 0 tests alone
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
            (run_dir / "config.json").write_text(json.dumps(config.raw, indent=2) + "\n")
        processes = f", {dist.world_size} processes" if dist.enabled else ""
        log.info("run directory %s, device %s%s", run_dir, device, processes)
        with dist.main_first():  # one process generates data the others then read
            prepare_data(config)
        if args.command == "train":
            return train_command(args, config, run_dir, device, dist)
        if args.command == "lfw-protocol":
            return protocol_command(args, config, run_dir, device)
        return test_command(args, config, run_dir, device)
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


def train_command(args, config: Config, run_dir: Path, device, dist=None) -> int:
    from xcos.engine.trainer import Trainer

    resume = resolve_resume(args.resume, run_dir, dist)
    trainer = Trainer(config, run_dir, device, resume=resume, weights=args.pretrained, dist=dist)
    trainer.fit()
    log.info(
        "checkpoints: %s and %s",
        run_dir / "checkpoints" / "last.pth",
        run_dir / "checkpoints" / "best.pth",
    )
    return 0


def resolve_resume(resume: str | None, run_dir: Path, dist=None) -> str | None:
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


def test_command(args, config: Config, run_dir: Path, device) -> int:
    from xcos.engine.tester import format_table, run_test

    if not args.pretrained:
        raise ConfigError("test mode needs weights: -p path/to/weights.pth")
    summary = run_test(config, run_dir, device, args.pretrained)
    log.info("%s", format_table(summary))
    log.info(
        "metrics: %s, scores: %s, ROC: %s, figures: %s",
        run_dir / "metrics.json",
        run_dir / "scores",
        run_dir / "roc",
        run_dir / "figures",
    )
    return 0


def synth_command(args: argparse.Namespace) -> int:
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


def prepare_command(args: argparse.Namespace) -> int:
    from xcos.data.pair_sets import load_pair_set
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

        aligner = make_aligner(prepare_aligner_settings(args), "xcos prepare")
    out = prepare_pack(
        pair_set, args.out, aligner, [Path(source)], args.batch_size, args.overwrite, args.workers
    )
    fallbacks = aligner.stats.fallbacks if aligner is not None else 0
    print(
        f"{out}: {len(pair_set)} pairs, {len(pair_set.images)} distinct images, "
        f"{fallbacks} centre-crop fallback(s)"
    )
    return 0


def prepare_aligner_settings(args: argparse.Namespace) -> dict:
    """The aligner settings of ``xcos prepare``'s options (``make_aligner``'s input)."""
    common = {"select": args.select, "no_face": args.no_face, "pixel_limit": args.max_pixels}
    if args.aligner == "dlib":
        # dlib's aligner has one layout: its own 150 px chip; refuse anything else up front
        if args.template not in (None, "dlib") or args.size not in (None, 150):
            raise ConfigError(
                f"--aligner dlib makes dlib's own 150x150 chips only (template dlib), not "
                f"--template {args.template or 'dlib'} --size {args.size or 150}; drop those "
                "options, or use --aligner mtcnn for other layouts and sizes"
            )
        return {"aligner": "dlib", **common}
    from xcos.data.pair_sets import LFW_MIN_FACE
    from xcos.runtime import resolve_device

    template = args.template or "arcface"
    size = args.size or (150 if template == "dlib" else 112)
    device = str(resolve_device(args.device))
    min_face = args.min_face_size or (LFW_MIN_FACE if args.pairs else 20)
    mtcnn = {"image_size": size, "template": template, "device": device, "min_face_size": min_face}
    return {**mtcnn, **common}


def explain_command(args: argparse.Namespace) -> int:
    verifier = model_verifier(args, args.align)
    result = verifier.explain(args.image_a, args.image_b)
    verdict = "same person" if result.same else "different people"
    print(
        f"xCos {result.score:.4f} (cos {result.cos:.4f}), threshold {result.threshold:.4f}: "
        f"{verdict}"
    )
    if args.out:
        result.figure(args.layout).savefig(args.out, bbox_inches="tight")
        print(f"figure: {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        print(f"json: {args.json}")
    return 0
