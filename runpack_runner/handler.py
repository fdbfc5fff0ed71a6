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
(see :mod:`runpack_runner.registry`). The runner runs each job in a process of
its own (see :mod:`runpack_runner.isolation`), so the handler object must be
importable by name (a module-level class or ``@job`` function); a handler that is
trusted and instant declares ``in_process = True`` and runs in a worker thread of
the runner instead. Raising ``ValueError`` reports "Invalid parameters: …". Heavy
imports belong inside ``execute`` (or the function), so that discovering handlers
stays cheap.

A handler may declare a ``version`` (a string such as ``"2"``): change it when its
results change, and results of the old version are not served for new submits (the
server keys them by the job type's current version; docs/runners.md). None: results
are keyed as in the original.

Each job type also declares its limits: ``time_limit`` (seconds, None for none;
a submitter may ask for less, and the runner's ``RUNPACK_JOB_TIMEOUT`` caps it) and
``memory_limit`` (MiB for its process; None for the runner's
``RUNPACK_JOB_MEMORY_LIMIT``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pickle
from collections.abc import Callable
from typing import Any, ClassVar

from runpack_runner.context import JobContext

#: Called as ``heartbeat_callback(progress_current=…, progress_total=…, console_output=…)``,
#: every argument optional (the runner passes the job's :class:`JobContext`).
HeartbeatCallback = Callable[..., None]


#: A job type's time limit when it declares none: an hour.
DEFAULT_TIME_LIMIT = 3600.0


class JobHandler:
    """Base class of a job type; subclasses set ``job_type`` and implement ``execute``."""

    job_type: ClassVar[str] = ""
    #: Run in a worker thread of the runner's own process, not a process of its own:
    #: only for handlers that are trusted and return at once (no limits but time).
    in_process: bool = False
    #: Seconds a run may take (None: no limit of its own).
    time_limit: float | None = DEFAULT_TIME_LIMIT
    #: MiB its process may use (None: the runner's ``job_memory_limit``).
    memory_limit: int | None = None
    #: Modules its runs import (heavy ones: numpy, h5py…), imported once by the fork
    #: server that the jobs' processes start from, so that no run pays for them.
    preload: tuple[str, ...] = ()
    #: The version of its results (None: none; docs/runners.md, "Handler versions").
    version: str | None = None

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

    def __init__(
        self,
        job_type: str,
        function: JobFunction,
        *,
        in_process: bool = False,
        time_limit: float | None = DEFAULT_TIME_LIMIT,
        memory_limit: int | None = None,
        preload: tuple[str, ...] = (),
        version: str | None = None,
    ) -> None:
        self.job_type = job_type  # type: ignore[misc]  # per instance, not per class
        self.version = version
        self.in_process = in_process
        self.time_limit = time_limit
        self.memory_limit = memory_limit
        self.preload = tuple(preload)
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

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by name (for the job's process): the module attribute ``@job`` made."""
        if "<locals>" in self.function.__qualname__:
            raise pickle.PicklingError(
                f"{self!r} cannot run in a process of its own: it is not at a module's top "
                "level (or declare it in_process=True)"
            )
        return (_by_name, (self.function.__module__, self.function.__qualname__))


def _by_name(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


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


def job(
    job_type: str,
    *,
    in_process: bool = False,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
    memory_limit: int | None = None,
    preload: tuple[str, ...] = (),
    version: str | None = None,
) -> Callable[[JobFunction], FunctionHandler]:
    """Declare ``f(ctx: JobContext, **params) -> dict`` as the handler of ``job_type``.

    The job's ``input_params`` become keyword arguments: a missing required
    parameter or an unexpected one is reported as "Invalid parameters: …"
    (accept ``**params`` to take any). ``in_process``, ``time_limit``,
    ``memory_limit``, ``preload`` and ``version`` are the attributes of :class:`JobHandler`.
    """
    if not isinstance(job_type, str) or not job_type:
        raise TypeError("job() needs the job type, e.g. @job('hello_world')")
    if version is not None and not isinstance(version, str):
        raise TypeError(f"job({job_type!r}): version must be a string, e.g. version='2'")

    def declare(function: JobFunction) -> FunctionHandler:
        return FunctionHandler(
            job_type,
            function,
            in_process=in_process,
            time_limit=time_limit,
            memory_limit=memory_limit,
            preload=preload,
            version=version,
        )

    return declare
