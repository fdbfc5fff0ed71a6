"""Typed models as OpenAPI schemas: the answers handlers build as TypedDicts
(runpack/api/views.py) are described from those classes, field for field."""

from __future__ import annotations

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

from runpack.api import views

Json = dict[str, Any]
JSON = "application/json"


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


SCALARS = {str: "string", bool: "boolean", int: "integer", float: "number"}


def schema_of(hint: Any) -> Json:
    """The JSON Schema of a field of a typed model: a scalar, ``X | None``, a list, a
    JSON object (``dict``), a model or an enum (a reference), with ``Annotated`` text
    as its description."""
    origin, args = get_origin(hint), get_args(hint)
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
    its docstring as the description."""
    hints = get_type_hints(cls, include_extras=True)
    required = {n: schema_of(h) for n, h in hints.items() if get_origin(h) is not NotRequired}
    optional = {n: schema_of(h) for n, h in hints.items() if n not in required}
    extra = {"description": cls.__doc__} if cls.__doc__ else {}
    return obj(required, optional, **extra)


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
