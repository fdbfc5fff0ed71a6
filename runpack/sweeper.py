"""The background task that takes back jobs whose runner went silent, and applies the
retention TTLs every ``gc_interval`` (:mod:`runpack.retention`).

This module owns the timing only; what a sweep decides (which runs are stale, retried
with backoff or failed) is the service's, in :mod:`runpack.service.sweeping`."""

from __future__ import annotations

import asyncio
import logging

from runpack.retention import Retention, run_retention
from runpack.service import JobService

log = logging.getLogger(__name__)


async def run_sweeper(
    service: JobService,
    interval: float,
    retention: Retention | None = None,
    gc_interval: float = 3600.0,
) -> None:
    """Sweep every ``interval`` seconds until cancelled; a failed sweep is logged.

    With ``retention``, a retention pass runs beside it every ``gc_interval``
    seconds (the first at once), so a long pass never delays a sweep.
    """
    if retention is None:
        await _sweep(service, interval)
        return
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(_sweep(service, interval), name="runpack-sweep")
        tasks.create_task(run_retention(retention, gc_interval), name="runpack-retention")


async def _sweep(service: JobService, interval: float) -> None:
    while True:
        # Wait first: a job is only stale after heartbeat_timeout (90 s) anyway.
        await asyncio.sleep(interval)
        try:
            requeued, failed = await service.sweep()
            if requeued or failed:
                log.info("sweeper: %d re-queued, %d failed", requeued, failed)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweeper pass failed; trying again in %.1f s", interval)
