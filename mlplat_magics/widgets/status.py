"""The status line under a widget, and running a click's action behind it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

import ipywidgets as widgets

from mlplat.errors import MlplatError


class StatusLine(widgets.HTML):
    """One line: what just happened, or, in red, what went wrong (never a traceback)."""

    def say(self, text: str) -> None:
        self.value = f"<span style='color:#1a7f37'>{escape(text)}</span>"

    def fail(self, error: MlplatError) -> None:
        self.value = f"<span style='color:#cf222e'>{escape(' '.join(str(error).split()))}</span>"

    def attempt(self, action: Callable[[], str | None], fresh: bool = False) -> bool:
        """Run ``action``; show the line it returns (if any), or the MlplatError it raised. True if it succeeded.

        ``fresh=True`` clears the line first, so an earlier message does not outlive what it was about.
        """
        if fresh:
            self.value = ""
        try:
            line = action()
        except MlplatError as error:
            self.fail(error)
            return False
        if line:
            self.say(line)
        return True


def run_action(status: StatusLine, buttons: Sequence[widgets.Button], action: Callable[[], str | None],
               reload: Callable[[], None]) -> None:
    """A click: ``action`` with ``buttons`` greyed out (no double starts), then ``reload`` whatever happened.

    The status line ends with what ``action`` returned or the error it raised; a failed action
    is reloaded too, since a refusal or a failed run is recorded.
    """
    for button in buttons:
        button.disabled = True
    try:
        status.say("working…")
        status.attempt(action)
        status.attempt(reload)
    finally:
        for button in buttons:
            button.disabled = False
