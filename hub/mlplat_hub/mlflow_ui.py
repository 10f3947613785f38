"""The MLflow UI as a hub service that only users logged in to the hub can open.

The hub proxies ``/services/mlflow/`` here (``python -m mlplat_hub.mlflow_ui``, a
managed service). Every request is checked with the hub's OAuth, then forwarded to
an MLflow server on a private loopback port, started with the same path prefix so
its pages and API calls need no rewriting. It stops with the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import secrets
import signal
import subprocess
import time
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from tornado import httpclient, web

from mlplat.config import Settings, load_settings
from mlplat.services import ServiceState, free_port
from mlplat.training.mlflow_service import MlflowService

log = logging.getLogger("mlplat_hub.mlflow_ui")
# Headers about one connection, not the message; the proxy sets its own.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "content-length", "host"}


class PrefixedMlflow(MlflowService):
    """The platform's MLflow server under a path prefix; this service starts and stops it itself.

    Not through ``ensure()``: a hub stopping while MLflow still starts must be able to stop it.
    """

    name = "hub-mlflow"

    def __init__(self, settings: Settings, prefix: str):
        super().__init__(settings)
        self.prefix = prefix.rstrip("/")

    def command(self, port: int) -> list[str]:
        return [*super().command(port), "--static-prefix", self.prefix]

    def url(self, port: int) -> str:
        return super().url(port) + self.prefix  # MLflow's own health check then finds {prefix}/health


@dataclasses.dataclass
class Upstream:
    """Where the MLflow server answers, once it does; or why it does not."""

    origin: str | None = None
    error: str = "MLflow is starting; reload this page in a few seconds."


class MlflowProxy(HubOAuthenticated, web.RequestHandler):
    """Forwards an authenticated request to MLflow and its answer back."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

    def initialize(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def check_xsrf_cookie(self) -> None:
        # MLflow's pages call its API with fetch() and know nothing of the hub's XSRF token. The browser's
        # Sec-Fetch-Site proves what the token would: the request comes from this origin, not another site.
        if self.request.headers.get("Sec-Fetch-Site") != "same-origin":
            super().check_xsrf_cookie()

    @web.authenticated
    async def get(self, *args: str) -> None:
        if self.upstream.origin is None:
            self._fail(503, self.upstream.error)
            return
        request = self.request
        headers = {k: v for k, v in request.headers.get_all() if k.lower() not in _HOP_BY_HOP}
        response = await httpclient.AsyncHTTPClient().fetch(
            self.upstream.origin + request.uri, method=request.method, headers=headers,
            body=request.body if request.body or request.method in ("POST", "PUT", "PATCH") else None,
            follow_redirects=False, raise_error=False, decompress_response=False,
            allow_nonstandard_methods=True, request_timeout=300)
        if response.code == 599:
            self._fail(502, f"MLflow did not answer: {response.error}")
            return
        self.set_status(response.code, response.reason)
        self.clear_header("Content-Type")
        for name, value in response.headers.get_all():
            if name.lower() not in _HOP_BY_HOP:
                self.add_header(name, value)
        self.finish(response.body)

    head = post = put = patch = delete = get

    def _fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(message)


def make_app(prefix: str, upstream: Upstream) -> web.Application:
    """The service's tornado application: the OAuth callback and everything else under ``prefix``."""
    return web.Application([
        (prefix + "oauth_callback", HubOAuthCallbackHandler),
        (prefix + ".*", MlflowProxy, {"upstream": upstream}),
    ], cookie_secret=secrets.token_bytes(32))


def _bind_address(host: str) -> str:
    """The service URL's host if it is an address of this machine; all interfaces for a name (a Service in a cluster)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return ""


async def _wait_ready(mlflow: PrefixedMlflow, process: subprocess.Popen, port: int, upstream: Upstream) -> None:
    """Point ``upstream`` at MLflow once it answers; record why if it exits or never answers."""
    state = ServiceState(mlflow.name, process.pid, port, mlflow.url(port), time.time())
    deadline = time.monotonic() + mlflow.start_timeout
    while process.poll() is None and time.monotonic() < deadline:
        if await asyncio.to_thread(mlflow.healthy, state):
            upstream.origin = f"http://127.0.0.1:{port}"
            return
        await asyncio.sleep(0.2)
    upstream.error = f"The MLflow UI did not start; see {mlflow.log_file}."
    log.error(upstream.error)


async def serve() -> None:
    """Answer at ``$JUPYTERHUB_SERVICE_URL`` at once; start MLflow behind it; stop both on SIGTERM/SIGINT."""
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    bind = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    mlflow = PrefixedMlflow(load_settings(), prefix)
    upstream = Upstream()
    server = make_app(prefix, upstream).listen(bind.port, address=_bind_address(bind.hostname or ""))
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    port = free_port()
    mlflow.settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(mlflow.log_file, "ab") as output:
        process = subprocess.Popen(mlflow.command(port), stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    ready = asyncio.create_task(_wait_ready(mlflow, process, port, upstream))
    try:
        await stopping.wait()
    finally:
        ready.cancel()
        server.stop()
        _stop(process)


def _stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM MLflow's process group (it and its workers); SIGKILL what is left after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve())
