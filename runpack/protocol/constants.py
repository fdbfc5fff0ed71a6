"""Job states, roles, size limits and the names both sides of the runner channel use."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


#: States in which a runner holds the job.
RUNNING = (JobStatus.CLAIMED, JobStatus.IN_PROGRESS)
#: States that a new submit may put back in the queue.
REQUEUEABLE = (JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED)
#: States that never change on their own.
FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED)


class Role(StrEnum):
    """Who may call a route (declared per route, enforced by middleware)."""

    PUBLIC = "public"
    SUBMIT = "submit"
    RUNNER = "runner"
    #: Read-only admin: the admin key, or the runner key as in the original.
    ADMIN_READ = "admin_read"
    #: Changes made by an administrator: the admin key only.
    ADMIN = "admin"


# Size limits of the original, counted in UTF-8 bytes.
MAX_PARAMS_BYTES = 102_400
MAX_OUTPUT_BYTES = 512_000
MAX_CONSOLE_BYTES = 1_048_576
MAX_ERROR_BYTES = 10_240
#: The longest time limit a submit may ask for, in seconds (a day).
MAX_JOB_TIMEOUT = 86_400
#: A job type, a runner's name and each of its capabilities (job types), in characters.
MAX_NAME_CHARS = 200
#: Job types one runner may declare.
MAX_CAPABILITIES = 256
#: A handler's declared version (runpack.protocol.registration), in characters.
MAX_VERSION_CHARS = 64
#: Entries of the image allow list a runner sends (runpack.protocol.registration)...
MAX_IMAGES = 256
#: ...and the characters of each.
MAX_IMAGE_CHARS = 512


#: The WebSocket close code for a runner refused by policy (RFC 6455).
CLOSE_POLICY_VIOLATION = 1008
#: ``code`` of the error frame sent before such a close.
NOT_YOUR_RUNNER = "not_your_runner"
KEY_REVOKED = "key_revoked"
#: The header in which a runner with a secret of its own proves it over HTTP.
RUNNER_SECRET_HEADER = "X-Runner-Secret"

#: Runners send a heartbeat for each running job at least this often (seconds).
HEARTBEAT_INTERVAL = 30.0
#: The runner's entry-point group for job handlers.
HANDLER_ENTRY_POINT_GROUP = "runpack.handlers"

#: Progress numbers stay within what both engines store (BIGINT), with room to spare.
MAX_PROGRESS = 2**62 - 1
#: A release's reason is a note kept on the job: longer ones are cut to this many chars.
MAX_REASON_CHARS = 500
RELEASED_BY_RUNNER = "released by the runner"
#: Slots one runner may declare.
MAX_CONCURRENCY = 1000
