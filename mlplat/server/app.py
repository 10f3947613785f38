"""``mlplat server``: the one process that holds the platform's write credentials and judges every request.

It runs an embedded :class:`~mlplat.platform.Platform` on the shared stores (metadata database, MLflow,
Triton model control, the offline store's write path) and answers the SDK over HTTP:

- ``POST /api/v1/call/<part.method>``: one library call (see :mod:`mlplat.server.calls`), arguments and
  result in :mod:`mlplat.remote.protocol`; run as the caller, so the audit trail names them;
- ``GET /api/v1/whoami``: the caller's identity; ``GET /api/v1/health``: liveness, without a token.

Every request but ``health`` carries the caller's JupyterHub token (``Authorization: token <token>``).
Refusals are JSON ``{"error": class, "message": ..., "fields": {...}}``: 401 without a valid token, 403 for
:class:`~mlplat.errors.PermissionDenied`, 404 for what does not exist, 400 for other mistakes.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mlplat import errors
from mlplat.identity import Identity, acting_as
from mlplat.remote import protocol
from mlplat.server.authentication import Authenticator
from mlplat.server.calls import Calls

log = logging.getLogger("mlplat.server")
_NOT_FOUND = (errors.FeatureViewNotFound, errors.FeatureNotFound, errors.ModelNotFound, errors.ScheduleNotFound)
MAX_BODY = 2 << 30  # 2 GiB: a large ingest, not a memory exhaustion


def token_of(request: Request) -> str:
    """The bearer token of a request: ``Authorization: token X`` (JupyterHub's form) or ``Bearer X``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() in ("token", "bearer") else ""


def refusal(exc: errors.MlplatError) -> JSONResponse:
    """The JSON answer to a refused request, with the status its error class calls for."""
    status = (401 if isinstance(exc, errors.NotAuthenticated) else 403 if isinstance(exc, errors.PermissionDenied)
              else 404 if isinstance(exc, _NOT_FOUND) else 503 if isinstance(exc, errors.ServiceError) else 400)
    fields = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, list, dict))}
    return JSONResponse({"error": type(exc).__name__, "message": str(exc), "fields": fields}, status_code=status)


class PlatformServer:
    """The HTTP front of ``platform``: ``authenticator`` says who calls, :class:`Calls` what they may do."""

    def __init__(self, platform: Any, authenticator: Authenticator, extra_routes: list[BaseRoute] | None = None):
        self.platform = platform
        self.authenticator = authenticator
        self.calls = Calls(platform)
        routes = [Route("/api/v1/health", self.health), Route("/api/v1/whoami", self.whoami),
                  Route("/api/v1/online-store", self.online_store),
                  Route("/api/v1/call/{name}", self.call, methods=["POST"]), *(extra_routes or [])]
        self.app = Starlette(routes=routes)

    async def identify(self, request: Request) -> Identity:
        """The caller of ``request``, or NotAuthenticated."""
        return await run_in_threadpool(self.authenticator.identify, token_of(request))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def whoami(self, request: Request) -> Response:
        try:
            identity = await self.identify(request)
        except errors.MlplatError as exc:
            return refusal(exc)
        return JSONResponse({"name": identity.name, "roles": dict(identity.roles), "admin": identity.admin,
                             "team": identity.team})

    async def online_store(self, request: Request) -> Response:
        """Where a workspace reads online features: the online store's read-only URL and its key prefix."""
        from mlplat.features.redis_service import reader_url

        try:
            await self.identify(request)
            url = await run_in_threadpool(reader_url, self.platform.settings)
        except errors.MlplatError as exc:
            return refusal(exc)
        return JSONResponse({"url": url, "prefix": self.platform.settings.online_prefix})

    async def call(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            identity = await self.identify(request)
            if int(request.headers.get("content-length") or 0) > MAX_BODY:
                raise errors.InvalidArgument(f"The request is over {MAX_BODY >> 30} GiB; send it in parts.")
            body = await run_in_threadpool(protocol.decode, await request.body())
            if not isinstance(body, dict) or not isinstance(body.get("args", []), list) \
                    or not isinstance(body.get("kwargs", {}), dict):
                raise errors.InvalidArgument("Send {'args': [...], 'kwargs': {...}} as the call's body.")
            answer = await run_in_threadpool(self._run, identity, name, body.get("args", []), body.get("kwargs", {}))
        except errors.MlplatError as exc:
            return refusal(exc)
        except Exception:
            log.exception("call %s failed", name)
            return JSONResponse({"error": "ServerError", "message": f"The platform server failed on {name}; its "
                                 "log has the details. Tell the platform's operators.", "fields": {}},
                                status_code=500)
        return Response(answer, media_type=protocol.CONTENT_TYPE)

    def _run(self, identity: Identity, name: str, args: list[Any], kwargs: dict[str, Any]) -> bytes:
        with acting_as(identity):
            return protocol.encode(self.calls.run(identity, name, args, kwargs))
