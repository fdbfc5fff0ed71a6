"""Receiving an uploaded figure archive: one tar archive (plain, or compressed with
gzip, bzip2 or xz) spooled to disk, then unpacked into a staging folder once the
whole archive has passed every check, so a refused upload writes nothing.

The archive is read twice. The first pass reads every header: names must be plain
relative paths, members regular files or folders, and the limits hold (the bytes of
the files, the entries: every member of the archive, folders included, and every
folder a path creates, and how much the archive may grow when decompressed: a ratio
of the bytes sent, so a small gzip of zeros is refused long before it fills the
disk). The second pass writes the files. Both read through :class:`_Unpacked`, which
stops a decompression bomb at the ratio, not at the disk's end.
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import errno
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from runpack.errors import BadRequest, TooLarge

#: Written beside the files of every stored figure; never uploaded, never served.
MANIFEST = ".runpack-manifest.json"
MAX_PATH_CHARS = 1024
MAX_NAME_BYTES = 255
WRITE_BUFFER = 1024 * 1024
#: An archive may always unpack to this much, whatever its ratio: tar pads even a
#: tiny archive to 10 KiB of mostly zeros, which compress to almost nothing.
MIN_UNPACKED_LIMIT = 1024 * 1024
DEFAULT_MAX_RATIO = 100
#: Compressed archives, by their first bytes, and how to read them.
COMPRESSED: tuple[tuple[bytes, Callable[[IO[bytes]], io.BufferedIOBase]], ...] = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one upload may hold."""

    max_bytes: int
    max_files: int
    max_ratio: int = DEFAULT_MAX_RATIO


def check_path(path: str) -> str:
    """``path`` if it is a plain relative path inside a figure folder; BadRequest if not."""

    def bad(why: str) -> BadRequest:
        return BadRequest("Invalid file path", details=f"{path[:200]!r}: {why}")

    if not path:
        raise bad("empty")
    if len(path) > MAX_PATH_CHARS:
        raise bad(f"longer than {MAX_PATH_CHARS} characters")
    if "\x00" in path:
        raise bad("contains NUL")
    if "\\" in path:
        raise bad("contains a backslash")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise bad("contains control characters")
    if path.startswith("/"):
        raise bad("absolute")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise bad("empty, '.' or '..' segment")
        if len(part.encode()) > MAX_NAME_BYTES:
            raise bad(f"a name longer than {MAX_NAME_BYTES} bytes")
    if path == MANIFEST:
        raise bad("reserved name")
    return path


async def spool(body: AsyncIterator[bytes], archive: Path, max_bytes: int) -> None:
    """Write the request body to ``archive``, refusing more than max_bytes."""
    too_large = TooLarge(f"Upload exceeds size limit of {max_bytes} bytes")
    if await write_body(body, archive, max_bytes, too_large) == 0:
        raise BadRequest("The upload is empty", details="send a tar archive of the folder")


async def write_body(
    body: AsyncIterator[bytes],
    path: Path,
    max_bytes: int,
    too_large: Exception,
    digest: Any = None,
) -> int:
    """Write a request body to ``path`` in large writes, raising ``too_large`` past
    ``max_bytes``; its size. ``digest`` (a hashlib object), if given, sees every byte."""
    size = 0
    buffer: list[bytes] = []
    buffered = 0
    out = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in body:
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            if digest is not None:
                digest.update(chunk)
            buffer.append(chunk)
            buffered += len(chunk)
            if buffered >= WRITE_BUFFER:
                await asyncio.to_thread(out.write, b"".join(buffer))
                buffer, buffered = [], 0
        if buffer:
            await asyncio.to_thread(out.write, b"".join(buffer))
    finally:
        await asyncio.to_thread(out.close)
    return size


def unpack(archive: Path, staging: Path, limits: Limits) -> tuple[list[dict[str, Any]], int]:
    """Unpack regular files and folders into ``staging``, once the whole archive has
    passed every check: a refused upload writes nothing. The files (path, size and
    SHA-256) and their total bytes."""
    sent = archive.stat().st_size
    limit = max(sent * limits.max_ratio, MIN_UNPACKED_LIMIT)
    plan = _plan(archive, limits, limit, sent)
    files: list[dict[str, Any]] = []
    total = 0
    staging.mkdir()
    with _tar(archive, limit, sent, limits.max_ratio) as tar:
        for member, step in zip(tar, plan, strict=False):
            if step is None:
                continue
            rel, folder = step
            if member.isdir():
                _mkdirs(staging, rel)
                continue
            if folder:
                _mkdirs(staging, folder)
            source = tar.extractfile(member)
            if source is None:
                raise BadRequest("Unreadable file in the upload", details=rel)
            digest = _write_new(staging / rel, source, member.size)
            files.append({"path": rel, "size": member.size, "sha256": digest})
            total += member.size
    return files, total


def _plan(archive: Path, limits: Limits, limit: int, sent: int) -> list[tuple[str, str] | None]:
    """Read every header of the archive, checking names, kinds, sizes and counts;
    for each member, its path and parent folder, or None to skip it."""
    plan: list[tuple[str, str] | None] = []
    seen: set[str] = set()
    folders: set[str] = set()
    entries = 0
    total = 0

    def count(more: int) -> None:
        nonlocal entries
        entries += more
        if entries > limits.max_files:
            raise TooLarge(
                f"Upload exceeds the limit of {limits.max_files} files and folders",
                details="every member of the archive counts, and every folder a path creates",
            )

    with _tar(archive, limit, sent, limits.max_ratio) as tar:
        for member in tar:
            count(1)
            name = member.name
            while name.startswith("./"):
                name = name[2:]
            name = name.rstrip("/") if member.isdir() else name
            if name in ("", "."):
                plan.append(None)
                continue
            rel = check_path(name)
            folder = rel if member.isdir() else rel.rpartition("/")[0]
            new = _new_folders(folders, folder)
            count(len(new) - (1 if member.isdir() and rel in new else 0))
            plan.append((rel, folder))
            if member.isdir():
                if rel in seen:
                    raise BadRequest("A file and a folder share a name in the upload", details=rel)
                continue
            if not member.isreg() or member.issparse():
                raise BadRequest(
                    "Only regular files and folders can be uploaded",
                    details=f"{rel} is a link or a special file",
                )
            if rel in seen:
                raise BadRequest("A file appears twice in the upload", details=rel)
            if rel in folders or any(f in seen for f in new):
                raise BadRequest("A file and a folder share a name in the upload", details=rel)
            seen.add(rel)
            total += member.size
            if total > limits.max_bytes:
                raise TooLarge(f"Upload exceeds size limit of {limits.max_bytes} bytes")
            if total > limit:
                raise _too_large(limits.max_ratio, sent, limit)
    if not seen:
        raise BadRequest("The upload has no files")
    return plan


@contextlib.contextmanager
def _tar(archive: Path, limit: int, sent: int, ratio: int) -> Iterator[tarfile.TarFile]:
    """The archive, read through its decompressor and the expansion limit."""
    try:
        with (
            archive.open("rb") as raw,
            _Unpacked(raw, limit, sent, ratio) as stream,
            tarfile.open(fileobj=stream, mode="r:") as tar,  # type: ignore[call-overload]
        ):
            yield tar
    except tarfile.TarError as exc:
        raise BadRequest("The upload must be a tar archive", details=str(exc)) from None
    except EOFError:
        raise BadRequest("The upload must be a tar archive", details="truncated") from None


class _Unpacked:
    """An archive's tar stream, decompressed if it is compressed, refused past ``limit``
    bytes: a decompression bomb stops at the ratio, not at the disk's end. Read errors
    of the decompressor are the sender's (400); those of the disk stay OSErrors."""

    def __init__(self, raw: IO[bytes], limit: int, sent: int, ratio: int) -> None:
        self.limit = limit
        self.sent = sent
        self.ratio = ratio
        head = raw.read(6)
        raw.seek(0)
        opener = next((o for magic, o in COMPRESSED if head.startswith(magic)), None)
        self.inner: IO[bytes] | io.BufferedIOBase = raw if opener is None else opener(raw)
        self.position = 0

    def __enter__(self) -> _Unpacked:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.inner.close()

    def too_large(self) -> TooLarge:
        return _too_large(self.ratio, self.sent, self.limit)

    def read(self, size: int | None = -1) -> bytes:
        left = self.limit + 1 - self.position
        size = left if size is None or size < 0 else min(size, left)
        data = self._call(self.inner.read, size)
        self.position += len(data)
        if self.position > self.limit:
            raise self.too_large()
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset if whence == os.SEEK_SET else self.position + offset
        if whence not in (os.SEEK_SET, os.SEEK_CUR):
            raise OSError(errno.ESPIPE, "only forward and absolute seeks")
        if target > self.limit:
            raise self.too_large()
        self.position = self._call(self.inner.seek, target)
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        try:
            return method(*args)
        except OSError as exc:
            if exc.errno is not None:  # the disk's, not the data's
                raise
            raise BadRequest("The upload's compressed data is corrupt", details=str(exc)) from None
        except (EOFError, zlib.error, lzma.LZMAError) as exc:
            raise BadRequest(
                "The upload's compressed data is corrupt", details=str(exc) or "truncated"
            ) from None


def _too_large(ratio: int, sent: int, limit: int) -> TooLarge:
    return TooLarge(
        f"Upload expands more than {ratio} times its size when unpacked",
        details=f"{sent} bytes sent, more than {limit} bytes unpacked",
    )


def _new_folders(folders: set[str], path: str) -> list[str]:
    """The folders ``path`` and its parents that are not in ``folders`` yet (now added)."""
    new = []
    while path and path not in folders:
        new.append(path)
        path = path.rpartition("/")[0]
    folders.update(new)
    return new[::-1]


def _mkdirs(staging: Path, rel: str) -> None:
    try:
        (staging / rel).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BadRequest("A file and a folder share a name in the upload", details=rel) from None


def _write_new(target: Path, source: IO[bytes], size: int) -> str:
    """Write a new file of ``size`` bytes from ``source``; its SHA-256."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except (FileExistsError, IsADirectoryError, NotADirectoryError):
        raise BadRequest(
            "A file and a folder share a name in the upload", details=str(target.name)
        ) from None
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        left = size
        while left > 0:
            chunk = source.read(min(left, WRITE_BUFFER))
            if not chunk:
                raise BadRequest("The upload must be a tar archive", details="truncated")
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()
