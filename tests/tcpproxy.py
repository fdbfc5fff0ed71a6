"""A loopback TCP proxy for fault tests: cut every connection, refuse new ones, restore.

Put it between a client and a server (``runpack-runner`` → proxy → ``runpack
serve``) and point the client at :attr:`TcpProxy.url`::

    async with TcpProxy(server_port) as proxy:
        start_runner(url=proxy.url)
        ...
        proxy.cut()      # every open connection is reset; new ones are reset at once
        ...
        proxy.restore()  # connections pass again

It runs on the test's event loop, so the test must wait with ``await`` (never
``time.sleep``) while the proxy has to forward anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        """Reset both sides at once (RST), as a broken network would leave them."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class TcpProxy:
    """Forwards ``host:port`` (a free loopback port by default) to ``upstream``."""

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        #: Connections accepted and forwarded since the start.
        self.accepted = 0
        #: Connections reset on arrival while cut.
        self.refused = 0
        self._cut = False
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- faults -------------------------------------------------------------------------
    def cut(self) -> int:
        """Reset every open connection and every new one until :meth:`restore`.

        Returns how many connections were cut.
        """
        self._cut = True
        links = list(self._links)
        for link in links:
            link.abort()
        self._links.clear()
        log.info("proxy :%d cut %d connection(s)", self.port, len(links))
        return len(links)

    def restore(self) -> None:
        """Forward new connections again."""
        self._cut = False
        log.info("proxy :%d restored", self.port)

    # --- forwarding ---------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            self._links.discard(link)
            writer.transport.abort()
            return
        link.upstream = up_writer
        if self._cut or link not in self._links:  # cut while connecting upstream
            link.abort()
            return
        self.accepted += 1
        pipes = [
            asyncio.create_task(_pipe(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        ]
        for pipe in pipes:
            self._tasks.add(pipe)
            pipe.add_done_callback(self._tasks.discard)
        try:
            # One direction ends: finish the other once it has sent what it read.
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._links.discard(link)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then half-close; stop quietly when a side is reset."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError, RuntimeError):
        writer.transport.abort()
