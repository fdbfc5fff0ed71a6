"""Completed jobs by hash, in memory, so a cache hit costs no database round trip.

A completed job does not change until it expires, is re-queued or is deleted;
every such change is an event, and any event about a cached job drops it. The
cache is bounded by entries and by the bytes of the results it holds.
"""

from __future__ import annotations

from collections import OrderedDict

from runpack.notify import Event
from runpack.protocol import JobStatus
from runpack.store import JobRow


class ResultCache:
    def __init__(self, max_entries: int = 50_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._by_hash: OrderedDict[str, JobRow] = OrderedDict()
        self._hash_of: dict[str, str] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._by_hash)

    def get(self, job_hash: str) -> JobRow | None:
        job = self._by_hash.get(job_hash)
        if job is not None:
            self._by_hash.move_to_end(job_hash)
        return job

    def put(self, job: JobRow) -> None:
        if job.status != JobStatus.COMPLETED or job.id in self._hash_of:
            return
        size = _size(job)
        if size > self.max_bytes // 100:
            return  # one huge result must not push out everything else
        self._by_hash[job.job_hash] = job
        self._hash_of[job.id] = job.job_hash
        self._bytes += size
        while len(self._by_hash) > self.max_entries or self._bytes > self.max_bytes:
            _, old = self._by_hash.popitem(last=False)
            self._forget_row(old)

    def forget(self, job_id: str) -> None:
        job_hash = self._hash_of.get(job_id)
        if job_hash is not None:
            job = self._by_hash.pop(job_hash, None)
            if job is not None:
                self._forget_row(job)

    def _forget_row(self, job: JobRow) -> None:
        self._hash_of.pop(job.id, None)
        self._bytes -= _size(job)

    def on_event(self, event: Event) -> None:
        """Any change to a cached job (expired, re-queued, deleted) drops it."""
        if event.job_id is not None and event.job_id in self._hash_of:
            self.forget(event.job_id)


def _size(job: JobRow) -> int:
    return len(job.output_data or "") + len(job.console_output or "") + 512
