"""The SDK's side of server mode: calls sent to ``mlplat server`` with the user's token.

:class:`ServerClient` sends one call and turns the server's refusal back into the same
:class:`~mlplat.errors.MlplatError` the library would have raised in embedded mode. :func:`sends` makes a
library class whose chosen methods run on the server; :class:`RemotePart` forwards every method of a part.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from mlplat import errors
from mlplat.remote import protocol

TOKEN_VARIABLES = ("MLPLAT_SERVER_TOKEN", "JUPYTERHUB_API_TOKEN")  # the first set is the caller's token


def token_from_env() -> str:
    """The caller's token: ``MLPLAT_SERVER_TOKEN``, else the workspace's ``JUPYTERHUB_API_TOKEN``."""
    for name in TOKEN_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    raise errors.NotAuthenticated("Server mode needs your JupyterHub token: inside a workspace it is "
                                  "JUPYTERHUB_API_TOKEN; elsewhere set MLPLAT_SERVER_TOKEN to a token from the hub's "
                                  "token page (/hub/token).")


class ServerClient:
    """One platform server at ``url``, called with ``token``; safe to share between threads."""

    def __init__(self, url: str, token: str, timeout: float = 600.0):
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0),
                                  headers={"Authorization": f"token {token}"} if token else {})

    def whoami(self) -> dict[str, Any]:
        """The identity the server sees: name, roles per team, admin, default team."""
        return json.loads(self._send("GET", "/api/v1/whoami"))

    def online_store(self) -> dict[str, str]:
        """The online store as the server hands it to workspaces: ``url`` (a user that only reads) and ``prefix``."""
        return json.loads(self._send("GET", "/api/v1/online-store"))

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run library call ``name`` (``"models.promote"``) on the server as this client's user."""
        body = protocol.encode({"args": list(args), "kwargs": kwargs})
        answer = self._send("POST", f"/api/v1/call/{name}", content=body, headers={"Content-Type": protocol.CONTENT_TYPE})
        return protocol.decode(answer, objects=True)

    def _send(self, method: str, path: str, **options: Any) -> bytes | bytearray:
        """The body of the server's answer; a refusal raises the error it stands for."""
        try:
            with self._http.stream(method, path, **options) as response:
                if response.status_code != 200:
                    response.read()
                    raise refusal_error(response, self.url)
                return _body(response)
        except httpx.HTTPError as exc:
            raise errors.ServerUnavailable(f"The platform server at {self.url} cannot be reached ({exc}); check "
                                           "MLPLAT_SERVER_URL, or ask the operators whether `mlplat server` runs.") from None

    def close(self) -> None:
        self._http.close()


def _body(response: httpx.Response) -> bytes | bytearray:
    """A response's body, read into one buffer of its stated length: a large table is copied once, not gathered
    from chunks and joined (that took twice as long)."""
    size = response.headers.get("content-length")
    if size is None or response.headers.get("content-encoding"):
        return response.read()
    body, end = bytearray(int(size)), 0
    for chunk in response.iter_raw():
        body[end:end + len(chunk)] = chunk
        end += len(chunk)
    return body


def refusal_error(response: httpx.Response, url: str) -> errors.MlplatError:
    """The error a refusal from the server stands for: the library's own class, message and fields."""
    try:
        body = response.json()
        cls = getattr(errors, body["error"], None)
        message = str(body["message"])
    except (ValueError, KeyError, TypeError):
        return errors.ServerUnavailable(f"{url} answered {response.status_code} and not as a platform server: "
                                        f"{response.text[:200]!r}. Check MLPLAT_SERVER_URL.")
    if not (isinstance(cls, type) and issubclass(cls, errors.MlplatError)):
        cls = errors.ServerUnavailable
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    for key, value in (body.get("fields") or {}).items():
        setattr(error, key, value)
    return error


def _sender(name: str, like: Callable[..., Any] | None) -> Callable[..., Any]:
    def send(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self._server.call(name, *args, **kwargs)

    if like is not None:
        functools.update_wrapper(send, like)
    return send


T = TypeVar("T", bound=type)


def sends(part: str, *names: str) -> Callable[[T], T]:
    """Class decorator: methods ``names`` run on the server as ``part.name`` (instances set ``_server``)."""

    def decorate(cls: T) -> T:
        for name in names:
            setattr(cls, name, _sender(f"{part}.{name}", getattr(cls, name, None)))
        return cls

    return decorate


class RemotePart:
    """A part of the platform (``jobs``, ``monitor``, ...) whose every method runs on the server."""

    def __init__(self, server: ServerClient, part: str, doc: str = ""):
        self._server = server
        self._part = part
        self.__doc__ = doc

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self._server.call, f"{self._part}.{name}")

    def __repr__(self) -> str:
        return f"<mlplat {self._part} on {self._server.url}>"
