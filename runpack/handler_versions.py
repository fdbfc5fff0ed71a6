"""The current version of each job type, which enters its job hash, as every instance
sees it (docs/runners.md, "Handler versions").

A job type's version is the operator's (``job_type_versions``) when the setting names
the type; otherwise the highest version that its runners' handlers declared, in
natural order (runpack.jobtypes.version_order), kept in the database so that every
instance hashes the same job the same way. It only moves up by itself: a rolling
upgrade moves new submits to the new version as soon as one runner of it registers;
an operator goes back with the setting.

A runner takes a job type's jobs only if it declared that type's current version (a
runner that declares none of a type whose version its runners declared does not take
them; one that declares none of a type whose version the operator set does), so a
result keyed by a version is computed by a handler of that version.

An instance learns another's change with its event at once, and by reading the table
every ``presence_interval`` seconds at the latest (an event may be lost while the
database connection is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from runpack.errors import RunpackError
from runpack.eventloop import cancel_and_wait
from runpack.image_lists import claimable
from runpack.jobtypes import JobTypeVersions, version_order
from runpack.notify import EventKind, ServerEvent
from runpack.store.base import ENV_OWNER

if TYPE_CHECKING:
    from runpack.hub import Hub
    from runpack.notify import Notifier
    from runpack.settings import Settings
    from runpack.store import Store

log = logging.getLogger(__name__)


def newer(version: str, than: str | None) -> bool:
    return than is None or version_order(version) > version_order(than)


class HandlerVersions:
    """The version of each job type: the operator's, else its runners' highest."""

    def __init__(
        self, operator: JobTypeVersions | None = None, trusted: Iterable[str] = (ENV_OWNER,)
    ) -> None:
        self.operator = operator or JobTypeVersions()
        #: The owners (runpack.identity) whose runners' declared versions count.
        self.trusted = frozenset(trusted)
        #: What runners declared, as last read from the database.
        self.declared: dict[str, str] = {}
        #: Counts the changes (runpack.api.job_requests forgets what it hashed before).
        self.generation = 0
        self.store: Store | None = None
        self.hub: Hub | None = None
        self._notifier: Notifier | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> HandlerVersions:
        trusted = (key.strip() for key in settings.version_keys.split(","))
        return cls(JobTypeVersions.parse(settings.job_type_versions), filter(None, trusted))

    # --- the rule ----------------------------------------------------------------------
    def version(self, job_type: str) -> str | None:
        """The job type's current version (None: it has none, hashed as the original)."""
        return self.operator.version(job_type) or self.declared.get(job_type)

    def may_run(self, job_type: str, declared: str | None) -> bool:
        """Whether a runner that declared ``declared`` of ``job_type`` takes its jobs."""
        current = self.version(job_type)
        if declared is None:
            return current is None or self.operator.version(job_type) is not None
        return current is None or declared == current

    def eligible(self, job_types: frozenset[str], versions: Mapping[str, str]) -> frozenset[str]:
        """The job types of ``job_types`` that a runner declaring ``versions`` takes."""
        if not versions and not self.declared and not self.operator.rules:
            return job_types
        kept = frozenset(t for t in job_types if self.may_run(t, versions.get(t)))
        return job_types if len(kept) == len(job_types) else kept

    def runnable(self, job_types: Iterable[str], versions: Mapping[str, str]) -> list[str]:
        """``job_types`` (a list asked for over HTTP) less those the runner may not take."""
        return [t for t in job_types if self.may_run(t, versions.get(t))]

    def any_versioned(self, job_types: Iterable[str]) -> bool:
        return any(self.version(t) is not None for t in job_types)

    # --- changes -----------------------------------------------------------------------
    async def declare(self, versions: Mapping[str, str], owner: str) -> None:
        """A runner of ``owner`` declares these versions: raise each job type's that is
        lower, if its owner's runners may set versions (``version_keys``)."""
        if owner not in self.trusted:
            return
        changed = False
        for job_type, version in versions.items():
            while newer(version, self.declared.get(job_type)) and self.store is not None:
                seen = self.declared.get(job_type)
                now = int(time.time() * 1000)
                if await self.store.raise_job_type_version(job_type, seen, version, now):
                    self.declared[job_type] = version
                    self._changed()
                    changed = True
                    log.info("job type %s: version %s (was %s)", job_type, version, seen)
                else:  # another instance changed it first: see what it is now
                    await self.refresh()
        if changed and self._notifier is not None:  # the other instances read them again
            self._notifier.publish(ServerEvent(EventKind.JOB_TYPE_VERSIONS))

    async def refresh(self) -> None:
        """Read the versions again (another instance may have raised one)."""
        if self.store is None:
            return
        versions = await self.store.job_type_versions()
        if versions != self.declared:
            self.declared = versions
            self._changed()

    def _changed(self) -> None:
        """Submits hash by the new versions from now on, and runners take jobs by them."""
        self.generation += 1
        hub = self.hub
        if hub is None:
            return
        moved = False
        for conn in hub.conns.values():
            eligible = self.eligible(conn.job_types, conn.versions)
            if hub.regroup(conn, claimable(eligible, conn.images)):
                moved = True
        if moved:
            hub.wake()

    # --- lifecycle (runpack.app) -------------------------------------------------------
    async def start(self, store: Store, notifier: Notifier, hub: Hub, interval: float) -> None:
        self.store, self._notifier, self.hub = store, notifier, hub
        await self.refresh()
        self._unsubscribe = notifier.subscribe(
            self._on_event, [EventKind.JOB_TYPE_VERSIONS, EventKind.RESYNC]
        )
        self._task = asyncio.create_task(self._run(interval), name="runpack-versions")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        await cancel_and_wait([self._task])
        self.hub = None

    def _on_event(self, event: ServerEvent) -> None:
        theirs = event.origin is not None and event.type is EventKind.JOB_TYPE_VERSIONS
        if theirs or event.type is EventKind.RESYNC:
            self._wake.set()

    async def _run(self, interval: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh()
            except RunpackError as exc:
                log.warning("cannot read the job types' versions: %s", exc.message)
            except Exception:  # the next round tries again
                log.exception("reading the job types' versions failed")
