"""Input files uploaded for jobs, stored by content: ``<data>/inputs/<ab>/<sha256>``.

A client uploads a file's bytes (``POST /api/inputs``) and names it in a job's
parameters by its SHA-256 (``"inputs": {"data/x.txt": {"upload": "<sha256>"}}``): the
hash is part of the job's hash, so two uploads of the same bytes share a job. The
files are kept with :class:`runpack.blobs.BlobStore` under their own folder and lock,
written to ``.incoming/`` while they arrive and renamed into place whole.

A file's mtime is its last use: its upload (again), a submit naming it, a runner
fetching it. The retention pass (:mod:`runpack.retention`) removes the files unused
for ``input_ttl`` that no pending or running job names. Touching and checking happen
under the store's shared lock and the sweep under its exclusive one, so a submit that
found its file keeps it: the file is fresh, and the sweep that could remove it waits
(instances sharing the data folder share the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runpack.blobs import BlobStore, Swept, is_digest
from runpack.errors import BadRequest, InsufficientStorage, TooLarge
from runpack.figure_disk import storage_error
from runpack.settings import Settings
from runpack.uploads import write_body

INPUTS = "inputs"
INCOMING = ".incoming"
#: A partial upload left by a crash is removed by the sweep after this long (seconds).
STALE_PART = 3600.0
#: How long the store's measured total is trusted before it is measured again (seconds):
#: each new file adds its size meanwhile, so a store of many files is not walked per upload.
MEASURE_EVERY = 60.0
#: A file counts as at least this many bytes (a disk block): many tiny files fill too.
MIN_FILE_BYTES = 4096
#: How an upload is named in a job's ``inputs``, in the stored parameter text.
UPLOAD_MARK = '"upload":"'
NAMED = re.compile(r'"upload":"([0-9a-f]{64})"')


@dataclass(frozen=True, slots=True)
class Stored:
    sha256: str
    bytes: int
    #: False when the same bytes were stored already.
    created: bool


def named_uploads(params: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, sha256) of each uploaded file the ``inputs`` parameter names, if it is an
    object; BadRequest for an ``upload`` that is not a SHA-256. The rest of ``inputs``
    is the job type's to check."""
    inputs = params.get("inputs")
    if not isinstance(inputs, dict):
        return []
    named = []
    for path, entry in inputs.items():
        if not isinstance(entry, dict) or "upload" not in entry:
            continue
        digest = entry["upload"]
        if not isinstance(digest, str) or not is_digest(digest):
            raise BadRequest(
                f"input {str(path)[:200]}: upload must be the sha256 of an uploaded file "
                "(64 lowercase hex digits)"
            )
        named.append((str(path), digest))
    return named


def uploads_in(params_texts: Iterable[str]) -> set[str]:
    """The uploads named in these stored parameter texts (as JSON text: no spaces)."""
    return {digest for text in params_texts for digest in NAMED.findall(text)}


class InputStore:
    """Uploaded input files under ``root``, at most ``max_store_bytes`` in all."""

    def __init__(self, root: Path, max_bytes: int, max_store_bytes: int) -> None:
        self.root = root
        self.blobs = BlobStore(root)
        self.max_bytes = max_bytes
        self.max_store_bytes = max_store_bytes
        #: (when measured, bytes): the total as this instance last knew it.
        self._used: tuple[float, int] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> InputStore:
        return cls(
            Path(settings.data_dir) / INPUTS,
            settings.input_upload_mb * 2**20,
            settings.input_store_mb * 2**20,
        )

    def path(self, digest: str) -> Path:
        return self.blobs.path(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    # --- uploads --------------------------------------------------------------------------
    def check_length(self, length: int | None) -> None:
        if length is not None and length > self.max_bytes:
            raise self._too_large()

    async def receive(
        self, body: AsyncIterator[bytes], admit: Callable[[], Awaitable[None]] | None = None
    ) -> Stored:
        """Store the bytes of ``body`` by their SHA-256; a refused upload keeps nothing.
        ``admit`` is awaited before a new file is stored (not for bytes stored already)."""
        incoming = self.root / INCOMING
        part = incoming / f"{uuid.uuid4().hex}.part"
        try:
            await asyncio.to_thread(incoming.mkdir, parents=True, exist_ok=True)
            digest, size = await self._spool(body, part)
            if await asyncio.to_thread(self._kept, digest, size):
                return Stored(digest, size, created=False)
            if admit is not None:
                await admit()
            return await asyncio.to_thread(self._place, part, digest, size)
        except OSError as exc:
            error = storage_error(exc, "storing an input file")
            if error is None:
                raise
            raise error from None
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(part.unlink, missing_ok=True)

    async def _spool(self, body: AsyncIterator[bytes], part: Path) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = await write_body(body, part, self.max_bytes, self._too_large(), digest)
        return digest.hexdigest(), size

    def _place(self, part: Path, digest: str, size: int) -> Stored:
        with self.blobs.shared():
            if self._stored(digest, size):
                return Stored(digest, size, created=False)
            used = self._total()
            if used + max(size, MIN_FILE_BYTES) > self.max_store_bytes:
                raise InsufficientStorage(
                    "The store of uploaded input files is full",
                    details=f"{used} of {self.max_store_bytes} bytes used; files unused for "
                    "RUNPACK_INPUT_TTL are removed by the retention pass, try again later",
                )
            self.blobs.place(part, digest)
            _touch(self.path(digest))
            if self._used is not None:
                self._used = (self._used[0], self._used[1] + max(size, MIN_FILE_BYTES))
        return Stored(digest, size, created=True)

    def _kept(self, digest: str, size: int) -> bool:
        with self.blobs.shared():
            return self._stored(digest, size)

    def _stored(self, digest: str, size: int) -> bool:
        """Is the file stored whole (not cut short by a crash)? Its use is noted."""
        return self.blobs.has(digest, size) and _touch(self.path(digest))

    def _total(self) -> int:
        """The stored bytes, measured again when the last measure is old (other
        instances sharing the folder add files too; sweeps remove them)."""
        now = time.monotonic()
        if self._used is None or now - self._used[0] > MEASURE_EVERY:
            self._used = (now, self.used())
        return self._used[1]

    def used(self) -> int:
        """Bytes of every stored file, each at least a disk block."""
        total = 0
        for _, path in self.blobs.all():
            with contextlib.suppress(OSError):
                total += max(path.lstat().st_size, MIN_FILE_BYTES)
        return total

    def _too_large(self) -> TooLarge:
        return TooLarge(
            f"Upload exceeds the size limit of {self.max_bytes} bytes for an input file",
            details="RUNPACK_INPUT_UPLOAD_MB on the server",
        )

    # --- uses -----------------------------------------------------------------------------
    async def check_named(self, params: dict[str, Any]) -> None:
        """Refuse (400) a job that names an uploaded file not stored; note the use of
        those that are. Cheap for parameters without ``inputs``."""
        if "inputs" not in params:
            return
        named = named_uploads(params)
        if not named:
            return
        missing = await asyncio.to_thread(self.touch, [digest for _, digest in named])
        for path, digest in named:
            if digest in missing:
                raise BadRequest(
                    f"input {path}: no uploaded file with sha256 {digest}; "
                    "upload it first with POST /api/inputs"
                )

    def touch(self, digests: Iterable[str]) -> set[str]:
        """Note a use of each file now; the digests of those not stored."""
        with self.blobs.shared():
            return {digest for digest in digests if not _touch(self.path(digest))}

    # --- retention ------------------------------------------------------------------------
    def sweep(self, before: float, keep: Iterable[str], *, dry_run: bool = False) -> Swept:
        """Remove the files last used before ``before`` (seconds since the epoch) that are
        not in ``keep``, and partial uploads left by a crash."""
        keep = set(keep)
        count = size = 0
        with self.blobs.exclusive():
            for digest, path in self.blobs.all():
                try:
                    info = path.lstat()
                    if digest in keep or info.st_mtime >= before:
                        continue
                    if not dry_run:
                        path.unlink()
                except FileNotFoundError:
                    continue
                count += 1
                size += info.st_size
        if not dry_run:
            self._clean_incoming()
        return Swept(count, size)

    def _clean_incoming(self) -> None:
        stale = time.time() - STALE_PART
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root / INCOMING):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < stale:
                        os.unlink(entry.path)


def _touch(path: Path) -> bool:
    """Set ``path``'s mtime to now; False if it is not there."""
    now = time.time()
    try:
        os.utime(path, (now, now), follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
