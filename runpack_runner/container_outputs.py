"""What a container left in ``/outputs``: its regular files and their size."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def regular_files(folder: Path) -> list[tuple[str, int]]:
    """(relative path, size) of each regular file under ``folder``; anything else the
    container left (symbolic links above all: they could name the runner's files) is
    deleted first, never followed."""
    found: list[tuple[str, int]] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in [*names, *dirs]:
            path = Path(root, name)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                found.append((path.relative_to(folder).as_posix(), path.lstat().st_size))
            elif not stat.S_ISDIR(mode):
                path.unlink()
                with contextlib.suppress(ValueError):
                    dirs.remove(name)
    return sorted(found)


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed)."""
    total = 0
    for root, _, names in os.walk(folder, followlinks=False):
        for name in names:
            with contextlib.suppress(OSError):  # deleted meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total
