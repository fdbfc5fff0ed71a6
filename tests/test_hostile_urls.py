"""URLs named by runners and submitters are fetched only where the address rule allows.

A runner's result names a ``figpack_url`` that the server checks before serving a
cached result; a public submit key names an ``nwb_url`` that the runner reads. Both
are someone else's choice, so neither may aim this machine at loopback, private or
metadata addresses (unless ``RUNPACK_ALLOW_PRIVATE_URLS`` says so), follow a
redirect, or send credentials. Played as the attacker would, against real
``runpack serve`` and ``runpack-runner`` processes, with a listener on loopback that
records every request it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer

from runpack import netrules
from runpack.netrules import URLNotAllowed, address_allowed, check_url, guarded, host_matches
from runpack.validation import INVALID, UNKNOWN, VALID, ResultValidator
from runpack_runner.cli import build_parser
from runpack_runner.settings import RunnerSettings
from tests.procs import KEYS, NO_LIMITS, Proc, free_port, running_runner, running_server, until

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = {"Authorization": f"Bearer {KEYS['RUNPACK_SUBMIT_API_KEY']}"}
RUNNER = {"Authorization": f"Bearer {KEYS['RUNPACK_RUNNER_API_KEY']}"}
NO_LIMITS = {
    **NO_LIMITS,
}

pytestmark = pytest.mark.timeout(120)


# --- a listener that records what reaches it -----------------------------------------------


class Listener:
    """Loopback HTTP server: every request is recorded. ``/redirect/figpack.json``
    redirects to ``/target/figpack.json``; ``*.nwb`` is a file that is not HDF5; any
    other ``figpack.json`` is a pinned figure (so a fetch, if made, would serve it)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        if request.path == "/redirect/figpack.json":
            raise web.HTTPFound("/target/figpack.json")
        if request.path.endswith(".nwb"):
            return web.Response(body=b"not an HDF5 file " * 64)
        return web.json_response({"pinned": True}, headers={"Set-Cookie": "seen=1"})

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


@pytest.fixture
async def listener(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Listener:
    found = Listener()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    found.server = await aiohttp_server(app, host="127.0.0.1")
    return found


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


# --- speaking to a real server, as a client and as the original's runner -------------------


class Api:
    def __init__(self, session: aiohttp.ClientSession, server: Proc) -> None:
        self.session = session
        self.url = server.url

    async def call(
        self, method: str, path: str, headers: dict[str, str], body: Any = None
    ) -> tuple[int, Any]:
        async with self.session.request(
            method, self.url + path, json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def cached_result(self, params: dict[str, Any], output: dict[str, Any]) -> str:
        """A job completed by an HTTP runner with ``output``: its id."""
        job = {"job_type": "figure", "input_params": params}
        status, body = await self.call("POST", "/api/jobs/submit", SUBMIT, job)
        assert status == 201, body
        job_id = str(body["job_id"])
        reg = {"name": "lab", "capabilities": ["figure"]}
        status, body = await self.call("POST", "/api/runner/register", RUNNER, reg)
        assert status == 201, body
        as_runner = {**RUNNER, "X-Runner-ID": str(body["runner_id"])}
        status, body = await self.call("POST", f"/api/runner/jobs/{job_id}/claim", as_runner)
        assert status == 200, body
        done = {"output_data": output, "console_output": "uploaded"}
        path = f"/api/runner/jobs/{job_id}/complete"
        status, body = await self.call("POST", path, as_runner, done)
        assert status == 200, body  # any output is accepted, as by the original
        return job_id

    async def submit(self, params: dict[str, Any]) -> tuple[int, Any]:
        job = {"job_type": "figure", "input_params": params}
        return await self.call("POST", "/api/jobs/submit", SUBMIT, job)

    async def check(self, params: dict[str, Any]) -> tuple[int, Any]:
        job = {"job_type": "figure", "input_params": params}
        return await self.call("POST", "/api/jobs/check", SUBMIT, job)


@contextlib.asynccontextmanager
async def api_for(server: Proc) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield Api(session, server)


# --- item 5: the server's check of a cached figure ---------------------------------------------


async def test_a_figure_url_on_loopback_is_never_fetched_and_its_result_expires(
    tmp_path: Path, database: str, listener: Listener, closed_port: int
) -> None:
    """Even with every host allowed, loopback in any spelling is not fetched; an open
    port and a closed one answer alike."""
    port = listener.port
    urls = {
        "literal": f"http://127.0.0.1:{port}/literal/index.html",
        "name": f"http://localhost:{port}/name/index.html",
        "decimal": f"http://2130706433:{port}/decimal/index.html",
        "mapped": f"http://[::ffff:127.0.0.1]:{port}/mapped/index.html",
        "creds": f"http://user:pw@127.0.0.1:{port}/creds/index.html",
        "closed": f"http://127.0.0.1:{closed_port}/closed/index.html",
    }
    env = {**KEYS, **NO_LIMITS, "RUNPACK_FIGURE_URL_HOSTS": "*"}
    with running_server(tmp_path / "server", env=env, args=("--db", database)) as server:
        async with api_for(server) as api:
            for name, url in urls.items():
                await api.cached_result({"figure": name}, {"figpack_url": url})
            for name in urls:
                status, body = await api.check({"figure": name})
                assert (status, body["status"]) == (200, "expired"), (name, body)
                status, body = await api.submit({"figure": name})
                assert (status, body["status"]) == (201, "pending"), (name, body)
    assert listener.requests == []


async def test_an_allowed_figure_is_checked_without_redirects_credentials_or_cookies(
    tmp_path: Path, database: str, listener: Listener
) -> None:
    """With RUNPACK_ALLOW_PRIVATE_URLS=true and the listener's host allowed, a local
    figure is checked as before; a redirect is not followed (the result is kept, as
    for an outage), and a URL with credentials is not fetched at all."""
    base = f"http://127.0.0.1:{listener.port}"
    env = {
        **KEYS,
        **NO_LIMITS,
        "RUNPACK_ALLOW_PRIVATE_URLS": "true",
        "RUNPACK_FIGURE_URL_HOSTS": "127.0.0.1",
        "RUNPACK_VALIDATION_CACHE_TTL": "0",
    }
    with running_server(tmp_path / "server", env=env, args=("--db", database)) as server:
        async with api_for(server) as api:
            await api.cached_result({"f": "ok"}, {"figpack_url": f"{base}/ok/index.html"})
            await api.cached_result({"f": "moved"}, {"figpack_url": f"{base}/redirect/index.html"})
            creds = f"http://user:secret@127.0.0.1:{listener.port}/creds/index.html"
            await api.cached_result({"f": "creds"}, {"figpack_url": creds})
            for _ in range(2):  # the second check would send a cookie set by the first
                for name in ("ok", "moved"):
                    status, body = await api.submit({"f": name})
                    assert (status, body["status"]) == (200, "completed"), (name, body)
            status, body = await api.check({"f": "creds"})
            assert (status, body["status"]) == (200, "expired"), body
    paths = listener.paths()
    assert paths.count("/ok/figpack.json") == 2
    assert paths.count("/redirect/figpack.json") == 2
    assert "/target/figpack.json" not in paths
    assert not any(path.startswith("/creds/") for path in paths)
    for _, headers in listener.requests:
        assert "Authorization" not in headers and "Cookie" not in headers, headers


async def test_a_figure_host_that_is_not_allowed_is_not_fetched(listener: Listener) -> None:
    """Private addresses allowed, but the host is not in RUNPACK_FIGURE_URL_HOSTS."""
    validator = ResultValidator(timeout=5, cache_ttl=0, allow_private=True)
    await validator.start()
    try:
        url = f"http://127.0.0.1:{listener.port}/fig/index.html"
        assert await validator.check_url(url) == INVALID
        allowed = ResultValidator(timeout=5, cache_ttl=0, hosts=("127.0.0.1",), allow_private=True)
        await allowed.start()
        try:
            assert await allowed.check_url(url) == VALID
        finally:
            await allowed.close()
    finally:
        await validator.close()
    assert listener.paths() == ["/fig/figpack.json"]


async def test_the_socket_is_refused_even_when_the_name_looked_public(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the first resolution said "public", the connection goes to
    loopback. Every socket the validator opens is checked on its resolved address."""
    validator = ResultValidator(timeout=5, cache_ttl=0, hosts=("*",))

    async def looked_public(url: str) -> None:
        return None

    monkeypatch.setattr(validator, "refusal", looked_public)
    await validator.start()
    try:
        for host in ("127.0.0.1", "localhost"):
            url = f"http://{host}:{listener.port}/rebound/index.html"
            assert await validator.check_url(url) == UNKNOWN  # not fetched; kept
    finally:
        await validator.close()
    assert listener.requests == []


# --- the address rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "100.100.100.200",  # a metadata address inside CGNAT
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",  # cloud metadata over IPv6
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2001:db8::1",
        "not an address",
    ],
)
def test_private_and_special_addresses_are_refused(address: str) -> None:
    assert not address_allowed(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_allowed(address)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/x", "private address"),
        ("http://2130706433/x", "private address"),  # decimal 127.0.0.1
        ("http://0x7f.1/x", "private address"),  # hexadecimal, short form
        ("http://017700000001/x", "private address"),  # octal
        ("http://127.1/x", "private address"),
        ("http://localhost:8080/x", "private address"),
        ("http://[::1]/x", "private address"),
        ("http://[::ffff:7f00:1]/x", "private address"),
        ("http://169.254.169.254/latest/meta-data/", "private address"),
        ("http://[fd00:ec2::254]/", "private address"),
        ("http://user:pw@example.org/x", "credentials"),
        ("http://user@example.org/x", "credentials"),
        ("file:///etc/passwd", "not an http(s) URL"),
        ("ftp://example.org/x", "not an http(s) URL"),
        ("http:///x", "no host"),
        ("http://example.org:port/x", "cannot be read"),
    ],
)
def test_urls_that_break_the_rule_are_refused_with_a_reason(url: str, why: str) -> None:
    with pytest.raises(URLNotAllowed, match=f"^URL not allowed: .*{re.escape(why)}"):
        check_url(url)


def test_a_host_that_does_not_resolve_is_refused_as_such() -> None:
    with pytest.raises(URLNotAllowed, match=r"^the host of http://no-such-host\.invalid/x"):
        check_url("http://no-such-host.invalid/x")


def test_the_runner_takes_the_setting_from_its_environment_or_a_flag() -> None:
    assert not RunnerSettings().allow_private_urls
    assert RunnerSettings.from_env({"RUNPACK_ALLOW_PRIVATE_URLS": "true"}).allow_private_urls
    args = build_parser().parse_args(["--allow-private-urls"])
    assert args.allow_private_urls is True
    assert build_parser().parse_args([]).allow_private_urls is None  # the environment decides


def test_allow_private_lifts_the_address_rule_but_not_the_rest() -> None:
    check_url("http://127.0.0.1:8080/x", allow_private=True)
    check_url("http://2130706433/x", allow_private=True)
    with pytest.raises(URLNotAllowed, match="credentials"):
        check_url("http://u:p@127.0.0.1/x", allow_private=True)


def test_host_patterns() -> None:
    assert host_matches("figures.figpack.org", netrules.FIGPACK_HOSTS)
    assert host_matches("FIGURES.figpack.org.", ["figures.figpack.org"])
    assert host_matches("a.b.example.org", ["*.example.org"])
    assert not host_matches("example.org", ["*.example.org"])
    assert not host_matches("evilexample.org", ["*.example.org"])
    assert not host_matches("figures.figpack.org.evil.com", netrules.FIGPACK_HOSTS)
    assert host_matches("anything", ["*"])


def fetch(url: str) -> str:
    """GET ``url`` with urllib (as lindi's first request does): its status, or why not."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.status)
    except urllib.error.URLError as exc:
        return f"refused: {exc.reason}"


async def test_guarded_threads_cannot_connect_to_private_addresses(listener: Listener) -> None:
    """Within ``guarded()`` every resolution of the thread is checked: a literal and a
    name alike. Other threads are not affected."""
    base = f"http://127.0.0.1:{listener.port}"

    def guarded_thread() -> dict[str, str]:
        outcomes = {}
        with guarded():
            outcomes["literal"] = fetch(f"{base}/a/figpack.json")
            outcomes["name"] = fetch(f"http://localhost:{listener.port}/b/figpack.json")
            try:  # lindi reads remote files with requests (urllib3)
                requests.get(f"{base}/e/figpack.json", timeout=5)
                outcomes["requests"] = "fetched"
            except requests.ConnectionError as exc:
                outcomes["requests"] = f"refused: {exc}"
        with guarded(allow_private=True):
            outcomes["allowed"] = fetch(f"{base}/c/figpack.json")
        return outcomes

    outcomes = await asyncio.to_thread(guarded_thread)
    assert outcomes["literal"].startswith("refused: connection to a private address refused")
    assert outcomes["name"].startswith("refused: connection to a private address refused")
    assert "connection to a private address refused" in outcomes["requests"]
    assert outcomes["allowed"] == "200"
    assert await asyncio.to_thread(fetch, f"{base}/d/figpack.json") == "200"  # not guarded
    assert listener.paths() == ["/c/figpack.json", "/d/figpack.json"]


async def test_a_redirect_to_a_private_address_is_refused_in_a_guarded_thread(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first hop allowed (as a public host's would be), the hop to loopback refused."""
    real = netrules._real_getaddrinfo
    first: list[str] = []

    def public_once(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not first:  # the first resolution passes unchecked, as a public one would
            first.append(str(host))
            return real(host, port, *args, **kwargs)
        return netrules._checked_getaddrinfo(host, port, *args, **kwargs)

    def run() -> str:
        with guarded():
            monkeypatch.setattr(socket, "getaddrinfo", public_once)
            return fetch(f"http://127.0.0.1:{listener.port}/redirect/figpack.json")

    outcome = await asyncio.to_thread(run)
    assert outcome.startswith("refused: connection to a private address"), outcome
    assert listener.paths() == ["/redirect/figpack.json"]


# --- item 6: the runner's reading of an nwb_url ----------------------------------------------


async def job_detail(api: Api, job_id: str) -> dict[str, Any]:
    status, body = await api.call("GET", f"/api/admin/jobs/{job_id}", {})  # no key: public
    assert status == 200, body
    return dict(body)


async def finished(api: Api, job_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        detail = await job_detail(api, job_id)
        return detail if detail["status"] in ("completed", "failed") else None

    return dict(await until(done, f"job {job_id} to finish", limit=90))


def raster(url: str) -> dict[str, Any]:
    return {
        "job_type": "figpack_nwb_raster_plot",
        "input_params": {"nwb_url": url, "units_path": "/units"},
    }


def assert_public_console_is_clean(detail: dict[str, Any]) -> None:
    console = detail["console_output"]
    assert "Traceback" not in console, console
    assert 'File "' not in console and str(ROOT) not in console, console
    assert "site-packages" not in console, console


async def test_the_runner_refuses_an_nwb_url_on_loopback_before_any_connection(
    tmp_path: Path, listener: Listener, closed_port: int
) -> None:
    urls = [
        f"http://127.0.0.1:{listener.port}/secret.nwb",
        f"http://localhost:{listener.port}/secret.nwb",
        f"http://2130706433:{listener.port}/secret.nwb",
        f"http://127.0.0.1:{closed_port}/secret.nwb",
    ]
    env = {**KEYS, **NO_LIMITS}
    with (
        running_server(tmp_path / "server", env=env) as server,
        running_runner(
            tmp_path / "runner", server.url, "--job-types", "figpack_nwb_raster_plot"
        ) as runner,
    ):
        async with api_for(server) as api:
            errors = []
            for url in urls:
                status, body = await api.call("POST", "/api/jobs/submit", SUBMIT, raster(url))
                assert status == 201, body
                detail = await finished(api, str(body["job_id"]))
                assert detail["status"] == "failed", (detail, runner.output()[-3000:])
                error = detail["error_message"]
                assert "\n" not in error
                assert error == (
                    f"Invalid parameters: URL not allowed: {url} resolves to a private address"
                )
                assert_public_console_is_clean(detail)
                errors.append(error.replace(str(listener.port), "P").replace(str(closed_port), "P"))
            assert errors[0] == errors[3]  # an open port and a closed one answer alike
    assert listener.requests == []


async def test_with_allow_private_urls_the_runner_reads_loopback_and_keeps_tracebacks_private(
    tmp_path: Path, listener: Listener
) -> None:
    """`--allow-private-urls` lets the runner read a local file; when that fails, the
    public console and the error carry one line, the runner's log the traceback."""
    url = f"http://127.0.0.1:{listener.port}/junk.nwb"
    env = {**KEYS, **NO_LIMITS}
    with running_server(tmp_path / "server", env=env) as server:
        args = ("--job-types", "figpack_nwb_raster_plot", "--allow-private-urls")
        with running_runner(tmp_path / "runner", server.url, *args) as runner:
            async with api_for(server) as api:
                status, body = await api.call("POST", "/api/jobs/submit", SUBMIT, raster(url))
                assert status == 201, body
                detail = await finished(api, str(body["job_id"]))
            await until(lambda: "Traceback" in runner_log(runner), "the traceback in the log")
    assert detail["status"] == "failed", detail
    error = detail["error_message"]
    expected = f"figpack_nwb_raster_plot failed: Cannot open the NWB file at {url}"
    assert error.startswith(expected), error
    assert "\n" not in error
    assert_public_console_is_clean(detail)
    assert detail["console_output"].rstrip().endswith(error), detail["console_output"]
    assert "/junk.nwb" in listener.paths()


def runner_log(runner: Proc) -> str:
    path = runner.log.parent / "runpack_runner.log"
    return path.read_text(errors="replace") if path.exists() else ""


async def test_the_thread_guard_leaves_the_event_loop_alone() -> None:
    """The runner's own connections (its server, often on loopback) resolve on the
    event loop's threads, which are never guarded."""
    with guarded():
        infos = await asyncio.get_running_loop().getaddrinfo("127.0.0.1", free_port())
    assert infos
