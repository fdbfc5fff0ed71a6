"""Following one job on a terminal: what its events say, drawn as a live progress
bar with the console's last lines, or as one line per change when stderr is not
a terminal (pipes, logs, CI)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from runpack.client import AsyncClient, Event, RunpackClientError, RunpackConnectionError

TAIL_LINES = 10
#: A pending job's place in line is read again this often (seconds).
QUEUE_POLL = 2.0
STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "expired": "yellow",
    "deleted": "yellow",
    "in_progress": "cyan",
}


@dataclass
class JobView:
    """What the terminal knows of a job, from its events."""

    job_id: str
    job_type: str = ""
    status: str = "connecting"
    current: int | None = None
    total: int | None = None
    console: str = ""
    final: Event | None = None
    #: A pending job: where it stands, as the server says it (``queue.message``).
    queue: str = ""
    #: Console text already printed in line mode.
    printed: str = field(default="", repr=False)
    #: What of the queue line mode printed last: (position, whether a runner can take it).
    _place: tuple[object, bool] | None = field(default=None, repr=False)

    def apply(self, event: Event) -> list[str]:
        """Take in one event; the lines that tell the change (for line mode)."""
        lines: list[str] = []
        data = event.data
        if event.type == "snapshot":
            self.job_type = str(data.get("job_type", ""))
            progress = data.get("progress") or {}
            self.current, self.total = progress.get("current"), progress.get("total")
            self.console = str(data.get("console_output") or "")
            self.status = str(data.get("status"))
            lines.append(f"job {self.job_id} ({self.job_type}): {self.status}")
            lines += self.set_queue(data.get("queue"))
            if self.total is not None:
                lines.append(self.progress_line())
            lines += self._console_lines(skip_to_tail=True)
        elif event.type == "status" and event.status is not None:
            if event.status != self.status or event.is_final:
                self.status = event.status
                lines.append(f"status: {self.status}")
            if self.status != "pending":
                self.queue = ""
        elif event.type == "progress":
            progress = (data.get("current"), data.get("total"))
            if progress != (self.current, self.total):
                self.current, self.total = progress
                lines.append(self.progress_line())
        elif event.type == "console":
            if "replace" in data:
                self.console = str(data["replace"])
            else:
                self.console += str(data.get("append", ""))
            lines += self._console_lines()
        if event.is_final:
            self.final = event
            lines += self._console_lines(flush=True)
        return lines

    def set_queue(self, queue: object) -> list[str]:
        """Take in where the job stands (a ``queue`` object); the line to print, when its
        place or whether a runner can take it changed (not each new estimate)."""
        if not isinstance(queue, dict) or self.status != "pending":
            self.queue = ""
            return []
        self.queue = str(queue.get("message", ""))
        place = (queue.get("position"), bool(queue.get("runners")))
        if place == self._place or not self.queue:
            return []
        self._place = place
        return [f"waiting: {self.queue}"]

    def progress_line(self) -> str:
        if self.total:
            percent = 100 * (self.current or 0) / self.total
            return f"progress: {self.current}/{self.total} ({percent:.0f}%)"
        return f"progress: {self.current}/{self.total}"

    def tail(self) -> list[str]:
        return self.console.rstrip("\n").split("\n")[-TAIL_LINES:] if self.console else []

    def _console_lines(self, skip_to_tail: bool = False, flush: bool = False) -> list[str]:
        """Console lines not printed yet (complete ones, unless ``flush``)."""
        if not self.console.startswith(self.printed):
            self.printed = ""  # the console was replaced by other text: show it again
            skip_to_tail = True
        new = self.console[len(self.printed) :]
        if not flush:
            new = new[: new.rfind("\n") + 1]
        if not new:
            return []
        self.printed += new
        lines = new.rstrip("\n").split("\n")
        out = []
        if skip_to_tail and len(lines) > TAIL_LINES:
            out.append(f"  │ … {len(lines) - TAIL_LINES} earlier lines")
            lines = lines[-TAIL_LINES:]
        return out + [f"  │ {line}" for line in lines]


class _Tail:
    """The last console lines, redrawn by Live on each refresh."""

    def __init__(self, view: JobView) -> None:
        self.view = view

    def __rich__(self) -> RenderableType:
        lines = self.view.tail()
        return Text("\n".join(lines), style="dim", no_wrap=True, overflow="ellipsis")


class Renderer:
    """Shows a job's events: a live bar and console tail, or lines."""

    def __init__(self, err: Console, view: JobView) -> None:
        self.err = err
        self.view = view
        self.live: Live | None = None
        if err.is_terminal:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=err,
            )
            self.task = self.progress.add_task(view.status, total=None)
            self.live = Live(Group(self.progress, _Tail(view)), console=err, refresh_per_second=10)

    def __enter__(self) -> Renderer:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.stop()

    def show(self, event: Event) -> None:
        self._draw(self.view.apply(event), event.is_final)

    def show_queue(self, queue: object) -> None:
        """Where the pending job stands now (read by :func:`follow_queue`)."""
        self._draw(self.view.set_queue(queue), False)

    def _draw(self, lines: list[str], final: bool) -> None:
        if self.live is None:
            for line in lines:
                self.err.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        view = self.view
        style = STATUS_STYLE.get(view.status, "")
        description = f"[{style}]{view.status}[/]" if style else view.status
        if view.queue:
            description += f" · {escape(view.queue)}"
        total, completed = view.total, view.current or 0
        if view.status == "completed":
            total = completed = total or 1  # a full bar, even for a job without progress
        # Until the first progress the total is None: an indeterminate (pulsing) bar.
        self.progress.update(self.task, description=description, completed=completed, total=total)
        if final:
            self.live.refresh()


async def follow_queue(client: AsyncClient, renderer: Renderer) -> None:
    """While the job is pending, read where it stands every ``QUEUE_POLL`` seconds (its
    place and estimate change with no event of its own). Runs until cancelled."""
    view = renderer.view
    while True:
        await asyncio.sleep(QUEUE_POLL)
        if view.status not in ("connecting", "pending"):
            continue
        with contextlib.suppress(RunpackClientError, RunpackConnectionError):
            renderer.show_queue((await client.details(view.job_id)).get("queue"))
