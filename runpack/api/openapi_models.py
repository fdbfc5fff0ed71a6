"""Typed models as OpenAPI schemas: the answers handlers build as TypedDicts
(runpack/api/views.py), and the runner's report bodies and assignment, which both
sides read with the runpack.protocol message classes, are described from those
classes, field for field."""

from __future__ import annotations

import dataclasses
import types
from enum import Enum
from typing import (
    Annotated,
    Any,
    NotRequired,
    Required,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from runpack import protocol
from runpack.api import views

Json = dict[str, Any]
JSON = "application/json"


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


SCALARS = {str: "string", bool: "boolean", int: "integer", float: "number"}


def schema_of(hint: Any) -> Json:
    """The JSON Schema of a field of a typed model: a scalar, ``X | None``, a list, a
    JSON object (``dict``), a model or an enum (a reference), any JSON (``Any``), with
    ``Annotated`` text as its description."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return {}
    if origin is Annotated:
        return {**schema_of(args[0]), "description": " ".join(args[1:])}
    if origin in (Required, NotRequired):
        return schema_of(args[0])
    if origin in (Union, types.UnionType) and type(None) in args:
        (inner,) = (a for a in args if a is not type(None))
        out = schema_of(inner)
        if "type" not in out:  # a reference
            return {"anyOf": [out, {"type": "null"}]}
        return {**out, "type": [out["type"], "null"]}
    if origin is list:
        return {"type": "array", "items": schema_of(args[0])}
    if hint is dict or origin is dict:
        return {"type": "object"}
    if is_typeddict(hint) or (isinstance(hint, type) and issubclass(hint, Enum)):
        return ref(hint.__name__)
    return {"type": SCALARS[hint]}


def model(cls: Any) -> Json:
    """The schema of a TypedDict: its fields, the ``NotRequired`` ones optional, and
    its docstring as the description; or of a protocol message (``message``)."""
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        return message(cls)
    hints = get_type_hints(cls, include_extras=True)
    required = {n: schema_of(h) for n, h in hints.items() if get_origin(h) is not NotRequired}
    optional = {n: schema_of(h) for n, h in hints.items() if n not in required}
    extra = {"description": cls.__doc__} if cls.__doc__ else {}
    return obj(required, optional, **extra)


def message(cls: type) -> Json:
    """The HTTP body of a runpack.protocol message: its fields but those in the URL
    path, the ones with a default optional (unless marked required), each described
    by its metadata (runpack.protocol.fields.about). The class's docstring is about
    the WebSocket frame too, so it is not the description."""
    hints = get_type_hints(cls)
    required: dict[str, Json] = {}
    optional: dict[str, Json] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("in") == "path":
            continue
        out = {**schema_of(hints[f.name]), **f.metadata.get("schema", {})}
        if "doc" in f.metadata:
            out["description"] = f.metadata["doc"]
        has_default = f.default is not dataclasses.MISSING
        has_default |= f.default_factory is not dataclasses.MISSING
        into = optional if has_default and not f.metadata.get("required") else required
        into[f.name] = out
    return obj(required, optional)


#: The bodies a runner sends and is answered, read with runpack.protocol's classes.
MESSAGES: dict[str, type] = {
    "AssignedJob": protocol.Assignment,
    "Heartbeat": protocol.Heartbeat,
    "Completion": protocol.Complete,
    "Failure": protocol.Failure,
    "Release": protocol.Release,
    "Registration": protocol.Registration,
    "Registered": protocol.Registered,
}

#: The answers that handlers build as typed models (runpack/api/views.py).
MODELS = (
    views.Progress,
    views.Result,
    views.QueueState,
    views.SubmitAnswer,
    views.CheckAnswer,
    views.JobState,
    views.Job,
    views.JobSummary,
    views.Runner,
    views.RunnerDetail,
)


def obj(required: dict[str, Json], optional: dict[str, Json] | None = None, **extra: Any) -> Json:
    """An object schema: ``required`` properties, then ``optional`` ones."""
    out: Json = {"type": "object", "properties": {**required, **(optional or {})}, **extra}
    if required:
        out["required"] = list(required)
    return out
