"""The mlplat server extension in a real ``jupyter lab``: each endpoint against the library's own answer,
authentication, XSRF, readable errors, and the Lab extension installed and enabled.

The platform, the server and notebooks come from ``labs.py``, shared with the browser test.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from labs import FEATURES, make_platform, running_lab, skip_without_triton, write_notebook

from mlplat_lab.jsonable import jsonable


@pytest.fixture(scope="module")
def platform(tmp_path_factory, redis_url):
    p, p.lab_settings = make_platform(tmp_path_factory.mktemp("lab"), redis_url)
    yield p
    p.close()


@pytest.fixture(scope="module")
def lab(platform, tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-root")
    write_notebook(root / "tiny.ipynb", "n = 1", "print(n * 3)")
    with running_lab(root, platform.lab_settings) as running:
        yield running


@pytest.fixture(scope="module")
def trained(platform, lab):
    """A version of ``lab_model`` trained in ``train.ipynb`` of the server's root, as its kernel would record it."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("JPY_SESSION_NAME", raising=False)
        env.setenv("MLPLAT_NOTEBOOK", str(lab.root / "train.ipynb"))
        return platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=platform.labels,
                              target="completed", name="lab_model", params={"n_estimators": 10})


@pytest.fixture
def triton(platform):
    skip_without_triton(platform.settings)


def test_the_catalog_is_the_feature_stores_answer(platform, lab):
    views = lab.api("GET", "features").json()
    assert views == jsonable(platform.features.search(""))
    stats = next(view for view in views if view["name"] == "driver_stats")
    assert (stats["version"], stats["owner"], stats["ttl"]) == (1, "marketplace-team", 2 * 86400)
    assert [(f["name"], f["dtype"]) for f in stats["schema"]] == [
        (f.name, f.dtype) for f in platform.features.get_view("driver_stats").schema]
    assert [view["name"] for view in lab.api("GET", "features", params={"q": "gold"}).json()] == ["driver_stats"]
    assert lab.api("GET", "features", params={"q": "no such words"}).json() == []

    fresh = lab.api("GET", "features/driver_stats/freshness").json()
    expected = platform.features.freshness("driver_stats")
    assert pd.Timestamp(fresh["latest_event"]) == expected.latest_event
    assert pd.Timestamp(fresh["materialized_until"]) == expected.materialized_until
    assert fresh["unmaterialized_files"] == expected.unmaterialized_files == 0


def test_models_versions_and_lineage_are_the_registrys_answer(platform, lab, trained):
    assert lab.api("GET", "models").json() == platform.models.list()
    versions = lab.api("GET", "models/lab_model/versions").json()
    assert versions == jsonable(platform.models.versions("lab_model"))
    assert (versions[0]["version"], versions[0]["aliases"]) == (trained.version, ["challenger"])
    assert versions[0]["metrics"]["roc_auc"] == trained.metrics["roc_auc"]
    lineage = lab.api("GET", f"models/lab_model/versions/{trained.version}/lineage").json()
    assert lineage == jsonable(platform.lineage(model="lab_model", version=trained.version))
    assert lineage["root"]["label"] == f"lab_model v{trained.version}"
    assert lineage["root"]["children"][0]["label"] == trained.run_id[:12]


def test_a_notebook_is_scheduled_and_schedules_and_runs_are_listed(platform, lab):
    platform.jobs.run(lab.root / "tiny.ipynb", {"n": 2})
    created = lab.api("POST", "jobs/schedules", json={"notebook": "tiny.ipynb", "cron": "0 3 * * *",
                                                       "parameters": ["n=5"]})
    assert created.status_code == 201, created.text
    schedule = {s.id: s for s in platform.jobs.schedules()}[created.json()["id"]]
    assert (schedule.notebook, schedule.cron, schedule.parameters) == (
        str(lab.root / "tiny.ipynb"), "0 3 * * *", {"n": 5})
    assert lab.api("GET", "jobs/schedules").json() == jsonable(platform.jobs.schedules())
    runs = lab.api("GET", "jobs/runs", params={"limit": 1}).json()
    assert runs == jsonable(platform.jobs.history()[:1])
    assert (runs[0]["status"], runs[0]["parameters"]) == ("succeeded", {"n": 2})


def test_a_team_folder_notebook_is_scheduled_and_a_broken_schedule_listed_and_unscheduled(platform, lab, tmp_path):
    import sqlalchemy as sa

    from mlplat.jobs.schedules import schedules_table

    team = tmp_path / "teams" / "pricing"  # outside the server's root, linked in as the hub links team folders
    team.mkdir(parents=True)
    write_notebook(team / "report.ipynb", "n = 1", "print(n)")
    (lab.root / "teams").mkdir()
    (lab.root / "teams" / "pricing").symlink_to(team, target_is_directory=True)
    created = lab.api("POST", "jobs/schedules", json={"notebook": "teams/pricing/report.ipynb", "cron": "0 4 * * *"})
    assert created.status_code == 201, created.text
    schedule_id = created.json()["id"]
    assert {s.id: s.notebook for s in platform.jobs.schedules()}[schedule_id] == str(team / "report.ipynb")

    with platform.engine.begin() as conn:  # a write past every check
        conn.execute(sa.update(schedules_table).where(schedules_table.c.id == schedule_id).values(cron="0 0 30 2 *"))
    listed = lab.api("GET", "jobs/schedules")
    assert listed.status_code == 200, listed.text
    assert listed.json() == jsonable(platform.jobs.schedules())
    assert "never fires" in {s["id"]: s for s in listed.json()}[schedule_id]["broken"]
    deleted = lab.api("DELETE", f"jobs/schedules/{schedule_id}")
    assert (deleted.status_code, deleted.json()) == (200, {"id": schedule_id})
    assert schedule_id not in {s.id for s in platform.jobs.schedules()}


def test_deploy_answers_status_endpoint_and_a_client_that_works(platform, lab, trained, triton):
    answer = lab.api("POST", "deploy", json={"name": "lab_model", "version": trained.version})
    assert answer.status_code == 200, answer.text
    deployed = answer.json()
    live = {d.name: d for d in platform.deployments()}["lab_model"]
    assert (deployed["status"], deployed["version"], deployed["endpoint"]) == ("READY", trained.version, live.endpoint)
    namespace: dict[str, Any] = {}
    exec(deployed["snippet"], namespace)  # the copy-paste client, as a user would run it
    result = namespace["result"]
    expected = platform.predict("lab_model", features=np.zeros((1, len(FEATURES)))).outputs
    np.testing.assert_allclose(result.as_numpy(result.get_response().outputs[0].name), expected)


def test_deploy_the_model_trained_in_a_notebook(platform, lab, trained, triton):
    with pytest.MonkeyPatch.context() as env:  # a newer model from another notebook is not the one
        env.setenv("MLPLAT_NOTEBOOK", str(lab.root / "other.ipynb"))
        platform.train("xgboost.XGBClassifier", features=FEATURES, entity_df=platform.labels, target="completed",
                       name="other_model", params={"n_estimators": 5})
    answer = lab.api("POST", "deploy", json={"notebook": "train.ipynb"})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["name"], answer.json()["version"], answer.json()["status"]) == (
        "lab_model", trained.version, "READY")
    assert platform.predict("lab_model", [{"driver_id": 1}]).version == trained.version


@pytest.mark.parametrize("method, path, body, status, message", [
    ("GET", "models/nope/versions", None, 404, "'nope' is not a registered model"),
    ("GET", "features/driver_stat/freshness", None, 404, "did you mean 'driver_stats'?"),
    ("GET", "jobs/runs?limit=many", None, 400, "limit must be a whole number"),
    ("POST", "deploy", {}, 400, 'Send {"name": "<model>"'),
    ("POST", "deploy", {"notebook": "never_trained.ipynb"}, 404, "No registered model version was trained in"),
    ("POST", "deploy", "not json", 400, "Send a JSON object"),
    ("POST", "deploy", {"notebook": "../elsewhere.ipynb"}, 400, "outside the folder this server serves"),
    ("POST", "jobs/schedules", {"notebook": "tiny.ipynb", "cron": "every day"}, 400, "is not a cron expression"),
    ("POST", "jobs/schedules", {"notebook": "tiny.ipynb", "cron": "0 3 * * *", "parameters": ["n"]}, 400,
     "write each parameter as name=value"),
    ("POST", "jobs/schedules", {"notebook": "tiny.ipynb", "cron": "0 3 * * *", "parameters": ["m=1"]}, 400,
     "declares no parameter 'm'"),
    ("POST", "jobs/schedules", {"notebook": "tiny.ipynb", "cron": "0 0 30 2 *"}, 400, "'0 0 30 2 *' never fires"),
    ("POST", "jobs/schedules", {"notebook": "tiny.ipynb", "cron": "0 0 3 * * *"}, 400, "has 6 fields"),
    ("POST", "jobs/schedules", {"notebook": "teams/../../tiny.ipynb", "cron": "0 3 * * *"}, 400,
     "outside the folder this server serves"),
    ("DELETE", "jobs/schedules/999", None, 404, "No schedule 999"),
    ("DELETE", "jobs/schedules/first", None, 400, "A schedule id is a whole number"),
])
def test_a_bad_request_gets_a_readable_message(lab, method, path, body, status, message):
    answer = lab.api(method, path, data=body if isinstance(body, str) else json.dumps(body))
    assert answer.status_code == status, answer.text
    assert message in answer.json()["message"]


def test_requests_without_the_token_are_refused(lab):
    assert requests.get(f"{lab.url}mlplat/api/models", timeout=10).status_code == 403
    assert requests.get(f"{lab.url}mlplat/api/models", headers={"Authorization": "token wrong"},
                        timeout=10).status_code == 403
    assert requests.post(f"{lab.url}mlplat/api/deploy", json={"name": "lab_model"}, timeout=10).status_code == 403


def test_a_post_from_the_browser_needs_the_xsrf_token(lab):
    browser = requests.Session()
    browser.get(f"{lab.url}lab", params={"token": lab.token}, timeout=10)  # logs in: a login and an _xsrf cookie
    assert browser.get(f"{lab.url}mlplat/api/models", timeout=10).status_code == 200
    refused = browser.post(f"{lab.url}mlplat/api/deploy", json={}, timeout=10)
    assert refused.status_code == 403 and "_xsrf" in refused.json()["message"]
    allowed = browser.post(f"{lab.url}mlplat/api/deploy", json={}, headers={"X-XSRFToken": browser.cookies["_xsrf"]},
                           timeout=10)
    assert allowed.status_code == 400  # past the XSRF check, refused for its empty body


def test_the_lab_extension_is_installed_and_enabled(lab):
    extensions = requests.get(f"{lab.url}lab/api/extensions", params={"token": lab.token}, timeout=30).json()
    found = {extension["name"]: extension for extension in extensions}
    assert found["mlplat-lab"]["enabled"] and found["mlplat-lab"]["installed"]
