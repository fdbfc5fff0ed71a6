"""The daemon's core: connect, take jobs, run them, report them, shut down cleanly.

Bookkeeping, all on the event loop:

- ``busy``: jobs that use a slot. A job stays busy while its handler runs, and
  while its release waits for the server's ``ack``. Its result frees the slot as
  it is sent when the server's welcome says ``free_on_result`` (the job is in no
  slot on the server's side either, while it stores the result); for a server
  without it, the job stays busy until the result is acknowledged. When a job
  leaves ``busy`` its slot is granted back (``ready {slots}``, one frame for all
  the slots freed since the last, after the results sent meanwhile), so granted
  credits plus busy jobs always equal the concurrency. A new connection starts
  with ``concurrency - len(busy)`` credits. A job pushed while ``busy`` is full
  (by a server that miscounts) is released, not run: no more handlers run at once
  than ``--concurrency``, a handler that overran its stop grace aside.
- ``outbox``: results not yet acknowledged; re-sent after every reconnect, so a
  network blip loses none, and the server applies each one once.
- ``waiting``: jobs the server assigned again while a run of theirs it had given
  up on (``dropped``) is still stopping; each starts, in the same slot, as soon
  as that run has stopped.
- Per job, nothing waits in a task of its own unless it must: a run calls back
  when it ends, and over a WebSocket one sender task per connection sends the
  results, releases and grants in order (see ``Transport.serial``).
- Shutdown: the first SIGINT/SIGTERM stops taking jobs and exits 0 once every
  busy job is done and every result acknowledged; a second one releases the running jobs back
  to the queue and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from pathlib import Path

import aiohttp

from runpack import protocol
from runpack_runner import __version__, isolation
from runpack_runner.backoff import Backoff
from runpack_runner.bookkeeping import Release
from runpack_runner.dispatch import SHUTTING_DOWN, Dispatch
from runpack_runner.execution import JobRun, StopReason
from runpack_runner.heartbeats import FirstBeats
from runpack_runner.registry import Registry
from runpack_runner.settings import RunnerSettings
from runpack_runner.state import RunnerState, save_state
from runpack_runner.tasks import TaskSet
from runpack_runner.transports import (
    Assignment,
    AuthFailed,
    Hello,
    HttpTransport,
    NotOurRunner,
    Reconnect,
    Result,
    Transport,
    TransportClosed,
    Welcome,
)
from runpack_runner.transports.connect import open_transport
from runpack_runner.uploads import FolderUploader

log = logging.getLogger(__name__)

#: After a second signal: how long to wait for releases and results to be acknowledged.
FORCED_EXIT_WAIT = 5.0
CONNECT_TIMEOUT = 15.0
#: How often --exit-when-idle looks whether the runner holds a job (seconds).
IDLE_CHECK = 0.25


class Runner(Dispatch):
    def __init__(
        self,
        settings: RunnerSettings,
        registry: Registry,
        *,
        state_path: Path,
        state: RunnerState,
        name: str,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.state_path = state_path
        self.runner_id = state.runner_id
        #: Our own secret: proves to the server that ``runner_id`` is ours.
        self.runner_secret = state.secret
        self.name = name
        self.transport: Transport | None = None
        self.runs: dict[str, JobRun] = {}
        self.outbox: dict[str, Result] = {}
        self.releasing: set[str] = set()
        self.waiting: dict[str, Assignment] = {}
        self.busy: set[str] = set()
        #: This connection's server frees a job's slot with its result (see above).
        self.free_on_result = False
        self.draining = False
        self.forced = False
        self.heartbeat_interval = settings.heartbeat_interval
        self.limits = {
            "max_output_bytes": protocol.MAX_OUTPUT_BYTES,
            "max_console_bytes": protocol.MAX_CONSOLE_BYTES,
            "max_error_bytes": protocol.MAX_ERROR_BYTES,
        }
        self._granted = False
        #: Over a serial transport: results and releases for the sender, in order.
        self._sends: deque[Result | Release] = deque()
        #: Slots freed since the sender last granted (this connection).
        self._credits = 0
        self._send_wake = asyncio.Event()
        self._current_transport = lambda: self.transport
        self._current_interval = lambda: self.heartbeat_interval
        self._first_beats = FirstBeats()
        self._exit = asyncio.Event()
        self._backoff = Backoff(settings.reconnect_min, settings.reconnect_max)
        self._tasks = TaskSet()
        self._long_poll = True
        self._link: str | None = None
        self.uploader: FolderUploader | None = None

    # --- the whole life -----------------------------------------------------------------
    async def run(self, *, handle_signals: bool = True) -> int:
        """Run until stopped; the exit code (0 clean, 1 results left, 2 bad key)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop)
        log.info(
            "runpack-runner %s: server %s, name %s, job types %s, concurrency %d",
            __version__,
            self.settings.worker_url,
            self.name,
            ", ".join(self.registry.job_types),
            self.settings.concurrency,
        )
        modules = self.registry.isolated_modules()
        if modules:  # the fork server of the jobs' processes, ready before the first job
            self._tasks.spawn(asyncio.to_thread(isolation.prepare, modules), "fork-server")
        if self.runner_id is not None:  # before the first job: what is ours is left over
            await asyncio.to_thread(self.registry.sweep, self.runner_id)
        code = 0
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        headers = {"User-Agent": f"runpack-runner/{__version__}"}
        try:
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
                self.uploader = FolderUploader(
                    session, self.settings, lambda: self.runner_id, lambda: self.runner_secret
                )
                if self.settings.exit_when_idle > 0:
                    self._tasks.spawn(self._exit_when_idle(self.settings.exit_when_idle), "idle")
                try:
                    await self._connect_loop(session)
                finally:
                    self._abandon_runs()
                    await self._tasks.cancel_all()
        except AuthFailed as exc:
            log.error("%s: check RUNPACK_RUNNER_API_KEY", exc)
            code = 2
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        if code == 0 and (self.outbox or self.releasing):
            log.warning("exiting with %d unacknowledged result(s)", len(self.outbox))
            code = 1
        log.info("runner stopped")
        return code

    def request_stop(self) -> None:
        """SIGINT/SIGTERM: first drain, then release, then (a third time) just exit."""
        if not self.draining:
            self.draining = True
            log.info(
                "stopping: taking no new jobs, finishing %d running job(s) "
                "(signal again to release them to the queue)",
                len(self.runs),
            )
            if self.transport is not None:
                self.transport.stop_taking()
            self._check_exit()
        elif not self.forced:
            self.forced = True
            log.warning("releasing %d running job(s) to the queue and exiting", len(self.runs))
            for job_id, run in list(self.runs.items()):
                if run.stop_reason is None:
                    run.stop(StopReason.RELEASED, SHUTTING_DOWN)
                    if job_id not in self.outbox:
                        self._release(job_id, SHUTTING_DOWN)
            for job_id in list(self.waiting):
                del self.waiting[job_id]
                self._release(job_id, SHUTTING_DOWN)
            asyncio.get_running_loop().call_later(FORCED_EXIT_WAIT, self._exit.set)
            self._check_exit()
        else:
            self._exit.set()

    async def _exit_when_idle(self, seconds: float) -> None:
        """Stop once no job has been held for ``seconds`` (checked a few times a second):
        a job pushed meanwhile is released back to the queue by the drain."""
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while not self.draining:
            await asyncio.sleep(min(IDLE_CHECK, seconds))
            if self.busy or self.outbox or self.waiting:
                idle_since = loop.time()
            elif loop.time() - idle_since >= seconds:
                log.info("no job for %g s: exiting (--exit-when-idle)", seconds)
                self.request_stop()

    # --- connections ----------------------------------------------------------------------
    async def _connect_loop(self, session: aiohttp.ClientSession) -> None:
        while not self._exit.is_set():
            transport = await open_transport(
                session,
                self.settings,
                self.registry.job_types,
                long_poll=self._long_poll,
                quiet=self._link is not None and self._link.startswith("http"),
            )
            if transport is None:
                self._link = None
            again = transport is not None and await self._session(transport)
            if not again and not self._exit.is_set():
                delay = self._backoff.next()
                log.info("connecting again in %.1f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._exit.wait(), delay)

    async def _session(self, transport: Transport) -> bool:
        """One connection, from hello to its end; True to reconnect at once."""
        sender: asyncio.Task[None] | None = None
        try:
            hello = self._hello()
            hello.images = await asyncio.to_thread(self.registry.images)
            welcome = await transport.start(hello)
            self._adopt(welcome)
            self.transport = transport
            self._backoff.reset()
            link = f"{transport.name}/{transport.mode}"
            log.log(
                logging.INFO if link != self._link else logging.DEBUG,
                "connected to %s over %s (%s) as runner %s",
                self.settings.worker_url,
                transport.name,
                transport.mode,
                self.runner_id,
            )
            self._link = link
            for result in list(self.outbox.values()):
                await transport.send_result(result)
            for run in self.runs.values():
                run.reporter.poke()
            if self.draining:
                transport.stop_taking()
            else:
                self._credits = max(0, self.settings.concurrency - len(self.busy))
            self._granted = True
            sender = self._tasks.spawn(self._send_loop(transport), "runner-sender")
            self._send_wake.set()
            self._check_exit()
            return await self._receive_loop(transport)
        except TransportClosed as exc:
            log.warning("connection lost (%s): %s", transport.name, exc)
            self._link = None
            return False
        except NotOurRunner as exc:
            # Our id was registered with another key (this runner's key changed), or our
            # secret was lost: we cannot act as that runner, so we become a new one.
            log.warning("the server refused runner %s (%s): registering anew", self.runner_id, exc)
            self._remember_identity(None, None)
            self._link = None
            return True
        finally:
            if isinstance(transport, HttpTransport):
                self._long_poll = transport.mode == "long-poll"
            self.transport = None
            self._granted = False
            if sender is not None:
                sender.cancel()
                await asyncio.wait({sender})
            # What the sender had not sent yet is moot: results are sent again from
            # the outbox, releases end below, and the next grant counts every free slot.
            self._sends.clear()
            self._credits = 0
            await transport.close()
            # Releases in flight are moot: a job left out of the next hello goes back
            # to the queue on the server's side.
            released, self.releasing = self.releasing, set()
            for job_id in released:
                self._settled(job_id)

    async def _receive_loop(self, transport: Transport) -> bool:
        """Handle the transport's events until the runner should exit (False) or the
        transport asks to reconnect (True). One task reads them all."""
        events = asyncio.create_task(self._handle_events(transport), name="runner-events")
        exiting = asyncio.create_task(self._exit.wait(), name="runner-exit")
        try:
            await asyncio.wait({events, exiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exiting.cancel()
            if not events.done():
                events.cancel()
                await asyncio.wait({events})
        return False if events.cancelled() else events.result()

    async def _handle_events(self, transport: Transport) -> bool:
        while True:
            event = await transport.receive()
            if self._exit.is_set():
                return False
            if isinstance(event, Reconnect):
                log.debug("reconnecting: %s", event.reason)
                return True
            self._handle(event)

    def _hello(self) -> Hello:
        held = [j for j, r in self.runs.items() if r.stop_reason in (None, StopReason.TIMEOUT)]
        held += [j for j in (*self.outbox, *self.waiting) if j not in held]
        return Hello(
            runner_id=self.runner_id,
            name=self.name,
            capabilities=self.registry.job_types,
            concurrency=self.settings.concurrency,
            version=__version__,
            jobs=held,
            runner_secret=self.runner_secret,
            versions=self.registry.versions(),
        )

    def _remember_identity(self, runner_id: str | None, secret: str | None) -> None:
        self.runner_id, self.runner_secret = runner_id, secret
        save_state(self.state_path, RunnerState(runner_id, self.name, secret))

    def _adopt(self, welcome: Welcome) -> None:
        if welcome.runner_id != self.runner_id:
            if self.runner_id:
                log.warning("the server knows this runner as %s now", welcome.runner_id)
            else:
                log.info("registered as runner %s", welcome.runner_id)
            self._remember_identity(welcome.runner_id, welcome.runner_secret)
        elif welcome.runner_secret and welcome.runner_secret != self.runner_secret:
            self._remember_identity(welcome.runner_id, welcome.runner_secret)
        if welcome.heartbeat_interval:
            self.heartbeat_interval = welcome.heartbeat_interval
        for key in self.limits:
            value = welcome.limits.get(key)
            if isinstance(value, int) and value > 0:
                self.limits[key] = value
        self.free_on_result = welcome.free_on_result
        if self.free_on_result:  # results kept from a server without it free their slots
            for job_id in [j for j in self.busy if j in self.outbox]:
                self._settled(job_id)
        else:  # this server counts them in their slots until acknowledged
            self.busy.update(self.outbox)
        for job_id in welcome.dropped:
            self._lose(job_id, "the server no longer assigns it to this runner")
