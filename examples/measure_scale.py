"""How request times grow with stored jobs: fill a database with finished jobs, start a
server on it, and time the calls an operator and a dashboard make.

    python examples/measure_scale.py --jobs 1000000 --db /tmp/scale.db
    python examples/measure_scale.py --jobs 1000000 --db postgresql://postgres@127.0.0.1:5432/scale

The database must be new (a file that does not exist, or an empty PostgreSQL
database). Prints one JSON object: the median milliseconds of each call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from runpack.store import queries
from runpack.store.migrations import apply_postgres, apply_sqlite

KEYS = {
    "RUNPACK_SUBMIT_API_KEY": "scale-submit",
    "RUNPACK_RUNNER_API_KEY": "scale-runner",
    "RUNPACK_ADMIN_API_KEY": "scale-admin",
    "RUNPACK_RATE_NEW_JOBS": "0",
    "RUNPACK_RATE_KEY_NEW_JOBS": "0",
    "RUNPACK_RATE_REQUESTS": "0",
}
ADMIN = {"Authorization": "Bearer scale-admin"}
SUBMIT = {"Authorization": "Bearer scale-submit"}
T0 = 1_700_000_000_000
# n finished jobs (one in ten failed, the rest completed), one millisecond apart.
FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {jobs})
INSERT INTO jobs (id, job_hash, job_type, input_params, status, attempts, created_at,
                  updated_at, claimed_by, output_data, error_message)
SELECT 'job-' || i, 'hash-' || i, 'hello_world', '{{"name":"Ada"}}',
       CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'completed' END, 1, {t0} + i, {t0} + i,
       'runner', '{{"ok":true}}', CASE WHEN i % 10 = 0 THEN 'boom' END
FROM n
"""


async def fill(db: str, jobs: int) -> None:
    sql = FILL.format(jobs=jobs, t0=T0)
    if db.startswith(("postgres://", "postgresql://")):
        import asyncpg

        conn = await asyncpg.connect(db)
        try:
            await apply_postgres(conn)
            await conn.execute(sql)
            if await conn.fetchval("SELECT to_regclass('job_count_deltas') IS NOT NULL"):
                await conn.execute(queries.FOLD_JOB_COUNTS_PG)  # as the sweeper's next pass
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()
        return
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        apply_sqlite(conn)
        conn.execute("BEGIN")
        conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")


async def median_ms(call: Callable[[int], Awaitable[None]], times: int) -> float:
    await call(-1)  # warm
    spent = []
    for i in range(times):
        start = time.perf_counter()
        await call(i)
        spent.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(spent), 2)


async def measure(url: str, jobs: int, times: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(url) as http:

        async def get(path: str, headers: dict[str, str] = ADMIN) -> Any:
            async with http.get(path, headers=headers) as resp:
                assert resp.status == 200, (path, resp.status, await resp.text())
                return await resp.json() if resp.content_type == "application/json" else None

        async def submit(name: str) -> None:
            body = {"job_type": "hello_world", "input_params": {"name": name}}
            async with http.post("/api/jobs/submit", json=body, headers=SUBMIT) as resp:
                assert resp.status in (200, 201), await resp.text()

        run = uuid.uuid4().hex
        depth = jobs // 2
        result: dict[str, Any] = {"jobs": jobs}
        result["stats_ms"] = await median_ms(lambda i: get("/api/admin/stats"), times)
        result["list_first_page_ms"] = await median_ms(
            lambda i: get("/api/admin/jobs?limit=100"), times
        )
        result["list_offset_half_ms"] = await median_ms(
            lambda i: get(f"/api/admin/jobs?limit=100&offset={depth}"), max(3, times // 4)
        )
        marker = await get(f"/api/admin/jobs?limit=1&offset={depth - 1}")
        if "next" in marker:  # servers with keyset paging
            page = f"/api/admin/jobs?limit=100&after={marker['next']}"
            result["list_cursor_half_ms"] = await median_ms(lambda i: get(page), times)
        result["submit_ms"] = await median_ms(lambda i: submit(f"{run}-{i}"), times)
        result["cache_hit_ms"] = await median_ms(lambda i: submit(f"{run}-0"), times)
        result["metrics_ms"] = await median_ms(lambda i: get("/metrics"), times)
        return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as probe:
        for _ in range(300):
            try:
                async with probe.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"no server at {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--db", required=True, help="a new SQLite path or an empty database")
    parser.add_argument("--times", type=int, default=40, help="calls timed per figure")
    args = parser.parse_args()
    started = time.perf_counter()
    asyncio.run(fill(args.db, args.jobs))
    fill_s = round(time.perf_counter() - started, 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="runpack-scale-") as data:
        cmd = [sys.executable, "-m", "runpack.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--db", args.db, "--data-dir", data]
        quiet = subprocess.DEVNULL
        server = subprocess.Popen(cmd, env={**os.environ, **KEYS}, stdout=quiet, stderr=quiet)
        try:
            asyncio.run(wait_ready(url))
            result = asyncio.run(measure(url, args.jobs, args.times))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps({**result, "fill_s": fill_s}))


if __name__ == "__main__":
    main()
