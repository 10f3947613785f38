"""Progress bars for long work: a widget in notebooks, a text bar in terminals, nothing in logs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ProgressBar(Protocol):
    """The part of tqdm's interface mlplat reports to; pass any such object as ``progress=``.

    ``set_postfix_str`` names the current stage; ``set_postfix`` shows metrics as they become known.
    """

    def reset(self, total: int | None = None) -> None: ...
    def set_description(self, desc: str | None = None) -> None: ...
    def update(self, n: int = 1) -> Any: ...
    def set_postfix_str(self, s: str = "") -> None: ...
    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> Any: ...


def progress_bar(total: int, desc: str, show: bool | ProgressBar | None = None, unit: str = "step") -> Any:
    """A bar for ``total`` steps, used as a context manager.

    ``show`` True or False shows or hides a ``tqdm.auto`` bar; None shows it only where someone is
    watching (a TTY or notebook); a bar object (tqdm's interface, e.g. ``mlplat_magics.widgets.TrainingProgress``)
    is reset to ``total`` steps under ``desc`` and used as it is.
    """
    if isinstance(show, ProgressBar):
        show.reset(total=total)
        show.set_description(desc)
        return show
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if show is None else not show, leave=False)
