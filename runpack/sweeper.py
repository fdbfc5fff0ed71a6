"""The background task that takes back jobs whose runner went silent."""

from __future__ import annotations

import asyncio
import logging

from runpack.service import JobService

log = logging.getLogger(__name__)


async def run_sweeper(service: JobService, interval: float) -> None:
    """Sweep every ``interval`` seconds until cancelled; a failed sweep is logged."""
    while True:
        try:
            requeued, failed = await service.sweep()
            if requeued or failed:
                log.info("sweeper: %d re-queued, %d failed", requeued, failed)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweeper pass failed; trying again in %.1f s", interval)
        await asyncio.sleep(interval)
