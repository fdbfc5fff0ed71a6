"""A container's stdout and stderr as the job's console lines and progress.

Each stream keeps its own partial line: a program writes a line in pieces (busybox's
sh writes "sh: " first), and the other stream's writes may come in between. A line
``RUNPACK_PROGRESS 3/10`` (or ``… 3``, keeping the last total) reports progress
instead of being printed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable

from runpack_runner.context import Cancelled, JobContext

#: A line of this form is progress, not console: ``RUNPACK_PROGRESS 3/10`` or ``… 3``.
PROGRESS = re.compile(rb"RUNPACK_PROGRESS\s+(\d+)(?:\s*/\s*(\d+))?\s*")
#: Longest console line kept whole; longer output without a newline is split.
MAX_LINE = 16 * 1024


def follow(ctx: JobContext, output: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    """Report ``output`` (demultiplexed chunks: stdout's, stderr's) line by line."""
    pending = [b"", b""]  # stdout's, stderr's
    for chunks in output:
        for i, chunk in enumerate(chunks):
            if chunk:
                *lines, pending[i] = (pending[i] + chunk).split(b"\n")
                for line in lines:
                    report(ctx, line)
                while len(pending[i]) > MAX_LINE:
                    report(ctx, pending[i][:MAX_LINE])
                    pending[i] = pending[i][MAX_LINE:]
    for rest in pending:
        if rest:
            report(ctx, rest)


def report(ctx: JobContext, raw: bytes) -> None:
    """One line: progress, or a console line."""
    raw = raw.rstrip(b"\r")
    progress = PROGRESS.fullmatch(raw)
    if progress is None:
        ctx.log(raw.decode(errors="replace"))
        return
    total = progress[2]
    with contextlib.suppress(Cancelled):
        ctx.progress(int(progress[1]), int(total) if total is not None else None)
