"""The raster plot: spike trains of an NWB units table as figpack-spike-sorting's RasterPlot.

Reads ``id``, ``spike_times_index`` and ``spike_times`` whole (three reads, a few
range requests each) rather than one small read per unit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runpack_runner.context import JobContext


def raster_view(ctx: JobContext, units: Any, path: str) -> tuple[Any, dict[str, Any]]:
    """(the RasterPlot view, a summary for the result)."""
    import figpack_spike_sorting.views as fss

    for column in ("spike_times", "spike_times_index"):
        if column not in units:
            raise ValueError(f"'{path}' has no '{column}' column: is it a units table?")
    ctx.log("Reading the spike times...")
    index = np.asarray(units["spike_times_index"][()], dtype=np.int64)
    times = np.asarray(units["spike_times"][()], dtype=np.float64)
    ids = np.asarray(units["id"][()]) if "id" in units else np.arange(len(index), dtype=np.int64)
    ctx.log(f"{len(index)} units, {len(times)} spikes")
    plots = []
    start = 0
    for unit_id, end in zip(ids, index, strict=False):
        spikes = times[start:end]
        start = int(end)
        if len(spikes):
            plots.append(fss.RasterPlotItem(unit_id=str(unit_id), spike_times_sec=spikes))
    if not plots:
        raise RuntimeError(f"The units table at '{path}' has no spikes to plot")
    first = float(min(p.spike_times_sec.min() for p in plots))
    last = float(max(p.spike_times_sec.max() for p in plots))
    if last <= first:
        last = first + 1.0
    view = fss.RasterPlot(start_time_sec=first, end_time_sec=last, plots=plots)
    summary = {"units": len(plots), "spikes": int(sum(len(p.spike_times_sec) for p in plots))}
    ctx.log(f"Raster plot of {summary['units']} units from {first:.3f} s to {last:.3f} s")
    return view, summary
