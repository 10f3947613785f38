"""MLflow behind ``mlplat server``: the same identities, the same teams, artifacts served to any host.

The platform server fronts a backing ``mlflow server`` (:class:`~mlplat.training.mlflow_service.ServedMlflow`,
on loopback, over the install's tracking store, serving the artifacts under the platform's artifact root) and
forwards ``/mlflow/...`` to it: the REST API (``/mlflow/api/2.0/mlflow/...``), the UI's (``/mlflow/ajax-api/...``),
the artifacts (``/mlflow/api/2.0/mlflow-artifacts/...``) and the UI's pages. Bodies stream both ways, so a large
artifact never sits in the server's memory. MLflow's own client needs only::

    MLFLOW_TRACKING_URI=https://<platform server>/mlflow  MLFLOW_TRACKING_TOKEN=<JupyterHub API token>

(a workspace in server mode has both set). Every request carries a token (``Authorization: Bearer``/``token``),
else 401. Who may do what, in :data:`MUTATIONS` below (endpoint -> rule), in the platform's terms
(:mod:`mlplat.server.permissions`):

- reading (every ``GET``, and the ``POST`` searches in :data:`READS`) is open to every authenticated user, except
  a registered model its team keeps private (``p.models.set_private``: its ``mlplat.private`` tag): others are
  refused its reads (:data:`MODEL_READS`) and do not find it or its versions in lists. (The runs and artifacts of
  its experiment stay readable by id: keep what must not be seen out of shared experiments.)
- an experiment belongs to the team in its ``mlplat.team`` tag, which the server sets when it is created (the
  creator's team, or the one the tag asks for if they are an editor there); its runs, logged models and artifacts
  belong to its team. Creating, changing, deleting, and logging to a run of it needs ``editor`` in that team;
- a registered model belongs to the team in its ``mlplat.team`` tag (:class:`~mlplat.server.permissions.Ownership`),
  set the same way when it is created; every change to it or its versions (rename, update, delete, tags, aliases,
  stages, new versions) needs ``editor`` in its team;
- changing or removing the ``mlplat.team`` tag (of an experiment, a registered model or a model version) is a
  transfer: ``owner`` in the current team, and ``editor`` in the new one;
- an experiment or model without a team (the ``Default`` experiment, anything made before teams) is changed by
  platform admins alone, who can give it to a team; admins may do everything;
- anything else that changes something (traces, prompts, gateway, webhooks, workspaces, ...) is for admins only
  through the platform server, and so is every request under :data:`ADMIN_ONLY`.

The server decides what a client cannot be trusted with: a new experiment's artifact location (always the served
``mlflow-artifacts:/<experiment id>``; a client's ``artifact_location`` is dropped) and a new run's user (the
caller). Refusals are MLflow's error shape: ``{"error_code": "PERMISSION_DENIED", "message": ...}`` (403) and
``{"error_code": "UNAUTHENTICATED", ...}`` (401). The MLflow UI in a browser logs in once with
``/mlflow/?token=<token>`` (kept in an HttpOnly, SameSite=Strict cookie for ``/mlflow``).

Trust: the backing server checks nobody; it listens on loopback, so whoever can open a connection on the platform
server's host (or pod) reaches it directly. Run ``mlplat server`` where users' processes do not share its network:
its own pod (the Kubernetes manifests), or a host where workspaces do not run as local processes.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from mlplat import errors
from mlplat.identity import Identity
from mlplat.registry.models import PRIVATE_TAG, TEAM_TAG  # the same tags on experiments as on registered models
from mlplat.server.authentication import Authenticator
from mlplat.server.permissions import Ownership, require

log = logging.getLogger("mlplat.server.mlflow")
PREFIX = "/mlflow"  # where MLflow answers on the platform server (and on the backing server: same paths)
COOKIE = "mlplat-mlflow-token"
PIN_PREFIX = "mlplat.artifact_"  # the tags pinning a version's files (mlplat.registry.integrity)
# ... and those pinning its logged ONNX export and saying how it is served (mlplat.registry.logged_onnx)
PINNED = (PIN_PREFIX, "mlplat.onnx_", "mlplat.runtime")
MAX_JSON = 64 << 20  # a JSON request the server reads to judge it (log-batch is the largest): 64 MiB
CALLER = ""  # a rule's target for what is created in the caller's team

# Headers about one connection, not the message; and what the backing server must not see (the caller's token).
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "proxy-authenticate", "host", "content-length"}
_NOT_FORWARDED = _HOP_BY_HOP | {"authorization", "cookie", "origin", "referer"}


@dataclass(frozen=True)
class Rule:
    """``action`` on the ``kind`` named by request field ``target`` needs ``role`` in its team.

    ``kind`` is ``experiment``, ``run``, ``logged_model`` (the team of their experiment), ``artifacts`` (the path's
    first part is the experiment id), ``model`` (a registered model: its team) or ``team`` (a new object, made in
    the caller's team or the one its ``mlplat.team`` tag asks for). ``tag``: the request sets or deletes the tag
    that field names, so naming ``mlplat.team`` there is a transfer.
    """

    action: str
    kind: str
    target: str
    role: str = "editor"
    tag: str = ""
    source: str = "body"  # where ``target`` is: the JSON body (as MLflow reads it), the query, or the path

    def __post_init__(self) -> None:
        if self.kind in ("artifacts", "logged_model"):
            object.__setattr__(self, "source", "path")


def _on(kind: str, target: str, **actions: str) -> dict[tuple[str, str], Rule]:
    """Rules for several endpoints of one kind: ``_on("run", "run_id", **{"POST runs/delete": "delete"})``."""
    rules = {}
    for endpoint, action in actions.items():
        method, path = endpoint.split(" ", 1)
        tag = "key" if path.endswith("-tag") and kind in ("experiment", "model") else ""  # run tags own nothing
        rules[(method, path)] = Rule(action, kind, target, tag=tag)
    return rules


# What each MLflow endpoint that changes something needs; paths are under /api/ (and the UI's twin /ajax-api/),
# ``{x}`` is one path part, ``{path}`` the rest of the path.
MUTATIONS: dict[tuple[str, str], Rule] = {
    # experiments: created in a team; the rest need editor in their team
    ("POST", "2.0/mlflow/experiments/create"): Rule("create", "team", CALLER),
    **_on("experiment", "experiment_id", **{
        "POST 2.0/mlflow/experiments/update": "rename",
        "POST 2.0/mlflow/experiments/delete": "delete",
        "POST 2.0/mlflow/experiments/restore": "restore",
        "POST 2.0/mlflow/experiments/set-experiment-tag": "tag",
        "POST 2.0/mlflow/experiments/delete-experiment-tag": "untag",
        "POST 2.0/mlflow/runs/create": "start a run in",
        "POST 2.0/mlflow/logged-models": "log a model in",
    }),
    # runs: the team of their experiment
    **_on("run", "run_id", **{
        "POST 2.0/mlflow/runs/update": "update",
        "POST 2.0/mlflow/runs/delete": "delete",
        "POST 2.0/mlflow/runs/restore": "restore",
        "POST 2.0/mlflow/runs/log-metric": "log to",
        "POST 2.0/mlflow/runs/log-parameter": "log to",
        "POST 2.0/mlflow/runs/log-batch": "log to",
        "POST 2.0/mlflow/runs/log-model": "log to",
        "POST 2.0/mlflow/runs/log-inputs": "log to",
        "POST 2.0/mlflow/runs/outputs": "log to",
        "POST 2.0/mlflow/runs/set-tag": "tag",
        "POST 2.0/mlflow/runs/delete-tag": "untag",
    }),
    ("POST", "2.0/mlflow/upload-artifact"): Rule("upload an artifact to", "run", "run_uuid", source="query"),  # UI
    # logged models (MLflow 3): the team of their experiment
    **_on("logged_model", "model_id", **{
        "PATCH 2.0/mlflow/logged-models/{model_id}": "finalize",
        "DELETE 2.0/mlflow/logged-models/{model_id}": "delete",
        "PATCH 2.0/mlflow/logged-models/{model_id}/tags": "tag",
        "DELETE 2.0/mlflow/logged-models/{model_id}/tags/{tag_key}": "untag",
        "POST 2.0/mlflow/logged-models/{model_id}/params": "log to",
    }),
    # served artifacts: mlflow-artifacts:/<experiment id>/..., the team of that experiment
    **_on("artifacts", "path", **{
        "PUT 2.0/mlflow-artifacts/artifacts/{path}": "write",
        "DELETE 2.0/mlflow-artifacts/artifacts/{path}": "delete",
        "POST 2.0/mlflow-artifacts/mpu/create/{path}": "write",
        "POST 2.0/mlflow-artifacts/mpu/complete/{path}": "write",
        "POST 2.0/mlflow-artifacts/mpu/abort/{path}": "write",
    }),
    # registered models: created in a team; everything else needs editor in the model's team
    ("POST", "2.0/mlflow/registered-models/create"): Rule("create", "team", CALLER),
    **_on("model", "name", **{
        "POST 2.0/mlflow/registered-models/rename": "rename",
        "PATCH 2.0/mlflow/registered-models/update": "update",
        "DELETE 2.0/mlflow/registered-models/delete": "delete",
        "POST 2.0/mlflow/registered-models/set-tag": "tag",
        "DELETE 2.0/mlflow/registered-models/delete-tag": "untag",
        "POST 2.0/mlflow/registered-models/alias": "set an alias of",
        "DELETE 2.0/mlflow/registered-models/alias": "delete an alias of",
        "POST 2.0/mlflow/model-versions/create": "register a version of",
        "PATCH 2.0/mlflow/model-versions/update": "update a version of",
        "POST 2.0/mlflow/model-versions/transition-stage": "change the stage of a version of",
        "DELETE 2.0/mlflow/model-versions/delete": "delete a version of",
        "POST 2.0/mlflow/model-versions/set-tag": "tag a version of",
        "DELETE 2.0/mlflow/model-versions/delete-tag": "untag a version of",
    }),
}
# POSTs that only read (searches, batched gets, the UI's GraphQL, whose mutations are searches too).
READS = {
    "2.0/mlflow/experiments/search", "2.0/mlflow/runs/search", "2.0/mlflow/registered-models/get-latest-versions",
    "2.0/mlflow/logged-models/search", "2.0/mlflow/experiments/search-datasets", "3.0/mlflow/traces/search",
    "3.0/mlflow/traces/batchGetInfos", "3.0/mlflow/traces/metrics", "3.0/mlflow/traces/calculate-filter-correlation",
    "3.0/mlflow/datasets/search", "3.0/mlflow/issues/search", "3.0/mlflow/ui-telemetry", "graphql",
}
# Reads of one registered model, by the field naming it ("name"): refused when the model is private to another team
# (``p.models.set_private``), as the platform's own reads are. Lists (and the UI's GraphQL) leave such models out.
MODEL_READS = {"2.0/mlflow/registered-models/get", "2.0/mlflow/registered-models/get-latest-versions",
               "2.0/mlflow/registered-models/alias", "2.0/mlflow/model-versions/get",
               "2.0/mlflow/model-versions/get-download-uri", "model-versions/get-artifact"}
MODEL_LISTS = {"2.0/mlflow/registered-models/search", "2.0/mlflow/model-versions/search", "graphql"}
# Parts of MLflow that hold secrets or run things for the whole install: admins only, reads too.
ADMIN_ONLY = ("3.0/mlflow/gateway/", "2.0/mlflow/gateway-proxy", "2.0/mlflow/webhooks", "3.0/mlflow/workspaces",
              "3.0/mlflow/assistant", "3.0/jobs", "3.0/mlflow/secrets", "gateway/", "v1/traces", "mcp")


_ARTIFACT_FILES = "2.0/mlflow-artifacts/artifacts/"


def _pattern(path: str) -> re.Pattern[str]:
    regex = re.sub(r"\\\{path\\\}", "(?P<path>.+)", re.escape(path))
    return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", regex) + "$")


_PATTERNS = [(method, _pattern(path), rule) for (method, path), rule in MUTATIONS.items()]


def endpoint(path: str) -> str:
    """The endpoint of a path under ``/mlflow``: ``/api/2.0/mlflow/runs/get`` and ``/ajax-api/2.0/...`` both give
    ``2.0/mlflow/runs/get``; other paths (pages, ``graphql``) lose their leading ``/``."""
    path = path.lstrip("/")
    for root in ("api/", "ajax-api/"):
        if path.startswith(root):
            return path[len(root):]
    return path


def rule_of(method: str, path: str) -> tuple[Rule | None, dict[str, str]]:
    """The rule for ``method`` on ``path`` (under ``/mlflow``) and the path's named parts; None for a read.
    Raises :class:`PermissionError` for what only admins may do through the server."""
    name = endpoint(path)
    if name.startswith(ADMIN_ONLY):
        raise PermissionError(name)
    for rule_method, pattern, rule in _PATTERNS:
        found = pattern.match(name)
        if found and rule_method == method:
            return rule, found.groupdict()
    if method in ("GET", "HEAD", "OPTIONS") or (method == "POST" and name in READS):
        return None, {}
    raise PermissionError(name)


def mlflow_error(status: int, code: str, message: str) -> JSONResponse:
    """An answer in MLflow's error shape, which its clients turn into an MlflowException with ``message``."""
    return JSONResponse({"error_code": code, "message": message}, status_code=status)


class MlflowProxy:
    """``/mlflow/...`` of the platform server: judged here, answered by the MLflow server at ``upstream``
    (``http://127.0.0.1:<port>/mlflow``); ``ownership`` gives registered models' teams."""

    def __init__(self, upstream: str, authenticator: Authenticator, ownership: Ownership,
                 timeout: float = 600.0):
        self.upstream = upstream.rstrip("/")
        parts = urlsplit(self.upstream)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.authenticator = authenticator
        self.ownership = ownership
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=False)

    def routes(self) -> list[BaseRoute]:
        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return [Route(PREFIX, self.handle, methods=methods), Route(PREFIX + "/{rest:path}", self.handle, methods=methods)]

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- a request -----------------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path = request.url.path[len(PREFIX):] or "/"
        if any(part in (".", "..") for part in path.split("/")):  # judged as written, forwarded as written
            return mlflow_error(400, "INVALID_PARAMETER_VALUE", "A path with '.' or '..' parts is not forwarded.")
        if path == "/health" and request.method in ("GET", "HEAD"):  # liveness, without a token (as /api/v1/health)
            return await self._forward(request, path, None)
        if request.method == "GET" and "token" in request.query_params and endpoint(path) in ("", "/"):
            return await self._log_in(request)
        try:
            identity = await self._identify(request)
        except errors.NotAuthenticated as exc:
            return mlflow_error(401, "UNAUTHENTICATED", str(exc))
        except errors.MlplatError as exc:
            return mlflow_error(503, "TEMPORARILY_UNAVAILABLE", str(exc))
        try:
            rule, parts = rule_of(request.method, path)
        except PermissionError as exc:
            if not identity.admin:
                return mlflow_error(403, "PERMISSION_DENIED", (
                    f"{identity.name} may not {request.method} {exc.args[0]} through the platform server: only "
                    "platform admins may. See mlplat.server.mlflow_proxy for what it allows."))
            rule, parts = None, {}
        body: bytes | None = None
        lists_models = rule is None and endpoint(path) in MODEL_LISTS and not identity.admin
        try:
            if rule is None and endpoint(path) in MODEL_READS and not identity.admin:
                if request.method == "GET":
                    model = request.query_params.get("name")
                else:
                    body = await self._json_body(request)
                    model = _json_object(body).get("name")
                if isinstance(model, str):
                    await run_in_threadpool(self._refuse_hidden, identity, model)
            if rule is not None:
                if rule.source == "path":
                    fields: dict[str, Any] = parts
                elif rule.source == "query":
                    fields = dict(request.query_params)
                else:  # MLflow reads a POST, PATCH or DELETE's JSON body alone: so do the rules
                    body = await self._json_body(request)
                    fields = _json_object(body)
                body = await self.authorize(identity, rule, fields, endpoint(path), body)
        except errors.PermissionDenied as exc:
            return mlflow_error(403, "PERMISSION_DENIED", str(exc))
        except errors.InvalidArgument as exc:
            return mlflow_error(400, "INVALID_PARAMETER_VALUE", str(exc))
        except errors.MlplatError as exc:
            return mlflow_error(503, "TEMPORARILY_UNAVAILABLE", str(exc))
        return await self._forward(request, path, body, identity if lists_models else None)

    async def _identify(self, request: Request) -> Identity:
        from mlplat.server.app import token_of

        token = token_of(request)
        if not token and COOKIE in request.cookies:
            # The UI in a browser: its cookie stands for the token, but only on requests from MLflow's own pages.
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                raise errors.NotAuthenticated("A request from another site does not carry the MLflow UI's login.")
            token = request.cookies[COOKIE]
        return await run_in_threadpool(self.authenticator.identify, token)

    async def _log_in(self, request: Request) -> Response:
        """``/mlflow/?token=X``: check the token, keep it in a cookie for the UI's pages, and drop it from the URL."""
        token = request.query_params["token"]
        try:
            await run_in_threadpool(self.authenticator.identify, token)
        except errors.MlplatError as exc:
            return mlflow_error(401, "UNAUTHENTICATED", str(exc))
        answer = RedirectResponse(f"{PREFIX}/", status_code=303)
        answer.set_cookie(COOKIE, token, path=PREFIX, httponly=True, samesite="strict",
                          secure=request.url.scheme == "https")
        return answer

    async def _json_body(self, request: Request) -> bytes:
        if int(request.headers.get("content-length") or 0) > MAX_JSON:
            raise errors.InvalidArgument(f"The request is over {MAX_JSON >> 20} MiB; send it in parts.")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON:
                raise errors.InvalidArgument(f"The request is over {MAX_JSON >> 20} MiB; send it in parts.")
        return bytes(body)

    # -- the rules -------------------------------------------------------------------------------------------
    async def authorize(self, identity: Identity, rule: Rule, fields: dict[str, Any], name: str,
                        body: bytes | None) -> bytes | None:
        """Raise PermissionDenied unless ``identity`` may do what ``rule`` says to the object ``fields`` name; return
        the body to forward (the server fills in what it decides: a new object's team, a new run's user)."""
        if rule.kind == "team":
            return self._create(identity, rule, fields, name, body)
        target = fields.get(rule.target) or (fields.get("run_uuid") if rule.kind == "run" else None)  # as MLflow
        if not target and name.endswith("runs/create"):
            target = "0"  # MLflow's Default experiment
        if not target or not isinstance(target, str):
            raise errors.InvalidArgument(f"The request needs {rule.target!r}, a string.")
        team = await self.team_of(rule.kind, target)
        if team is None:  # no such object: MLflow says so
            return body
        label = {"logged_model": "logged model", "artifacts": "experiment"}.get(rule.kind, rule.kind)
        obj = target.strip("/").split("/", 1)[0] if rule.kind == "artifacts" else target
        _refuse_pin_writes(identity, fields, label, obj)
        if rule.tag and fields.get(rule.tag) == TEAM_TAG:
            require(identity, "owner", "transfer", label, obj, team)
            new = fields.get("value")
            if new:
                require(identity, "editor", "transfer into", "team", new, str(new))
        else:
            require(identity, rule.role, rule.action, label, obj, team)
        if name.endswith("registered-models/rename"):
            _check_model_name(fields.get("new_name"))
        if name.endswith("runs/create"):
            return _with_user(body, identity)
        return body

    def _create(self, identity: Identity, rule: Rule, fields: dict[str, Any], name: str, body: bytes | None) -> bytes:
        """A new experiment or registered model: in the team its tag asks for, else the caller's."""
        data = _json_object(body)
        kind = "experiment" if "experiments/" in name else "model"
        if kind == "model":
            _check_model_name(data.get("name"))
        tags = [t for t in data.get("tags") or [] if isinstance(t, dict)]
        asked = [t.get("value") for t in tags if t.get("key") == TEAM_TAG]
        team = str(asked[-1]) if asked and asked[-1] else identity.team
        require(identity, "editor", rule.action, kind, data.get("name", ""), team)
        data["tags"] = [t for t in tags if t.get("key") != TEAM_TAG] + [{"key": TEAM_TAG, "value": team}]
        data.pop("artifact_location", None)  # the served root decides: mlflow-artifacts:/<experiment id>
        return json.dumps(data).encode()

    def _refuse_hidden(self, identity: Identity, model: str) -> None:
        if self.ownership.hidden(identity, "model", model):
            require(identity, "viewer", "read", "model", model, self.ownership.team("model", model))

    def visible(self, identity: Identity, answer: Any) -> Any:
        """``answer`` (MLflow's JSON) without the registered models and versions private to teams ``identity`` is
        not in: objects with a ``name`` and a ``version``, ``latest_versions`` or ``creation_timestamp``."""
        hidden: dict[str, bool] = {}

        def shown(item: Any) -> bool:
            if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                    and {"version", "latest_versions", "latestVersions", "creation_timestamp",
                         "creationTimestamp"} & item.keys()):
                return True
            name = item["name"]
            tags = item.get("tags")
            if "version" not in item and isinstance(tags, list) and not any(
                    isinstance(t, dict) and t.get("key") == PRIVATE_TAG and t.get("value") == "true" for t in tags):
                return True  # a registered model with its tags: not private, no need to ask
            if name not in hidden:
                hidden[name] = self.ownership.hidden(identity, "model", name)
            return not hidden[name]

        def walk(value: Any) -> Any:
            if isinstance(value, list):
                return [walk(item) for item in value if shown(item)]
            if isinstance(value, dict):
                return {key: walk(item) for key, item in value.items()}
            return value

        return walk(answer)

    async def team_of(self, kind: str, target: str) -> str | None:
        """The team owning ``kind`` ``target`` ("" for none), or None when there is no such object."""
        if kind == "model":
            try:
                return await run_in_threadpool(self.ownership.team, "model", target)
            except errors.ModelNotFound:
                return None
            except errors.InvalidArgument:  # a name mlplat cannot use: made elsewhere, only admins change it
                return ""
        if kind == "run":
            found = await self._get("2.0/mlflow/runs/get", run_id=target)
            return None if found is None else await self._experiment_team(found["run"]["info"]["experiment_id"])
        if kind == "logged_model":
            found = await self._get(f"2.0/mlflow/logged-models/{target}")
            return None if found is None else await self._experiment_team(found["model"]["info"]["experiment_id"])
        if kind == "artifacts":  # no experiment: nobody but admins writes there (a future experiment's folder)
            first = target.strip("/").split("/", 1)[0]
            return (await self._experiment_team(first) or "") if first.isdigit() else ""
        return await self._experiment_team(target)

    async def _experiment_team(self, experiment_id: str) -> str | None:
        found = await self._get("2.0/mlflow/experiments/get", experiment_id=experiment_id)
        if found is None:
            return None
        tags = found["experiment"].get("tags") or []
        return next((str(t.get("value") or "") for t in tags if t.get("key") == TEAM_TAG), "")

    async def _get(self, name: str, **params: str) -> dict[str, Any] | None:
        try:
            answer = await self.http.get(f"{self.upstream}/api/{name}", params=params)
        except httpx.HTTPError as exc:
            raise errors.ServiceError(f"The platform's MLflow server does not answer ({exc}).") from None
        if answer.status_code in (400, 404):
            return None
        if answer.status_code != 200:
            raise errors.ServiceError(f"The platform's MLflow server answered {answer.status_code} to {name}.")
        return answer.json()

    # -- forwarding ------------------------------------------------------------------------------------------
    async def _forward(self, request: Request, path: str, body: bytes | None,
                       filtered_for: Identity | None = None) -> Response:
        """Send the request on to MLflow and stream its answer back (an answer listing models, ``filtered_for``
        an identity: read whole, without what is private to teams they are not in)."""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED]
        streams = "content-length" in request.headers or "transfer-encoding" in request.headers
        content: Any = body if body is not None else request.stream() if streams else None
        if body is not None:
            headers.append(("content-length", str(len(body))))
        elif "content-length" in request.headers:
            headers.append(("content-length", request.headers["content-length"]))
        # The path as the client wrote it (its %-escapes kept): MLflow decodes it as the rules did (httpx given the
        # decoded path would re-encode it and resolve any "..").
        raw = request.scope.get("raw_path") or b""
        rest = raw[len(PREFIX):].decode("latin-1") if raw.startswith(PREFIX.encode()) else quote(path)
        # Artifact downloads and uploads go to MLflow's own streaming routes, which it serves without its path prefix
        # (ten times faster than the prefixed ones: 600 MB in 1.7 s instead of 18 s here).
        native = request.method in ("GET", "PUT") and endpoint(path).startswith(_ARTIFACT_FILES)
        url = (self.origin if native else self.upstream) + rest
        if request.url.query:
            url += f"?{request.url.query}"
        outgoing = self.http.build_request(request.method, url, headers=headers, content=content)
        try:
            answer = await self.http.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            log.warning("MLflow did not answer %s %s: %s", request.method, path, exc)
            return mlflow_error(502, "TEMPORARILY_UNAVAILABLE",
                                f"The platform's MLflow server did not answer ({type(exc).__name__}); try again, "
                                "or tell the platform's operators if it persists.")
        back = [(k, v) for k, v in answer.headers.multi_items()
                if k.lower() not in _HOP_BY_HOP or k.lower() == "content-length"]
        back = [(k, v.replace(self.origin, "", 1) if k.lower() == "location" else v) for k, v in back]
        if filtered_for is not None and answer.status_code == 200 and \
                answer.headers.get("content-type", "").startswith("application/json"):
            try:
                data = json.loads(await answer.aread())
            finally:
                await answer.aclose()
            shown = await run_in_threadpool(self.visible, filtered_for, data)
            return JSONResponse(shown, headers={k: v for k, v in back if k.lower() not in ("content-length",
                                                                                         "content-type",
                                                                                         "content-encoding")})
        response = StreamingResponse(answer.aiter_raw(), status_code=answer.status_code,
                                     background=BackgroundTask(answer.aclose))
        response.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in back]
        return response


def _json_object(body: bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise errors.InvalidArgument("The request's body is not JSON.") from None
    if not isinstance(data, dict):
        raise errors.InvalidArgument("The request's body is not a JSON object.")
    return data


def _with_user(body: bytes | None, identity: Identity) -> bytes:
    """A new run's body naming the caller as its user (not whatever the client's environment said)."""
    data = _json_object(body)
    data["user_id"] = identity.name
    data["tags"] = [t for t in data.get("tags") or [] if isinstance(t, dict) and t.get("key") != "mlflow.user"] + \
        [{"key": "mlflow.user", "value": identity.name}]
    return json.dumps(data).encode()


def _refuse_pin_writes(identity: Identity, fields: dict[str, Any], kind: str, obj: str) -> None:
    """Only the platform pins model files (``mlplat.artifact_*`` tags, :mod:`mlplat.registry.integrity`): a client
    that could rewrite a pin could make tampered files load. Admins re-pin through ``p.models.pin``."""
    keys = [fields.get("key")] + [t.get("key") for t in fields.get("tags") or [] if isinstance(t, dict)]
    if not identity.admin and any(isinstance(k, str) and k.startswith(PINNED) for k in keys):
        raise errors.PermissionDenied(
            f"{identity.name} may not set the {PIN_PREFIX}* tags of {kind} {obj!r}: the platform pins model files "
            "when it registers a version; a platform admin re-pins with p.models.pin.",
            action="pin", kind=kind, obj=obj, role="admin")


def _check_model_name(name: Any) -> None:
    from mlplat.registry.names import check_model_name

    check_model_name(name)


def start_backing(settings: Any) -> tuple[str, Any]:
    """The MLflow server the proxy forwards to, for ``settings``: ``(url, service)``.

    A tracking store that is a database (SQLite, PostgreSQL) gets :class:`ServedMlflow`, started or reused (the
    caller stops ``service`` when it stops); an ``http(s)`` tracking URI is an MLflow server elsewhere, used as it
    is (``service`` None), which must then serve the artifacts itself (``--serve-artifacts``).
    """
    from mlplat.training.mlflow_service import ServedMlflow

    if not ServedMlflow.wanted(settings):
        return settings.tracking.rstrip("/"), None
    service = ServedMlflow(settings)
    return service.ensure().url, service
