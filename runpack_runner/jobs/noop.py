"""``noop``: does nothing and returns at once (``runpack bench`` measures with it)."""

from __future__ import annotations

from typing import Any

from runpack_runner.context import JobContext
from runpack_runner.handler import job


@job("noop")
def noop(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """Accepts any parameters; returns ``{"ok": true}``."""
    return {"ok": True}
