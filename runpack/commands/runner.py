"""``runpack runner``: the runner daemon (``runpack-runner``), which parses its own flags."""

from __future__ import annotations

from typing import Any


def add_to(sub: Any) -> None:
    # Listed for --help only: main() hands `runpack runner …` to runpack_runner.cli.
    sub.add_parser("runner", help="Run jobs (runpack-runner; see runpack runner --help).")


def run(argv: list[str]) -> int:
    from runpack_runner.cli import main

    return main(argv)
