"""Monitoring: how far what a model sees in production has drifted from what it was trained on.

Below the registry, serving and jobs: what it needs of them is injected (see :class:`monitor.Monitor`)."""
