"""``runpack settings``: every setting, its flag, variable and default."""

from __future__ import annotations

import argparse
from typing import Any

from runpack.settings import describe, settings_table


def add_to(sub: Any) -> None:
    parser = sub.add_parser("settings", help="List every setting and its variable.")
    parser.add_argument(
        "--markdown", action="store_true", help="Print the table in docs/settings.md."
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_table())
        return 0
    for spec in describe():
        default = "" if spec["secret"] else spec["default"]
        print(f"{spec['env']:34} {spec['flag']:28} {default!s:14} {spec['help']}")
    return 0
