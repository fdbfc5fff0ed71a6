"""The state file (``.runpack_runner.json``): the runner's id and name across restarts."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunnerState:
    runner_id: str | None = None
    name: str | None = None


def default_name() -> str:
    """Host name plus a short random suffix, so two runners on one host differ."""
    host = socket.gethostname().split(".")[0] or "runner"
    return f"{host}-{uuid.uuid4().hex[:6]}"


def load_state(path: Path) -> RunnerState:
    """The saved state; an empty state if the file is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return RunnerState()
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return RunnerState()
    if not isinstance(data, dict):
        return RunnerState()
    runner_id = data.get("runner_id")
    name = data.get("name", data.get("runner_name"))
    return RunnerState(
        runner_id=runner_id if isinstance(runner_id, str) and runner_id else None,
        name=name if isinstance(name, str) and name else None,
    )


def save_state(path: Path, state: RunnerState) -> None:
    """Write atomically: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps({"runner_id": state.runner_id, "name": state.name}, indent=2) + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, path)
