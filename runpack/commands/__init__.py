"""The ``runpack`` command, one module per subcommand: each declares its arguments and
calls into the library. With :mod:`runpack_runner.cli`, the only readers of the
environment; their settings come from :meth:`runpack.settings.Settings.from_args`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from runpack import __version__
from runpack.commands import (
    backup,
    bench,
    client,
    gc,
    import_d1,
    keys,
    migrate,
    runner,
    serve,
    settings,
)
from runpack.dsn import redact

#: The exit status of a command whose output's reader went away (128 + SIGPIPE).
BROKEN_PIPE = 141

#: In the order ``runpack --help`` lists them.
COMMANDS = (serve, migrate, import_d1, bench, gc, backup, keys, settings, client, runner)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors (which quote the bad argument) mask DSN passwords.
    Subcommands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        super().error(redact(message))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="runpack", description="Runpack: on-demand computation and result caching."
    )
    parser.add_argument("--version", action="version", version=f"runpack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_to(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["runner"]:  # the runner daemon has its own flags: hand them all over
        return runner.run(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # the reader went away (`runpack settings | head`): no traceback
        # What is left to flush at exit goes nowhere, as it would for a program that
        # SIGPIPE ended; the exit status is that program's too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
