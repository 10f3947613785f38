"""The model registry: challenger/champion, promotion on a shared holdout, rollback, archive, audit, lineage."""

import pytest

from mlplat.errors import InvalidArgument, ModelNotFound, PromotionRefused

STRONG = ["driver_stats:rating", "driver_stats:acceptance_rate"]
WEAK = ["customer_profile:avg_fare"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory, demo_platform):
    p = demo_platform(tmp_path_factory.mktemp("models"), drivers=150, customers=100, days=10, trips=3000, seed=5,
                      materialize=False, user="ana")
    yield p
    p.close()


def train(p, name, features, estimator="xgboost.XGBClassifier"):
    return p.train(estimator, features=features, entity_df=p.labels, target="completed", name=name,
                   params={"n_estimators": 30, "max_depth": 3})


def test_new_versions_are_challengers_and_the_first_promotion_needs_no_comparison(platform):
    first = train(platform, "first", STRONG)
    assert platform.models.get("first", alias="challenger").version == first.version
    promoted = platform.models.promote("first")
    assert (promoted.version, promoted.previous, promoted.champion_score) == (first.version, None, None)
    assert platform.models.get("first").aliases == ["champion"]  # the challenger alias moved on


def test_a_worse_challenger_is_refused_on_the_shared_holdout(platform):
    strong = train(platform, "shared", STRONG)
    platform.models.promote("shared", strong.version)
    weak = train(platform, "shared", WEAK)
    with pytest.raises(PromotionRefused, match="shared holdout"):
        platform.models.promote("shared", weak.version)
    assert platform.models.get("shared").version == strong.version
    refused = platform.models.history("shared")[-1]
    assert (refused.kind, refused.action, refused.who) == ("model", "promotion_refused", "ana")
    assert refused.detail["challenger"] < refused.detail["champion"]


def test_margin_force_rollback_and_archive(platform):
    one = train(platform, "cycle", STRONG)
    platform.models.promote("cycle", one.version)
    two = train(platform, "cycle", STRONG, estimator="lightgbm.LGBMClassifier")
    with pytest.raises(PromotionRefused, match="better by 0.5"):
        platform.models.promote("cycle", two.version, margin=0.5)
    with pytest.raises(InvalidArgument, match="needs a reason"):
        platform.models.promote("cycle", two.version, force=True)
    forced = platform.models.promote("cycle", two.version, force=True, reason="new library")
    assert forced.forced and forced.previous == one.version
    assert platform.models.rollback("cycle", reason="latency regression") == one.version
    assert platform.models.get("cycle").version == one.version
    platform.models.archive("cycle", two.version, reason="superseded")
    with pytest.raises(PromotionRefused, match="archived"):
        platform.models.promote("cycle", two.version)
    actions = [(e.action, e.version, e.reason) for e in platform.models.history("cycle")]
    assert actions == [
        ("trained", None, ""), ("registered", one.version, ""), ("promoted", one.version, ""),
        ("trained", None, ""), ("registered", two.version, ""), ("promotion_refused", two.version, ""),
        ("promoted", two.version, "new library"), ("rolled_back", one.version, "latency regression"),
        ("archived", two.version, "superseded")]
    assert [v.version for v in platform.models.versions("cycle")] == [two.version, one.version]
    assert platform.models.versions("cycle")[0].archived


def test_unknown_models_and_aliases(platform):
    with pytest.raises(ModelNotFound, match="not a registered model"):
        platform.models.versions("nope")
    train(platform, "lonely", WEAK)
    with pytest.raises(ModelNotFound, match="no 'champion' alias"):
        platform.models.get("lonely")
    with pytest.raises(ModelNotFound, match="no earlier champion"):
        platform.models.rollback("lonely")


def test_lineage_both_ways(platform):
    result = train(platform, "traced", [*STRONG, *WEAK])
    platform.models.promote("traced", result.version)
    graph = platform.lineage(model="traced")
    text = str(graph)
    assert f"model: traced v{result.version}" in text
    assert f"run: {result.run_id[:12]}" in text
    assert f"training set: {result.training_set_fingerprint[:16]}" in text
    assert "feature view: driver_stats v1  (features=rating, acceptance_rate" in text
    assert "feature view: customer_profile v1  (features=avg_fare" in text
    assert "offline/driver_stats/v1" in text
    assert "<div" in graph._repr_html_() and "traced v" in graph._repr_html_()
    users = str(platform.lineage(feature_view="customer_profile"))
    assert f"traced v{result.version}" in users
    assert "first v" not in users  # built from driver_stats only


def test_the_version_a_notebook_trained_is_found_by_its_path(platform, tmp_path, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    trained = {}
    for notebook, name in [("churn.ipynb", "from_nb"), ("other.ipynb", "elsewhere"), ("churn.ipynb", "from_nb")]:
        monkeypatch.setenv("MLPLAT_NOTEBOOK", str(tmp_path / notebook))  # what Jupyter tells a kernel
        trained[notebook] = train(platform, name, WEAK)
    platform.models.archive("elsewhere", trained["other.ipynb"].version)
    monkeypatch.delenv("MLPLAT_NOTEBOOK")

    found = platform.models.trained_in("churn.ipynb")  # relative to the working directory, tmp_path here
    assert (found.name, found.version, found.run_id) == ("from_nb", "2", trained["churn.ipynb"].run_id)
    with pytest.raises(ModelNotFound, match=r"trained in .*other.ipynb; run its training cell"):
        platform.models.trained_in(tmp_path / "other.ipynb")  # archived versions are not offered
    with pytest.raises(ModelNotFound, match="choose a registered model by name"):
        platform.models.trained_in(tmp_path / "never.ipynb")
