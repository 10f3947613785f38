"""Notebook jobs: papermill runs with provenance, history and reruns; cron schedules and the scheduler; the
:class:`mlplat.scheduling.TemplateScheduler` through which lower domains schedule notebook templates."""
