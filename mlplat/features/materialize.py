"""Copy the latest offline value of each entity into the online store.

Incremental: a watermark per view version records the event time and the
ingest time already covered. A later run reads rows newer than that event time
from files already seen, plus every row of files ingested since (late data), and
only within the view's TTL of ``end``. Writes never replace newer values, so
overlapping or repeated runs are idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mlplat.features.definitions import FeatureView
from mlplat.features.offline import OfflineStore, day_of
from mlplat.features.online import RecordCodec, RedisOnlineStore, entity_key_strings
from mlplat.features.pit import codes_of, latest_per_key
from mlplat.features.registry import Registry, Watermark


@dataclass(frozen=True)
class MaterializeResult:
    """What one view's materialisation read and wrote."""

    view: str
    version: int
    rows_read: int
    entities: int
    written: int


def write_latest(online: RedisOnlineStore, view: FeatureView, table: pa.Table, now_ns: int) -> tuple[int, int]:
    """Write the newest row per entity of ``table`` online; return (entities, written)."""
    if table.num_rows == 0:
        return 0, 0
    keys = [table.column(k).to_numpy(zero_copy_only=False) for k in view.join_keys]
    event_ns = table.column(view.timestamp_field).to_numpy().astype(np.int64)
    created = view.created_timestamp_field
    created_ns = np.zeros(len(event_ns), dtype=np.int64)
    if created:
        created_ns = table.column(created).fill_null(pa.scalar(0, table.schema.field(created).type))
        created_ns = created_ns.to_numpy().astype(np.int64)
    newest = latest_per_key(codes_of(keys), event_ns, created_ns if created else None)
    entity_keys = entity_key_strings([k[newest] for k in keys])
    ttl_ns = None if view.ttl is None else int(view.ttl.total_seconds() * 1e9)
    written = online.write(view, RecordCodec(view), entity_keys, table.take(newest),
                           event_ns[newest], created_ns[newest], ttl_ns, now_ns)
    return len(newest), written


def materialize_view(
    offline: OfflineStore, online: RedisOnlineStore, registry: Registry, view: FeatureView,
    start_ns: int | None, end_ns: int, now_ns: int,
) -> MaterializeResult:
    """Materialise one view version up to ``end_ns`` and advance its watermark."""
    lower = None if view.ttl is None else end_ns - int(view.ttl.total_seconds() * 1e9)
    files = offline.files(view, day_of(lower), day_of(end_ns))
    mark = registry.watermark(view)
    columns = [*view.join_keys, view.timestamp_field, *filter(None, [view.created_timestamp_field]),
               *view.feature_names]

    def read(subset, since):
        since = max(filter(lambda x: x is not None, (since, lower)), default=None)
        return offline.read(view, columns, since, end_ns, files=subset)

    if mark is None:
        parts = [(files, start_ns)]
    else:
        since = start_ns if start_ns is not None else mark.event_end_ns
        parts = [([f for f in files if f.ingest_ns <= mark.ingest_ns], since),
                 ([f for f in files if f.ingest_ns > mark.ingest_ns], None)]
    tables = [read(subset, since) for subset, since in parts if subset]
    table = pa.concat_tables(tables) if tables else offline.read(view, columns, 0, 0, files=[])
    entities, written = write_latest(online, view, table, now_ns)
    newest_file = max((f.ingest_ns for f in files), default=mark.ingest_ns if mark else 0)
    event_end = max(end_ns, mark.event_end_ns) if mark else end_ns
    registry.set_watermark(view, Watermark(event_end, newest_file))
    return MaterializeResult(view.name, view.version, table.num_rows, entities, written)
