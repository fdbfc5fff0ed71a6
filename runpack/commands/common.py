"""What the commands share: settings from flags and the environment, the check that
the server's packages are installed, and one-line errors."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from runpack.dsn import is_postgres as is_postgres  # the commands import it from here
from runpack.dsn import redact
from runpack.envvars import flag_help
from runpack.errors import StoreError
from runpack.settings import Settings, describe

#: Installed by the ``server`` extra: the database commands and ``runpack serve`` need
#: them, the client commands (submit, watch, …) do not.
SERVER_MODULES = ("aiosqlite", "prometheus_client")
SERVER_EXTRA = "pip install 'runpack[server]'"


def settings_of(args: argparse.Namespace) -> Settings:
    """The command's settings: its flags over the ``RUNPACK_*`` variables."""
    try:
        return Settings.from_args(args, os.environ)
    except ValueError as exc:
        raise SystemExit(f"runpack: {exc}") from None


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """A ``--flag`` for every setting; unset flags fall back to RUNPACK_* or the default."""
    for spec in describe():
        if spec["secret"]:
            continue  # keys come from the environment only, never the command line
        kwargs: dict[str, Any] = {"dest": spec["name"], "default": None, "help": flag_help(spec)}
        if spec["type"] == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float}.get(spec["type"], str)
            kwargs["metavar"] = spec["name"].upper()
        parser.add_argument(spec["flag"], **kwargs)


def server_missing(command: str) -> bool:
    """Whether the server's packages are missing (an install without the ``server``
    extra); if so, a one-line error says which extra to install."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"runpack {command}: the server's packages are not installed "
            f"({', '.join(missing)}): {SERVER_EXTRA}",
            file=sys.stderr,
        )
    return bool(missing)


def store_failure(command: str, exc: StoreError) -> int:
    """A database that cannot be opened is a one-line error, not a traceback."""
    print(f"runpack {command}: {redact(exc.details or exc.message)}", file=sys.stderr)
    return 1


def shown(db: str) -> str:
    """A database as a command prints it: a DSN without its password."""
    return redact(db)
