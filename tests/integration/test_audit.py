"""The audit trail: every mutating action with who did it, queryable by object and user; lineage from an endpoint."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import nbformat
import pandas as pd
import pytest
from click.testing import CliRunner

import mlplat
from mlplat.audit import Audit
from mlplat.cli import main
from mlplat.demo import driver, driver_stats, make_dataset
from mlplat.errors import InvalidArgument
from mlplat.serving.triton import TritonService, triton_installed

FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate"]


def notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell("n = 1")
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, nbformat.v4.new_code_cell("print(n)")]
    nbformat.write(nb, path)
    return path


def fresh_row():
    return pd.DataFrame({"driver_id": [1], "event_timestamp": [pd.Timestamp.now(tz="UTC")], "rating": [4.9],
                         "trips_today": [3], "acceptance_rate": [0.9], "avg_speed_kmh": [30.0]})


def actions(trail):
    return [(e.kind, e.object, e.action, e.version) for e in trail]


@pytest.fixture
def p(tmp_path, redis_url):
    platform = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, online_prefix="audit", user="ana",
                              team="pricing")
    yield platform
    platform.close()


def test_entries_are_filtered_by_kind_object_user_action_time_and_limit(p):
    p.audit.record("model", "churn", "promoted", 2, "beats v1", previous="1")
    p.audit.record("deployment", "churn", "deployed", "2", endpoint="127.0.0.1:8001")
    p.audit.record("feature_view", "trips", "pushed", 1, rows=3)
    between = datetime.now(UTC)
    Audit(p.engine, "ben", "ml").record("model", "churn", "archived", 1, "superseded")

    promoted = p.audit.entries(action="promoted")[0]
    assert (promoted.who, promoted.team, promoted.version, promoted.reason) == ("ana", "pricing", "2", "beats v1")
    assert promoted.detail == {"previous": "1"} and promoted.at.tzinfo is not None
    assert [e.action for e in p.audit.entries(obj="churn")] == ["promoted", "deployed", "archived"]
    assert [e.action for e in p.audit.entries(kind="model", obj="churn")] == ["promoted", "archived"]
    assert [(e.who, e.team, e.action) for e in p.audit.entries(user="ben")] == [("ben", "ml", "archived")]
    assert [e.object for e in p.audit.entries(action=("deployed", "pushed"))] == ["churn", "trips"]
    assert [e.action for e in p.audit.entries(since=between)] == ["archived"]
    assert p.audit.entries(since=(between + timedelta(days=1)).date().isoformat()) == []
    assert [e.action for e in p.audit.entries(limit=2)] == ["pushed", "archived"]  # the newest, oldest first
    with pytest.raises(InvalidArgument, match="not an ISO date"):
        p.audit.entries(since="yesterday")


def test_a_trail_prints_as_a_table_renders_as_html_and_becomes_a_dataframe(p):
    p.audit.record("model", "churn", "promoted", 2, "beats <v1>", metric="roc_auc", challenger=0.912345)
    trail = p.audit.entries()
    header, row = str(trail).splitlines()
    assert header.split() == ["at", "who", "kind", "object", "version", "action", "detail"]
    assert row.split()[2:] == ["ana", "model", "churn", "2", "promoted", "beats", "<v1>;", "metric=roc_auc,",
                               "challenger=0.9123"]
    assert "<td>beats &lt;v1&gt;; metric=roc_auc, challenger=0.9123</td>" in trail._repr_html_()
    frame = trail.to_df()
    assert list(frame.columns) == ["id", "at", "who", "team", "kind", "object", "version", "action", "reason",
                                   "detail"]
    assert frame.loc[0, "detail"] == {"metric": "roc_auc", "challenger": 0.912345}
    assert str(p.audit.entries(user="nobody")) == "no audit entries"


def test_feature_apply_ingest_materialize_and_push_are_recorded(p, tmp_path):
    stats, _, _ = make_dataset(drivers=20, customers=5, days=3, trips=100, seed=3)
    stats.to_parquet(tmp_path / "stats.parquet")
    p.features.apply([driver, replace(driver_stats, source=str(tmp_path / "stats.parquet"))])
    p.features.ingest("driver_stats")
    p.features.materialize()
    p.features.push("driver_stats", fresh_row())
    assert actions(p.audit.entries()) == [
        ("entity", "driver", "created", None), ("feature_view", "driver_stats", "created", "1"),
        ("feature_view", "driver_stats", "ingested", "1"), ("feature_view", "driver_stats", "materialized", "1"),
        ("feature_view", "driver_stats", "pushed", "1")]
    ingested, materialized, pushed = p.audit.entries(kind="feature_view", action=("ingested", "materialized", "pushed"))
    assert ingested.detail["rows"] == len(stats) and ingested.detail["source"] == str(tmp_path / "stats.parquet")
    days = {f"date={day}" for day in stats["event_timestamp"].dt.strftime("%Y-%m-%d")}
    assert {path.split("/")[-2] for path in ingested.detail["files"]} == days  # the files written, one a day
    assert (materialized.detail["entities"], pushed.detail["rows"]) == (20, 1)
    assert [h.action for h in p.features.registry.history("driver_stats")] == ["created"]  # definitions only


def test_a_tuning_search_is_recorded_before_the_run_it_chose(p):
    stats, _, labels = make_dataset(drivers=30, customers=5, days=3, trips=300, seed=4)
    p.features.apply([driver, driver_stats])
    p.features.ingest("driver_stats", stats)
    tuned = p.tune("xgboost.XGBClassifier", {"max_depth": [1, 3]}, features=FEATURES, entity_df=labels,
                   target="completed", name="tuned", params={"n_estimators": 5})
    search, trained, registered = p.audit.entries(kind="model", obj="tuned")
    assert [e.action for e in (search, trained, registered)] == ["tuned", "trained", "registered"]
    assert (search.detail["run_id"], search.detail["trials"], search.detail["best"]) == \
        (tuned.parent_run_id, 2, tuned.best_params)
    assert trained.detail["run_id"] == registered.detail["run_id"] == tuned.result.run_id
    assert registered.version == tuned.result.version


def test_job_runs_and_schedules_are_recorded(p, tmp_path):
    source = notebook(tmp_path / "report.ipynb")
    run = p.jobs.run(source, {"n": 2})
    again = p.jobs.rerun(run.id)
    schedule_id = p.jobs.schedule(source, "0 3 * * *")
    p.jobs.pause(schedule_id)
    p.jobs.resume(schedule_id)
    trail = p.audit.entries(obj="report.ipynb")
    assert [(e.kind, e.action) for e in trail] == [("job", "ran"), ("job", "reran"), ("schedule", "created"),
                                                  ("schedule", "paused"), ("schedule", "resumed")]
    assert (trail[0].detail["run_id"], trail[0].detail["status"], trail[0].detail["parameters"]) == \
        (run.id, "succeeded", {"n": 2})
    assert (trail[1].detail["run_id"], trail[1].detail["rerun_of"]) == (again.id, run.id)
    assert {e.detail["schedule"] for e in trail[2:]} == {schedule_id}


def test_the_mlplat_audit_magic(p):
    from mlplat_magics import MlplatMagics

    p.audit.record("model", "churn", "promoted", 1)
    p.audit.record("deployment", "churn", "deployed", 1)
    magics = MlplatMagics(None)
    magics._platform = p
    assert actions(magics.mlplat("audit --kind deployment --object churn")) == [
        ("deployment", "churn", "deployed", "1")]
    assert len(magics.mlplat("audit --limit 1")) == 1


# -- end to end, up to a model live on Triton -------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory, redis_url):
    """One end-to-end run by ana, then two actions by ben (the user a hub workspace names in MLPLAT_USER)."""
    home = tmp_path_factory.mktemp("audit-e2e")
    settings = {"home": str(home), "online_store": redis_url, "online_prefix": "audit-e2e"}
    p = mlplat.connect(**settings, user="ana", team="pricing")
    if not triton_installed(p.settings):
        pytest.skip(f"no Triton in {p.settings.triton_env}: `make triton` creates it")
    stats, _, labels = make_dataset(drivers=60, customers=20, days=4, trips=1200, seed=13)
    stats.to_parquet(home / "driver_stats.parquet")
    source = notebook(home / "report.ipynb")

    p.features.apply([driver, replace(driver_stats, source=str(home / "driver_stats.parquet"))])
    p.features.ingest("driver_stats")
    p.features.materialize()
    p.features.push("driver_stats", fresh_row())
    for trees in (10, 20):
        p.train("xgboost.XGBClassifier", features=FEATURES, entity_df=labels, target="completed", name="churn",
                params={"n_estimators": trees})
        p.models.promote("churn", force=trees == 20, reason="more trees" if trees == 20 else "")
        if trees == 10:
            p.deploy("churn")
    p.rollback("churn", reason="latency regression")
    p.experiments.start("churn-ab", "churn", challenger="2", traffic=50)
    schedule_id = p.jobs.schedule(source, "0 3 * * *")
    p.jobs.pause(schedule_id)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLPLAT_USER", "ben")
        env.setenv("MLPLAT_TEAM", "ml")
        q = mlplat.connect(**settings)
        q.features.push("driver_stats", fresh_row())
        q.jobs.resume(schedule_id)
        q.close()
    yield p
    p.close()
    TritonService(p.settings).stop()


def test_the_trail_holds_every_action_of_an_end_to_end_run_in_order(run):
    assert [(e.who, e.team, e.kind, e.object, e.action, e.version) for e in run.audit.entries()] == [
        *(("ana", "pricing", *a) for a in [
            ("entity", "driver", "created", None),
            ("feature_view", "driver_stats", "created", "1"),
            ("feature_view", "driver_stats", "ingested", "1"),
            ("feature_view", "driver_stats", "materialized", "1"),
            ("feature_view", "driver_stats", "pushed", "1"),
            ("model", "churn", "trained", None),
            ("model", "churn", "registered", "1"),
            ("model", "churn", "promoted", "1"),
            ("deployment", "churn", "deployed", "1"),
            ("model", "churn", "trained", None),
            ("model", "churn", "registered", "2"),
            ("model", "churn", "promoted", "2"),
            ("model", "churn", "rolled_back", "1"),
            ("deployment", "churn", "deployed", "1"),  # p.rollback serves the restored champion
            ("deployment", "churn", "deployed", "1"),  # the experiment's champion arm
            ("deployment", "churn", "deployed", "2"),  # and its challenger, beside it
            ("experiment", "churn-ab", "started", None),
            ("schedule", "report.ipynb", "created", None),
            ("schedule", "report.ipynb", "paused", None)]),
        ("ben", "ml", "feature_view", "driver_stats", "pushed", "1"),
        ("ben", "ml", "schedule", "report.ipynb", "resumed", None)]
    trained, registered = run.audit.entries("model", "churn", action=("trained", "registered"), limit=2)
    assert registered.detail["run_id"] == trained.detail["run_id"] and "roc_auc" in trained.detail["metrics"]
    promoted = run.audit.entries("model", "churn", action="promoted")[-1]
    assert (promoted.reason, promoted.detail["forced"], promoted.detail["previous"]) == ("more trees", True, "1")
    started = run.audit.entries(kind="experiment")[0].detail
    assert (started["champion"], started["challenger"], started["traffic"]) == ("1", "2", 50.0)


def test_the_trail_is_queryable_by_object_and_by_user(run):
    assert {e.kind for e in run.audit.entries(obj="churn")} == {"model", "deployment"}
    assert [e.action for e in run.models.history("churn")][-4:] == ["rolled_back", "deployed", "deployed", "deployed"]
    assert [(e.object, e.action) for e in run.audit.entries(user="ben")] == [("driver_stats", "pushed"),
                                                                             ("report.ipynb", "resumed")]
    assert len(run.audit.entries(user="ana")) == 19


def test_the_audit_command(run, monkeypatch):
    for key in ("home", "online_store", "online_prefix"):
        monkeypatch.setenv(f"MLPLAT_{key.upper()}", str(getattr(run.settings, key)))
    result = CliRunner().invoke(main, ["audit", "--kind", "deployment", "--object", "churn"], catch_exceptions=False)
    header, *rows = result.output.splitlines()
    assert header.split()[:6] == ["at", "who", "kind", "object", "version", "action"]
    assert [r.split()[2:7] for r in rows] == [["ana", "deployment", "churn", v, "deployed"] for v in "1112"]
    by_ben = CliRunner().invoke(main, ["audit", "--user", "ben", "--action", "resumed"]).output.splitlines()
    assert len(by_ben) == 2 and by_ben[1].split()[2:6] == ["ben", "schedule", "report.ipynb", "resumed"]
    assert len(CliRunner().invoke(main, ["audit", "--limit", "3"]).output.splitlines()) == 4


def test_lineage_runs_from_the_endpoint_to_the_source_files(run, monkeypatch):
    versions = {v.version: v for v in run.models.versions("churn")}
    text = str(run.lineage(endpoint="churn"))
    lines = [line.strip().removeprefix("└─ ") for line in text.splitlines()]
    grpc = TritonService(run.settings).status().url
    assert lines[0].startswith(f"endpoint: churn  (grpc={grpc}, default=v1, loaded=v1, v2, deployed=")
    assert lines[0].endswith(" by ana)")
    models = [line for line in lines if line.startswith("model: ")]
    assert [m.split("  ")[0] for m in models] == ["model: churn v1", "model: churn v2"]  # the default first
    for version in ("1", "2"):
        assert f"run: {versions[version].run_id[:12]}" in text
    assert text.count("feature view: driver_stats v1") == 2
    assert f"source: {run.features.get_view('driver_stats').source}\n" in text
    assert "training set: " in text and "<div" in run.lineage(endpoint="churn")._repr_html_()
    for key in ("home", "online_store", "online_prefix"):
        monkeypatch.setenv(f"MLPLAT_{key.upper()}", str(getattr(run.settings, key)))
    assert CliRunner().invoke(main, ["lineage", "--endpoint", "churn"]).output.strip() == text

    TritonService(run.settings).stop()  # read from the model repository: Triton need not run
    assert str(run.lineage(endpoint="churn")).splitlines()[0].startswith(
        "endpoint: churn  (grpc=Triton not running, default=v1")
