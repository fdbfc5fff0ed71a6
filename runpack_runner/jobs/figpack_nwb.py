"""Figures from NWB files for Neurosift: raster plots, video previews, pose trajectories.

Three job types, each reading a remote NWB file with lindi (HTTP range requests,
nothing downloaded whole) and publishing a figpack figure (see
:mod:`runpack_runner.figures`); the result's ``figpack_url`` is the figure's
``index.html``. Parameters as the original's:

- ``figpack_nwb_raster_plot``: ``nwb_url``, ``units_path`` (the units table).
- ``figpack_nwb_video_preview``: ``nwb_url``, ``image_series_path`` (an ImageSeries;
  the first 1000 frames as an H.264 video).
- ``figpack_nwb_pose_estimation``: ``nwb_url``, ``path`` (an ndx-pose PoseEstimation).

``dandiset_id`` and ``neurosift_url`` are accepted (strings) and otherwise ignored:
the server leaves them out of the job hash, so they cannot describe a figure that
other pages get from the cache. Every path is checked against the kind of object
the job needs before any data is read (:mod:`.nwb_files`, which also opens the file
with timeouts). The heavy work lives in :mod:`.nwb_units`, :mod:`.nwb_video` and
:mod:`.nwb_pose`, imported only when a job runs, so discovering these handlers
costs nothing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from runpack_runner.context import JobContext
from runpack_runner.figures import publish_figure
from runpack_runner.handler import job

#: What the handlers import when they run (the ``figpack`` extra). Looked up, not
#: imported, so that a runner without them does not offer these job types.
NEEDS = ("figpack", "figpack_spike_sorting", "lindi", "h5py", "numpy", "av")
_missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
if _missing:
    raise ImportError(
        f"needs the figpack extra (pip install 'runpack[figpack]'); missing: {', '.join(_missing)}"
    )

#: Seconds a figure job may take: minutes, not forever.
FIGURE_TIME_LIMIT = 600.0
#: Imported once by the fork server of the jobs' processes, not by every run.
PRELOAD = (*NEEDS, *(f"runpack_runner.jobs.nwb_{m}" for m in ("files", "units", "video", "pose")))


@dataclass(frozen=True, slots=True)
class NwbParams:
    nwb_url: str
    #: The object in the file (units_path, image_series_path or path).
    path: str
    path_key: str

    def description(self, what: str) -> str:
        """The figure's description (markdown): what it shows and which file it came from.

        ``dandiset_id`` and ``neurosift_url`` stay out: they are not in the job hash, so
        a figure served from the cache would show the first submitter's values."""
        lines = [what, "", f"- NWB file: {self.nwb_url}", f"- {self.path_key}: `{self.path}`"]
        lines.append("- Made by Runpack")
        return "\n".join(lines)

    def result(self, figpack_url: str, **extra: Any) -> dict[str, Any]:
        out = {"figpack_url": figpack_url, "nwb_url": self.nwb_url, self.path_key: self.path}
        return {**out, **extra}


def parse_params(params: dict[str, Any], path_key: str) -> NwbParams:
    """The original's checks, with the same messages; ValueError names the bad parameter."""
    for key in ("nwb_url", path_key):
        if key not in params:
            raise ValueError(f"Missing required parameter: '{key}'")
        if not isinstance(params[key], str):
            raise ValueError(
                f"Parameter '{key}' must be a string, got {type(params[key]).__name__}"
            )
    nwb_url, path = params["nwb_url"], params[path_key]
    if not nwb_url.startswith(("http://", "https://")):
        raise ValueError(f"Parameter 'nwb_url' must be an http(s) URL, got: {nwb_url}")
    if not path.startswith("/"):
        raise ValueError(f"Parameter '{path_key}' must start with '/', got: {path}")
    for key in ("dandiset_id", "neurosift_url"):
        value = params.get(key, "")
        if value is None:
            value = ""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"Parameter '{key}' must be a string, got {type(value).__name__}")
    return NwbParams(nwb_url, path, path_key)


@job("figpack_nwb_raster_plot", time_limit=FIGURE_TIME_LIMIT, preload=PRELOAD)
def raster_plot(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """A figpack-spike-sorting RasterPlot of every unit's spike train."""
    p = parse_params(params, "units_path")
    from runpack_runner.jobs import nwb_units
    from runpack_runner.jobs.nwb_files import get_group, open_nwb

    ctx.log(f"Raster plot of {p.path}")
    ctx.progress(0, 4)
    with open_nwb(ctx, p.nwb_url) as f:
        units = get_group(f, p.path, "units table", nwb_units.COLUMNS)
        ctx.progress(1, 4)
        view, summary = nwb_units.raster_view(ctx, units, p.path)  # progress 2 of 4
    what = f"Spike raster of {summary['units']} units."
    if summary["units_without_spikes"]:
        what += f" {nwb_units.units_without_spikes(summary['units_without_spikes'])} not drawn."
    ctx.progress(3, 4)
    url = publish_figure(
        ctx,
        view,
        title="Raster plot from an NWB units table",
        description=p.description(what),
    )
    ctx.progress(4, 4)
    ctx.log("Completed!")
    return p.result(url, **summary)


@job("figpack_nwb_video_preview", time_limit=FIGURE_TIME_LIMIT, preload=PRELOAD)
def video_preview(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """An H.264 preview of an ImageSeries (at most its first 1000 frames)."""
    p = parse_params(params, "image_series_path")
    from runpack_runner.jobs import nwb_video
    from runpack_runner.jobs.nwb_files import get_group, open_nwb

    ctx.log(f"Video preview of {p.path}")
    with open_nwb(ctx, p.nwb_url) as f:
        series = get_group(f, p.path, "ImageSeries")
        view, summary = nwb_video.preview_view(ctx, series, p.path)
    url = publish_figure(
        ctx,
        view,
        title="Video preview from an NWB ImageSeries",
        description=p.description(
            f"The first {summary['num_frames']} of {summary['total_frames']} frames, "
            "scaled to the 99th percentile."
        ),
    )
    _, steps = ctx.reported_progress
    ctx.progress(steps or 1, steps or 1)
    ctx.log("Completed!")
    return p.result(url, **summary)


@job("figpack_nwb_pose_estimation", time_limit=FIGURE_TIME_LIMIT, preload=PRELOAD)
def pose_estimation(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """Keypoint trajectories (x, y and confidence over time) of a PoseEstimation."""
    p = parse_params(params, "path")
    from runpack_runner.jobs import nwb_pose
    from runpack_runner.jobs.nwb_files import get_group, open_nwb

    ctx.log(f"Pose estimation of {p.path}")
    ctx.progress(0, 3)
    with open_nwb(ctx, p.nwb_url) as f:
        container = get_group(f, p.path, "PoseEstimation")
        ctx.progress(1, 3)
        view, summary = nwb_pose.pose_view(ctx, container, p.path)
    ctx.progress(2, 3)
    url = publish_figure(
        ctx,
        view,
        title="Pose estimation from NWB",
        description=p.description(f"Keypoint trajectories: {summary.pop('about')}."),
    )
    ctx.progress(3, 3)
    ctx.log("Completed!")
    return p.result(url, **summary)
