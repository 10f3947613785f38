"""The ``Platform`` handle returned by :func:`mlplat.connect`."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from mlplat.config import Settings, load_settings


class Platform:
    """A thin handle on one configured platform: ``p.features``, ``p.settings``.

    Each part is built on first use; ``close()`` (or ``with``) releases connections.
    """

    def __init__(self, settings: Settings):
        self.settings = settings

    @classmethod
    def open(cls, **overrides: Any) -> Platform:
        """Load settings and start the embedded services they ask for."""
        from mlplat import services

        platform = cls(load_settings(**overrides))
        services.up(platform.settings)
        return platform

    @cached_property
    def features(self):
        """The feature store (:class:`mlplat.features.store.FeatureStore`)."""
        from mlplat.features.offline import OfflineStore
        from mlplat.features.online import RedisOnlineStore
        from mlplat.features.registry import Registry, create_registry_engine
        from mlplat.features.store import FeatureStore
        from mlplat.services import online_store_url

        registry = Registry(create_registry_engine(self.settings.registry), self.settings.user)
        online = RedisOnlineStore(online_store_url(self.settings), self.settings.online_prefix)
        return FeatureStore(registry, OfflineStore(self.settings.offline_store), online)

    def close(self) -> None:
        """Close connections; embedded services keep running for other sessions (`mlplat down` stops them)."""
        if "features" in self.__dict__:
            self.features.online.close()
            self.features.registry.engine.dispose()
            del self.__dict__["features"]

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mlplat.Platform home={str(self.settings.home)!r} online={self.settings.online_store!r}>"
