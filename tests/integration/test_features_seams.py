"""Features and streaming are given what they use, import no higher layer and hold no import circle.

Scheduled computes go through the :class:`~mlplat.scheduling.TemplateScheduler` a feature store
is given (``p.jobs`` on a platform); stream views run on the registry and stores they are given.
"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import grimp
import pandas as pd
import pytest

import mlplat
from mlplat.errors import InvalidArgument
from mlplat.features import Field
from mlplat.features.compute import BatchFeatureView
from mlplat.features.store import FeatureStore
from mlplat.streaming import Aggregation, StreamFeatureView
from mlplat.streaming.log import EventLog
from mlplat.streaming.streams import Streams

ABOVE_STREAMING = ("mlplat.training", "mlplat.registry", "mlplat.serving", "mlplat.monitoring", "mlplat.jobs",
                   "mlplat.lineage", "mlplat.platform", "mlplat.cli", "mlplat.demo", "mlplat.status")
ABOVE = {"mlplat.features": ("mlplat.streaming", *ABOVE_STREAMING), "mlplat.streaming": ABOVE_STREAMING}


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("mlplat")  # imports inside functions count too


@pytest.mark.parametrize("package", ABOVE)
def test_a_package_imports_no_higher_layer(graph, package):
    modules = graph.find_descendants(package) | {package}
    found = sorted(f"{module} imports {imported}" for module in modules
                   for imported in graph.find_modules_directly_imported_by(module)
                   if imported.startswith(ABOVE[package]))
    assert found == [], f"{package} must be given these as arguments instead: {found}"


@pytest.mark.parametrize("package", ABOVE)
def test_a_package_holds_no_import_circle(graph, package):
    modules = graph.find_descendants(package) | {package}
    imports = {module: graph.find_modules_directly_imported_by(module) & modules for module in modules}
    try:
        TopologicalSorter(imports).prepare()
    except CycleError as circle:
        pytest.fail(f"import circle in {package}: {' <- '.join(circle.args[1])}")


@pytest.mark.parametrize("package", ABOVE)
def test_no_module_holds_a_platform(package):
    folder = Path(mlplat.__file__).parent / package.split(".")[1]
    found = [f"{path.relative_to(folder.parent)}: {line.strip()}" for path in sorted(folder.rglob("*.py"))
             for line in path.read_text().splitlines() if "platform: Any" in line or "self.platform" in line]
    assert found == []


class RecordingScheduler:
    """A TemplateScheduler that records what it is asked to schedule (the seam, not a service)."""

    def __init__(self):
        self.asked: list[tuple] = []

    def schedule_template(self, template, cron, parameters, *, key=None):
        self.asked.append((template, cron, parameters, key))
        return len(self.asked)


def daily(frame):
    return frame


def test_scheduled_computes_go_through_the_scheduler_the_store_is_given(platform, driver):
    view = BatchFeatureView("driver_daily", entities=[driver], schema=[Field("trips", "int64")],
                            transformation=daily, sources="/data/trips/*.parquet", schedule="0 2 * * *")
    scheduler = RecordingScheduler()
    parts = platform.features
    store = FeatureStore(parts.registry, parts.offline, parts.online, scheduler=scheduler)

    store.apply([driver, view])
    assert store.schedule_compute("driver_daily", cron="0 * * * *", materialize=True) == 2

    assert scheduler.asked == [
        ("feature_compute.ipynb", "0 2 * * *", {"view": "driver_daily", "materialize": False}, "view"),
        ("feature_compute.ipynb", "0 * * * *", {"view": "driver_daily", "materialize": True}, "view"),
    ]
    unscheduled = FeatureStore(parts.registry, parts.offline, parts.online)
    unscheduled.apply([view])  # nothing to schedule it with: registered all the same
    with pytest.raises(InvalidArgument, match="schedule_compute needs the platform's jobs"):
        unscheduled.schedule_compute("driver_daily")


def test_jobs_keep_one_live_schedule_of_a_template_per_key(platform):
    first = platform.jobs.schedule_template("feature_compute.ipynb", "0 2 * * *", {"view": "a", "materialize": False},
                                            key="view")
    other = platform.jobs.schedule_template("feature_compute.ipynb", "0 2 * * *", {"view": "b", "materialize": False},
                                            key="view")
    same = platform.jobs.schedule_template("feature_compute.ipynb", "0 2 * * *", {"view": "a", "materialize": False},
                                           key="view")
    changed = platform.jobs.schedule_template("feature_compute.ipynb", "0 3 * * *", {"view": "a", "materialize": False},
                                              key="view")

    assert same == first and len({first, other, changed}) == 3
    enabled = {s.id: s.parameters["view"] for s in platform.jobs.schedules() if s.enabled}
    assert enabled == {other: "b", changed: "a"}  # a's first schedule was paused, b's left alone


def test_streams_run_on_the_registry_and_stores_they_are_given(platform, driver):
    view = StreamFeatureView("trips", entities=[driver], aggregations=[Aggregation("fare", "sum", "1h")])
    parts = platform.features
    parts.apply([driver, view])
    streams = Streams(parts.registry, parts.offline, parts.online, EventLog(parts.offline))

    streams.send("trips", [{"driver_id": 7, "event_timestamp": pd.Timestamp.now(tz="UTC"), "fare": 2.5}])
    [batch] = streams.process()

    assert (batch.applied, batch.dead) == (1, 0)
    assert parts.get_online_features(["trips:fare_sum_1h"], {"driver_id": [7]}).to_dict()["fare_sum_1h"] == [2.5]
    assert len(streams.events("trips")) == 1  # logged offline, for backfills
