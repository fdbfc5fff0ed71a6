"""Is a cached result still good? Checks every ``figpack_url`` in it.

A remote figure is good while its ``figpack.json`` is not deleted and is pinned
or unexpired, as the original decided. Unlike the original, a network error,
a timeout or a 5xx means "unknown": the result keeps being served. Answers are
remembered for a short time so a popular result costs one check per TTL.

A figure stored by this server (its URL is under ``<public_url>/figures/``) is
checked on disk instead, every time: it is good while every file it was
uploaded with is still there with its size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import aiohttp
import orjson

from runpack.artifacts import figpack_urls

log = logging.getLogger(__name__)

VALID, INVALID, UNKNOWN = "valid", "invalid", "unknown"


class LocalFigures(Protocol):
    """Figures this server stores itself (runpack.artifacts.FigureStore)."""

    def job_of_url(self, url: str) -> str | None: ...

    async def is_complete(self, job_id: str) -> bool: ...


def judge_manifest(manifest: Any, now_ms: int) -> str:
    """The original's rule for a figure's ``figpack.json``."""
    if not isinstance(manifest, dict) or manifest.get("deleted") is True:
        return INVALID
    if manifest.get("pinned") is True:
        return VALID
    expiration = manifest.get("expiration")
    if isinstance(expiration, int | float) and not isinstance(expiration, bool):
        return VALID if expiration > now_ms else INVALID
    return INVALID


class ResultValidator:
    def __init__(
        self, timeout: float = 5.0, cache_ttl: float = 60.0, local: LocalFigures | None = None
    ) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.local = local
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[str, float]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def is_valid(self, output_data: str | None) -> bool:
        if not output_data:
            return True
        try:
            data = orjson.loads(output_data)
        except orjson.JSONDecodeError:
            return False
        # The original only checks string values; the other URLs are still checked.
        urls = [u for u in figpack_urls(data) if isinstance(u, str)]
        if not urls:
            return True
        verdicts = await asyncio.gather(*(self.check_url(u) for u in urls))
        return INVALID not in verdicts

    async def check_url(self, url: str) -> str:
        if not url.endswith("/index.html"):
            return INVALID
        job_id = self.local.job_of_url(url) if self.local is not None else None
        if self.local is not None and job_id is not None:  # ours: on disk, not remembered
            return VALID if await self.local.is_complete(job_id) else INVALID
        cached = self._cache.get(url)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        verdict, good_until_ms = await self._fetch(url[: -len("index.html")] + "figpack.json")
        if verdict != UNKNOWN:
            if len(self._cache) > 10_000:
                self._cache.clear()
            until = now + self.cache_ttl
            if good_until_ms is not None:  # never remember "valid" past the expiration
                until = min(until, now + (good_until_ms - time.time() * 1000) / 1000)
            self._cache[url] = (verdict, until)
        return verdict

    async def _fetch(self, manifest_url: str) -> tuple[str, float | None]:
        """The verdict, and until when a "valid" lasts (ms epoch) if it expires."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with self._session.get(manifest_url) as resp:
                if resp.status >= 500 or resp.status in (408, 429):
                    log.info(
                        "figpack.json %s answered %s: keeping result", manifest_url, resp.status
                    )
                    return UNKNOWN, None
                if resp.status >= 300:  # gone, forbidden (S3's "missing"), …
                    return INVALID, None
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.info("figpack.json %s unreachable (%s): keeping result", manifest_url, exc)
            return UNKNOWN, None
        try:
            manifest = orjson.loads(body)
        except orjson.JSONDecodeError:
            return INVALID, None
        verdict = judge_manifest(manifest, int(time.time() * 1000))
        expiration = manifest.get("expiration") if isinstance(manifest, dict) else None
        pinned = isinstance(manifest, dict) and manifest.get("pinned") is True
        if verdict == VALID and not pinned and isinstance(expiration, int | float):
            return verdict, float(expiration)
        return verdict, None
