"""``runpack bench`` as docs/performance.md runs it: real processes on loopback, small counts.

Figures are not asserted (a benchmark is not a timed test); what is asserted is
that every job ran, and that every figure the issue asks for is reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.procs import KEYS, NO_LIMITS, clean_env, running_runner, running_server

SMALL = ["--jobs", "60", "--latency-jobs", "5", "--warmup", "2", "--cache-hits", "60"]
SMALL += ["--concurrency", "4"]


def run_bench(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runpack.cli", "bench", *SMALL, *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def bench(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_bench(["--json", *args], cwd, env)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def assert_complete_report(report: dict[str, Any]) -> None:
    assert report["jobs"] == report["completed"] == 60
    assert (report["latency_jobs"], report["warmup_jobs"]) == (5, 2)
    assert report["jobs_per_s"] > 0 and report["cache_hits_per_s"] > 0
    for name in ("submit_to_start_ms", "submit_to_completed_ms"):
        p = report[name]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"]
    assert report["submit_to_start_ms"]["p50"] <= report["submit_to_completed_ms"]["p50"]


def test_bench_starts_its_own_server_and_runner(tmp_path: Path) -> None:
    report = bench(["--runner-concurrency", "4"], tmp_path)
    assert_complete_report(report)
    assert report["db"] == "sqlite"
    assert report["server_rss_mb"] > 0 and report["runner_rss_mb"] > 0
    # Measured, though 60 jobs may take less than one clock tick (10 ms) of a runner's CPU.
    assert report["server_cpu_ms_per_job"] >= 0 and report["runner_cpu_ms_per_job"] >= 0


def test_bench_targets_a_running_server(tmp_path: Path) -> None:
    env = {
        **KEYS,
        **NO_LIMITS,
    }
    with (
        running_server(tmp_path / "server", env) as server,
        running_runner(
            tmp_path / "runner", server.url, "--job-types", "noop", "--concurrency", "4"
        ),
    ):
        report = bench(["--url", server.url], tmp_path, env)
    assert_complete_report(report)
    assert report["db"] is None and report["runners"] is None  # not its to know
    assert report["server_rss_mb"] is None  # not its process: not measured
    assert report["server_cpu_ms_per_job"] is None


def test_bench_says_at_once_when_its_server_cannot_start(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("not a database\n" * 100)
    # Well before the 60 s it gives runners to connect:
    result = run_bench(["--db", str(not_a_db)], tmp_path, timeout=30)
    assert result.returncode != 0
    assert "the server exited with status 1" in result.stderr
    assert "file is not a database" in result.stderr


def test_bench_names_a_refused_key_at_once(tmp_path: Path) -> None:
    with running_server(tmp_path / "server", KEYS) as server:
        wrong = {**KEYS, "RUNPACK_ADMIN_API_KEY": "not-the-key"}
        result = run_bench(["--url", server.url], tmp_path, wrong, timeout=30)
    assert result.returncode != 0
    assert "refused the admin key (401)" in result.stderr
