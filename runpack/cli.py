"""The ``runpack`` command: serve, migrate, settings, and the client commands (submit,
watch, status, cancel, jobs, runners). The only reader of the environment."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runpack import __version__
from runpack.errors import StoreError
from runpack.settings import Settings, describe, env_name

if TYPE_CHECKING:
    from runpack.terminal import Target

KEY_FIELDS = ("submit_api_key", "runner_api_key", "admin_api_key")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """A ``--flag`` for every setting; unset flags fall back to RUNPACK_* or the default."""
    for spec in describe():
        if spec["secret"]:
            continue  # keys come from the environment only, never the command line
        kwargs: dict[str, Any] = {"dest": spec["name"], "default": None, "help": spec["help"]}
        if spec["type"] == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float}.get(spec["type"], str)
            kwargs["metavar"] = spec["name"].upper()
        parser.add_argument(spec["flag"], **kwargs)


def settings_from(args: argparse.Namespace) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    try:
        return Settings.from_env(os.environ, **overrides)
    except ValueError as exc:
        raise SystemExit(f"runpack: {exc}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_keys(settings: Settings) -> Settings:
    """Development mode: keep or generate the missing keys in DATA_DIR/dev-keys.env."""
    path = Path(settings.data_dir) / "dev-keys.env"
    stored: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            stored[name.strip()] = value.strip()
    values = {}
    for field in KEY_FIELDS:
        values[field] = (
            getattr(settings, field) or stored.get(env_name(field)) or secrets.token_urlsafe(24)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"export {env_name(f)}={values[f]}" for f in KEY_FIELDS]
    lines.append(f"export RUNPACK_URL=http://{settings.host}:{settings.port}")
    lines.append(f"export RUNPACK_WORKER_URL=http://{settings.host}:{settings.port}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return settings.replace(**values)


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one: every runner socket and
    event stream holds a descriptor, and the usual soft limit (1024) is far too low."""
    try:
        import resource
    except ImportError:  # not on this platform: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # e.g. macOS refuses an infinite soft limit
        logging.getLogger(__name__).warning("open files limit stays at %d: %s", soft, exc)


def cmd_serve(args: argparse.Namespace) -> int:
    from runpack import server
    from runpack.app import create_app
    from runpack.eventloop import loop_factory, tune_gc
    from runpack.logs import setup_logging

    settings = settings_from(args)
    try:
        setup_logging(settings.log_level, settings.log_format)
        new_loop = loop_factory(settings.event_loop)
    except ValueError as exc:
        print(f"runpack: {exc}", file=sys.stderr)
        return 2
    raise_open_files_limit()
    base = f"http://{settings.host}:{settings.port}"
    if not settings.has_keys:
        if not is_loopback(settings.host):
            print(
                "runpack: refusing to bind a non-loopback address without keys: set "
                "RUNPACK_SUBMIT_API_KEY, RUNPACK_RUNNER_API_KEY and RUNPACK_ADMIN_API_KEY",
                file=sys.stderr,
            )
            return 2
        settings = local_keys(settings)
        keyfile = Path(settings.data_dir) / "dev-keys.env"
        print("Runpack is running in local development mode with these keys:")
        for field in KEY_FIELDS:
            print(f"  {env_name(field)}={getattr(settings, field)}")
        print(f"(saved in {keyfile}; in another shell: source {keyfile})")
    print(f"Dashboard: {base}/ui/   API: {base}/api/   Health: {base}/health", flush=True)
    app = create_app(settings)
    tune_gc()
    try:
        server.run(
            app,
            host=settings.host,
            port=settings.port,
            header_timeout=settings.header_timeout,
            idle_timeout=settings.idle_timeout,
            shutdown_timeout=5,
            loop=new_loop(),
        )
    except StoreError as exc:
        return store_failure("serve", exc)
    return 0


def store_failure(command: str, exc: StoreError) -> int:
    """A database that cannot be opened is a one-line error, not a traceback."""
    print(f"runpack {command}: {exc.details or exc.message}", file=sys.stderr)
    return 1


def cmd_migrate(args: argparse.Namespace) -> int:
    from runpack.store import open_store

    settings = settings_from(args)

    async def run() -> None:
        store = open_store(settings.db)
        await store.open()  # opening applies pending migrations
        await store.close()

    try:
        asyncio.run(run())
    except StoreError as exc:
        return store_failure("migrate", exc)
    print(f"{settings.db}: schema up to date")
    return 0


def cmd_import_d1(args: argparse.Namespace) -> int:
    from runpack.importer import D1ImportError, import_d1_into

    settings = settings_from(args)
    try:
        summary = asyncio.run(
            import_d1_into(
                args.file,
                settings.db,
                max_attempts=settings.max_attempts,
                skip_invalid=args.skip_invalid,
            )
        )
    except D1ImportError as exc:
        print(f"runpack import-d1: {exc}", file=sys.stderr)
        return 1
    target = settings.db
    if target.startswith(("postgres://", "postgresql://")):
        from runpack.store.postgres import redact

        target = redact(target)
    print(summary.render(target))
    return 0


def settings_table() -> str:
    """The README's settings table (a test keeps the README equal to this)."""
    rows = [
        "| Variable | Flag | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for spec in describe():
        flag = "—" if spec["secret"] else f"`{spec['flag']}`"
        default = spec["default"]
        if spec["secret"] and spec["name"].endswith("_api_key"):
            shown = "generated when unset, loopback only"
        elif default == "":
            shown = "unset"
        else:
            shown = f"`{str(default).lower() if isinstance(default, bool) else default}`"
        rows.append(f"| `{spec['env']}` | {flag} | {shown} | {spec['help']} |")
    return "\n".join(rows)


def cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_table())
        return 0
    for spec in describe():
        default = "" if spec["secret"] else spec["default"]
        print(f"{spec['env']:34} {spec['flag']:28} {default!s:14} {spec['help']}")
    return 0


# --- client commands (the drawing is in runpack.terminal) ------------------------------


def client_target(args: argparse.Namespace) -> Target:
    """Server URL and keys: --url or RUNPACK_URL; the admin key also submits."""
    from runpack.terminal import DEFAULT_URL, Target

    admin_key = os.environ.get("RUNPACK_ADMIN_API_KEY") or None
    return Target(
        url=args.url or os.environ.get("RUNPACK_URL") or DEFAULT_URL,
        submit_key=os.environ.get("RUNPACK_SUBMIT_API_KEY") or admin_key,
        admin_key=admin_key,
    )


def cmd_submit(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    options = {"wait": args.wait, "force": args.force, "priority": args.priority}
    command = terminal.submit(
        client_target(args),
        args.job_type,
        args.param,
        args.json_params,
        **options,
        out=out,
        err=err,
    )
    return terminal.run(command, err)


def cmd_watch(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    return terminal.run(terminal.watch(client_target(args), args.job_id, out=out, err=err), err)


def cmd_status(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    command = terminal.status(client_target(args), args.job_id, as_json=args.json, out=out)
    return terminal.run(command, err)


def cmd_cancel(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    return terminal.run(terminal.cancel(client_target(args), args.job_id, out=out), err)


def cmd_jobs(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    command = terminal.jobs(
        client_target(args),
        status=args.status,
        job_type=args.type,
        limit=args.limit,
        as_json=args.json,
        out=out,
    )
    return terminal.run(command, err)


def cmd_runners(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    return terminal.run(terminal.runners(client_target(args), as_json=args.json, out=out), err)


CLIENT_EPILOG = (
    "The server is --url, else RUNPACK_URL, else http://127.0.0.1:8080. Keys come from "
    "RUNPACK_SUBMIT_API_KEY and RUNPACK_ADMIN_API_KEY (make run saves them in "
    "runpack-data/dev-keys.env). Exit status: 0 success, 1 the job failed or was "
    "cancelled, 2 usage, key or connection errors."
)


def add_client_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="The server [RUNPACK_URL].")

    def command(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, parents=[common], help=help, description=help, epilog=CLIENT_EPILOG
        )
        parser.set_defaults(func=func)
        return parser

    submit = command("submit", "Submit a job; with --wait, follow it to its result.", cmd_submit)
    submit.add_argument("job_type", metavar="TYPE", help="The job type, e.g. hello_world.")
    submit.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A parameter (repeat it); VALUE is JSON when it parses (3, true, [1]), else text.",
    )
    submit.add_argument("--json-params", metavar="JSON", help="Parameters as a JSON object.")
    submit.add_argument(
        "--wait", action="store_true", help="Show progress and console live; print the result."
    )
    submit.add_argument(
        "--force", action="store_true", help="Queue a failed or expired job again at once."
    )
    submit.add_argument("--priority", type=int, default=0, help="Higher runs first.")
    watch = command("watch", "Follow a job live to its result.", cmd_watch)
    watch.add_argument("job_id", metavar="ID")
    status = command("status", "Show a job.", cmd_status)
    status.add_argument("job_id", metavar="ID")
    status.add_argument("--json", action="store_true", help="Print the job as JSON.")
    cancel = command("cancel", "Cancel a job (a running one needs the admin key).", cmd_cancel)
    cancel.add_argument("job_id", metavar="ID")
    jobs = command("jobs", "List jobs, newest first (admin key).", cmd_jobs)
    jobs.add_argument("--status", default=None, help="Only jobs in this state.")
    jobs.add_argument("--type", default=None, help="Only job types containing this text.")
    jobs.add_argument("--limit", type=int, default=20, help="At most this many (default 20).")
    jobs.add_argument("--json", action="store_true", help="Print JSON.")
    runners = command("runners", "List runners (admin key).", cmd_runners)
    runners.add_argument("--json", action="store_true", help="Print JSON.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runpack", description="Runpack: on-demand computation and result caching."
    )
    parser.add_argument("--version", action="version", version=f"runpack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Run the server.")
    add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)
    migrate = sub.add_parser("migrate", help="Create or upgrade the database schema.")
    migrate.add_argument("--db", default=None, help="SQLite file path, or a postgresql:// DSN.")
    migrate.set_defaults(func=cmd_migrate)
    import_d1 = sub.add_parser(
        "import-d1",
        help="Load a `wrangler d1 export` of the original's database (jobs and runners).",
    )
    import_d1.add_argument("file", help="The export: SQL text written by `wrangler d1 export`.")
    import_d1.add_argument("--db", default=None, help="SQLite file path, or a postgresql:// DSN.")
    import_d1.add_argument(
        "--skip-invalid", action="store_true", help="Import the valid rows, list the others."
    )
    import_d1.set_defaults(func=cmd_import_d1)
    bench = sub.add_parser("bench", help="Measure jobs/s and latency end to end.")
    from runpack import bench as bench_module

    bench_module.add_arguments(bench)
    bench.set_defaults(func=bench_module.main)
    from runpack import backup as backup_module
    from runpack import retention as retention_module

    gc = sub.add_parser(
        "gc", help="Apply the retention TTLs now: delete old jobs, consoles, figures, runners."
    )
    retention_module.add_arguments(gc)
    gc.set_defaults(func=retention_module.main)
    backup = sub.add_parser("backup", help="Copy a SQLite database safely while it is in use.")
    backup_module.add_arguments(backup)
    backup.set_defaults(func=backup_module.main)
    from runpack import keys as keys_module

    keys = sub.add_parser(
        "keys",
        help="Create, list and revoke API keys kept in the database.",
        description=keys_module.DESCRIPTION,
    )
    keys_module.add_arguments(keys)
    keys.set_defaults(func=keys_module.main)
    settings = sub.add_parser("settings", help="List every setting and its variable.")
    settings.add_argument("--markdown", action="store_true", help="Print the README's table.")
    settings.set_defaults(func=cmd_settings)
    add_client_commands(sub)
    # Listed for --help only: main() hands `runpack runner …` to runpack_runner.cli.
    sub.add_parser("runner", help="Run jobs (runpack-runner; see runpack runner --help).")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["runner"]:  # the runner daemon has its own flags: hand them all over
        from runpack_runner.cli import main as runner_main

        return runner_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
