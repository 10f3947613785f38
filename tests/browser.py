"""Test helpers for headless Chromium: Debian's ``/usr/bin/chromium`` driven by Playwright (no browser download),
and small steps through the hub and JupyterLab, each taking a Playwright ``page``. Used by test_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # gitignored; CI keeps it
SLOW = 120_000  # ms: a cold kernel imports mlflow and xgboost; a first deploy starts Triton
LOADS = 60_000  # ms: a workspace server to start, JupyterLab to load, a kernel to attach

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (`make install` installs it)")


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium, closed on exit."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> Path:
    """Keep what the page shows now as ``test-artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


# -- the hub -------------------------------------------------------------------------------------------------
def log_in_to_hub(page: Page, hub_url: str, user: str, password: str, then: str) -> None:
    """Fill in and submit the hub's login form; the hub goes on to ``then`` (a path on the hub's host)."""
    page.goto(f"{hub_url}hub/login?next={quote(then, safe='')}")
    page.locator("#username_input").fill(user)
    page.locator("#password_input").fill(password)
    page.locator("#login_submit").click()


def launch_server(page: Page) -> None:
    """On the hub's "Server not running" page (a link into a stopped workspace), click Launch Server."""
    page.get_by_role("button", name="Launch Server").click()


def start_workspace(page: Page, profile: str) -> None:
    """On the hub's spawn page, choose ``profile`` and click Start."""
    page.locator(f'input[name="profile"][value="{profile}"]').check()
    page.get_by_role("button", name="Start").click()


# -- JupyterLab ----------------------------------------------------------------------------------------------
def wait_for_lab(page: Page) -> None:
    """Wait until JupyterLab has drawn its main area (open it with ``?reset`` in the URL, so no tabs come back
    from an earlier session)."""
    page.locator("#jp-main-dock-panel").wait_for(timeout=LOADS)


def open_mlplat_sidebar(page: Page) -> Locator:
    """Click the mlplat tab of the left sidebar unless it is open (a click would close it); return the panel
    once its feature catalog has loaded."""
    sidebar = page.locator("#mlplat-sidebar")
    if not sidebar.is_visible():
        page.locator('.jp-SideBar li[data-id="mlplat-sidebar"]').click()
    sidebar.locator(".mlplat-features .mlplat-view").first.wait_for()
    return sidebar


def wait_for_idle_kernel(page: Page) -> None:
    """JupyterLab drops a cell run sent before the kernel is attached: wait until the status bar says Idle
    (the toolbar's execution indicator says idle before there is a kernel)."""
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).wait_for(timeout=LOADS)


def run_cell(page: Page, index: int = 0) -> Locator:
    """Run a cell of the open notebook with Shift+Enter; return its output area."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    return cell.locator(".jp-OutputArea")


def deploy_trained_model(page: Page) -> Locator:
    """Click the notebook's Deploy button and accept its choice (the model trained in this notebook);
    return the dialog that reports the deployment."""
    page.locator(".jp-NotebookPanel-toolbar .mlplat-deploy").click()
    page.locator(".jp-Dialog .mlplat-form").wait_for()
    page.locator(".jp-Dialog button.jp-mod-accept").click()
    report = page.locator(".jp-Dialog .mlplat-deployment")
    report.wait_for(timeout=SLOW)
    return report


def schedule_notebook(page: Page, cron: str, parameters: str = "") -> None:
    """Click the notebook's Schedule button, fill in its dialog (parameters: name=value lines) and accept it."""
    page.locator(".jp-NotebookPanel-toolbar .mlplat-schedule").click()
    form = page.locator(".jp-Dialog .mlplat-form")
    form.locator("input").fill(cron)
    form.locator("textarea").fill(parameters)
    page.locator(".jp-Dialog button.jp-mod-accept").click()


def close_dialog(page: Page) -> None:
    """Click the Close button of the dialog on top (a deployment report, an error)."""
    page.locator(".jp-Dialog").get_by_role("button", name="Close", exact=True).click()
    expect(page.locator(".jp-Dialog")).to_have_count(0)


def show_lineage(sidebar: Locator, model: str, version: str) -> Locator:
    """In the sidebar's Models section, open a model's versions, then one version's lineage."""
    item = sidebar.locator(".mlplat-model", has_text=model)
    item.locator(".mlplat-item-title").first.click()
    item.locator(".mlplat-version .mlplat-item-title", has_text=f"v{version}").click()
    return item.locator(".mlplat-lineage")
