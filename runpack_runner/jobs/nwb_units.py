"""The raster plot: spike trains of an NWB units table as figpack-spike-sorting's RasterPlot.

Reads ``id``, ``spike_times_index`` and ``spike_times`` whole (three reads, a few
range requests each) rather than one small read per unit. Units without spikes
cannot be drawn; they are counted, named in the console and in the figure's
description.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runpack_runner.context import JobContext
from runpack_runner.jobs.nwb_files import read_numbers

#: The datasets a units table must have (checked before anything is read).
COLUMNS = ("spike_times", "spike_times_index")
#: How many ids of units without spikes the console names.
SHOW_EMPTY = 20


def units_without_spikes(count: int) -> str:
    """ "1 unit has no spikes and is", "3 units have no spikes and are" ."""
    if count == 1:
        return "1 unit has no spikes and is"
    return f"{count} units have no spikes and are"


def raster_view(ctx: JobContext, units: Any, path: str) -> tuple[Any, dict[str, Any]]:
    """(the RasterPlot view, a summary for the result); ``units`` is a checked group."""
    import figpack_spike_sorting.views as fss

    ctx.log("Reading the spike times...")
    index = read_numbers(units["spike_times_index"], f"{path}/spike_times_index", np.int64)
    times = read_numbers(units["spike_times"], f"{path}/spike_times", np.float64)
    has_ids = "id" in set(units.keys())
    ids = np.asarray(units["id"][()]) if has_ids else np.arange(len(index), dtype=np.int64)
    ctx.log(f"{len(index)} units, {len(times)} spikes")
    ctx.progress(2, 4)
    plots = []
    empty = []
    start = 0
    for unit_id, end in zip(ids, index, strict=False):
        spikes = times[start:end]
        start = int(end)
        if len(spikes):
            plots.append(fss.RasterPlotItem(unit_id=str(unit_id), spike_times_sec=spikes))
        else:
            empty.append(str(unit_id))
    if empty:
        shown = ", ".join(empty[:SHOW_EMPTY]) + (", …" if len(empty) > SHOW_EMPTY else "")
        ctx.log(f"{units_without_spikes(len(empty))} not drawn: {shown}")
    if not plots:
        raise ValueError(f"The units table at '{path}' has no spikes to plot")
    first = float(min(p.spike_times_sec.min() for p in plots))
    last = float(max(p.spike_times_sec.max() for p in plots))
    if last <= first:
        last = first + 1.0
    view = fss.RasterPlot(start_time_sec=first, end_time_sec=last, plots=plots)
    summary = {
        "units": len(plots),
        "spikes": int(sum(len(p.spike_times_sec) for p in plots)),
        "units_without_spikes": len(empty),
    }
    ctx.log(f"Raster plot of {summary['units']} units from {first:.3f} s to {last:.3f} s")
    return view, summary
