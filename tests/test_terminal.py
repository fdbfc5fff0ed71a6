"""The terminal commands as real subprocesses against a real server and runner.

Output is not a terminal here, so following a job prints a line per change
(``progress: 1/3 (33%)``); one test forces the terminal view (the live bar).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from runpack.terminal import JobView, UsageError, parse_params, print_json
from tests.live import ADMIN_KEY, SUBMIT_KEY, Live, live_fixture, unique  # noqa: F401
from tests.procs import clean_env, free_port

README = Path(__file__).resolve().parents[1] / "README.md"
WATCHING = Path(__file__).resolve().parents[1] / "docs" / "watching.md"
RUNPACK = Path(sys.executable).parent / "runpack"
KEYFILE_HINT = "(make run saved it in runpack-data/dev-keys.env)"


def env_for(live: Live, **extra: str) -> dict[str, str]:
    env = clean_env({"RUNPACK_URL": live.url, **extra})
    env.pop("FORCE_COLOR", None)
    env["TTY_COMPATIBLE"] = "0"  # not a terminal, whatever the CI's environment says
    return env


def runpack(env: dict[str, str], *args: str, limit: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNPACK), *args], env=env, capture_output=True, text=True, timeout=limit
    )


def keys(submit: bool = True, admin: bool = True) -> dict[str, str]:
    out = {}
    if submit:
        out["RUNPACK_SUBMIT_API_KEY"] = SUBMIT_KEY
    if admin:
        out["RUNPACK_ADMIN_API_KEY"] = ADMIN_KEY
    return out


def submitted(live: Live, *params: str) -> str:
    done = runpack(env_for(live, **keys()), "submit", "hello_world", *params)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["job_id"])


# --- submit --wait ----------------------------------------------------------------------------


def test_submit_wait_as_the_readme_shows(live: Live) -> None:
    command = "runpack submit hello_world -p name=Ada -p processing_time=3 --wait"
    assert command in README.read_text()
    done = runpack(env_for(live, **keys(admin=False)), *command.split()[1:])
    assert done.returncode == 0, done.stderr + live.logs()
    assert json.loads(done.stdout) == {"message": "Hello, Ada!", "processing_time": 3}
    states = re.findall(r"^progress: (\d)/3 \(\d+%\)$", done.stderr, re.M)
    assert len(set(states)) >= 2, done.stderr  # it moved
    assert states == sorted(states) and states[-1] == "3"
    assert "Job queued successfully" in done.stderr
    assert "  │ " in done.stderr and "Completed!" in done.stderr  # the console, live
    assert done.stderr.rstrip().endswith("status: completed")


def test_submit_wait_draws_a_live_bar_on_a_terminal(live: Live) -> None:
    env = env_for(live, **keys())
    env.pop("TTY_COMPATIBLE")
    env.update(FORCE_COLOR="1", COLUMNS="100")
    params = ("-p", f"name={unique()}", "-p", "processing_time=2")
    done = runpack(env, "submit", "hello_world", *params, "--wait")
    assert done.returncode == 0, done.stderr
    assert "━" in done.stderr  # the bar
    assert "2/2" in done.stderr and "completed" in done.stderr
    assert "\x1b[" in done.stderr  # redrawn in place
    assert "progress:" not in done.stderr  # no line mode


def test_a_failing_job_exits_1_with_its_error(live: Live) -> None:
    done = runpack(
        env_for(live, **keys()),
        "submit",
        "hello_world",
        "-p",
        f"name={unique()}",
        "-p",
        "processing_time=301",
        "--wait",
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "failed: Invalid parameters" in done.stderr
    assert "must not exceed 300 seconds" in done.stderr


def test_submit_without_wait_prints_the_job(live: Live) -> None:
    name = unique()
    params = json.dumps({"name": name, "processing_time": 0})
    first = runpack(env_for(live, **keys()), "submit", "hello_world", "--json-params", params)
    assert first.returncode == 0, first.stderr
    job = json.loads(first.stdout)
    assert job["status"] == "pending" and job["message"] == "Job queued successfully"
    # The same inputs as -p values (parsed as JSON: 0 is a number) find the same job.
    again = runpack(
        env_for(live, **keys()),
        "submit",
        "hello_world",
        "-p",
        "processing_time=0",
        "-p",
        f"name={name}",
        "--priority",
        "5",
    )
    assert json.loads(again.stdout)["job_id"] == job["job_id"]


# --- watch, status, cancel, jobs, runners -----------------------------------------------------


def test_watch_status_cancel_jobs_runners(live: Live) -> None:
    env = env_for(live, **keys())
    job_id = submitted(live, "-p", f"name={unique()}", "-p", "processing_time=120")
    with subprocess.Popen(
        [str(RUNPACK), "watch", job_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watcher:  # closes its pipes however the test ends
        try:
            assert watcher.stderr is not None
            # Wait (bounded by the test timeout) until the watcher shows the job running.
            for line in watcher.stderr:
                if line.startswith("progress: "):
                    break
            status = runpack(env, "status", job_id)
            assert status.returncode == 0, status.stderr
            assert re.search(r"status\s+in_progress", status.stdout)
            assert re.search(r"type\s+hello_world", status.stdout)
            as_json = json.loads(runpack(env, "status", job_id, "--json").stdout)
            assert as_json["job_id"] == job_id and as_json["status"] == "in_progress"

            cancelled = runpack(env, "cancel", job_id)
            assert cancelled.returncode == 0, cancelled.stderr
            assert f"Job cancelled: {job_id} is cancelled" in cancelled.stdout
            _, err = watcher.communicate(timeout=20)
            assert watcher.returncode == 1, err
            assert "status: cancelled" in err and "Cancelled by an administrator" in err
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()

    again = runpack(env, "cancel", job_id)
    assert again.returncode == 1  # refused: it is already cancelled
    assert "409 Job cannot be cancelled (the job is cancelled)" in again.stderr

    jobs = runpack(env, "jobs", "--status", "cancelled", "--limit", "1000")
    assert jobs.returncode == 0, jobs.stderr
    assert job_id in jobs.stdout and "cancelled" in jobs.stdout
    listed = json.loads(runpack(env, "jobs", "--type", "hello", "--json", "--limit", "1000").stdout)
    assert job_id in {j["job_id"] for j in listed}

    runners = runpack(env, "runners")
    assert runners.returncode == 0, runners.stderr
    assert "hello_world" in runners.stdout and "yes" in runners.stdout
    [runner] = json.loads(runpack(env, "runners", "--json").stdout)
    assert runner["connected"] and "hello_world" in runner["capabilities"]


def test_watch_of_a_finished_job_prints_its_result(live: Live) -> None:
    name = unique()
    job_id = submitted(live, "-p", f"name={name}", "-p", "processing_time=0")
    done = runpack(env_for(live), "watch", job_id)  # no key needed to follow a job
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["message"] == f"Hello, {name}!"


def test_unknown_job(live: Live) -> None:
    done = runpack(env_for(live), "watch", "00000000-0000-4000-8000-000000000000")
    assert done.returncode == 2
    assert "404 Job not found" in done.stderr


# --- keys, usage and connection errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "variable"),
    [
        (("submit", "hello_world", "-p", "name=x"), "RUNPACK_SUBMIT_API_KEY"),
        (("cancel", "00000000-0000-4000-8000-000000000000"), "RUNPACK_SUBMIT_API_KEY"),
        (("jobs",), "RUNPACK_ADMIN_API_KEY"),
        (("runners",), "RUNPACK_ADMIN_API_KEY"),
    ],
)
def test_a_missing_key_is_named(live: Live, args: tuple[str, ...], variable: str) -> None:
    done = runpack(env_for(live), *args)
    assert done.returncode == 2
    assert done.stderr.strip() == f"runpack: set {variable} {KEYFILE_HINT}"


def test_the_admin_key_alone_submits(live: Live) -> None:
    done = runpack(env_for(live, **keys(submit=False)), "submit", "hello_world", "-p", "name=x")
    assert done.returncode == 0, done.stderr


def test_a_wrong_key_and_a_missing_server(live: Live) -> None:
    wrong = runpack(
        env_for(live, RUNPACK_SUBMIT_API_KEY="wrong"), "submit", "hello_world", "-p", "n=1"
    )
    assert wrong.returncode == 2
    assert "401 Invalid API key" in wrong.stderr
    url = f"http://127.0.0.1:{free_port()}"
    gone = runpack(env_for(live, **keys()), "submit", "--url", url, "hello_world")
    assert gone.returncode == 2
    assert f"cannot reach {url}" in gone.stderr and "is the server running?" in gone.stderr


def test_bad_usage_exits_2(live: Live) -> None:
    env = env_for(live, **keys())
    bad_pair = runpack(env, "submit", "hello_world", "-p", "novalue")
    assert bad_pair.returncode == 2
    assert "-p takes key=value, got 'novalue'" in bad_pair.stderr
    assert runpack(env, "submit", "hello_world", "--json-params", "[1]").returncode == 2
    assert runpack(env, "submit").returncode == 2  # argparse: TYPE is required


# --- units ------------------------------------------------------------------------------------


def test_param_values_are_json_when_they_parse() -> None:
    params = parse_params(
        ["name=Ada", "processing_time=3", "flag=true", "ids=[1, 2]", "text=3 apples", "eq=a=b"],
        '{"name": "Bob", "extra": {"x": 1}}',
    )
    assert params == {
        "name": "Ada",
        "processing_time": 3,
        "flag": True,
        "ids": [1, 2],
        "text": "3 apples",
        "eq": "a=b",
        "extra": {"x": 1},
    }
    with pytest.raises(UsageError):
        parse_params(["=1"])
    with pytest.raises(UsageError):
        parse_params([], "{broken")


def test_line_mode_prints_each_console_line_once() -> None:
    from runpack.client import Event

    view = JobView("j")
    lines = view.apply(
        Event("1", "snapshot", {"job_type": "t", "status": "in_progress", "console_output": "a\nb"})
    )
    assert lines == ["job j (t): in_progress", "  │ a"]  # "b" is not a whole line yet
    assert view.apply(Event("2", "console", {"append": "\nc\n"})) == ["  │ b", "  │ c"]
    # The runner's final console repeats what was streamed, plus the last line.
    assert view.apply(Event("3", "console", {"replace": "a\nb\nc\ndone\n"})) == ["  │ done"]
    assert view.apply(Event("4", "progress", {"current": 1, "total": 4})) == ["progress: 1/4 (25%)"]
    assert view.apply(Event("5", "progress", {"current": 1, "total": 4})) == []
    assert view.apply(Event("6", "status", {"status": "completed", "result": {}})) == [
        "status: completed"
    ]
    assert view.final is not None


def test_the_docs_curl_follows_a_job(live: Live) -> None:
    [line] = [ln for ln in WATCHING.read_text().splitlines() if ln.startswith("curl -N ")]
    job_id = submitted(live, "-p", f"name={unique()}", "-p", "processing_time=1")
    command = line.replace("http://127.0.0.1:8080", live.url).replace("$JOB_ID", job_id)
    done = subprocess.run(
        ["bash", "-c", f"command curl --fail-with-body -sS --max-time 20 {command[5:]}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr  # the stream ended by itself
    assert done.stdout.startswith("id: ") and "event: snapshot" in done.stdout
    assert 'event: status\ndata: {"status":"completed"' in done.stdout


def test_json_output_is_never_wrapped_to_the_console_width() -> None:
    # Rich wraps long lines to the terminal's width; a long value (a runner name, a
    # console line) must still come out as one JSON string that parses.
    buffer = io.StringIO()
    out = Console(file=buffer, width=40, force_terminal=False)
    value = {"console_output": "x" * 300 + " " + "y" * 300, "name": "a b " * 50}
    print_json(out, value)
    assert json.loads(buffer.getvalue()) == value
