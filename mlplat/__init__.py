"""mlplat: a notebook-centric ML platform.

>>> import mlplat
>>> p = mlplat.connect()          # embedded defaults under $MLPLAT_HOME
>>> p.features.list_views()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlplat.errors import MlplatError

__version__ = "0.1.0"
__all__ = ["MlplatError", "Platform", "connect", "__version__"]

if TYPE_CHECKING:
    from mlplat.platform import Platform


def connect(clock: Any = None, **settings: Any) -> Platform:
    """Open the platform, starting embedded services that are not running yet.

    Keyword arguments override every other configuration layer, e.g.
    ``connect(home="/tmp/mlp")`` or ``connect(online_store="redis://host:6379/0")``. ``clock`` (anything
    with a ``time()`` method, see :mod:`mlplat.clock`) replaces the system's, as tests do to move time.

    With ``server_url`` set (``MLPLAT_SERVER_URL``: the hub sets it in workspaces of a shared install), the
    platform is the server's: :mod:`mlplat.remote.platform`, as the user whose token the environment holds.
    """
    from mlplat.clock import SYSTEM_CLOCK
    from mlplat.config import load_settings
    from mlplat.platform import Platform

    if load_settings(**settings).server_url:
        from mlplat.remote.platform import ServerModePlatform

        return ServerModePlatform.open(clock or SYSTEM_CLOCK, **settings)
    return Platform.open(clock or SYSTEM_CLOCK, **settings)


def __getattr__(name: str) -> Any:
    if name == "Platform":
        from mlplat.platform import Platform

        return Platform
    raise AttributeError(name)
