"""The video preview: an ImageSeries' first frames as an H.264 MP4 inside a figpack figure.

As the original: at most the first 1000 frames, values clipped to [0, 99th
percentile] and scaled to 0-255, grey or RGB. Memory stays bounded: the percentile
is estimated from a sample of frames (every frame of a small series), then frames
are read, scaled and encoded a batch at a time. The original showed them with
figpack_experimental's LossyVideo, which is not published; here PyAV (FFmpeg's
libx264, from PyPI) encodes an MP4 that every browser plays with its own decoder,
and a small figpack extension (``video_preview.js``) shows it in a ``<video>``
element. The MP4 lives in the figure's zarr data like any other figpack data.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import figpack
import numpy as np

from runpack_runner.context import JobContext
from runpack_runner.jobs.nwb_files import describe

MAX_FRAMES = 1000
#: Frames read, scaled and encoded at a time (fewer when they hold over BATCH_BYTES).
READ_BATCH = 50
BATCH_BYTES = 32 * 1024 * 1024
#: The 99th percentile is estimated from whole frames holding at most this many bytes,
#: in at most SAMPLE_RUNS runs of consecutive frames spread over the preview.
SAMPLE_BYTES = 32 * 1024 * 1024
SAMPLE_RUNS = 8
DEFAULT_FPS = 30.0
#: libx264 quality (lower is better; 23 is its default) and a keyframe every second.
CRF = "20"

VIDEO_EXTENSION = figpack.FigpackExtension(
    name="runpack-video-preview",
    javascript_code=resources.files(__package__).joinpath("video_preview.js").read_text("utf-8"),
    version="1.0.0",
)


class VideoPreview(figpack.ExtensionView):
    """An MP4 played in the browser, with its frame count, size and rate shown."""

    def __init__(self, mp4: bytes, **attrs: Any) -> None:
        super().__init__(extension=VIDEO_EXTENSION, view_type="runpack.VideoPreview")
        self.mp4 = mp4
        self.attrs = attrs

    def write_to_zarr_group(self, group: figpack.Group) -> None:
        super().write_to_zarr_group(group)
        for key, value in self.attrs.items():
            group.attrs[key] = value
        group.create_dataset("video_data", data=np.frombuffer(self.mp4, dtype=np.uint8))


def preview_view(ctx: JobContext, series: Any, path: str) -> tuple[Any, dict[str, Any]]:
    """(the VideoPreview view, a summary for the result); ``series`` is a group."""
    names = set(series.keys())
    data = series.get("data") if "data" in names else None
    if "external_file" in names and (data is None or getattr(data, "shape", (0,))[0] == 0):
        raise ValueError(
            f"The ImageSeries at '{path}' keeps its frames in an external file; "
            "only frames stored in the NWB file can be previewed"
        )
    if data is None or not hasattr(data, "shape"):
        raise ValueError(f"'{path}' is {describe(series)}, not an ImageSeries: it has no 'data'")
    shape = tuple(data.shape)
    if getattr(data.dtype, "kind", "") not in "biuf":
        raise ValueError(f"'{path}/data' holds {data.dtype} values, not numbers")
    color = _color_of(shape, path)
    total = int(shape[0])
    if total == 0:
        raise ValueError(f"The ImageSeries at '{path}' has no frames")
    count = min(total, MAX_FRAMES)
    fps = _frame_rate(series, count)
    frame_bytes = max(1, int(np.prod(shape[1:]))) * data.dtype.itemsize
    batch = max(1, min(READ_BATCH, BATCH_BYTES // frame_bytes))
    ctx.log(f"Data shape {shape}, {data.dtype}; {fps:g} frames per second")
    ctx.log(f"Reading {count} of {total} frames (at most {MAX_FRAMES} for a preview)")
    sample = sample_frames(count, frame_bytes)
    sampled = sum(n for _, n in sample)
    steps = sampled + count + 1
    values = _read_sample(ctx, data, sample, steps)
    peak = float(values.max())
    whole = sample == [(0, count)]  # a small series: read once, encoded from memory
    # As the original: [0, 99th percentile] -> 0-255 (the maximum if that is 0).
    pct99 = float(np.percentile(values, 99, overwrite_input=not whole))
    scale = pct99 if pct99 > 0 else max(peak, 1.0)
    ctx.log(f"99th percentile: {pct99:g} (of {sampled} frames); scaling 0-{scale:g} to 0-255")
    if not whole:
        values = np.empty(0, values.dtype)  # the sample is not needed any more

    def batches() -> Iterator[np.ndarray]:
        for start in range(0, count, batch):
            stop = min(start + batch, count)
            yield values[start:stop] if whole else _pixels(np.asarray(data[start:stop]))
            ctx.progress(sampled + stop, steps)

    ctx.log("Encoding H.264...")
    mp4, width, height = encode_mp4(batches(), scale, fps, color)
    ctx.log(f"Encoded {count} frames, {width}x{height}, into {len(mp4) / 1e6:.2f} MB")
    summary = {
        "num_frames": count,
        "total_frames": total,
        "fps": fps,
        "width": width,
        "height": height,
        "color": color,
    }
    return VideoPreview(mp4, **summary, percentile_99=pct99), summary


def sample_frames(count: int, frame_bytes: int) -> list[tuple[int, int]]:
    """(start, length) of the runs of frames the percentile is estimated from: every
    frame when they hold at most SAMPLE_BYTES, else SAMPLE_RUNS runs of consecutive
    frames (cheap to read) spread evenly over the first ``count``."""
    frames = min(count, max(2, SAMPLE_BYTES // frame_bytes))
    if frames >= count:
        return [(0, count)]
    runs = min(SAMPLE_RUNS, frames)
    length = frames // runs
    starts = sorted({int(s) for s in np.linspace(0, count - length, runs)})
    return [(start, length) for start in starts]


def _read_sample(
    ctx: JobContext, data: Any, sample: list[tuple[int, int]], steps: int
) -> np.ndarray:
    """The sampled frames, in one array (held once)."""
    values: np.ndarray | None = None
    at = 0
    for start, length in sample:
        frames = _pixels(np.asarray(data[start : start + length]))
        if values is None:
            total = sum(n for _, n in sample)
            values = np.empty((total, *frames.shape[1:]), dtype=frames.dtype)
        values[at : at + len(frames)] = frames
        at += len(frames)
        ctx.progress(at, steps)
    assert values is not None
    return values[:at]


def _pixels(frames: np.ndarray) -> np.ndarray:
    """Frames as (n, h, w) grey or (n, h, w, 3) RGB: alpha dropped, one channel squeezed."""
    if frames.ndim == 4 and frames.shape[3] == 4:
        frames = frames[..., :3]
    if frames.ndim == 4 and frames.shape[3] == 1:
        frames = frames[..., 0]
    return frames


def _color_of(shape: tuple[int, ...], path: str) -> bool:
    """True for RGB frames (T, H, W, 3), False for grey (T, H, W); ValueError otherwise."""
    if len(shape) == 3:
        return False
    if len(shape) == 4 and shape[3] in (1, 3, 4):
        return shape[3] != 1
    raise ValueError(
        f"The ImageSeries at '{path}' has frames of shape {shape[1:]}: "
        "expected (height, width) or (height, width, 3)"
    )


def _frame_rate(series: Any, count: int) -> float:
    """The series' rate, or one from its timestamps; 30 fps when it has neither."""
    rate = None
    starting_time = series.get("starting_time")
    if starting_time is not None:
        rate = starting_time.attrs.get("rate")
    elif series.get("timestamps") is not None and count > 1:
        stamps = np.asarray(series["timestamps"][: min(count, 1000)], dtype=np.float64)
        steps = np.diff(stamps)
        steps = steps[steps > 0]
        if len(steps):
            rate = 1.0 / float(np.median(steps))
    if rate is None or not np.isfinite(rate) or rate <= 0:
        return DEFAULT_FPS
    return float(min(max(float(rate), 0.1), 240.0))


def to_uint8(frames: np.ndarray, scale: float) -> np.ndarray:
    """Clip to [0, scale] and map that range to 0-255."""
    out = np.clip(frames.astype(np.float32), 0, scale) * (255.0 / scale)
    return out.astype(np.uint8)


def encode_mp4(
    frames: np.ndarray | Iterable[np.ndarray], scale: float, fps: float, color: bool
) -> tuple[bytes, int, int]:
    """H.264 (yuv420p, faststart) MP4 bytes, and the encoded width and height.

    ``frames``: an array (n, h, w[, 3]), or batches of such arrays, encoded as they come
    so that only one batch is held at a time."""
    batches = iter([frames]) if isinstance(frames, np.ndarray) else iter(frames)
    first = next(batches, None)
    if first is None or len(first) == 0:
        raise ValueError("no frames to encode")
    height, width = int(first.shape[1]), int(first.shape[2])
    # yuv420p needs even sizes: repeat the last row or column.
    pad_h, pad_w = height % 2, width % 2
    rate = Fraction(fps).limit_denominator(1001)
    # A file, not memory: faststart moves the index to the front in a second pass.
    with tempfile.TemporaryDirectory(prefix="runpack-video-") as tmp:
        target = Path(tmp) / "preview.mp4"
        frames_in = itertools.chain([first], batches)
        _encode(target, frames_in, (height, width), scale, rate, color, (pad_h, pad_w))
        return target.read_bytes(), width + pad_w, height + pad_h


def _encode(
    target: Path,
    batches: Iterable[np.ndarray],
    size: tuple[int, int],
    scale: float,
    rate: Fraction,
    color: bool,
    pad: tuple[int, int],
) -> None:
    import av

    pad_h, pad_w = pad
    height, width = size
    options = {"movflags": "+faststart"}
    with av.open(str(target), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width + pad_w, height + pad_h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": CRF, "preset": "medium", "g": str(max(1, round(rate)))}
        for frames in batches:
            for frame in frames:
                pixels = to_uint8(frame, scale)
                if pad_h or pad_w:
                    widths = ((0, pad_h), (0, pad_w)) + (((0, 0),) if color else ())
                    pixels = np.pad(pixels, widths, mode="edge")
                picture = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(pixels), format="rgb24" if color else "gray"
                )
                for packet in stream.encode(picture):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
