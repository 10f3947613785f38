"""Progress bars for long work: a widget in notebooks, a text bar in terminals, nothing in logs."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, show: bool | None = None, unit: str = "step") -> Any:
    """A ``tqdm.auto`` bar; ``show=None`` shows it only where someone is watching (a TTY or notebook)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if show is None else not show, leave=False)
