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
admin's alone. The passwords are kept in ``$MLPLAT_HOME/run/redis-users/<role>`` (0600, made once); Redis gets
their SHA-256 only, in an ACL file next to them. ``mlplat server`` hands the reader's URL to workspaces.
On Redis 6 (no read/write key selectors) the reader's and monitor's commands are limited as on 7, but the keys
they may write are not told apart from those they may read.
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlplat.config import Settings
from mlplat.errors import ConfigError
from mlplat.files import secret_file

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


def password_file(settings: Settings, role: str) -> Path:
    """Where the install keeps ``role``'s Redis password (0600, in a 0700 folder)."""
    return settings.run_dir / "redis-users" / role


def acl_file(settings: Settings) -> Path:
    """The ACL file the embedded Redis loads (0600): users, their rules, their passwords' SHA-256."""
    return settings.run_dir / "redis.acl"


def password(settings: Settings, role: str) -> str:
    """``role``'s password, made (0600, once, whoever comes first) when the install has none yet."""
    path = password_file(settings, role)
    try:
        return secret_file(path)
    except PermissionError:
        raise ConfigError(f"{path.parent} (the online store's passwords) is not readable by this account; run as "
                          "the install's owner, or in a workspace use the platform server (MLPLAT_SERVER_URL).") from None


def acl(settings: Settings, selectors: bool = True) -> str:
    """The ACL file's text for ``settings``' key prefix; ``selectors``: Redis 7's %R~/%W~ key permissions."""
    prefix = settings.online_prefix  # load_settings allows no glob characters in it
    read_keys = "%R~" if selectors else "~"  # Redis 6: readable keys are writable too (by these commands)
    lines = [f"user {user_name('admin')} on #{_sha(password(settings, 'admin'))} ~* &* +@all"]
    for role, (commands, read, write) in _RULES.items():
        keys = [f"{read_keys}{prefix}:{p}" for p in read] + [f"~{prefix}:{p}" for p in write]
        lines.append(f"user {user_name(role)} on #{_sha(password(settings, role))} resetkeys {' '.join(keys)} "
                     f"resetchannels -@all {CONNECTION} {commands}")
    return "\n".join(lines) + "\n"


def with_user(url: str, settings: Settings, role: str) -> str:
    """``url`` (``redis://host:port/db``) logging in as ``role``."""
    if role not in ROLES:
        raise ConfigError(f"{role!r} is not a role of the online store's users (online_user); "
                          f"use one of {', '.join(ROLES)}.")
    parts = urlsplit(url)
    where = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user_name(role)}:{password(settings, role)}@{where}"))


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
