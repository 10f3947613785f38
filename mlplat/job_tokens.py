"""Job tokens: what a scheduled notebook's kernel calls ``mlplat server`` with, as its schedule's owner.

A token reads ``mlplat-job.<user>.<expiry>.<signature>``: the user, the Unix time it expires at, and an
HMAC-SHA256 of both under the install's job secret (``$MLPLAT_HOME/run/job-token.secret``, 0600, made on first
use). The scheduler makes one for each attempt of a job, valid for as long as the job may run; the server,
which shares ``$MLPLAT_HOME`` with it, checks the signature and the expiry and then asks its usual source of
identities (the hub, a tokens file) who that user is now, so a token carries a name and never rights.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from pathlib import Path

from mlplat.errors import NotAuthenticated
from mlplat.files import secret_file

PREFIX = "mlplat-job."
SECRET_FILE = "job-token.secret"


class JobTokens:
    """Makes and checks job tokens with the secret kept in ``run_dir``."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / SECRET_FILE

    def make(self, user: str, seconds: float) -> str:
        """A token naming ``user`` that expires ``seconds`` from now."""
        expiry = str(int(time.time() + seconds))
        return f"{PREFIX}{user}.{expiry}.{self._sign(user, expiry)}"

    def user_of(self, token: str) -> str:
        """The user a valid, unexpired token names; NotAuthenticated for any other."""
        parts = token.removeprefix(PREFIX).rsplit(".", 2)
        user, expiry, signature = parts if len(parts) == 3 else ("", "", "")
        if not (is_job_token(token) and user and re.fullmatch(r"[0-9]{1,12}", expiry)) or \
                not hmac.compare_digest(signature.encode(errors="replace"), self._sign(user, expiry).encode()):
            raise NotAuthenticated("This job token is not one the scheduler made (malformed, or its signature does "
                                   "not match); only a scheduled job's kernel gets one.")
        if int(expiry) < time.time():
            raise NotAuthenticated(f"This job token for {user} expired at {expiry} (Unix time): it lasts as long as "
                                   "its job may run. Run the job again for a new one.")
        return user

    def _sign(self, user: str, expiry: str) -> str:
        secret = secret_file(self.path)
        if not secret:
            raise NotAuthenticated(f"{self.path} is empty, so no job token can be checked: delete it and restart "
                                   "the scheduler and the server (a new secret is made).")
        message = f"{PREFIX}\0{user}\0{expiry}".encode()
        return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def is_job_token(token: str) -> bool:
    """Whether ``token`` claims to be a job token (the others are the hub's or a tokens file's)."""
    return token.startswith(PREFIX)
