"""Scheduled computes: a batch view's compute template run on a cron line, through a :class:`TemplateScheduler`.

The scheduler (the jobs package, wired by :class:`mlplat.platform.Platform`) runs
``templates/feature_compute.ipynb``, which computes what is due (see
:func:`mlplat.features.compute.runner.run`); features never import the jobs package.
"""

from __future__ import annotations

from mlplat.errors import InvalidArgument
from mlplat.features.compute.view import BatchFeatureView
from mlplat.features.definitions import FeatureView
from mlplat.scheduling import TemplateScheduler

TEMPLATE = "feature_compute.ipynb"  # the notebook template the scheduler runs (templates/)


def schedule(scheduler: TemplateScheduler, view: FeatureView, cron: str | None = None,
             materialize: bool = False) -> int:
    """Run the compute template for ``view`` on ``cron`` (default its ``schedule``); return the schedule id.

    A view keeps one live compute schedule: scheduling it again with the same cron and options returns the
    existing one; with others, the old one is paused and a new one made.
    """
    if not isinstance(view, BatchFeatureView):
        raise InvalidArgument(f"{view.name!r} is not a batch feature view, so there is nothing to schedule.")
    cron = cron or view.schedule
    if not cron:
        raise InvalidArgument(f"{view.name!r} has no schedule; define it with schedule='0 2 * * *' or pass cron=.")
    return scheduler.schedule_template(TEMPLATE, cron, {"view": view.name, "materialize": bool(materialize)},
                                       key="view")
