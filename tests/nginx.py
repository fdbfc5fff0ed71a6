"""nginx with the deployment guide's own configuration, in front of real instances.

docs/deployment.md holds two nginx files: ``/etc/nginx/nginx.conf`` and the site,
``/etc/nginx/conf.d/runpack.conf``. :func:`guide_configs` takes them from the page.
The site is used as written except for what a test on loopback must change: the
upstream servers become the instances' loopback ports (surplus lines dropped), the
``listen`` ports become free loopback ports (the IPv6 ones dropped), and the
certificate paths name a self-signed certificate made with ``openssl``. Of
``nginx.conf`` the test keeps every ``worker_*`` line and the ``events`` block; the
file paths (pid, logs, temporary files) move into the test's own prefix, and nginx
runs in the foreground (``daemon off``) as a process the test starts and stops by
its pid, never the system's service.

Debian's ``nginx`` package provides the binary (``.ci/run`` installs it). Without it
a test is skipped with the reason, and fails under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import clean_env, free_port, stop, wait_healthy

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"
MAIN_NAME = "# /etc/nginx/nginx.conf"
SITE_NAME = "# /etc/nginx/conf.d/runpack.conf"
SERVER_NAME = "runpack.example.org"


def nginx_binary() -> str:
    """The nginx binary; skips the test (fails it under CI=true) when there is none."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        message = "nginx is not installed (Debian: apt-get install nginx; .ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true requires it", pytrace=False)
        pytest.skip(message)
    return found


def guide_configs(text: str | None = None) -> tuple[str, str]:
    """(nginx.conf, the site) as docs/deployment.md gives them."""
    text = GUIDE.read_text() if text is None else text
    blocks = re.findall(r"```nginx\n(.*?)```", text, re.S)
    main = [b for b in blocks if b.startswith(MAIN_NAME)]
    site = [b for b in blocks if b.startswith(SITE_NAME)]
    assert len(main) == 1 and len(site) == 1, "docs/deployment.md: one nginx.conf, one site"
    return main[0], site[0]


def _events_block(main: str) -> str:
    match = re.search(r"^events \{\n.*?^\}\n", main, re.S | re.M)
    assert match, "the guide's nginx.conf has no events block"
    return match.group(0)


def loopback_main_conf(main: str, prefix: Path, site: Path) -> str:
    """nginx.conf for the test: the guide's worker lines and events block, paths in
    ``prefix``."""
    workers = [line for line in main.splitlines() if re.match(r"worker_\w+ ", line)]
    temp = {
        name: prefix / name
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # all of them
    }
    for folder in temp.values():
        folder.mkdir(exist_ok=True)
    temp_lines = "\n".join(f"    {name}_temp_path {path};" for name, path in temp.items())
    return f"""daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
{chr(10).join(workers)}

{_events_block(main)}
http {{
    access_log off;
{temp_lines}
    include {site};
}}
"""


def loopback_site(
    site: str, upstreams: list[int], http_port: int, https_port: int, cert: Path, key: Path
) -> str:
    """The guide's site with loopback addresses, ports and the test's certificate."""
    servers = iter(upstreams)
    out = []
    for line in site.splitlines():
        if re.match(r"\s*server 10\.0\.0\.\d+:8080\b", line):
            port = next(servers, None)
            if port is None:
                continue
            line = re.sub(r"10\.0\.0\.\d+:8080", f"127.0.0.1:{port}", line)
        elif re.match(r"\s*listen \[::\]:", line):
            continue
        elif re.match(r"\s*listen 80;", line):
            line = line.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
        elif re.match(r"\s*listen 443 ", line):
            line = line.replace("listen 443 ", f"listen 127.0.0.1:{https_port} ")
        elif re.match(r"\s*ssl_certificate ", line):
            line = re.sub(r"/etc/\S+;", f"{cert};", line)
        elif re.match(r"\s*ssl_certificate_key ", line):
            line = re.sub(r"/etc/\S+;", f"{key};", line)
        out.append(line)
    assert next(servers, None) is None, "the guide's upstream has fewer servers than the test"
    return "\n".join(out) + "\n"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the guide's server name and 127.0.0.1."""
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={SERVER_NAME}",
            "-addext",
            f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@dataclass
class Nginx:
    binary: str
    prefix: Path
    conf: Path
    proc: subprocess.Popen[bytes]
    https_port: int
    http_port: int
    cert: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def workers(self) -> set[int]:
        """The pids of the master's worker processes (old ones still shutting down too)."""
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    found.add(int(entry.name))
        return found

    def reload(self) -> None:
        """``nginx -s reload`` with this instance's configuration (it reads the pid)."""
        cmd = [self.binary, "-p", str(self.prefix), "-c", str(self.conf)]
        cmd += ["-e", str(self.prefix / "error.log"), "-s", "reload"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nginx is not listening on {port}:\n{log.read_text()}")


@contextmanager
def running_nginx(upstreams: list[int]) -> Iterator[Nginx]:
    """nginx with the guide's configuration in front of ``upstreams`` (loopback ports)."""
    binary = nginx_binary()
    # Workers run as another user when the test runs as root: a prefix they may read.
    prefix = Path(tempfile.mkdtemp(prefix="runpack-nginx-"))
    prefix.chmod(0o755)
    try:
        main, site = guide_configs()
        cert, key = self_signed(prefix)
        http_port, https_port = free_port(), free_port()
        site_path = prefix / "runpack.conf"
        site_path.write_text(loopback_site(site, upstreams, http_port, https_port, cert, key))
        conf = prefix / "nginx.conf"
        conf.write_text(loopback_main_conf(main, prefix, site_path))
        log = prefix / "error.log"
        cmd = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(log)]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"nginx -t refused the guide's configuration:\n{check}"
        with (prefix / "stdout.log").open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=out)
        try:
            _wait_listening(https_port, proc, log)
            yield Nginx(binary, prefix, conf, proc, https_port, http_port, cert)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # fast shutdown: every worker goes too
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


# --- instances behind it ------------------------------------------------------------------


@dataclass
class Instance:
    port: int
    cwd: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.cwd / f"server-{self.port}.log"

    def start(self) -> None:
        """``runpack serve`` on this instance's port (the one nginx was told)."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "runpack.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.cwd, env=clean_env(self.env), stdout=out, stderr=out
            )
        wait_healthy(self.url, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def instances(
    tmp: Path, count: int, env: Mapping[str, str], *, start: bool = True
) -> Iterator[list[Instance]]:
    """``count`` instances on free ports (started unless told not to); stopped on exit."""
    made = [Instance(free_port(), tmp / f"instance-{i}", dict(env)) for i in range(count)]
    try:
        if start:
            for instance in made:
                instance.start()
        yield made
    finally:
        for instance in made:
            instance.stop()
