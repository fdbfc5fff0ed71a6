"""Runpack's Python client, asynchronous and synchronous.

Start a server with a runner (``make run``), load its keys, then run this:

    source runpack-data/dev-keys.env
    .venv/bin/python examples/client_example.py

It reads RUNPACK_URL and RUNPACK_SUBMIT_API_KEY (the client itself reads no
environment: a program passes what it wants).
"""

from __future__ import annotations

import asyncio
import os
import sys

from runpack.client import AsyncClient, Client, JobFailed, RunpackClientError


async def follow_async(url: str, key: str) -> None:
    """Submit a job, show its events as they come, then get its result."""
    async with AsyncClient(url, submit_key=key) as runpack:
        job = await runpack.submit("hello_world", {"name": "Ada", "processing_time": 3})
        print(f"job {job.job_id}: {job.message}")
        console = ""  # the job's console so far: a "replace" event repeats it whole
        shown = 0  # how much of it is printed: whole lines only (an event may end mid-line)
        async for event in runpack.watch(job.job_id):  # ends after the final status
            if event.type == "progress":
                print(f"  progress {event.data['current']}/{event.data['total']}")
            elif event.type == "console":
                if "replace" in event.data:
                    text = event.data["replace"]
                    shown = shown if text.startswith(console[:shown]) else 0
                    console = text
                else:
                    console += event.data.get("append", "")
                while (end := console.find("\n", shown)) >= 0:
                    print("  console:", console[shown:end])
                    shown = end + 1
            elif event.status is not None:
                print(f"  {event.type}: {event.status}")
        print("result:", await runpack.wait(job.job_id, timeout=60))


def sync_usage(url: str, key: str) -> None:
    """The same with the synchronous client; and what a failure looks like."""
    with Client(url, submit_key=key) as runpack:
        job = runpack.submit("hello_world", {"name": "Grace", "processing_time": 1})
        print("result:", runpack.wait(job.job_id, timeout=60))
        # hello_world refuses more than 300 seconds: the job fails.
        bad = runpack.submit("hello_world", {"name": "Grace", "processing_time": 301})
        try:
            runpack.wait(bad.job_id, timeout=60)
        except JobFailed as failed:
            print(f"job {failed.job_id} {failed.status}: {failed.error}")
        # Submitting the same inputs again finds the same job and its cached result.
        again = runpack.submit("hello_world", {"processing_time": 1, "name": "Grace"})
        print(f"again: {again.message}: {again.output_data}")


def main() -> int:
    url = os.environ.get("RUNPACK_URL", "http://127.0.0.1:8080")
    key = os.environ.get("RUNPACK_SUBMIT_API_KEY")
    if not key:
        print("set RUNPACK_SUBMIT_API_KEY (source runpack-data/dev-keys.env)", file=sys.stderr)
        return 2
    try:
        asyncio.run(follow_async(url, key))
        sync_usage(url, key)
    except RunpackClientError as exc:
        print(f"runpack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
