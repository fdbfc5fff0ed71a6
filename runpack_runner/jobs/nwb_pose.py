"""Pose trajectories: an ndx-pose PoseEstimation's keypoints over time, with figpack's views.

Two tabs: "Position" (a TimeseriesGraph per coordinate, x, y and z for 3-D poses, a line per
keypoint) and "Confidence" when the series have one; the summary goes in the description.
Series sampled at a regular rate become figpack "uniform" series, which the
viewer downsamples as it zooms out, so hour-long recordings stay smooth;
irregular timestamps are drawn as plain lines, thinned to at most
``MAX_LINE_POINTS`` points per keypoint.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from runpack_runner.context import JobContext
from runpack_runner.jobs.nwb_files import read_numbers

COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
MAX_LINE_POINTS = 20_000
#: Timestamps whose steps stay within this fraction of their median count as regular.
JITTER = 0.25


def _text(value: Any) -> str:
    if value is None:
        return ""
    value = value[()] if hasattr(value, "shape") else value
    return value.decode() if isinstance(value, bytes) else str(value)


def _series_of(container: Any) -> dict[str, Any]:
    """The PoseEstimationSeries in the container, in the skeleton's node order if it has one."""
    found = {}
    order: list[str] = []
    for name in container:
        obj = container.get(name)
        kind = _text(obj.attrs.get("neurodata_type")) if obj is not None else ""
        if kind == "PoseEstimationSeries":
            found[name] = obj
        elif kind == "Skeleton" and "nodes" in obj:  # a link to the skeleton, named after it
            with contextlib.suppress(KeyError, TypeError, ValueError, OSError):
                order = [_text(n) for n in obj["nodes"][()]]
    order = [n for n in order if n in found]
    return {name: found[name] for name in order + sorted(set(found) - set(order))}


def _times(series: Any, count: int) -> np.ndarray:
    starting_time = series.get("starting_time")
    if starting_time is not None:
        rate = float(starting_time.attrs.get("rate", 0) or 0)
        if rate <= 0:
            raise ValueError(f"'{series.name}' has starting_time but no rate")
        return float(starting_time[()]) + np.arange(count) / rate
    stamps = series.get("timestamps")
    if stamps is None:
        raise ValueError(f"'{series.name}' has neither timestamps nor a rate")
    return read_numbers(stamps, f"{series.name}/timestamps", np.float64)[:count]


def _regular_rate(t: np.ndarray) -> float | None:
    """The sampling rate if ``t`` is evenly spaced (within JITTER), else None."""
    if len(t) < 2:
        return None
    steps = np.diff(t)
    median = float(np.median(steps))
    if median <= 0 or float(np.max(np.abs(steps - median))) > JITTER * median:
        return None
    return 1.0 / median


def pose_view(ctx: JobContext, container: Any, path: str) -> tuple[Any, dict[str, Any]]:
    """(the figure's view, a summary for the result)."""
    import figpack.views as fv

    series = _series_of(container)
    if not series:
        from runpack_runner.jobs.nwb_files import describe

        raise ValueError(
            f"'{path}' is {describe(container)}, not a PoseEstimation: "
            "it holds no PoseEstimationSeries"
        )
    names = list(series)
    ctx.log(f"Keypoints: {', '.join(names)}")
    data: dict[str, np.ndarray] = {}
    times: dict[str, np.ndarray] = {}
    confidence: dict[str, np.ndarray] = {}
    unit = ""
    for i, name in enumerate(names):
        s = series[name]
        shape = tuple(getattr(s["data"], "shape", ()))
        if len(shape) != 2 or shape[1] not in (2, 3):
            raise ValueError(f"'{path}/{name}/data' has shape {shape}, not (n, 2) or (n, 3)")
        values = read_numbers(s["data"], f"{path}/{name}/data", np.float64)
        data[name] = values
        times[name] = _times(s, len(values))
        if "confidence" in s:
            confidence[name] = read_numbers(s["confidence"], f"{path}/{name}/confidence", float)
        unit = unit or _text(s["data"].attrs.get("unit"))
        ctx.log(f"Read '{name}': {len(values)} samples")
        ctx.progress(1 + (i + 1) / (len(names) + 1), 3)
    dims = max(v.shape[1] for v in data.values())
    first = times[names[0]]
    shared = all(len(times[n]) == len(first) and np.allclose(times[n], first) for n in names)
    rate = _regular_rate(first) if shared else None
    colors = [COLORS[i % len(COLORS)] for i in range(len(names))]

    def graph(label: str, columns: dict[str, np.ndarray]) -> Any:
        g = fv.TimeseriesGraph(legend_opts={"location": "northwest"}, y_label=label)
        keys = [n for n in names if n in columns]
        if rate is not None:
            g.add_uniform_series(
                name=label,
                start_time_sec=float(first[0]),
                sampling_frequency_hz=rate,
                data=np.column_stack([columns[n] for n in keys]),
                channel_names=keys,
                colors=[colors[names.index(n)] for n in keys],
            )
        else:
            for n in keys:
                step = max(1, len(columns[n]) // MAX_LINE_POINTS)
                g.add_line_series(
                    name=n,
                    t=times[n][::step],
                    y=columns[n][::step],
                    color=colors[names.index(n)],
                )
        return g

    unit_label = f" ({unit})" if unit else ""
    position = []
    for axis, label in list(enumerate("xyz"))[:dims]:
        columns = {n: v[:, axis] for n, v in data.items() if v.shape[1] > axis}
        position.append(fv.LayoutItem(graph(label + unit_label, columns), title=label, stretch=1))
    tabs = [fv.TabLayoutItem(fv.Box(direction="vertical", items=position), label="Position")]
    if confidence:
        tabs.append(fv.TabLayoutItem(graph("confidence", confidence), label="Confidence"))
    view = fv.TabLayout(items=tabs)
    samples = len(first)
    duration = float(first[-1] - first[0]) if samples > 1 else 0.0
    about = f"{len(names)} keypoints ({', '.join(names)}), {samples} samples over {duration:.1f} s"
    if rate:
        about += f" at {rate:.3g} Hz"
    for label, key in (("Description", "description"), ("Source software", "source_software")):
        text = _text(container.get(key))
        if text:
            about += f"; {label}: {text}"
    summary = {"keypoints": names, "samples": samples, "dimensions": dims, "about": about}
    return view, summary
