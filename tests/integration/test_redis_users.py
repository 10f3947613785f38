"""The embedded Redis's ACL users: nobody gets in without a password, and each role does what it needs only."""

import shutil
import subprocess
from datetime import timedelta

import httpx
import numpy as np
import pandas as pd
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import running_server

import mlplat
from mlplat import services
from mlplat.config import load_settings
from mlplat.errors import OnlineStoreUnavailable
from mlplat.features import Entity, FeatureView, Field
from mlplat.features.online import RedisOnlineStore
from mlplat.features.redis_service import RedisService, online_store_url
from mlplat.identity import Identity
from mlplat.remote.platform import ServerModePlatform
from mlplat.server.authentication import LocalAuthenticator

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
ONLINE_KEY = "mlp:drivers:1:42"


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    settings = load_settings(home=str(tmp_path_factory.mktemp("acl") / "home"))
    RedisService(settings).ensure()
    redis.Redis.from_url(online_store_url(settings, "admin")).set(ONLINE_KEY, b"served value")
    yield settings
    services.down(settings)


def as_role(settings, role: str) -> redis.Redis:
    return redis.Redis.from_url(online_store_url(settings, role))


def refused(call) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_nobody_gets_in_without_a_password(settings):
    port = RedisService(settings).status().port
    once = Retry(NoBackoff(), 0)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, retry=once).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, username="mlplat-reader", password="guessed", retry=once).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="guessed", retry=once).ping()
    guessed = RedisOnlineStore(f"redis://mlplat-reader:guessed@127.0.0.1:{port}/0")
    with pytest.raises(OnlineStoreUnavailable, match=r"redis://mlplat-reader:\*\*\*@127.0.0.1:\d+/0 refused the login"):
        guessed.mget(["mlp:drivers:1:42"])


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux's setpriv")
def test_another_local_account_can_neither_log_in_nor_read_the_passwords(settings):
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        pytest.skip("dropping to another account needs root")
    port = RedisService(settings).status().port
    # Plain bash over /dev/tcp: the venv's python may not be executable by another account.
    attempt = subprocess.run([*NOBODY, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}; "
                              f"printf 'SET {ONLINE_KEY} forged\\r\\nCONFIG SET appendfsync no\\r\\nQUIT\\r\\n' >&3; "
                              "timeout 5 cat <&3"], capture_output=True, text=True)
    assert attempt.stdout.count("-NOAUTH") == 2, attempt
    assert as_role(settings, "admin").get(ONLINE_KEY) == b"served value"
    for private in ("redis-users/admin", "redis-users/reader", "redis.acl"):
        assert (settings.run_dir / private).stat().st_mode & 0o777 == 0o600
        assert subprocess.run([*NOBODY, "cat", str(settings.run_dir / private)], capture_output=True).returncode


def test_the_reader_reads_online_features_and_logs_predictions_only(settings):
    reader = as_role(settings, "reader")
    assert reader.mget([ONLINE_KEY, "mlp:drivers:1:7"]) == [b"served value", None]
    assert reader.xadd("mlp:predictions", {"m": "churn"})  # p.predict's log and counters
    assert reader.hincrby("mlp:metrics:churn:1", "count", 1) == 1
    for write in (lambda: reader.set(ONLINE_KEY, b"forged"), lambda: reader.delete(ONLINE_KEY),
                  lambda: reader.hset("mlp:drivers:1:43", "x", 1), lambda: reader.xadd("mlp:events:trips", {"a": 1}),
                  lambda: reader.config_set("appendfsync", "no"), lambda: reader.flushall(),
                  lambda: reader.keys("*"), lambda: reader.get("other-install:key")):
        assert refused(write)
    assert as_role(settings, "admin").get(ONLINE_KEY) == b"served value"


def test_a_producer_only_appends_events(settings):
    producer = as_role(settings, "producer")
    assert producer.xadd("mlp:events:trips", {"driver": 42})
    for other in (lambda: producer.get(ONLINE_KEY), lambda: producer.xadd("mlp:predictions", {"m": "x"}),
                  lambda: producer.xrange("mlp:events:trips"), lambda: producer.delete("mlp:events:trips")):
        assert refused(other)


def test_the_consumer_and_the_monitor_have_what_their_services_need_and_no_admin_commands(settings):
    consumer, monitor, admin = as_role(settings, "consumer"), as_role(settings, "monitor"), as_role(settings, "admin")
    assert consumer.set("mlp:drivers:1:44", b"fresh") and consumer.xadd("mlp:events:trips:dead", {"e": "bad"})
    assert monitor.hset("mlp:drift:churn", "psi", 0.1) == 1 and monitor.hgetall("mlp:metrics:churn:1")
    assert refused(lambda: monitor.set(ONLINE_KEY, b"forged"))
    for role in (consumer, monitor):
        for admin_only in (lambda r=role: r.config_set("appendfsync", "no"), lambda r=role: r.flushall(),
                           lambda r=role: r.execute_command("BGREWRITEAOF"),
                           lambda r=role: r.execute_command("SHUTDOWN"), lambda r=role: r.acl_list()):
            assert refused(admin_only)
    assert admin.config_set("appendfsync", "everysec") and admin.ping()


@pytest.fixture(scope="module")
def riders(settings):
    """The install's own platform (its admin), with a feature view materialised in the embedded Redis."""
    with mlplat.connect(home=str(settings.home)) as p:
        rider = Entity("rider", ["rider_id"])
        p.features.apply([rider, FeatureView("riders", [rider], ttl=timedelta(days=365),
                                             schema=[Field("score", "float64")])])
        now = pd.Timestamp.now(tz="UTC")
        p.features.ingest("riders", pd.DataFrame({"rider_id": [1, 2], "score": [0.5, 0.25],
                                                 "event_timestamp": [now, now]}))
        p.features.materialize(views=["riders"])  # WATCH/MULTI/EXEC transactions, as every online write
        yield p


def test_transactions_survive_a_restart(settings, riders):
    """Redis replays its append-only file as its default user: the admin's WATCH/MULTI/EXEC writes come back."""
    services.down(settings)
    services.up(settings, only=("redis",))
    online = riders.features.get_online_features(["riders:score"], {"rider_id": [1, 2]}).to_dict()
    assert np.allclose(online["score"], [0.5, 0.25])


def test_a_workspace_reads_as_the_reader_the_server_hands_it(riders, tmp_path, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"):  # open() points them at the server: undone after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    people = {"alice-token": Identity("alice", {"a": "editor"})}
    with running_server(riders, LocalAuthenticator(people)) as url:
        assert httpx.get(f"{url}/api/v1/online-store").status_code == 401
        with ServerModePlatform.open(token="alice-token", server_url=url, home=str(tmp_path / "alice")) as alice:
            online = alice.features.get_online_features(["riders:score"], {"rider_id": [2]}).to_dict()
            assert np.allclose(online["score"], [0.25])
            assert alice.online.client.connection_pool.connection_kwargs["username"] == "mlplat-reader"
            assert refused(lambda: alice.online.client.set("mlp:riders:1:2", b"forged"))


def test_a_server_on_an_external_redis_hands_out_only_a_configured_reader(redis_url, tmp_path):
    people = {"alice-token": Identity("alice", {"a": "editor"})}
    with mlplat.connect(home=str(tmp_path / "server"), online_store=redis_url) as server, \
            running_server(server, LocalAuthenticator(people)) as url:
        answer = httpx.get(f"{url}/api/v1/online-store", headers={"Authorization": "token alice-token"})
        assert answer.status_code == 400 and "online_reader" in answer.json()["message"]
        assert redis_url.split("@")[0] not in answer.text  # never the admin's credentials
