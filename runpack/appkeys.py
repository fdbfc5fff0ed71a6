"""Every typed key of the server's state: what ``create_app`` puts on the application,
and what the middlewares put on each request for the handlers to read.

The types are imported for the type checker only, so any module may import its keys
from here without importing what they hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from runpack.api.job_requests import JobRequests
    from runpack.api.limits import Limits
    from runpack.api.monitoring import Readiness
    from runpack.artifacts import FigureStore
    from runpack.auth import Caller, KeyRing
    from runpack.handler_versions import HandlerVersions
    from runpack.hub import Hub
    from runpack.inputs import InputStore
    from runpack.metrics import Metrics
    from runpack.names import RunnerNames
    from runpack.notify import Notifier
    from runpack.placement import Placement
    from runpack.presence import Presence
    from runpack.protocol import Role
    from runpack.service import JobService
    from runpack.settings import Settings
    from runpack.standing import Standing
    from runpack.store import Store
    from runpack.validation import ResultValidator
    from runpack.watch import WatchHub

# --- the application's resources (create_app and its cleanup contexts) ----------------
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORE: web.AppKey[Store] = web.AppKey("store")
KEYS: web.AppKey[KeyRing] = web.AppKey("keys")
#: The rate limits: who may make how many requests, and start how much new work.
LIMITS: web.AppKey[Limits] = web.AppKey("limits")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
FIGURES: web.AppKey[FigureStore] = web.AppKey("figures")
#: Input files uploaded for jobs, by content.
INPUTS: web.AppKey[InputStore] = web.AppKey("inputs")
#: Events of this process: the service publishes, the hub, watchers and relays listen.
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")
VALIDATOR: web.AppKey[ResultValidator] = web.AppKey("validator")
#: Free runner slots for new jobs: the service takes them, the hub keeps them current.
PLACEMENT: web.AppKey[Placement] = web.AppKey("placement")
SERVICE: web.AppKey[JobService] = web.AppKey("service")
WATCH: web.AppKey[WatchHub] = web.AppKey("watch")
HUB: web.AppKey[Hub] = web.AppKey("hub")
#: Where pending jobs stand (place in line, runners, estimated start).
STANDING: web.AppKey[Standing] = web.AppKey("standing")
#: Runner names by id, for what shows jobs.
RUNNER_NAMES: web.AppKey[RunnerNames] = web.AppKey("runner_names")
#: This process among the instances on its database (its id names it in the bridge too).
INSTANCE_ID: web.AppKey[str] = web.AppKey("instance_id")
PRESENCE: web.AppKey[Presence] = web.AppKey("presence")
#: Submit and check bodies parsed and hashed, small ones remembered.
JOB_REQUESTS: web.AppKey[JobRequests] = web.AppKey("job_requests")
#: The job types' versions: the operator's, else what runners declared (in the store).
VERSIONS: web.AppKey[HandlerVersions] = web.AppKey("versions")

# --- set on each request by the middlewares ---------------------------------------------
#: The request's id (X-Request-ID), set by the request observer.
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
#: The caller (role, and the stored key if it was one), set by the policy middleware.
CALLER: web.RequestKey[Caller] = web.RequestKey("caller")
#: The caller's role, set by the policy middleware.
ROLE: web.RequestKey[Role] = web.RequestKey("role")
#: The registered runner a per-runner route acts for (X-Runner-ID, its owner checked and
#: its contact noted), set by the policy middleware.
RUNNER_ID: web.RequestKey[str] = web.RequestKey("runner_id")
