"""Python client for a Runpack server: submit jobs, follow them live, get their results.

Asynchronous::

    async with AsyncClient("http://127.0.0.1:8080", submit_key=KEY) as runpack:
        job = await runpack.submit("hello_world", {"name": "Ada", "processing_time": 3})
        async for event in runpack.watch(job.job_id):
            print(event.type, event.data)
        result = await runpack.wait(job.job_id)  # the job's output_data

Synchronous, the same methods (``watch`` returns a plain iterator)::

    with Client("http://127.0.0.1:8080", submit_key=KEY) as runpack:
        result = runpack.wait(runpack.submit("hello_world", {"name": "Ada"}).job_id)

Everything is passed in explicitly: this module reads no environment variable.
A reply with an error status raises :class:`RunpackClientError` (with the server's
``error`` and ``details``); a job that ends badly makes :meth:`AsyncClient.wait`
raise :class:`JobFailed`.
"""

from __future__ import annotations

from runpack.client.aio import AsyncClient
from runpack.client.errors import JobFailed, RunpackClientError, RunpackConnectionError
from runpack.client.models import (
    CancelResult,
    CheckResult,
    Event,
    JobInfo,
    JobPage,
    JobSummary,
    Progress,
    RunnerInfo,
    SubmitResult,
)
from runpack.client.sync import Client

__all__ = [
    "AsyncClient",
    "CancelResult",
    "CheckResult",
    "Client",
    "Event",
    "JobFailed",
    "JobInfo",
    "JobPage",
    "JobSummary",
    "Progress",
    "RunnerInfo",
    "RunpackClientError",
    "RunpackConnectionError",
    "SubmitResult",
]
