"""Is a cached result still good? Checks every ``figpack_url`` in it.

A remote figure is good while its ``figpack.json`` is not deleted and is pinned
or unexpired, as the original decided. Unlike the original, a network error,
a timeout or a 5xx means "unknown": the result keeps being served. Answers are
remembered for a short time so a popular result costs one check per TTL.

A figure stored by this server (its URL is under ``<public_url>/figures/``) is
checked on disk instead, every time: it is good while every file it was
uploaded with is still there with its size.

A figure URL comes from a runner, so it is fetched only under the address rule
(:mod:`runpack.netrules`): an http(s) URL on one of the allowed hosts
(``RUNPACK_FIGURE_URL_HOSTS``, figpack's own by default), without credentials,
to public addresses only (unless ``RUNPACK_ALLOW_PRIVATE_URLS``), checked on the
resolved address and again on every socket opened; no redirect is followed, no
cookie kept, and the answer is read up to :data:`MAX_MANIFEST_BYTES`. A URL that
breaks the rule is never fetched and its result is *invalid* (expired, computed
again), as a figure URL not ending in ``index.html`` already was; completing a job
with such a URL is accepted, as by the original.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Protocol

import aiohttp
import orjson

from runpack.artifacts import figpack_urls, may_name_figures
from runpack.netrules import (
    FIGPACK_HOSTS,
    URLNotAllowed,
    address_allowed,
    check_sockaddr,
    host_matches,
    split_url,
)
from runpack.netrules import check_url as check_url_text

log = logging.getLogger(__name__)

VALID, INVALID, UNKNOWN = "valid", "invalid", "unknown"
#: A figure's ``figpack.json`` is a few hundred bytes; anything past this is not one.
MAX_MANIFEST_BYTES = 1024 * 1024


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
        self,
        timeout: float = 5.0,
        cache_ttl: float = 60.0,
        local: LocalFigures | None = None,
        *,
        hosts: tuple[str, ...] = FIGPACK_HOSTS,
        allow_private: bool = False,
    ) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.local = local
        self.cache_ttl = cache_ttl
        self.hosts = hosts
        self.allow_private = allow_private
        self._cache: dict[str, tuple[str, float]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            socket_factory=None if self.allow_private else check_sockaddr
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )

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
        if not may_name_figures(output_data):
            return True  # not walked: no key of it can be figpack_url
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
        refusal = await self.refusal(url)
        if refusal == UNKNOWN:
            return UNKNOWN
        if refusal is not None:
            log.warning("figpack_url not fetched, result expired: %s", refusal)
            verdict, good_until_ms = INVALID, None
        else:
            verdict, good_until_ms = await self._fetch(url[: -len("index.html")] + "figpack.json")
        if verdict != UNKNOWN:
            if len(self._cache) > 10_000:
                self._cache.clear()
            until = now + self.cache_ttl
            if good_until_ms is not None:  # never remember "valid" past the expiration
                until = min(until, now + (good_until_ms - time.time() * 1000) / 1000)
            self._cache[url] = (verdict, until)
        return verdict

    async def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be fetched (the address rule), None when it may, or
        UNKNOWN when its host cannot be resolved now (a network error keeps results)."""
        try:
            parts = split_url(url)
            if not host_matches(parts.hostname or "", self.hosts):
                return f"URL not allowed: {url}: its host is not in RUNPACK_FIGURE_URL_HOSTS"
            check_url_text(url, allow_private=self.allow_private, resolve=False)
        except URLNotAllowed as exc:
            return str(exc)
        if self.allow_private:
            return None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                parts.hostname, parts.port or 443, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError) as exc:
            log.info("figpack.json of %s unreachable (%s): keeping result", url, exc)
            return UNKNOWN
        if not all(address_allowed(str(info[4][0])) for info in infos):
            return f"URL not allowed: {url} resolves to a private address"
        return None

    async def _fetch(self, manifest_url: str) -> tuple[str, float | None]:
        """The verdict, and until when a "valid" lasts (ms epoch) if it expires."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with self._session.get(manifest_url, allow_redirects=False) as resp:
                if resp.status >= 500 or resp.status in (408, 429) or 300 <= resp.status < 400:
                    # A redirect is not followed: the result is kept, as for an outage.
                    log.info(
                        "figpack.json %s answered %s: keeping result", manifest_url, resp.status
                    )
                    return UNKNOWN, None
                if resp.status >= 400:  # gone, forbidden (S3's "missing"), …
                    return INVALID, None
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_MANIFEST_BYTES:
                        log.info("figpack.json %s is too large: result expired", manifest_url)
                        return INVALID, None
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
