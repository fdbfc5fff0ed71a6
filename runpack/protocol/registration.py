"""What a runner may register as: the same rules over HTTP and in a hello, and the
body and answer of ``POST /api/runner/register``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runpack.protocol.constants import MAX_CAPABILITIES, MAX_NAME_CHARS
from runpack.protocol.fields import ProtocolError, about


def check_registration(name: object, capabilities: object) -> tuple[str, list[str]]:
    """A runner's name and job types as registered over HTTP or said in a hello;
    ProtocolError (the original's message, the rule in the details) if they are not."""
    if not isinstance(name, str) or not name.strip():
        raise _bad_registration("name: a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise _bad_registration(f"name: at most {MAX_NAME_CHARS} characters")
    if not isinstance(capabilities, list):
        raise _bad_registration("capabilities: an array of job types")
    if len(capabilities) > MAX_CAPABILITIES:
        raise _bad_registration(f"capabilities: at most {MAX_CAPABILITIES} job types")
    types: list[str] = []
    for job_type in capabilities:
        if not isinstance(job_type, str) or not job_type or len(job_type) > MAX_NAME_CHARS:
            raise _bad_registration(f"capabilities: job types of 1 to {MAX_NAME_CHARS} characters")
        types.append(job_type)
    if "\0" in name + "".join(types):
        raise _bad_registration("name and capabilities: no NUL characters")
    return name, types


def _bad_registration(why: str) -> ProtocolError:
    return ProtocolError("Invalid registration data", why)


@dataclass(slots=True)
class Registration:
    """The body of ``POST /api/runner/register`` (a hello says the same over WebSocket)."""

    name: str = field(metadata=about(minLength=1, maxLength=MAX_NAME_CHARS, pattern=r"\S"))
    capabilities: list[str] = field(
        metadata=about(
            maxItems=MAX_CAPABILITIES,
            items={"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS},
        )
    )
    with_secret: bool = field(
        default=False,
        metadata=about("Ask for a secret of the runner's own (Runpack's runner does)."),
    )

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "capabilities": self.capabilities,
            "with_secret": self.with_secret,
        }

    @classmethod
    def read(cls, body: dict[str, Any]) -> Registration:
        """By check_registration's rules; ``with_secret`` other than true is false (the
        original's runner does not send it)."""
        name, capabilities = check_registration(body.get("name"), body.get("capabilities"))
        return cls(name, capabilities, body.get("with_secret") is True)


@dataclass(slots=True)
class Registered:
    """The answer to a registration (the welcome says the same over WebSocket)."""

    runner_id: str
    message: str = field(default="Runner registered successfully", metadata=about(required=True))
    runner_secret: str | None = field(
        default=None,
        metadata=about(
            "The runner's own secret, when asked for (`with_secret`); shown once. Send it"
            " as `X-Runner-Secret` from then on.",
            type="string",  # left out when not asked for, never null
        ),
    )

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runner_id": self.runner_id, "message": self.message}
        if self.runner_secret is not None:
            out["runner_secret"] = self.runner_secret
        return out
