"""Lineage: endpoint -> model version -> run -> training set -> feature views at their versions -> sources.

And the other way: which model versions use a feature view. A ``Lineage`` is a
small tree that prints as text (CLI) and renders as a left-to-right graph in a
notebook; a :class:`Tracer` builds them from the model registry, the feature
store, MLflow's runs, the audit trail and what serving records of a deployment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from typing import Any

from mlplat.audit import Audit
from mlplat.config import Settings
from mlplat.features.on_demand import is_on_demand
from mlplat.features.store import FeatureStore
from mlplat.registry import tracking
from mlplat.registry.models import ModelRegistry
from mlplat.serving.target import ServingTarget

_COLOURS = {"endpoint": "#ffebe9", "model": "#ddf4ff", "run": "#fff8c5", "training set": "#dafbe1",
            "feature view": "#fbefff", "source": "#f6f8fa", "model version": "#ddf4ff"}


@dataclass
class Node:
    """One thing in a lineage graph, with what came before (or after) it."""

    kind: str
    label: str
    details: dict[str, Any] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)


@dataclass
class Lineage:
    """A lineage tree; ``str()`` for text, ``_repr_html_`` for notebooks."""

    root: Node

    def __str__(self) -> str:
        lines: list[str] = []

        def walk(node: Node, depth: int) -> None:
            details = ", ".join(f"{k}={v}" for k, v in node.details.items() if v not in (None, "", []))
            lines.append(f"{'  ' * depth}{'└─ ' if depth else ''}{node.kind}: {node.label}" + (f"  ({details})" if details else ""))
            for child in node.children:
                walk(child, depth + 1)

        walk(self.root, 0)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        def box(node: Node) -> str:
            details = "".join(f"<div style='font-size:11px;color:#57606a'>{escape(str(k))}: {escape(str(v))}</div>"
                              for k, v in node.details.items() if v not in (None, "", []))
            card = (f"<div style='border:1px solid #d0d7de;border-radius:6px;padding:6px 8px;margin:4px;"
                    f"background:{_COLOURS.get(node.kind, '#fff')};min-width:140px'><div style='font-size:11px;"
                    f"text-transform:uppercase;color:#57606a'>{escape(node.kind)}</div><b>{escape(node.label)}</b>"
                    f"{details}</div>")
            if not node.children:
                return card
            kids = "".join(box(child) for child in node.children)
            return (f"<div style='display:flex;align-items:center'>{card}<div style='font-size:18px;margin:0 4px'>→"
                    f"</div><div style='display:flex;flex-direction:column'>{kids}</div></div>")

        return f"<div style='font-family:sans-serif'>{box(self.root)}</div>"


class Tracer:
    """Lineage trees of endpoints, model versions and feature views.

    ``target`` is the serving target: what it records of a deployed model (its ``default`` version and the
    ``versions`` it serves) and where it listens.
    """

    def __init__(self, settings: Settings, features: FeatureStore, models: ModelRegistry, audit: Audit,
                 target: ServingTarget):
        self.settings = settings
        self.features = features
        self.models = models
        self.audit = audit
        self.target = target

    def of_endpoint(self, name: str) -> Lineage:
        """What the Triton endpoint ``name`` serves, back to its sources (read from the model repository: Triton
        need not run; the gRPC address is shown when it does)."""
        info = self.target.serving_info(name)
        loaded = sorted(info["versions"], key=int)
        running = self.target.where()
        deployed = self.audit.entries("deployment", name, action="deployed", limit=1)
        versions = [self.of_model(name, v).root for v in sorted(loaded, key=lambda v: v != info["default"])]
        return Lineage(Node("endpoint", name, {
            "grpc": running.grpc if running else "Triton not running", "default": f"v{info['default']}",
            "loaded": ", ".join(f"v{v}" for v in loaded),
            "deployed": f"{deployed[0].at:%Y-%m-%d %H:%M} by {deployed[0].who}" if deployed else None}, versions))

    def of_model(self, name: str, version: str | int | None = None) -> Lineage:
        """Everything that produced a model version (default: the champion)."""
        found = self.models.get(name, version)
        with tracking.session(self.settings) as client:
            run = client.get_run(found.run_id)
        tags, params = run.data.tags, run.data.params
        # mlplat's own run parameters are "mlplat.estimator", "mlplat.seed", ... (runs before them: "estimator", ...)
        params = {**params, **{k.removeprefix("mlplat."): v for k, v in params.items() if k.startswith("mlplat.")}}
        by_view: dict[str, list[str]] = {}
        for ref in found.features:
            view, feature = ref.split(":")
            by_view.setdefault(view, []).append(feature)
        views = [self._view_node(ref, features) for ref, features in by_view.items()]
        training_set = Node("training set", tags.get("mlplat.training_set_fingerprint", "?")[:16],
                            {"rows": params.get("rows"), "target": params.get("target")}, views)
        run_node = Node("run", found.run_id[:12], {
            "estimator": params.get("estimator"), "seed": params.get("seed"), "code": tags.get("mlplat.code_path"),
            "git": (tags.get("mlplat.git_commit") or "")[:10], "by": tags.get("mlplat.user")}, [training_set])
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted(found.metrics.items()))
        return Lineage(Node("model", f"{name} v{found.version}",
                            {"aliases": ", ".join(found.aliases), "metrics": metrics}, [run_node]))

    def _view_node(self, ref: str, features: list[str]) -> Node:
        name, _, version = ref.partition("@")
        view = self.features.get_view(name, int(version) if version else None)
        if is_on_demand(view):  # computed at read time: what it reads is its sources
            by_view: dict[str, list[str]] = {}
            for source in view.sources:
                source_view, feature = source.split(":")
                by_view.setdefault(source_view, []).append(feature)
            return Node("feature view", f"{view.name} v{view.version} (on demand)", {
                "features": ", ".join(features), "function": view.udf["name"], "owner": view.owner,
                "request": ", ".join(f.name for f in view.request)},
                [self._view_node(source, feats) for source, feats in by_view.items()])
        offline = self.features.offline
        files = offline.files(view)
        sources = [Node("source", view.source, {})] if view.source else []
        sources.append(Node("source", f"{offline.url.rstrip('/')}/{view.name}/v{view.version}", {"files": len(files)}))
        return Node("feature view", f"{view.name} v{view.version}",
                    {"features": ", ".join(features), "owner": view.owner}, sources)

    def of_feature_view(self, view_name: str) -> Lineage:
        """The registered model versions whose features come from ``view_name``."""
        view = self.features.get_view(view_name)  # unknown names fail with suggestions
        with tracking.session(self.settings) as client:
            versions = client.search_model_versions()
        users, seen = [], {}
        for found in sorted(versions, key=lambda v: (v.name, int(v.version))):
            refs = json.loads(found.tags.get("mlplat.features", "[]"))
            used = sorted({r.split(":")[0] for r in refs if r.split("@")[0] == view_name})
            used += self._through_on_demand(refs, view_name, seen)
            if used:
                users.append(Node("model version", f"{found.name} v{found.version}",
                                  {"uses": ", ".join(used), "run": found.run_id[:12]}))
        return Lineage(Node("feature view", f"{view.name} (latest v{view.version})", {"owner": view.owner}, users))

    def _through_on_demand(self, refs: list[str], view_name: str, seen: dict[str, Any]) -> list[str]:
        """``"driver_stats@1 via trip_features@2"`` for each on-demand view among ``refs`` that reads ``view_name``."""
        used = []
        for view_ref in sorted({r.split(":")[0] for r in refs if r.split("@")[0] != view_name}):
            if view_ref not in seen:  # each view version is read once per lineage query
                name, _, version = view_ref.partition("@")
                seen[view_ref] = self.features.get_view(name, int(version) if version else None)
            view = seen[view_ref]
            if is_on_demand(view):
                read = sorted({source.split(":")[0] for source in view.sources if source.split("@")[0] == view_name})
                used += [f"{source} via {view_ref}" for source in read]
        return used
