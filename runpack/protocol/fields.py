"""Reading a message's fields: ProtocolError and the checks every message kind shares."""

from __future__ import annotations

from typing import Any

from runpack.protocol.constants import MAX_PROGRESS


class ProtocolError(ValueError):
    """A message without its kind's shape; ``error`` and ``details`` are what the
    sender is told (an error frame, or a 400 over HTTP)."""

    def __init__(self, error: str, details: str | None = None) -> None:
        super().__init__(error if details is None else f"{error}: {details}")
        self.error = error
        self.details = details


#: Over HTTP the field is in the URL path, not in the body (a report's ``job_id``).
IN_PATH: dict[str, Any] = {"in": "path"}


def about(text: str | None = None, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    """A message field's metadata (``dataclasses.field(metadata=...)``) for the OpenAPI
    document (runpack/api/openapi_models.py), which describes each HTTP body from its
    message class: ``text`` is its description, ``schema`` JSON Schema keywords its
    type alone does not give (``type``, limits); ``required``: always in the body
    though it has a default."""
    out: dict[str, Any] = {"schema": schema} if schema else {}
    if text:
        out["doc"] = text
    if required:
        out["required"] = True
    return out


def positive(value: object) -> float | None:
    """A JSON number above zero as a float, else None (durations from the server)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _unknown(frame: dict[str, Any], kinds: tuple[str, ...]) -> ProtocolError:
    return ProtocolError(
        "Unknown message type", f"{frame.get('type')!r}; one of {', '.join(kinds)}"
    )


def _job_id(frame: dict[str, Any]) -> str:
    job_id = frame.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise _invalid("job_id", "expected str")
    return job_id


def _int(frame: dict[str, Any], name: str) -> int:
    value = frame.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(name, "expected int")
    return value


def _optional(frame: dict[str, Any], name: str, kind: type) -> Any:
    """The field if present and not null, checked to be a ``kind``; else None."""
    value = frame.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _invalid(name, f"expected {kind.__name__}")
    return value


def _progress(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(name, "expected int")
    if isinstance(value, float):  # 3.0 from a JavaScript runner is 3
        if not value.is_integer():
            raise _invalid(name, "expected int")
        value = int(value)
    if not -MAX_PROGRESS <= value <= MAX_PROGRESS:
        raise ProtocolError(f"Invalid field: {name}", f"out of range (at most {MAX_PROGRESS})")
    return value


def _nonempty(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _ids(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _invalid(name: str, details: str) -> ProtocolError:
    return ProtocolError(f"Invalid or missing field: {name}", details)
