"""The optional NotifyRelay announcement of new jobs, as the original made it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson

from runpack.eventloop import cancel_and_wait
from runpack.notify import EventKind, ServerEvent

log = logging.getLogger(__name__)


class NotifyRelay:
    """Announces new jobs to NotifyRelay, as the original did (runners may wake on it)."""

    TOPIC = "runpack_notifications"

    def __init__(self, base_url: str, publish_key: str, timeout: float = 5.0) -> None:
        self.url = base_url.rstrip("/") + "/publish"
        self.publish_key = publish_key
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks))
        if self._session is not None:
            await self._session.close()

    def __call__(self, event: ServerEvent) -> None:
        if event.type != EventKind.JOB_QUEUED or not event.data.get("new") or self._session is None:
            return
        message = {
            "type": "new_job",
            "job_id": event.job_id,
            "job_hash": event.data.get("job_hash"),
            "job_type": event.data.get("job_type"),
            "timestamp": int(time.time() * 1000),
        }
        task = asyncio.create_task(self._publish(message), name="notify-relay-publish")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, message: dict[str, Any]) -> None:
        assert self._session is not None
        body = {"topic": self.TOPIC, "message": orjson.dumps(message).decode()}
        headers = {"Authorization": self.publish_key, "Content-Type": "application/json"}
        try:
            async with self._session.post(self.url, data=orjson.dumps(body), headers=headers) as r:
                if r.status >= 300:
                    log.warning("NotifyRelay answered %s", r.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("NotifyRelay publish failed: %s", exc)
