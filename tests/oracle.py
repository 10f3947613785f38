"""An independent, deliberately naive point-in-time lookup to check the real one against."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any


def latest_value(rows: list[dict[str, Any]], keys: dict[str, Any], at: datetime, ttl: timedelta | None,
                 feature: str, ts: str = "event_timestamp", created: str | None = None) -> Any:
    """Scan every row (in ingest order): same keys, not after ``at``, within ``ttl``; newest wins.

    Newest means the latest event time, then the latest created time, then the row ingested last.
    """
    best_rank, best = None, None
    for position, row in enumerate(rows):
        if any(row[k] != v for k, v in keys.items()):
            continue
        if row[ts] > at or (ttl is not None and at - row[ts] > ttl):
            continue
        created_at = row[created] if created and row[created] is not None else datetime.min.replace(tzinfo=at.tzinfo)
        rank = (row[ts], created_at, position)
        if best_rank is None or rank > best_rank:
            best_rank, best = rank, row
    return None if best is None else best[feature]
