"""Redis Lua scripts the stream consumer and the backfill share, so both write and count the same way.

Each is registered once per client (:func:`script`) and runs as one command: inside the
consumer's ``MULTI`` it is queued with the batch's other writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import redis

_LUA = {
    # state blobs: SET key blob PX ttl
    "set_many": """
        for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1]) end
        return #KEYS""",
    # online records: SET key record [PXAT at]; at 0: no expiry, -1: already expired, delete
    "set_records": """
        for i = 1, #KEYS do
            local at = ARGV[2 * i]
            if at == '0' then redis.call('SET', KEYS[i], ARGV[2 * i - 1])
            elseif at == '-1' then redis.call('DEL', KEYS[i])
            else redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'PXAT', at) end
        end
        return #KEYS""",
    "incr_many": """
        for i = 1, #KEYS do redis.call('INCR', KEYS[i]) end
        return #KEYS""",
    # HyperLogLogs: ARGV = ttl, then per key: n, n values
    "pfadd_many": """
        local at = 2
        for i = 1, #KEYS do
            local n = tonumber(ARGV[at])
            for j = at + 1, at + n, 4000 do redis.call('PFADD', KEYS[i], unpack(ARGV, j, math.min(j + 3999, at + n))) end
            redis.call('PEXPIRE', KEYS[i], ARGV[1])
            at = at + n + 1
        end
        return #KEYS""",
    # distinct counts: ARGV = scratch key, then per window: n keys, keys, m values, values -> PFCOUNT of the union
    "pfcount_windows": """
        local scratch, out, at = ARGV[1], {}, 2
        while at <= #ARGV do
            local n = tonumber(ARGV[at])
            redis.call('DEL', scratch)
            redis.call('PFMERGE', scratch, unpack(ARGV, at + 1, at + n))
            at = at + n + 1
            local m = tonumber(ARGV[at])
            for j = at + 1, at + m, 4000 do redis.call('PFADD', scratch, unpack(ARGV, j, math.min(j + 3999, at + m))) end
            at = at + m + 1
            out[#out + 1] = redis.call('PFCOUNT', scratch)
        end
        redis.call('DEL', scratch)
        return out""",
}


def script(client: redis.Redis, name: str) -> Any:
    """The registered script ``name`` of ``_LUA`` (registered with ``client`` on first use)."""
    scripts = client.__dict__.setdefault("_mlplat_scripts", {})
    if name not in scripts:
        scripts[name] = client.register_script(_LUA[name])
    return scripts[name]


def distinct_counts(client: redis.Redis, scratch: str, windows: list[tuple[list[str], list[str]]]) -> np.ndarray:
    """For each (HyperLogLog keys, extra values): the estimated distinct count of their union, in Redis.

    The stream and the backfill both count this way, so they agree exactly.
    """
    counts: list[int] = []
    args: list = [scratch]
    for keys, values in windows:
        args += [len(keys), *keys, len(values), *values]
        if len(args) > 50_000:
            counts += script(client, "pfcount_windows")(args=args)
            args = [scratch]
    if len(args) > 1:
        counts += script(client, "pfcount_windows")(args=args)
    return np.array(counts, np.int64)
