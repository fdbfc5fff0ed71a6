"""``create_app(settings)``: middlewares, routes and the lifecycle of every resource."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from runpack import __version__
from runpack.api import (
    admin,
    events,
    files,
    inputs,
    jobs,
    keys,
    monitoring,
    openapi,
    runner,
    runner_poll,
    runner_ws,
    ui,
)
from runpack.api.job_requests import JobRequests
from runpack.api.limits import Limits, client_ip
from runpack.api.middleware import enforce_policy, errors_and_cors
from runpack.api.monitoring import Readiness, echo_request_id, health, observe_requests
from runpack.appkeys import (
    FIGURES,
    HUB,
    INPUTS,
    INSTANCE_ID,
    JOB_REQUESTS,
    KEYS,
    LIMITS,
    METRICS,
    NOTIFIER,
    PLACEMENT,
    PRESENCE,
    READINESS,
    RUNNER_NAMES,
    SERVICE,
    SETTINGS,
    STANDING,
    STORE,
    VALIDATOR,
    VERSIONS,
    WATCH,
)
from runpack.artifacts import FigureStore
from runpack.auth import KeyRing
from runpack.envvars import split_list
from runpack.eventloop import cancel_and_wait, loop_name
from runpack.handler_versions import HandlerVersions
from runpack.hub import Hub
from runpack.inputs import InputStore
from runpack.local_runners import local_runners
from runpack.metrics import Metrics
from runpack.names import RunnerNames
from runpack.notify import EventKind, Notifier, PgBridge
from runpack.notify_relay import NotifyRelay
from runpack.placement import Placement
from runpack.presence import Presence
from runpack.retention import Retention, RetentionPolicy
from runpack.service import JobService
from runpack.settings import Settings
from runpack.standing import Standing
from runpack.store import Store, open_store
from runpack.sweeper import run_sweeper
from runpack.validation import ResultValidator
from runpack.watch import WatchHub

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, store: Store | None = None, *, generated_keys: bool = False
) -> web.Application:
    """The whole server; tests use it with ``aiohttp_client(create_app(...))``.

    ``generated_keys``: ``runpack serve`` made the keys itself (local development), so
    clients on loopback are not rate-limited."""
    metrics = Metrics()
    app = web.Application(
        middlewares=[
            observe_requests(metrics, lambda request: client_ip(request, settings.trust_proxy)),
            errors_and_cors,
            enforce_policy,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[INSTANCE_ID] = uuid.uuid4().hex[:12]
    app[STORE] = store if store is not None else open_store(settings.db)
    app[KEYS] = KeyRing(settings, app[STORE])
    app[LIMITS] = Limits(settings, app[STORE], generated_keys=generated_keys)
    app[METRICS] = metrics
    app[READINESS] = Readiness(app[STORE].probe_write)
    if not settings.base_url.startswith(("http://", "https://")):
        raise ValueError(f"public_url must start with http:// or https://: {settings.public_url}")
    if settings.presence_interval <= 0:
        raise ValueError(f"presence_interval must be above 0: {settings.presence_interval}")
    app[FIGURES] = FigureStore.from_settings(settings)
    app[INPUTS] = InputStore.from_settings(settings)
    app[VERSIONS] = HandlerVersions.from_settings(settings)
    app[JOB_REQUESTS] = JobRequests.from_settings(settings, app[VERSIONS])
    app.router.add_route("*", "/", health)
    app.router.add_route("*", "/health", health)
    app.add_routes(events.routes)  # before jobs: /api/jobs/by-hash/… must win
    app.add_routes(jobs.routes)
    app.add_routes(runner.routes)
    app.add_routes(runner_ws.routes)
    app.add_routes(runner_poll.routes)
    app.add_routes(admin.routes)
    app.add_routes(keys.routes)
    app.add_routes(ui.routes)
    app.add_routes(files.routes)
    app.add_routes(inputs.routes)
    app.add_routes(openapi.routes)
    monitoring.add_routes(app, public=settings.metrics_public)
    app[NOTIFIER] = Notifier()
    app.cleanup_ctx.extend(LIFECYCLE)
    if settings.local_runners:
        app.cleanup_ctx.append(local_runners(settings))  # type: ignore[arg-type]
    app.on_shutdown.append(_close_sockets)
    app.on_response_prepare.append(echo_request_id)
    app.on_response_prepare.append(files.guard_figure_response)
    return app


async def _close_sockets(app: web.Application) -> None:
    """Close every runner socket with GOING_AWAY so runners reconnect elsewhere, and end
    event streams and long-polls now: the server waits for open requests before cleanup."""
    for conn in list(app[HUB].conns.values()):
        conn.close()
    app[HUB].shutting_down()
    app[WATCH].close()


# --- the lifecycle: one cleanup context per resource, each closing what it opened ------
# aiohttp enters them in this order and leaves them in reverse; when one fails to start,
# those already started are closed and the rest never open.


async def _store(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    try:
        await asyncio.to_thread(app[FIGURES].clean_incoming)
        yield
    finally:
        await store.close()


async def _validator(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    validator = ResultValidator(
        settings.validation_timeout,
        settings.validation_cache_ttl,
        local=app[FIGURES],
        hosts=split_list(settings.figure_url_hosts),
        allow_private=settings.allow_private_urls,
    )
    await validator.start()
    app[VALIDATOR] = validator
    try:
        yield
    finally:
        await validator.close()


async def _relay(app: web.Application) -> AsyncIterator[None]:
    """The NotifyRelay announcement of new jobs, when configured."""
    settings = app[SETTINGS]
    if not settings.notify_relay_base_url:
        yield
        return
    relay = NotifyRelay(settings.notify_relay_base_url, settings.notify_relay_publish_key)
    await relay.start()
    app[NOTIFIER].subscribe(relay, [EventKind.JOB_QUEUED])
    try:
        yield
    finally:
        await relay.close()


async def _service(app: web.Application) -> AsyncIterator[None]:
    settings, metrics, figures = app[SETTINGS], app[METRICS], app[FIGURES]
    metrics.running_on(__version__, loop_name(asyncio.get_running_loop()))
    # New jobs go to free runner slots as they are inserted: the hub keeps it informed.
    placement = app[PLACEMENT] = Placement(enabled=settings.place_new_jobs)
    app[SERVICE] = JobService(
        metrics.timed(app[STORE]),
        settings,
        app[VALIDATOR],
        app[NOTIFIER],
        figures=figures,
        observer=metrics,
        slots=placement,
        versions=app[VERSIONS],
    )
    yield


async def _bridge(app: web.Application) -> AsyncIterator[None]:
    """On PostgreSQL, other instances on the same database hear of our jobs, and we of
    theirs."""
    settings = app[SETTINGS]
    if not settings.db.startswith(("postgres://", "postgresql://")):
        yield
        return
    bridge = PgBridge(settings.db, app[NOTIFIER], app[STORE].get_job, app[INSTANCE_ID])
    await bridge.start()
    try:
        yield
    finally:
        await bridge.close()


async def _watch(app: web.Application) -> AsyncIterator[None]:
    watch = app[WATCH] = WatchHub(app[NOTIFIER])
    try:
        yield
    finally:
        watch.close()


async def _hub(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    hub = app[HUB] = Hub(
        app[SERVICE], settings.reconnect_grace, app[PLACEMENT], full_waves=settings.full_waves
    )
    await hub.start()
    try:
        app[METRICS].read_live(
            runners=lambda: len(hub.conns),
            slots=lambda: sum(c.concurrency for c in hub.conns.values()),
            jobs=lambda: sum(len(c.held) for c in hub.conns.values()),
            watchers=app[WATCH].watcher_count,
        )
        yield
    finally:
        await hub.stop()


async def _versions(app: web.Application) -> AsyncIterator[None]:
    """The job types' versions, read from the store and kept current."""
    versions = app[VERSIONS]
    await versions.start(
        app[SERVICE].store, app[NOTIFIER], app[HUB], app[SETTINGS].presence_interval
    )
    try:
        yield
    finally:
        await versions.stop()


async def _standing(app: web.Application) -> AsyncIterator[None]:
    """Where pending jobs stand, and the names of runners, from the hub and the store."""
    store = app[SERVICE].store
    standing = app[STANDING] = Standing(store, app[HUB])
    app[RUNNER_NAMES] = RunnerNames(store, app[HUB])
    try:
        yield
    finally:
        standing.close()


async def _presence(app: web.Application) -> AsyncIterator[None]:
    """This instance's row in the instances table, the runners it holds, rebalancing."""
    settings = app[SETTINGS]
    presence = app[PRESENCE] = Presence(
        app[STORE],
        app[HUB],
        app[INSTANCE_ID],
        host=f"{socket.gethostname()} {settings.host}:{settings.port}",
        data_dir=settings.data_dir,
        interval=settings.presence_interval,
        rebalance=settings.rebalance,
    )
    await presence.start()
    try:
        yield
    finally:
        await presence.stop()


async def _background(app: web.Application) -> AsyncIterator[None]:
    """The sweeper (with retention), and the watch on revoked keys: connections opened
    with a key that is revoked since, on any instance, close."""
    settings, service = app[SETTINGS], app[SERVICE]
    policy = RetentionPolicy.from_settings(settings)
    retention = None
    if policy.active:
        retention = Retention(
            service.store,
            policy,
            figures=app[FIGURES],
            inputs=app[INPUTS],
            notifier=app[NOTIFIER],
            clock=lambda: service.clock(),
        )
    tasks = [
        asyncio.create_task(
            run_sweeper(service, settings.sweep_interval, retention, settings.gc_interval),
            name="runpack-sweeper",
        ),
        asyncio.create_task(app[KEYS].watch_revocations(), name="runpack-key-watch"),
    ]
    try:
        yield
    finally:
        await cancel_and_wait(tasks)


#: The server's resources, in the order they start.
LIFECYCLE = (
    _store,
    _validator,
    _relay,
    _service,
    _bridge,
    _watch,
    _hub,
    _versions,
    _standing,
    _presence,
    _background,
)
