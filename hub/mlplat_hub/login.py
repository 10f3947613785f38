"""Sign-up with a password, approved by an admin: NativeAuthenticator, for hubs whose users have accounts.

``MLPLAT_HUB_AUTHENTICATOR=native`` (the default with ``MLPLAT_HUB_ACCOUNTS=1``) uses
:class:`NativeAuthenticator`: people sign up at ``/hub/signup``, an admin (``MLPLAT_HUB_ADMINS``)
approves them at ``/hub/authorize``, then each logs in with their own password. nativeauthenticator
1.3's login page still times logins with statsd, which JupyterHub 6 removed; this one runs without it.
"""

from __future__ import annotations

from nativeauthenticator import NativeAuthenticator as _NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as _LoginHandler


class _NoTimer:
    """Stands in for the statsd timer that nativeauthenticator's login handler starts and stops."""

    def timer(self, name: str) -> _NoTimer:
        return self

    def start(self) -> _NoTimer:
        return self

    def stop(self, send: bool = True) -> None:
        return None


class LoginHandler(_LoginHandler):
    """nativeauthenticator's login page (with its sign-up link and "not approved yet" message) on JupyterHub 6."""

    statsd = _NoTimer()

    def _render(self, login_error=None, username=None, **ignored):
        # JupyterHub 6 renders a failed form post's error page through _render with more keywords.
        return super()._render(login_error=login_error, username=username)


class NativeAuthenticator(_NativeAuthenticator):
    """NativeAuthenticator with :class:`LoginHandler`."""

    def get_handlers(self, app):
        return [(path, LoginHandler if handler is _LoginHandler else handler)
                for path, handler in super().get_handlers(app)]
