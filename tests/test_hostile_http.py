"""A hostile client at the HTTP layer of a real ``runpack serve``: headers that are not
UTF-8 text, requests aiohttp cannot parse, forged log lines, and connections that
send their headers one byte at a time or nothing at all.

Every request here goes over a raw socket, so that the bytes are exactly the
attacker's; every reply must be a JSON error (never a 500), and the server's log
must hold no traceback and no line the client wrote.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.pg import fresh_database, require_postgres
from tests.procs import KEYS, Proc, running_server, until

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


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The --db of a server: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "runpack.db")
        return
    require_postgres()
    async with fresh_database() as dsn:
        yield dsn


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
