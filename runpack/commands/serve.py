"""``runpack serve``: run the server; with no keys set, on loopback only, with local keys."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runpack.commands.common import add_settings_flags, server_missing, settings_of, store_failure
from runpack.envvars import env_name, unknown_variables
from runpack.errors import StoreError
from runpack.settings import Settings
from runpack_runner.settings import RunnerSettings

KEY_FIELDS = ("submit_api_key", "runner_api_key", "admin_api_key")


def add_to(sub: Any) -> None:
    parser = sub.add_parser("serve", help="Run the server.")
    add_settings_flags(parser)
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_keys(settings: Settings) -> Settings:
    """Development mode: keep or generate the missing keys in DATA_DIR/dev-keys.env."""
    path = Path(settings.data_dir) / "dev-keys.env"
    stored: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            stored[name.strip()] = value.strip()
    values = {}
    for field in KEY_FIELDS:
        values[field] = (
            getattr(settings, field) or stored.get(env_name(field)) or secrets.token_urlsafe(24)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"export {env_name(f)}={values[f]}" for f in KEY_FIELDS]
    lines.append(f"export RUNPACK_URL=http://{settings.host}:{settings.port}")
    lines.append(f"export RUNPACK_WORKER_URL=http://{settings.host}:{settings.port}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return settings.replace(**values)


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one: every runner socket and
    event stream holds a descriptor, and the usual soft limit (1024) is far too low."""
    try:
        import resource
    except ImportError:  # not on this platform: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # e.g. macOS refuses an infinite soft limit
        logging.getLogger(__name__).warning("open files limit stays at %d: %s", soft, exc)


def announcer(log_format: str) -> Callable[[str], None]:
    """How serve tells its addresses (and local keys): lines on stdout for people, or,
    with ``RUNPACK_LOG_FORMAT=json``, log records like every other line it writes."""
    if log_format == "json":
        return logging.getLogger("runpack.serve").info

    def say(line: str) -> None:
        print(line, flush=True)

    return say


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if server_missing("serve"):
        return 2
    from runpack import server
    from runpack.app import create_app
    from runpack.eventloop import loop_factory, tune_gc
    from runpack.logs import setup_logging

    try:
        setup_logging(settings.log_level, settings.log_format)
        new_loop = loop_factory(settings.event_loop)
        for line in unknown_variables(os.environ, Settings, RunnerSettings):
            logging.getLogger("runpack.settings").warning("%s", line)
    except ValueError as exc:
        print(f"runpack: {exc}", file=sys.stderr)
        return 2
    raise_open_files_limit()
    say = announcer(settings.log_format)
    base = f"http://{settings.host}:{settings.port}"
    if (taken := port_taken(settings.host, settings.port)) is not None:
        print(taken, file=sys.stderr)
        return 2
    sign_in = ""
    generated_keys = not settings.has_keys
    if generated_keys:
        if not is_loopback(settings.host):
            print(
                "runpack: refusing to bind a non-loopback address without keys: set "
                "RUNPACK_SUBMIT_API_KEY, RUNPACK_RUNNER_API_KEY and RUNPACK_ADMIN_API_KEY",
                file=sys.stderr,
            )
            return 2
        settings = local_keys(settings)
        keyfile = Path(settings.data_dir) / "dev-keys.env"
        say("Runpack is running in local development mode with these keys:")
        for field in KEY_FIELDS:
            say(f"  {env_name(field)}={getattr(settings, field)}")
        say(f"(saved in {keyfile}; in another shell: source {keyfile})")
        # The keys ride in the fragment: the browser keeps them, no request carries them.
        sign_in = f"#submit_key={settings.submit_api_key}&admin_key={settings.admin_api_key}"
    dashboard = f"{base}/ui/{sign_in}"
    say(f"Dashboard: {dashboard}{'  (signs this browser in)' if sign_in else ''}")
    say(f"API: {base}/api/   OpenAPI: {base}/api/openapi.json   Health: {base}/health")
    try:
        # A setting it cannot use, such as a bad public_url, is a ValueError.
        app = create_app(settings, generated_keys=generated_keys)
    except ValueError as exc:
        print(f"runpack: {exc}", file=sys.stderr)
        return 2
    tune_gc()
    try:
        server.run(
            app,
            host=settings.host,
            port=settings.port,
            header_timeout=settings.header_timeout,
            idle_timeout=settings.idle_timeout,
            shutdown_timeout=5,
            loop=new_loop(),
        )
    except StoreError as exc:
        return store_failure("serve", exc)
    except OSError as exc:  # the port was taken since the check above
        if exc.errno != errno.EADDRINUSE:
            raise
        print(port_taken_message(settings.host, settings.port), file=sys.stderr)
        return 2
    return 0


def port_taken_message(host: str, port: int) -> str:
    return (
        f"runpack serve: {host}:{port} is already in use (another server?); pick another "
        f"port with --port N or RUNPACK_PORT=N (make run: make run PORT=N)"
    )


def port_taken(host: str, port: int) -> str | None:
    """A one-line error if ``host:port`` cannot be bound because it is in use, before
    anything is printed or opened (the server binds it again, as it always did)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None  # the server says what is wrong with the host
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return port_taken_message(host, port)
    return None
