"""Resolve ``view:feature`` references into per-view requests.

``driver_stats:rating`` names one feature of the latest version,
``driver_stats:*`` every feature of the view, and ``driver_stats@1:rating``
pins version 1. Output columns are named after the feature, or
``view__feature`` where two requested views (or the caller's own columns)
share the name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mlplat.errors import FeatureNotFound
from mlplat.features.definitions import FeatureView


@dataclass(frozen=True)
class ViewRequest:
    """The features wanted from one view version and the columns they come out as."""

    view: FeatureView
    features: tuple[str, ...]
    columns: tuple[str, ...]


def parse_ref(ref: str) -> tuple[str, int | None, str]:
    """Split ``view[@version]:feature`` into its parts."""
    if not isinstance(ref, str) or ref.count(":") != 1 or ref.startswith(":") or ref.endswith(":"):
        raise FeatureNotFound(f"{ref!r} is not a feature reference; write 'view:feature' (or 'view:*'), e.g. 'driver_stats:rating'.")
    view_part, feature = ref.split(":")
    name, _, version = view_part.partition("@")
    if version and not version.isdigit():
        raise FeatureNotFound(f"{ref!r} has a bad version {version!r}; write 'view@2:feature'.")
    return name, int(version) if version else None, feature


def resolve(
    refs: Iterable[str], get_view: Callable[[str, int | None], FeatureView], taken: Iterable[str] = ()
) -> list[ViewRequest]:
    """Group references by view (in first-seen order) and name their output columns."""
    if isinstance(refs, str):
        refs = [refs]
    wanted: dict[tuple[str, int | None], list[str]] = {}
    views: dict[tuple[str, int | None], FeatureView] = {}
    for ref in refs:
        name, version, feature = parse_ref(ref)
        key = (name, version)
        if key not in views:
            views[key] = get_view(name, version)
        view = views[key]
        names = view.feature_names if feature == "*" else [feature]
        for feat in names:
            if feat not in view.feature_names:
                hint = difflib.get_close_matches(feat, view.feature_names, n=1)
                did_you_mean = f"did you mean {name}:{hint[0]}? " if hint else ""
                raise FeatureNotFound(
                    f"{ref!r}: view {name!r} (v{view.version}) has no feature {feat!r}; {did_you_mean}"
                    f"it has {', '.join(view.feature_names)}."
                )
            if feat not in wanted.setdefault(key, []):
                wanted[key].append(feat)
    if not wanted:
        raise FeatureNotFound("No features requested; pass references such as ['driver_stats:rating'].")
    counts: dict[str, int] = {}
    for feats in wanted.values():
        for feat in feats:
            counts[feat] = counts.get(feat, 0) + 1
    taken = set(taken)
    view_names = [name for name, _ in wanted]
    requests = []
    for key, feats in wanted.items():
        view = views[key]
        # The same view at two versions needs the version in the prefix too.
        prefix = view.name if view_names.count(view.name) == 1 else f"{view.name}_v{view.version}"
        columns = tuple(f"{prefix}__{f}" if counts[f] > 1 or f in taken else f for f in feats)
        requests.append(ViewRequest(view, tuple(feats), columns))
    return requests
