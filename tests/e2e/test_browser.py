"""End to end through the hub, in headless Chromium: a user follows a link to their training notebook, logs in
to the hub, launches a cpu-small workspace from the spawn page and lands in JupyterLab on the notebook; there the
mlplat sidebar shows the catalog, the notebook trains a model, its Deploy button puts it on Triton (READY, the
gRPC endpoint), the deployed model answers gRPC predictions like the trained one, and its Schedule button
schedules the notebook. Screenshots go to ``test-artifacts/``.

The hub, its workspace and the test share one platform (home, SQLite registry and MLflow, Redis, Triton).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from browser import (
    SLOW,
    chromium,
    close_dialog,
    deploy_trained_model,
    launch_server,
    log_in_to_hub,
    needs_chromium,
    open_mlplat_sidebar,
    run_cell,
    schedule_notebook,
    screenshot,
    show_lineage,
    start_workspace,
    wait_for_idle_kernel,
    wait_for_lab,
)
from hubs import running_hub
from labs import FEATURES, disable_announcements, make_platform, platform_variables, skip_without_triton, write_notebook
from playwright.sync_api import Page, expect

from mlplat.kernels import kernel_spec
from mlplat.registry.artifacts import load_model
from mlplat.serving.triton import TritonService
from mlplat_hub.workspaces import user_folder

USER = "dana"
PROFILE = "cpu-small"
MODEL = "browser_model"
MLPLAT_KERNEL = {"name": "mlplat", "display_name": kernel_spec("mlplat")["display_name"], "language": "python"}
TRAIN = ("import mlplat, pandas as pd\n"
         "p = mlplat.connect()\n"
         f"result = p.train('xgboost.XGBClassifier', features={FEATURES!r}, entity_df=pd.read_parquet('labels.parquet'),\n"
         f"                 target='completed', name={MODEL!r}, params={{'n_estimators': n_estimators}})\n"
         "print('trained version', result.version)")

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def platform(tmp_path_factory, redis_url):
    p, p.lab_settings = make_platform(tmp_path_factory.mktemp("browser"), redis_url)
    yield p
    p.close()


@pytest.fixture(scope="module")
def hub(platform):
    """A hub for the platform, without the MLflow UI and scheduler services: this test needs neither, and they
    would take CPU from the workspace."""
    variables = {**platform_variables(platform.lab_settings), "MLPLAT_HUB_SERVICES": ""}
    with running_hub(Path(platform.lab_settings["home"]), variables) as running:
        yield running


@pytest.fixture(scope="module")
def workspace(hub, platform) -> Path:
    """The user's workspace folder before their server first starts: a parameterised training notebook for the
    mlplat kernel, its labels, and (the folder is the server's HOME) Lab settings without news announcements."""
    folder = user_folder(hub.root, USER)
    folder.mkdir(parents=True)
    platform.labels.to_parquet(folder / "labels.parquet")
    write_notebook(folder / "train.ipynb", "n_estimators = 10", TRAIN, kernelspec=MLPLAT_KERNEL)
    disable_announcements(folder / ".jupyter")
    return folder


@pytest.fixture(scope="module")
def page(hub, workspace):
    """The user in JupyterLab, on train.ipynb: they opened a link to it, logged in to the hub, launched their
    server and chose the cpu-small profile on the spawn page."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        log_in_to_hub(page, hub.url, USER, hub.password, then=f"/user/{USER}/lab/tree/train.ipynb?reset")
        launch_server(page)
        start_workspace(page, PROFILE)
        wait_for_lab(page)
        yield page


def test_log_in_train_deploy_with_one_click_and_the_model_answers_over_grpc(platform, hub, workspace, page: Page):
    skip_without_triton(platform.settings)
    expect(page).to_have_url(re.compile(re.escape(f"{hub.url}user/{USER}/lab/tree/train.ipynb")))
    server = hub.api("GET", f"/hub/api/users/{USER}").json()["servers"][""]
    assert server["user_options"] == {"profile": PROFILE}
    sidebar = open_mlplat_sidebar(page)
    expect(sidebar.locator(".mlplat-view", has_text="driver_stats")).to_contain_text("rating float32")
    expect(sidebar.locator(".mlplat-view", has_text="customer_profile")).to_contain_text("membership string")

    wait_for_idle_kernel(page)
    run_cell(page, 0)
    expect(run_cell(page, 1)).to_contain_text("trained version 1", timeout=SLOW)

    report = deploy_trained_model(page)
    screenshot(page, "browser-deploy")
    endpoint = TritonService(platform.settings).status().url
    expect(report.locator(".mlplat-status")).to_have_text("READY")
    expect(report.locator(".mlplat-endpoint")).to_have_text(endpoint)
    expect(report.locator(".mlplat-snippet")).to_contain_text(f'InferenceServerClient("{endpoint}")')
    close_dialog(page)
    lineage = show_lineage(sidebar, MODEL, "1")
    expect(lineage).to_contain_text("training set", timeout=30_000)
    expect(lineage).to_contain_text(f"code: {workspace / 'train.ipynb'}, by: {USER}")  # the hub user trained it
    screenshot(page, "browser-lineage")

    rows = [{"driver_id": driver_id} for driver_id in (1, 2, 3)]
    prediction = platform.predict(MODEL, rows)  # over gRPC, features looked up online
    online = platform.features.get_online_features(FEATURES, rows).to_dict()
    X = np.array([online[ref.split(":")[1]] for ref in FEATURES], dtype=np.float32).T
    native = load_model(platform.settings, MODEL, "1", "xgboost").predict_proba(X)
    assert prediction.version == "1"
    np.testing.assert_allclose(prediction.outputs, native, atol=1e-5)


def test_schedule_the_notebook_with_its_parameters(platform, workspace, page: Page):
    sidebar = open_mlplat_sidebar(page)
    schedule_notebook(page, "0 3 * * *", "days=1")
    expect(page.locator(".jp-Dialog")).to_contain_text("train.ipynb declares no parameter 'days'")
    close_dialog(page)

    schedule_notebook(page, "0 3 * * *", "n_estimators=20")
    expect(sidebar.locator(".mlplat-schedule")).to_contain_text("train.ipynb #1 0 3 * * *")
    screenshot(page, "browser-schedule")
    assert [(s.notebook, s.cron, s.parameters) for s in platform.jobs.schedules()] == [
        (str(workspace / "train.ipynb"), "0 3 * * *", {"n_estimators": 20})]

    sidebar.locator(".mlplat-jobs .mlplat-unschedule").click()
    expect(sidebar.locator(".mlplat-jobs")).to_contain_text("No schedules.")
    assert platform.jobs.schedules() == []
