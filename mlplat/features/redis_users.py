"""Who may do what in the embedded Redis: one ACL user per role, with no default user.

The embedded Redis answers nobody who has not logged in: its default user has a password. Each process logs in as the role it needs and no more:

==========  ================================================================================================
admin       everything (``mlplat server``, the scheduler, a laptop's own notebooks: whoever owns the home)
            as Redis's ``default`` user, with a password: Redis replays its append-only file as ``default``, and
            drops the transactions it replays when that user may not run them (redis/redis#14541)
reader      reads online features; logs predictions and counts them (workspaces in server mode, ``p.predict``,
            Triton's ``<model>_by_id``)
producer    appends events to the event streams ``<prefix>:events:*`` (services that push events), nothing else
consumer    the stream service: reads event streams in groups, writes online features, its own state
monitor     the monitor service: reads the prediction log in its group and the counters, writes drift and alerts
==========  ================================================================================================

``CONFIG``, ``SHUTDOWN``, ``FLUSHALL``, ``DEBUG`` and the other ``@dangerous``/``@admin`` commands are the
admin's alone. The passwords are kept in ``$MLPLAT_HOME/run/redis-users.json`` (0600, made once); Redis gets
their SHA-256 only, in an ACL file next to them. ``mlplat server`` hands the reader's URL to workspaces.
On Redis 6 (no read/write key selectors) the reader's and monitor's commands are limited as on 7, but the keys
they may write are not told apart from those they may read.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlplat.config import Settings
from mlplat.errors import ConfigError

ROLES = ("admin", "reader", "producer", "consumer", "monitor")

CONNECTION = "+ping +hello +select +echo +reset +client|setname +client|id"
READ_ONLINE = "+get +mget +exists +type +ttl +pttl +strlen +hget +hmget +hgetall +hlen +smembers +scard " \
              "+zrange +zscore +zcard +xlen"
# The roles' commands (beyond CONNECTION) and keys: (read-only patterns, read-write patterns), under "<prefix>:".
_RULES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "reader": (f"{READ_ONLINE} +xadd +sadd +hincrby +hincrbyfloat +incrby",
               ("*",), ("predictions", "metrics", "metrics:*")),
    "producer": ("+xadd", (), ("events:*",)),
    "consumer": ("+@read +@write +@stream +@hash +@string +@sortedset +@set +@hyperloglog +@keyspace +@transaction "
                 "+@scripting -@dangerous -@admin -function -script|flush -script|kill", (), ("*",)),
    "monitor": ("+@read -@dangerous +xreadgroup +xack +xdel +xgroup|create +hset +hdel +del +multi +exec +discard "
                "+watch +unwatch", ("*",), ("predictions", "drift", "drift:*", "alerts", "checked:*")),
}


def users_file(settings: Settings) -> Path:
    """Where the install keeps its Redis users' passwords (0600)."""
    return settings.run_dir / "redis-users.json"


def acl_file(settings: Settings) -> Path:
    """The ACL file the embedded Redis loads (0600): users, their rules, their passwords' SHA-256."""
    return settings.run_dir / "redis.acl"


def passwords(settings: Settings) -> dict[str, str]:
    """Each role's password, made (0600, once, whoever comes first) when the install has none yet."""
    path = users_file(settings)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        made = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({role: secrets.token_hex(24) for role in ROLES}, handle)
        with contextlib.suppress(FileExistsError):
            os.link(made, path)  # the first maker wins; the others read its file
        made.unlink()
    try:
        found = json.loads(path.read_text())
    except PermissionError:
        raise ConfigError(f"{path} (the online store's passwords) is not readable by this account; run as the "
                          "install's owner, or in a workspace use the platform server (MLPLAT_SERVER_URL).") from None
    except ValueError:
        raise ConfigError(f"{path} is damaged; stop the platform (`mlplat down`), delete it and start again "
                          "(`mlplat up`): new passwords are made.") from None
    return {role: found[role] for role in ROLES}


def acl(settings: Settings, selectors: bool = True) -> str:
    """The ACL file's text for ``settings``' key prefix; ``selectors``: Redis 7's %R~/%W~ key permissions."""
    prefix = settings.online_prefix  # load_settings allows no glob characters in it
    secret = passwords(settings)
    lines = [f"user {user_name('admin')} on #{_sha(secret['admin'])} ~* &* +@all"]
    for role, (commands, read, write) in _RULES.items():
        read_keys = "%R~" if selectors else "~"  # Redis 6: readable keys are writable too (by these commands)
        keys = [f"{read_keys}{prefix}:{p}" for p in read] + [f"~{prefix}:{p}" for p in write]
        lines.append(f"user {user_name(role)} on #{_sha(secret[role])} resetkeys {' '.join(keys)} "
                     f"resetchannels -@all {CONNECTION} {commands}")
    return "\n".join(lines) + "\n"


def with_user(url: str, settings: Settings, role: str) -> str:
    """``url`` (``redis://host:port/db``) logging in as ``role``."""
    if role not in ROLES:
        raise ConfigError(f"{role!r} is not a role of the online store's users (online_user); "
                          f"use one of {', '.join(ROLES)}.")
    parts = urlsplit(url)
    where = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user_name(role)}:{passwords(settings)[role]}@{where}"))


def without_password(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``: for status lines and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def user_name(role: str) -> str:
    """The Redis ACL user of ``role``: ``default`` for the admin, ``mlplat-<role>`` for the others."""
    return "default" if role == "admin" else f"mlplat-{role}"


@functools.cache
def has_selectors(binary: str) -> bool:
    """True when the redis-server at ``binary`` is 7 or newer (read/write key selectors)."""
    found = re.search(r"v=(\d+)", subprocess.run([binary, "--version"], capture_output=True, text=True).stdout)
    return bool(found) and int(found.group(1)) >= 7


def _sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()
