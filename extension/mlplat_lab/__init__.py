"""The JupyterLab side of mlplat: a jupyter_server extension (a REST API over the library) and the prebuilt
Lab extension (``labextension/``, built from ``extension/src``) that shows it."""


def _jupyter_server_extension_points() -> list[dict]:
    from mlplat_lab.app import MlplatLab

    return [{"module": "mlplat_lab.app", "app": MlplatLab}]


def _jupyter_labextension_paths() -> list[dict]:
    return [{"src": "labextension", "dest": "mlplat-lab"}]
