"""What a submit or check body asks: parsed, checked in the original's order, hashed.

Viewers send the same body again and again, so what a body asked is remembered by its
bytes for a while, and an identical body is neither parsed nor hashed again, until a
job type's version changes (runpack.handler_versions): then every body is hashed anew.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from runpack import hashing
from runpack.api.common import parse_json_object, read_body
from runpack.appkeys import JOB_REQUESTS
from runpack.errors import BadRequest
from runpack.handler_versions import HandlerVersions
from runpack.jobtypes import HashIgnored
from runpack.protocol import MAX_JOB_TIMEOUT
from runpack.service.checks import MAX_DEPTH, NUL, too_deep
from runpack.service.core import JobRequest
from runpack.settings import Settings

#: Bodies remembered with what they ask: at most this many, each at most this many
#: bytes (so at most 4 MiB).
REQUEST_MEMO_SIZE = 1024
REQUEST_MEMO_MAX_BODY = 4096


class JobRequests:
    """Submit and check bodies turned into :class:`JobRequest`; small ones remembered."""

    def __init__(
        self,
        max_params_bytes: int,
        hash_ignored: HashIgnored,
        versions: HandlerVersions | None = None,
    ) -> None:
        self.max_params_bytes = max_params_bytes
        self.hash_ignored = hash_ignored
        self.versions = versions or HandlerVersions()
        self._known: dict[bytes, JobRequest] = {}
        self._generation = self.versions.generation

    @classmethod
    def from_settings(
        cls, settings: Settings, versions: HandlerVersions | None = None
    ) -> JobRequests:
        return cls(
            settings.max_params_bytes,
            HashIgnored.parse(settings.hash_ignored_params),
            versions or HandlerVersions.from_settings(settings),
        )

    def __len__(self) -> int:
        return len(self._known)

    def of(self, raw: bytes) -> JobRequest:
        """What ``raw`` asks; BadRequest if it is not a valid submit or check body."""
        known = self.known(raw)
        if known is not None:
            return known
        job_request = self.parse(parse_json_object(raw))
        self.remember(raw, job_request)
        return job_request

    def known(self, raw: bytes) -> JobRequest | None:
        """What an identical body asked lately, if it was remembered (and no version
        changed since)."""
        if self._generation != self.versions.generation:
            self._known.clear()
            self._generation = self.versions.generation
        return self._known.get(raw)

    def remember(self, raw: bytes, job_request: JobRequest) -> None:
        """Keep what ``raw`` asks (small bodies only; the oldest goes first)."""
        if len(raw) > REQUEST_MEMO_MAX_BODY:
            return
        if len(self._known) >= REQUEST_MEMO_SIZE:
            del self._known[next(iter(self._known))]
        self._known[raw] = job_request

    def parse(self, body: dict[str, Any]) -> JobRequest:
        """Check a submit/check body in the original's order; raise BadRequest."""
        job_type = body.get("job_type")
        params = body.get("input_params")
        params_text: str | None = None
        if params is not None:
            if too_deep(params):
                raise BadRequest(
                    "Input parameters are nested too deeply", details=f"at most {MAX_DEPTH} levels"
                )
            params_text = hashing.js_stringify(params)
            limit = self.max_params_bytes
            if hashing.utf8_size(params_text) > limit:
                raise BadRequest(f"Input parameters exceed size limit of {limit} bytes")
        if not isinstance(job_type, str) or not job_type:
            raise BadRequest("Job type must be a non-empty string")
        if len(job_type) > 200:
            raise BadRequest("Job type must be a non-empty string", details="at most 200 chars")
        if NUL in job_type:
            raise BadRequest("Job type must be a non-empty string", details="no NUL characters")
        if not isinstance(params, dict) or params_text is None:
            raise BadRequest("Input parameters must be an object")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise BadRequest("force must be true or false")
        priority = body.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > 1000:
            raise BadRequest("priority must be an integer from -1000 to 1000")
        timeout = body.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_JOB_TIMEOUT
        ):
            raise BadRequest(
                f"timeout must be a number of seconds, more than 0 and at most {MAX_JOB_TIMEOUT}"
            )
        return JobRequest(
            job_type=job_type,
            input_params=params,
            job_hash=hashing.job_hash(
                job_type,
                self.hash_ignored.hash_params(job_type, params),
                self.versions.version(job_type),
            ),
            params_text=params_text,
            force=force,
            priority=priority,
            timeout=None if timeout is None else float(timeout),
        )


async def job_request_of(request: web.Request) -> JobRequest:
    """What the body of a submit or check request asks."""
    return request.app[JOB_REQUESTS].of(await read_body(request))
