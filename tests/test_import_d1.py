"""``runpack import-d1``: a deployment of the original moves over with its cache intact.

tests/data/d1-export.sql is written by hand in the format of ``wrangler d1 export``
(the original's schema, quoted INSERTs, ``replace(…, char(10))`` for newlines).
Every test that writes runs on SQLite and on PostgreSQL (the ``settings`` fixture).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runpack.hashing import job_hash
from runpack.importer import D1ImportError, ImportSummary, import_d1_into, read_export
from runpack.settings import Settings
from runpack.store import JobRow, RunnerRow, open_store
from tests.conftest import ADMIN, SUBMIT, MakeClient, as_runner

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "data" / "d1-export.sql"

ALICE = "ae87dfe9-0e0e-4a3e-9115-80c9fc686d5b"  # completed hello_world
ALICE_HASH = "d61f3505bd8aaba891e143b29a1028b1d07d6d26ebc7d5aefbecf72a31268448"
FIGURE = "372b9dba-4648-451a-a9b9-04893a41e8c8"  # completed figpack raster plot
FAILED = "d7cf33c0-f93a-4f60-ad3b-c4180836ee1d"
FAILED_ERROR = "ValueError: processing_time can't be negative (got -1) for O'Brien"
PENDING = "67c3ab4b-2ef3-4daa-9d26-5e13d3f2f898"
RUNNER_1 = "73ac3dbb-f8f8-45ac-b168-df51cd1f6ff3"
RUNNER_2 = "ea8af79a-6aa9-4be6-9dfa-bf3ce590d409"
STATUSES = {"completed": 2, "failed": 1, "pending": 1, "in_progress": 1, "claimed": 1}


async def run_import(settings: Settings, path: Path = FIXTURE, **kw: Any) -> ImportSummary:
    return await import_d1_into(path, settings.db, max_attempts=settings.max_attempts, **kw)


async def stored(settings: Settings) -> tuple[list[JobRow], list[RunnerRow]]:
    store = open_store(settings.db)
    await store.open()
    try:
        jobs = await store.list_jobs(None, None, 1000, 0)
        return sorted(jobs, key=lambda j: j.id), sorted(await store.list_runners(), key=str)
    finally:
        await store.close()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the fixture carries the cache over ---------------------------------------------------
async def test_import_summary_and_rows(settings: Settings) -> None:
    summary = await run_import(settings)
    assert (summary.jobs_read, summary.jobs_imported, summary.jobs_present) == (6, 6, 0)
    assert (summary.runners_read, summary.runners_imported, summary.runners_present) == (2, 2, 0)
    assert summary.statuses == STATUSES
    assert summary.hash_mismatches == []
    assert summary.skipped == []
    text = summary.render("target.db")
    assert "jobs:     6 read, 6 imported, 0 already present" in text
    assert "hash mismatches: 0" in text

    jobs, runners = await stored(settings)
    by_id = {j.id: j for j in jobs}
    alice = by_id[ALICE]
    assert alice.job_hash == ALICE_HASH
    assert alice.input_params == '{"processing_time":60,"name":"Alice"}'  # as the original kept it
    assert alice.console_output == (
        "Starting hello_world job\nProcessing for 60 seconds...\nHello, Alice!\n"
    )
    assert (alice.priority, alice.attempts, alice.max_attempts, alice.not_before) == (0, 1, 3, 0)
    assert alice.timeout is None
    assert by_id[PENDING].attempts == 0
    assert "日本語 🚀" in by_id[PENDING].input_params
    assert by_id[FAILED].error_message == FAILED_ERROR
    assert [r.id for r in runners] == sorted([RUNNER_1, RUNNER_2])


async def test_submit_of_an_imported_job_hits_the_cache(
    settings: Settings, make_client: MakeClient
) -> None:
    await run_import(settings)
    client = await make_client()
    body = {"job_type": "hello_world", "input_params": {"name": "Alice", "processing_time": 60}}
    resp = await client.post("/api/jobs/submit", json=body, headers=SUBMIT)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "job_id": ALICE,
        "status": "completed",
        "message": "Job already completed (cached result)",
        "result": {
            "output_data": {"message": "Hello, Alice!", "processing_time": 60},
            "console_output": (
                "Starting hello_world job\nProcessing for 60 seconds...\nHello, Alice!\n"
            ),
        },
    }
    # The figure job's nested result is readable as the original served it.
    resp = await client.get(f"/api/admin/jobs/{FIGURE}")
    detail = await resp.json()
    assert detail["status"] == "completed"
    assert detail["output_data"]["figpack_url"].endswith("/3f9c2a7e1b4d/index.html")
    assert detail["output_data"]["upload"]["manifest"]["entries"][0] == "index.html"
    resp = await client.get(f"/api/jobs/{FAILED}", headers=SUBMIT)
    failed = await resp.json()
    assert (failed["status"], failed["error"]) == ("failed", FAILED_ERROR)


async def test_pending_job_goes_to_runners_and_runners_are_listed(
    settings: Settings, make_client: MakeClient
) -> None:
    await run_import(settings)
    client = await make_client()
    resp = await client.get(
        "/api/runner/jobs/available",
        params=[("types[]", "hello_world")],
        headers=as_runner(RUNNER_1),
    )
    assert resp.status == 200, await resp.text()
    jobs = {j["job_id"]: j for j in (await resp.json())["jobs"]}
    assert jobs[PENDING]["input_params"] == {
        "name": "Zoë — 日本語 🚀",
        "processing_time": 5,
        "options": {"greeting": "Grüß dich", "repeat": 2, "tags": ["ünïcode", "ok"]},
    }
    assert ALICE not in jobs
    resp = await client.post(f"/api/runner/jobs/{PENDING}/claim", headers=as_runner(RUNNER_1))
    assert resp.status == 200, await resp.text()

    resp = await client.get("/api/admin/runners", headers=ADMIN)
    runners = {r["runner_id"]: r for r in (await resp.json())["runners"]}
    assert runners[RUNNER_1]["name"] == "lab-workstation-01"
    assert runners[RUNNER_1]["capabilities"] == ["hello_world"]
    assert runners[RUNNER_2]["name"] == "Jérémy's figpack box"
    assert runners[RUNNER_2]["capabilities"] == [
        "figpack_nwb_raster_plot",
        "figpack_nwb_units_summary",
        "figpack_nwb_video_preview",
    ]
    resp = await client.get("/api/runner/verify", headers=as_runner(RUNNER_2))
    assert (await resp.json())["exists"] is True


async def test_importing_again_changes_nothing(settings: Settings) -> None:
    await run_import(settings)
    before = await stored(settings)
    again = await run_import(settings)
    assert (again.jobs_read, again.jobs_imported, again.jobs_present) == (6, 0, 6)
    assert (again.runners_imported, again.runners_present) == (0, 2)
    assert await stored(settings) == before


# --- bad exports: a clear error and nothing written -------------------------------------------
async def test_a_bad_insert_fails_with_its_line_and_imports_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    lines = FIXTURE.read_text(encoding="utf-8").splitlines(keepends=True)
    third = [i for i, line in enumerate(lines) if line.startswith('INSERT INTO "jobs"')][2]
    lines[third] = lines[third].replace(f"VALUES('{FAILED}'", f"VALUES(,'{FAILED}'")
    bad = write(tmp_path, "bad.sql", "".join(lines))
    with pytest.raises(D1ImportError) as caught:
        await run_import(settings, bad)
    message = str(caught.value)
    assert 'cannot run its SQL: near ",": syntax error' in message
    assert f"(line {third + 1}: INSERT INTO " in message
    assert await stored(settings) == ([], [])


JOBS_ONLY = """CREATE TABLE jobs (id TEXT PRIMARY KEY, job_hash TEXT, job_type TEXT,
    input_params TEXT, status TEXT, created_at INTEGER, updated_at INTEGER, claimed_by TEXT,
    claimed_at INTEGER, progress_current INTEGER, progress_total INTEGER, console_output TEXT,
    output_data TEXT, error_message TEXT, last_heartbeat INTEGER, note TEXT);
"""


def job_insert(job_id: str, status: str, name: str) -> str:
    params = f'{{"name":"{name}"}}'
    digest = job_hash("hello_world", {"name": name})
    return (
        f"INSERT INTO jobs VALUES('{job_id}','{digest}','hello_world','{params}','{status}',"
        "1737000000000,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,'an extra column');\n"
    )


async def test_an_unknown_status_fails_clearly(settings: Settings, tmp_path: Path) -> None:
    odd = "0d6c0f4e-93b8-4c55-8f0a-7a8d1c2b3e4f"
    text = JOBS_ONLY + job_insert(PENDING, "pending", "Ada") + job_insert(odd, "running", "Bo")
    path = write(tmp_path, "odd.sql", text)
    with pytest.raises(D1ImportError) as caught:
        await run_import(settings, path)
    message = str(caught.value)
    assert "1 row(s) cannot be imported; nothing was written" in message
    assert f"jobs row '{odd}': unknown status 'running'" in message
    assert await stored(settings) == ([], [])

    summary = await run_import(settings, path, skip_invalid=True)
    assert (summary.jobs_read, summary.jobs_imported, summary.jobs_present) == (2, 1, 0)
    assert summary.skipped == [
        f"jobs row '{odd}': unknown status 'running' (expected one of pending, claimed, "
        "in_progress, completed, failed, expired)"
    ]
    assert "skipped (invalid): 1" in summary.render("x")


async def test_a_minimal_export_without_runners(settings: Settings, tmp_path: Path) -> None:
    """Unquoted ``INSERT INTO jobs VALUES``, an extra column, NULLs, no runners table."""
    path = write(tmp_path, "jobs-only.sql", JOBS_ONLY + job_insert(PENDING, "pending", "Ada"))
    summary = await run_import(settings, path)
    assert (summary.jobs_imported, summary.has_runners_table) == (1, False)
    assert "runners:  none (the export has no runners table)" in summary.render("x")
    jobs, runners = await stored(settings)
    assert runners == []
    assert (jobs[0].updated_at, jobs[0].console_output) == (1737000000000, None)


async def test_a_changed_hash_is_counted(settings: Settings, tmp_path: Path) -> None:
    wrong = "0" * 64
    path = write(tmp_path, "h.sql", FIXTURE.read_text(encoding="utf-8").replace(ALICE_HASH, wrong))
    summary = await run_import(settings, path)
    assert summary.jobs_imported == 6
    assert summary.hash_mismatches == [(ALICE, wrong, ALICE_HASH)]
    text = summary.render("x")
    assert "hash mismatches: 1" in text
    assert f"job {ALICE}: stored {wrong}, computed {ALICE_HASH}" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "no such file"),
        ("CREATE TABLE runners (id TEXT);\n", "no jobs table"),
        ("CREATE TABLE jobs (id TEXT, job_type TEXT);\n", "the jobs table has no job_hash"),
        ("CREATE TABLE jobs (id TEXT);\nINSERT INTO jobs VALUES('a);\n", "unrecognized token"),
    ],
)
def test_unreadable_exports(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "export.sql"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(D1ImportError, match=expected):
        read_export(path)


# --- the command ----------------------------------------------------------------------------
def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPACK_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "runpack.cli", "import-d1", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_imports_and_prints_the_summary(tmp_path: Path) -> None:
    db = tmp_path / "moved.db"
    result = run_cli(tmp_path, str(FIXTURE), "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert f"Imported {FIXTURE} into {db}" in result.stdout
    assert "jobs:     6 read, 6 imported, 0 already present" in result.stdout
    assert "statuses: claimed 1, completed 2, failed 1, in_progress 1, pending 1" in result.stdout
    assert "runners:  2 read, 2 imported, 0 already present" in result.stdout
    assert "hash mismatches: 0" in result.stdout

    missing = tmp_path / "missing.sql"
    result = run_cli(tmp_path, str(missing), "--db", str(tmp_path / "other.db"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"runpack import-d1: {missing}: no such file"
    assert not (tmp_path / "other.db").exists()
