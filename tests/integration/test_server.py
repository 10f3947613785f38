"""Server mode: a real ``mlplat server`` on real stores, called through the SDK by users of different teams.

alice edits team a, bob edits team b, carol views team b, root administers the platform. Each check is what a
user relies on: another team's objects cannot be changed, the owning team's editors can, admins can, viewers
read, the audit trail names the authenticated user, a missing or wrong token gets nowhere.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import timedelta

import httpx
import nbformat
import pandas as pd
import pytest
from servers import running_server

from mlplat.errors import (
    ConfigError,
    EntityDataFrameError,
    FeatureNotFound,
    InvalidArgument,
    NotAuthenticated,
    PermissionDenied,
)
from mlplat.features import Entity, FeatureView, Field, OnDemandFeatureView
from mlplat.identity import Identity, acting_as
from mlplat.remote import protocol
from mlplat.remote.client import ServerClient
from mlplat.remote.platform import ServerModePlatform
from mlplat.server.authentication import LocalAuthenticator

PEOPLE = {"alice-token": Identity("alice", {"a": "editor"}), "bob-token": Identity("bob", {"b": "editor"}),
          "carol-token": Identity("carol", {"b": "viewer"}), "root-token": Identity("root", admin=True)}
BOB = PEOPLE["bob-token"]
FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate"]


@pytest.fixture(scope="module")
def backend(tmp_path_factory, demo_platform):
    """The server's own platform (the demo's features), and bob's model "bobs" trained and registered in team b."""
    p = demo_platform(tmp_path_factory.mktemp("server"), drivers=40, customers=10, days=4, trips=600, seed=5)
    with acting_as(BOB):
        p.train("sklearn.linear_model.LogisticRegression", features=FEATURES, entity_df=p.labels.iloc[300:],
                target="completed", name="bobs")
    yield p
    p.close()


@pytest.fixture(scope="module")
def url(backend):
    with running_server(backend, LocalAuthenticator(PEOPLE)) as url:
        yield url


@pytest.fixture(scope="module")
def connect(backend, url):
    """``connect("alice")``: alice's SDK in server mode, on the server's online store (``settings`` override)."""
    opened = []

    def connect(who: str, **settings) -> ServerModePlatform:
        shared = {"home": str(backend.settings.home), "online_store": backend.settings.online_store,
                  "online_prefix": backend.settings.online_prefix}
        p = ServerModePlatform.open(token=f"{who}-token", server_url=url, **{**shared, **settings})
        opened.append(p)
        return p

    with pytest.MonkeyPatch.context() as env:  # connect() points MLflow's variables at the server: undo that
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"):
            env.setenv(name, "")
            env.delenv(name)
        yield connect
    for p in opened:
        p.close()


@pytest.fixture(scope="module")
def bobs_view(connect):
    """bob's entity and feature view, made through the server: team b."""
    rider = Entity("rider", join_keys=["rider_id"])
    view = FeatureView("rider_stats", entities=[rider], ttl=timedelta(days=1), schema=[Field("spend", "float64")])
    connect("bob").features.apply([rider, view])
    return view


def refused(call, action: str, kind: str, obj: str, team: str, role: str = "editor") -> PermissionDenied:
    with pytest.raises(PermissionDenied) as caught:
        call()
    error = caught.value
    assert (error.action, error.kind, error.obj, error.team, error.role) == (action, kind, obj, team, role)
    assert f"{obj!r}" in str(error) and f"team {team!r}" in str(error) and role in str(error)
    return error


def test_the_server_says_who_you_are_and_your_team_owns_what_you_make(connect, bobs_view):
    bob = connect("bob")
    assert (bob.settings.user, bob.settings.team) == ("bob", "b")
    view = bob.features.get_view("rider_stats")
    assert (view.owner, view.team) == ("bob", "b")
    assert {e.name: e.team for e in bob.features.registry.list_entities()}["rider"] == "b"
    assert bob.models.team("bobs") == "b"


def test_another_team_cannot_change_bobs_view_but_bob_and_an_admin_can(connect, bobs_view):
    alice, bob, root = connect("alice"), connect("bob"), connect("root")
    longer = dataclasses.replace(bobs_view, ttl=timedelta(days=3))
    error = refused(lambda: alice.features.apply([longer]), "change", "feature_view", "rider_stats", "b")
    assert "alice is not a member" in str(error)
    refused(lambda: alice.features.push("rider_stats", _rows()), "push to", "feature_view", "rider_stats", "b")
    refused(lambda: alice.features.ingest("rider_stats", _rows()), "ingest into", "feature_view", "rider_stats", "b")
    refused(lambda: alice.features.materialize(views=["rider_stats"]), "materialize", "feature_view",
            "rider_stats", "b")
    refused(lambda: alice.features.schedule_compute("rider_stats", "0 * * * *"), "schedule computing",
            "feature_view", "rider_stats", "b")
    with pytest.raises(InvalidArgument, match="computed by its schedule"):
        bob.features.compute("rider_stats")  # user code runs in jobs, never in the server's process
    assert alice.features.get_view("rider_stats").ttl == timedelta(days=1)  # nothing changed

    assert bob.features.ingest("rider_stats", _rows()).rows == 2
    assert bob.features.apply([longer])[0].action == "updated"
    assert root.features.apply([dataclasses.replace(bobs_view, ttl=timedelta(days=2))])[0].action == "updated"
    assert bob.features.get_view("rider_stats").ttl == timedelta(days=2)


def test_a_viewer_reads_but_cannot_write(connect, bobs_view):
    carol = connect("carol")
    assert carol.features.get_view("rider_stats").team == "b"
    assert [v.version for v in carol.models.versions("bobs")]
    error = refused(lambda: carol.features.push("rider_stats", _rows()), "push to", "feature_view",
                    "rider_stats", "b")
    assert "carol is a viewer" in str(error)


def test_nobody_changes_ownership_without_owner_rights(connect, bobs_view):
    bob, root = connect("bob"), connect("root")
    refused(lambda: bob.models.transfer("bobs", "a"), "transfer", "model", "bobs", "b", role="owner")
    refused(lambda: bob.features.apply([dataclasses.replace(bobs_view, team="a")]), "transfer", "feature_view",
            "rider_stats", "b", role="owner")
    root.models.transfer("bobs", "a")
    assert bob.models.team("bobs") == "a"
    root.models.transfer("bobs", "b")


def test_another_team_cannot_promote_archive_or_deploy_bobs_model(connect, backend):
    alice, bob = connect("alice"), connect("bob")
    version = bob.models.get("bobs", alias="challenger").version
    refused(lambda: alice.models.promote("bobs", force=True, reason="mine now"), "promote", "model", "bobs", "b")
    refused(lambda: alice.models.archive("bobs", version), "archive", "model", "bobs", "b")
    refused(lambda: alice.deploy("bobs", version), "deploy", "model", "bobs", "b")
    refused(lambda: alice.monitor.set_thresholds("bobs", p99_ms=1.0), "change the thresholds of",
            "model", "bobs", "b")
    assert bob.models.promote("bobs", force=True, reason="first champion").version == version
    assert bob.monitor.set_thresholds("bobs", p99_ms=50.0).p99_ms == 50.0
    assert [e.who for e in bob.audit.entries(kind="model", obj="bobs", action="promoted")] == ["bob"]


def test_only_a_platform_admin_pins_a_model_versions_files(connect):
    bob, root = connect("bob"), connect("root")
    version = bob.models.versions("bobs")[0].version
    with pytest.raises(PermissionDenied, match="bob may not pin the files of model 'bobs': only a platform admin"
                       ) as caught:
        bob.models.pin("bobs", version, reason="trust me")  # its own team may not vouch for its files
    assert (caught.value.action, caught.value.role) == ("pin the files of", "admin")
    with pytest.raises(InvalidArgument, match="already pinned"):  # registered through the server: pinned then
        root.models.pin("bobs", version, reason="checked")
    run_id = bob.models.get("bobs", version).run_id
    with pytest.raises(PermissionDenied, match="serves models as ONNX only"):  # its author's code on the server
        bob.models.register("bobs", f"runs:/{run_id}/model", run_id, [], "", recorded=True, runtime="pyfunc")
    with pytest.raises(InvalidArgument, match="server mode does not take logged models"):
        bob.models.log(object(), "bobs", features=[], entity_df=None, target="y")


def test_another_team_cannot_pause_bobs_schedule(connect, tmp_path):
    notebook = tmp_path / "report.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), notebook)
    alice, bob, root = connect("alice"), connect("bob"), connect("root")
    schedule = bob.jobs.schedule(str(notebook), "0 6 * * *")
    assert {s.id: s.team for s in alice.jobs.schedules()}[schedule] == "b"
    refused(lambda: alice.jobs.pause(schedule), "pause", "schedule", str(schedule), "b")
    refused(lambda: alice.jobs.unschedule(schedule), "unschedule", "schedule", str(schedule), "b")
    bob.jobs.pause(schedule)
    root.jobs.resume(schedule)
    assert {s.id: s.enabled for s in bob.jobs.schedules()}[schedule]


def test_the_audit_names_the_authenticated_user_whatever_the_client_claims(connect, monkeypatch):
    monkeypatch.setenv("MLPLAT_USER", "bob")
    monkeypatch.setenv("MLPLAT_TEAM", "b")
    alice = connect("alice")
    assert (alice.settings.user, alice.settings.team) == ("alice", "a")
    alices = Entity("shop", join_keys=["shop_id"])
    alice.features.apply([alices])
    entry = alice.audit.entries(kind="entity", obj="shop")[-1]
    assert (entry.who, entry.team) == ("alice", "a")
    with pytest.raises(InvalidArgument, match="written by the platform server"):
        alice.audit.record("model", "bobs", "promoted")
    refused(lambda: alice.audit.record("model", "bobs", "trained"), "record training of", "model", "bobs", "b")


def test_calls_outside_the_table_are_refused(connect, url):
    alice = connect("alice")
    body = protocol.encode({"args": [[Entity("x", join_keys=["x_id"])]], "kwargs": {}})
    for name in ("features.registry.apply", "features.registry.set_watermark", "platform.engine", "models._client",
                 "features.get_training_set"):  # the server joins stored views; on-demand functions run in workspaces
        answer = httpx.post(f"{url}/api/v1/call/{name}", content=body,
                            headers={"Authorization": "token alice-token"})
        assert answer.status_code == 400 and "not something the platform server does" in answer.json()["message"]
    with pytest.raises(InvalidArgument, match="not something"):
        alice.server.call("features.registry.apply", [Entity("x", join_keys=["x_id"])])


def test_no_token_or_a_wrong_one_gets_nothing(url, backend):
    for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": "Basic YWxpY2U6eA=="}):
        answer = httpx.post(f"{url}/api/v1/call/features.list_views", headers=headers,
                            content=protocol.encode({"args": [], "kwargs": {}}))
        assert answer.status_code == 401 and answer.json()["error"] == "NotAuthenticated"
        assert httpx.get(f"{url}/api/v1/whoami", headers=headers).status_code == 401
    with pytest.raises(NotAuthenticated, match="Unknown token"):
        ServerModePlatform.open(token="wrong", server_url=url, home=str(backend.settings.home))


def test_garbage_is_refused_and_the_server_goes_on(url):
    for body in (b"", b"\x00" * 3, b"\x00\x00\x00\x00\x00\x00\x00\x05[1,2", json.dumps({"args": []}).encode(),
                 _raw({"args": [{"$object": "os:system", "fields": {"command": "touch /tmp/owned"}}]}),
                 _raw({"args": [{"$frame": 7}]}), _raw({"args": [{"$view": {"name": 1}}]})):
        answer = httpx.post(f"{url}/api/v1/call/features.list_views", content=body,
                            headers={"Authorization": "token alice-token"})
        assert answer.status_code == 400, body
    for name, args in (("features.apply", [[{"name": "x"}]]), ("models.promote", [["bobs"]]),
                       ("jobs.pause", [{"id": 1}]), ("features.push", [None, None])):
        answer = httpx.post(f"{url}/api/v1/call/{name}", content=protocol.encode({"args": args, "kwargs": {}}),
                            headers={"Authorization": "token alice-token"})
        assert answer.status_code == 400, (name, answer.text)
    assert httpx.get(f"{url}/api/v1/health").json() == {"status": "ok"}


def _raw(head) -> bytes:
    data = json.dumps(head).encode()
    return len(data).to_bytes(8, "big") + data


def _rows():
    import pandas as pd

    return pd.DataFrame({"rider_id": [1, 2], "spend": [3.5, 4.0],
                         "event_timestamp": pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(hours=1)})


def test_bob_deploys_everyone_predicts_only_bob_undeploys(connect, backend):
    from mlplat.serving.triton import TritonService, triton_installed

    if not triton_installed(backend.settings):
        pytest.skip("no Triton: `make triton` creates it")
    alice, bob = connect("alice"), connect("bob")
    try:
        deployment = bob.deploy("bobs", bob.models.versions("bobs")[0].version)
        assert deployment.status == "READY"
        rows = [{"driver_id": 1}, {"driver_id": 2}]
        served = alice.predict("bobs", rows)  # features read straight from Redis, the model over gRPC
        assert served.outputs.shape[0] == 2
        assert (served.outputs == backend.predict("bobs", rows).outputs).all()
        refused(lambda: alice.undeploy("bobs"), "undeploy", "model", "bobs", "b")
        bob.undeploy("bobs")
        assert "bobs" not in [d.name for d in alice.deployments()]
    finally:
        TritonService(backend.settings).stop()


def test_what_a_team_keeps_private_only_its_members_and_admins_see(connect, bobs_view):
    alice, bob, carol, root = connect("alice"), connect("bob"), connect("carol"), connect("root")
    rider = Entity("rider", join_keys=["rider_id"])
    secret = FeatureView("rider_secret", entities=[rider], schema=[Field("score", "float64")], private=True)
    bob.features.apply([secret])
    for member in (bob, carol, root):
        assert "rider_secret" in [v.name for v in member.features.list_views()]
        assert member.features.get_view("rider_secret").private
    assert "rider_secret" not in [v.name for v in alice.features.list_views()]
    assert "rider_secret" not in alice.features.registry.view_names()
    refused(lambda: alice.features.get_view("rider_secret"), "read", "feature_view", "rider_secret", "b",
            role="viewer")
    assert not [e for e in alice.audit.entries() if e.object == "rider_secret"]
    assert [e.who for e in carol.audit.entries(obj="rider_secret")] == ["bob"]

    refused(lambda: alice.models.set_private("bobs"), "change who may see", "model", "bobs", "b")
    bob.models.set_private("bobs")
    try:
        assert "bobs" not in [m["name"] for m in alice.models.list()]
        refused(lambda: alice.models.versions("bobs"), "read", "model", "bobs", "b", role="viewer")
        assert carol.models.versions("bobs") and "bobs" in [m["name"] for m in root.models.list()]
    finally:
        bob.models.set_private("bobs", False)
    assert alice.models.versions("bobs")


def test_a_training_set_through_the_server_is_the_embedded_one(connect, backend):
    refs = [*FEATURES, "customer_profile:membership", "customer_profile:is_verified",
            "customer_profile:lifetime_trips"]
    labels = backend.labels.iloc[:400]
    expected = backend.features.get_training_set(labels, refs)
    pd.testing.assert_frame_equal(connect("alice").features.get_training_set(labels, refs), expected)


def test_a_workspace_that_cannot_reach_the_offline_store_still_gets_training_sets(connect, backend, tmp_path):
    nowhere = tmp_path / "no-offline-store"
    alice = connect("alice", offline_store=nowhere.as_uri())
    labels = backend.labels.iloc[:100]
    pd.testing.assert_frame_equal(alice.features.get_training_set(labels, FEATURES),
                                  backend.features.get_training_set(labels, FEATURES))
    assert alice.features.stats("driver_stats").rows and alice.features.freshness("driver_stats").latest_event
    assert alice.features.get_online_features(FEATURES, {"driver_id": [labels.driver_id.iloc[0]]}).to_dict()
    with pytest.raises(ConfigError, match="offline store belongs to the platform server"):
        alice.features.offline.files(backend.features.get_view("driver_stats"))
    assert not nowhere.exists()


def test_streams_go_through_the_server_and_only_the_views_team_sends_events(connect, backend):
    from mlplat.streaming import Aggregation, StreamFeatureView
    from mlplat.streaming.consumer import errors_key

    alice, bob, carol = connect("alice"), connect("bob"), connect("carol")
    rider = Entity("rider", join_keys=["rider_id"])
    bob.features.apply([rider, StreamFeatureView("rider_trips", entities=[rider], ttl=None,
                                                 aggregations=[Aggregation("fare", "sum", "1h")])])
    now = pd.Timestamp.now(tz="UTC").floor("s")
    sent = bob.streams.send("rider_trips", [{"rider_id": 1, "event_timestamp": now, "fare": 2.5},
                                            {"rider_id": 2, "event_timestamp": now, "fare": 1.0}])
    assert len(sent) == 2 and bob.streams.lag("rider_trips")["waiting"] == 2
    for who in (alice, carol):  # another team; a viewer of bob's
        refused(lambda who=who: who.streams.send("rider_trips", [{"rider_id": 1, "event_timestamp": now,
                                                                   "fare": 99.0}]),
                "send events to", "feature_view", "rider_trips", "b")
    assert carol.streams.lag("rider_trips")["waiting"] == 2 and carol.streams.dead_letters("rider_trips").empty
    with pytest.raises(InvalidArgument, match="stream service"):
        bob.streams.process()
    assert backend.streams.process(["rider_trips"])  # what the platform's `mlplat stream` does
    online = bob.features.get_online_features(["rider_trips:fare_sum_1h"], {"rider_id": [1, 2]}).to_dict()
    assert online["fare_sum_1h"] == [2.5, 1.0]

    bob.features.apply([StreamFeatureView("rider_secrets", entities=[rider], ttl=None, private=True,
                                          aggregations=[Aggregation("fare", "sum", "1h")])])
    failing = {"error": "WRONGTYPE", "since": time.time(), "last": time.time(), "attempts": 1}
    for view in ("rider_trips", "rider_secrets"):  # as a failing consumer records them
        backend.online.client.hset(errors_key(backend.settings.online_prefix), f"{view}\x1fc1", json.dumps(failing))
    assert list(alice.streams.errors().view) == ["rider_trips"]  # not the private view's
    assert list(carol.streams.errors().view) == ["rider_secrets", "rider_trips"]


def test_the_servers_join_refuses_reads_it_cannot_check(connect, backend):
    alice, labels = connect("alice"), backend.labels.iloc[:5]
    for reads, error in (([("driver_stats", 1, ["nope"], ["nope"])], FeatureNotFound),
                         ([("driver_stats", 1, ["rating"], [])], InvalidArgument),
                         ([{"view": "driver_stats"}], InvalidArgument), ("driver_stats", InvalidArgument),
                         ([("driver_stats", 1, ["rating"], ["driver_id"])], EntityDataFrameError)):
        with pytest.raises(error):
            alice.server.call("features.join", labels, reads)
    joined = alice.server.call("features.join", labels, [("driver_stats", 1, ["rating"], ["r"])])  # an Arrow table
    expected = backend.features.get_training_set(labels, ["driver_stats@1:rating"]).rating
    pd.testing.assert_series_equal(joined.to_pandas()["r"], expected.rename("r").reset_index(drop=True))


def doubled(df):
    return pd.DataFrame({"bonus_x2": df["bonus"] * 2})


def test_a_private_views_rows_are_read_by_its_team_alone(connect, backend):
    alice, bob, carol, root = connect("alice"), connect("bob"), connect("carol"), connect("root")
    driver = next(e for e in backend.features.registry.list_entities() if e.name == "driver")
    hidden = FeatureView("driver_secret", entities=[driver], ttl=timedelta(days=30), schema=[Field("bonus", "float64")],
                         private=True)
    bob.features.apply([hidden])
    labels = backend.labels.iloc[:50]
    rows = labels[["driver_id", "event_timestamp"]].drop_duplicates("driver_id").assign(bonus=1.5)
    rows["event_timestamp"] -= timedelta(hours=1)
    bob.features.ingest("driver_secret", rows)
    for who in (alice, bob):  # the public views stay open to everyone
        assert who.features.get_training_set(labels, FEATURES).shape == (50, labels.shape[1] + 2)
    bob.features.apply([OnDemandFeatureView("secret_doubled", sources=["driver_secret:bonus"], function=doubled,
                                            schema=[Field("bonus_x2", "float64")])])  # public, reading a private view
    for member in (bob, carol, root):
        assert (member.features.get_training_set(labels, ["driver_secret:bonus"]).bonus == 1.5).all()
        assert (member.features.get_training_set(labels, ["secret_doubled:bonus_x2"]).bonus_x2 == 3.0).all()
    for refs in (["driver_secret:bonus"], [*FEATURES, "driver_secret@1:*"], ["secret_doubled:bonus_x2"]):
        refused(lambda refs=refs: alice.features.get_training_set(labels, refs), "read", "feature_view", "driver_secret",
                "b", role="viewer")
    refused(lambda: alice.features.key_kinds("driver_secret"), "read", "feature_view", "driver_secret", "b",
            role="viewer")


def test_an_empty_token_is_refused_as_one(url):
    with pytest.raises(NotAuthenticated, match="No token|Unknown token"):
        ServerClient(url, "").whoami()
