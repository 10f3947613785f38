"""Notebook widgets on a real platform: what a user sees after typing and clicking, against independent figures."""

import re
from datetime import UTC, datetime, timedelta
from html import unescape
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from test_jobs import notebook

import mlplat
from mlplat.demo import customer, customer_profile, driver, driver_stats, make_dataset
from mlplat.errors import FeatureViewNotFound, InvalidArgument
from mlplat.features import FeatureView, Field
from mlplat_magics.widgets import FeatureCatalog, JobPanel, ModelCard, TrainingProgress

STRONG = ["driver_stats:rating", "driver_stats:acceptance_rate"]
WEAK = ["customer_profile:avg_fare"]
RED = "#cf222e"
trip_weather = FeatureView("trip_weather", entities=[driver], description="Weather where trips start.",
                           tags={"source": "noaa"},
                           schema=[Field("rain_mm", "float32", description="Precipitation at pickup")])


@pytest.fixture(scope="module")
def platform(tmp_path_factory, redis_url):
    stats, profiles, labels = make_dataset(drivers=60, customers=40, days=10, trips=1500, seed=3)
    stats.loc[::7, "rating"] = np.nan  # some missing values for the statistics to count
    p = mlplat.connect(home=str(tmp_path_factory.mktemp("widgets")), online_store=redis_url,
                       online_prefix="widgets", user="ana")
    p.features.apply([driver, customer, driver_stats, customer_profile, trip_weather])
    p.features.ingest("driver_stats", stats)
    p.features.ingest("customer_profile", profiles)
    p.stats, p.profiles, p.labels = stats, profiles, labels
    yield p
    p.close()


def train(p, name, features, progress=None, trees=10):
    return p.train("xgboost.XGBClassifier", features=features, entity_df=p.labels, target="completed", name=name,
                   params={"n_estimators": trees, "max_depth": 3}, progress=progress)


class _Table(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None


def table_rows(html):
    """The body rows of the first HTML table, as lists of cell texts."""
    parser = _Table()
    parser.feed(html)
    return parser.rows[1:]


def text(html):
    return unescape(re.sub(r"<[^>]+>", "", html))


def test_the_catalog_filters_views_as_you_type(platform):
    catalog = FeatureCatalog(platform)
    every = ("customer_profile", "driver_stats", "trip_weather")
    assert catalog.views.options == every and catalog.views.value == "customer_profile"
    typed = {
        "gold": ("driver_stats",),                      # a tag value
        "SOURCE": ("trip_weather",),                    # a tag key, any case
        "precipitation": ("trip_weather",),             # a feature's description
        "membership": ("customer_profile",),            # a feature name and the description
        "trips": every,                                 # trips_today, lifetime_trips, "trips start"
        "driver gold": ("driver_stats",),               # every word must match
        "rating fare": (),
        "": every,
    }
    for typing, expected in typed.items():
        catalog.search.value = typing
        assert catalog.views.options == expected, typing
    catalog.search.value = "nothing like this"
    assert catalog.views.value is None and catalog.detail.value == ""


def test_the_catalog_shows_definition_freshness_and_statistics(platform):
    catalog = FeatureCatalog(platform)
    catalog.search.value = "gold"
    shown = text(catalog.detail.value)
    latest = platform.stats["event_timestamp"].max()
    recent = platform.stats[platform.stats["event_timestamp"] >= latest - pd.Timedelta(days=7)]
    for expected in ("driver_stats v1", "Daily driver performance.", "marketplace-team", "2 days, 0:00:00",
                     "driver (driver_id)", "tier=gold", "acceptance_rate", latest.strftime("%Y-%m-%d %H:%M:%S"),
                     f"{len(recent)} rows", f"{recent['trips_today'].mean():.4g}"):
        assert expected in shown
    assert catalog.status.value == ""


def test_stats_match_pandas_on_the_ingested_rows(platform):
    latest = platform.stats["event_timestamp"].max()
    recent = platform.stats[platform.stats["event_timestamp"] >= latest - pd.Timedelta(days=7)]
    found = platform.features.stats("driver_stats")
    assert (found.rows, found.start, found.end) == (len(recent), latest - pd.Timedelta(days=7), latest)
    assert len(recent) < len(platform.stats)  # the window left the oldest days out
    for feature in ["rating", "trips_today", "acceptance_rate", "avg_speed_kmh"]:
        column, row = recent[feature].astype("float64"), found.features.loc[feature]
        assert row["null_fraction"] == pytest.approx(column.isna().mean())
        for statistic in ("mean", "std", "min", "max"):
            assert row[statistic] == pytest.approx(getattr(column, statistic)(), rel=1e-6), (feature, statistic)
    assert found.features.loc["rating", "null_fraction"] > 0

    everything = platform.features.stats("customer_profile", window=None).features
    profiles = platform.profiles
    assert everything.loc["membership", "distinct"] == profiles["membership"].nunique()
    assert np.isnan(everything.loc["membership", "mean"])
    assert everything.loc["is_verified", "mean"] == pytest.approx(profiles["is_verified"].mean())
    assert everything.loc["avg_fare", "max"] == pytest.approx(profiles["avg_fare"].max())
    with pytest.raises(InvalidArgument, match="positive timedelta"):
        platform.features.stats("driver_stats", window=timedelta(0))
    with pytest.raises(FeatureViewNotFound):
        platform.features.stats("driver_stat")


def test_freshness_follows_ingests_and_materialisation(platform):
    assert platform.features.freshness("driver_stats").latest_event == platform.stats["event_timestamp"].max()
    nothing = platform.features.freshness("trip_weather")
    assert (nothing.latest_event, nothing.last_ingest, nothing.materialized_until, nothing.age) == (None,) * 4

    now = pd.Timestamp.now(tz="UTC").floor("s")
    weather = pd.DataFrame({"driver_id": [1, 2, 3], "rain_mm": [0.0, 1.5, None],
                            "event_timestamp": [now - pd.Timedelta(days=2), now - pd.Timedelta(hours=30), now]})
    platform.features.ingest("trip_weather", weather)
    fresh = platform.features.freshness("trip_weather")
    assert (fresh.latest_event, fresh.materialized_until) == (now, None)
    assert fresh.unmaterialized_files == weather["event_timestamp"].dt.date.nunique()  # one file per day
    assert abs(fresh.age - (pd.Timestamp.now(tz="UTC") - now)) < pd.Timedelta(minutes=1)

    end = datetime.now(UTC)
    platform.features.materialize(end=end, views=["trip_weather"])
    fresh = platform.features.freshness("trip_weather")
    assert (fresh.materialized_until, fresh.unmaterialized_files) == (pd.Timestamp(end), 0)

    later = end + timedelta(minutes=1)
    platform.features.ingest("trip_weather", weather.tail(1).assign(event_timestamp=later))
    fresh = platform.features.freshness("trip_weather")
    assert (fresh.latest_event, fresh.unmaterialized_files) == (pd.Timestamp(later), 1)
    assert fresh.last_ingest > pd.Timestamp(end)


def test_a_catalog_error_is_one_red_line(platform):
    catalog = FeatureCatalog(platform, stats_window=timedelta(0))
    assert RED in catalog.status.value and "Traceback" not in catalog.status.value
    assert text(catalog.status.value).startswith("window must be a positive timedelta")


def test_training_reports_stages_and_metrics_to_the_progress_widget(platform):
    bar = TrainingProgress()
    result = train(platform, "progress", STRONG, progress=bar)
    assert (bar.n, bar.total, bar.bar.bar_style, bar.bar.description) == (4, 4, "success", "train progress")
    assert bar.latest_metrics == result.metrics
    assert table_rows(bar.metrics.value) == [[k, f"{v:.4g}"] for k, v in result.metrics.items()]


class RecordingProgress(TrainingProgress):
    def __init__(self):
        super().__init__()
        self.shown = []

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        self.shown.append(dict(ordered_dict or kwargs))
        super().set_postfix(ordered_dict, refresh, **kwargs)


def test_tuning_reports_the_best_trial_so_far_then_the_final_run(platform):
    bar = RecordingProgress()
    tuned = platform.tune("xgboost.XGBClassifier", {"max_depth": [1, 4, 2]}, features=STRONG, entity_df=platform.labels,
                          target="completed", name="tuned", params={"n_estimators": 10}, progress=bar)
    best_so_far = np.maximum.accumulate(tuned.trials["roc_auc"].to_numpy())
    assert bar.shown == [*({"best val_roc_auc": b} for b in best_so_far), tuned.result.metrics]
    assert (bar.n, bar.total, bar.bar.bar_style) == (4, 4, "success")


def versions_and_aliases(p, name):
    return [(v.version, v.aliases) for v in p.models.versions(name)]


def test_the_model_card_promotes_the_clicked_version_and_shows_refusals(platform):
    weak, strong = train(platform, "card", WEAK), train(platform, "card", STRONG, trees=30)
    card = ModelCard(platform, "card")
    assert [row[:3] for row in table_rows(card.versions.value)] == [
        [strong.version, "challenger", "no"], [weak.version, "", "no"]]

    card.version.value = weak.version
    assert f"card v{weak.version}" in text(card.lineage.value)
    card.promote_button.click()
    assert platform.models.get("card").version == weak.version
    assert text(card.status.value) == f"version {weak.version} is now champion (the first one)"

    card.version.value = strong.version
    card.promote_button.click()
    assert platform.models.get("card").version == strong.version
    compared = platform.models.history("card")[-1].detail
    assert text(card.status.value) == (f"version {strong.version} is now champion (roc_auc {compared['challenger']:.4f} "
                                       f"vs {compared['champion']:.4f} for version {weak.version})")
    assert [row[:2] for row in table_rows(card.versions.value)] == [[strong.version, "champion"], [weak.version, ""]]

    before = versions_and_aliases(platform, "card")
    card.version.value = weak.version
    card.promote_button.click()
    assert RED in card.status.value and "Traceback" not in card.status.value
    assert "scores roc_auc=" in text(card.status.value) and "on the shared holdout" in text(card.status.value)
    assert versions_and_aliases(platform, "card") == before
    assert not any(button.disabled for button in card.buttons)


def test_a_model_card_for_an_unknown_model_says_so(platform):
    card = ModelCard(platform, "nope")
    assert RED in card.status.value and "'nope' is not a registered model" in text(card.status.value)
    card.promote_button.click()  # nothing to promote: still one red line, no exception
    assert RED in card.status.value and "'nope'" in text(card.status.value)


def test_the_job_panel_runs_pauses_and_resumes_the_selected_schedule(platform, tmp_path):
    panel = JobPanel(platform)
    assert text(panel.schedules.value).startswith("no schedules yet")
    panel.run_button.click()
    assert RED in panel.status.value and "Select a schedule first" in text(panel.status.value)

    source = notebook(tmp_path / "hello.ipynb", "print(x)")
    schedule_id = platform.jobs.schedule(source, "0 * * * *", parameters={"x": 5})
    hour = pd.Timedelta(hours=1)
    next_hours = {(pd.Timestamp.now(tz="UTC").floor("h") + hour).strftime("%Y-%m-%d %H:%M:%S UTC")}
    panel.refresh_button.click()
    next_hours.add((pd.Timestamp.now(tz="UTC").floor("h") + hour).strftime("%Y-%m-%d %H:%M:%S UTC"))
    (row,) = table_rows(panel.schedules.value)
    assert row[:4] == [str(schedule_id), "hello.ipynb", "0 * * * *", "yes"] and row[4] in next_hours
    assert panel.schedule.value == schedule_id

    panel.run_button.click()
    (run,) = platform.jobs.history(source)
    assert (run.status, run.parameters) == ("succeeded", {"x": 5})
    assert text(panel.status.value) == f"hello.ipynb run {run.id[:8]} succeeded in {run.seconds:.1f} s"
    assert table_rows(panel.runs.value)[0] == ["hello.ipynb", f"{run.started_at:%Y-%m-%d %H:%M:%S} UTC", "succeeded",
                                               "1", f"{run.seconds:.4g}", "-"]

    panel.pause_button.click()
    assert [(s.id, s.enabled, s.next_run) for s in platform.jobs.schedules()] == [(schedule_id, False, None)]
    assert table_rows(panel.schedules.value)[0][3:5] == ["no", "-"]
    panel.resume_button.click()
    assert [(s.id, s.enabled) for s in platform.jobs.schedules()] == [(schedule_id, True)]
    assert text(panel.status.value) == f"schedule {schedule_id} (hello.ipynb) resumed"


def test_a_failing_run_now_is_one_red_line_and_is_listed(platform, tmp_path):
    source = notebook(tmp_path / "broken.ipynb", "1 / 0")
    schedule_id = platform.jobs.schedule(source, "0 0 * * *")
    panel = JobPanel(platform)
    panel.schedule.value = schedule_id
    panel.run_button.click()
    assert RED in panel.status.value and "Traceback" not in panel.status.value
    assert "broken.ipynb failed after 1 attempt(s): cell 2 raised ZeroDivisionError" in text(panel.status.value)
    newest = table_rows(panel.runs.value)[0]
    assert (newest[0], newest[2], newest[3]) == ("broken.ipynb", "failed", "1")
