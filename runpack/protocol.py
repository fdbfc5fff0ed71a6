"""Shapes shared by the server and the runner daemon (standard library only).

Job states, the runner channel's message types and the size limits live here
once, so the two sides and the database CHECK constraint cannot drift apart.
"""

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
#: A job type, a runner's name and each of its capabilities (job types), in characters.
MAX_NAME_CHARS = 200
#: Job types one runner may declare.
MAX_CAPABILITIES = 256


# --- The runner channel: WebSocket ``GET /api/runner/ws`` --------------------------
# JSON text frames, each an object with a "type". Auth: ``Authorization: Bearer
# <runner key>`` on the upgrade request.
#
# runner -> server
#   hello      {runner_id?: str, runner_secret?: str, name: str, capabilities: [str],
#               concurrency: int, version: str, jobs: [job_id]}
#              first frame; jobs = ones it holds; runner_secret = the secret the
#              welcome that registered it gave (required once a runner has one)
#   ready      {slots: int}                            grants this many MORE job slots
#   heartbeat  {job_id, progress_current?: int|null, progress_total?: int|null,
#               console_output?: str (replaces), console_append?: str (appends)}
#   complete   {job_id, output_data: object, console_output?: str}
#   error      {job_id, error_message: str, console_output?: str, retryable?: bool}
#              retryable: a reason outside the job (the server's disk was full); the
#              job is queued again with backoff while it has attempts left
#   release    {job_id, reason?: str}                  give a job back to the queue
#
# server -> runner
#   welcome    {runner_id, heartbeat_interval: s, limits: {...}, resumed: [job_id],
#               dropped: [job_id], free_on_result: bool}
#              resumed = held jobs it may finish; dropped = stop these;
#              free_on_result = a job's slot is free once its result is sent
#   job        {job_id, job_type, input_params: object, attempt: int, timeout: s|null}
#   cancel     {job_id, reason}
#   ack        {job_id, of: "complete"|"error"|"release", applied: bool}
#              (the result is durable, or was already final: forget it)
#   error      {error: str, details?: str, ref?: str (the frame type), job_id?: str,
#               code?: str (one of ERROR_CODES, when the socket closes for it)}
#
# Flow control is by credits: the server never has more jobs out to a connection
# than the slots it was granted; a job pushed uses one slot, and the runner grants
# it back with `ready` when the job is released (after the ack), or when its run
# ended: once its complete or error is sent if the welcome said `free_on_result`
# (the server counts the job as the runner's until the ack, in no slot, and puts a
# new job in a slot so granted once the result is stored), else after the ack, as a
# server without the field expects. `ready` frames beyond the runner's concurrency
# (less the jobs it holds and the slots it granted) are ignored, whenever they come.

#
# A hello for a runner that another key registered, or without its secret, is
# refused with an error frame (code "not_your_runner") and close code 1008; a socket
# whose key is revoked gets one with code "key_revoked" and 1008 as well.
#
# Over HTTP a runner names itself with ``X-Runner-ID`` and, if it has a secret,
# proves it with ``X-Runner-Secret``; ``POST /api/runner/register`` with
# ``{"with_secret": true}`` answers the new runner's ``runner_secret`` too.

RUNNER_TO_SERVER = ("hello", "ready", "heartbeat", "complete", "error", "release")
SERVER_TO_RUNNER = ("welcome", "job", "cancel", "ack", "error")

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
