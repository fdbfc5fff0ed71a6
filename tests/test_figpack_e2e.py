"""The whole figure path, offline: NWB file -> runner -> stored figure -> a browser draws it.

pynwb writes a small NWB file (examples/local_nwb.py, which also serves it on
loopback with range requests); a real ``runpack serve`` and a real
``runpack-runner`` run each figure job as examples/neurosift_like.py asks for it;
the figure URL in the result is opened in Debian's headless Chromium, which must
draw it without any request leaving this machine. Screenshots go to
test-artifacts/screenshots/figpack-<kind>.png (raster_plot,
video_preview, pose_estimation). Then: the same submit is
answered from the cache at once, and deleting the figure's files makes the next
submit compute it again.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium, require_chromium
from tests.procs import (
    KEYS,
    NO_LIMITS,
    clean_env,
    free_port,
    load_example,
    running_runner,
    running_server,
    stop,
)

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
SUBMIT_KEY = KEYS["RUNPACK_SUBMIT_API_KEY"]
JOB_TYPES = ("figpack_nwb_raster_plot", "figpack_nwb_video_preview", "figpack_nwb_pose_estimation")

pytestmark = pytest.mark.timeout(180)


neurosift = load_example("neurosift_like")
local_nwb = load_example("local_nwb")


@dataclass
class Stack:
    url: str
    nwb_url: str
    figures: Path

    def params(self, job_type: str) -> dict[str, Any]:
        path = {
            "figpack_nwb_raster_plot": ("units_path", local_nwb.UNITS_PATH),
            "figpack_nwb_video_preview": ("image_series_path", local_nwb.IMAGE_SERIES_PATH),
            "figpack_nwb_pose_estimation": ("path", local_nwb.POSE_PATH),
        }[job_type]
        return {"nwb_url": self.nwb_url, path[0]: path[1]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The NWB file server, runpack serve and a runner with the figure job types."""
    tmp = tmp_path_factory.mktemp("figpack")
    with nwb_files(tmp / "nwb") as base:
        nwb_url = f"{base}/demo.nwb"
        env = {**KEYS, **NO_LIMITS}
        with running_server(tmp / "server", env=env) as server:
            # Figures go to this server, not the cloud; the NWB file is on loopback.
            runner_env = {"FIGPACK_API_KEY": "", "RUNPACK_ALLOW_PRIVATE_URLS": "true"}
            with running_runner(
                tmp / "runner",
                server.url,
                "--job-types",
                ",".join(JOB_TYPES),
                "--name",
                "figures",
                env=runner_env,
            ) as runner:
                try:
                    yield Stack(server.url, nwb_url, tmp / "server" / "runpack-data" / "figures")
                except BaseException:
                    print(server.output()[-5000:], runner.output()[-5000:])
                    raise


@contextlib.contextmanager
def nwb_files(folder: Path) -> Iterator[str]:
    """examples/local_nwb.py serving ``folder`` (its demo.nwb made there) on loopback,
    with range requests; yields its base URL."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder.parent / "nwb-server.log").open("wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "examples" / "local_nwb.py"),
                "--dir",
                str(folder),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=log,
            env=clean_env(),
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/demo.nwb", server)
            yield base
        finally:
            stop(server)


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the NWB file server exited"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, method="HEAD"), timeout=1
            ) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not served after {timeout} s")


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as resp:
        return resp.status, dict(resp.headers), resp.read()


def run_job(stack: Stack, job_type: str, params: dict[str, Any]) -> tuple[str, str]:
    """Submit as Neurosift does and follow the stream: (job_id, figpack_url)."""
    job = neurosift.submit(stack.url, SUBMIT_KEY, job_type, params)
    assert job["status"] == "pending", job
    final = neurosift.follow(stack.url, job["job_id"], show=lambda line: None, timeout=120)
    assert final["status"] == "completed", final
    return job["job_id"], final["result"]["output_data"]["figpack_url"]


#: What each figure must show once drawn (checked in the page, not just its status).
RENDERED = {
    "figpack_nwb_raster_plot": "() => document.querySelectorAll('canvas').length > 0",
    "figpack_nwb_video_preview": (
        "() => { const v = document.querySelector('.runpack-video-preview video');"
        " return !!v && v.readyState >= 2 && v.videoWidth === 32 && !v.error; }"
    ),
    "figpack_nwb_pose_estimation": (
        "() => document.querySelectorAll('canvas').length >= 2"
        " && document.body.innerText.includes('Position')"
    ),
}


def render(url: str, job_type: str) -> Path:
    """Open the figure in headless Chromium, check it drew, save a screenshot."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"figpack-{job_type.removeprefix('figpack_nwb_')}.png"
    outside: list[str] = []
    problems: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 700})

        def only_loopback(route: Any) -> None:
            if route.request.url.startswith("http://127.0.0.1:"):
                route.continue_()
            else:  # figpack's viewer must need nothing from the internet
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_loopback)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("requestfailed", lambda req: problems.append(f"failed: {req.url}"))
        page.goto(url)
        page.wait_for_function(RENDERED[job_type], timeout=30_000)
        page.get_by_text("Figure ready").wait_for(timeout=30_000)
        page.wait_for_timeout(500)
        text = page.inner_text("body")
        # Sandboxed: the figure cannot read what the dashboard keeps for this origin.
        assert page.evaluate("() => window.origin") == "null"
        page.screenshot(path=str(shot))
    assert not outside, f"the figure asked the internet for {outside}"
    assert not problems, problems
    assert "error" not in text.lower(), text[:500]
    return shot


@pytest.mark.parametrize("job_type", JOB_TYPES)
def test_figure_job_end_to_end(stack: Stack, job_type: str) -> None:
    params = stack.params(job_type)
    params["neurosift_url"] = "https://neurosift.app/nwb?url=demo&tab=1"
    params["dandiset_id"] = "000000"
    job_id, url = run_job(stack, job_type, params)
    assert url.startswith(f"{stack.url}/figures/{job_id}/") and url.endswith("/index.html")
    status, headers, body = fetch(url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<div id="root">' in body
    # The figure's files, as the viewer reads them: zarr chunks with range requests.
    manifest = stack.figures / "manifests" / f"{job_id}.json"
    files = [f["path"] for f in json.loads(manifest.read_bytes())["files"]]
    chunk = next(f for f in files if f.startswith("data.zarr/_consolidated_"))
    part_url = url.removesuffix("index.html") + chunk
    status, headers, part = fetch(part_url, {"Range": "bytes=0-15"})
    assert status == 206 and len(part) == 16 and headers["Content-Range"].startswith("bytes 0-15/")
    assert render(url, job_type).stat().st_size > 5000

    # The same request from another Neurosift page: the cached result, at once.
    started = time.monotonic()
    params["neurosift_url"] = "https://neurosift.app/nwb?url=demo&tab=2"
    again = neurosift.submit(stack.url, SUBMIT_KEY, job_type, params)
    assert time.monotonic() - started < 1.0
    assert again["status"] == "completed" and again["job_id"] == job_id
    assert again["result"]["output_data"]["figpack_url"] == url
    found = neurosift.check(stack.url, SUBMIT_KEY, job_type, params)
    assert found["exists"] and found["status"] == "completed"

    # Its files are gone: the next submit computes the figure again; at the same URL
    # if the files are the same, else at another, to which the old one leads.
    manifest.unlink()
    status, _, _ = fetch_status(url)
    assert status == 404
    job_id_2, url_2 = run_job(stack, job_type, params)
    assert job_id_2 == job_id
    assert fetch(url)[0] == fetch(url_2)[0] == 200


def fetch_status(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        return fetch(url)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_the_runner_reports_a_missing_object_clearly(stack: Stack) -> None:
    params = {"nwb_url": stack.nwb_url, "units_path": "/no/such/units"}
    job = neurosift.submit(stack.url, SUBMIT_KEY, "figpack_nwb_raster_plot", params)
    final = neurosift.follow(stack.url, job["job_id"], show=lambda line: None, timeout=60)
    assert final["status"] == "failed"
    assert "No units table at '/no/such/units'" in final["error"]


def test_the_job_page_draws_the_figure(stack: Stack) -> None:
    """A figure job's page (no key, as Neurosift links to it) draws the figure in its
    sandboxed frame, offline."""
    require_chromium()
    from playwright.sync_api import expect

    job_type = "figpack_nwb_raster_plot"
    job = neurosift.submit(stack.url, SUBMIT_KEY, job_type, stack.params(job_type))
    job_id = job["job_id"]
    if job["status"] != "completed":  # not made by an earlier test of this module
        job = neurosift.follow(stack.url, job_id, show=lambda line: None, timeout=120)
        assert job["status"] == "completed", job
    url = job["result"]["output_data"]["figpack_url"]
    outside: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on(
            "request",
            lambda req: (
                None if req.url.startswith("http://127.0.0.1:") else outside.append(req.url)
            ),
        )
        page.goto(f"{stack.url}/ui/jobs/{job_id}")
        frame_el = page.locator('iframe[title="Figure preview"]')
        expect(frame_el).to_have_attribute("src", url, timeout=30_000)
        frame_el.scroll_into_view_if_needed()
        frame = frame_el.element_handle().content_frame()
        assert frame is not None
        frame.wait_for_function(RENDERED["figpack_nwb_raster_plot"], timeout=30_000)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "job-page-figure.png"), full_page=True)
    assert not [u for u in outside if not u.startswith(("data:", "about:", "blob:"))], outside


NEUROSIFT_PAGE = """<!doctype html><meta charset="utf-8"><title>Neurosift (stand-in)</title>
<body><script>
// What Neurosift's runpack hook does: a check per figure view mounted, the submit
// button, refreshes of the job, then the completed job's figure in an iframe.
const API = %(api)s, KEY = %(key)s, TYPE = %(type)s, PARAMS = %(params)s;
window.statuses = [];
async function call(method, path, body) {
  const headers = { Authorization: 'Bearer ' + KEY };
  if (body) headers['Content-Type'] = 'application/json';
  const reply = await fetch(API + path, { method, headers, body: body && JSON.stringify(body) });
  window.statuses.push(reply.status);
  return reply.json();
}
(async () => {
  const request = { job_type: TYPE, input_params: PARAMS };
  for (let i = 0; i < 50; i++) await call('POST', '/api/jobs/check', request);
  let job = await call('POST', '/api/jobs/submit', request);
  while (job.status !== 'completed' && job.status !== 'failed') {
    await new Promise((done) => setTimeout(done, 250));
    job = await call('GET', '/api/jobs/' + job.job_id);
  }
  if (job.status === 'completed') {
    const frame = document.createElement('iframe');
    frame.title = 'figure';
    frame.width = 1000;
    frame.height = 700;
    frame.src = job.result.output_data.figpack_url;
    document.body.append(frame);
  }
  window.outcome = job.status;
})();
</script>"""


def test_neurosift_in_a_browser_meets_no_limit_and_frames_the_figure(
    stack: Stack, tmp_path: Path
) -> None:
    """Neurosift's sequence from its own origin in Chromium, against a server with the
    default limits: a CORS preflight, 50 checks, a submit, status reads, and the figure
    in a cross-origin iframe. No answer is a 429, and the figure draws."""
    require_chromium()
    import http.server
    import json
    import threading

    job_type = "figpack_nwb_raster_plot"
    runner_env = {"FIGPACK_API_KEY": "", "RUNPACK_ALLOW_PRIVATE_URLS": "true"}
    with (
        running_server(tmp_path / "server", env=KEYS) as server,  # default limits
        running_runner(tmp_path / "runner", server.url, "--job-types", job_type, env=runner_env),
    ):
        page_html = NEUROSIFT_PAGE % {
            "api": json.dumps(server.url),
            "key": json.dumps(SUBMIT_KEY),
            "type": json.dumps(job_type),
            "params": json.dumps(stack.params(job_type)),
        }
        site = tmp_path / "site"
        site.mkdir()
        (site / "index.html").write_text(page_html)

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(site), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # Another origin: "localhost" and another port (the API is on 127.0.0.1).
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        origin = f"http://localhost:{httpd.server_address[1]}"
        try:
            with chromium() as browser:
                page = browser.new_page(viewport={"width": 1100, "height": 800})
                page.goto(f"{origin}/index.html")
                page.wait_for_function("() => window.outcome !== undefined", timeout=120_000)
                assert page.evaluate("window.outcome") == "completed"
                statuses = page.evaluate("window.statuses")
                frame_el = page.locator('iframe[title="figure"]')
                frame = frame_el.element_handle().content_frame()
                assert frame is not None
                frame.wait_for_function(RENDERED[job_type], timeout=30_000)
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "neurosift-iframe.png"))
        finally:
            httpd.shutdown()
            httpd.server_close()
    assert 429 not in statuses
    assert statuses.count(200) >= 51 and 201 in statuses  # 50 checks, a submit, reads
