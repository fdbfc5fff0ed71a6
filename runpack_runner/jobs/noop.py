"""``noop``: does nothing and returns at once (``runpack bench`` measures with it).

Trusted and instant, it runs in the runner's own process.
"""

from __future__ import annotations

from typing import Any

from runpack_runner.context import JobContext
from runpack_runner.handler import job


@job("noop", in_process=True, time_limit=60)
def noop(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """Accepts any parameters; returns ``{"ok": true}``."""
    return {"ok": True}
