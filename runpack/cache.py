"""Completed jobs by hash, in memory, so a cache hit costs no database round trip.

A completed job does not change until it expires, is re-queued or is deleted;
every such change is an event, and any event about a cached job drops it. The
cache is bounded by entries and by the bytes of the results it holds.

A change made where no event reaches us (``runpack gc`` run against the SQLite
file a server is using, a hand edit) is seen once the entry is ``max_age``
seconds old: the job is then read from the database again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from runpack.notify import ServerEvent
from runpack.protocol import JobStatus
from runpack.store import JobRow


class ResultCache:
    def __init__(
        self,
        max_entries: int = 50_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_age: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        #: job_hash -> (job, when it was read from the database)
        self._by_hash: OrderedDict[str, tuple[JobRow, float]] = OrderedDict()
        self._hash_of: dict[str, str] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._by_hash)

    def get(self, job_hash: str) -> JobRow | None:
        entry = self._by_hash.get(job_hash)
        if entry is None:
            return None
        job, read_at = entry
        if self.clock() - read_at >= self.max_age:
            self.forget(job.id)
            return None
        self._by_hash.move_to_end(job_hash)
        return job

    def put(self, job: JobRow) -> None:
        if job.status != JobStatus.COMPLETED or job.id in self._hash_of:
            return
        size = _size(job)
        if size > self.max_bytes // 100:
            return  # one huge result must not push out everything else
        old_entry = self._by_hash.get(job.job_hash)
        if old_entry is not None:  # a deleted job's successor with the same hash
            self.forget(old_entry[0].id)
        self._by_hash[job.job_hash] = (job, self.clock())
        self._hash_of[job.id] = job.job_hash
        self._bytes += size
        while len(self._by_hash) > self.max_entries or self._bytes > self.max_bytes:
            _, (old, _) = self._by_hash.popitem(last=False)
            self._forget_row(old)

    def forget(self, job_id: str) -> None:
        job_hash = self._hash_of.get(job_id)
        if job_hash is not None:
            entry = self._by_hash.pop(job_hash, None)
            if entry is not None:
                self._forget_row(entry[0])

    def _forget_row(self, job: JobRow) -> None:
        self._hash_of.pop(job.id, None)
        self._bytes -= _size(job)

    def on_event(self, event: ServerEvent) -> None:
        """Any change to a cached job (expired, re-queued, deleted) drops it."""
        if event.job_id is not None and event.job_id in self._hash_of:
            self.forget(event.job_id)


def _size(job: JobRow) -> int:
    return len(job.output_data or "") + len(job.console_output or "") + 512
