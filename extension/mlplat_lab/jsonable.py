"""Library results as JSON values: dataclasses as objects, times as ISO 8601, durations in seconds."""

from __future__ import annotations

import dataclasses
import math
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` made of dicts, lists, strings, numbers, booleans and None; NaN becomes None (JSON has none)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (datetime, date)):
        return None if value != value else value.isoformat()  # NaT is not equal to itself
    if isinstance(value, timedelta):
        return None if value != value else value.total_seconds()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if callable(value):  # a view's function (transformation, on-demand function): its name, not its code
        return getattr(value, "__qualname__", None) or repr(value)
    return value
