"""Model names: what can name a model everywhere it goes (MLflow, Triton's model folders, metric labels)."""

from __future__ import annotations

import re
import reprlib
from typing import Any

from mlplat.errors import InvalidArgument

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_model_name(name: Any) -> str:
    """``name`` if it can name a model everywhere it goes (MLflow, Triton's model folders, metric labels).

    Letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit, at most 64 characters:
    MLflow refuses ``/`` and ``:``, a quote breaks its searches, and the name is a folder on Triton.
    """
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise InvalidArgument(f"{reprlib.repr(name)} cannot name a model; use letters, digits, '_', '.' and '-', "
                              "starting with a letter or digit, at most 64 characters (e.g. 'churn' or 'churn-v2').")
    return name
