"""The current version of each job type, and the versions (and the image allow list,
runpack.image_lists) each runner declared.

The statements and the store methods for :mod:`runpack.handler_versions`. A job
type's version only moves up, from the one the caller saw to a higher one, in one
conditional statement: two instances raising it at once cannot both win, and neither
overwrites a higher version with its own.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from runpack.store.dialect import Statement

Row = Sequence[Any]
Params = Mapping[str, Any]

LIST_VERSIONS = Statement("SELECT job_type, version FROM job_type_versions")
FIRST_VERSION = Statement("""
INSERT INTO job_type_versions (job_type, version, updated_at) VALUES (:job_type, :version, :now)
ON CONFLICT (job_type) DO NOTHING
""")
RAISE_VERSION = Statement("""
UPDATE job_type_versions SET version = :version, updated_at = :now
WHERE job_type = :job_type AND version = :seen
""")
SET_RUNNER_VERSIONS = Statement("UPDATE runners SET versions = :versions WHERE id = :id")
RUNNER_VERSIONS = Statement("SELECT id, versions FROM runners WHERE id {one_of[ids]}")
DECLARE_RUNNER = Statement("""
UPDATE runners SET name = :name, capabilities = :capabilities, versions = :versions,
    images = :images, last_seen = :now
WHERE id = :id
""")
SET_RUNNER_IMAGES = Statement("UPDATE runners SET images = :images WHERE id = :id")
RUNNER_IMAGES = Statement(
    "SELECT id, images FROM runners WHERE id {one_of[ids]} AND images IS NOT NULL"
)


class VersionStore(Protocol):
    """What the Store protocol (runpack.store.base) has of versions."""

    async def job_type_versions(self) -> dict[str, str]:
        """The current version of each job type that has one."""
        ...

    async def raise_job_type_version(
        self, job_type: str, seen: str | None, version: str, now: int
    ) -> bool:
        """Make ``version`` the job type's version if it still is ``seen`` (None: it has
        none yet); False if another change came first (read them again)."""
        ...

    async def set_runner_versions(self, runner_id: str, versions: Mapping[str, str]) -> None:
        """The versions the runner declares now (empty: none)."""
        ...

    async def runner_versions(self, runner_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The versions each of these runners declared (runners that declared none left
        out)."""
        ...

    async def set_runner_images(self, runner_id: str, images: Sequence[str] | None) -> None:
        """The image allow list the runner sent now (None: none)."""
        ...

    async def declare_runner(
        self,
        runner_id: str,
        name: str,
        capabilities: Sequence[str],
        versions: Mapping[str, str],
        images: Sequence[str] | None,
        now: int,
    ) -> bool:
        """What a known runner registers as now (its name, job types, versions and image
        allow list), in one statement; False if there is no such runner."""
        ...

    async def runner_images(self, runner_ids: Sequence[str]) -> dict[str, list[str]]:
        """The image allow list each of these runners sent (runners that sent none left
        out)."""
        ...


class VersionMethods:
    """The store's methods on versions (mixed into SqlStore)."""

    @abstractmethod
    async def _read(self, stmt: Statement, params: Params) -> list[Row]: ...

    @abstractmethod
    async def _write_count(self, stmt: Statement, params: Params) -> int: ...

    async def job_type_versions(self) -> dict[str, str]:
        return {job_type: version for job_type, version in await self._read(LIST_VERSIONS, {})}

    async def raise_job_type_version(
        self, job_type: str, seen: str | None, version: str, now: int
    ) -> bool:
        params = {"job_type": job_type, "version": version, "now": now}
        if seen is None:
            return await self._write_count(FIRST_VERSION, params) > 0
        return await self._write_count(RAISE_VERSION, {**params, "seen": seen}) > 0

    async def set_runner_versions(self, runner_id: str, versions: Mapping[str, str]) -> None:
        text = _versions_text(versions)
        await self._write_count(SET_RUNNER_VERSIONS, {"id": runner_id, "versions": text})

    async def runner_versions(self, runner_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        if not runner_ids:
            return {}
        rows = await self._read(RUNNER_VERSIONS, {"ids": list(runner_ids)})
        return {rid: orjson.loads(text) for rid, text in rows if text}

    async def set_runner_images(self, runner_id: str, images: Sequence[str] | None) -> None:
        text = _images_text(images)
        await self._write_count(SET_RUNNER_IMAGES, {"id": runner_id, "images": text})

    async def declare_runner(
        self,
        runner_id: str,
        name: str,
        capabilities: Sequence[str],
        versions: Mapping[str, str],
        images: Sequence[str] | None,
        now: int,
    ) -> bool:
        params = {
            "id": runner_id,
            "name": name,
            "capabilities": orjson.dumps(list(capabilities)).decode(),
            "versions": _versions_text(versions),
            "images": _images_text(images),
            "now": now,
        }
        return await self._write_count(DECLARE_RUNNER, params) > 0

    async def runner_images(self, runner_ids: Sequence[str]) -> dict[str, list[str]]:
        if not runner_ids:
            return {}
        rows = await self._read(RUNNER_IMAGES, {"ids": list(runner_ids)})
        return {rid: orjson.loads(text) for rid, text in rows}


def _versions_text(versions: Mapping[str, str]) -> str | None:
    """A runner's versions as stored: JSON, or NULL for none."""
    return orjson.dumps(dict(versions)).decode() if versions else None


def _images_text(images: Sequence[str] | None) -> str | None:
    """A runner's image allow list as stored: JSON, or NULL when it sent none."""
    return orjson.dumps(list(images)).decode() if images is not None else None
