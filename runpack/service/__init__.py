"""The job lifecycle: dedup, cache, transitions, retries.

Imports neither aiohttp nor a database driver. Every state change is one
conditional store call; when it changes no row, the service raises a domain
error instead of guessing. Routes render what it returns.

:class:`JobService` is one object made of one part per concern:

- :mod:`~runpack.service.core`: the state the parts share, the service's answers and
  collaborators (validator, figures, observer, the hub's free slots), its events;
- :mod:`~runpack.service.jobs`: submit, dedup, the result cache, check, cancel, retry;
- :mod:`~runpack.service.runs`: a run as its runner reports it (claims, heartbeats,
  completion, failure);
- :mod:`~runpack.service.runners`: registration, ownership, last contact;
- :mod:`~runpack.service.sweeping`: stale runs taken back, with backoff;
- :mod:`~runpack.service.checks`: small checks on ids and text.

Parsing and checking a client's request body is the API's (:mod:`runpack.api.job_requests`).
"""

from __future__ import annotations

from runpack.service.jobs import Jobs
from runpack.service.runners import Runners
from runpack.service.runs import Runs


class JobService(Jobs, Runs, Runners):
    """The job service: see the module's description for where each part lives."""


__all__ = ["JobService"]
