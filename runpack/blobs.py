"""Figure files stored once by content: ``<figures>/blobs/<ab>/<sha256>``.

A blob is a file named by the SHA-256 of its bytes, written once and never changed:
the viewer bundle that every figpack figure carries is kept once, whatever the number
of figures naming it. Figures name their blobs in manifests (:mod:`runpack.artifacts`).

A blob arrives as a complete file beside the store (an upload's staging folder on the
same disk) and is renamed into place, so a reader sees all of a blob or none of it.
A blob that is already there is kept as it is (same name, same bytes): its mtime, and
the ETag and Last-Modified served from it, stay stable. Blobs are not synced one by
one (a figure has many): one that a power cut left shorter than its bytes is
replaced by the next upload of those bytes, since its size tells it apart.

Sweeping (dropping blobs no manifest names) and committing a manifest exclude each
other through a lock file (``blobs/.lock``, ``flock``): uploads take it shared from
their first blob to their manifest, a sweep exclusively from reading the manifests to
its last delete. A sweep therefore never removes a blob that an upload has just
found present and is about to name; a crash in between releases the lock, and what
it placed unnamed is swept later. Several instances sharing the data folder share
the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

BLOBS = "blobs"
LOCK = ".lock"
READ_CHUNK = 1024 * 1024
DIGEST = re.compile(r"[0-9a-f]{64}")


def is_digest(value: str) -> bool:
    return DIGEST.fullmatch(value) is not None


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@dataclass(frozen=True, slots=True)
class Swept:
    """What a sweep removed, or with ``dry_run`` would remove."""

    blobs: int = 0
    bytes: int = 0


class BlobStore:
    """Content-addressed files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def has(self, digest: str, size: int) -> bool:
        """Is the blob there, with this size?"""
        try:
            st = os.stat(self.path(digest), follow_symlinks=False)
        except OSError:
            return False
        return st.st_size == size

    def place(self, source: Path, digest: str) -> None:
        """Move a complete file named by its ``digest`` into the store (dropped if the
        blob is there already, whole). Call under :meth:`shared`."""
        target = self.path(digest)
        size = source.stat().st_size
        if self.has(digest, size):
            source.unlink()
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(source, 0o444)
        if target.exists():  # cut short by a crash: these bytes take its place
            os.rename(source, target)
            return
        try:
            os.link(source, target)  # never replaces a blob placed meanwhile
        except FileExistsError:
            pass
        except OSError:  # a disk without hard links
            os.rename(source, target)
            return
        source.unlink()

    def link(self, source: Path, digest: str, scratch: Path) -> None:
        """Add a blob with the bytes of ``source``, which stays (a hard link where the
        disk allows it, else a copy made in ``scratch``). Call under :meth:`shared`."""
        target = self.path(digest)
        if self.has(digest, source.stat().st_size):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = scratch / f"blob-{digest}-{os.getpid()}-{id(source):x}.tmp"
        try:
            try:
                os.link(source, temporary)
            except OSError:
                with source.open("rb") as src, temporary.open("wb") as out:
                    while chunk := src.read(READ_CHUNK):
                        out.write(chunk)
            os.chmod(temporary, 0o444)
            os.rename(temporary, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()

    # --- the lock between uploads and sweeps ----------------------------------------------
    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._locked(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._locked(fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # releases the lock

    # --- sweeping -------------------------------------------------------------------------
    def all(self) -> Iterator[tuple[str, Path]]:
        """(digest, path) of every blob."""
        try:
            shards = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for shard in shards:
            if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                if is_digest(entry.name) and entry.name.startswith(shard.name):
                    yield entry.name, Path(entry.path)

    def sweep(self, referenced: Iterable[str], *, dry_run: bool = False) -> Swept:
        """Remove every blob not in ``referenced``; call under :meth:`exclusive`."""
        keep = set(referenced)
        count = size = 0
        for digest, path in self.all():
            if digest in keep:
                continue
            try:
                size += path.lstat().st_size
                if not dry_run:
                    path.unlink()
            except FileNotFoundError:
                continue
            count += 1
        return Swept(count, size)

    def remove(self, digests: Iterable[str]) -> Swept:
        """Remove these blobs; call under :meth:`exclusive`."""
        count = size = 0
        for digest in digests:
            path = self.path(digest)
            try:
                size += path.lstat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            count += 1
        return Swept(count, size)
