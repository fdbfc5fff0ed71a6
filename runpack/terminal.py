"""``runpack submit/watch/status/cancel/jobs/runners``: the server, seen from a terminal.

cli.py parses the command line and reads the environment; this module talks to
the server through :mod:`runpack.client` and prints. Following a job shows a live
progress bar and the last console lines on a terminal, and one line per change
otherwise (pipes, logs, CI): :mod:`runpack.following` draws those. Progress and
messages go to stderr; the result (JSON) and the tables go to stdout, so
``runpack submit … --wait > result.json`` keeps only the result.

Exit status: 0 success; 1 the job failed or was cancelled, or the server refused
(say, a job that can no longer be cancelled); 2 bad usage, a missing or wrong
key, an unknown job, a rate limit (429: nothing was created; ``--retry`` waits it
out), or no server to talk to; 124 ``--timeout`` ran out before the job ended (it
goes on); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from runpack.client import (
    AsyncClient,
    RateLimitedError,
    RunpackClientError,
    RunpackConnectionError,
)
from runpack.following import STATUS_STYLE, JobView, Renderer, follow_queue

DEFAULT_URL = "http://127.0.0.1:8080"
KEYFILE_HINT = "make run saved it in runpack-data/dev-keys.env"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: ``--timeout`` ran out while following a job (as coreutils' ``timeout``).
EXIT_TIMEOUT = 124


class UsageError(Exception):
    """A command that cannot run as given (the message says what to do)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the server is and the keys to use (from flags and the environment)."""

    url: str
    submit_key: str | None = None
    admin_key: str | None = None
    #: Wait out rate limits and try again (``--retry``) instead of stopping.
    retry_on_limit: bool = False

    def client(self, *, need: str | None = None) -> AsyncClient:
        """A client; ``need`` ("submit" or "admin") names a key that must be set."""
        if need == "submit" and not self.submit_key:
            raise UsageError(f"set RUNPACK_SUBMIT_API_KEY ({KEYFILE_HINT})")
        if need == "admin" and not self.admin_key:
            raise UsageError(f"set RUNPACK_ADMIN_API_KEY ({KEYFILE_HINT})")
        return AsyncClient(
            self.url, self.submit_key, self.admin_key, retry_on_limit=self.retry_on_limit
        )


def parse_params(pairs: list[str], json_params: str | None = None) -> dict[str, Any]:
    """``--json-params`` (an object), then each ``-p key=value`` on top of it.

    A value is JSON when it parses as JSON (``3`` is a number, ``true`` a boolean,
    ``[1,2]`` a list), else the text as it is (``Ada``).
    """
    params: dict[str, Any] = {}
    if json_params:
        try:
            loaded = json.loads(json_params)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--json-params is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError("--json-params must be a JSON object")
        params.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"-p takes key=value, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def parse_input_files(pairs: Sequence[str]) -> dict[str, str]:
    """``--input PATH=FILE`` pairs: each local FILE by its path under /inputs."""
    files: dict[str, str] = {}
    for pair in pairs:
        path, sep, file = pair.partition("=")
        if not sep or not path or not file:
            raise UsageError(f"--input takes PATH=FILE, got {pair!r}")
        if not os.path.isfile(file):
            raise UsageError(f"--input {path}={file}: no such file")
        files[path] = file
    return files


def consoles() -> tuple[Console, Console]:
    """stdout and stderr; when not a terminal, wide enough that nothing wraps."""
    out, err = Console(), Console(stderr=True)
    for console in (out, err):
        if not console.is_terminal:
            console.width = max(console.width, 200)
    return out, err


def run(command: Coroutine[Any, Any, int], err: Console) -> int:
    """Run one command to its exit status, reporting errors as one clear line."""
    try:
        return asyncio.run(command)
    except UsageError as exc:
        err.print(f"runpack: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    except RunpackConnectionError as exc:
        err.print(f"runpack: {exc} — is the server running? (make run)", markup=False)
        return EXIT_USAGE
    except RateLimitedError as exc:
        err.print(
            f"runpack: the server refused: {exc.error} ({exc.details or 'no details'}). "
            f"Try again in {exc.retry_after:g} s, or pass --retry to wait for it.",
            markup=False,
            highlight=False,
        )
        return EXIT_USAGE
    except RunpackClientError as exc:
        err.print(f"runpack: the server answered {exc}", markup=False, highlight=False)
        return EXIT_USAGE if exc.status in (400, 401, 403, 404) else EXIT_FAILED
    except KeyboardInterrupt:
        err.print("runpack: interrupted (the job goes on on the server)")
        return EXIT_INTERRUPTED


# --- following one job ---------------------------------------------------------------------


async def follow(
    client: AsyncClient,
    job_id: str,
    out: Console,
    err: Console,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 (the --timeout flag)
    quiet: bool = False,
) -> int:
    """Show a job live until it ends, or ``timeout`` seconds pass; print its result
    (with ``quiet``, nothing on stdout). The exit status."""
    view = JobView(job_id)
    try:
        async with asyncio.timeout(timeout):
            with Renderer(err, view) as renderer:
                queue = asyncio.create_task(follow_queue(client, renderer), name="runpack-queue")
                try:
                    async for event in client.watch(job_id):
                        renderer.show(event)
                finally:
                    queue.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await queue
    except TimeoutError:
        if view.final is not None:  # it ended as time ran out
            raise
        err.print(
            f"runpack: gave up waiting after {timeout:g} s; job {job_id} goes on "
            f"(runpack watch {job_id})",
            markup=False,
            highlight=False,
        )
        return EXIT_TIMEOUT
    final = view.final
    assert final is not None  # watch() ends only after a final status
    if final.status == "completed":
        if not quiet:
            print_json(out, final.output_data or {})
        return EXIT_OK
    err.print(
        f"job {job_id} {final.status}: {final.error or 'no result'}",
        style="red",
        markup=False,
        highlight=False,
    )
    return EXIT_FAILED


def print_json(out: Console, value: Any) -> None:
    """JSON for programs: never wrapped or cropped to the console's width."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    out.print(text, markup=False, highlight=False, soft_wrap=True)


# --- the commands ------------------------------------------------------------------------------


async def submit(
    target: Target,
    job_type: str,
    pairs: list[str],
    json_params: str | None,
    *,
    wait: bool,
    force: bool,
    priority: int,
    out: Console,
    err: Console,
    timeout: float | None = None,  # noqa: ASYNC109 (the --timeout flag)
    id_only: bool = False,
    input_files: Sequence[str] = (),
) -> int:
    """``runpack submit TYPE -p key=value … [--json-params JSON] [--input PATH=FILE …]
    [--wait [--timeout S]] [-q]``; ``id_only`` prints the job's id alone (with ``wait``,
    the exit status tells how it ended)."""
    params = parse_params(pairs, json_params)
    files = parse_input_files(input_files)
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be a number of seconds above 0, got {timeout:g}")
    async with target.client(need="submit") as client:
        if files:
            inputs = params.get("inputs", {})
            if not isinstance(inputs, dict):
                raise UsageError("--input adds to the parameter 'inputs', which is not an object")
            for path, file in files.items():
                inputs[path] = {"upload": await client.upload_input(file)}
                err.print(
                    f"Uploaded {file} as {path} (sha256 {inputs[path]['upload']})",
                    markup=False,
                    highlight=False,
                )
            params["inputs"] = inputs
        result = await client.submit(job_type, params, force=force, priority=priority)
        if id_only:
            out.print(result.job_id, markup=False, highlight=False, soft_wrap=True)
        if not wait and id_only:
            return EXIT_OK
        if not wait:
            reply: dict[str, Any] = {
                "job_id": result.job_id,
                "status": result.status,
                "message": result.message,
            }
            if result.result is not None:
                reply["result"] = result.result
            if result.error is not None:
                reply["error"] = result.error
            print_json(out, reply)
            return EXIT_OK
        err.print(f"{result.message}: {result.job_id}", markup=False, highlight=False)
        return await follow(client, result.job_id, out, err, timeout=timeout, quiet=id_only)


async def watch(
    target: Target,
    job_id: str,
    *,
    out: Console,
    err: Console,
    timeout: float | None = None,  # noqa: ASYNC109 (the --timeout flag)
) -> int:
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be a number of seconds above 0, got {timeout:g}")
    async with target.client() as client:
        return await follow(client, job_id, out, err, timeout=timeout)


async def status(target: Target, job_id: str, *, as_json: bool, out: Console) -> int:
    async with target.client() as client:
        job = await client.details(job_id)
    if as_json:
        print_json(out, job)
        return EXIT_OK
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    state = job["status"]
    table.add_row("job", job["job_id"])
    table.add_row("type", job["job_type"])
    table.add_row("status", Text(state, style=STATUS_STYLE.get(state, "")))
    progress = job.get("progress")
    if progress:
        table.add_row("progress", f"{progress['current']}/{progress['total']}")
    table.add_row("params", compact(job.get("input_params")))
    if job.get("claimed_by"):
        name = job.get("runner_name")
        table.add_row("runner", f"{name} ({job['claimed_by']})" if name else job["claimed_by"])
    queue = job.get("queue")
    if isinstance(queue, dict) and queue.get("message"):
        table.add_row("queue", str(queue["message"]))
    table.add_row("attempts", f"{job.get('attempts', 0)} of {job.get('max_attempts', '?')}")
    table.add_row("created", when(job.get("created_at")))
    table.add_row("updated", when(job.get("updated_at")))
    if "output_data" in job:
        table.add_row("result", compact(job["output_data"]))
    if job.get("error_message"):
        table.add_row("error", Text(job["error_message"], style="red"))
    console = str(job.get("console_output") or "").rstrip("\n")
    if console:
        table.add_row("console", Text("\n".join(console.split("\n")[-5:]), style="dim"))
    out.print(table)
    return EXIT_OK


async def cancel(target: Target, job_id: str, *, out: Console) -> int:
    async with target.client(need="submit") as client:
        result = await client.cancel(job_id)
    out.print(f"{result.message}: {result.job_id} is {result.status}", markup=False)
    return EXIT_OK


async def jobs(
    target: Target,
    *,
    status: str | None,
    job_type: str | None,
    limit: int,
    as_json: bool,
    out: Console,
) -> int:
    async with target.client(need="admin") as client:
        rows = await client.jobs(status=status, job_type=job_type, limit=limit)
    if as_json:
        print_json(out, [_as_dict(row) for row in rows])
        return EXIT_OK
    table = Table()
    for name in ("job id", "type", "status", "created", "updated", "runner"):
        table.add_column(name, no_wrap=name == "job id")
    for row in rows:
        table.add_row(
            row.job_id,
            row.job_type,
            Text(row.status, style=STATUS_STYLE.get(row.status, "")),
            when(row.created_at),
            when(row.updated_at),
            row.runner_name or row.claimed_by or "",
        )
    out.print(table)
    out.print(f"{plural(len(rows), 'job')}, newest first", markup=False, highlight=False)
    return EXIT_OK


async def runners(target: Target, *, as_json: bool, out: Console) -> int:
    async with target.client(need="admin") as client:
        rows = await client.runners()
    if as_json:
        print_json(out, [_as_dict(row) for row in rows])
        return EXIT_OK
    table = Table()
    for name in ("runner id", "name", "job types", "connected", "active", "last seen", "jobs"):
        table.add_column(name, no_wrap=name == "runner id")
    for row in rows:
        current = row.live.get("current_jobs") or []
        slots = row.live.get("concurrency")
        versions = dict(row.live.get("versions") or {})  # its handlers' versions, by job type
        if "images" in row.live:  # the images it allows container jobs, if it sent a list
            images = f"({plural(len(row.live['images']), 'image')})"
            versions["container"] = f"{versions.get('container', '')} {images}".lstrip()
        table.add_row(
            row.runner_id,
            row.name,
            ", ".join(f"{t} {versions[t]}" if t in versions else t for t in row.capabilities),
            Text("yes", style="green") if row.connected else Text("no", style="dim"),
            "yes" if row.is_active else "no",
            when(row.last_seen),
            f"{len(current)}/{slots}" if slots else "",
        )
    out.print(table)
    out.print(plural(len(rows), "runner"), markup=False, highlight=False)
    return EXIT_OK


def _as_dict(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__dataclass_fields__}


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def when(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return ""
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
