"""How job types are declared: a :class:`JobHandler` class or the :func:`job` decorator.

The class is the original's interface::

    class Greet(JobHandler):
        job_type = "greet"

        def execute(self, input_params, heartbeat_callback):
            heartbeat_callback(progress_current=1, progress_total=1)
            return {"message": f"Hello, {input_params['name']}!"}

The decorator turns a plain function ``f(ctx, **params) -> dict`` into a handler::

    @job("greet")
    def greet(ctx: JobContext, name: str = "World") -> dict:
        ctx.log(f"greeting {name}")
        return {"message": f"Hello, {name}!"}

Either object is registered under the ``runpack.handlers`` entry-point group
(see :mod:`runpack_runner.registry`). Both run in a worker thread; raising
``ValueError`` reports "Invalid parameters: …". Heavy imports belong inside
``execute`` (or the function), so that discovering handlers stays cheap.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from runpack_runner.context import JobContext

#: Called as ``heartbeat_callback(progress_current=…, progress_total=…, console_output=…)``,
#: every argument optional (the runner passes the job's :class:`JobContext`).
HeartbeatCallback = Callable[..., None]


class JobHandler:
    """Base class of a job type; subclasses set ``job_type`` and implement ``execute``."""

    job_type: ClassVar[str] = ""

    def execute(
        self, input_params: dict[str, Any], heartbeat_callback: HeartbeatCallback
    ) -> dict[str, Any]:
        """Run the job and return its JSON-serializable result.

        ``heartbeat_callback`` is the job's :class:`JobContext`: call it as the
        original did (``progress_current=…, progress_total=…, console_output=…``)
        or use ``.log()``, ``.progress()``, ``.cancelled`` and ``.wait()``. It
        raises :class:`~runpack_runner.context.Cancelled` once the job is cancelled.
        Raise ``ValueError`` for invalid ``input_params``.
        """
        raise NotImplementedError


JobFunction = Callable[..., dict[str, Any]]


class FunctionHandler(JobHandler):
    """A handler made from a plain function by :func:`job`; still callable directly."""

    def __init__(self, job_type: str, function: JobFunction) -> None:
        self.job_type = job_type  # type: ignore[misc]  # per instance, not per class
        self.function = function
        self.signature = inspect.signature(function)
        #: ``f(ctx, **params)``: any parameters bind, unless one is named like ``ctx``.
        self._takes_any: str | None = _takes_any(self.signature)
        functools.update_wrapper(self, function)

    def execute(
        self, input_params: dict[str, Any], heartbeat_callback: HeartbeatCallback
    ) -> dict[str, Any]:
        ctx = heartbeat_callback
        if self._takes_any is not None and self._takes_any not in input_params:
            return self.function(ctx, **input_params)  # what binding would give, sooner
        try:
            bound = self.signature.bind(ctx, **input_params)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        return self.function(*bound.args, **bound.kwargs)

    def __call__(self, ctx: JobContext, **params: Any) -> dict[str, Any]:
        return self.function(ctx, **params)

    def __repr__(self) -> str:
        return f"<job {self.job_type!r}: {self.function.__qualname__}>"


def _takes_any(signature: inspect.Signature) -> str | None:
    """The context parameter's name if the signature is ``(ctx, **params)``, else None."""
    params = list(signature.parameters.values())
    if (
        len(params) == 2
        and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)
        and params[1].kind == params[1].VAR_KEYWORD
    ):
        return params[0].name
    return None


def job(job_type: str) -> Callable[[JobFunction], FunctionHandler]:
    """Declare ``f(ctx: JobContext, **params) -> dict`` as the handler of ``job_type``.

    The job's ``input_params`` become keyword arguments: a missing required
    parameter or an unexpected one is reported as "Invalid parameters: …"
    (accept ``**params`` to take any).
    """
    if not isinstance(job_type, str) or not job_type:
        raise TypeError("job() needs the job type, e.g. @job('hello_world')")

    def declare(function: JobFunction) -> FunctionHandler:
        return FunctionHandler(job_type, function)

    return declare
