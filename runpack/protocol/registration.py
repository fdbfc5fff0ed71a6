"""What a runner may register as: the same rules over HTTP and in a hello."""

from __future__ import annotations

from runpack.protocol.constants import MAX_CAPABILITIES, MAX_NAME_CHARS
from runpack.protocol.fields import ProtocolError


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
