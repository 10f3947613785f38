"""Entity keys: the type of a view's join keys, and checks of the keys given to online reads.

A view version's join keys are int64 or string, fixed by its first write (ingest, push, compute):
the offline store keeps them in that type and refuses a later write of the other kind. Online reads
(and so ``p.predict``) check every key against it before looking anything up, so a key that can
never match (1.5, NaN, None, ``b"7"``, ``[7]``, a string for an int64 key) is an error, not a
silent miss. Before the first write a key may be an int64 or a string.

Floats are refused even when integral (``1.0``): ingest refuses float keys too, so no stored key
came from one, and float64 cannot hold every int64 (``float(2**53 + 1)`` names another entity), so
accepting them would serve some other entity's features. Convert with ``int(key)`` at the source.
"""

from __future__ import annotations

import numbers
import reprlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mlplat.errors import EntityKeyError

INT64, STRING = "int64", "string"
_LOW, _HIGH = -(2**63), 2**63 - 1


def kind_of(arrow_type: pa.DataType) -> str:
    """``"int64"`` or ``"string"``: the kind of key a stored Arrow type holds."""
    return INT64 if pa.types.is_integer(arrow_type) else STRING


def check(view: str, key: str, values: Sequence[Any], kind: str | None) -> None:
    """Raise EntityKeyError unless every value is a key of ``kind`` (None: int64 or string, before any write).

    ``values`` is a list or a numpy array. Columns of the right type pass with one test per value;
    the error names the first bad one.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind == "i" and kind != STRING:
        return
    if kind != STRING and all(type(v) is int for v in values):
        if len(values) == 0 or (_LOW <= min(values) and max(values) <= _HIGH):
            return
    elif kind != INT64 and all(type(v) is str and (v.isascii() or _encodes(v)) for v in values):
        return
    for row, value in enumerate(values):
        problem = _problem(value, kind)
        if problem:
            raise EntityKeyError(f"Entity row {row}: {key}={reprlib.repr(value)} cannot be a key of view {view!r}: "
                                 f"{problem}.")


def _problem(value: Any, kind: str | None) -> str | None:
    """Why ``value`` is not a key of ``kind``, or None when it is one."""
    wanted = {INT64: "an int64", STRING: "a string", None: "an int64 or a string"}[kind]
    if isinstance(value, (bool, np.bool_)):
        return f"a bool is not a key; give {wanted}"
    if isinstance(value, numbers.Integral):
        if kind == STRING:
            return f"the view's keys are strings; pass '{value}' if that is the id"
        return None if _LOW <= int(value) <= _HIGH else "it is outside the int64 range"
    if isinstance(value, str):
        if kind == INT64:
            return "the view's keys are int64, not strings; pass the number"
        return None if _encodes(value) else "it is not valid Unicode text (it holds a lone surrogate)"
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, numbers.Real) and np.isnan(value)):
        return f"the key is missing ({value}); drop the row or give {wanted}"
    if isinstance(value, numbers.Real):
        return (f"a float is not a key, even a whole one (float64 cannot hold every int64); give {wanted}, "
                "converting with int(key) where the key is made")
    return f"a {type(value).__name__} is not a key; give {wanted}"


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
