"""What the commands print: never a database password, and with
``RUNPACK_LOG_FORMAT=json`` nothing from ``runpack serve`` but JSON log records."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runpack.commands import build_parser
from runpack.dsn import redact
from tests.pg import fresh_database, require_postgres
from tests.procs import KEYS, clean_env, running_server

PASSWORD = "Sw0rdf1sh-never-printed"
DATA = Path(__file__).parent / "data"
DB = "{db}"
#: Every subcommand that takes --db, with arguments that make it do its work.
RUNS: dict[str, list[list[str]]] = {
    "migrate": [["--db", DB]],
    "import-d1": [[str(DATA / "d1-export.sql"), "--db", DB]],
    "keys": [
        ["create", "--role", "submit", "--name", "ci", "--db", DB],
        ["list", "--db", DB],
        ["--db", DB, "list"],  # misplaced: argparse quotes it in its error
    ],
    "gc": [["--db", DB, "--result-ttl", "3600", "--data-dir", "."]],
    "backup": [["copy.db", "--db", DB]],
    "bench": [["--db", DB, "--jobs", "3", "--runners", "1", "--latency-jobs", "1"]],
}


@pytest.fixture
async def secret_dsn() -> AsyncIterator[str]:
    """A fresh database's DSN with a password in it (the test server trusts loopback, so
    any password connects)."""
    require_postgres()
    async with fresh_database() as dsn:
        yield dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


def takes_db(parser: argparse.ArgumentParser) -> bool:
    """Whether the command, or one of its own subcommands (keys list…), takes --db."""
    for action in parser._actions:
        if "--db" in action.option_strings:
            return True
        if isinstance(action, argparse._SubParsersAction):
            return any(takes_db(p) for p in action.choices.values())
    return False


def commands_with_db() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name for name, command in sub.choices.items() if takes_db(command)}


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "runpack.cli", *args],
        cwd=cwd,
        env=clean_env({"RUNPACK_LOG_LEVEL": "debug", **(env or {})}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return f"[{args[0]} exited {done.returncode}]\n{done.stdout}\n{done.stderr}"


async def test_no_command_prints_the_database_password(tmp_path: Path, secret_dsn: str) -> None:
    assert commands_with_db() == {*RUNS, "serve"}, "a new command with --db: add it to RUNS"
    outputs = []
    for command, runs in RUNS.items():
        for args in runs:
            outputs.append(
                run(command, *(secret_dsn if a == DB else a for a in args), cwd=tmp_path)
            )
    # Through the environment as the server's unit gives it, and failing to connect.
    outputs.append(run("migrate", cwd=tmp_path, env={"RUNPACK_DB": secret_dsn}))
    missing = secret_dsn.rsplit("/", 1)[0] + "/runpack_no_such_database"
    outputs.append(run("migrate", "--db", missing, cwd=tmp_path))
    outputs.append(run("keys", "list", "--db", missing, cwd=tmp_path))
    outputs.append(run("serve", "--port", "not-a-port", "--db", secret_dsn, cwd=tmp_path))
    with running_server(
        tmp_path / "serve", env={**KEYS, "RUNPACK_LOG_LEVEL": "debug"}, args=("--db", secret_dsn)
    ) as server:
        pass
    outputs.append(server.output())
    text = "\n".join(outputs)
    assert "schema up to date" in text and "Imported" in text  # the commands did run
    assert "postgres:***@" in text  # and named the database, masked
    assert PASSWORD not in text, text


def test_serve_with_json_logs_prints_only_json(tmp_path: Path) -> None:
    """Local development mode (its keys and the dashboard link) in JSON records too."""
    env = {"RUNPACK_LOG_FORMAT": "json", "RUNPACK_DB": str(tmp_path / "runpack.db")}
    with running_server(tmp_path, env=env) as server:
        pass
    lines = [line for line in server.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is a JSON object
    messages = [r["message"] for r in records]
    assert any(m.startswith("Dashboard: http://127.0.0.1:") for m in messages), messages
    assert any(m.strip().startswith("RUNPACK_ADMIN_API_KEY=") for m in messages)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://ops:s3cr@t/x@db:5432/runpack", "postgresql://ops:***@db:5432/runpack"),
        ("postgres://u:p%40ss@[::1]:5432/db", "postgres://u:***@[::1]:5432/db"),
        (
            "postgresql://u@h/db?sslmode=require&password=zz",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        (
            "on postgresql://a:b@h/d and postgresql://c:d@e/f",
            "on postgresql://a:***@h/d and postgresql://c:***@e/f",
        ),
        ("runpack.db", "runpack.db"),
    ],
)
def test_redact_masks_every_password(text: str, shown: str) -> None:
    assert redact(text) == shown
