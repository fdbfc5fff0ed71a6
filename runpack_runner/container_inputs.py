"""A container job's input files: fetched by the runner, kept by content, read-only.

``inputs`` maps a path under ``/inputs`` to a URL, to ``{"url": …, "sha256": …}``, or
to ``{"upload": "<sha256>"}``, a file uploaded to the server (``POST /api/inputs``).
The runner fetches each URL under the address rules of every URL a job names (an
http(s) URL without credentials on a public address, unless the runner allows private
ones; no redirects), within a size budget, and keeps the bytes in its cache by their
SHA-256. An input given with its ``sha256`` is taken from the cache when there, without
a request, and checked when fetched: its content is then part of the job's cache key.
An input without one is fetched for each job (the URL names it; its bytes may change).
An uploaded input is fetched from the runner's own server (``RUNPACK_WORKER_URL``, with
its runner key: the configured server, not a URL the job names, so the address rules do
not apply), checked against its SHA-256 and kept in the same cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runpack import netrules
from runpack_runner.context import Cancelled, JobContext

MAX_INPUTS = 64
#: A path under /inputs: relative, made of plain names.
INPUT_PATH = re.compile(
    r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){0,7}"
)
SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK = 256 * 1024
FETCH_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Input:
    path: str
    url: str
    sha256: str | None = None
    #: Uploaded to the server: fetched from it by ``sha256`` (``url`` is empty).
    upload: bool = False


def parse_inputs(value: Any) -> tuple[Input, ...]:
    """The ``inputs`` parameter, checked (not fetched); ValueError names the bad entry."""
    if not isinstance(value, dict) or len(value) > MAX_INPUTS:
        raise ValueError(f"Parameter 'inputs' must be an object of at most {MAX_INPUTS} entries")
    inputs = []
    for path, entry in value.items():
        if not INPUT_PATH.fullmatch(path) or ".." in path.split("/"):
            raise ValueError(f"Parameter 'inputs': {path!r} is not a relative path of plain names")
        sha256 = None
        if isinstance(entry, dict) and "upload" in entry:
            unknown = sorted(set(entry) - {"upload"})
            if unknown:
                raise ValueError(
                    f"Parameter 'inputs': {path}: upload takes no {', '.join(unknown)}"
                )
            sha256 = entry["upload"]
            if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
                raise ValueError(f"Parameter 'inputs': {path}: upload must be 64 lowercase hex")
            inputs.append(Input(path, "", sha256, upload=True))
            continue
        if isinstance(entry, dict):
            unknown = sorted(set(entry) - {"url", "sha256", "upload"})
            if unknown:
                raise ValueError(f"Parameter 'inputs': {path}: unknown {', '.join(unknown)}")
            url, sha256 = entry.get("url"), entry.get("sha256")
            if sha256 is not None and (not isinstance(sha256, str) or not SHA256.fullmatch(sha256)):
                raise ValueError(f"Parameter 'inputs': {path}: sha256 must be 64 lowercase hex")
        else:
            url = entry
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"Parameter 'inputs': {path}: give an http(s) URL")
        inputs.append(Input(path, url, sha256))
    paths = [i.path for i in inputs]
    for path in paths:  # a file cannot also be a folder of another input
        if any(other.startswith(path + "/") for other in paths):
            raise ValueError(f"Parameter 'inputs': {path} is both a file and a folder")
    return tuple(inputs)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is then an HTTPError: refused, as every URL a job names


class InputCache:
    """Fetched inputs by SHA-256 under ``root``, at most ``max_bytes`` (oldest use first
    out)."""

    def __init__(self, root: Path, max_bytes: int, server: str = "", key: str = "") -> None:
        self.root = root
        self.max_bytes = max_bytes
        #: The runner's server and runner key, for uploaded inputs.
        self.server = server.rstrip("/")
        self.key = key

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def get(self, sha256: str) -> Path | None:
        path = self.path(sha256)
        try:
            os.utime(path)  # its last use: kept longest
        except OSError:
            return None
        return path

    def fetch(self, ctx: JobContext, item: Input, budget: int) -> Path:
        """Download ``item`` into the cache (at most ``budget`` bytes); its cached path."""
        if item.upload:
            # The runner's own server: lift the guard on private addresses (for this
            # thread, this request only); the job names a hash, never an address.
            with netrules.guarded(allow_private=True):
                return self._fetch(ctx, item, budget)
        ctx.check_url(item.url)
        return self._fetch(ctx, item, budget)

    def _fetch(self, ctx: JobContext, item: Input, budget: int) -> Path:
        if not item.upload:
            request = urllib.request.Request(item.url)
            source = item.url
        else:
            if not self.server:
                raise RuntimeError(f"input {item.path}: this runner has no server to fetch from")
            request = urllib.request.Request(
                f"{self.server}/api/inputs/{item.sha256}",
                headers={"Authorization": f"Bearer {self.key}"},
            )
            source = "the server's copy"
        self.root.mkdir(parents=True, exist_ok=True)
        opener = urllib.request.build_opener(_NoRedirect)
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".fetch-")
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    response = opener.open(request, timeout=FETCH_TIMEOUT)
                except urllib.error.HTTPError as exc:
                    if item.upload and exc.code == 404:
                        raise RuntimeError(
                            f"input {item.path}: the server has no uploaded file with sha256 "
                            f"{item.sha256} (removed after RUNPACK_INPUT_TTL?); upload it again"
                        ) from None
                    raise RuntimeError(f"input {item.path}: {source} answered {exc.code}") from None
                except (urllib.error.URLError, OSError) as exc:
                    reason = getattr(exc, "reason", exc)
                    raise RuntimeError(
                        f"input {item.path}: cannot fetch {source}: {reason}"
                    ) from None
                with response:
                    while chunk := response.read(CHUNK):
                        size += len(chunk)
                        if size > budget:
                            raise RuntimeError(
                                f"input {item.path}: the inputs are larger than this runner "
                                f"takes ({budget // 2**20} MiB left)"
                            )
                        if ctx.cancelled:
                            raise Cancelled(ctx.cancel_reason or "cancelled")
                        digest.update(chunk)
                        out.write(chunk)
            sha256 = digest.hexdigest()
            if item.sha256 is not None and sha256 != item.sha256:
                what = "the server sent bytes with" if item.upload else f"{item.url} has"
                raise RuntimeError(f"input {item.path}: {what} sha256 {sha256}, not {item.sha256}")
            temp.chmod(0o644)
            final = self.path(sha256)
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
        ctx.log(f"Fetched input {item.path} ({size / 1e6:.1f} MB, sha256 {sha256[:12]}…)")
        self._trim(keep=final)
        return final

    def _trim(self, keep: Path) -> None:
        trim(self.root, self.max_bytes, keep)


def trim(root: Path, max_bytes: int, keep: Path | None = None) -> None:
    """Delete the files under ``root`` used longest ago (modified or read) until they
    add up to at most ``max_bytes``; links are deleted, never followed."""
    entries = []
    for folder, _, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(folder, name)
            with contextlib.suppress(OSError):
                info = path.lstat()
                entries.append((max(info.st_mtime, info.st_atime), info.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        if path != keep:
            path.unlink(missing_ok=True)
            total -= size


def place_inputs(
    ctx: JobContext, inputs: tuple[Input, ...], folder: Path, cache: InputCache, max_bytes: int
) -> None:
    """Each input at its path under ``folder`` (read-only for the container)."""
    left = max_bytes
    for item in inputs:
        cached = cache.get(item.sha256) if item.sha256 is not None else None
        if cached is not None:
            ctx.log(f"Input {item.path} from the runner's cache (sha256 {item.sha256})")
        else:
            cached = cache.fetch(ctx, item, left)
        left -= cached.stat().st_size
        if left < 0:
            raise RuntimeError(f"input {item.path}: the inputs are larger than this runner takes")
        target = folder / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(cached, target)
        except OSError:  # another filesystem
            shutil.copyfile(cached, target)
        target.chmod(0o644)
    for root, dirs, _ in os.walk(folder):
        for name in dirs:
            Path(root, name).chmod(0o755)
