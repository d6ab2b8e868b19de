"""The ``xcos`` command line: one module per command, each with its options and its run
function; ``program`` holds the command table and ``main``, the console script's entry."""

from xcos.cli.program import main

__all__ = ["main"]
