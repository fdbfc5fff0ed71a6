"""Ask Runpack for a figure the way the Neurosift viewer does, with the standard library only.

    source runpack-data/dev-keys.env          # RUNPACK_URL and RUNPACK_SUBMIT_API_KEY
    python examples/neurosift_like.py figpack_nwb_raster_plot \\
        nwb_url=http://127.0.0.1:8090/demo.nwb units_path=/units

1. ``POST /api/jobs/check``: is there a cached figure already? (nothing is created)
2. ``POST /api/jobs/submit``: if not, queue the job (the same inputs give the same job).
3. ``GET /api/jobs/{id}/events``: follow its progress and console as Server-Sent Events.
4. Print ``result.output_data.figpack_url``: the figure, ready for an iframe.

``neurosift_url`` and ``dandiset_id`` may be added as parameters, as Neurosift
sends them: they do not change which job you get (nor appear in the figure).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

FINAL = {"completed", "failed", "expired", "cancelled", "deleted"}


def post(base: str, key: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        base.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def check(base: str, key: str, job_type: str, params: dict[str, Any]) -> Any:
    status, body = post(
        base, key, "/api/jobs/check", {"job_type": job_type, "input_params": params}
    )
    if status != 200:
        raise RuntimeError(f"check failed (HTTP {status}): {body}")
    return body


def submit(base: str, key: str, job_type: str, params: dict[str, Any]) -> Any:
    body = {"job_type": job_type, "input_params": params}
    status, reply = post(base, key, "/api/jobs/submit", body)
    if status not in (200, 201):
        raise RuntimeError(f"submit failed (HTTP {status}): {reply}")
    return reply


def events(base: str, job_id: str, timeout: float = 600) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a job's Server-Sent Events stream, until it ends."""
    url = f"{base.rstrip('/')}/api/jobs/{job_id}/events"
    request = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        kind, data = "message", []
        for raw in resp:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                yield kind, json.loads("\n".join(data))
                kind, data = "message", []


def follow(
    base: str, job_id: str, show: Callable[[str], None] = print, timeout: float = 600
) -> dict[str, Any]:
    """Show a job's progress and console until its final status; that status event."""
    console: list[str] = []  # the lines shown so far
    for kind, data in events(base, job_id, timeout):
        if kind == "progress":
            show(f"  progress {data.get('current')}/{data.get('total')}")
        elif kind == "console":
            lines = (data.get("append") or "").splitlines()
            if "replace" in data:  # the whole console: show what is new in it
                lines = data["replace"].splitlines()[len(console) :]
            for line in lines:
                show(f"  | {line}")
            console += lines
        elif kind in ("status", "snapshot"):
            if kind == "status":
                show(f"  status: {data['status']}")
            if data.get("status") in FINAL:
                return dict(data)
    raise RuntimeError("the event stream ended before the job did")


def figure_url(base: str, key: str, job_type: str, params: dict[str, Any]) -> str:
    """What Neurosift does: check, submit if needed, follow, and return the figure URL."""
    found = check(base, key, job_type, params)
    if found.get("exists") and found.get("status") == "completed":
        print(f"cached: job {found['job_id']}")
        return str(found["result"]["output_data"]["figpack_url"])
    job = submit(base, key, job_type, params)
    print(f"job {job['job_id']}: {job['message']}")
    if job["status"] == "completed":
        return str(job["result"]["output_data"]["figpack_url"])
    if job["status"] == "failed":
        raise RuntimeError(job.get("error") or "the job failed")
    final = follow(base, job["job_id"])
    if final["status"] != "completed":
        raise RuntimeError(f"the job is {final['status']}: {final.get('error')}")
    result = final.get("result") or submit(base, key, job_type, params).get("result")
    return str(result["output_data"]["figpack_url"])


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__)
        return 2
    base = os.environ.get("RUNPACK_URL", "http://127.0.0.1:8080")
    key = os.environ.get("RUNPACK_SUBMIT_API_KEY", "")
    params = dict(a.split("=", 1) for a in argv[1:])
    try:
        print(figure_url(base, key, argv[0], params))
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
