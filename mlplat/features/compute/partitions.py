"""Partitions of a batch view: cutting ``[start, end)`` into them, naming them, and how one went.

Partitions are the view's ``partition`` long (a UTC day by default), aligned to UTC midnight;
each is known by its start in nanoseconds.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, timedelta

import pandas as pd

from mlplat.errors import InvalidArgument
from mlplat.features.compute.view import DAY, BatchFeatureView


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one partition went (what a Dask worker sends back)."""

    start_ns: int
    end_ns: int
    rows: int = 0
    quarantined: int = 0
    error: str | None = None  # one line
    detail: str | None = None  # the traceback
    seconds: float = 0.0


def step_ns(view: BatchFeatureView) -> int:
    """The length of the view's partitions in nanoseconds."""
    return view.partition // timedelta(microseconds=1) * 1000


def partitions(view: BatchFeatureView, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into the view's partitions; both bounds must fall on partition boundaries."""
    step = step_ns(view)
    for value, name in ((start_ns, "start"), (end_ns, "end")):
        if value % step:
            before = pd.Timestamp(value // step * step, unit="ns", tz=UTC)
            raise InvalidArgument(
                f"compute({view.name!r}): {name} {pd.Timestamp(value, unit='ns', tz=UTC)} is not on a partition "
                f"boundary; {view.name!r} is computed in whole partitions of {view.partition} from UTC midnight, "
                f"e.g. {before} or {before + view.partition}.")
    if start_ns >= end_ns:
        raise InvalidArgument(f"compute({view.name!r}): start {pd.Timestamp(start_ns, unit='ns', tz=UTC)} is not "
                              f"before end {pd.Timestamp(end_ns, unit='ns', tz=UTC)}.")
    return [(s, s + step) for s in range(start_ns, end_ns, step)]


def label(view: BatchFeatureView, start_ns: int) -> str:
    """The partition's name: its first day, or day and time for partitions shorter than a day."""
    moment = pd.Timestamp(start_ns, unit="ns", tz=UTC)
    return moment.strftime("%Y-%m-%d" if view.partition >= DAY else "%Y-%m-%dT%H:%M")


def tag(start_ns: int) -> str:
    """The tag of the offline files holding the partition's rows (what a recompute replaces)."""
    return "c" + pd.Timestamp(start_ns, unit="ns", tz=UTC).strftime("%Y%m%dT%H%M%S")
