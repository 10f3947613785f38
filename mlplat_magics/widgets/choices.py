"""Keeping a selector's choice while its options change."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets


def offer(selector: widgets.Select | widgets.Dropdown, options: Sequence[Any],
          on_choice: Callable[[Any], None] | None = None) -> bool:
    """Set ``options`` (values, or (label, value) pairs), keeping the choice when still offered, else the first.

    ipywidgets jumps to the first option whenever options change; here ``on_choice`` (the
    selector's value observer) hears nothing of that, and is called once, afterwards, only
    if the choice really changed. Returns whether it did.
    """
    before = selector.value
    values = [option[1] if isinstance(option, tuple) else option for option in options]
    if on_choice is not None:
        selector.unobserve(on_choice, names="value")
    try:
        selector.options = options
        if values:
            selector.value = before if before in values else values[0]
    finally:
        if on_choice is not None:
            selector.observe(on_choice, names="value")
    changed = selector.value != before
    if changed and on_choice is not None:
        on_choice(None)
    return changed
