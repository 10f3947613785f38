"""What a domain needs to run a notebook template on a schedule, without depending on the jobs package.

Batch feature views compute, and monitoring checks models, as scheduled notebook jobs.
They ask for that through :class:`TemplateScheduler`, which the jobs package implements
and :class:`mlplat.platform.Platform` hands them; cron lines are checked by
:func:`mlplat.cron.check_cron` wherever they are given.
"""

from __future__ import annotations

from typing import Any, Protocol


class TemplateScheduler(Protocol):
    """Schedules the notebook templates that ship with mlplat (``templates/<name>``)."""

    def schedule_template(self, template: str, cron: str, parameters: dict[str, Any], *,
                          key: str | None = None) -> int:
        """Run notebook template ``template`` with ``parameters`` on ``cron``; return the schedule's id.

        With ``key`` (the name of one of ``parameters``), the template keeps one live schedule per value of
        that parameter: asking again with the same cron and parameters returns it; with others, it is
        paused and a new one made.
        """
