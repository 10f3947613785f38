"""``JobPanel``: notebook schedules and recent job runs, with Run now, Pause and Resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from mlplat.errors import InvalidArgument
from mlplat_magics.widgets.choices import offer
from mlplat_magics.widgets.status import StatusLine, run_action
from mlplat_magics.widgets.tables import table


class JobPanel(widgets.VBox):
    """Schedules (``p.jobs.schedules()``) and the latest runs (``p.jobs.history()``).

    **Run now** runs the selected schedule's notebook with its parameters and kernel
    (``p.jobs.run``); **Pause** and **Resume** call ``p.jobs.pause`` / ``p.jobs.resume``;
    after each, and on **Refresh**, both tables reload.
    """

    def __init__(self, platform: Any, runs: int = 20):
        self.platform = platform
        self.runs_shown = runs
        self.schedules = widgets.HTML()
        self.schedule = widgets.Dropdown(description="schedule", options=[])
        self.run_button = widgets.Button(description="Run now", icon="play", button_style="primary")
        self.pause_button = widgets.Button(description="Pause", icon="pause")
        self.resume_button = widgets.Button(description="Resume", icon="repeat")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.runs = widgets.HTML()
        self.status = StatusLine()
        self.buttons = [self.run_button, self.pause_button, self.resume_button, self.refresh_button]
        super().__init__([widgets.HTML("<h4>schedules</h4>"), self.schedules, widgets.HBox([self.schedule, *self.buttons]),
                          widgets.HTML("<h4>recent runs</h4>"), self.runs, self.status])
        self.run_button.on_click(lambda _: self._act(self._run_now))
        self.pause_button.on_click(lambda _: self._act(self._pause))
        self.resume_button.on_click(lambda _: self._act(self._resume))
        self.refresh_button.on_click(lambda _: self._act(lambda: "reloaded"))
        self.status.attempt(self._reload)

    def _act(self, action: Callable[[], str]) -> None:
        run_action(self.status, self.buttons, action, self._reload)

    def _selected(self) -> Any:
        chosen = next((s for s in self.platform.jobs.schedules() if s.id == self.schedule.value), None)
        if chosen is None:
            raise InvalidArgument("Select a schedule first; make one with p.jobs.schedule(notebook, cron=...).")
        return chosen

    def _run_now(self) -> str:
        chosen = self._selected()
        run = self.platform.jobs.run(chosen.notebook, chosen.parameters, chosen.kernel)
        return f"{Path(run.notebook).name} run {run.id[:8]} {run.status} in {run.seconds:.1f} s"

    def _pause(self) -> str:
        chosen = self._selected()
        self.platform.jobs.pause(chosen.id)
        return f"schedule {chosen.id} ({Path(chosen.notebook).name}) paused"

    def _resume(self) -> str:
        chosen = self._selected()
        self.platform.jobs.resume(chosen.id)
        return f"schedule {chosen.id} ({Path(chosen.notebook).name}) resumed"

    def _reload(self) -> None:
        schedules = self.platform.jobs.schedules()
        self.schedules.value = table([
            {"id": s.id, "notebook": Path(s.notebook).name, "cron": s.cron, "enabled": s.enabled,
             "next run": s.next_run, "last slot": s.last_slot, "last status": s.last_status, "broken": s.broken}
            for s in schedules],
            empty="no schedules yet: p.jobs.schedule(notebook, cron=...)")
        offer(self.schedule, [(f"{s.id}: {Path(s.notebook).name} ({s.cron})", s.id) for s in schedules])
        self.runs.value = table([
            {"notebook": Path(r.notebook).name, "started": r.started_at, "status": r.status, "attempts": r.attempts,
             "seconds": r.seconds, "error": r.error} for r in self.platform.jobs.history(limit=self.runs_shown)],
            empty="no runs yet")
