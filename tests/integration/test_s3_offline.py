"""The offline store on S3-compatible storage, through pyarrow's S3 filesystem.

No S3 server can be installed here from PyPI or Debian, so moto's S3 server
stands in for it: a real HTTP endpoint speaking the S3 protocol, which
pyarrow's own S3 client talks to exactly as it would to MinIO or AWS.
"""

import logging
import uuid

import boto3
import numpy as np
import pandas as pd
import pytest

import mlplat
from mlplat.services import free_port

NOW = pd.Timestamp.now(tz="UTC").floor("s")


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_platform(s3_endpoint, tmp_path, redis_url, driver, driver_stats):
    bucket = f"features-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}", aws_access_key_id="key",
                          aws_secret_access_key="secret", region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    url = f"s3://key:secret@{bucket}/offline?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    p = mlplat.connect(home=str(tmp_path / "h"), online_store=redis_url, offline_store=url,
                       online_prefix=uuid.uuid4().hex[:8])
    p.features.apply([driver, driver_stats])
    yield p, client, bucket
    p.close()


def objects(client, bucket):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])
                  if o["Key"].endswith(".parquet") or ".tmp" in o["Key"])


def test_ingest_join_and_materialise_on_s3(s3_platform):
    p, client, bucket = s3_platform
    df = pd.DataFrame({"driver_id": [1, 1, 2], "rating": [4.0, 4.5, 3.0], "trips": [1, 2, 3],
                       "event_timestamp": [NOW - pd.Timedelta(days=1), NOW - pd.Timedelta(hours=1), NOW]})
    p.features.ingest("driver_stats", df)
    days = sorted({f"date={t:%Y-%m-%d}" for t in df["event_timestamp"]})
    assert [key.split("/")[3] for key in objects(client, bucket)] == days  # one object per date, no temporaries
    query = pd.DataFrame({"driver_id": [1, 1, 2, 3], "event_timestamp": [NOW - pd.Timedelta(hours=2), NOW, NOW, NOW]})
    result = p.features.get_training_set(query, ["driver_stats:rating"])
    assert result["rating"].tolist()[:3] == [4.0, 4.5, 3.0] and np.isnan(result["rating"].iloc[3])
    (materialized,) = p.features.materialize()
    assert materialized.entities == 2
    assert p.features.get_online_features(["driver_stats:trips"], {"driver_id": [1, 2]}).to_dict()["trips"] == [2, 3]


def test_a_failed_ingest_leaves_no_objects(s3_platform, monkeypatch):
    import mlplat.features.offline as offline

    p, client, bucket = s3_platform
    real_write, calls = offline.pq.write_table, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("connection reset")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(offline.pq, "write_table", fail_second)
    df = pd.DataFrame({"driver_id": [1, 2], "rating": [4.0, 3.0], "trips": [1, 2],
                       "event_timestamp": [NOW - pd.Timedelta(days=1), NOW]})
    with pytest.raises(OSError, match="connection reset"):
        p.features.ingest("driver_stats", df)
    assert objects(client, bucket) == []
