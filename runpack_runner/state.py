"""The state file (``.runpack_runner.json``): the runner's id, its secret and its name
across restarts. The secret proves the id is ours (runpack.identity on the server),
so the file is readable by its owner only."""

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
    #: The runner's own secret, given once when it registered (None: it has none).
    secret: str | None = None


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
    secret = data.get("runner_secret")
    return RunnerState(
        runner_id=runner_id if isinstance(runner_id, str) and runner_id else None,
        name=name if isinstance(name, str) and name else None,
        secret=secret if isinstance(secret, str) and secret else None,
    )


def save_state(path: Path, state: RunnerState) -> None:
    """Write atomically: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = {"runner_id": state.runner_id, "name": state.name}
    if state.secret is not None:
        data["runner_secret"] = state.secret
    text = json.dumps(data, indent=2) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)
