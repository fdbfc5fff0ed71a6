"""One frozen settings object for the server.

Every field is a setting with a default, a help text, a ``--flag`` and a
``RUNPACK_<NAME>`` environment variable. The commands (:mod:`runpack.commands`)
are the only readers of the environment: they build settings with
:meth:`Settings.from_args`. The settings table in docs/settings.md is checked against
:func:`describe` by a test. Durations are in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runpack import envvars, protocol
from runpack.envvars import Spec, describe_fields, read_values
from runpack.jobtypes import FIGURE_METADATA
from runpack.netrules import FIGPACK_HOSTS

if TYPE_CHECKING:
    import argparse

#: The retention settings (:mod:`runpack.retention`), which ``runpack gc`` also takes as flags.
TTL_NAMES = (
    "result_ttl",
    "failure_ttl",
    "console_ttl",
    "figure_ttl",
    "runner_ttl",
    "input_ttl",
)


def _s(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret})


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = _s("127.0.0.1", "Address to bind.")
    port: int = _s(8080, "Port to bind.")
    db: str = _s("runpack.db", "SQLite file path, or a postgresql:// DSN.")
    data_dir: str = _s("runpack-data", "Folder for stored artifacts and generated local keys.")
    public_url: str = _s(
        "",
        "Base URL clients reach this server at, for figure URLs (default: http://host:port).",
    )
    figure_base_url: str = _s(
        "",
        "Base URL of a separate origin (another hostname pointed at this server) for figures: "
        "figure URLs are built on it, and figure requests that reach the public URL's host "
        "are redirected to it (default: figures are served, sandboxed, on the public URL).",
    )
    submit_api_key: str = _s("", "Key for clients that submit and read jobs.", secret=True)
    runner_api_key: str = _s("", "Key for runner daemons (also reads admin data).", secret=True)
    admin_api_key: str = _s("", "Key for administrators.", secret=True)
    runner_key_reads_admin: bool = _s(
        True, "Let the runner key read admin endpoints, as the original did."
    )
    key_cache_ttl: float = _s(
        5.0,
        "How long a stored key (runpack keys), or a wrong token, is remembered: a revoked "
        "key stops working on every instance within this time.",
    )
    heartbeat_timeout: float = _s(
        90.0, "A running job whose runner sends nothing for this long is taken back."
    )
    place_new_jobs: bool = _s(
        True,
        "Insert a job submitted while a connected runner has a free slot already claimed "
        "for that runner, and push it at once (off: the dispatcher claims it after the insert).",
    )
    full_waves: bool = _s(
        True,
        "Runners whose last claims found a job for every free slot claim for all their "
        "free slots in one statement next time (off: in waves of 1, 2, 4… slots).",
    )
    write_frames_together: bool = _s(
        True,
        "Frames queued together for a runner (jobs claimed in one statement, results "
        "stored in one commit) leave in one write to its socket (off: one write each).",
    )
    reconnect_grace: float = _s(
        30.0, "How long a runner whose socket dropped may take to come back for its jobs."
    )
    presence_interval: float = _s(
        5.0,
        "How often an instance refreshes its row in the database's instances table (the "
        "admin views and rebalancing read them); one silent for three times this is "
        "counted out.",
    )
    rebalance: bool = _s(
        True,
        "An instance holding far more runners than its share of those connected to the "
        "live instances asks some idle ones to reconnect (through the balancer, to "
        "another instance).",
    )
    max_attempts: int = _s(3, "Runs a job gets before it is failed for lost heartbeats.")
    retry_base_delay: float = _s(2.0, "First retry delay (exponential backoff, full jitter).")
    retry_max_delay: float = _s(300.0, "Longest retry delay.")
    failed_retry_after: float = _s(
        300.0, "A failed job is re-run by a new submit once this long has passed."
    )
    runner_active_window: float = _s(300.0, "A runner counts as active this long after contact.")
    sweep_interval: float = _s(5.0, "How often the sweeper looks for stale jobs.")
    result_ttl: float = _s(
        0.0,
        "Delete completed (and expired) jobs this long after they finished; a later submit "
        "computes again (0 = keep forever).",
    )
    failure_ttl: float = _s(
        0.0, "Delete failed and cancelled jobs this long after they finished (0 = keep forever)."
    )
    console_ttl: float = _s(
        0.0, "Clear the console output of jobs finished longer ago than this (0 = keep it)."
    )
    figure_ttl: float = _s(
        0.0,
        "Delete the stored figure files of jobs finished longer ago than this; the next "
        "submit computes the figure again (0 = keep them).",
    )
    runner_ttl: float = _s(
        7 * 24 * 3600.0,
        "Forget runners not seen for this long and holding no job; one that comes back "
        "registers again (0 = keep them).",
    )
    input_ttl: float = _s(
        7 * 24 * 3600.0,
        "Delete an uploaded input file this long after its last use (its upload, a submit "
        "naming it, a runner fetching it), unless a pending or running job names it "
        "(0 = keep them).",
    )
    gc_interval: float = _s(
        3600.0, "How often the retention pass applies the TTLs above (only when one is set)."
    )
    header_timeout: float = _s(
        15.0,
        "A client must send a request's headers within this long of connecting (or of the "
        "request's first byte on a kept-alive connection), else the connection is closed.",
    )
    idle_timeout: float = _s(
        75.0,
        "A connection with no request in progress, or whose request body stops coming, "
        "is closed after this long (event streams and WebSockets excepted).",
    )
    rate_window: float = _s(
        60.0,
        "The period every rate below is counted over, in seconds (a rate of 30: 30 per period).",
    )
    rate_new_jobs: int = _s(
        20,
        "New work (a submit that queues a job, a forced or due re-run) per period per client "
        "address, refilled evenly; cache hits and checks are not counted (0 = unlimited).",
    )
    rate_new_jobs_burst: int = _s(
        20, "New work one client address may start at once, before RUNPACK_RATE_NEW_JOBS paces it."
    )
    rate_key_new_jobs: int = _s(
        600,
        "New work per period per API key, from all addresses together (0 = unlimited); "
        "a stored key made with --rate has its own.",
    )
    rate_requests: int = _s(
        600,
        "Client requests (submits, checks, status reads, event streams) per period per "
        "client address, refilled evenly: enough for pages that poll (0 = unlimited).",
    )
    rate_requests_burst: int = _s(
        200, "Client requests one address may make at once, before RUNPACK_RATE_REQUESTS paces it."
    )
    rate_available: int = _s(120, "Available-job polls per period per runner (0 = unlimited).")
    rate_heartbeat: int = _s(120, "Heartbeats per period per runner (0 = unlimited).")
    rate_registrations: int = _s(
        60,
        "New runners registered per period per client address, all at once if need be "
        "(POST /api/runner/register, or a hello without a known runner id); a runner "
        "coming back under its id does not count (0 = unlimited).",
    )
    trust_proxy: bool = _s(False, "Take the client IP from X-Forwarded-For (behind a proxy).")
    max_params_bytes: int = _s(protocol.MAX_PARAMS_BYTES, "Largest input_params, in bytes.")
    max_output_bytes: int = _s(protocol.MAX_OUTPUT_BYTES, "Largest output_data, in bytes.")
    max_console_bytes: int = _s(protocol.MAX_CONSOLE_BYTES, "Largest console output, in bytes.")
    max_error_bytes: int = _s(protocol.MAX_ERROR_BYTES, "Largest error message, in bytes.")
    max_body_bytes: int = _s(4 * 1024 * 1024, "Largest request body read at all, in bytes.")
    hash_ignored_params: str = _s(
        FIGURE_METADATA,
        "Parameters left out of the job hash, by job type: `TYPE=NAME,NAME`, a type ending "
        "in `*` for a prefix, rules separated by `;` (metadata such as the page a request "
        "came from; see docs/figures.md). Empty: every parameter counts, as in the original.",
    )
    job_type_versions: str = _s(
        "",
        "Versions of job types, which enter their job hashes: `TYPE=VERSION`, a type ending "
        "in `*` for a prefix, rules separated by `;`. Raise one when a handler's results "
        "change, so that cached results of the old version are not served. A type named "
        "here has this version whatever its runners' handlers declare (docs/runners.md). "
        "Empty: the versions handlers declare; hashes as in the original for the others.",
    )
    version_keys: str = _s(
        "env",
        "Runner keys whose runners' handlers may set job types' versions (comma-separated): "
        "`env` for RUNPACK_RUNNER_API_KEY, stored keys by id. The versions other runners "
        "declare never raise a type's version; such a runner takes a type's jobs only if it "
        "declares that type's current version (docs/runners.md).",
    )
    max_upload_bytes: int = _s(
        500 * 1024 * 1024, "Largest figure upload (a tar of its files), in bytes."
    )
    input_upload_mb: int = _s(
        100, "Largest input file uploaded for a job (POST /api/inputs), in MiB."
    )
    input_store_mb: int = _s(
        10240,
        "Most the uploaded input files may add up to, in MiB (each counts at least 4 KiB); "
        "past it an upload is refused (507) until the retention pass (RUNPACK_INPUT_TTL) "
        "frees room.",
    )
    max_upload_files: int = _s(10_000, "Most entries (files and folders) in one figure upload.")
    max_upload_ratio: int = _s(
        100,
        "How many times its size a compressed figure upload may unpack to (an archive "
        "of up to 1 MiB unpacked is always allowed).",
    )
    validation_timeout: float = _s(
        5.0, "Timeout for checking a cached figpack_url (a failure keeps the result)."
    )
    validation_cache_ttl: float = _s(60.0, "How long a figpack_url check is remembered.")
    figure_url_hosts: str = _s(
        ",".join(FIGPACK_HOSTS),
        "Comma-separated hosts whose figpack.json the server may fetch to check a cached "
        "figpack_url (`*.example.org` for a domain, `*` for any); a figure URL elsewhere "
        "expires its result. Figures stored by this server are checked on disk.",
    )
    allow_private_urls: bool = _s(
        False,
        "Let the server fetch figure URLs on loopback, private and link-local addresses "
        "(refused by default, as are metadata addresses); local runners inherit it.",
    )
    notify_relay_base_url: str = _s("", "NotifyRelay base URL to announce new jobs (optional).")
    notify_relay_publish_key: str = _s("", "NotifyRelay publish key.", secret=True)
    local_runners: int = _s(
        0, "Runner daemons to start beside the server, for local use (`make run` starts one)."
    )
    log_level: str = _s("info", "Logging level.")
    log_format: str = _s("text", "Log lines for people (text) or one JSON object per line (json).")
    event_loop: str = _s(
        "auto", "Event loop: auto (uvloop where installed, else asyncio's), uvloop or asyncio."
    )
    metrics_public: bool = _s(
        False,
        "Serve /metrics without a key, for a Prometheus on a trusted network "
        "(default: the admin key, or the runner key as for other admin reads).",
    )

    @property
    def has_keys(self) -> bool:
        return bool(self.submit_api_key and self.runner_api_key and self.admin_api_key)

    @property
    def base_url(self) -> str:
        """``public_url`` without a trailing slash, or the address the server binds."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Settings from ``RUNPACK_*`` variables, then explicit overrides (CLI flags)."""
        return cls(**read_values(cls, environ, overrides))

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
        """Settings of a command: its parsed flags that name a setting (those left unset
        are None) over the ``RUNPACK_*`` variables of ``environ``. ValueError names a
        variable or a flag whose value does not fit."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_env(environ, **{k: v for k, v in vars(args).items() if k in names})


def describe() -> list[Spec]:
    """Name, variable, default and help of every setting (for the CLI, docs/settings.md, tests)."""
    return describe_fields(Settings, lambda f: "--" + f.name.replace("_", "-"))


def settings_table() -> str:
    """The table in docs/settings.md (a test keeps that page equal to this)."""

    def secret(spec: Spec) -> str:
        if spec["name"].endswith("_api_key"):
            return "generated when unset, loopback only"
        return "unset"

    return envvars.settings_table(describe(), secret)
