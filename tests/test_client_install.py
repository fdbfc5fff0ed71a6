"""``pip install runpack`` without the ``server`` extra gives the Python client and the
client commands, and none of the server's database drivers.

The first tests build a fresh virtualenv and install the package into it (a copy of
this checkout, as a wheel, with its dependencies from the pip cache or the index):
they are slower than the others, about 10 s, hence the ``install`` mark and the
longer timeout.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import KEYS, clean_env, running_runner, running_server

REPO = Path(__file__).resolve().parent.parent
SERVER_PACKAGES = ("aiosqlite", "asyncpg", "prometheus_client")

#: The client's path end to end: the Python client, then the submit and watch commands
#: in the same process; then no database driver may have been imported.
CLIENT_PATH = """
import sys

from runpack.cli import main
from runpack.client import Client

with Client(sys.argv[1], submit_key=sys.argv[2]) as runpack:
    job = runpack.submit("hello_world", {"name": "Ada", "processing_time": 1})
    kinds = {event.type for event in runpack.watch(job.job_id)}
    result = runpack.wait(job.job_id, timeout=30)
assert result["message"] == "Hello, Ada!", result
assert {"progress", "status"} <= kinds, kinds
assert main(["submit", "hello_world", "-p", "name=Bo", "-p", "processing_time=0", "--wait"]) == 0
assert main(["watch", job.job_id]) == 0
drivers = ("aiosqlite", "asyncpg", "prometheus_client")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in drivers)
assert not loaded, loaded
"""


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with ``pip install runpack`` (no extra): its bin folder."""
    root = tmp_path_factory.mktemp("client-install")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("runpack", "runpack_runner"):  # a copy: building leaves files behind
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    install += ["install", "--quiet", "--disable-pip-version-check", str(source)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stderr
    yield venv / "bin"


@pytest.mark.install
@pytest.mark.timeout(180)
def test_the_client_installs_without_the_server(client_venv: Path) -> None:
    python = str(client_venv / "python")
    found = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])",
            *SERVER_PACKAGES,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == "[]"  # no database driver, no Prometheus client
    subprocess.run([python, "-c", "import runpack.client, runpack.terminal"], check=True)

    def runpack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(client_venv / "runpack"), *args],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=30,
            check=False,
        )

    for command in ("submit", "watch"):
        helped = runpack(command, "--help")
        assert helped.returncode == 0, helped.stderr
        assert f"usage: runpack {command}" in helped.stdout
    # The server itself says, in one line, which extra it needs.
    served = runpack("serve", "--port", "1")
    assert served.returncode == 2
    assert served.stderr.splitlines() == [
        "runpack serve: the server's packages are not installed "
        "(aiosqlite, prometheus_client): pip install 'runpack[server]'"
    ]


@pytest.mark.install
@pytest.mark.timeout(180)
@pytest.mark.parametrize("where", ["client install", "full install"])
def test_submit_and_watch_need_no_server_packages(
    where: str, client_venv: Path, tmp_path: Path
) -> None:
    """Against a real server and runner, from the client-only virtualenv and from this
    one, where the drivers are installed but must stay unimported."""
    python = str(client_venv / "python") if where == "client install" else sys.executable
    if where == "full install":
        assert all(importlib.util.find_spec(m) for m in ("aiosqlite", "prometheus_client"))
    with (
        running_server(tmp_path / "server", KEYS) as server,
        running_runner(tmp_path / "runner", server.url, "--job-types", "hello_world"),
    ):
        submit_key = KEYS["RUNPACK_SUBMIT_API_KEY"]
        env = clean_env({"RUNPACK_URL": server.url, "RUNPACK_SUBMIT_API_KEY": submit_key})
        if where == "client install":
            env.pop("PYTHONPATH", None)  # the installed copy, not this checkout
        done = subprocess.run(
            [python, "-c", CLIENT_PATH, server.url, submit_key],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert '"message": "Hello, Bo!"' in done.stdout
