"""Reading a ``wrangler d1 export``: its SQL runs in a private in-memory SQLite
database, and the ``jobs`` and ``runners`` rows are read back as dicts. A script
that fails is run again statement by statement to name the line that fails."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOB_REQUIRED = ("id", "job_hash", "job_type", "input_params", "status", "created_at")
RUNNER_REQUIRED = ("id", "name", "capabilities", "registered_at")

Row = dict[str, Any]


class D1ImportError(Exception):
    """The export cannot be imported"""


@dataclass
class Export:
    """The rows of a D1 export, as dicts keyed by lower-case column name."""

    source: str
    jobs: list[Row]
    runners: list[Row] | None  # None: the export has no runners table


def read_export(path: str | Path) -> Export:
    """Run the export's SQL in memory and read its jobs and runners."""
    path = Path(path)
    try:
        script = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise D1ImportError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise D1ImportError(f"{path}: not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise D1ImportError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")  # D1 dumps a table before those it references
        try:
            conn.executescript(script)
        except (sqlite3.Error, ValueError) as exc:
            raise D1ImportError(f"{path}: cannot run its SQL: {_where(script, exc)}") from None
        tables = {
            name.lower(): name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "jobs" not in tables:
            raise D1ImportError(
                f"{path}: no jobs table (is it a `wrangler d1 export` of the original's database?)"
            )
        jobs = _rows(conn, tables["jobs"], JOB_REQUIRED, path)
        runners = (
            _rows(conn, tables["runners"], RUNNER_REQUIRED, path) if "runners" in tables else None
        )
        return Export(str(path), jobs, runners)
    finally:
        conn.close()


def _rows(conn: sqlite3.Connection, table: str, required: Sequence[str], path: Path) -> list[Row]:
    cursor = conn.execute(f'SELECT * FROM "{table.replace(chr(34), chr(34) * 2)}"')
    names = [d[0].lower() for d in cursor.description]
    missing = [c for c in required if c not in names]
    if missing:
        raise D1ImportError(f"{path}: the {table} table has no {', '.join(missing)} column")
    return [dict(zip(names, row, strict=True)) for row in cursor]


# Quoted strings and identifiers, comments, and the semicolons between statements.
_TOKENS = re.compile(
    r"'[^']*(?:''[^']*)*'|\"[^\"]*(?:\"\"[^\"]*)*\"|`[^`]*`|\[[^\]]*\]|--[^\n]*|/\*.*?\*/|;",
    re.DOTALL,
)


_BLANK = re.compile(r"(?:\s+|--[^\n]*)*")


def _statements(script: str) -> Iterator[tuple[int, str]]:
    """(first line, text) of each statement, split where SQLite would split it."""
    start = counted = 0
    line = 1

    def first_line(offset: int) -> int:
        nonlocal counted, line
        code = _BLANK.match(script, offset)
        end = code.end() if code else offset
        line += script.count("\n", counted, end)  # counted once over the whole script
        counted = end
        return line

    for match in _TOKENS.finditer(script):
        if match.group() != ";":
            continue
        text = script[start : match.end()]
        if sqlite3.complete_statement(text):  # not a `;` inside a trigger's body
            yield first_line(start), text
            start = match.end()
    if script[start:].strip():
        yield first_line(start), script[start:]


def _snippet(statement: str, width: int = 120) -> str:
    """The statement on one line, an INSERT's column list elided, cut to ``width``."""
    code = _BLANK.match(statement)
    text = " ".join(statement[code.end() if code else 0 :].split())
    text = re.sub(r"^(INSERT\s+INTO\s+\S+\s*)\([^)]*\)\s*", r"\1(…) ", text, flags=re.I)
    return text[:width] + ("…" if len(text) > width else "")


def _where(script: str, error: BaseException) -> str:
    """SQLite's message, and the line and start of the statement that failed."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")
        for line, text in _statements(script):
            try:
                conn.executescript(text)
            except (sqlite3.Error, ValueError) as exc:
                return f"{' '.join(str(exc).split())} (line {line}: {_snippet(text)})"
    finally:
        conn.close()
    return str(error)
