"""The ``xcos`` program: the command table, its parser, the classic ``python main.py -tc
config.json`` form, and ``main``, which runs a command and turns the project's errors into one
line and exit status 2.

``xcos``, ``xcos --help`` and ``xcos --version`` introduce the program.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from xcos.cli import (
    explain,
    export,
    import_,
    lfw_protocol,
    pack,
    prepare,
    report,
    serve,
    synth,
    test,
    train,
)
from xcos.cli.common import Command, shared_options
from xcos.cli.runs import close_logging, run_arguments
from xcos.errors import XcosError
from xcos.version import package_version

#: Every command by name, in the order `xcos --help` lists them.
COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        train.COMMAND,
        test.COMMAND,
        explain.COMMAND,
        report.COMMAND,
        serve.COMMAND,
        prepare.COMMAND,
        pack.COMMAND,
        synth.COMMAND,
        import_.COMMAND,
        export.COMMAND,
        lfw_protocol.COMMAND,
    )
}
TOP_LEVEL_OPTIONS = ("-h", "--help", "--version")


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


def build_parser() -> argparse.ArgumentParser:
    """The ``xcos`` parser: one sub-parser per command of ``COMMANDS``, in its order, each
    with a one-line help (and a longer description on ``xcos <command> -h``) and the options
    every command shares."""
    parser = argparse.ArgumentParser(
        prog="xcos",
        description="Explainable face verification with xCos.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    subparsers = parser.add_subparsers(
        dest="command",
        required=True,
        title="commands",
        metavar="<command>",
        help="one of these (`xcos <command> --help` shows its options)",
    )
    shared = shared_options()
    for command in COMMANDS.values():
        command.add_arguments(
            subparsers.add_parser(
                command.name,
                help=command.help,
                description=command.description,
                formatter_class=command.formatter_class,
                parents=[shared],
            )
        )
    return parser


def classic_parser() -> argparse.ArgumentParser:
    """``python main.py -tc config.json [--mode test]``: the arguments of ``xcos train``."""
    parser = argparse.ArgumentParser(
        prog="main.py", description="xCos training and testing.", parents=[shared_options()]
    )
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
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line for user errors; --debug shows the traceback
        if args.debug or not is_user_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        close_logging()


def is_user_error(err: Exception) -> bool:
    """Exactly the project's errors (``xcos.errors.XcosError``) are the user's to fix; any
    other exception is a bug in xcos and keeps its traceback."""
    return isinstance(err, XcosError)
