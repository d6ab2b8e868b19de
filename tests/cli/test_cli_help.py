"""The command line introduces itself: the command list, help on every argument, the version."""

import argparse
import importlib
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from xcos.cli import main, program
from xcos.cli.program import build_parser, classic_parser, parse_arguments
from xcos.version import __version__

COMMANDS = [
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
]


def command_helps() -> dict[str, str]:
    """Each command's one-line help, as the parser holds it, in the order listed."""
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {choice.dest: choice.help for choice in commands._choices_actions}


def assert_lists_commands(text: str) -> None:
    """Every command on a line of its own, its whole help on the same line, in order."""
    positions = []
    for name, help_text in command_helps().items():
        line = re.search(rf"^ +{re.escape(name)} +{re.escape(help_text)}$", text, re.MULTILINE)
        assert line, f"{name!r} with its help {help_text!r} is not one line of:\n{text}"
        positions.append(line.start())
    assert positions == sorted(positions)


@pytest.fixture(autouse=True)
def terminal_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps at the terminal's width


def test_every_command_has_a_short_help():
    helps = command_helps()
    assert list(helps) == COMMANDS == list(program.COMMANDS)
    for name, help_text in helps.items():
        assert help_text and "\n" not in help_text, name


def test_help_lists_every_command_on_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: xcos ")
    assert_lists_commands(out)
    assert "python main.py -tc" in out  # the classic form is mentioned


def test_no_arguments_prints_the_list_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2  # a usage error, as argparse reports a missing argument
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_lists_commands(captured.err)
    assert "xcos: error:" in captured.err


def test_unknown_command_exits_2_and_names_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["trian", "-tc", "config.json"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'trian'" in err
    for name in COMMANDS:
        assert repr(name) in err, name


def walk(parser: argparse.ArgumentParser):
    """The parser and, depth first, every sub-parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from walk(sub)


def test_every_argument_of_every_command_has_help():
    parsers = [*walk(build_parser()), classic_parser()]
    assert len(parsers) == 1 + len(COMMANDS) + 1
    missing = [
        f"{parser.prog}: {'/'.join(action.option_strings) or action.dest}"
        for parser in parsers
        for action in parser._actions
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_every_command_module_is_in_the_table():
    package = REPO / "src" / "xcos" / "cli"
    helpers = {"__init__", "program", "common", "runs"}
    modules = sorted(path.stem for path in package.glob("*.py") if path.stem not in helpers)
    commands = [importlib.import_module(f"xcos.cli.{name}").COMMAND for name in modules]
    in_order = sorted(commands, key=lambda command: COMMANDS.index(command.name))
    assert in_order == list(program.COMMANDS.values())


def test_debug_is_declared_once_and_every_command_takes_it():
    declared = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "src" / "xcos").rglob("*.py"))
        if '"--debug"' in path.read_text()
    ]
    assert declared == ["src/xcos/cli/common.py"]
    commands = [*walk(build_parser())][1:]
    for parser in [*commands, classic_parser()]:
        assert parser._option_string_actions["--debug"].help, parser.prog


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"xcos {__version__}\n"


def test_classic_form_still_parses():
    args = parse_arguments(["-tc", "config.json", "--mode", "test", "-p", "w.pth"])
    assert (args.command, args.template_config, args.pretrained) == ("test", "config.json", "w.pth")
    assert parse_arguments(["-tc", "config.json"]).command == "train"


@pytest.mark.parametrize(
    ("entry", "args", "status", "expected"),
    [
        (["-m", "xcos"], ["--help"], 0, "usage: xcos [-h] [--version] <command> ...\n"),
        (
            ["-m", "xcos"],
            ["train", "--help"],
            0,
            "usage: xcos train [-h] [--debug] -tc TEMPLATE_CONFIG",
        ),
        (["-m", "xcos"], ["--version"], 0, f"xcos {__version__}\n"),
        (["main.py"], ["--version"], 0, f"xcos {__version__}\n"),
        (["-m", "xcos"], [], 2, "usage: xcos [-h] [--version] <command> ...\n"),
        (["main.py"], [], 2, "usage: xcos [-h] [--version] <command> ...\n"),
    ],
)
def test_program_name_is_xcos_in_a_subprocess(entry, args, status, expected):
    run = subprocess.run(
        [sys.executable, *entry, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert run.returncode == status, run.stderr
    assert (run.stdout if status == 0 else run.stderr).startswith(expected)
