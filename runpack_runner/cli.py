"""``runpack-runner`` (also ``runpack runner``): the only reader of the environment."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from runpack import envvars
from runpack.envvars import env_name, flag_help, split_list
from runpack.eventloop import run, tune_gc
from runpack_runner import __version__
from runpack_runner.settings import HANDLER_ENVIRONMENT, RunnerSettings, describe

log = logging.getLogger("runpack_runner")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runpack-runner",
        description="Run Runpack jobs: connect to a server (RUNPACK_WORKER_URL) with the "
        "runner key (RUNPACK_RUNNER_API_KEY) and run the jobs it assigns. Every flag can "
        "also be set as RUNPACK_<NAME>, e.g. RUNPACK_CONCURRENCY.",
    )
    parser.add_argument("--version", action="version", version=f"runpack-runner {__version__}")
    for spec in describe():
        if spec["secret"]:
            continue  # keys come from the environment only, never the command line
        flags = [spec["flag"]]
        if spec["flag"] != "--" + spec["name"].replace("_", "-"):
            flags.append("--" + spec["name"].replace("_", "-"))
        kwargs: dict[str, Any] = {
            "dest": spec["name"],
            "default": None,
            "help": flag_help(spec),
            "metavar": spec["name"].upper(),
        }
        if spec["type"] == "bool":
            del kwargs["metavar"]
            kwargs["action"] = argparse.BooleanOptionalAction
        elif spec["type"].startswith("tuple"):
            kwargs["type"] = split_list
        else:
            kwargs["type"] = {"int": int, "float": float}.get(spec["type"], str)
        parser.add_argument(*flags, **kwargs)
    parser.add_argument(
        "--list-job-types", action="store_true", help="Print the installed job types and exit."
    )
    parser.add_argument(
        "--settings-markdown",
        action="store_true",
        help="Print the settings as the Markdown table of docs/settings.md and exit.",
    )
    return parser


def settings_table() -> str:
    """Variable, flag, default and meaning of every runner setting (for docs/settings.md)."""
    return envvars.settings_table(describe(), lambda spec: "required")


def setup_logging(settings: RunnerSettings) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if settings.log_file:
        handlers.append(logging.FileHandler(settings.log_file, encoding="utf-8"))
    logging.basicConfig(
        level=settings.log_level.upper(), format=LOG_FORMAT, handlers=handlers, force=True
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runpack_runner.registry import Registry, UnknownJobTypes, installed

    if args.settings_markdown:
        print(settings_table())
        return 0
    if args.list_job_types:
        for job_type, entry_point in sorted(installed().items()):
            print(f"{job_type:32} {entry_point.value}")
        return 0
    names = {f.name for f in dataclasses.fields(RunnerSettings)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    try:
        settings = RunnerSettings.from_env(os.environ, **overrides)
        setup_logging(settings)
    except (ValueError, OSError) as exc:
        print(f"runpack-runner: {exc}", file=sys.stderr)
        return 2
    if not settings.runner_api_key:
        log.error("RUNPACK_RUNNER_API_KEY is not set")
        return 2
    for name in HANDLER_ENVIRONMENT:
        os.environ[env_name(name)] = str(getattr(settings, name))
    try:
        registry = Registry.discover(settings.job_types)
    except UnknownJobTypes as exc:
        log.error("%s", exc)
        return 2
    registry.configure(settings)
    if not len(registry):
        log.error("no job handlers could be loaded")
        return 2

    from runpack_runner.runner import Runner
    from runpack_runner.state import RunnerState, default_name, load_state, save_state

    state_path = Path(settings.state_file)
    state = load_state(state_path)
    name = settings.name or state.name or default_name()
    if name != state.name:
        state = RunnerState(state.runner_id, name, state.secret)
        save_state(state_path, state)
    runner = Runner(settings, registry, state_path=state_path, state=state, name=name)
    tune_gc()
    return run(runner.run(), settings.event_loop)


if __name__ == "__main__":
    sys.exit(main())
