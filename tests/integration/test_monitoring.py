"""The prediction log, its flusher, Prometheus metrics, thresholds and alerts, on a real Redis."""

import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
from clocks import SkippingClock
from prometheus_client.parser import text_string_to_metric_families

from mlplat.durations import parse_duration
from mlplat.errors import InvalidArgument
from mlplat.monitoring.alerts import Alerts, Finding
from mlplat.monitoring.metrics import exposition
from mlplat.monitoring.predlog import GROUP, LATENCY_BUCKETS, Flusher, PredictionLogger, stream_key
from mlplat.services import free_port

COLUMNS = ["rating", "trips"]


def log_requests(logger, n, seed=0, model="churn", version="3"):
    """Log ``n`` requests of 1-3 rows; return the rows they carried and each request's latency."""
    rng = np.random.default_rng(seed)
    rows, latencies = [], []
    for i in range(n):
        features = rng.normal(size=(int(rng.integers(1, 4)), len(COLUMNS))).astype(np.float32)
        outputs = rng.random((len(features), 2)).astype(np.float32)
        latency = float(rng.gamma(2.0, 2.0))
        logger.log(model, version, COLUMNS, features, outputs, latency, arm="champion" if i % 2 else "")
        latencies.append(latency)
        rows.append(pd.DataFrame({"rating": features[:, 0], "trips": features[:, 1], "prediction": outputs[:, 1],
                                  "latency_ms": latency, "arm": "champion" if i % 2 else ""}))
    return pd.concat(rows, ignore_index=True), latencies


def stored(platform, model="churn"):
    return platform.monitor.store.read(model).sort_values("log_id", key=_entry_order).reset_index(drop=True)


def _entry_order(ids):
    parts = ids.str.extract(r"(\d+)-(\d+)/(\d+)").astype(int)
    return parts[0] * 10**9 + parts[1] * 10**3 + parts[2]


@pytest.fixture
def logger(platform):
    found = PredictionLogger(platform.features.online.client, platform.settings.online_prefix)
    yield found
    found.close()


def test_logged_predictions_reach_parquet_row_for_row(platform, logger):
    expected, _ = log_requests(logger, 300)
    logger.flush()
    assert platform.monitor.flush() == 300
    rows = stored(platform)
    assert rows["log_id"].is_unique and len(rows) == len(expected)
    pd.testing.assert_frame_equal(rows[["rating", "trips", "prediction", "latency_ms", "arm"]], expected,
                                  check_dtype=False)
    assert set(rows["model"]) == {"churn"} and set(rows["version"]) == {"3"}
    assert platform.features.online.client.xlen(stream_key(platform.settings.online_prefix)) == 0


def test_rows_not_yet_flushed_are_read_from_the_stream(platform, logger):
    expected, _ = log_requests(logger, 50)
    logger.flush()
    rows = platform.monitor.predictions("churn")
    assert len(rows) == len(expected)
    np.testing.assert_allclose(rows["rating"], expected["rating"])


def test_sampling_logs_a_share_of_requests_and_counts_every_one(platform):
    random.seed(7)
    logger = PredictionLogger(platform.features.online.client, platform.settings.online_prefix, sample_rate=0.25)
    _, latencies = log_requests(logger, 2000)
    logger.close()
    logged = platform.features.online.client.xlen(stream_key(platform.settings.online_prefix))
    assert 400 < logged < 600  # binomial(2000, 0.25): 500 +- 19 (sd)
    families = {f.name: f for f in text_string_to_metric_families(exposition(platform.features.online.client,
                                                                             platform.settings.online_prefix))}
    counted = {s.name: s.value for s in families["mlplat_predict_requests"].samples}
    assert counted == {"mlplat_predict_requests_total": 2000}


def test_latency_histogram_matches_the_latencies(platform, logger):
    _, latencies = log_requests(logger, 500)
    logger.error("churn", "3", "ServingError")
    logger.flush()
    text = exposition(platform.features.online.client, platform.settings.online_prefix)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    buckets = {s.labels["le"]: s.value for s in families["mlplat_predict_latency_seconds"].samples
               if s.name.endswith("_bucket")}
    seconds = np.array(latencies) / 1000
    for bound in LATENCY_BUCKETS:
        assert buckets[str(bound)] == (seconds <= bound).sum()
    assert buckets["+Inf"] == 500
    total = [s.value for s in families["mlplat_predict_latency_seconds"].samples if s.name.endswith("_sum")]
    assert total == [pytest.approx(seconds.sum())]
    errors = [s for s in families["mlplat_predict_errors"].samples if s.name.endswith("_total")]
    assert [(e.labels, e.value) for e in errors] == [({"model": "churn", "version": "3", "error": "ServingError"}, 1)]


def test_a_flusher_that_dies_after_writing_rewrites_the_same_rows_once(platform, logger):
    expected, _ = log_requests(logger, 120)
    logger.flush()
    client, prefix = platform.features.online.client, platform.settings.online_prefix
    dead = Flusher(client, prefix, platform.settings.offline_store, batch=50, consumer="worker")
    # What a flusher does before it acknowledges: read a batch and write it. Then it is killed.
    entries = client.xreadgroup(GROUP, "worker", {stream_key(prefix): ">"}, count=50)[0][1]
    dead.write(entries)
    assert len(stored(platform)) > 0
    Flusher(client, prefix, platform.settings.offline_store, batch=50, consumer="worker").flush_all()
    rows = stored(platform)
    assert len(rows) == len(expected) and rows["log_id"].is_unique
    np.testing.assert_allclose(rows["rating"], expected["rating"])


def test_killing_the_monitor_service_mid_way_loses_nothing(platform, logger, tmp_path):
    expected, _ = log_requests(logger, 3000, seed=3)
    logger.flush()
    env = {**os.environ, "MLPLAT_HOME": str(platform.settings.home),
           "MLPLAT_ONLINE_STORE": platform.settings.online_store,
           "MLPLAT_ONLINE_PREFIX": platform.settings.online_prefix}
    command = [sys.executable, "-m", "mlplat.cli", "monitor", "serve", "--port", str(free_port()), "--batch", "20"]
    client, stream = platform.features.online.client, stream_key(platform.settings.online_prefix)
    server = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + 60
        while client.xlen(stream) > 2500 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        assert 0 < client.xlen(stream) < 3000, "killed before it started, or after it finished"
        server = subprocess.Popen(command, env=env)
        while client.xlen(stream) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(10)
    rows = stored(platform)
    assert len(rows) == len(expected) and rows["log_id"].is_unique
    np.testing.assert_allclose(rows["rating"], expected["rating"])


class Webhook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        Webhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Webhook.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", Webhook.received
    server.shutdown()


def drift_finding(breached, value=0.5):
    return Finding("drift", "churn", "rating", value, 0.2, breached, f"rating drifted: PSI {value}")


def test_an_alert_fires_once_per_episode_and_goes_to_the_webhook(platform, webhook):
    url, received = webhook
    alerts = Alerts(platform.engine, url)
    assert [a.subject for a in alerts.observe([drift_finding(True)])] == ["rating"]
    assert alerts.observe([drift_finding(True, 0.7)]) == []
    assert alerts.observe([drift_finding(True, 0.6)]) == []
    firing = alerts.list("firing")
    assert len(firing) == 1 and firing[0].checks == 3 and firing[0].value == 0.6 and firing[0].delivery == "sent"
    assert len(received) == 1 and received[0]["alerts"][0]["subject"] == "rating" and "churn" in received[0]["text"]
    alerts.observe([drift_finding(False, 0.05)])
    assert alerts.list("firing") == [] and [a.status for a in alerts.list()] == ["resolved"]
    assert len(alerts.observe([drift_finding(True)])) == 1  # a new episode
    assert len(received) == 2 and len(alerts.list()) == 2


def test_a_webhook_that_fails_is_recorded_on_the_alert(platform):
    alerts = Alerts(platform.engine, f"http://127.0.0.1:{free_port()}/hook")
    fired = alerts.observe([drift_finding(True)])
    assert fired[0].delivery.startswith("webhook failed")
    assert platform.alerts("firing")[0].id == fired[0].id


def test_thresholds_are_validated_and_kept_per_model(platform):
    assert platform.monitor.thresholds("churn").psi == 0.2
    changed = platform.monitor.set_thresholds("churn", psi=0.3, window="30min", p99_ms=25, error_rate=None)
    assert (changed.psi, changed.window_s, changed.p99_ms, changed.error_rate) == (0.3, 1800, 25, None)
    assert platform.monitor.thresholds("churn") == changed
    assert platform.monitor.thresholds("other").psi == 0.2
    with pytest.raises(InvalidArgument, match="Unknown threshold.*'psii'"):
        platform.monitor.set_thresholds("churn", psii=0.3)
    with pytest.raises(InvalidArgument, match="p_value=2"):
        platform.monitor.set_thresholds("churn", p_value=2)
    with pytest.raises(InvalidArgument, match="not a duration"):
        platform.monitor.set_thresholds("churn", window="soon")
    assert platform.monitor.thresholds("churn") == changed


def test_durations():
    assert parse_duration("1h", "window").total_seconds() == 3600
    assert parse_duration(90, "window", seconds=True).total_seconds() == 90
    for bad in ("-1h", "0s", "later", None, 90):
        with pytest.raises(InvalidArgument, match="window=.* is not a duration"):
            parse_duration(bad, "window")


def scraped(platform, family):
    """The samples of one metric family, as ``/metrics`` serves them now."""
    text = exposition(platform.features.online.client, platform.settings.online_prefix)
    return [s for f in text_string_to_metric_families(text) if f.name == family for s in f.samples]


def test_feature_age_is_the_age_of_the_newest_event_served_online(platform, driver, driver_stats):
    from mlplat.streaming import Aggregation, StreamFeatureView

    rides = StreamFeatureView("rides", entities=[driver], aggregations=[Aggregation(None, "count", "1h")],
                              slide="10min", watermark="5min", ttl=None)
    platform.features.apply([driver, driver_stats, rides])
    now = pd.Timestamp.now(tz="UTC")

    def push(age):
        platform.features.push("driver_stats", pd.DataFrame({"driver_id": [1], "event_timestamp": [now - age],
                                                             "rating": [4.5], "trips": [3]}))

    def ages():
        return {s.labels["view"]: s.value - (time.time() - now.timestamp()) for s in
                scraped(platform, "mlplat_feature_age_seconds")}

    push(pd.Timedelta("2h40min"))
    assert ages() == {"driver_stats": pytest.approx(9600, abs=5)}  # however recently it was written
    push(pd.Timedelta("10min"))
    push(pd.Timedelta("5h"))  # an older value, written later, does not make the view look older
    platform.streams.send("rides", [{"driver_id": 1, "event_timestamp": now - pd.Timedelta("20min")}])
    platform.streams.process()
    assert ages() == {"driver_stats": pytest.approx(600, abs=5), "rides": pytest.approx(1200, abs=5)}


def test_the_exporter_serves_metrics_over_http(platform, logger):
    log_requests(logger, 10)
    logger.flush()
    from mlplat.monitoring.monitor_service import MonitorService

    service = MonitorService(platform.settings)
    try:
        with urllib.request.urlopen(service.ensure().url, timeout=5) as response:
            text = response.read().decode()
    finally:
        service.stop()
    assert 'mlplat_predict_requests_total{model="churn",version="3"} 10.0' in text


DRIVER_FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate"]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, demo_platform):
    """A model live on a real Triton, and feature rows like those it was trained on."""
    from mlplat.serving.triton import TritonService, triton_installed

    p = demo_platform(tmp_path_factory.mktemp("monitoring"), drivers=1000, customers=50, days=5, trips=5000, seed=5,
                      profiles=False, clock=SkippingClock())
    if not triton_installed(p.settings):
        pytest.skip(f"no Triton in {p.settings.triton_env}: `make triton` creates it")
    labels = p.labels
    p.train("xgboost.XGBClassifier", features=DRIVER_FEATURES, entity_df=labels, target="completed", name="trips",
            params={"n_estimators": 20}, seed=5)
    p.models.promote("trips")
    p.deploy("trips")
    # New trips from the same drivers in the period the model was tested on (its drift reference's predictions)
    rng = np.random.default_rng(99)
    recent, end = labels["event_timestamp"].quantile(0.8), labels["event_timestamp"].max()
    trips = pd.DataFrame({"driver_id": rng.integers(1, 1001, 3000), "event_timestamp": recent + (end - recent) *
                          rng.random(3000)})
    rows = p.features.get_training_set(trips, DRIVER_FEATURES)[["rating", "acceptance_rate"]]
    yield p, rows.to_numpy(np.float32)
    p.close()
    TritonService(p.settings).stop()


def predict_in_chunks(p, X, chunks=8):
    for chunk in np.array_split(X, chunks):
        p.predict("trips", features=chunk)
    p.serving.log.flush()


def test_a_deployed_model_is_watched_drift_alerts_once(deployed, webhook):
    p, X = deployed
    url, received = webhook
    p.monitor.alerts.webhook = url
    p.monitor.set_thresholds("trips", window="4s", min_rows=300, p99_ms=10_000)
    predict_in_chunks(p, X)
    calm = p.monitor.check("trips")
    assert calm.rows == len(X) and calm.drift is not None, str(calm)
    assert calm.drift.drifted == [] and calm.fired == [] and received == [], calm.drift.table.to_string()  # unchanged data: no false alarm
    assert calm.p99_ms is not None and calm.error_rate == 0.0

    p.clock.skip(4.2)  # a fresh window
    shifted = X.copy()
    shifted[:, 0] += 1.5 * np.nanstd(X[:, 0])
    predict_in_chunks(p, shifted)
    with pytest.raises(Exception, match="takes rows of 2 features"):
        p.predict("trips", features=np.ones((1, 5)))
    p.serving.log.flush()  # the failure's count too, rather than in the logger's next 50 ms round
    drifted = p.monitor.check("trips")
    assert "rating" in drifted.drift.drifted and "acceptance_rate" not in drifted.drift.drifted, str(drifted)
    assert {(a.rule, a.subject) for a in drifted.fired} >= {("drift", "rating"), ("error_rate", "requests")}
    assert len(received) == 1
    again = p.monitor.check("trips")
    assert again.fired == [] and len(received) == 1  # still firing: counted, not re-sent
    rating = [a for a in p.alerts("firing", "trips") if a.subject == "rating"]
    assert len(rating) == 1 and rating[0].checks == 2

    families = {f.name: f for f in text_string_to_metric_families(
        exposition(p.features.online.client, p.settings.online_prefix))}
    psi = {s.labels["column"]: s.value for s in families["mlplat_drift_psi"].samples if s.labels["model"] == "trips"}
    assert psi["rating"] == pytest.approx(float(drifted.drift.table.loc["rating", "psi"]))
    firing = {s.labels["rule"]: s.value for s in families["mlplat_alerts_firing"].samples}
    assert firing["drift"] >= 1


def test_every_failed_prediction_is_counted_by_its_error_class(deployed):
    from mlplat.errors import MlplatError

    p, X = deployed

    def failures():
        p.serving.log.flush()
        return {(s.labels["version"], s.labels["error"]): s.value for s in scraped(p, "mlplat_predict_errors")
                if s.name.endswith("_total") and s.labels["model"] == "trips"}

    before = failures()
    raised = []
    for call in [lambda: p.predict("trips", [{"no_such_key": 1}])] * 3 + [
            lambda: p.predict("trips", features=np.ones((1, 5)))] * 2 + [
            lambda: p.predict("trips", features=X[:1], version="99")]:
        with pytest.raises(MlplatError) as failed:
            call()
        raised.append(type(failed.value).__name__)
    after = failures()
    added = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert added == {("1", raised[0]): 3, ("1", "ServingError"): 2, ("99", "ServingError"): 1}
    assert p.predict("trips", features=X[:2]).outputs.shape == (2, 2) and failures() == after  # success: no error


def test_drift_over_windows_and_its_plot(deployed):
    p, X = deployed
    timeline = p.monitor.drift("trips", window="30s", windows=3)
    assert list(timeline.psi.index) == sorted(timeline.psi.index) and len(timeline.psi) == 3
    html = timeline._repr_html_()
    assert "data:image/png;base64," in html and "Drift:" in html


def test_the_dashboard_queries_metrics_that_exist(deployed):
    import re

    p, X = deployed
    predict_in_chunks(p, X[:100], 2)
    from mlplat.serving.triton import TritonService

    with urllib.request.urlopen(TritonService(p.settings).metrics_url(), timeout=5) as response:
        triton = {f.name for f in text_string_to_metric_families(response.read().decode())}
    ours = {f.name for f in text_string_to_metric_families(exposition(p.features.online.client,
                                                                      p.settings.online_prefix))}
    board = p.monitor.dashboard("trips")
    assert board["uid"] == "mlplat-trips" and len(board["panels"]) >= 8
    exposed = {n for name in ours | triton for n in (name, f"{name}_total", f"{name}_bucket")}
    for panel in board["panels"]:
        for target in panel["targets"]:
            for metric in re.findall(r"\b((?:mlplat|nv)_[a-z_]+)\{", target["expr"]):
                assert metric in exposed, f"{panel['title']}: {metric} is not exposed"
    config = p.monitor.scrape_config()
    assert "job_name: triton" in config and "job_name: mlplat" in config
    from mlplat.monitoring.monitor_service import MonitorService

    MonitorService(p.settings).stop()


def test_the_check_runs_as_a_scheduled_notebook_job(deployed, monkeypatch):
    import nbformat

    from mlplat.jobs.scheduler import Scheduler

    p, X = deployed
    for key in ("home", "online_store", "online_prefix"):  # the job's kernel connects with these
        monkeypatch.setenv(f"MLPLAT_{key.upper()}", str(getattr(p.settings, key)))
    schedule = p.monitor.schedule("trips", cron="*/10 * * * *")
    [listed] = [s for s in p.jobs.schedules() if s.id == schedule]
    assert listed.parameters == {"model": "trips"}
    [job_id] = Scheduler(p.jobs).tick(listed.next_run)  # its first slot, alone (the next is 10 minutes on)
    [run] = [r for r in p.jobs.history() if r.id == job_id]
    assert run.status == "succeeded"
    printed = "".join(o.get("text", "") for c in nbformat.read(run.output, as_version=4).cells
                      for o in c.get("outputs", []))
    assert "trips v1:" in printed
    p.jobs.pause(schedule)
