"""The figure job types piece by piece: parameters, video encoding, pose reading, uploads.

The one mock here is figpack's cloud (its API is on the internet, out of reach):
a small aiohttp app on loopback answers figpack's own upload client.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from runpack_runner.context import Cancelled, JobContext
from runpack_runner.figures import publish_figure
from runpack_runner.jobs import figpack_nwb, nwb_pose, nwb_video
from runpack_runner.settings import RunnerSettings
from runpack_runner.uploads import FolderUploader, UploadFailed
from tests.conftest import RUNNER_KEY, claim, register, submit


# --- parameters -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"units_path": "/units"}, "Missing required parameter: 'nwb_url'"),
        ({"nwb_url": "https://x/a.nwb"}, "Missing required parameter: 'units_path'"),
        ({"nwb_url": 3, "units_path": "/units"}, "Parameter 'nwb_url' must be a string, got int"),
        (
            {"nwb_url": "ftp://x/a.nwb", "units_path": "/units"},
            "Parameter 'nwb_url' must be an http(s) URL, got: ftp://x/a.nwb",
        ),
        (
            {"nwb_url": "https://x/a.nwb", "units_path": "units"},
            "Parameter 'units_path' must start with '/', got: units",
        ),
        (
            {"nwb_url": "https://x/a.nwb", "units_path": "/u", "neurosift_url": ["x"]},
            "Parameter 'neurosift_url' must be a string, got list",
        ),
    ],
)
def test_parameters_are_checked_with_the_originals_messages(
    params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as err:
        figpack_nwb.raster_plot.execute(params, JobContext())
    assert str(err.value) == message


def test_metadata_outside_the_hash_stays_out_of_the_description_and_the_result() -> None:
    """A cached figure is served to every page: it cannot name the first one's."""
    p = figpack_nwb.parse_params(
        {
            "nwb_url": "https://x/a.nwb",
            "path": "/p",
            "dandiset_id": 409,
            "neurosift_url": "https://neurosift.app/?x",
        },
        "path",
    )
    text = p.description("Keypoints.")
    assert "409" not in text and "neurosift.app" not in text
    assert "https://x/a.nwb" in text and "`/p`" in text
    assert p.result("u") == {"figpack_url": "u", "nwb_url": "https://x/a.nwb", "path": "/p"}


# --- video ----------------------------------------------------------------------------
def decode(mp4: bytes, tmp_path: Path) -> list[np.ndarray]:
    path = tmp_path / "v.mp4"
    path.write_bytes(mp4)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)]


def test_grey_frames_are_scaled_by_the_99th_percentile_into_h264(tmp_path: Path) -> None:
    frames = np.zeros((12, 15, 17), dtype=np.uint16)  # odd sizes: padded to even
    frames[:, 5:10, 5:10] = 1000
    frames[0, 0, 0] = 60000  # an outlier above the 99th percentile
    mp4, width, height = nwb_video.encode_mp4(frames, 1000.0, 10.0, color=False)
    assert (width, height) == (18, 16)
    decoded = decode(mp4, tmp_path)
    assert len(decoded) == 12
    assert decoded[3][7, 7].mean() > 240  # 1000 = the 99th percentile -> white
    assert decoded[3][1, 1].mean() < 20
    assert nwb_video.to_uint8(np.array([0, 500, 1000, 5000]), 1000.0).tolist() == [0, 127, 255, 255]


def test_rgb_frames_keep_their_colors(tmp_path: Path) -> None:
    frames = np.zeros((6, 16, 16, 3), dtype=np.uint8)
    frames[..., 0] = 200  # red
    mp4, _, _ = nwb_video.encode_mp4(frames, 200.0, 30.0, color=True)
    pixel = decode(mp4, tmp_path)[2][8, 8]
    assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


class FakeDataset:
    """What h5py and lindi give: every read is a new array; the longest read is kept."""

    def __init__(self, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.attrs = attrs or {}
        self.longest_read = 0

    def __getitem__(self, key: Any) -> Any:
        out = np.array(self.data[key])
        self.longest_read = max(self.longest_read, len(out) if out.ndim else 1)
        return out


def test_a_long_series_is_read_and_encoded_in_batches_with_a_sampled_percentile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """400 frames: the 99th percentile comes from a sample (as if the frames were large),
    within 2 % of the exact one; no read and no copy holds more than a batch of frames."""
    import tracemalloc

    monkeypatch.setattr(nwb_video, "SAMPLE_BYTES", 2_000_000)  # about 61 frames of 128x128
    rng = np.random.default_rng(3)
    base = rng.integers(0, 3000, (128, 128)).astype(np.uint16)
    frames = np.stack(
        [base + rng.integers(0, 500, (128, 128)).astype(np.uint16) + i for i in range(400)]
    )
    exact = float(np.percentile(frames, 99))
    data = FakeDataset(frames)
    series = {"data": data, "starting_time": FakeDataset(np.float64(0), {"rate": 20.0})}
    tracemalloc.start()
    try:
        view, summary = nwb_video.preview_view(JobContext(), series, "/acquisition/movie")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["num_frames"] == 400 and summary["fps"] == 20.0
    assert view.attrs["percentile_99"] == pytest.approx(exact, rel=0.02)
    assert data.longest_read <= nwb_video.READ_BATCH
    # All frames at once, and the percentile's copy, were 26 MB; now a sample and a batch.
    assert peak < frames.nbytes / 2, (peak, frames.nbytes)
    decoded = decode(view.mp4, tmp_path)
    assert len(decoded) == 400
    # Scaled as before: a pixel at the percentile is white, one at 0 black.
    scaled = nwb_video.to_uint8(frames[200], view.attrs["percentile_99"])
    assert abs(float(decoded[200][..., 0].mean()) - float(scaled.mean())) < 8


def test_the_sample_is_every_frame_of_a_small_series_and_runs_spread_over_a_large_one() -> None:
    assert nwb_video.sample_frames(40, 32 * 32 * 2) == [(0, 40)]
    runs = nwb_video.sample_frames(1000, 512 * 512 * 2)
    assert (
        len(runs) == nwb_video.SAMPLE_RUNS and runs[0][0] == 0 and runs[-1][0] + runs[-1][1] == 1000
    )
    assert sum(n for _, n in runs) * 512 * 512 * 2 <= nwb_video.SAMPLE_BYTES


def test_only_the_first_1000_frames_are_previewed_and_all_zero_frames_work() -> None:
    series = {
        "data": FakeDataset(np.zeros((1003, 8, 8), dtype=np.float32)),
        "timestamps": FakeDataset(np.arange(1003) / 50.0),
    }
    view, summary = nwb_video.preview_view(JobContext(), series, "/acquisition/movie")
    assert summary["num_frames"] == 1000 and summary["total_frames"] == 1003
    assert summary["fps"] == pytest.approx(50.0)
    assert view.mp4[4:8] == b"ftyp"


def test_image_series_in_an_external_file_is_refused_clearly() -> None:
    series = {
        "data": FakeDataset(np.zeros((0, 0, 0), dtype=np.uint8)),
        "external_file": FakeDataset(np.array([b"movie.avi"])),
    }
    with pytest.raises(ValueError, match="external file"):
        nwb_video.preview_view(JobContext(), series, "/acquisition/movie")


# --- opening files and checking paths --------------------------------------------------
def test_remote_timeouts_come_from_the_runner_settings() -> None:
    from runpack_runner.jobs import nwb_files

    defaults = RunnerSettings()
    assert nwb_files.timeouts({}) == (
        defaults.remote_connect_timeout,
        defaults.remote_read_timeout,
    )
    env = {"RUNPACK_REMOTE_CONNECT_TIMEOUT": "3", "RUNPACK_REMOTE_READ_TIMEOUT": "4.5"}
    assert nwb_files.timeouts(env) == (3.0, 4.5)
    assert nwb_files.timeouts({"RUNPACK_REMOTE_READ_TIMEOUT": "no"})[1] == nwb_files.READ_TIMEOUT
    with pytest.raises(ValueError, match="remote_read_timeout must be more than 0"):
        RunnerSettings(remote_read_timeout=0).check()


def test_network_failures_are_told_in_a_few_words() -> None:
    import requests

    from runpack.netrules import AddressNotAllowed
    from runpack_runner.jobs import nwb_files

    def wrapped(inner: BaseException) -> Exception:
        try:
            try:
                raise inner
            except BaseException as exc:
                raise requests.exceptions.ConnectionError("Max retries exceeded…") from exc
        except Exception as outer:
            try:
                raise RuntimeError("lindi: Error getting file length") from outer
            except RuntimeError as err:
                return err

    why = nwb_files._network_error
    assert why(wrapped(requests.exceptions.ReadTimeout()), 10, 30) == (
        "no answer for 30 s (read timeout)"
    )
    assert why(requests.exceptions.ConnectTimeout(), 10, 30) == (
        "no connection within 10 s (connect timeout)"
    )
    refused = AddressNotAllowed("connection to a private address refused: localhost")
    assert why(wrapped(refused), 10, 30) == str(refused)
    assert why(ValueError("other"), 10, 30) is None


def test_paths_are_checked_from_metadata_only(tmp_path: Path) -> None:
    """A dataset named as a units table is refused without reading it: h5py's
    ``in`` on a dataset would iterate it, so a read here fails the test."""
    import h5py

    from runpack_runner.jobs import nwb_files

    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        units = f.create_group("units")
        units.attrs["neurodata_type"] = "Units"
        units.create_dataset("spike_times", data=np.arange(10.0))
        f.create_group("acquisition")
    with h5py.File(path, "r") as f:
        calls: list[Any] = []
        original = h5py.Dataset.__getitem__
        h5py.Dataset.__getitem__ = lambda self, key: calls.append(key) or original(self, key)  # type: ignore[method-assign]
        try:
            with pytest.raises(ValueError) as err:
                nwb_files.get_group(f, "/units/spike_times", "units table", ("spike_times",))
        finally:
            h5py.Dataset.__getitem__ = original  # type: ignore[method-assign]
        assert (
            str(err.value) == "'/units/spike_times' is a dataset of shape (10,), not a units table"
        )
        assert calls == []
        why = r"'/units' is a group \(Units\), not a units table: it has no 'spike_times_index'"
        with pytest.raises(ValueError, match=why):
            nwb_files.get_group(f, "/units", "units table", ("spike_times", "spike_times_index"))
        with pytest.raises(ValueError, match="No ImageSeries at '/nothing' in the NWB file"):
            nwb_files.get_group(f, "/nothing", "ImageSeries")
        assert nwb_files.get_group(f, "/acquisition", "ImageSeries").name == "/acquisition"


# --- pose -----------------------------------------------------------------------------
def test_pose_with_shared_irregular_timestamps_draws_lines(tmp_path: Path) -> None:
    """Keypoints sharing the first series' timestamps (an HDF5 link), with a gap."""
    import h5py
    from ndx_pose import PoseEstimation, PoseEstimationSeries, Skeleton
    from pynwb import NWBHDF5IO, NWBFile

    nwb = NWBFile(
        session_description="pose",
        identifier="pose",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    )
    t = np.concatenate([np.arange(50) / 10.0, 10 + np.arange(50) / 10.0])
    first = PoseEstimationSeries(
        name="tail", data=np.random.default_rng(0).random((100, 3)), reference_frame="r",
        timestamps=t, confidence=np.ones(100),
    )  # fmt: skip
    second = PoseEstimationSeries(
        name="head", data=np.ones((100, 3)), reference_frame="r", timestamps=first,
        confidence=np.ones(100),
    )  # fmt: skip
    skeleton = Skeleton(name="s", nodes=["head", "tail"], edges=np.array([[0, 1]], "uint8"))
    module = nwb.create_processing_module(name="behavior", description="b")
    module.add(
        PoseEstimation(
            name="Pose",
            pose_estimation_series=[first, second],
            skeleton=skeleton,
            device=nwb.create_device(name="cam"),
        )
    )
    from ndx_pose import Skeletons

    module.add(Skeletons(skeletons=[skeleton]))
    path = tmp_path / "pose.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    with h5py.File(path, "r") as f:  # lindi's interface is h5py's
        view, summary = nwb_pose.pose_view(JobContext(), f["/processing/behavior/Pose"], "/p")
    assert summary["keypoints"] == ["head", "tail"]  # the skeleton's order
    assert summary["dimensions"] == 3 and summary["samples"] == 100
    assert "over 14.9 s" in summary["about"]
    position = view.items[0].view
    graphs = [item.view for item in position.items]
    assert len(graphs) == 3  # x, y, z
    assert all(type(s).__name__ == "TGLineSeries" for s in graphs[0]._series)


def test_regular_pose_series_become_uniform_series() -> None:
    assert nwb_pose._regular_rate(np.arange(100) / 30.0) == pytest.approx(30.0)
    jittery = np.arange(100) / 30.0 + np.random.default_rng(1).normal(0, 0.001, 100)
    assert nwb_pose._regular_rate(jittery) == pytest.approx(30.0, rel=0.05)
    assert nwb_pose._regular_rate(np.array([0.0, 0.1, 0.2, 5.0])) is None


# --- uploads to this server -----------------------------------------------------------
def figure_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "figure"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text("<!doctype html>")
    (folder / "assets" / "a.js").write_text("1;")
    (folder / "data.zarr").mkdir()
    (folder / "data.zarr" / ".zmetadata").write_text("{}")
    return folder


async def test_a_handler_uploads_its_folder_through_the_runner(
    client: TestClient, tmp_path: Path
) -> None:
    job_id = (await submit(client, "figure_job", x=1))["job_id"]
    runner_id = await register(client, caps=["figure_job"])
    await claim(client, runner_id, job_id)
    settings = RunnerSettings(worker_url=str(client.make_url("/")), runner_api_key=RUNNER_KEY)
    async with aiohttp.ClientSession() as session:
        ctx = JobContext(job_id, "figure_job")
        ctx.uploader = FolderUploader(session, settings, lambda: runner_id)
        url = await asyncio.to_thread(ctx.upload_folder, figure_folder(tmp_path))
        found = re.search(f"(/figures/{job_id}/[0-9a-f]{{16}}/)index.html$", url)
        assert found is not None, url
        resp = await client.get(found.group(1) + "data.zarr/.zmetadata")
        assert resp.status == 200 and await resp.text() == "{}"
        assert "Uploading 3 files" in ctx.console
        # Not our job (any more): refused at once with the server's reason.
        other = JobContext("00000000-0000-4000-8000-000000000000", "figure_job")
        other.uploader = ctx.uploader
        with pytest.raises(UploadFailed, match="not claimed by this runner"):
            await asyncio.to_thread(other.upload_folder, figure_folder(tmp_path / "2"))
        # A cancelled job stops waiting for its upload.
        late = JobContext(job_id, "figure_job")
        late.uploader = ctx.uploader
        late.cancel("stop")
        with pytest.raises(Cancelled):
            await asyncio.to_thread(late.upload_folder, figure_folder(tmp_path / "3"))


def test_a_context_without_a_server_says_so(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="without a server"):
        JobContext().upload_folder(tmp_path)


# --- figpack's cloud (mocked: it is on the internet) ----------------------------------
async def test_with_a_figpack_api_key_figures_go_to_figpacks_cloud(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import figpack.views as fv
    from figpack.core import _upload_bundle

    stored: dict[str, bytes] = {}
    calls: list[str] = []

    async def create(request: web.Request) -> web.Response:
        calls.append("create")
        assert request.headers["x-api-key"] == "cloud-key"
        url = f"{base}/figures/abc/index.html"
        return web.json_response({"success": True, "figure": {"figureUrl": url, "status": "x"}})

    async def upload(request: web.Request) -> web.Response:
        body = await request.json()
        signed = [
            {"relativePath": f["relativePath"], "signedUrl": f"{base}/put/{f['relativePath']}"}
            for f in body["files"]
        ]
        return web.json_response({"success": True, "mode": "server-signed", "signedUrls": signed})

    async def put(request: web.Request) -> web.Response:
        stored[request.match_info["path"]] = await request.read()
        return web.Response()

    async def finalize(request: web.Request) -> web.Response:
        calls.append("finalize")
        return web.json_response({"success": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/figures/create", create)
    app.router.add_post("/upload", upload)
    app.router.add_put("/put/{path:.*}", put)
    app.router.add_post("/figures/finalize", finalize)
    async with TestServer(app) as server:
        base = str(server.make_url("")).rstrip("/")
        monkeypatch.setattr(_upload_bundle, "FIGPACK_API_BASE_URL", base)
        monkeypatch.setenv("FIGPACK_API_KEY", "cloud-key")
        ctx = JobContext()
        view = fv.Markdown("# hello")
        url = await asyncio.to_thread(publish_figure, ctx, view, title="t", description="d")
    assert url == f"{base}/figures/abc/index.html"
    assert calls == ["create", "finalize"]
    assert "index.html" in stored and "manifest.json" in stored
    assert "figpack's cloud" in ctx.console


def test_a_runner_without_the_figpack_extra_does_not_offer_figure_jobs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib.util
    import sys

    from runpack_runner.registry import Registry

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a)
    )
    monkeypatch.delitem(sys.modules, "runpack_runner.jobs.figpack_nwb")
    caplog.set_level(logging.INFO, logger="runpack_runner")
    registry = Registry.discover()
    assert "hello_world" in registry.job_types
    assert not [t for t in registry.job_types if t.startswith("figpack_nwb_")]
    # One quiet line lists them all, with the extra that would add them.
    (line,) = [r for r in caplog.records if "not installed" in r.getMessage()]
    assert line.levelno == logging.INFO
    for job_type in (
        "figpack_nwb_raster_plot",
        "figpack_nwb_video_preview",
        "figpack_nwb_pose_estimation",
    ):
        assert job_type in line.getMessage()
    assert "needs the figpack extra" in line.getMessage() and "missing: av" in line.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
