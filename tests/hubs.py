"""Test helpers for a real JupyterHub run by ``mlplat_hub`` (local mode): start and stop it, use its REST API
as the ``mlplat-admin`` service, log in as a user. Used by test_hub.py, test_hub_accounts.py, test_server_hub.py
and test_browser.py."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import requests
import websocket

import mlplat
import mlplat_hub
from mlplat import services
from mlplat.config import Settings, load_settings
from mlplat_hub.accounts import closed_to_accounts
from mlplat_hub.app import start_hub, stop_hub
from mlplat_hub.options import HubOptions

TOKEN = uuid.uuid4().hex
PASSWORD = "workspaces-for-all"
STARTS = 30  # seconds a workspace server may take to start here

# What a workspace run as another account executes: this venv's interpreter and the (editable) packages, whose
# folders on sys.path it lists.
ENVIRONMENT = (Path(sys.executable), Path(mlplat.__file__), Path(mlplat_hub.__file__))
IMPORT_ROOTS = {Path(mlplat.__file__).parents[1], Path(mlplat_hub.__file__).parents[1]}


@contextmanager
def passable_to_accounts() -> Iterator[None]:
    """Other accounts may run this environment for the duration: ``o+x`` added where missing on the folders above
    it, ``o+r`` on the folders it imports from (as for a checkout cloned into a private temporary folder); the
    folders get their modes back after."""
    opened: dict[Path, int] = {}

    def add(folder: Path, bits: int) -> None:
        opened.setdefault(folder, stat.S_IMODE(folder.stat().st_mode))
        os.chmod(folder, stat.S_IMODE(folder.stat().st_mode) | bits)

    for path in ENVIRONMENT:
        while (closed := closed_to_accounts(path)) is not None:
            add(closed, stat.S_IXOTH)
    for folder in IMPORT_ROOTS:
        if not folder.stat().st_mode & stat.S_IROTH:
            add(folder, stat.S_IROTH | stat.S_IXOTH)
    try:
        yield
    finally:
        for folder, mode in opened.items():
            os.chmod(folder, mode)


class Hub:
    """A running hub and an admin client for its REST API."""

    def __init__(self, url: str, pid: int, home: Path, settings: Settings, password: str, root: Path):
        self.url, self.pid, self.home = url, pid, home
        self.settings = settings  # the hub's platform settings, which every workspace shares
        self.password = password  # the shared login password
        self.root = root  # holds users/<name> and teams/<team>
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {TOKEN}"

    def api(self, method: str, path: str, expect: tuple[int, ...] = (200, 201, 202, 204), **kwargs):
        response = self.http.request(method, self.url.rstrip("/") + path, timeout=STARTS, **kwargs)
        assert response.status_code in expect, (method, path, response.status_code, response.text)
        return response

    def spawn(self, user: str, profile: str, teams: tuple[str, ...] = ()) -> dict:
        """Create ``user`` (in ``teams``), start their server with ``profile``; return the server's model."""
        self.api("POST", f"/hub/api/users/{user}", expect=(201, 409))
        for team in teams:
            if self.api("GET", f"/hub/api/groups/{team}", expect=(200, 404)).status_code == 404:
                self.api("POST", f"/hub/api/groups/{team}")
            self.api("POST", f"/hub/api/groups/{team}/users", json={"users": [user]})
        self.api("POST", f"/hub/api/users/{user}/server", json={"profile": profile})
        return self.wait_ready(user)

    def wait_ready(self, user: str) -> dict:
        """The model of ``user``'s server once the hub says it is ready."""
        deadline = time.monotonic() + STARTS
        while time.monotonic() < deadline:
            server = self.api("GET", f"/hub/api/users/{user}").json()["servers"].get("", {})
            if server.get("ready"):
                return server
            time.sleep(0.2)
        raise AssertionError(f"{user}'s server did not become ready")

    def run_in_kernel(self, user: str, kernel: str, code: str) -> str:
        """Execute ``code`` in a new ``kernel`` of ``user``'s server (REST + websocket); return its stdout."""
        kernel_id = self.api("POST", f"/user/{user}/api/kernels", json={"name": kernel}).json()["id"]
        ws_url = self.url.replace("http", "ws", 1) + f"user/{user}/api/kernels/{kernel_id}/channels"
        ws = websocket.create_connection(ws_url, header=[f"Authorization: token {TOKEN}"], timeout=STARTS)
        try:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                           "session": uuid.uuid4().hex, "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True}}))
            out = []
            while True:
                msg = json.loads(ws.recv())
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
                elif msg["msg_type"] == "error":
                    raise AssertionError("\n".join(msg["content"]["traceback"]))
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    return "".join(out)
        finally:
            ws.close()
            self.api("DELETE", f"/user/{user}/api/kernels/{kernel_id}")


def hub_environment(home: Path) -> dict[str, str]:
    """The variables that make a hub for the platform in ``home``, with the admin token and the shared password."""
    return {"MLPLAT_HOME": str(home), "MLPLAT_HUB_ADMIN_TOKEN": TOKEN, "MLPLAT_HUB_PASSWORD": PASSWORD}


@contextmanager
def running_hub(home: Path, variables: Mapping[str, str] | None = None) -> Iterator[Hub]:
    """A real hub (local mode, free loopback ports) started with only :func:`hub_environment` and ``variables``
    as ``MLPLAT_*``; on exit it stops, with the embedded services and Triton its workspaces started, and this
    fails if anything it started survives."""
    with pytest.MonkeyPatch.context() as mp:  # module scope: isolated_env has not run yet
        for name in [n for n in os.environ if n.startswith("MLPLAT_")]:
            mp.delenv(name)
        for name, value in {**hub_environment(home), **(variables or {})}.items():
            mp.setenv(name, value)
        mp.chdir(home)
        settings = load_settings()  # the hub's, not the developer's
        running = start_hub(settings)
        root = HubOptions.from_env(settings).root
    hub = Hub(running.url, running.pid, home, settings, running.password, root)
    try:
        yield hub
    finally:
        _stop(hub)


def _stop(hub: Hub) -> None:
    """Stop the hub, then the platform's embedded services (Redis, Triton) that its services and servers
    started, as they outlive hubs; kill and name whatever the hub started that still runs."""
    processes = [psutil.Process(hub.pid), *psutil.Process(hub.pid).children(recursive=True)]
    stopped = stop_hub(hub.settings)
    services.down(hub.settings)
    _, alive = psutil.wait_procs(processes, timeout=10)
    leftovers = [" ".join(p.cmdline()) for p in alive]
    for process in alive:
        process.kill()
    assert stopped and not leftovers, f"left running after the hub stopped: {leftovers}"


def log_in(hub: Hub, user: str, password: str | None = None) -> requests.Session:
    """A session logged in to the hub as ``user`` through its login form (cookies, as a browser would), with
    ``password`` (default: the shared one); ``.logged_in`` says whether the hub let it in."""
    browser = requests.Session()
    browser.get(hub.url + "hub/login")
    answer = browser.post(hub.url + "hub/login", allow_redirects=False, timeout=STARTS,
                          data={"username": user, "password": password or hub.password,
                                "_xsrf": browser.cookies["_xsrf"]})
    browser.logged_in = answer.status_code == 302  # a refusal shows the login page again
    return browser


def user_token(hub: Hub, user: str, password: str | None = None) -> str:
    """A new API token of ``user``, asked of the hub's API with their login (no admin scope needed: the hub
    checks the password as its login form does, and the token acts as the user)."""
    response = requests.post(f"{hub.url}hub/api/users/{user}/tokens", timeout=STARTS,
                             json={"auth": {"username": user, "password": password or hub.password}, "note": "test"})
    assert response.status_code == 201, (user, response.status_code, response.text)
    return response.json()["token"]
