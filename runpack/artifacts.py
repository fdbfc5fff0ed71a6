"""Stored figures: blobs by content, a manifest per figure, URLs that name the version.

An upload is one tar archive, spooled to disk and unpacked into a fresh folder under
``figures/.incoming/`` (by :mod:`runpack.uploads`, which checks it, enforces the
limits before anything is kept, and hashes every file as it writes it). Each file
then becomes a blob (:mod:`runpack.blobs`, ``figures/blobs/``, kept once however
many figures hold it: figpack's viewer bundle is the same in every figure), and
last the figure's manifest (:mod:`runpack.figure_manifest`,
``figures/manifests/<job_id>.json``) is renamed into place: a reader sees the old
version or the new one, never half of one, and a crash before that leaves only
blobs that nothing names, which the next sweep removes. A refused upload leaves
nothing. A figure is *complete* while every blob its manifest names exists with
its size: a cached result whose figure is not complete is expired and computed
again.

A figure's URL names its version: ``…/figures/<job_id>/<version>/index.html``. A
figure computed again with other files gets another URL; an older version's URL,
and the unversioned ``…/figures/<job_id>/…`` of results stored before versions
existed, are redirected to the current version (:meth:`FigureStore.locate`).
URLs are under the public URL, or under the figure base URL when figures have an
origin of their own; a URL under either names a figure stored here.

Removing a figure removes its manifest, then the blobs no other manifest names
(:meth:`FigureStore.remove_all`); :meth:`FigureStore.sweep` (``runpack gc`` and
the retention pass) removes every blob no manifest names.

When the disk is full or the folder cannot be written (ENOSPC, EDQUOT, EFBIG,
EROFS, EACCES, EPERM…), an upload is refused with :class:`InsufficientStorage`
(507) or :class:`StorageNotWritable` (503) naming the cause, everything it wrote
is removed and a figure already stored stays as it was: the runner tries again.

Imports neither aiohttp nor a database driver; blocking file work runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runpack import uploads
from runpack.blobs import Swept
from runpack.errors import (
    BadRequest,
    NotOwned,
)
from runpack.figure_disk import INCOMING, FigureDisk, is_job_id, storage_error
from runpack.figure_manifest import Manifest, adopt_legacy, is_version, read_digests
from runpack.figure_manifest import write as write_manifest
from runpack.figure_types import CONTENT_TYPES, content_type, figpack_urls, may_name_figures
from runpack.figure_urls import FigureUrls
from runpack.uploads import DEFAULT_MAX_RATIO, check_path

__all__ = [
    "CONTENT_TYPES",
    "INCOMING",
    "FigureStore",
    "content_type",
    "figpack_urls",
    "is_job_id",
    "may_name_figures",
    "storage_error",
]

if TYPE_CHECKING:
    from runpack.settings import Settings

log = logging.getLogger(__name__)

#: Manifests kept parsed in memory (each checked against its file on every use).
MANIFEST_CACHE = 512


@dataclass(frozen=True, slots=True)
class StoredFigure:
    job_id: str
    version: str
    files: int
    bytes: int
    #: The version's folder URL, ending in ``/``.
    base_url: str
    #: ``<base_url>index.html`` when the upload has one, else None.
    index_url: str | None


@dataclass(frozen=True, slots=True)
class Found:
    """A file of the current version: its blob, served with ``path``'s type."""

    blob: Path
    path: str


@dataclass(frozen=True, slots=True)
class Moved:
    """Another URL of the figure (a path on this origin) answers for this one."""

    target: str


class FigureStore(FigureUrls):
    """Figures of jobs on local disk, and their public URLs (:class:`FigureUrls`)."""

    def __init__(
        self,
        root: Path,
        public_url: str,
        max_bytes: int,
        max_files: int,
        *,
        figure_url: str = "",
        max_ratio: int = DEFAULT_MAX_RATIO,
    ) -> None:
        super().__init__(public_url, figure_url)
        self.root = root
        self.disk = FigureDisk(root)
        self.blobs = self.disk.blobs
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.max_ratio = max_ratio
        self._locks: dict[str, asyncio.Lock] = {}
        #: job id -> (the manifest file's identity, its manifest), most recent last.
        self._manifests: OrderedDict[str, tuple[tuple[int, int, int], Manifest]] = OrderedDict()

    @property
    def limits(self) -> uploads.Limits:
        return uploads.Limits(self.max_bytes, self.max_files, self.max_ratio)

    @classmethod
    def from_settings(cls, settings: Settings) -> FigureStore:
        """The store of a server with these settings."""
        return cls(
            Path(settings.data_dir) / "figures",
            settings.base_url,
            settings.max_upload_bytes,
            settings.max_upload_files,
            figure_url=settings.figure_base_url,
            max_ratio=settings.max_upload_ratio,
        )

    # --- names ------------------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        """Where a figure of the old layout is (a folder of files)."""
        if not is_job_id(job_id):
            raise NotOwned()
        return self.root / job_id

    # --- reading --------------------------------------------------------------------------
    async def current(self, job_id: str) -> Manifest | None:
        """The job's figure as it is now, or None. A figure of the old layout is moved
        into the blob store on the way (once)."""
        if not is_job_id(job_id):
            return None
        try:
            st = os.stat(self.disk.manifest_path(job_id))
        except OSError:
            st = None
        if st is not None:
            cached = self._manifests.get(job_id)
            if cached is not None and cached[0] == _identity(st):
                self._manifests.move_to_end(job_id)
                return cached[1]
            identity, manifest = await asyncio.to_thread(self._load, job_id)
        else:
            async with self._lock(job_id):  # one adoption of an old-layout folder at a time
                identity, manifest = await asyncio.to_thread(self._load, job_id)
        if manifest is not None and identity is not None:
            self._manifests[job_id] = (identity, manifest)
            while len(self._manifests) > MANIFEST_CACHE:
                self._manifests.popitem(last=False)
        return manifest

    def current_now(self, job_id: str) -> Manifest | None:
        """:meth:`current`, from a thread (nothing cached)."""
        return self._load(job_id)[1] if is_job_id(job_id) else None

    def _load(self, job_id: str) -> tuple[tuple[int, int, int] | None, Manifest | None]:
        """The job's manifest and its file's identity; an old-layout folder adopted."""
        path = self.disk.manifest_path(job_id)
        try:
            with path.open("rb") as source:
                identity = _identity(os.fstat(source.fileno()))
                return identity, Manifest.from_json(source.read(), job_id)
        except FileNotFoundError:
            pass
        except OSError:
            return None, None
        legacy = self.root / job_id
        if not legacy.is_dir() or legacy.is_symlink():
            return None, None
        adopted = adopt_legacy(legacy, job_id, self.blobs, path, self.disk.incoming())
        if adopted is None and path.exists():  # moved meanwhile, by another instance
            return self._load(job_id)
        if adopted is not None:
            log.info("moved the figure of job %s into the blob store", job_id)
        return None, adopted

    async def locate(self, job_id: str, path: str) -> Found | Moved | None:
        """What answers ``/figures/<job_id>/<path>``: a file of the current version; a
        redirect to the current version (from another version, from a version's bare
        name, or from an unversioned path); or nothing."""
        if path:
            try:
                check_path(path.removesuffix("/"))
            except BadRequest:
                return None
        manifest = await self.current(job_id)
        if manifest is None:
            return None
        here = f"/figures/{job_id}/{manifest.version}/"
        first, slash, rest = path.partition("/")
        if not is_version(first):
            return Moved(here + (path or "index.html"))  # unversioned: stored before versions
        if first != manifest.version:
            return Moved(here + (rest or "index.html"))
        if not slash:
            return Moved(here + "index.html")
        rest = rest or "index.html"
        entry = manifest.files.get(rest)
        if entry is None:
            return None
        return Found(self.blobs.path(entry[0]), rest)

    # --- completeness -------------------------------------------------------------------
    async def is_complete(self, job_id: str) -> bool:
        return await asyncio.to_thread(self.is_complete_now, job_id)

    def is_complete_now(self, job_id: str) -> bool:
        """Does every blob of the job's manifest exist with its size?"""
        manifest = self.current_now(job_id)
        if manifest is None:
            return False
        return all(self.blobs.has(digest, size) for digest, size in manifest.files.values())

    # --- removal --------------------------------------------------------------------------
    async def remove(self, job_id: str) -> bool:
        """Delete a job's figure, then its blobs that no other figure names; True if
        there was one."""
        return bool(await self.remove_all([job_id]))

    async def remove_all(self, job_ids: Sequence[str]) -> int:
        """Delete these jobs' figures, then their blobs that no other figure names;
        how many there were."""
        removed = 0
        digests: set[str] = set()
        for job_id in job_ids:
            if not is_job_id(job_id):
                continue
            async with self._lock(job_id):
                gone, names = await asyncio.to_thread(self.disk.drop, job_id)
            self._manifests.pop(job_id, None)
            removed += gone
            digests |= names
        if digests:
            await asyncio.to_thread(self.disk.free, digests)
        return removed

    async def drop(self, job_id: str) -> bool:
        """Delete a job's figure, leaving its blobs for the next :meth:`sweep`."""
        if not is_job_id(job_id):
            return False
        async with self._lock(job_id):
            gone, _ = await asyncio.to_thread(self.disk.drop, job_id)
        self._manifests.pop(job_id, None)
        return gone

    async def sweep(self, *, dry_run: bool = False, without: Sequence[str] = ()) -> Swept:
        """Remove every blob no figure names (:meth:`FigureDisk.sweep`)."""
        return await asyncio.to_thread(self.disk.sweep, dry_run=dry_run, without=without)

    def clean_incoming(self) -> None:
        self.disk.clean_incoming()

    # --- upload ---------------------------------------------------------------------------
    async def receive(
        self,
        job_id: str,
        body: AsyncIterator[bytes],
        still_allowed: Callable[[], Awaitable[None]] | None = None,
    ) -> StoredFigure:
        """Store a tar archive as the job's figure, replacing any previous one.

        ``still_allowed`` is awaited after unpacking, just before the figure is
        put in place; it raises to refuse (the job changed hands meanwhile).
        """
        self.folder(job_id)  # validates the id
        token = secrets.token_hex(8)
        archive = self.root / INCOMING / f"{job_id}-{token}.tar"
        staging = self.root / INCOMING / f"{job_id}-{token}"
        doing = "receiving the upload"
        try:
            await asyncio.to_thread(self.disk.incoming)
            await uploads.spool(body, archive, self.max_bytes)
            doing = "unpacking the upload"
            files, total = await asyncio.to_thread(uploads.unpack, archive, staging, self.limits)
            if still_allowed is not None:
                await still_allowed()
            doing = "putting the figure in place"
            async with self._lock(job_id):
                manifest, replaced = await asyncio.to_thread(self._commit, staging, files, job_id)
            if replaced:
                await asyncio.to_thread(self.disk.free, replaced)
        except OSError as exc:
            refusal = storage_error(exc, doing)
            if refusal is None:
                raise
            log.warning("cannot store the figure of job %s: %s (%s)", job_id, exc, doing)
            raise refusal from None
        finally:
            await asyncio.to_thread(_remove_quietly, archive, staging)
        base = self.base_url(job_id, manifest.version)
        has_index = "index.html" in manifest.files
        return StoredFigure(
            job_id,
            manifest.version,
            len(files),
            total,
            base,
            base + "index.html" if has_index else None,
        )

    def _lock(self, job_id: str) -> asyncio.Lock:
        lock = self._locks.get(job_id)
        if lock is None:
            if len(self._locks) > 1000:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[job_id] = asyncio.Lock()
        return lock

    def _commit(
        self, staging: Path, files: list[dict[str, Any]], job_id: str
    ) -> tuple[Manifest, set[str]]:
        """Move the staged files into the blob store, then put the manifest in place
        (replacing the job's previous one). The manifest, and the blobs the previous
        version named that this one does not."""
        manifest = Manifest.build(job_id, files)
        path = self.disk.manifest_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = read_digests(path)
        with self.blobs.shared():
            for entry in files:
                self.blobs.place(staging / entry["path"], entry["sha256"])
            write_manifest(path, manifest)
        legacy = self.root / job_id
        if legacy.exists():  # a figure of the old layout, replaced
            self.disk.move_away_and_delete(legacy)
        log.info("stored the figure of job %s, version %s", job_id, manifest.version)
        return manifest, previous - {digest for digest, _ in manifest.files.values()}


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _remove_quietly(*paths: Path) -> None:
    """Remove what an upload left; what cannot be removed now goes at the next start."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
