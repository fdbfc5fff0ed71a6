"""``runpack bench``'s load clients: prepared POSTs over lean keep-alive connections."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit


class LeanHttp(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads the
    replies, with as little work on the client as possible: a load generator should
    measure the server, not itself (redis-benchmark and wrk are written in C for the
    same reason). Replies must carry a Content-Length, as every JSON reply of the
    server does."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._fail(ConnectionError("runpack bench: a reply without Content-Length"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        status, body = int(head[9:12]), bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    def _fail(self, exc: Exception) -> None:
        self.lost = exc
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("runpack bench: the server closed the connection"))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one prepared request; its (status, body)."""
        if self.lost is not None or self.transport is None:
            raise ConnectionError(f"runpack bench: connection lost: {self.lost}")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Poster:
    """Prepared POSTs of JSON bodies to one path, over lean keep-alive connections."""

    url: str
    path: str
    headers: dict[str, str]

    def prepare(self, body: bytes) -> bytes:
        split = urlsplit(self.url)
        lines = [f"POST {split.path.rstrip('/')}{self.path} HTTP/1.1", f"Host: {split.netloc}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def connect(self) -> LeanHttp:
        split = urlsplit(self.url)
        if split.scheme != "http":
            raise SystemExit(
                "runpack bench: --url must be http:// (the load clients speak plain HTTP)"
            )
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            LeanHttp, split.hostname or "127.0.0.1", split.port or 80
        )
        return protocol
