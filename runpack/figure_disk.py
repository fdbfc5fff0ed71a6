"""The figures folder on disk: which figures it holds, and removing them and their blobs.

``<data_dir>/figures/`` holds ``blobs/`` (:mod:`runpack.blobs`), ``manifests/``
(one ``<job_id>.json`` per figure, :mod:`runpack.figure_manifest`), ``.incoming/``
(uploads being received, and what was removed but not yet deleted) and, from
before versions existed, figure folders named by job id.

Removing a figure removes its manifest (or old folder) at once; its blobs go when
no manifest names them: :meth:`FigureDisk.free` checks the blobs of the figures
just removed, :meth:`FigureDisk.sweep` every blob (what a crashed upload left).
Both hold the blob store's lock exclusively, so no upload names a blob meanwhile.
A write that fails for lack of room or permission becomes a clear 507 or 503
(:func:`storage_error`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from runpack.blobs import BLOBS, BlobStore, Swept
from runpack.errors import InsufficientStorage, RunpackError, StorageNotWritable
from runpack.figure_manifest import read_digests

log = logging.getLogger(__name__)

INCOMING = ".incoming"
MANIFESTS = "manifests"
#: Leftovers of uploads interrupted by a crash are removed at start once this old.
STALE_INCOMING_S = 3600.0


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


def is_job_id(value: str) -> bool:
    if len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


class FigureDisk:
    """The figures folder: manifests, blobs and folders of the old layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root / BLOBS)

    def manifest_path(self, job_id: str) -> Path:
        return self.root / MANIFESTS / f"{job_id}.json"

    def incoming(self) -> Path:
        incoming = self.root / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        return incoming

    def manifest_files(self) -> list[Path]:
        try:
            entries = list(os.scandir(self.root / MANIFESTS))
        except FileNotFoundError:
            return []
        return [
            Path(e.path)
            for e in entries
            if e.name.endswith(".json") and is_job_id(e.name.removesuffix(".json"))
        ]

    def stored(self) -> list[tuple[str, int]]:
        """(job id, mtime in ms) of every stored figure, of either layout."""
        found: dict[str, int] = {}
        for path in self.manifest_files():
            with contextlib.suppress(OSError):
                found[path.stem] = int(path.stat().st_mtime * 1000)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if not is_job_id(entry.name) or not entry.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(OSError):
                    mtime = int(entry.stat(follow_symlinks=False).st_mtime * 1000)
                    found[entry.name] = max(found.get(entry.name, 0), mtime)
        return sorted(found.items())

    def has(self, job_id: str) -> bool:
        """Is a figure of this job stored, in either layout?"""
        if not is_job_id(job_id):
            return False
        legacy = self.root / job_id
        return self.manifest_path(job_id).exists() or (legacy.is_dir() and not legacy.is_symlink())

    # --- removing -------------------------------------------------------------------------
    def drop(self, job_id: str) -> tuple[bool, set[str]]:
        """Remove a job's manifest and old-layout folder: (was there one, the blobs
        its manifest named). The blobs stay."""
        path = self.manifest_path(job_id)
        names = read_digests(path)
        gone = False
        try:
            path.unlink()
            gone = True
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the figure manifest %s: %s", path, exc)
        legacy = self.root / job_id
        if legacy.exists() and self.move_away_and_delete(legacy):
            gone = True
        return gone, names

    def free(self, candidates: set[str]) -> Swept:
        """Remove those of these blobs that no manifest names."""
        if not candidates:
            return Swept()
        with self.blobs.exclusive():
            for path in self.manifest_files():
                candidates = candidates - read_digests(path)
                if not candidates:
                    return Swept()
            return self.blobs.remove(candidates)

    def sweep(self, *, dry_run: bool = False, without: Sequence[str] = ()) -> Swept:
        """Remove every blob that no manifest names (with ``dry_run``, count them, as
        if the manifests of the jobs ``without`` were gone already)."""
        skip = {self.manifest_path(job_id) for job_id in without}
        with self.blobs.exclusive():
            named: set[str] = set()
            for path in self.manifest_files():
                if path not in skip:
                    named |= read_digests(path)
            return self.blobs.sweep(named, dry_run=dry_run)

    def legacy_bytes(self, job_id: str) -> int:
        """The bytes of a job's figure folder of the old layout (0 if none)."""
        folder = self.root / job_id
        if not is_job_id(job_id) or not folder.is_dir() or folder.is_symlink():
            return 0
        total = 0
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                with contextlib.suppress(OSError):  # gone meanwhile
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    def move_away_and_delete(self, folder: Path) -> bool:
        """False if there was nothing, or if the folder cannot be removed now (a
        read-only or failing disk): the job's rows are gone already, so that is
        logged, not raised, and the folder waits for ``runpack gc``."""
        try:
            trash = self.incoming() / f"deleted-{folder.name}-{secrets.token_hex(4)}"
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
