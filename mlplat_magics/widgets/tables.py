"""HTML tables of plain values, formatted for reading, shared by the widgets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from html import escape
from typing import Any

import pandas as pd


def readable(value: Any) -> str:
    """A value as people read it: 4 significant digits, times to the second (in UTC when they have a zone), '-' for nothing."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        moment = pd.Timestamp(value)
        return moment.strftime("%Y-%m-%d %H:%M:%S") if moment.tzinfo is None \
            else moment.tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, timedelta):
        return str(pd.Timedelta(value).floor("s"))
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], empty: str = "nothing yet") -> str:
    """An HTML table with one row per mapping; the first mapping's keys are the columns."""
    if not rows:
        return f"<i>{escape(empty)}</i>"
    columns = list(rows[0])
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(readable(row.get(c)))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
