"""``runpack bench``'s figures: latency percentiles, memory and CPU of the processes
it measures, and the report printed without ``--json``."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any


def percentiles(values_s: list[float]) -> dict[str, float]:
    if not values_s:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    ms = sorted(v * 1000 for v in values_s)
    if len(ms) == 1:
        return {"p50": ms[0], "p90": ms[0], "p99": ms[0]}
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": round(cuts[49], 3), "p90": round(cuts[89], 3), "p99": round(cuts[98], 3)}


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a live process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user and system) a live process has used, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ms_per_job(pids: list[int], before: list[float | None], jobs: int) -> float | None:
    """CPU the processes used since ``before``, in ms per job (None if unknown)."""
    if not pids or not jobs:
        return None
    after = [cpu_seconds(pid) for pid in pids]
    spent = [a - b for a, b in zip(after, before, strict=True) if a is not None and b is not None]
    if len(spent) != len(pids):
        return None
    return round(sum(spent) * 1000 / jobs, 3)


def _pcts(p: dict[str, float]) -> str:
    return f"p50 {p['p50']:.2f} ms  p90 {p['p90']:.2f} ms  p99 {p['p99']:.2f} ms"


def database_kind(db: str | None) -> str:
    return "postgresql" if (db or "").startswith(("postgres://", "postgresql://")) else "sqlite"


def report(result: dict[str, Any]) -> str:
    s, c = result["submit_to_start_ms"], result["submit_to_completed_ms"]
    lc = result["under_load_submit_to_completed_ms"]
    if result["db"] is None:
        target = "a running server"
    else:
        target = f"{result['runners']} runner(s) x {result['runner_concurrency']} slots, "
        target += result["db"]
    lines = [
        f"runpack bench: {result['jobs']} jobs ({result['completed']} completed), "
        f"{result['clients']} clients, {target}",
        f"  end to end          {result['jobs_per_s']:>10.1f} jobs/s  ({result['elapsed_s']} s)",
        f"  submit -> start     {_pcts(s)}   (one job at a time, "
        f"after {result['warmup_jobs']} warm-up jobs)",
        f"  submit -> completed {_pcts(c)}",
        f"  under load: done    {_pcts(lc)}",
        f"  cache-hit submits   {result['cache_hits_per_s']:>10.1f} /s",
        f"  peak RSS            server {result['server_rss_mb']} MiB, "
        f"runner {result['runner_rss_mb']} MiB each",
    ]
    if result["server_cpu_ms_per_job"] is not None:
        lines.append(
            f"  CPU per job         server {result['server_cpu_ms_per_job']} ms, "
            f"runners {result['runner_cpu_ms_per_job']} ms (under load)"
        )
    return "\n".join(lines)
