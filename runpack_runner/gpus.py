"""The GPUs a runner hands to containers: each job takes its share, and gives it back.

A runner lists its GPUs (``RUNPACK_CONTAINER_GPUS``: device indexes or UUIDs, as
``nvidia-smi -L`` shows them); a container job asking for ``limits.gpus`` gets that
many for itself, through Docker's device request, and sees them from 0 on
(``CUDA_VISIBLE_DEVICES=0,1…``). A job that finds too few free waits for them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from runpack_runner.context import Cancelled, JobContext

#: How often a waiting job looks again (it wakes at once when cancelled).
RETRY = 0.2


class GpuPool:
    """Free GPUs; thread-safe (jobs run in worker threads)."""

    def __init__(self, devices: Iterable[str] = ()) -> None:
        self.devices = tuple(devices)
        self._free = list(self.devices)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.devices)

    def take(self, count: int) -> list[str] | None:
        """``count`` free GPUs, or None when fewer are free."""
        with self._lock:
            if count > len(self._free):
                return None
            taken, self._free = self._free[:count], self._free[count:]
            return taken

    def wait_for(self, count: int, ctx: JobContext) -> list[str]:
        """``count`` GPUs, once free; raises Cancelled if the job is stopped meanwhile."""
        logged = False
        while (taken := self.take(count)) is None:
            if not logged:
                ctx.log(f"Waiting for {count} free GPU(s)")
                logged = True
            if ctx.wait(RETRY):
                raise Cancelled(ctx.cancel_reason or "cancelled")
        return taken

    def give_back(self, devices: Iterable[str]) -> None:
        with self._lock:
            self._free.extend(d for d in devices if d in self.devices and d not in self._free)


def visible_devices(count: int) -> str:
    """``CUDA_VISIBLE_DEVICES`` inside a container given ``count`` GPUs: they are
    numbered from 0 there, whatever their numbers on the machine."""
    return ",".join(str(i) for i in range(count))
