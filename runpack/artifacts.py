"""Stored figures: the folders runners upload, kept under ``<data_dir>/figures/<job_id>/``.

An upload is one tar archive, spooled to disk, unpacked into a fresh folder under
``figures/.incoming/`` (by :mod:`runpack.uploads`, which checks it and enforces the
limits before anything is kept), given a manifest (every file's path and size) and
renamed into place in one step, so a reader sees the old figure or the new one,
never half of one. A refused upload leaves nothing.
A figure is *complete* while every file in its manifest exists with its size: a
cached result whose figure is not complete is expired and computed again.

A figure's URL is under the public URL, or under the figure base URL when figures
have an origin of their own; a URL under either names a figure stored here.

When the disk is full or the folder cannot be written (ENOSPC, EDQUOT, EFBIG,
EROFS, EACCES, EPERM…), an upload is refused with :class:`InsufficientStorage`
(507) or :class:`StorageNotWritable` (503) naming the cause, everything it wrote
is removed and a figure already stored stays as it was: the runner tries again.

Imports neither aiohttp nor a database driver; blocking file work runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from runpack import uploads
from runpack.errors import (
    BadRequest,
    InsufficientStorage,
    NotOwned,
    RunpackError,
    StorageNotWritable,
)
from runpack.uploads import DEFAULT_MAX_RATIO, MANIFEST, check_path

if TYPE_CHECKING:
    from runpack.settings import Settings

log = logging.getLogger(__name__)

INCOMING = ".incoming"
#: Leftovers of uploads interrupted by a crash are removed at start once this old.
STALE_INCOMING_S = 3600.0

#: Content types by suffix; anything else is served as application/octet-stream.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
}
#: Zarr's metadata files (``.zmetadata`` …) are JSON; its chunks are binary.
ZARR_METADATA = frozenset({".zmetadata", ".zattrs", ".zgroup", ".zarray"})
BINARY = "application/octet-stream"

#: Write errors that mean "no room": answered 507, the runner tries again later.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: Write errors that mean "cannot write here now": answered 503.
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def storage_error(exc: OSError, doing: str) -> RunpackError | None:
    """The error to answer for a failed write of figure files, None if not a storage one."""
    if exc.errno not in NO_SPACE | NOT_WRITABLE:
        return None
    cause = f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    details = f"{cause} while {doing}; try again later"
    if exc.errno in NO_SPACE:
        return InsufficientStorage(details=details)
    return StorageNotWritable(details=details)


def figpack_urls(value: Any) -> Iterator[Any]:
    """Every value of a key named ``figpack_url``, anywhere in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "figpack_url":
                yield item
            else:
                yield from figpack_urls(item)
    elif isinstance(value, list):
        for item in value:
            yield from figpack_urls(item)


def content_type(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    if base in ZARR_METADATA:
        return "application/json"
    suffix = os.path.splitext(base)[1].lower()
    return CONTENT_TYPES.get(suffix, BINARY)


def _authority(url: str) -> tuple[str, int] | None:
    """(host, port) of an http(s) URL, the port made explicit; None if it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def is_job_id(value: str) -> bool:
    if len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class StoredFigure:
    job_id: str
    files: int
    bytes: int
    #: The folder's URL, ending in ``/``.
    base_url: str
    #: ``<base_url>index.html`` when the upload has one, else None.
    index_url: str | None


class FigureStore:
    """Figure folders of jobs on local disk, and their public URLs."""

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
        self.root = root
        main = public_url.rstrip("/")
        #: The origin of figures when it is not the public URL's, else None.
        self.figure_origin = figure_url.rstrip("/") or None
        if self.figure_origin is not None:
            if not self.figure_origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"figure_base_url must start with http:// or https://: {figure_url}"
                )
            figure_host = _authority(self.figure_origin)
            if figure_host is None or figure_host == _authority(main):
                why = "must name another host (or port) than the public URL"
                raise ValueError(f"figure_base_url {why}: {figure_url}")
        #: Where figures are handed out.
        self.prefix = (self.figure_origin or main) + "/figures/"
        #: Where a figure URL of this server may point (older results keep theirs).
        self.prefixes = tuple(dict.fromkeys((self.prefix, main + "/figures/")))
        self._main = _authority(main)
        self._main_scheme = urlsplit(main).scheme
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.max_ratio = max_ratio
        self._locks: dict[str, asyncio.Lock] = {}

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
        if not is_job_id(job_id):
            raise NotOwned()
        return self.root / job_id

    def base_url(self, job_id: str) -> str:
        return f"{self.prefix}{job_id}/"

    def job_of_url(self, url: str) -> str | None:
        """The job whose stored figure ``url`` names, if it is one of ours."""
        for prefix in self.prefixes:
            if url.startswith(prefix):
                job_id = url[len(prefix) :].split("/", 1)[0]
                return job_id if is_job_id(job_id) else None
        return None

    def moved_to_figure_origin(self, host: str | None, target: str) -> str | None:
        """The URL on the figure origin for a request of ``target`` (path and query)
        that reached the public URL's host, when figures have an origin of their own.
        Requests on any other host (the figure host itself, or a proxy's name for the
        server) are served where they are: a redirect could never loop."""
        if self.figure_origin is None or self._main is None or not host:
            return None
        if _authority(f"{self._main_scheme}://{host}") != self._main:
            return None
        return self.figure_origin + target

    def file(self, job_id: str, path: str) -> Path | None:
        """The stored file to serve for ``path`` of a job's figure, or None."""
        if not is_job_id(job_id):
            return None
        try:
            rel = check_path(path)
        except BadRequest:
            return None
        folder = self.root / job_id
        target = folder / rel
        try:
            st = target.lstat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None  # folders are not listed; links are never followed
        if not target.resolve().is_relative_to(folder.resolve()):
            return None
        return target

    # --- completeness -------------------------------------------------------------------
    async def is_complete(self, job_id: str) -> bool:
        return await asyncio.to_thread(self.is_complete_now, job_id)

    def is_complete_now(self, job_id: str) -> bool:
        """Does every file of the job's manifest still exist with its size?"""
        if not is_job_id(job_id):
            return False
        folder = self.root / job_id
        try:
            manifest = orjson.loads((folder / MANIFEST).read_bytes())
            entries = manifest["files"]
            for entry in entries:
                st = os.stat(folder / entry["path"], follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return isinstance(entries, list) and bool(entries)

    # --- removal --------------------------------------------------------------------------
    async def remove(self, job_id: str) -> bool:
        """Delete a job's figure folder; True if there was one."""
        if not is_job_id(job_id):
            return False
        folder = self.root / job_id
        if not folder.exists():
            return False
        async with self._lock(job_id):
            return await asyncio.to_thread(self._move_away_and_delete, folder)

    def _move_away_and_delete(self, folder: Path) -> bool:
        """False if there was nothing, or if the folder cannot be removed now (a
        read-only or failing disk): the job's rows are gone already, so that is
        logged, not raised, and the folder waits for ``runpack gc``."""
        try:
            incoming = self._incoming()
            trash = incoming / f"deleted-{folder.name}-{secrets.token_hex(4)}"
            os.rename(folder, trash)  # gone at once for readers, whatever rmtree takes
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cannot remove the figure folder %s: %s", folder, exc)
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def clean_incoming(self, older_than: float = STALE_INCOMING_S) -> None:
        """Remove what interrupted uploads left behind (only old entries: other
        instances sharing the folder may be receiving right now)."""
        incoming = self.root / INCOMING
        if not incoming.is_dir():
            return
        cutoff = time.time() - older_than
        for entry in incoming.iterdir():
            with contextlib.suppress(OSError):
                if entry.lstat().st_mtime < cutoff:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()

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
            await asyncio.to_thread(self._incoming)
            await uploads.spool(body, archive, self.max_bytes)
            doing = "unpacking the upload"
            files, total = await asyncio.to_thread(self._unpack, archive, staging, job_id)
            if still_allowed is not None:
                await still_allowed()
            doing = "putting the figure in place"
            async with self._lock(job_id):
                await asyncio.to_thread(self._commit, staging, job_id)
        except OSError as exc:
            refusal = storage_error(exc, doing)
            if refusal is None:
                raise
            log.warning("cannot store the figure of job %s: %s (%s)", job_id, exc, doing)
            raise refusal from None
        finally:
            await asyncio.to_thread(_remove_quietly, archive, staging)
        base = self.base_url(job_id)
        has_index = any(f["path"] == "index.html" for f in files)
        return StoredFigure(
            job_id, len(files), total, base, base + "index.html" if has_index else None
        )

    def _incoming(self) -> Path:
        incoming = self.root / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        return incoming

    def _lock(self, job_id: str) -> asyncio.Lock:
        lock = self._locks.get(job_id)
        if lock is None:
            if len(self._locks) > 1000:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[job_id] = asyncio.Lock()
        return lock

    def _unpack(
        self, archive: Path, staging: Path, job_id: str
    ) -> tuple[list[dict[str, Any]], int]:
        """Unpack the archive into ``staging`` and write its manifest there."""
        files, total = uploads.unpack(archive, staging, self.limits)
        manifest = {
            "version": 1,
            "job_id": job_id,
            "stored_at": int(time.time() * 1000),
            "total_bytes": total,
            "files": files,
        }
        (staging / MANIFEST).write_bytes(orjson.dumps(manifest))
        return files, total

    def _commit(self, staging: Path, job_id: str) -> None:
        """Put ``staging`` in place as the job's folder (an older one is replaced)."""
        final = self.root / job_id
        old = None
        if final.exists():
            old = self.root / INCOMING / f"replaced-{job_id}-{secrets.token_hex(4)}"
            os.rename(final, old)
        try:
            os.rename(staging, final)
        except OSError:
            if old is not None:  # the previous figure stays
                with contextlib.suppress(OSError):
                    os.rename(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log.info("stored the figure of job %s", job_id)


def _remove_quietly(*paths: Path) -> None:
    """Remove what an upload left; what cannot be removed now goes at the next start."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
