"""No foreign code in anyone's process: model files are pinned by digest and never unpickled; stored feature
functions are pinned by the sha256 of their source. Tampering is done as a user with write access to the stores
would do it (files in the artifact store, a row in the registry database), with a marker-file side effect that
must never happen."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from mlplat.demo import driver
from mlplat.errors import ArtifactIntegrityError, BrokenDefinition, InvalidArgument
from mlplat.features import Field, udf
from mlplat.features.compute import BatchFeatureView
from mlplat.features.on_demand import OnDemandFeatureView
from mlplat.registry import integrity
from mlplat.registry.tracking import session

FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory, demo_platform):
    p = demo_platform(tmp_path_factory.mktemp("integrity"), drivers=60, customers=20, days=5, trips=800, seed=7,
                      materialize=False)
    yield p
    p.close()


class Payload:
    """What a crafted pickle does when loaded: create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def train(p, name: str):
    rows = p.labels.tail(400)
    return p.train("sklearn.ensemble.RandomForestClassifier", features=FEATURES, entity_df=rows, target="completed",
                   name=name, params={"n_estimators": 5, "max_depth": 3})


def model_folder(p, name: str, version: str) -> Path:
    """Where the artifact store keeps the files of ``name`` ``version`` (a local folder in embedded mode)."""
    with session(p.settings) as client:
        uri = client.get_model_version_download_uri(name, version)
        if uri.startswith("runs:/"):  # a model logged as the run's artifacts: the run's artifact folder
            run_id, _, path = uri.removeprefix("runs:/").partition("/")
            uri = f"{client.get_run(run_id).info.artifact_uri}/{path}"
    assert uri.startswith("file://"), uri
    folder = Path(uri.removeprefix("file://"))
    assert (folder / "MLmodel").is_file()
    return folder


def to_pickle(folder: Path, marker: Path) -> None:
    """Alice's rewrite: the sklearn flavour switched to pickle, with a model.pkl that runs her code."""
    (folder / "model.pkl").write_bytes(pickle.dumps(Payload(marker)))
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    conf["flavors"]["sklearn"].update(serialization_format="pickle", pickled_model="model.pkl")
    conf["flavors"]["sklearn"].pop("skops_trusted_types", None)
    conf["flavors"]["python_function"]["model_path"] = "model.pkl"
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))


def test_registration_pins_the_files_and_an_untampered_version_loads(platform):
    trained = train(platform, "pinned")
    with session(platform.settings) as client:
        tags = client.get_model_version("pinned", trained.version).tags
    files = json.loads(tags[integrity.MANIFEST_TAG])
    assert "MLmodel" in files and "model.skops" in files
    assert tags[integrity.DIGEST_TAG] == integrity.digest(files)
    rows = platform.labels.tail(20)
    scored = platform.models.score("pinned", rows, version=trained.version)
    assert len(scored) == 20 and "prediction" in scored
    assert len(platform.models.load("pinned", trained.version).predict(scored[[]].assign(
        rating=4.0, acceptance_rate=0.5))) == 20


def test_a_model_rewritten_to_pickle_is_refused_everywhere_and_never_unpickled(platform, tmp_path):
    trained = train(platform, "tampered")
    marker = tmp_path / "alice-was-here"
    to_pickle(model_folder(platform, "tampered", trained.version), marker)
    rows = platform.labels.tail(20)
    calls = {"score": lambda: platform.models.score("tampered", rows, version=trained.version),
             "evaluate": lambda: platform.models.evaluate("tampered", rows, version=trained.version),
             "load": lambda: platform.models.load("tampered", trained.version),
             "deploy": lambda: platform.deploy("tampered", trained.version)}
    for what, call in calls.items():
        with pytest.raises(ArtifactIntegrityError, match=rf"Model 'tampered' version {trained.version}: its files "
                                                         r"changed since it was registered \(MLmodel changed; "
                                                         r"model.pkl added\)\. Do not load it") as refused:
            call()
        assert "retrain" in str(refused.value).lower() or "training it again" in str(refused.value), what
        assert not marker.exists(), f"{what} ran the crafted pickle"


def test_a_pickle_flavour_is_refused_even_when_its_pin_was_rewritten_to_match(platform, tmp_path):
    trained = train(platform, "repinned")
    marker = tmp_path / "alice-was-here"
    folder = model_folder(platform, "repinned", trained.version)
    to_pickle(folder, marker)
    with session(platform.settings) as client:  # someone who can also write the registry's tags
        for key, value in integrity.pin_tags(folder).items():
            client.set_model_version_tag("repinned", trained.version, key, value)
    with pytest.raises(ArtifactIntegrityError, match="stored as 'pickle', which runs arbitrary code when loaded"):
        platform.models.load("repinned", trained.version)
    with pytest.raises(ArtifactIntegrityError, match="stored as 'pickle'"):
        platform.models.score("repinned", platform.labels.tail(5), version=trained.version)
    assert not marker.exists()


def test_a_skops_allow_list_naming_foreign_types_is_refused(platform):
    trained = train(platform, "trusting")
    folder = model_folder(platform, "trusting", trained.version)
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    conf["flavors"]["sklearn"]["skops_trusted_types"] = ["sklearn.tree._tree.Tree", "builtins.eval", "os.system"]
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))
    with pytest.raises(ArtifactIntegrityError, match=r"asks skops to trust \['builtins.eval', 'os.system'\]"):
        integrity.check_flavour(folder, "Model 'trusting'")


def test_a_booster_shipping_code_other_than_mlplats_pyfunc_loader_is_refused_and_never_runs(platform, tmp_path):
    trained = platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=platform.labels.tail(400),
                             target="completed", name="shipping", params={"n_estimators": 5})
    folder = model_folder(platform, "shipping", trained.version)
    assert integrity.check_flavour(folder, "Model 'shipping'") == "xgboost"
    marker = tmp_path / "alice-was-here"
    loader = folder / "code" / "mlplat_pyfunc.py"  # what mlflow.pyfunc.load_model imports
    loader.write_text(loader.read_text() + f"\nopen({str(marker)!r}, 'w')\n")
    with session(platform.settings) as client:  # someone who can also write the registry's tags
        for key, value in integrity.pin_tags(folder).items():
            client.set_model_version_tag("shipping", trained.version, key, value)
    with pytest.raises(ArtifactIntegrityError, match="ships code other than mlplat's own pyfunc loader"):
        platform.models.load("shipping", trained.version)
    assert not marker.exists()


def test_a_version_without_a_pin_is_refused_until_an_admin_pins_it(platform):
    trained = train(platform, "legacy")
    with session(platform.settings) as client:  # as a version registered before pins existed
        client.delete_model_version_tag("legacy", trained.version, integrity.DIGEST_TAG)
        client.delete_model_version_tag("legacy", trained.version, integrity.MANIFEST_TAG)
    with pytest.raises(ArtifactIntegrityError, match=rf"no artifact digest.*p.models.pin\('legacy', "
                                                     rf"{trained.version}, reason=...\)"):
        platform.models.load("legacy", trained.version)
    with pytest.raises(InvalidArgument, match="needs a reason"):
        platform.models.pin("legacy", trained.version)
    digest = platform.models.pin("legacy", trained.version, reason="files checked by the admin")
    assert platform.models.load("legacy", trained.version) is not None
    assert platform.models.history("legacy")[-1].action == "pinned"
    assert platform.models.history("legacy")[-1].detail["digest"] == digest
    with pytest.raises(InvalidArgument, match="already pinned"):
        platform.models.pin("legacy", trained.version, reason="again")


def doubled(df):
    return df.assign(rating_x2=df["rating"] * 2)[["rating_x2"]]


def test_a_stored_function_edited_in_the_registry_database_is_refused_and_never_runs(platform, tmp_path):
    view = OnDemandFeatureView("rating_doubled", sources=["driver_stats:rating"],
                               schema=[Field("rating_x2", "float64")], function=doubled)
    platform.features.apply([view])
    stored = platform.features.get_view("rating_doubled")
    assert stored.udf["sha256"] == integrity_hash(stored.udf["source"])
    rows = platform.labels.tail(5)[["driver_id", "event_timestamp"]]
    assert "rating_x2" in platform.features.get_training_set(rows, ["rating_doubled:rating_x2"])
    marker = tmp_path / "mallory-was-here"
    evil = f"def doubled(df):\n    open({str(marker)!r}, 'w')\n    return df.assign(rating_x2=df['rating'] * 2)[['rating_x2']]\n"
    with platform.features.registry.engine.begin() as conn:
        spec = json.loads(conn.execute(sa.text("SELECT spec FROM feature_views WHERE name = 'rating_doubled'")).scalar())
        spec["function"].update(module="__main__", source=evil)  # run from its source, its hash left as it was
        conn.execute(sa.text("UPDATE feature_views SET spec = :s WHERE name = 'rating_doubled'"),
                     {"s": json.dumps(spec)})
    with pytest.raises(BrokenDefinition, match="does not match the sha256 recorded when it was applied"):
        platform.features.get_training_set(rows, ["rating_doubled:rating_x2"])
    with pytest.raises(BrokenDefinition, match="does not match the sha256"):
        platform.features.get_view("rating_doubled")
    assert not marker.exists()
    # applying the definition again from its file repairs it, as a new version
    platform.features.apply([view])
    assert "rating_x2" in platform.features.get_training_set(rows, ["rating_doubled:rating_x2"])
    assert not marker.exists()


def test_a_stored_function_recorded_before_hashes_loads_and_gets_its_hash_on_the_next_apply(platform):
    view = OnDemandFeatureView("rating_legacy", sources=["driver_stats:rating"],
                               schema=[Field("rating_x2", "float64")], function=doubled)
    platform.features.apply([view])
    with platform.features.registry.engine.begin() as conn:
        spec = json.loads(conn.execute(sa.text("SELECT spec FROM feature_views WHERE name = 'rating_legacy'")).scalar())
        del spec["function"]["sha256"]
        conn.execute(sa.text("UPDATE feature_views SET spec = :s WHERE name = 'rating_legacy'"), {"s": json.dumps(spec)})
    rows = platform.labels.tail(5)[["driver_id", "event_timestamp"]]
    assert "sha256" not in platform.features.get_view("rating_legacy").udf
    assert "rating_x2" in platform.features.get_training_set(rows, ["rating_legacy:rating_x2"])
    [result] = platform.features.apply([view])
    assert (result.action, result.version) == ("updated", 1)  # recorded in place: not a new version
    assert platform.features.get_view("rating_legacy").udf["sha256"] == integrity_hash(view.udf["source"])


def integrity_hash(source: str) -> str:
    import hashlib

    return hashlib.sha256(source.encode()).hexdigest()


def daily(trips, start, end):
    out = trips.groupby("driver_id", as_index=False).agg(trips=("fare", "size"))
    return out.assign(event_timestamp=end - pd.Timedelta(1, "us"))


def test_a_batch_transformation_edited_in_the_registry_database_is_refused_and_never_runs(platform, tmp_path):
    day = pd.Timestamp("2024-03-01", tz="UTC")
    source = tmp_path / "trips.parquet"
    pd.DataFrame({"driver_id": [1, 1, 2], "fare": [10.0, 5.0, 7.0],
                  "pickup_at": [day + pd.Timedelta(hours=h) for h in (1, 2, 3)]}).to_parquet(source)
    view = BatchFeatureView("driver_daily_pinned", entities=[driver],
                            schema=[Field("trips", "int64")], transformation=daily, sources=str(source),
                            source_timestamp_field="pickup_at")
    platform.features.apply([view])
    marker = tmp_path / "mallory-was-here"
    evil = f"def daily(trips, start, end):\n    open({str(marker)!r}, 'w')\n    return trips\n"
    with platform.features.registry.engine.begin() as conn:
        name = "driver_daily_pinned"
        spec = json.loads(conn.execute(sa.text("SELECT spec FROM feature_views WHERE name = :n"), {"n": name}).scalar())
        spec["transformation"]["python"].update(module="__main__", source=evil)
        conn.execute(sa.text("UPDATE feature_views SET spec = :s WHERE name = :n"), {"s": json.dumps(spec), "n": name})
    with pytest.raises(BrokenDefinition, match="does not match the sha256 recorded when it was applied"):
        platform.features.compute(name, "2024-03-01", "2024-03-02", progress=False)
    assert not marker.exists()


def test_a_stored_function_sent_to_another_process_checks_its_hash_before_it_runs(tmp_path):
    marker = tmp_path / "mallory-was-here"
    honest = "def f(df):\n    return df\n"
    evil = f"def f(df):\n    open({str(marker)!r}, 'w')\n    return df\n"
    record = {"module": "__main__", "name": "f", "source": evil, "sha256": udf.source_hash(honest)}
    stored = pickle.loads(pickle.dumps(udf.StoredFunction(record, "feature view 'v' v1: transformation")))
    with pytest.raises(BrokenDefinition, match="feature view 'v' v1: transformation f: its stored source does not "
                                               "match the sha256"):
        stored(pd.DataFrame())
    with pytest.raises(BrokenDefinition):
        udf.load(record)
    assert not marker.exists()
    assert udf.StoredFunction({**record, "source": honest}, "v")(pd.DataFrame({"a": [1]})).shape == (1, 1)
