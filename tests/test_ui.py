"""The dashboard in a real headless Chromium (Debian's) against a real server and runner.

One ``runpack serve``, one ``runpack-runner`` and one browser serve the whole module;
each test opens its own browser context (its own localStorage). Every wait is
Playwright's auto-waiting or a bounded poll of the API; nothing sleeps a fixed time.
A screenshot of each page lands in ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser import chromium, require_chromium
from tests.procs import KEYS, NO_LIMITS, clean_env, running_server, stop

SHOTS = Path(__file__).parents[1] / "test-artifacts" / "screenshots"
SERVER_ENV = {
    **KEYS,
    **NO_LIMITS,
}
ADMIN_KEY = KEYS["RUNPACK_ADMIN_API_KEY"]
SUBMIT_KEY = KEYS["RUNPACK_SUBMIT_API_KEY"]
RUNNER_KEY = KEYS["RUNPACK_RUNNER_API_KEY"]
RUNNER_NAME = "ui-test"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WAIT_MS = 15_000

expect.set_options(timeout=WAIT_MS)


@dataclass
class Stack:
    url: str
    runner_id: str
    #: Every URL any page of this module asked for.
    requests: list[str] = field(default_factory=list)

    def call(
        self,
        method: str,
        path: str,
        key: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def submit(self, job_type: str, params: dict[str, Any]) -> str:
        reply = self.call(
            "POST", "/api/jobs/submit", SUBMIT_KEY, {"job_type": job_type, "input_params": params}
        )
        return str(reply["job_id"])

    def held_job(
        self, runner: str, job_type: str, params: dict[str, Any]
    ) -> tuple[str, dict[str, str]]:
        """A new job claimed by a new runner over the original's HTTP endpoints, so that
        the test drives each step: (the job's id, the runner's X-Runner-ID header)."""
        body = {"name": runner, "capabilities": [job_type]}
        reply = self.call("POST", "/api/runner/register", RUNNER_KEY, body)
        me = {"X-Runner-ID": reply["runner_id"]}
        job_id = self.submit(job_type, params)
        self.call("POST", f"/api/runner/jobs/{job_id}/claim", RUNNER_KEY, headers=me)
        return job_id, me

    def status_of(self, job_id: str) -> str:
        try:
            return str(self.call("GET", f"/api/admin/jobs/{job_id}")["status"])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return "missing"
            raise


def until(check: Callable[[], Any], what: str, limit: float = 20) -> Any:
    """Poll ``check`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("ui")
    with running_server(tmp, env=SERVER_ENV) as server:
        folder = tmp / "runner"
        folder.mkdir()
        env = clean_env(
            {
                "RUNPACK_WORKER_URL": server.url,
                "RUNPACK_RUNNER_API_KEY": RUNNER_KEY,
            }
        )
        with (folder / "runner.out").open("wb") as out:
            runner = subprocess.Popen(
                [sys.executable, "-m", "runpack_runner.cli", "--name", RUNNER_NAME],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=out,
            )
        try:
            probe = Stack(server.url, "")

            def connected() -> str | None:
                assert runner.poll() is None, (folder / "runner.out").read_text()
                runners = probe.call("GET", "/api/admin/runners", ADMIN_KEY)["runners"]
                return next((r["runner_id"] for r in runners if r.get("connected")), None)

            yield Stack(server.url, until(connected, "the runner to connect"))
        finally:
            stop(runner)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as opened:
        yield opened


@pytest.fixture(scope="module")
def done_job(stack: Stack) -> str:
    """A hello_world job that the runner has completed."""
    job_id = stack.submit("hello_world", {"name": "Grace", "processing_time": 0})
    until(lambda: stack.status_of(job_id) == "completed", f"job {job_id} to complete")
    return job_id


Open = Callable[..., Page]


@pytest.fixture
def open_page(stack: Stack, browser: Browser) -> Iterator[Open]:
    """``open_page(path, keys=True, admin_key=…, viewport=…)``: a page in a fresh context."""
    contexts: list[BrowserContext] = []

    def open_(
        path: str,
        keys: bool = True,
        admin_key: str = ADMIN_KEY,
        viewport: dict[str, int] | None = None,
    ) -> Page:
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})  # type: ignore[arg-type]
        contexts.append(context)
        context.set_default_timeout(WAIT_MS)
        context.on("request", lambda request: stack.requests.append(request.url))
        if keys:
            context.add_init_script(
                f"localStorage.setItem('runpack.adminKey', {json.dumps(admin_key)});"
                f"localStorage.setItem('runpack.submitKey', {json.dumps(SUBMIT_KEY)});"
            )
        page = context.new_page()
        page.goto(stack.url + path)
        return page

    yield open_
    for context in contexts:
        context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, animations="disabled")


def heading(page: Page, text: str) -> None:
    expect(page.get_by_role("heading", level=1)).to_have_text(text)


# --- tests --------------------------------------------------------------------------------------


def test_playground_follows_a_job_live(stack: Stack, open_page: Open) -> None:
    page = open_page("/ui/", keys=False)
    # No key yet: the dashboard's 401 sends the user to Settings, with a message.
    expect(page).to_have_url(stack.url + "/ui/settings")
    expect(page.get_by_role("alert")).to_contain_text("needs the admin key")
    shot(page, "settings")
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_label("Submit key").fill(SUBMIT_KEY)
    page.get_by_role("button", name="Save keys").click()
    expect(page).to_have_url(stack.url + "/ui/")  # back where the user was sent from
    page.evaluate("window.__sameDocument = true")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Playground").click()
    heading(page, "Playground")
    page.get_by_label("Job type").fill("hello_world")
    page.get_by_label("Input parameters (JSON)").fill('{"name": "Ada", "processing_time": 3}')
    page.get_by_role("button", name="Submit job").click()

    bar = page.get_by_role("progressbar", name="Job progress")
    expect(bar).to_be_visible()
    # The bar's value rises at least twice (0 → 1 → 2 …), recorded on every frame.
    page.wait_for_function(
        """() => {
            const bar = document.getElementById('job-progress');
            if (!bar || !bar.hasAttribute('value')) return false;
            const seen = (window.__progressSeen ||= []);
            const value = Number(bar.value);
            if (!seen.length || value > seen[seen.length - 1]) seen.push(value);
            return seen.length >= 3;
        }""",
        timeout=WAIT_MS,
    )
    console = page.get_by_role("log", name="Console output")
    expect(console).to_contain_text("Starting hello_world job for Ada")
    expect(console).to_contain_text("Progress: 1/3")
    result = page.get_by_label("Result JSON")
    expect(result).to_contain_text("Hello, Ada!")
    expect(page.locator(".job-summary .badge-completed")).to_have_text("Completed")
    expect(bar).to_have_attribute("value", "3")
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    seen = page.evaluate("window.__progressSeen")
    assert len(seen) >= 3 and seen == sorted(seen), seen
    shot(page, "playground")


def test_job_page_needs_no_key(stack: Stack, open_page: Open, done_job: str) -> None:
    page = open_page(f"/ui/jobs/{done_job}", keys=False)
    expect(page.get_by_label("Input parameters")).to_contain_text('"name": "Grace"')
    expect(page.locator(".job-summary .badge")).to_have_text("Completed")
    expect(page.get_by_label("Result JSON")).to_contain_text("Hello, Grace!")
    expect(page.get_by_role("log", name="Console output")).to_contain_text("Completed!")
    expect(page).to_have_url(stack.url + f"/ui/jobs/{done_job}")  # not sent to Settings
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    expect(page.get_by_role("button", name="Retry job")).to_have_count(0)
    shot(page, "job")


def test_job_page_without_key_is_live_and_previews_a_figure(stack: Stack, open_page: Open) -> None:
    # A runner over the original's HTTP endpoints, driven step by step by the test.
    job_id, me = stack.held_job("figure-maker", "ui_figure", {"plot": "raster"})
    page = open_page(f"/ui/jobs/{job_id}", keys=False)
    badge = page.locator(".job-summary .badge")
    expect(badge).to_have_text("Claimed")
    expect(page.locator(".job-summary .live")).to_have_text("Live")

    beat = {"progress_current": 1, "progress_total": 4, "console_output": "drawing the raster\n"}
    stack.call("POST", f"/api/runner/jobs/{job_id}/heartbeat", RUNNER_KEY, beat, headers=me)
    expect(page.get_by_role("progressbar", name="Job progress")).to_have_attribute("value", "1")
    expect(page.get_by_role("log", name="Console output")).to_contain_text("drawing the raster")
    expect(badge).to_have_text("In progress")

    figure = f"{stack.url}/demo-figure/index.html"  # loopback: the page never leaves it
    done = {"output_data": {"figpack_url": figure}, "console_output": "drawing the raster\ndone\n"}
    stack.call("POST", f"/api/runner/jobs/{job_id}/complete", RUNNER_KEY, done, headers=me)
    expect(badge).to_have_text("Completed")
    expect(page.get_by_role("link", name="Open figure")).to_have_attribute("href", figure)
    frame = page.locator('iframe[title="Figure preview"]')
    expect(frame).to_have_attribute("src", figure)
    assert "allow-same-origin" not in (frame.get_attribute("sandbox") or "allow-same-origin")
    # Room for a figure's tabs and legends: 70% of the window's height, and resizable.
    box = frame.bounding_box()
    assert box is not None and box["height"] >= 0.65 * 900, box
    frame_box = page.locator(".figure-frame")
    assert frame_box.evaluate("e => getComputedStyle(e).resize") == "vertical"
    expect(page.get_by_label("Result JSON")).to_contain_text(figure)
    expect(page.get_by_role("log", name="Console output")).to_contain_text("done")
    shot(page, "job-figure")


def test_admin_cancels_retries_and_sees_errors(stack: Stack, open_page: Open) -> None:
    job_id = stack.submit("ui_waiting", {"n": 1})  # no runner takes it: it stays pending
    page = open_page(f"/ui/jobs/{job_id}")
    badge = page.locator(".job-summary .badge")
    expect(badge).to_have_text("Pending")
    page.get_by_role("button", name="Cancel job").click()
    expect(badge).to_have_text("Cancelled")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    page.get_by_role("button", name="Retry job").click()
    expect(badge).to_have_text("Pending")
    expect(page.get_by_role("button", name="Cancel job")).to_be_visible()
    assert stack.status_of(job_id) == "pending"

    failing = stack.submit(
        "hello_world", {"name": "Oops", "processing_time": 0, "test_exception": True}
    )
    page.goto(f"{stack.url}/ui/jobs/{failing}")
    expect(badge).to_have_text("Failed")
    expect(page.get_by_label("Error message")).to_contain_text("Test exception raised")
    expect(page.get_by_role("button", name="Retry job")).to_be_visible()
    shot(page, "job-failed")


def test_unknown_job_says_so(open_page: Open) -> None:
    page = open_page("/ui/jobs/00000000-0000-4000-8000-000000000000", keys=False)
    expect(page.get_by_role("alert")).to_contain_text("No job has the id")


def test_jobs_filter_and_batch_delete(stack: Stack, open_page: Open, done_job: str) -> None:
    # A type no runner takes: these stay pending.
    doomed = [stack.submit("ui_other_type", {"n": n}) for n in (1, 2)]
    page = open_page("/ui/jobs")
    rows = page.locator("tbody tr[data-job-id]")
    for job_id in (*doomed, done_job):
        expect(page.locator(f'tr[data-job-id="{job_id}"]')).to_have_count(1)
    shot(page, "jobs")

    page.get_by_label("Status").select_option("completed")
    expect(page.locator(f'tr[data-job-id="{doomed[0]}"]')).to_have_count(0)
    expect(page.locator(f'tr[data-job-id="{done_job}"]')).to_have_count(1)
    expect(page).to_have_url(stack.url + "/ui/jobs?status=completed")

    page.get_by_label("Status").select_option("")
    page.get_by_label("Job type contains").fill("other")
    expect(rows).to_have_count(2)
    expect(page.locator(f'tr[data-job-id="{done_job}"]')).to_have_count(0)

    for job_id in doomed:
        page.get_by_label(f"Select job {job_id}").check()
    page.get_by_role("button", name="Delete selected (2)").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Delete 2 jobs?")
    dialog.get_by_role("button", name="Delete 2 jobs").click()
    expect(rows).to_have_count(0)
    expect(page.get_by_text("No jobs match these filters.")).to_be_visible()
    assert [stack.status_of(j) for j in doomed] == ["missing", "missing"]
    assert stack.status_of(done_job) == "completed"


def test_runners_and_runner_detail(stack: Stack, open_page: Open, done_job: str) -> None:
    page = open_page("/ui/runners")
    runner_card = page.locator("article.runner-card", has_text=RUNNER_NAME)
    expect(runner_card).to_contain_text("Active")
    expect(runner_card).to_contain_text("Connected · websocket")
    expect(runner_card).to_contain_text("0 of 1 slots busy")
    expect(runner_card).to_contain_text("hello_world")
    shot(page, "runners")

    runner_card.get_by_role("link", name=RUNNER_NAME).click()
    expect(page).to_have_url(stack.url + f"/ui/runners/{stack.runner_id}")
    heading(page, f"Runner {RUNNER_NAME}")
    expect(page.get_by_text(stack.runner_id)).to_be_visible()
    expect(page.locator(f'a[href="/ui/jobs/{done_job}"]')).to_have_count(1)
    shot(page, "runner")


def test_dashboard_updates_live(stack: Stack, open_page: Open) -> None:
    page = open_page("/ui/")
    heading(page, "Dashboard")
    live = page.locator(".page-head .live")
    expect(live).to_have_text("Live")
    total = page.locator('[data-stat="total"] .stat-value')
    stats = stack.call("GET", "/api/admin/stats", ADMIN_KEY)
    expect(total).to_have_text(str(stats["jobs"]["total"]))
    before = int(total.inner_text())

    job_id = stack.submit("ui_dashboard", {"at": time.time()})  # from outside the page
    expect(total).to_have_text(str(before + 1))
    activity = page.get_by_role("log", name="Live activity")
    expect(activity.locator(f'a[href="/ui/jobs/{job_id}"]')).to_have_count(1)
    expect(page.locator(f'tbody a[href="/ui/jobs/{job_id}"]')).to_have_count(1)
    shot(page, "dashboard")


def test_wrong_key_sends_to_settings(stack: Stack, open_page: Open) -> None:
    page = open_page("/ui/jobs", admin_key="not-the-admin-key")
    expect(page).to_have_url(stack.url + "/ui/settings")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("rejected the admin key")
    expect(alert).to_contain_text("Invalid API key")
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Save keys").click()
    expect(page).to_have_url(stack.url + "/ui/jobs")
    heading(page, "Jobs")


def test_the_printed_dashboard_link_signs_the_browser_in(stack: Stack, open_page: Open) -> None:
    # What `runpack serve` prints in local development mode (tests/test_cli.py checks it).
    page = open_page(f"/ui/#submit_key={SUBMIT_KEY}&admin_key={ADMIN_KEY}", keys=False)
    heading(page, "Dashboard")
    expect(page).to_have_url(stack.url + "/ui/")  # the keys leave the address bar
    stored = page.evaluate(
        "[localStorage.getItem('runpack.submitKey'), localStorage.getItem('runpack.adminKey')]"
    )
    assert stored == [SUBMIT_KEY, ADMIN_KEY]
    assert not [url for url in stack.requests if ADMIN_KEY in url]  # no request carried it


def test_playground_rejects_invalid_json(stack: Stack, open_page: Open) -> None:
    page = open_page("/ui/playground")
    submits: list[str] = []
    page.on("request", lambda r: submits.append(r.url) if "/api/jobs/submit" in r.url else None)
    params = page.get_by_label("Input parameters (JSON)")
    params.fill('{"name": "Ada", processing_time: 3')
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#pg-params-error")).to_contain_text("Invalid JSON")
    expect(params).to_have_attribute("aria-invalid", "true")
    expect(params).to_be_focused()
    params.fill("[1, 2]")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#pg-params-error")).to_contain_text("must be a JSON object")
    params.fill('{"name": "Ada"}')
    expect(page.locator("#pg-params-error")).to_be_empty()
    expect(params).not_to_have_attribute("aria-invalid", "true")
    assert submits == []
    expect(page.get_by_label("Result JSON")).to_have_count(0)


PAGES = {
    "dashboard": ("/ui/", "Dashboard"),
    "jobs": ("/ui/jobs", "Jobs"),
    "runners": ("/ui/runners", "Runners"),
    "playground": ("/ui/playground", "Playground"),
    "settings": ("/ui/settings", "Settings"),
}


def test_phone_size_has_no_horizontal_overflow(
    stack: Stack, open_page: Open, done_job: str
) -> None:
    pages = {
        **PAGES,
        "job": (f"/ui/jobs/{done_job}", "Job"),
        "runner": (f"/ui/runners/{stack.runner_id}", f"Runner {RUNNER_NAME}"),
    }
    page = open_page("/ui/settings", viewport={"width": 390, "height": 844})
    for name, (path, title) in pages.items():
        page.goto(stack.url + path)
        heading(page, title)
        expect(page.locator(".loading")).to_have_count(0)
        if name == "job":
            expect(page.get_by_label("Result JSON")).to_contain_text("Hello, Grace!")
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{name}: {width[0]} px wide in a {width[1]} px window"
        shot(page, f"phone-{name}")


def test_navigation_keeps_to_this_server(stack: Stack, open_page: Open, done_job: str) -> None:
    page = open_page("/ui/")
    nav = page.get_by_role("navigation", name="Main")
    for name, (path, title) in PAGES.items():
        nav.get_by_role("link", name=title).click()
        expect(page).to_have_url(stack.url + path)
        heading(page, title)
        expect(nav.get_by_role("link", name=title)).to_have_attribute("aria-current", "page")
        if name == "dashboard":
            continue
        page.go_back()
        page.go_forward()
        heading(page, title)
    page.goto(stack.url + f"/ui/jobs/{done_job}")
    expect(page.get_by_label("Result JSON")).to_contain_text("Hello, Grace!")
    assert stack.requests, "no request was recorded"
    outside = [
        url
        for url in stack.requests
        if urlparse(url).scheme not in ("data", "about", "blob")
        and urlparse(url).hostname not in LOOPBACK
    ]
    assert outside == [], outside


def test_static_files_and_paths(stack: Stack) -> None:
    def get(path: str) -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(stack.url + path, timeout=10) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()

    status, ctype, body = get("/ui/jobs/some-id")
    assert (status, ctype) == (200, "text/html; charset=utf-8")
    assert '<script type="module" src="/ui/static/app.js">' in body
    assert get("/ui/static/app.js")[:2] == (200, "text/javascript; charset=utf-8")
    assert get("/ui/static/pages/job.js")[:2] == (200, "text/javascript; charset=utf-8")
    assert get("/ui/static/style.css")[:2] == (200, "text/css; charset=utf-8")
    for bad in ("/ui/static/%2e%2e/api/ui.py", "/ui/static/nope.js", "/ui/nope.js"):
        assert get(bad)[0] == 404, bad
    with urllib.request.urlopen(stack.url + "/ui", timeout=10) as resp:  # follows the 301
        assert resp.url == stack.url + "/ui/"
        assert resp.headers["Cache-Control"] == "no-cache"
