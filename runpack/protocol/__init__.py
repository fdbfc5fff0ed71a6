"""Shapes shared by the server and the runner daemon (standard library only).

Job states, the runner channel's message types and the size limits live here
once, so the two sides and the database CHECK constraint cannot drift apart:
``constants`` (states, roles, limits), ``fields`` (ProtocolError and the field
checks), ``registration``, ``runner_messages`` (runner -> server) and
``server_messages`` (server -> runner). Import the names from this package.
"""

# --- The runner channel: WebSocket ``GET /api/runner/ws`` --------------------------
# JSON text frames, each an object with a "type". Auth: ``Authorization: Bearer
# <runner key>`` on the upgrade request. Each frame kind is a class (in
# runner_messages and server_messages), with ``encode()`` (the frame as a dict) and
# ``decode(frame)`` (raising ProtocolError, whose ``error`` and ``details`` are what
# the other side is told); the server reads runner frames with
# :func:`decode_runner_frame`, the runner server frames with
# :func:`decode_server_frame`. The four reports (heartbeat, complete, error,
# release) are also the bodies of ``POST /api/runner/jobs/{id}/…`` (with the job id
# in the path): :meth:`Heartbeat.read` and the others read both the same way.
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

from runpack.protocol.constants import (
    CLOSE_POLICY_VIOLATION,
    FINAL,
    HANDLER_ENTRY_POINT_GROUP,
    HEARTBEAT_INTERVAL,
    KEY_REVOKED,
    MAX_CAPABILITIES,
    MAX_CONCURRENCY,
    MAX_CONSOLE_BYTES,
    MAX_ERROR_BYTES,
    MAX_IMAGE_CHARS,
    MAX_IMAGES,
    MAX_JOB_TIMEOUT,
    MAX_NAME_CHARS,
    MAX_OUTPUT_BYTES,
    MAX_PARAMS_BYTES,
    MAX_PROGRESS,
    MAX_REASON_CHARS,
    MAX_VERSION_CHARS,
    NOT_YOUR_RUNNER,
    RELEASED_BY_RUNNER,
    REQUEUEABLE,
    RUNNER_SECRET_HEADER,
    RUNNING,
    JobStatus,
    Role,
)
from runpack.protocol.fields import ProtocolError, positive
from runpack.protocol.registration import (
    Registered,
    Registration,
    check_images,
    check_registration,
    check_versions,
)
from runpack.protocol.runner_messages import (
    RUNNER_TO_SERVER,
    Complete,
    Failure,
    Heartbeat,
    Hello,
    Ready,
    Release,
    Report,
    RunnerMessage,
    decode_report,
    decode_runner_frame,
)
from runpack.protocol.server_messages import (
    SERVER_TO_RUNNER,
    Acked,
    Assignment,
    Cancel,
    ErrorReply,
    ServerMessage,
    Welcome,
    decode_server_frame,
)

__all__ = [
    "CLOSE_POLICY_VIOLATION",
    "FINAL",
    "HANDLER_ENTRY_POINT_GROUP",
    "HEARTBEAT_INTERVAL",
    "KEY_REVOKED",
    "MAX_CAPABILITIES",
    "MAX_CONCURRENCY",
    "MAX_CONSOLE_BYTES",
    "MAX_ERROR_BYTES",
    "MAX_IMAGES",
    "MAX_IMAGE_CHARS",
    "MAX_JOB_TIMEOUT",
    "MAX_NAME_CHARS",
    "MAX_OUTPUT_BYTES",
    "MAX_PARAMS_BYTES",
    "MAX_PROGRESS",
    "MAX_REASON_CHARS",
    "MAX_VERSION_CHARS",
    "NOT_YOUR_RUNNER",
    "RELEASED_BY_RUNNER",
    "REQUEUEABLE",
    "RUNNER_SECRET_HEADER",
    "RUNNER_TO_SERVER",
    "RUNNING",
    "SERVER_TO_RUNNER",
    "Acked",
    "Assignment",
    "Cancel",
    "Complete",
    "ErrorReply",
    "Failure",
    "Heartbeat",
    "Hello",
    "JobStatus",
    "ProtocolError",
    "Ready",
    "Registered",
    "Registration",
    "Release",
    "Report",
    "Role",
    "RunnerMessage",
    "ServerMessage",
    "Welcome",
    "check_images",
    "check_registration",
    "check_versions",
    "decode_report",
    "decode_runner_frame",
    "decode_server_frame",
    "positive",
]
