"""The client commands: submit, watch, status, cancel, jobs, runners. They talk to a
server through :mod:`runpack.client`; :mod:`runpack.terminal` draws."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runpack.terminal import Target

EPILOG = (
    "The server is --url, else RUNPACK_URL, else http://127.0.0.1:8080. Keys come from "
    "RUNPACK_SUBMIT_API_KEY and RUNPACK_ADMIN_API_KEY (make run saves them in "
    "runpack-data/dev-keys.env). Exit status: 0 success, 1 the job failed or was "
    "cancelled, 2 usage, key or connection errors, or a rate limit (429; --retry waits "
    "it out), 124 --timeout ran out (the job goes on), 130 interrupted."
)


def target(args: argparse.Namespace) -> Target:
    """Server URL and keys: --url or RUNPACK_URL; the admin key also submits."""
    from runpack.terminal import DEFAULT_URL, Target

    admin_key = os.environ.get("RUNPACK_ADMIN_API_KEY") or None
    return Target(
        url=args.url or os.environ.get("RUNPACK_URL") or DEFAULT_URL,
        submit_key=os.environ.get("RUNPACK_SUBMIT_API_KEY") or admin_key,
        admin_key=admin_key,
        retry_on_limit=args.retry,
    )


def submit(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    options = {"wait": args.wait, "force": args.force, "priority": args.priority}
    if args.timeout is not None and not args.wait:
        err.print("runpack: --timeout goes with --wait", markup=False, highlight=False)
        return terminal.EXIT_USAGE
    command = terminal.submit(
        target(args),
        args.job_type,
        args.param,
        args.json_params,
        **options,
        out=out,
        err=err,
        timeout=args.timeout,
        id_only=args.id_only,
        input_files=args.input,
    )
    return terminal.run(command, err)


def watch(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    command = terminal.watch(target(args), args.job_id, out=out, err=err, timeout=args.timeout)
    return terminal.run(command, err)


def status(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    command = terminal.status(target(args), args.job_id, as_json=args.json, out=out)
    return terminal.run(command, err)


def cancel(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    return terminal.run(terminal.cancel(target(args), args.job_id, out=out), err)


def jobs(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    command = terminal.jobs(
        target(args),
        status=args.status,
        job_type=args.type,
        limit=args.limit,
        as_json=args.json,
        out=out,
    )
    return terminal.run(command, err)


def runners(args: argparse.Namespace) -> int:
    from runpack import terminal

    out, err = terminal.consoles()
    return terminal.run(terminal.runners(target(args), as_json=args.json, out=out), err)


def add_to(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="The server [RUNPACK_URL].")
    common.add_argument(
        "--retry",
        action="store_true",
        help="Over a rate limit (429), wait as long as the server says and try again "
        "(default: stop with exit status 2).",
    )

    def command(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, parents=[common], help=help, description=help, epilog=EPILOG
        )
        parser.set_defaults(func=func)
        return parser

    parser = command("submit", "Submit a job; with --wait, follow it to its result.", submit)
    parser.add_argument("job_type", metavar="TYPE", help="The job type, e.g. hello_world.")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A parameter (repeat it); VALUE is JSON when it parses (3, true, [1]), else text.",
    )
    parser.add_argument("--json-params", metavar="JSON", help="Parameters as a JSON object.")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH=FILE",
        help="Upload a local FILE and name it in the parameter 'inputs' at PATH (a "
        "container job sees it at /inputs/PATH); repeat it.",
    )
    parser.add_argument(
        "--wait", action="store_true", help="Show progress and console live; print the result."
    )
    parser.add_argument(
        "--force", action="store_true", help="Queue a failed or expired job again at once."
    )
    parser.add_argument("--priority", type=int, default=0, help="Higher runs first.")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="With --wait: stop waiting after S seconds, with exit status 124; the job goes on.",
    )
    parser.add_argument(
        "-q",
        "--id-only",
        action="store_true",
        help="Print only the job id (JOB_ID=$(runpack submit … -q)); with --wait, the "
        "exit status tells how it ended.",
    )
    parser = command("watch", "Follow a job live to its result.", watch)
    parser.add_argument("job_id", metavar="ID")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="Stop waiting after S seconds, with exit status 124; the job goes on.",
    )
    parser = command("status", "Show a job.", status)
    parser.add_argument("job_id", metavar="ID")
    parser.add_argument("--json", action="store_true", help="Print the job as JSON.")
    parser = command("cancel", "Cancel a job (a running one needs the admin key).", cancel)
    parser.add_argument("job_id", metavar="ID")
    parser = command("jobs", "List jobs, newest first (admin key).", jobs)
    parser.add_argument("--status", default=None, help="Only jobs in this state.")
    parser.add_argument("--type", default=None, help="Only job types containing this text.")
    parser.add_argument("--limit", type=int, default=20, help="At most this many (default 20).")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    parser = command("runners", "List runners (admin key).", runners)
    parser.add_argument("--json", action="store_true", help="Print JSON.")
