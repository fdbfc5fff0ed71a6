"""``runpack bench``: end-to-end throughput and latency (:mod:`runpack.bench`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any


def add_to(sub: Any) -> None:
    from runpack.bench import BenchOptions

    default = BenchOptions()
    parser = sub.add_parser(
        "bench",
        help="Measure jobs/s and latency end to end.",
        description="Start a server on a temporary SQLite file (or --db) and runner "
        "processes on loopback, or target a running server with --url; submit distinct "
        "no-op jobs from concurrent clients and report jobs/s end to end, submit-to-start "
        "and submit-to-completed latency percentiles, cache-hit submits/s, CPU per job and "
        "peak memory. With --url the keys come from RUNPACK_SUBMIT_API_KEY and "
        "RUNPACK_ADMIN_API_KEY, and runners that handle `noop` must be connected.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--jobs", type=int, default=default.jobs, help="Distinct no-op jobs to run."
    )
    parser.add_argument(
        "--runners", type=int, default=default.runners, help="Runner processes to start."
    )
    parser.add_argument(
        "--runner-concurrency",
        type=int,
        default=default.runner_concurrency,
        help="Slots per runner process.",
    )
    parser.add_argument(
        "--concurrency", type=int, default=default.concurrency, help="Concurrent clients."
    )
    parser.add_argument(
        "--latency-jobs",
        type=int,
        default=default.latency_jobs,
        help="Jobs run one at a time for latency.",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=default.warmup,
        help="Jobs run one at a time before the latency jobs, not counted.",
    )
    parser.add_argument(
        "--cache-hits", type=int, default=default.cache_hits, help="Cache-hit submits to time."
    )
    parser.add_argument(
        "--db",
        default=default.db,
        help="SQLite path or postgresql:// DSN; None: a temporary SQLite file.",
    )
    parser.add_argument(
        "--url", default=default.url, help="Target a running server (keys from RUNPACK_*_API_KEY)."
    )
    parser.add_argument(
        "--timeout", type=float, default=default.timeout, help="Give up after this many seconds."
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A setting of the server it starts (repeatable), e.g. place_new_jobs=false.",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import orjson

    from runpack.bench import BenchOptions, bench
    from runpack.bench_figures import report

    names = [f.name for f in dataclasses.fields(BenchOptions)]
    options = {name: getattr(args, name) for name in names}
    options["set"] = tuple(options["set"])
    result = bench(BenchOptions(**options), os.environ)
    print(orjson.dumps(result).decode() if args.json else report(result))
    return 0 if result["completed"] == result["jobs"] else 1
