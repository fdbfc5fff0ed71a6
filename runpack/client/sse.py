"""Reading a job's event stream (``text/event-stream``) into :class:`Event` values."""

from __future__ import annotations

import orjson

from runpack.client.models import Event


class SSEParser:
    """A ``text/event-stream`` body, fed in chunks, as the SSE specification reads it."""

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False
        self._data: list[str] = []
        self._type = ""
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        self._buffer += chunk
        events: list[Event] = []
        while True:
            cr, lf = self._buffer.find(b"\r"), self._buffer.find(b"\n")
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                return events
            end = min(ends)
            line = self._buffer[:end]
            step = 2 if self._buffer[end : end + 2] == b"\r\n" else 1
            if step == 1 and end == cr and end == len(self._buffer) - 1:
                self._skip_lf = True  # a CR at the end of a chunk: its LF may come next
            self._buffer = self._buffer[end + step :]
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                self._type = ""
                return None
            text = "\n".join(self._data)
            kind = self._type or "message"
            self._data, self._type = [], ""
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError:
                data = {"text": text}
            if not isinstance(data, dict):
                data = {"value": data}
            return Event(self.last_id, kind, data)
        if line.startswith(":"):
            return None  # a comment: the server's keepalive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None
