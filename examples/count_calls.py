"""Python calls the server makes per job: counted, not timed, so the machine's load does
not move the figure. Runs ``runpack bench --url`` against a server started under
cProfile, twice, with a small and a large number of jobs, each on a new SQLite file
with one runner; the difference of the two counts over the difference of the jobs
is the calls per job under load (what starting, warming up and stopping cost cancels).

    python examples/count_calls.py                 # 1000 and 5000 jobs
    python examples/count_calls.py --top 25        # and the functions called most per job

Prints one JSON object: the calls per job of Python functions, and of all functions
(built-ins too); with ``--top N``, of the N functions called most, with ``--match
TEXT``, of those whose file or name has TEXT. Python puts the current folder first
on the path: to count another version of the server (``git archive <commit> runpack |
tar -x -C /tmp/v``), run this from the folder that holds its ``runpack``.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from runpack.bench import SERVER_SETTINGS, free_port

KEYS = {
    "RUNPACK_SUBMIT_API_KEY": "count-submit",
    "RUNPACK_RUNNER_API_KEY": "count-runner",
    "RUNPACK_ADMIN_API_KEY": "count-admin",
}


def profiled_run(jobs: int, folder: Path) -> pstats.Stats:
    """A server under cProfile and one runner; ``runpack bench --url`` with ``jobs``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RUNPACK_")} | KEYS
    profile = folder / f"server-{jobs}.prof"
    server_env = base | SERVER_SETTINGS | {"RUNPACK_DB": str(folder / f"bench-{jobs}.db")}
    profiled = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "runpack.cli"]
    where = ["--host", "127.0.0.1", "--port", str(port), "--data-dir", str(folder / "data")]
    server = subprocess.Popen(
        [*profiled, "serve", *where],
        env=server_env,
        stdout=sys.stderr,
    )
    runner: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        runner_dir = folder / f"runner-{jobs}"
        runner_dir.mkdir()
        runner_env = base | {"RUNPACK_WORKER_URL": url, "RUNPACK_LOG_LEVEL": "warning"}
        runner = subprocess.Popen(
            [sys.executable, "-m", "runpack_runner.cli", "--job-types", "noop"],
            env=runner_env,
            cwd=runner_dir,
            stdout=sys.stderr,
        )
        bench = [sys.executable, "-m", "runpack.cli", "bench", "--url", url, "--json"]
        subprocess.run([*bench, "--jobs", str(jobs)], env=base, check=True, stdout=sys.stderr)
    finally:
        for proc in (runner, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    return pstats.Stats(str(profile))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1000, help="Jobs of the first run.")
    parser.add_argument("--large", type=int, default=5000, help="Jobs of the second run.")
    parser.add_argument("--top", type=int, default=0, help="List the functions called most.")
    parser.add_argument("--match", default="", help="List the functions whose name has this.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runpack-count-") as tmp:
        small = profiled_run(args.small, Path(tmp))
        large = profiled_run(args.large, Path(tmp))
    jobs = args.large - args.small
    # Stats.stats: (file, line, name) -> (primitive calls, calls, times, callers).
    before = {f: s[1] for f, s in small.stats.items()}  # type: ignore[attr-defined]
    per_job = {
        f"{Path(f[0]).name}:{f[1]}({f[2]})": (s[1] - before.get(f, 0)) / jobs
        for f, s in large.stats.items()  # type: ignore[attr-defined]
    }
    out: dict[str, Any] = {
        # Calls of Python functions, and with them those of built-in ones (len, dict.get…).
        "python_calls_per_job": round(
            sum(n for name, n in per_job.items() if not name.startswith("~")), 1
        ),
        "all_calls_per_job": round(sum(per_job.values()), 1),
    }
    if args.top:
        most = sorted(per_job.items(), key=lambda item: -item[1])[: args.top]
        out["top"] = {name: round(n, 2) for name, n in most}
    if args.match:
        found = sorted((name, n) for name, n in per_job.items() if args.match in name and n)
        out["matching"] = {name: round(n, 2) for name, n in found}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
