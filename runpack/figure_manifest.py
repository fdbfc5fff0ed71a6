"""A figure version: its files' paths, each naming a blob, and the version's name.

A manifest is a small JSON file, ``<figures>/manifests/<job_id>.json``, written last
and renamed into place once every blob it names is stored: a reader sees the old
version or the new one, never half of one. Its *version* is the first 16 hex digits
of the SHA-256 of its sorted (path, blob) pairs: the same files give the same
version, other files another, and a figure's URL carries it
(``/figures/<job_id>/<version>/index.html``), so files served ``immutable`` can
never change under a URL.

Figures stored before versions existed are folders, ``<figures>/<job_id>/``, with a
``.runpack-manifest.json`` listing paths and sizes; :func:`adopt_legacy` moves such
a folder into the blob store the first time it is asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from runpack.blobs import BlobStore, hash_file, is_digest
from runpack.errors import BadRequest
from runpack.uploads import MANIFEST as LEGACY_MANIFEST
from runpack.uploads import check_path

FORMAT = 2
VERSION_CHARS = 16
VERSION = re.compile(rf"[0-9a-f]{{{VERSION_CHARS}}}")


def is_version(segment: str) -> bool:
    return VERSION.fullmatch(segment) is not None


def version_of(files: dict[str, tuple[str, int]]) -> str:
    pairs = sorted((path, digest) for path, (digest, _size) in files.items())
    return hashlib.sha256(orjson.dumps(pairs)).hexdigest()[:VERSION_CHARS]


@dataclass(frozen=True, slots=True)
class Manifest:
    job_id: str
    version: str
    #: path -> (sha256, size)
    files: dict[str, tuple[str, int]]
    stored_at: int

    @property
    def total_bytes(self) -> int:
        return sum(size for _digest, size in self.files.values())

    @classmethod
    def build(cls, job_id: str, entries: list[dict[str, Any]]) -> Manifest:
        """From an upload's files (``path``, ``size``, ``sha256``)."""
        files = {e["path"]: (e["sha256"], e["size"]) for e in entries}
        return cls(job_id, version_of(files), files, int(time.time() * 1000))

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "format": FORMAT,
                "job_id": self.job_id,
                "version": self.version,
                "stored_at": self.stored_at,
                "total_bytes": self.total_bytes,
                "files": [
                    {"path": path, "sha256": digest, "size": size}
                    for path, (digest, size) in sorted(self.files.items())
                ],
            }
        )

    @classmethod
    def from_json(cls, data: bytes, job_id: str) -> Manifest | None:
        """The manifest, or None when ``data`` is not a well-formed one of this job."""
        try:
            raw = orjson.loads(data)
            if raw["format"] != FORMAT or raw["job_id"] != job_id:
                return None
            files = {
                check_path(e["path"]): (str(e["sha256"]), int(e["size"])) for e in raw["files"]
            }
            version = str(raw["version"])
            stored_at = int(raw["stored_at"])
        except (ValueError, KeyError, TypeError, BadRequest):
            return None
        if not files or not all(is_digest(d) for d, _ in files.values()):
            return None
        if version != version_of(files):
            return None
        return cls(job_id, version, files, stored_at)


def write(path: Path, manifest: Manifest) -> None:
    """Write ``manifest`` to ``path`` in one step (a temporary file, synced, renamed)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{time.monotonic_ns():x}.tmp")
    try:
        with temporary.open("wb") as out:
            out.write(manifest.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.rename(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def read_digests(path: Path) -> set[str]:
    """The blobs a manifest file names (empty if it cannot be read)."""
    try:
        raw = orjson.loads(path.read_bytes())
        return {str(e["sha256"]) for e in raw["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def adopt_legacy(
    folder: Path, job_id: str, blobs: BlobStore, manifest_path: Path, scratch: Path
) -> Manifest | None:
    """Store a figure folder of the old layout as blobs and a manifest, then remove the
    folder; None (and the folder left alone) when it is not a complete figure."""
    try:
        listed = orjson.loads((folder / LEGACY_MANIFEST).read_bytes())["files"]
        files: dict[str, tuple[str, int]] = {}
        for entry in listed:
            rel = check_path(entry["path"])
            source = folder / rel
            st = os.stat(source, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
                return None
            if not source.resolve().is_relative_to(folder.resolve()):
                return None
            files[rel] = hash_file(source)
    except (OSError, ValueError, KeyError, TypeError, BadRequest):
        return None
    if not files:
        return None
    manifest = Manifest(job_id, version_of(files), files, int(time.time() * 1000))
    scratch.mkdir(parents=True, exist_ok=True)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    with blobs.shared():
        for rel, (digest, _size) in files.items():
            blobs.link(folder / rel, digest, scratch)
        write(manifest_path, manifest)
    shutil.rmtree(folder, ignore_errors=True)
    return manifest
