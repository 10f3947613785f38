"""Server mode on a real JupyterHub: ``mlplat server`` as a hub service, callers known by their hub tokens.

Teams are the hub's groups (``MLPLAT_HUB_TEAMS``): alice in a, bob and carol in b, carol a viewer there
(``MLPLAT_HUB_TEAM_ROLES``); dana administers the platform (``MLPLAT_HUB_ADMINS``). Each user's token comes
from the hub's API, as a user outside a workspace gets one; inside a workspace ``mlplat.connect()`` finds it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import timedelta

import httpx
import psutil
import pytest
from browser import SLOW, chromium, log_in_to_hub, needs_chromium, screenshot, wait_for_lab
from click.testing import CliRunner
from hubs import hub_environment, running_hub, user_token
from labs import disable_announcements, write_notebook
from platforms import demo_platform

import mlplat
from mlplat.cli import main
from mlplat.errors import NotAuthenticated, PermissionDenied
from mlplat.features.definitions import Entity, FeatureView, Field
from mlplat.identity import Identity, acting_as
from mlplat.job_tokens import JobTokens
from mlplat.remote.client import ServerClient
from mlplat_hub.workspaces import user_folder

HUB = {"MLPLAT_HUB_SERVER": "1", "MLPLAT_HUB_TEAMS": "{a: [alice], b: [bob, carol]}",
       "MLPLAT_HUB_TEAM_ROLES": "{b: {carol: viewer}}", "MLPLAT_HUB_ADMINS": "dana",
       "MLPLAT_HUB_SERVICES": "scheduler", "MLPLAT_HUB_CULL_TIMEOUT": "0"}
WHO = {"alice": {"name": "alice", "roles": {"a": "editor"}, "admin": False, "team": "a"},
       "bob": {"name": "bob", "roles": {"b": "editor"}, "admin": False, "team": "b"},
       "carol": {"name": "carol", "roles": {"b": "viewer"}, "admin": False, "team": "b"},
       "dana": {"name": "dana", "roles": {}, "admin": True, "team": ""}}
STARTS = 60  # seconds the server may take to answer after the hub started it


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with running_hub(tmp_path_factory.mktemp("server-hub"), HUB) as started:
        yield started


@pytest.fixture(scope="module")
def alice_workspace(hub):
    """alice's running workspace (a notebook in it, Lab without news prompts): its environment is what every
    workspace gets."""
    folder = user_folder(hub.root, "alice")
    folder.mkdir(parents=True, exist_ok=True)
    write_notebook(folder / "mine.ipynb", "x = 1")
    disable_announcements(folder / ".jupyter")
    return psutil.Process(hub.spawn("alice", "cpu-small")["state"]["pid"]).environ()


@pytest.fixture(scope="module")
def bobs_model(hub):
    """bob's model "bobs", version 1, trained on the demo's features and registered in team b."""
    p = demo_platform(hub.home, drivers=30, customers=5, days=3, trips=300, profiles=False)
    with acting_as(Identity("bob", {"b": "editor"})):
        p.train("sklearn.ensemble.HistGradientBoostingClassifier", features=["driver_stats:rating"], entity_df=p.labels,
                target="completed", name="bobs", params={"max_iter": 5}, split={"by": "random", "test_size": 0.3})
    p.close()
    return "bobs"


@pytest.fixture(scope="module")
def url(hub, alice_workspace):
    """Where the workspaces reach ``mlplat server``, once it answers."""
    url = alice_workspace["MLPLAT_SERVER_URL"]
    deadline = time.monotonic() + STARTS
    while True:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"mlplat server at {url} did not answer"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tokens(hub):
    return {user: user_token(hub, user) for user in WHO}


@pytest.fixture
def connect(hub, url, tokens, monkeypatch):
    """``connect("bob")``: the SDK in server mode with bob's token, as on a laptop pointed at the hub's server."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"):  # connect() sets them: leave no trace
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    opened = []

    def connect(user: str):
        monkeypatch.setenv("MLPLAT_SERVER_TOKEN", tokens[user])
        p = mlplat.connect(server_url=url, home=str(hub.home))
        opened.append(p)
        return p

    yield connect
    for p in opened:
        p.close()


RIDER = Entity("rider", join_keys=["rider_id"])
RIDER_STATS = FeatureView("rider_stats", entities=[RIDER], ttl=timedelta(days=1), schema=[Field("spend", "float64")])


def _processes(hub, command: str) -> list[psutil.Process]:
    return [p for p in psutil.Process(hub.pid).children(recursive=True) if command in " ".join(p.cmdline())]


def test_the_server_is_a_hub_service_and_only_workspaces_are_sent_to_it(hub, url, alice_workspace):
    (server,) = _processes(hub, "mlplat.cli server")
    environ = server.environ()
    assert environ["JUPYTERHUB_SERVICE_URL"].rstrip("/") == url  # it listens where the hub says
    assert "MLPLAT_SERVER_URL" not in environ  # it holds the stores itself
    assert environ["MLPLAT_HOME"] == str(hub.home)
    (scheduler,) = _processes(hub, "mlplat.cli scheduler")
    assert "MLPLAT_SERVER_URL" not in scheduler.environ()  # the hub's other services stay embedded
    assert scheduler.environ()["MLPLAT_JOB_SERVER_URL"] == url  # but its jobs' kernels call the server
    assert alice_workspace["JUPYTERHUB_API_TOKEN"]


def test_mlplat_hub_says_where_the_server_answers(hub, url):
    shown = CliRunner().invoke(main, ["hub"], env={**hub_environment(hub.home), **HUB})
    assert shown.exit_code == 0, shown.output
    assert f"server   {url}  (MLPLAT_SERVER_URL; MLPLAT_SERVER_TOKEN: a token from {hub.url}hub/token)" in shown.output


def test_the_servers_hub_token_reads_users_groups_and_roles_and_no_more(hub):
    (server,) = _processes(hub, "mlplat.cli server")
    as_server = httpx.Client(base_url=server.environ()["JUPYTERHUB_API_URL"],
                             headers={"Authorization": f"token {server.environ()['JUPYTERHUB_API_TOKEN']}"})
    dana = as_server.get("/users/dana").json()
    assert (dana["name"], dana["admin"], dana["groups"]) == ("dana", False, ["mlplat-admins"])  # hub admins: `admin`
    assert as_server.get("/groups/b").json()["properties"] == {"mlplat_roles": {"carol": "viewer"}}
    assert as_server.get("/users/dana/tokens").status_code == 403
    assert as_server.post("/users/eve").status_code == 403
    assert as_server.post("/groups/b/users", json={"users": ["alice"]}).status_code == 403
    assert as_server.post("/users/alice/tokens", json={}).status_code == 403
    assert as_server.get("/users").status_code == 403


def test_the_server_knows_each_user_by_their_hub_token(url, tokens):
    for user, expected in WHO.items():
        assert ServerClient(url, tokens[user]).whoami() == expected


def test_a_job_token_of_the_installs_scheduler_is_its_user_with_their_hub_roles(hub, url):
    job_tokens = JobTokens(hub.settings.run_dir)  # the scheduler's and the server's secret: one MLPLAT_HOME
    for user, expected in WHO.items():
        assert ServerClient(url, job_tokens.make(user, 60)).whoami() == expected
    with pytest.raises(NotAuthenticated, match="no user 'mallory'"):
        ServerClient(url, job_tokens.make("mallory", 60)).whoami()


def test_no_token_or_a_wrong_one_is_refused(url, tokens):
    for headers in ({}, {"Authorization": "token " + tokens["alice"][::-1]}):
        answer = httpx.get(f"{url}/api/v1/whoami", headers=headers)
        assert answer.status_code == 401 and answer.json()["error"] == "NotAuthenticated", answer.text
        called = httpx.post(f"{url}/api/v1/call/features.list_views", headers=headers, content=b"")
        assert called.status_code == 401
    with pytest.raises(NotAuthenticated, match="does not know this token"):
        ServerClient(url, "not-a-hub-token").whoami()


def _refused(call, user: str, role: str) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as caught:
        call()
    error = caught.value
    assert (error.action, error.kind, error.obj, error.team, error.role) == \
        ("change", "feature_view", "rider_stats", "b", "editor")
    assert "'rider_stats'" in str(error) and "team 'b'" in str(error) and "needs editor" in str(error)
    assert (f"{user} is a {role}" if role else f"{user} is not a member") in str(error)
    return error


def test_teams_roles_and_admins_decide_who_changes_a_view(connect):
    bob = connect("bob")
    bob.features.apply([RIDER, RIDER_STATS])
    made = bob.features.get_view("rider_stats")
    assert (made.owner, made.team) == ("bob", "b")

    alice, carol, dana = connect("alice"), connect("carol"), connect("dana")
    longer = dataclasses.replace(RIDER_STATS, ttl=timedelta(days=3))
    _refused(lambda: alice.features.apply([longer]), "alice", "")
    assert carol.features.get_view("rider_stats").ttl == timedelta(days=1)  # a viewer reads
    _refused(lambda: carol.features.apply([longer]), "carol", "viewer")
    assert dana.features.apply([longer])[0].action == "updated"  # a platform admin may
    assert bob.features.apply([RIDER_STATS])[0].action == "updated"  # and the owning team's editors
    assert alice.features.get_view("rider_stats").ttl == timedelta(days=1)


def test_the_audit_names_the_hub_user_whatever_the_client_says(connect, monkeypatch):
    monkeypatch.setenv("MLPLAT_USER", "bob")
    monkeypatch.setenv("MLPLAT_TEAM", "b")
    alice = connect("alice")
    assert (alice.settings.user, alice.settings.team) == ("alice", "a")
    alice.features.apply([Entity("shop", join_keys=["shop_id"])])
    entry = alice.audit.entries(kind="entity", obj="shop")[-1]
    assert (entry.who, entry.team) == ("alice", "a")


def test_a_workspace_connects_in_server_mode_as_its_user(hub, url):
    printed = hub.run_in_kernel("alice", "mlplat", "\n".join([
        "import json, mlplat",
        "p = mlplat.connect()",
        "print(json.dumps({'type': type(p).__name__, 'url': p.server.url, 'user': p.settings.user,",
        "                  'team': p.settings.team, 'views': p.features.registry.view_names()}))",
    ]))
    seen = json.loads(printed)
    assert seen["type"] == "ServerModePlatform" and seen["url"] == url
    assert (seen["user"], seen["team"]) == ("alice", "a")
    assert "rider_stats" in seen["views"]


REFUSAL = "alice may not deploy model 'bobs' of team 'b': that needs editor in 'b'"


def test_the_lab_api_answers_403_when_alice_deploys_bobs_model(hub, url, tokens, bobs_model):
    answer = httpx.post(f"{hub.url}user/alice/mlplat/api/deploy", json={"name": bobs_model, "version": "1"},
                        headers={"Authorization": f"token {tokens['alice']}"}, timeout=120)
    assert answer.status_code == 403 and answer.json()["message"].startswith(REFUSAL), answer.text


@needs_chromium
def test_the_deploy_button_on_bobs_model_shows_alice_the_refusal(hub, url, bobs_model):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        log_in_to_hub(page, hub.url, "alice", hub.password, then="/user/alice/lab/tree/mine.ipynb?reset")
        wait_for_lab(page)
        page.locator(".jp-NotebookPanel-toolbar .mlplat-deploy").click()
        form = page.locator(".jp-Dialog .mlplat-form")
        form.locator("select").first.select_option(bobs_model)
        page.locator(".jp-Dialog button.jp-mod-accept").click()
        failed = page.locator(".jp-Dialog", has_text="Deploy failed")
        failed.wait_for(timeout=SLOW)
        screenshot(page, "server-deploy-refused")
        assert REFUSAL in failed.inner_text()
