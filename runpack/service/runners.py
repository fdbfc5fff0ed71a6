"""Runners: registration (its checks shared with the WebSocket hello), who they are,
and when they were last heard from."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence

import orjson

from runpack import protocol
from runpack.auth import hash_secret
from runpack.errors import BadRequest, RunnerNotFound
from runpack.image_lists import CONTAINER, claimable
from runpack.service.checks import is_uuid
from runpack.service.core import ServiceCore
from runpack.store import JobRow, RunnerRow
from runpack.store.base import ENV_OWNER
from runpack.store.instances import RunnerPresence, alive_since


class Runners(ServiceCore):
    """Runners as they register and act."""

    async def register_runner(
        self,
        name: object,
        capabilities: object,
        *,
        owner: str = ENV_OWNER,
        secret: str | None = None,
        versions: Mapping[str, str] | None = None,
        images: Sequence[str] | None = None,
    ) -> RunnerRow:
        """A new runner, owned by ``owner`` (see runpack.identity), with ``secret`` as its
        own if given (only its hash is kept), declaring its handlers' ``versions`` and
        the ``images`` it allows container jobs (checked by check_images)."""
        name, capabilities = check_registration(name, capabilities)
        now = self.clock()
        runner = RunnerRow(
            id=str(uuid.uuid4()),
            name=name,
            capabilities=orjson.dumps(capabilities).decode(),
            registered_at=now,
            last_seen=now,
            owner=owner,
            secret_sha256=hash_secret(secret) if secret is not None else None,
        )
        await self.store.insert_runner(runner)
        self.owners.remember(runner)
        if versions:
            await self.runner_declares(runner.id, owner, versions)
        if images is not None:
            await self.store.set_runner_images(runner.id, images)
        return runner

    async def runner_declares(
        self,
        runner_id: str,
        owner: str,
        versions: Mapping[str, str],
        images: Sequence[str] | None = None,
    ) -> None:
        """The runner's handlers are of these versions (checked by check_versions), and
        it allows container jobs these images (None: any): kept for its HTTP claims, and
        the versions raise the job types' versions that are lower if its ``owner`` may
        set versions (``version_keys``)."""
        await self.store.set_runner_versions(runner_id, versions)
        await self.store.set_runner_images(runner_id, images)
        await self.versions.declare(versions, owner)

    async def declare_runner(
        self,
        runner_id: str,
        owner: str,
        name: object,
        capabilities: object,
        versions: Mapping[str, str],
        images: Sequence[str] | None,
    ) -> bool:
        """A known runner registers again, keeping its id: from now on it is what it says
        (name, job types, versions, image allow list), for its HTTP claims as for the
        views; False (nothing changed) if there is no such runner."""
        name, capabilities = check_registration(name, capabilities)
        if not is_uuid(runner_id):
            return False
        now = self.clock()
        if not await self.store.declare_runner(
            runner_id, name, capabilities, versions, images, now
        ):
            return False
        await self.versions.declare(versions, owner)
        return True

    async def runnable_types(self, runner_id: str, job_types: list[str]) -> Collection[str]:
        """The job types asked for over HTTP that the runner may take (by the versions it
        declared when it registered), limited to the images it allows if it sent a list
        (runpack.image_lists: a claim of them takes only container jobs of those)."""
        if self.versions.any_versioned(job_types):
            declared = (await self.store.runner_versions([runner_id])).get(runner_id, {})
            job_types = self.versions.runnable(job_types, declared)
        if CONTAINER not in job_types:
            return job_types
        images = (await self.store.runner_images([runner_id])).get(runner_id)
        return claimable(frozenset(job_types), images) if images is not None else job_types

    async def get_runner(self, runner_id: str) -> RunnerRow:
        runner = await self.store.get_runner(runner_id) if is_uuid(runner_id) else None
        if runner is None:
            raise RunnerNotFound()
        return runner

    async def touch_runner(self, runner_id: str) -> None:
        """Note contact from a runner; an unknown runner must register first."""
        if not is_uuid(runner_id) or not await self.store.touch_runner(runner_id, self.clock()):
            raise RunnerNotFound(details="Register first: POST /api/runner/register")

    async def list_runners(
        self, limit: int, offset: int, after: tuple[int, str] | None = None
    ) -> list[RunnerRow]:
        """Most recently seen first; ``after`` (last_seen, id) starts past that runner."""
        if after is not None:
            return await self.store.list_runners_after(limit, offset, after)
        return await self.store.list_runners(limit, offset)

    async def runner_jobs(self, runner_id: str) -> list[JobRow]:
        return await self.store.jobs_of_runner(runner_id, 100)

    async def presence(self, runner_ids: Sequence[str]) -> dict[str, RunnerPresence]:
        """Where each of these runners is connected, on whichever live instance."""
        since = alive_since(self.clock(), self.settings.presence_interval)
        return await self.store.presence_of(runner_ids, since)

    def runner_is_active(self, runner: RunnerRow) -> bool:
        return self.clock() - runner.last_seen < self.settings.runner_active_window * 1000


def check_registration(name: object, capabilities: object) -> tuple[str, list[str]]:
    """A runner's name and job types as registered over HTTP or said in a hello;
    BadRequest (the original's message, the rule in the details) if they are not."""
    try:
        return protocol.check_registration(name, capabilities)
    except protocol.ProtocolError as exc:
        raise BadRequest(exc.error, details=exc.details) from None
