# ruff: noqa: F811  (pytest fixtures imported from tests/test_ui.py, then taken as arguments)
"""The dashboard's details a new user meets, in headless Chromium against a real server
and runner (the fixtures of tests/test_ui.py): where a pending job stands, a job page
that keeps its times current and names its runner, the figure drawn in the job page,
runner names in the lists, a full bar for completed jobs, job types on one line, the
recent past in Live activity, and busy slots said as such. No page loads from a CDN."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.request
from urllib.parse import urlparse

from playwright.sync_api import expect

# The module fixtures of tests/test_ui.py (a server, a runner and a browser of this module's own).
from tests.test_ui import (  # noqa: F401
    ADMIN_KEY,
    LOOPBACK,
    RUNNER_KEY,
    RUNNER_NAME,
    Open,
    Stack,
    browser,
    done_job,
    open_page,
    shot,
    stack,
    until,
)

FIGURE_PAGE = b"""<!doctype html><html><body><p id="out">loading</p>
<script>document.getElementById('out').textContent = 'figure drawn by its script';</script>
</body></html>"""


def meta(page: object, label: str) -> str:
    """The text of a job page's fact (Created, Updated, Runner…)."""
    dd = page.locator(f"dl.meta dt:text-is('{label}') + dd")  # type: ignore[attr-defined]
    return str(dd.inner_text())


def test_a_pending_job_says_no_runner_handles_its_type(stack: Stack, open_page: Open) -> None:
    job_id = stack.submit("ui_nobody", {"n": 1})
    page = open_page(f"/ui/jobs/{job_id}", keys=False)
    line = page.locator("#job-queue")
    expect(line).to_contain_text(
        "no connected runner handles job type ui_nobody; runners connected: "
    )
    expect(line).to_contain_text(f"{RUNNER_NAME} (")
    expect(line).to_contain_text("hello_world")
    expect(line).to_have_class("queue-text queue-stuck")
    shot(page, "job-no-runner")


def test_a_queued_job_shows_its_place_then_its_run_with_fresh_times(
    stack: Stack, open_page: Open
) -> None:
    busy = stack.submit("hello_world", {"name": "busy", "processing_time": 4})
    until(lambda: stack.status_of(busy) == "in_progress", "the runner to be busy")
    job_id = stack.submit("hello_world", {"name": "next", "processing_time": 3})
    page = open_page(f"/ui/jobs/{job_id}", keys=False)
    expect(page.locator("#job-queue")).to_contain_text("1st in line")
    expect(page.locator(".job-summary .badge")).to_have_text("In progress", timeout=20_000)
    expect(page.locator("#job-queue")).to_be_hidden()
    expect(page.locator("dl.meta dt:text-is('Runner') + dd")).to_have_text(RUNNER_NAME)
    first = meta(page, "Last heartbeat")
    updated = meta(page, "Updated")
    assert first != "—"
    # The runner's heartbeats move them on while the page stays open.
    until(lambda: meta(page, "Last heartbeat") != first, "Last heartbeat to move", 10)
    until(lambda: meta(page, "Updated") != updated, "Updated to move", 10)
    shot(page, "job-running")


def test_the_figure_job_page_draws_the_figure(stack: Stack, open_page: Open) -> None:
    job_id, me = stack.held_job("figure-drawer", "ui_drawn_figure", {"plot": "units"})
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        entry = tarfile.TarInfo("index.html")
        entry.size = len(FIGURE_PAGE)
        tar.addfile(entry, io.BytesIO(FIGURE_PAGE))
    request = urllib.request.Request(
        f"{stack.url}/api/runner/jobs/{job_id}/files",
        data=archive.getvalue(),
        method="POST",
        headers={"Authorization": f"Bearer {RUNNER_KEY}", **me},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        figure = json.load(resp)["figpack_url"]
    done = {"output_data": {"figpack_url": figure}, "console_output": "done\n"}
    stack.call("POST", f"/api/runner/jobs/{job_id}/complete", RUNNER_KEY, done, headers=me)
    page = open_page(f"/ui/jobs/{job_id}", keys=False)
    frame = page.frame_locator('iframe[title="Figure preview"]')
    expect(frame.locator("#out")).to_have_text("figure drawn by its script")
    sandbox = page.locator('iframe[title="Figure preview"]').get_attribute("sandbox") or ""
    assert "allow-scripts" in sandbox and "allow-same-origin" not in sandbox
    box = page.locator('iframe[title="Figure preview"]').bounding_box()
    assert box is not None and box["height"] > 200 and box["width"] > 300, box
    shot(page, "job-figure-drawn")


def test_lists_name_runners_and_show_completed_and_busy(
    stack: Stack, open_page: Open, done_job: str
) -> None:
    running = stack.submit("hello_world", {"name": "long", "processing_time": 5})
    until(lambda: stack.status_of(running) == "in_progress", "the job to run")

    # Opened mid-run: the recent past is there at once, runners by name.
    page = open_page("/ui/")
    activity = page.get_by_role("log", name="Live activity")
    expect(activity.locator(".activity-item").first).to_be_visible()
    expect(activity).to_contain_text(f"by {RUNNER_NAME}")
    recent = page.get_by_role("table").filter(has_text="Recent jobs")
    done_row = recent.locator("tr", has=page.locator(f'a[title="{done_job}"]'))
    expect(done_row.locator("progress")).to_have_attribute("value", "1")
    expect(done_row).to_contain_text("100 %")
    running_row = recent.locator("tr", has=page.locator(f'a[title="{running}"]'))
    expect(running_row.locator("progress")).to_be_visible()
    type_cell = running_row.locator("td").nth(1)
    expect(type_cell).to_have_text("hello_world")
    # Measured in one step in the page: the live table may be redrawn between steps.
    measure = (
        "td => { const el = td.querySelector('.type');"
        " const box = el && el.getBoundingClientRect();"
        " return box && box.height > 0 ? [box.height,"
        " parseFloat(getComputedStyle(td).lineHeight) || 20] : null; }"
    )
    height, line = until(lambda: type_cell.evaluate(measure), "the type cell to be drawn")
    assert height < 1.5 * line, (height, line)  # one line
    shot(page, "dashboard-mid-run")

    page = open_page("/ui/jobs")
    row = page.locator("tr", has=page.locator(f'a[title="{done_job}"]'))
    expect(row).to_contain_text(RUNNER_NAME)

    page = open_page("/ui/runners")
    expect(page.locator(".slots").first).to_contain_text("of 1 slots busy")
    until(lambda: stack.status_of(running) == "completed", "the job to end", 30)
    expect(page.locator(".slots").first).to_have_text("0 of 1 slots busy", timeout=10_000)

    # Nothing came from anywhere but this server.
    outside = [u for u in stack.requests if (urlparse(u).hostname or "") not in LOOPBACK]
    assert not [u for u in outside if not u.startswith(("data:", "about:"))], outside
    assert ADMIN_KEY


def test_a_runners_image_list_shows(stack: Stack, open_page: Open) -> None:
    stack.call(
        "POST",
        "/api/runner/register",
        RUNNER_KEY,
        {"name": "ui-imaged", "capabilities": ["container"], "images": ["lab/tool@*", "x/y@*"]},
    )
    page = open_page("/ui/runners")
    card = page.locator("article.runner-card", has_text="ui-imaged")
    expect(card.get_by_role("list", name="Images").locator("li")).to_have_text(
        ["lab/tool@*", "x/y@*"]
    )
    mine = page.locator("article.runner-card", has_text=RUNNER_NAME)
    expect(mine.get_by_role("list", name="Job types")).to_be_visible()
    expect(mine.get_by_role("list", name="Images")).to_have_count(0)  # it sent no list
