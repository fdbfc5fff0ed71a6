"""A hostile client at the HTTP layer of a real ``runpack serve``: headers that are not
UTF-8 text, requests aiohttp cannot parse, forged log lines, and connections that
send their headers one byte at a time or nothing at all.

Every request here goes over a raw socket, so that the bytes are exactly the
attacker's; every reply must be a JSON error (never a 500), and the server's log
must hold no traceback and no line the client wrote.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from runpack.logs import JsonFormatter, TextFormatter
from tests.procs import KEYS, NO_LIMITS, Proc, running_server, until

SUBMIT = f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}".encode()
RUNNER = f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}".encode()
ADMIN = {"Authorization": f"Bearer {KEYS['RUNPACK_ADMIN_API_KEY']}"}
SOME_JOB = str(uuid.UUID(int=1, version=4))
HELLO = b'{"job_type":"hello_world","input_params":{"name":"Ada"}}'
#: How long a test waits for the server to close a connection it should close.
CLOSE_BOUND = 10.0


def port_of(server: Proc) -> int:
    return int(server.url.rsplit(":", 1)[1])


def request(
    method: str, path: str, *headers: bytes, body: bytes = b"", close: bool = True
) -> bytes:
    """An HTTP/1.1 request's bytes, exactly as given."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", *headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def exchange(server: Proc, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data``, read until the server closes; the reply's status, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), CLOSE_BOUND)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def json_error(server: Proc, data: bytes, status: int) -> dict[str, Any]:
    """The reply to ``data``, which must be a JSON error with ``status``."""
    got, headers, body = await exchange(server, data)
    assert got == status, body
    assert headers["content-type"].startswith("application/json"), (headers, body)
    error: dict[str, Any] = orjson.loads(body)
    assert isinstance(error.get("error"), str), error
    return error


def assert_clean_log(server: Proc) -> None:
    text = server.output()
    assert "Traceback" not in text, text
    assert not re.search(r"^\S+ \S+ (ERROR|CRITICAL) ", text, re.MULTILINE), text


# --- headers that are not UTF-8 text -----------------------------------------------------


async def origin_bound_key(server: Proc) -> bytes:
    """A stored submit key that may be used from https://app.example only."""
    body = {"role": "submit", "name": "browser", "origins": ["https://app.example"]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.url + "/api/admin/keys", json=body, headers=ADMIN) as resp,
    ):
        assert resp.status == 201, await resp.text()
        return f"Bearer {(await resp.json())['secret']}".encode()


async def test_headers_that_are_not_utf8_text_get_json_errors(
    database: str, tmp_path: Path
) -> None:
    with running_server(tmp_path, KEYS, args=("--db", database)) as server:
        browser_key = await origin_bound_key(server)
        runner_routes = [
            ("GET", "/api/runner/verify"),
            ("GET", "/api/runner/jobs/available"),
            ("POST", f"/api/runner/jobs/{SOME_JOB}/heartbeat"),
            ("POST", f"/api/runner/jobs/{SOME_JOB}/complete"),
            ("GET", "/api/runner/ws"),
        ]
        # A token that is not UTF-8 is a wrong key, with or without a key needed.
        for token in (b"\xff", b"\xe9t\xe9", b"rpk_\xff" + b"a" * 40, "é".encode()):
            for method, path in [("GET", f"/api/jobs/{SOME_JOB}"), ("GET", "/api/admin/jobs")]:
                data = request(method, path, b"Authorization: Bearer " + token)
                assert await json_error(server, data, 401) == {"error": "Invalid API key"}
        # Runner ids that are not text never reach the database.
        for method, path in runner_routes:
            for runner_id in (b"\xff", b"r\xc3", b"\xed\xa0\x80"):
                data = request(
                    method, path, b"Authorization: " + RUNNER, b"X-Runner-ID: " + runner_id
                )
                error = await json_error(server, data, 400)
                assert error["error"] == "Invalid header" and "X-Runner-ID" in error["details"]
        # An Origin that is not text: with the key bound to Origins, the environment key, none.
        for key in (browser_key, SUBMIT):
            data = request(
                "POST",
                "/api/jobs/submit",
                b"Authorization: " + key,
                b"Origin: https://\xff.example",
                b"Content-Type: application/json",
                body=HELLO,
            )
            error = await json_error(server, data, 400)
            assert error["error"] == "Invalid header" and "Origin" in error["details"]
        # The other headers the server reads.
        for header, method, path in [
            (b"Last-Event-ID", "GET", f"/api/jobs/{SOME_JOB}/events"),
            (b"Range", "GET", f"/figures/{SOME_JOB}/index.html"),
            (b"If-None-Match", "GET", f"/figures/{SOME_JOB}/index.html"),
            (b"If-Modified-Since", "GET", "/ui/"),
            (b"Accept", "GET", "/metrics"),
            (b"Content-Type", "POST", "/api/jobs/submit"),
            (b"Upgrade", "GET", "/api/admin/events"),
        ]:
            data = request(
                method,
                path,
                b"Authorization: " + SUBMIT,
                header + b": \xff\xfe",
                body=HELLO if method == "POST" else b"",
            )
            error = await json_error(server, data, 400)
            assert header.decode() in error["details"], error
        # A request id that is not text is replaced by a new one, as any insane id is.
        data = request("GET", "/api/openapi.json", b"X-Request-ID: \xff")
        status, headers, _ = await exchange(server, data)
        assert status == 200 and re.fullmatch(r"[0-9a-f]{12}", headers["x-request-id"])
        # And the keys still work.
        data = request("POST", "/api/jobs/submit", b"Authorization: " + SUBMIT, body=HELLO)
        assert (await exchange(server, data))[0] == 201
        assert_clean_log(server)


# --- requests aiohttp cannot parse, bodies it cannot decode -----------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    env = {
        **KEYS,
        **NO_LIMITS,
    }
    with running_server(tmp_path_factory.mktemp("hostile-http"), env) as proc:
        yield proc


def submit_with(*headers: bytes, body: bytes) -> bytes:
    return request(
        "POST",
        "/api/jobs/submit",
        b"Authorization: " + SUBMIT,
        b"Content-Type: application/json",
        *headers,
        body=body,
    )


UNREADABLE = [
    pytest.param(submit_with(b"Content-Encoding: gzip", body=b"not gzip at all"), id="bad-gzip"),
    pytest.param(submit_with(b"Content-Encoding: deflate", body=b"\x00" * 20), id="bad-deflate"),
    pytest.param(submit_with(b"Content-Encoding: br", body=b"\x00" * 20), id="brotli"),
    pytest.param(submit_with(b"Content-Encoding: zstd", body=b"\x00" * 20), id="zstd"),
    pytest.param(submit_with(b"Content-Encoding: x-magic", body=b"{}"), id="unknown-encoding"),
    pytest.param(
        request(
            "POST",
            "/api/jobs/submit",
            b"Authorization: " + SUBMIT,
            b"Transfer-Encoding: chunked",
        ).replace(b"\r\n\r\n", b"\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        id="bad-chunk-size",
    ),
    pytest.param(submit_with(body=b'{"job_type": '), id="bad-json"),
    pytest.param(b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", id="control-in-path"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \x01\r\n\r\n", id="control-in-header"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n", id="header-without-colon"),
    pytest.param(b"GET / HTTP/9.9\r\n\r\n", id="bad-version"),
    pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", id="line-too-long"),
]


@pytest.mark.parametrize("data", UNREADABLE)
async def test_requests_that_cannot_be_read_get_a_json_400_and_no_traceback(
    server: Proc, data: bytes
) -> None:
    before = len(server.output())
    await json_error(server, data, 400)
    # The next request is answered, so anything the bad one logged is written by now.
    assert (await exchange(server, request("GET", "/health")))[0] == 200
    text = server.output()[before:]
    assert "Traceback" not in text and " ERROR " not in text, text


# --- log injection ----------------------------------------------------------------------------

FORGED = "2026-12-06 05:00:00,000 ERROR runpack.auth: FORGED LINE"


def forged_lines(text: str) -> list[str]:
    return [
        line for line in text.splitlines() if "FORGED" in line and line.startswith("2026-12-06 05")
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_client_cannot_write_a_line_into_the_log(log_format: str, tmp_path: Path) -> None:
    env = {**KEYS, "RUNPACK_LOG_FORMAT": log_format}
    with running_server(tmp_path, env) as server:
        path = "/nothing%0a" + FORGED.replace(" ", "%20") + "%0d%1b[2J%e2%80%a8"
        assert (await exchange(server, request("GET", path)))[0] == 404
        # A runner's name reaches the log through a message's arguments.
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                server.url + "/api/runner/ws", headers={"Authorization": RUNNER.decode()}
            ) as ws,
        ):
            name = "lab\n" + FORGED + "\r\x1b[31m"
            hello = {
                "type": "hello",
                "name": name,
                "capabilities": ["hello_world"],
                "concurrency": 1,
            }
            await ws.send_str(orjson.dumps(hello).decode())
            msg = await ws.receive(timeout=10)
            assert orjson.loads(msg.data)["type"] == "welcome", msg

        def logged() -> str | None:
            text = server.output()
            return text if "connected" in text and "/nothing" in text else None

        text = await until(logged, "the access line and the runner's connection in the log")
        assert forged_lines(text) == [], text
        assert "\x1b" not in text and "\r" not in text and "\u2028" not in text
        escaped = "\\n" + FORGED
        if log_format == "text":
            assert f"GET /nothing{escaped}\\r\\x1b[2J\\u2028 404" in text, text
            assert f"(lab{escaped}\\r\\x1b[31m) connected" in text, text
        else:
            records = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
            paths = [r["path"] for r in records if r["logger"] == "runpack.access"]
            assert f"/nothing{escaped}\\r\\x1b[2J\\u2028" in paths, paths
            assert any(f"(lab{escaped}\\r\\x1b[31m) connected" in r["message"] for r in records)


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_an_exception_message_cannot_forge_a_record_either(formatter: logging.Formatter) -> None:
    try:
        raise ValueError("no such job: x\n" + FORGED + "\r\x1b[2J")
    except ValueError as exc:
        record = logging.LogRecord("runpack.app", logging.ERROR, "", 0, "failed", (), None)
        record.exc_info = (type(exc), exc, exc.__traceback__)
    out = formatter.format(record)
    assert "\r" not in out and "\x1b" not in out, out
    if isinstance(formatter, JsonFormatter):
        assert "\n" not in out  # one record, one line
        assert orjson.loads(out)["logger"] == "runpack.app"
    else:
        # Every line but the record's own is indented: none can pass for a record.
        first, *rest = out.splitlines()
        assert first.endswith("ERROR runpack.app: failed") and rest, out
        assert all(line.startswith("  ") for line in rest), out
        assert rest[-1] == "  " + FORGED + "\\r\\x1b[2J", out


# --- slow and silent connections --------------------------------------------------------------


async def closed_within(
    reader: asyncio.StreamReader,
    limit: float,
    trickle: tuple[asyncio.StreamWriter, bytes] | None = None,
) -> float:
    """Seconds until the server closes the connection (reading and dropping whatever it
    sends), sending ``trickle``'s bytes one at a time every 0.1 s meanwhile."""
    start = time.monotonic()
    deadline = start + limit
    pending = list(trickle[1]) if trickle else []
    while time.monotonic() < deadline:
        if pending and trickle is not None:
            try:
                trickle[0].write(bytes([pending.pop(0)]))
                await trickle[0].drain()
            except ConnectionError:
                return time.monotonic() - start
        try:
            if not await asyncio.wait_for(reader.read(65536), 0.1):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - start
    raise AssertionError(f"the server kept the connection open for {limit:g} s")


#: Connections of each kind in the crowd; the idle timeout of the server they meet.
CROWD = 70
IDLE = 6.0
#: The header timeout is 1 s: closed before this, it was not the idle timeout.
HEADER_BOUND = IDLE - 1.0


async def test_slow_and_silent_connections_are_closed_streams_and_runners_stay(
    tmp_path: Path,
) -> None:
    env = {**KEYS, "RUNPACK_HEADER_TIMEOUT": "1", "RUNPACK_IDLE_TIMEOUT": str(IDLE)}
    with running_server(tmp_path, env) as server:
        port = port_of(server)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            # A runner on its socket, and a watcher on an event stream.
            ws = await http.ws_connect(
                server.url + "/api/runner/ws", headers={"Authorization": RUNNER.decode()}
            )
            hello = {
                "type": "hello",
                "name": "steady",
                "capabilities": ["other_type"],
                "concurrency": 1,
            }
            await ws.send_str(orjson.dumps(hello).decode())
            assert orjson.loads((await ws.receive(timeout=10)).data)["type"] == "welcome"
            job_id = await submit_job(http, server)
            stream = await http.get(f"{server.url}/api/jobs/{job_id}/events")
            assert stream.status == 200
            assert (await next_event(stream))[0] == "snapshot"

            # A crowd of connections that send nothing, that send their headers a byte
            # at a time, and that do so for their second request.
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CROWD)]
            slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CROWD)]
            again = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CROWD)]
            for _, writer in again:
                writer.write(request("GET", "/health", close=False))
            slowloris = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: a\r\n" * 100
            took = await asyncio.gather(
                *(closed_within(reader, HEADER_BOUND) for reader, _ in silent),
                *(closed_within(r, HEADER_BOUND, (w, slowloris)) for r, w in slow + again),
            )
            assert max(took) < HEADER_BOUND  # the header timeout, before the idle timeout
            # A kept-alive connection after its request; one whose body stops coming.
            idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
            idle.write(request("GET", "/health", close=False))
            body_reader, body = await asyncio.open_connection("127.0.0.1", port)
            head = request("POST", "/api/jobs/submit", b"Authorization: " + SUBMIT, body=HELLO)
            body.write(head[: -len(HELLO) + 5])
            took = await asyncio.gather(
                closed_within(idle_reader, IDLE + CLOSE_BOUND),
                closed_within(body_reader, IDLE + CLOSE_BOUND),
            )
            assert min(took) >= HEADER_BOUND  # the idle timeout, not the header timeout
            for _, writer in [*silent, *slow, *again, (idle_reader, idle), (body_reader, body)]:
                writer.close()

            # The idle timeout has passed for the runner's socket and the stream: both live.
            await ws.send_str('{"type": "dance"}')
            frame = orjson.loads((await ws.receive(timeout=10)).data)
            assert frame["type"] == "error", frame
            assert not ws.closed
            async with http.post(
                f"{server.url}/api/jobs/{job_id}/cancel",
                headers={"Authorization": SUBMIT.decode()},
            ) as resp:
                assert resp.status == 200, await resp.text()
            kind, data = await next_event(stream)
            assert (kind, data["status"]) == ("status", "cancelled")
            stream.close()
            await ws.close()
        assert_clean_log(server)


async def submit_job(http: aiohttp.ClientSession, server: Proc) -> str:
    body = {"job_type": "other_type", "input_params": {}}
    headers = {"Authorization": SUBMIT.decode()}
    async with http.post(server.url + "/api/jobs/submit", json=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["job_id"])


async def next_event(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    kind = ""
    while True:
        raw = await asyncio.wait_for(resp.content.readline(), 10)
        assert raw, "the event stream ended"
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            return kind, orjson.loads(line[6:])
