"""JupyterHub configuration for mlplat workspaces: ``jupyterhub -f hub/jupyterhub_config.py``.

Everything comes from the environment (see ``mlplat_hub.options``):
``MLPLAT_HUB_MODE=local`` runs workspaces as processes on this machine (what ``mlplat hub``
does); ``MLPLAT_HUB_MODE=kubernetes`` runs them as pods with KubeSpawner (add this file to
your Helm chart's ``hub.extraConfig``, with ``MLPLAT_HUB_IMAGE`` set). The platform's own
endpoints come from the usual mlplat settings (``MLPLAT_REGISTRY``, ``MLPLAT_TRACKING``, ...).
``MLPLAT_HUB_ACCOUNTS=1`` (with server mode, as root) runs each user's server as their own OS account.
``MLPLAT_HUB_SERVER=1`` adds server mode: ``mlplat server`` judges every change by the caller's hub
token (a hub service locally; on Kubernetes the Deployment of ``serving/kubernetes/server.yaml``).
"""

from mlplat_hub.config import configure_from_env

configure_from_env(get_config())  # noqa: F821 (JupyterHub defines get_config in config files)
