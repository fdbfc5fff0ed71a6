"""Counters and histograms updated from the event loop's thread, without locks,
and handed to prometheus_client at scrape time in its exposition format."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Observations:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class LoopCounter(Collector):
    """A counter updated from the event loop's thread only, as every one here is.

    prometheus_client's Counter and Histogram take a lock on every update, for
    threads this server does not have; these keep plain numbers and hand them to
    prometheus_client at scrape time, so the exposition is the same. ``labels``
    returns the series to update, as prometheus_client's do.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._series: dict[tuple[str, ...], Any] = {}
        if not labelnames:
            self._unlabelled = self.labels()
        if registry is not None:
            registry.register(self)

    def _new(self) -> Any:
        return _Count()

    def labels(self, *values: str) -> Any:
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
            series = self._series[values] = self._new()
        return series

    def inc(self, amount: float = 1.0) -> None:
        """Count on the series of a counter without labels."""
        self._unlabelled.inc(amount)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, count in self._series.items():
            family.add_metric(list(values), count.value)
        yield family


class LoopHistogram(LoopCounter):
    """A histogram, kept as :class:`LoopCounter` keeps a counter."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.buckets = tuple(sorted(buckets))
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> Any:
        return _Observations(self.buckets)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self._series.items():
            cumulative, total = [], 0
            for bound, count in zip((*self.buckets, math.inf), series.counts, strict=True):
                total += count
                cumulative.append((floatToGoString(bound), total))
            family.add_metric(list(values), cumulative, series.sum)
        yield family
