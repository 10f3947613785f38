"""REST handlers under ``/mlplat/api``: each parses its request, calls one library function, answers JSON.

Every handler needs a logged-in user who may use the ``mlplat`` resource; a POST or DELETE also needs the
XSRF token (``APIHandler`` checks it for cookie-authenticated requests). An ``MlplatError``
becomes ``{"message": ...}`` with 403 when the platform server refuses the user (server mode), 401 when it does
not know them, 404 when something is not found, 400 otherwise.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from mlplat.config import parse_assignments
from mlplat.errors import (
    FeatureNotFound,
    FeatureViewNotFound,
    InvalidArgument,
    MlplatError,
    ModelNotFound,
    NotAuthenticated,
    PermissionDenied,
    ScheduleNotFound,
)
from mlplat_lab.app import PlatformCalls
from mlplat_lab.jsonable import jsonable
from mlplat_lab.snippet import client_snippet

NOT_FOUND = (FeatureNotFound, FeatureViewNotFound, ModelNotFound, ScheduleNotFound)


def endpoint(method: Callable) -> Callable:
    """Authenticate and authorise a handler method; turn an MlplatError it raises into a 4xx JSON reply."""

    @functools.wraps(method)
    async def answer(self: MlplatHandler, *args: str) -> None:
        try:
            await method(self, *args)
        except MlplatError as exc:
            self.set_status(403 if isinstance(exc, PermissionDenied) else 401 if isinstance(exc, NotAuthenticated)
                            else 404 if isinstance(exc, NOT_FOUND) else 400)
            self.finish(json.dumps({"message": str(exc)}))

    return web.authenticated(authorized(answer))


class MlplatHandler(APIHandler):
    """A JSON API handler whose library calls run through :class:`PlatformCalls`."""

    auth_resource = "mlplat"

    def initialize(self, calls: PlatformCalls) -> None:
        self.calls = calls

    async def reply(self, call: Callable[[Any], Any], render: Callable[[Any], Any] = jsonable, status: int = 200) -> None:
        result = await self.calls.run(call)
        self.set_status(status)
        self.finish(json.dumps(render(result)))

    def body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise InvalidArgument("Send a JSON object as the request body.")
        return body

    def notebook(self, body: dict[str, Any]) -> str:
        """The notebook's path on disk, from ``body["notebook"]``: its path under the server's root, as Lab has it.

        Checked as Jupyter's contents manager checks paths: by name, after removing ``..``, without following
        links, so a team folder linked into the workspace is inside it while ``../x.ipynb`` is not.
        """
        name = body.get("notebook")
        if not isinstance(name, str) or not name.endswith(".ipynb"):
            raise InvalidArgument(f'"notebook" must be the path of an .ipynb file under the server root, not {name!r}.')
        root = Path(os.path.abspath(Path(self.settings["server_root_dir"]).expanduser()))
        path = Path(os.path.normpath(root / name.lstrip("/")))
        if not path.is_relative_to(root):
            raise InvalidArgument(f"{name} is outside the folder this server serves ({root}); give a path inside it.")
        return str(path)


class FeaturesHandler(MlplatHandler):
    """GET ``/mlplat/api/features?q=words``: the latest version of each matching view, with its schema."""

    @endpoint
    async def get(self) -> None:
        text = self.get_argument("q", "")
        await self.reply(lambda p: p.features.search(text))


class FreshnessHandler(MlplatHandler):
    """GET ``/mlplat/api/features/<view>/freshness``: newest event and ingest, materialisation watermark."""

    @endpoint
    async def get(self, view: str) -> None:
        await self.reply(lambda p: p.features.freshness(view))


class ModelsHandler(MlplatHandler):
    """GET ``/mlplat/api/models``: every registered model with its latest version and aliases."""

    @endpoint
    async def get(self) -> None:
        await self.reply(lambda p: p.models.list())


class VersionsHandler(MlplatHandler):
    """GET ``/mlplat/api/models/<name>/versions``: its versions, newest first, with aliases and metrics."""

    @endpoint
    async def get(self, name: str) -> None:
        await self.reply(lambda p: p.models.versions(name))


class LineageHandler(MlplatHandler):
    """GET ``/mlplat/api/models/<name>/versions/<version>/lineage``: run, training set, views, sources."""

    @endpoint
    async def get(self, name: str, version: str) -> None:
        await self.reply(lambda p: p.lineage(model=name, version=version))


class DeployHandler(MlplatHandler):
    """POST ``/mlplat/api/deploy``: ``{"name", "version"?}`` (default: the champion), or ``{"notebook"}``
    (the newest version trained in that notebook). Answers the deployment and a gRPC client snippet."""

    @endpoint
    async def post(self) -> None:
        body = self.body()
        if "notebook" in body:
            notebook = self.notebook(body)

            def deploy(p: Any) -> Any:
                found = p.models.trained_in(notebook)
                return p.deploy(found.name, found.version)
        elif isinstance(body.get("name"), str):
            name, version = body["name"], body.get("version") or None

            def deploy(p: Any) -> Any:
                return p.deploy(name, version)
        else:
            raise InvalidArgument('Send {"name": "<model>", "version": "<n>"} (no version: the champion) '
                                  'or {"notebook": "<path>.ipynb"} (the model trained in it).')
        await self.reply(deploy, render=lambda found: {**jsonable(found), "snippet": client_snippet(found)})


class SchedulesHandler(MlplatHandler):
    """GET ``/mlplat/api/jobs/schedules``: every schedule; POST ``{"notebook", "cron", "parameters"}``
    (``["name=value", ...]``, values read as YAML as on the command line) schedules a notebook."""

    @endpoint
    async def get(self) -> None:
        await self.reply(lambda p: p.jobs.schedules())

    @endpoint
    async def post(self) -> None:
        body = self.body()
        notebook, cron, pairs = self.notebook(body), body.get("cron"), body.get("parameters", [])
        if not isinstance(pairs, list) or not all(isinstance(pair, str) for pair in pairs):
            raise InvalidArgument(f'"parameters" must be a list of "name=value" strings, not {pairs!r}.')
        parameters = parse_assignments(pairs, "parameter")
        await self.reply(lambda p: p.jobs.schedule(notebook, cron, parameters), render=lambda id_: {"id": id_},
                         status=201)


class ScheduleHandler(MlplatHandler):
    """DELETE ``/mlplat/api/jobs/schedules/<id>``: unschedule it (its past runs stay in the history)."""

    @endpoint
    async def delete(self, schedule_id: str) -> None:
        if not schedule_id.isdigit():
            raise InvalidArgument(f"A schedule id is a whole number, not {schedule_id!r}.")
        await self.reply(lambda p: p.jobs.unschedule(int(schedule_id)), render=lambda _: {"id": int(schedule_id)})


class RunsHandler(MlplatHandler):
    """GET ``/mlplat/api/jobs/runs?limit=20``: the most recent notebook job runs, newest first."""

    @endpoint
    async def get(self) -> None:
        limit = self.get_argument("limit", "20")
        if not limit.isdigit():
            raise InvalidArgument(f"limit must be a whole number of runs, not {limit!r}.")
        await self.reply(lambda p: p.jobs.history(limit=int(limit)))


def routes(calls: PlatformCalls) -> list[tuple[str, type, dict[str, Any]]]:
    """URL patterns (under the server's base URL) and their handlers."""
    part = r"([^/]+)"
    table = [
        ("features", FeaturesHandler), (f"features/{part}/freshness", FreshnessHandler),
        ("models", ModelsHandler), (f"models/{part}/versions", VersionsHandler),
        (f"models/{part}/versions/{part}/lineage", LineageHandler), ("deploy", DeployHandler),
        ("jobs/schedules", SchedulesHandler), (f"jobs/schedules/{part}", ScheduleHandler), ("jobs/runs", RunsHandler),
    ]
    return [(f"/mlplat/api/{pattern}", handler, {"calls": calls}) for pattern, handler in table]
