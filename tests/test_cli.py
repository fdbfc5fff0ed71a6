"""The ``runpack`` command, run as a real process on a real loopback port."""

from __future__ import annotations

import ast
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runpack.settings import describe
from runpack.store.migrations import migrations
from tests.procs import free_port

REPO = Path(__file__).resolve().parent.parent
KEY_VARS = ("RUNPACK_SUBMIT_API_KEY", "RUNPACK_RUNNER_API_KEY", "RUNPACK_ADMIN_API_KEY")
STARTUP_TIMEOUT = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any RUNPACK_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPACK_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runpack.cli", *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_ready(self) -> None:
        """Poll /health until it answers, the process dies, or time runs out."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}: {self.stderr}")
            try:
                status, body = http("GET", self.base + "/health")
            except OSError:
                time.sleep(0.05)
                continue
            assert status == 200
            assert body == {"status": "ok", "service": "runpack-worker"}
            return
        pytest.fail(f"server not ready after {STARTUP_TIMEOUT} s: {self.stderr}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """Started servers, each terminated (by its Popen object) at teardown."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def start(
    servers: list[Server], cwd: Path, args: list[str], env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    n = len(servers)
    out, err = cwd / f"server{n}.out", cwd / f"server{n}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runpack.cli", "serve", "--port", str(port), *args],
            cwd=cwd,
            env=env if env is not None else clean_env(),
            stdout=stdout,
            stderr=stderr,
        )
    server = Server(proc, port, out, err)
    servers.append(server)
    server.wait_ready()
    return server


def printed_keys(stdout: str) -> dict[str, str]:
    keys = {}
    for line in stdout.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name in KEY_VARS:
            keys[name] = value
    return keys


def submit(server: Server, key: str, name: str = "Ada") -> tuple[int, Any]:
    return http(
        "POST",
        server.base + "/api/jobs/submit",
        {"job_type": "hello_world", "input_params": {"name": name}},
        {"Authorization": f"Bearer {key}"},
    )


# --- serve ---------------------------------------------------------------------------------


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    result = run_cli(["serve", "--host", "0.0.0.0", "--port", str(port)], tmp_path, timeout=20)
    assert result.returncode != 0
    assert time.monotonic() - started < 15
    assert "refusing" in result.stderr and "without keys" in result.stderr
    for var in KEY_VARS:
        assert var in result.stderr
    assert "Dashboard" not in result.stdout
    # Nothing was created and nothing listens on the port.
    assert not (tmp_path / "runpack-data").exists()
    assert not (tmp_path / "runpack.db").exists()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_serve_on_a_taken_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["serve", "--port", str(port)], tmp_path, timeout=20)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"runpack serve: 127.0.0.1:{port} is already in use (another server?); pick another "
        "port with --port N or RUNPACK_PORT=N (make run: make run PORT=N)"
    ]
    assert result.stdout == ""  # no keys, no dashboard link for a server that is not there
    assert not (tmp_path / "runpack-data").exists()


def test_serve_names_a_setting_it_cannot_use_in_one_line(tmp_path: Path) -> None:
    env = {**clean_env(), "RUNPACK_HASH_IGNORED_PARAMS": "figpack_nwb_"}
    result = run_cli(["serve", "--port", str(free_port())], tmp_path, env=env, timeout=20)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "runpack: hash_ignored_params: 'figpack_nwb_' is not JOB_TYPE=NAME,NAME "
        "(a job type, or a prefix ending in *)"
    ]


def test_serve_on_loopback_generates_and_keeps_local_keys(
    tmp_path: Path, servers: list[Server]
) -> None:
    server = start(servers, tmp_path, ["--host", "127.0.0.1"])
    keys = printed_keys(server.stdout)
    assert set(keys) == set(KEY_VARS)
    assert len(set(keys.values())) == 3 and all(len(k) >= 16 for k in keys.values())
    assert f"http://127.0.0.1:{server.port}/ui/" in server.stdout
    # The dashboard link signs a browser in with the keys in its fragment.
    link = (
        f"http://127.0.0.1:{server.port}/ui/#submit_key={keys['RUNPACK_SUBMIT_API_KEY']}"
        f"&admin_key={keys['RUNPACK_ADMIN_API_KEY']}"
    )
    assert f"Dashboard: {link}" in server.stdout
    assert f"OpenAPI: http://127.0.0.1:{server.port}/api/openapi.json" in server.stdout
    keyfile = tmp_path / "runpack-data" / "dev-keys.env"
    assert keyfile.exists()
    assert keyfile.stat().st_mode & 0o077 == 0  # readable by the owner only
    saved = keyfile.read_text()
    for var, key in keys.items():
        assert f"export {var}={key}\n" in saved
    # The printed submit key works, and only for submitting.
    status, body = submit(server, keys["RUNPACK_SUBMIT_API_KEY"])
    assert status == 201, body
    assert body["status"] == "pending"
    status, _ = submit(server, keys["RUNPACK_RUNNER_API_KEY"])
    assert status == 401
    # Keys never reach the log.
    for key in keys.values():
        assert key not in server.stderr

    server.stop()
    again = start(servers, tmp_path, ["--host", "127.0.0.1"])
    assert printed_keys(again.stdout) == keys
    # Same database too: the job submitted before the restart is found again.
    status, body2 = submit(again, keys["RUNPACK_SUBMIT_API_KEY"])
    assert status == 200
    assert body2["job_id"] == body["job_id"]


def test_serve_names_variables_it_does_not_read(tmp_path: Path, servers: list[Server]) -> None:
    env = clean_env(RUNPACK_RATE_SUBMIT="0", RUNPACK_HEARTBEAT_TIMOUT="5", RUNPACK_URL="x")
    server = start(servers, tmp_path, ["--host", "127.0.0.1"], env=env)
    server.stop()
    assert (
        "RUNPACK_RATE_SUBMIT is no longer read: use RUNPACK_RATE_NEW_JOBS (new jobs) "
        "and RUNPACK_RATE_REQUESTS" in server.stderr
    )
    assert "RUNPACK_HEARTBEAT_TIMOUT is not a setting" in server.stderr
    assert "RUNPACK_URL" not in server.stderr  # the client's, known


def test_serve_uses_keys_from_the_environment(tmp_path: Path, servers: list[Server]) -> None:
    env_keys = {var: f"env-{var.lower()}-0123456789" for var in KEY_VARS}
    server = start(servers, tmp_path, ["--host", "127.0.0.1"], env=clean_env(**env_keys))
    for key in env_keys.values():
        assert key not in server.stdout
        assert key not in server.stderr
    assert printed_keys(server.stdout) == {}
    assert "Dashboard" in server.stdout
    assert not (tmp_path / "runpack-data" / "dev-keys.env").exists()
    status, body = submit(server, env_keys["RUNPACK_SUBMIT_API_KEY"])
    assert status == 201, body
    status, body = http(
        "GET",
        server.base + "/api/admin/stats",
        headers={"Authorization": f"Bearer {env_keys['RUNPACK_ADMIN_API_KEY']}"},
    )
    assert status == 200
    assert body["jobs"]["total"] == 1


def test_serve_db_flag_places_the_database(tmp_path: Path, servers: list[Server]) -> None:
    db = tmp_path / "elsewhere" / "jobs.sqlite"
    db.parent.mkdir()
    server = start(servers, tmp_path, ["--host", "127.0.0.1", "--db", str(db)])
    key = printed_keys(server.stdout)["RUNPACK_SUBMIT_API_KEY"]
    status, body = submit(server, key)
    assert status == 201
    assert not (tmp_path / "runpack.db").exists()
    server.stop()
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT id, job_type FROM jobs").fetchall()
    assert rows == [(body["job_id"], "hello_world")]


@pytest.mark.parametrize(
    ("var", "value"),
    [("RUNPACK_PORT", "abc"), ("RUNPACK_RATE_WINDOW", "soon"), ("RUNPACK_TRUST_PROXY", "maybe")],
)
def test_invalid_setting_in_the_environment(tmp_path: Path, var: str, value: str) -> None:
    result = run_cli(["serve", "--host", "127.0.0.1"], tmp_path, clean_env(**{var: value}))
    assert result.returncode != 0
    assert var in result.stderr
    assert repr(value) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runpack-data").exists()


# --- settings, migrate -------------------------------------------------------------------------


def test_settings_lists_every_variable(tmp_path: Path) -> None:
    result = run_cli(["settings"], tmp_path)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert listed == [spec["env"] for spec in describe()]
    for spec in describe():
        line = next(x for x in result.stdout.splitlines() if x.startswith(spec["env"] + " "))
        assert spec["help"] in line
        if not spec["secret"]:
            assert spec["flag"] in line


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    # `runpack settings | head -1` once head has gone: a pipe with no reader left.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "runpack.cli", "settings"],
            cwd=tmp_path,
            stdout=writer,
            stderr=subprocess.PIPE,
            timeout=30,
            check=False,
        )
    finally:
        os.close(writer)
    assert result.returncode == 141, result.stderr
    assert b"Traceback" not in result.stderr and b"BrokenPipe" not in result.stderr


def _help_of(text: str, flag: str) -> str:
    """The help text of ``flag`` in ``--help`` output, on one line."""
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.strip().startswith((flag + " ", flag + ",")))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if line.startswith("  -") or not line.strip():  # the next option, or the end
            break
        block.append(line)
    return " ".join(" ".join(block).split())


@pytest.mark.parametrize(
    ("command", "specs"),
    [(["serve", "--help"], "server"), (["runner", "--help"], "runner")],
)
def test_help_shows_each_default_and_variable(
    tmp_path: Path, command: list[str], specs: str
) -> None:
    from runpack.envvars import shown_default
    from runpack_runner.settings import describe as runner_describe

    result = run_cli(command, tmp_path)
    assert result.returncode == 0, result.stderr
    for spec in describe() if specs == "server" else runner_describe():
        if spec["secret"]:
            continue
        text = _help_of(result.stdout, spec["flag"])
        assert spec["env"] in text, text
        if "(default:" not in spec["help"]:
            assert f"default: {shown_default(spec)};" in text, text


def test_bench_help_describes_it_with_defaults(tmp_path: Path) -> None:
    result = run_cli(["bench", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "jobs/s" in result.stdout.split("options:")[0]  # a description
    assert "default: 2000" in _help_of(result.stdout, "--jobs")
    assert "default: 16" in _help_of(result.stdout, "--runner-concurrency")


def test_settings_never_prints_keys(tmp_path: Path) -> None:
    env = clean_env(**{var: f"very-secret-{n}" for n, var in enumerate(KEY_VARS)})
    result = run_cli(["settings"], tmp_path, env)
    assert result.returncode == 0
    assert "very-secret" not in result.stdout


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "migrated.db"
    result = run_cli(["migrate", "--db", str(db)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert db.exists()
    with closing(sqlite3.connect(db)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
        job_count = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    assert {"schema_version", "jobs", "runners"} <= tables
    assert sorted(versions) == [1, *(v for v, _, _ in migrations())]  # the newest schema
    assert job_count == 0
    # Running it again is harmless.
    result = run_cli(["migrate", "--db", str(db)], tmp_path)
    assert result.returncode == 0, result.stderr
    with closing(sqlite3.connect(db)) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version")] == versions


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_database_that_cannot_be_opened_is_one_clear_line(tmp_path: Path, command: str) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("these are notes, not a database\n" * 100)
    blocked = tmp_path / "a-file" / "runpack.db"  # its folder cannot be made: a file is there
    (tmp_path / "a-file").write_text("")
    for db, says in ((not_a_db, "file is not a database"), (blocked, "cannot create the folder")):
        args = [command, "--db", str(db)]
        if command == "serve":
            args += ["--port", str(free_port())]
        result = run_cli(args, tmp_path, timeout=20)
        assert result.returncode == 1
        assert result.stderr.startswith(f"runpack {command}: "), result.stderr
        assert says in result.stderr and str(db) in result.stderr
        assert "Traceback" not in result.stderr
    assert not_a_db.read_text().startswith("these are notes")  # untouched


# --- the commands package ----------------------------------------------------------------------


def test_library_modules_do_not_load_the_commands(tmp_path: Path) -> None:
    """No import cycle: the library modules that have a command (keys, gc, backup, bench)
    never load the command line back."""
    code = (
        "import sys, runpack.keys, runpack.retention, runpack.backup, runpack.bench\n"
        "loaded = [m for m in sys.modules if m == 'runpack.cli' or m == 'runpack.commands'\n"
        "          or m.startswith('runpack.commands.')]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # Nor later, from inside a function: only the command line imports the commands.
    for path in [*(REPO / "runpack").rglob("*.py"), *(REPO / "runpack_runner").rglob("*.py")]:
        where = path.relative_to(REPO).as_posix()
        if where == "runpack/cli.py" or where.startswith("runpack/commands/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            wrong = [n for n in names if n in ("runpack.cli", "runpack.commands")]
            wrong += [n for n in names if n.startswith("runpack.commands.")]
            assert not wrong, f"{where} imports {wrong}"


def test_settings_from_args_reads_flags_over_the_environment() -> None:
    import argparse

    from runpack.commands import build_parser
    from runpack.settings import Settings

    args = build_parser().parse_args(["serve", "--port", "9000", "--db", "flag.db"])
    environ = {"RUNPACK_PORT": "8000", "RUNPACK_DB": "env.db", "RUNPACK_SWEEP_INTERVAL": "7"}
    settings = Settings.from_args(args, environ)
    assert (settings.port, settings.db, settings.sweep_interval) == (9000, "flag.db", 7.0)
    # Arguments that name no setting (the subcommand, --json, ...) are left out.
    settings = Settings.from_args(argparse.Namespace(db=None, json=True), environ)
    assert (settings.port, settings.db) == (8000, "env.db")
    with pytest.raises(ValueError, match="RUNPACK_PORT"):
        Settings.from_args(argparse.Namespace(), {"RUNPACK_PORT": "abc"})
