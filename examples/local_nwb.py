"""A small NWB file, written with pynwb and served on loopback: try the figure jobs offline.

    .venv/bin/pip install -e ".[figpack]"
    .venv/bin/python examples/local_nwb.py            # writes demo.nwb, serves it on :8090

The file has what the three figure job types read: a units table with spike
trains (``/units``), an ImageSeries (``/acquisition/ImageSeries``, 40 frames of
32x32 pixels) and an ndx-pose PoseEstimation container
(``/processing/behavior/PoseEstimation``, three keypoints). The server answers
HTTP range requests, as the DANDI archive's storage does, so lindi reads the file
the same way. It prints the URL and the commands to submit each job. The file is
on loopback, which runners refuse to fetch unless allowed: start the runner (or
``make run``) with ``RUNPACK_ALLOW_PRIVATE_URLS=true``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
from pathlib import Path

import numpy as np
from aiohttp import web

UNITS_PATH = "/units"
IMAGE_SERIES_PATH = "/acquisition/ImageSeries"
POSE_PATH = "/processing/behavior/PoseEstimation"


def write_small_nwb(path: Path, *, seed: int = 0) -> Path:
    """Write the demo NWB file to ``path`` (a few hundred kilobytes)."""
    from ndx_pose import PoseEstimation, PoseEstimationSeries, Skeleton, Skeletons
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.image import ImageSeries

    rng = np.random.default_rng(seed)
    nwb = NWBFile(
        session_description="Runpack demo: spikes, a movie and a pose",
        identifier="runpack-demo",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    )
    # Units: 6 units firing at 2 to 12 Hz for 20 s.
    for unit in range(6):
        rate = 2.0 + 2.0 * unit
        times = np.sort(rng.uniform(0.0, 20.0, size=int(rate * 20)))
        nwb.add_unit(spike_times=times)
    # A movie: a bright spot moving in a circle over a noisy background.
    frames, size = 40, 32
    yy, xx = np.mgrid[0:size, 0:size]
    movie = np.empty((frames, size, size), dtype=np.uint16)
    for i in range(frames):
        angle = 2 * np.pi * i / frames
        cx, cy = size / 2 + 9 * np.cos(angle), size / 2 + 9 * np.sin(angle)
        spot = 3000 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 18.0)
        movie[i] = (200 + rng.normal(0, 40, (size, size)) + spot).clip(0, 65535)
    nwb.add_acquisition(
        ImageSeries(name="ImageSeries", data=movie, unit="n.a.", rate=10.0, starting_time=0.0)
    )
    # Pose: three keypoints tracked at 30 Hz for 10 s.
    camera = nwb.create_device(name="camera", description="demo camera")
    nodes = ["nose", "left_ear", "right_ear"]
    skeleton = Skeleton(name="mouse", nodes=nodes, edges=np.array([[0, 1], [0, 2]], "uint8"))
    t = np.arange(300) / 30.0
    series = []
    for k, node in enumerate(nodes):
        phase = k * 0.4
        xy = np.column_stack(
            [320 + 120 * np.cos(0.8 * t + phase), 240 + 90 * np.sin(0.8 * t + phase)]
        ) + rng.normal(0, 2, (len(t), 2))
        series.append(
            PoseEstimationSeries(
                name=node,
                data=xy,
                unit="pixels",
                reference_frame="(0,0) is the top left corner of the video frame",
                rate=30.0,
                starting_time=0.0,
                confidence=rng.uniform(0.7, 1.0, len(t)),
                confidence_definition="softmax output",
            )
        )
    behavior = nwb.create_processing_module(name="behavior", description="pose tracking")
    behavior.add(
        PoseEstimation(
            name="PoseEstimation",
            pose_estimation_series=series,
            description="Demo keypoints moving in circles",
            skeleton=skeleton,
            device=camera,
            source_software="DeepLabCut",
        )
    )
    behavior.add(Skeletons(skeletons=[skeleton]))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def make_app(folder: Path) -> web.Application:
    """Static files from ``folder``, with HTTP range requests and CORS for any origin."""

    @web.middleware
    async def cors(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    app = web.Application(middlewares=[cors])
    app.router.add_static("/", folder, show_index=False)  # FileResponse: Range, HEAD
    return app


def submit_commands(nwb_url: str, runpack_url: str = "$RUNPACK_URL") -> list[str]:
    """curl commands that submit each figure job for the file at ``nwb_url``."""
    jobs = [
        ("figpack_nwb_raster_plot", {"nwb_url": nwb_url, "units_path": UNITS_PATH}),
        ("figpack_nwb_video_preview", {"nwb_url": nwb_url, "image_series_path": IMAGE_SERIES_PATH}),
        ("figpack_nwb_pose_estimation", {"nwb_url": nwb_url, "path": POSE_PATH}),
    ]
    out = []
    for job_type, params in jobs:
        body = {"job_type": job_type, "input_params": params}
        out.append(
            f"curl -s -X POST {runpack_url}/api/jobs/submit "
            '-H "Authorization: Bearer $RUNPACK_SUBMIT_API_KEY" '
            "-H 'Content-Type: application/json' -d " + shlex.quote(json.dumps(body))
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("runpack-data/nwb"), help="folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = write_small_nwb(args.dir / "demo.nwb")
    nwb_url = f"http://{args.host}:{args.port}/{path.name}"
    print(f"NWB file: {nwb_url}")
    print("Runners read it only with RUNPACK_ALLOW_PRIVATE_URLS=true (it is on loopback).")
    print("Submit the figure jobs (after: source runpack-data/dev-keys.env):")
    for command in submit_commands(nwb_url):
        print("  " + command)
    print("or follow one as Neurosift would:")
    print(
        f"  .venv/bin/python examples/neurosift_like.py figpack_nwb_raster_plot "
        f"nwb_url={nwb_url} units_path={UNITS_PATH}",
        flush=True,
    )
    web.run_app(make_app(args.dir), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
