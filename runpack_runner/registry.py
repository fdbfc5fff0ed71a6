"""Handler discovery through the ``runpack.handlers`` entry-point group.

Any installed package adds job types by declaring, in its ``pyproject.toml``::

    [project.entry-points."runpack.handlers"]
    my_job = "my_package.jobs:MyJob"        # a JobHandler subclass, or a @job function

The entry point's name is the job type. Loading an entry point imports its
module, so handler modules keep their heavy imports inside the handler.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

from runpack.protocol import HANDLER_ENTRY_POINT_GROUP, ProtocolError, check_versions
from runpack_runner.handler import JobHandler

log = logging.getLogger(__name__)


class UnknownJobTypes(ValueError):
    """Job types asked for that no installed handler provides."""


def installed(group: str = HANDLER_ENTRY_POINT_GROUP) -> dict[str, EntryPoint]:
    """Job type -> entry point, without importing anything."""
    return {ep.name: ep for ep in entry_points(group=group)}


def as_handler(job_type: str, obj: object) -> JobHandler:
    """An entry point's object as a handler instance (a class is instantiated)."""
    if isinstance(obj, type) and issubclass(obj, JobHandler):
        handler = obj()
    elif isinstance(obj, JobHandler):
        handler = obj
    else:
        raise TypeError(f"{job_type}: {obj!r} is neither a JobHandler subclass nor a @job function")
    if handler.version is not None:
        try:  # as the server checks it: a handler it would refuse is left out here
            check_versions({job_type: handler.version}, [job_type])
        except ProtocolError as exc:
            why = f"{job_type}: {handler!r} declares a bad version: {exc.details}"
            raise TypeError(why) from None
    if handler.job_type and handler.job_type != job_type:
        log.warning(
            "handler %r declares job_type %r but is installed as %r; using %r",
            handler,
            handler.job_type,
            job_type,
            job_type,
        )
    return handler


class Registry:
    """The job types this runner runs, each with its handler."""

    def __init__(self, handlers: Mapping[str, JobHandler]) -> None:
        self._handlers = dict(handlers)

    @classmethod
    def discover(cls, only: Iterable[str] = (), group: str = HANDLER_ENTRY_POINT_GROUP) -> Registry:
        """Load installed handlers (all, or only these types); skip broken ones with a log."""
        found = installed(group)
        wanted = list(dict.fromkeys(only))
        missing = [t for t in wanted if t not in found]
        if missing:
            raise UnknownJobTypes(
                f"no installed handler for: {', '.join(missing)} "
                f"(installed: {', '.join(sorted(found)) or 'none'})"
            )
        handlers: dict[str, JobHandler] = {}
        unavailable: dict[str, list[str]] = {}  # why → the job types it keeps out
        for job_type in wanted or sorted(found):
            try:
                handlers[job_type] = as_handler(job_type, found[job_type].load())
            except ImportError as exc:  # an optional dependency is not installed
                if wanted:  # asked for by name: a problem
                    log.warning("job type %r is not available: %s", job_type, exc)
                else:  # an extra not installed: one line says which types it would add
                    unavailable.setdefault(str(exc), []).append(job_type)
            except Exception:
                log.exception("cannot load the handler of %r (%s)", job_type, found[job_type].value)
        for why, job_types in unavailable.items():
            log.info("job types not installed: %s (%s)", ", ".join(job_types), why)
        return cls(handlers)

    def configure(self, settings: object) -> None:
        """Hand the runner's settings to each handler that takes them: one with a
        ``configure(settings)`` method (the container job type reads its limits there)."""
        for job_type, handler in list(self._handlers.items()):
            configure = getattr(handler, "configure", None)
            if callable(configure):
                try:
                    configure(settings)
                except Exception:
                    log.exception("cannot configure the handler of %r: left out", job_type)
                    del self._handlers[job_type]

    def sweep(self, runner_id: str) -> None:
        """At the runner's start, before it takes a job: let each handler with a
        ``sweep(runner_id)`` method remove what an earlier run of this runner left
        (the container job type removes its containers). Blocking: call it in a thread."""
        for job_type, handler in self._handlers.items():
            sweep = getattr(handler, "sweep", None)
            if callable(sweep):
                try:
                    sweep(runner_id)
                except Exception as exc:
                    log.warning("%s: cannot remove what an earlier run left: %s", job_type, exc)

    @property
    def job_types(self) -> list[str]:
        return sorted(self._handlers)

    def versions(self) -> dict[str, str]:
        """The versions its handlers declare, by job type (those that declare one)."""
        return {t: h.version for t, h in sorted(self._handlers.items()) if h.version is not None}

    def images(self) -> list[str] | None:
        """The image allow list it sends (the container job type's, if it has one; see
        runpack_runner.container_images.advertised). Blocking: call it in a thread."""
        handler = self._handlers.get("container")
        advertised = getattr(handler, "advertised_images", None)
        return advertised() if callable(advertised) else None

    def isolated_modules(self) -> list[str]:
        """What the fork server of the jobs' processes imports: the modules of the
        handlers that run in processes of their own, and those they preload (the
        ones that can be found)."""
        handlers = [h for h in self._handlers.values() if not h.in_process]
        modules = [m for h in handlers for m in h.preload if _findable(m)]
        modules += sorted({getattr(h, "function", h).__module__ for h in handlers})
        return list(dict.fromkeys(modules))

    def get(self, job_type: str) -> JobHandler | None:
        return self._handlers.get(job_type)

    def __contains__(self, job_type: object) -> bool:
        return job_type in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
