"""Figure jobs given inputs that used to hold a runner: each fails fast, with one clear line.

A real ``runpack serve`` and ``runpack-runner`` (with ``--remote-read-timeout 2``)
run the figure jobs on NWB files written by pynwb and served on loopback, and on a
socket that accepts connections and never answers. A path naming a dataset, or a
group of another kind, is refused from the file's metadata within seconds (a
units path naming a 40,000-element dataset once sat for minutes, walking it
element by element); a server that never answers fails the job at the read
timeout; progress only goes up and reaches its total; units without spikes are
counted, not silently dropped.
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.procs import KEYS, NO_LIMITS, running_runner, running_server
from tests.test_figpack_e2e import SUBMIT_KEY, neurosift, nwb_files

pytestmark = pytest.mark.timeout(120)

READ_TIMEOUT = 2.0
JOB_TYPES = ("figpack_nwb_raster_plot", "figpack_nwb_video_preview", "figpack_nwb_pose_estimation")
#: Units of the spikes file: 40 with 1000 spikes each, and one (id 7) with none.
UNITS, SPIKES, EMPTY_UNIT = 41, 1000, 7


def write_spikes_nwb(path: Path) -> None:
    from pynwb import NWBHDF5IO, NWBFile

    nwb = NWBFile(
        session_description="many spikes",
        identifier="spikes",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    )
    rng = np.random.default_rng(1)
    for unit in range(UNITS):
        count = 0 if unit == EMPTY_UNIT else SPIKES
        nwb.add_unit(spike_times=np.sort(rng.uniform(0, 100, count)))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


@dataclass
class Stack:
    url: str
    nwb_base: str
    stalled_url: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("figpack-inputs")
    (tmp / "nwb").mkdir()
    write_spikes_nwb(tmp / "nwb" / "spikes.nwb")
    # Accepts connections (the kernel completes them) and never reads or answers.
    stalled = socket.create_server(("127.0.0.1", 0))
    with stalled, nwb_files(tmp / "nwb") as base:
        env = {**KEYS, **NO_LIMITS}
        with running_server(tmp / "server", env=env) as server:
            runner_env = {"FIGPACK_API_KEY": "", "RUNPACK_ALLOW_PRIVATE_URLS": "true"}
            args = ("--job-types", ",".join(JOB_TYPES), "--concurrency", "2")
            args += ("--remote-read-timeout", str(READ_TIMEOUT))
            with running_runner(tmp / "runner", server.url, *args, env=runner_env) as runner:
                try:
                    stalled_url = f"http://127.0.0.1:{stalled.getsockname()[1]}/never.nwb"
                    yield Stack(server.url, base, stalled_url)
                except BaseException:
                    print(server.output()[-5000:], runner.output()[-5000:])
                    raise


def run(stack: Stack, job_type: str, params: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Submit, follow the job to its end: (its final state, seconds it took)."""
    started = time.monotonic()
    job = neurosift.submit(stack.url, SUBMIT_KEY, job_type, params)
    final = neurosift.follow(stack.url, job["job_id"], show=lambda line: None, timeout=90)
    return final, time.monotonic() - started


def test_a_dataset_as_units_path_fails_within_seconds_naming_it(stack: Stack) -> None:
    params = {"nwb_url": f"{stack.nwb_base}/spikes.nwb", "units_path": "/units/spike_times"}
    final, seconds = run(stack, "figpack_nwb_raster_plot", params)
    assert final["status"] == "failed", final
    error = final["error"]
    expected = f"'/units/spike_times' is a dataset of shape ({(UNITS - 1) * SPIKES},)"
    assert expected + ", not a units table" in error, error
    assert "\n" not in error
    assert seconds < 10, seconds


@pytest.mark.parametrize(
    ("job_type", "params", "message"),
    [
        (
            "figpack_nwb_video_preview",
            {"image_series_path": "/acquisition/ImageSeries/data"},
            "'/acquisition/ImageSeries/data' is a dataset of shape (40, 32, 32), "
            "not an ImageSeries",
        ),
        (
            "figpack_nwb_video_preview",
            {"image_series_path": "/units"},
            "'/units' is a group (Units), not an ImageSeries: it has no 'data'",
        ),
        (
            "figpack_nwb_pose_estimation",
            {"path": "/processing/behavior/PoseEstimation/nose/data"},
            "'/processing/behavior/PoseEstimation/nose/data' is a dataset of shape (300, 2), "
            "not a PoseEstimation",
        ),
        (
            "figpack_nwb_pose_estimation",
            {"path": "/processing/behavior"},
            "'/processing/behavior' is a group (ProcessingModule), not a PoseEstimation: "
            "it holds no PoseEstimationSeries",
        ),
        (
            "figpack_nwb_raster_plot",
            {"units_path": "/acquisition"},
            "'/acquisition' is a group, not a units table: it has no 'spike_times'",
        ),
    ],
)
def test_a_path_naming_another_kind_of_object_fails_with_what_it_is(
    stack: Stack, job_type: str, params: dict[str, Any], message: str
) -> None:
    final, seconds = run(stack, job_type, {"nwb_url": f"{stack.nwb_base}/demo.nwb", **params})
    assert final["status"] == "failed", final
    assert message in final["error"], final["error"]
    assert "Lindi" not in final["error"] and "\n" not in final["error"]
    assert seconds < 10, seconds


def test_a_server_that_never_answers_fails_the_job_at_the_read_timeout(stack: Stack) -> None:
    params = {"nwb_url": stack.stalled_url, "units_path": "/units"}
    final, seconds = run(stack, "figpack_nwb_raster_plot", params)
    assert final["status"] == "failed", final
    assert (
        f"Cannot open the NWB file at {stack.stalled_url}: "
        f"no answer for {READ_TIMEOUT:g} s (read timeout)"
    ) in final["error"], final["error"]
    assert READ_TIMEOUT <= seconds < READ_TIMEOUT + 6, seconds


def progress_of(stack: Stack, job_type: str, params: dict[str, Any]) -> tuple[list[Any], Any, str]:
    """Every (current, total) the job's event stream showed, its final state, its console."""
    job = neurosift.submit(stack.url, SUBMIT_KEY, job_type, params)
    seen = []
    console = ""
    for kind, data in neurosift.events(stack.url, job["job_id"], timeout=90):
        if kind == "progress":
            seen.append((data["current"], data["total"]))
        elif kind == "console":
            console = data["replace"] if "replace" in data else console + data.get("append", "")
        elif kind in ("status", "snapshot") and data.get("status") in ("completed", "failed"):
            return seen, data, console
    raise AssertionError("the event stream ended before the job did")


def test_raster_progress_only_goes_up_and_units_without_spikes_are_counted(
    stack: Stack,
) -> None:
    params = {"nwb_url": f"{stack.nwb_base}/spikes.nwb", "units_path": "/units"}
    seen, final, console = progress_of(stack, "figpack_nwb_raster_plot", params)
    assert final["status"] == "completed", final
    assert seen and seen[-1] == (4, 4), seen
    currents = [current for current, _ in seen]
    assert currents == sorted(currents), seen
    result = final["result"]["output_data"]
    assert result["units"] == UNITS - 1 and result["units_without_spikes"] == 1
    assert "1 unit has no spikes and is not drawn: 7" in console, console


def test_video_progress_only_goes_up_to_its_total(stack: Stack) -> None:
    params = {
        "nwb_url": f"{stack.nwb_base}/demo.nwb",
        "image_series_path": "/acquisition/ImageSeries",
    }
    seen, final, _ = progress_of(stack, "figpack_nwb_video_preview", params)
    assert final["status"] == "completed", final
    currents = [current for current, _ in seen]
    assert currents == sorted(currents) and seen[-1][0] == seen[-1][1], seen
    assert final["result"]["output_data"]["num_frames"] == 40
