"""The ``mlplat`` command: services and the feature registry from a shell."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from mlplat.errors import MlplatError


class _Group(click.Group):
    """Show MlplatError as one line with its fix, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlplatError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.version_option(package_name="mlplat")
def main() -> None:
    """mlplat: a notebook-centric ML platform."""


def _settings():
    from mlplat.config import load_settings

    return load_settings()


@main.command()
def up() -> None:
    """Start the embedded services (or reuse the running ones)."""
    from mlplat import services

    for state in services.up(_settings()):
        click.echo(f"{state.name:8} running  pid {state.pid}  {state.url}")


@main.command()
def down() -> None:
    """Stop the embedded services."""
    from mlplat import services

    stopped = services.down(_settings())
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@main.command()
def status() -> None:
    """Show each embedded service and where it listens; exit 1 if one is down."""
    from mlplat import services

    settings = _settings()
    click.echo(f"home     {settings.home}")
    down_count = 0
    for service in services.embedded_services(settings):
        state = service.status()
        down_count += state is None
        click.echo(f"{service.name:8} " + (f"running  pid {state.pid}  {state.url}" if state else "stopped"))
    if settings.online_store != "embedded":
        click.echo(f"online   external  {settings.online_store}")
    sys.exit(1 if down_count else 0)


@main.group()
def features() -> None:
    """Feature definitions, the registry and materialisation."""


def _store():
    import mlplat

    return mlplat.connect().features


@features.command("apply")
@click.argument("path", type=click.Path(dir_okay=False))
def features_apply(path: str) -> None:
    """Register the Entity and FeatureView objects defined in PATH (a .py file)."""
    from mlplat.features.definitions import definitions_from_file

    for result in _store().apply(definitions_from_file(path)):
        version = f" v{result.version}" if result.version else ""
        click.echo(f"{result.kind:12} {result.name}{version}: {result.action}")
        for change in result.changes:
            click.echo(f"    {_describe(change)}")


@features.command("list")
@click.argument("pattern", required=False)
def features_list(pattern: str | None) -> None:
    """List feature views (latest versions), optionally those whose name contains PATTERN."""
    for view in _store().list_views(pattern):
        ttl = view.ttl or "none"
        click.echo(f"{view.name:24} v{view.version:<3} {len(view.schema):3} features  ttl {ttl}  owner {view.owner or '-'}")


@features.command("show")
@click.argument("view")
@click.option("--version", type=int, help="A past version (default: latest).")
def features_show(view: str, version: int | None) -> None:
    """Show a feature view's definition as JSON."""
    click.echo(json.dumps(_store().get_view(view, version).to_dict(), indent=2))


@features.command("diff")
@click.argument("view")
@click.argument("old", type=int)
@click.argument("new", type=int, required=False)
def features_diff(view: str, old: int, new: int | None) -> None:
    """Changes of VIEW from version OLD to version NEW (default: latest)."""
    store = _store()
    changes = store.diff(view, old) if new is None else store.diff(store.get_view(view, old), store.get_view(view, new))
    for change in changes or [{"change": "no changes", "incompatible": False}]:
        click.echo(_describe(change))


@features.command("history")
@click.argument("name", required=False)
def features_history(name: str | None) -> None:
    """Who changed what and when (for one entity or view, or all)."""
    for entry in _store().registry.history(name):
        version = f" v{entry['version']}" if entry["version"] else ""
        click.echo(f"{entry['at']:%Y-%m-%d %H:%M:%S}  {entry['who']:12} {entry['action']:12} {entry['kind']} {entry['name']}{version}")


@features.command("materialize")
@click.option("--view", "views", multiple=True, help="Only this view (repeatable).")
def features_materialize(views: tuple[str, ...]) -> None:
    """Write the latest feature values online (incrementally)."""
    for result in _store().materialize(views=list(views) or None):
        click.echo(f"{result.view} v{result.version}: read {result.rows_read} rows, {result.entities} entities, wrote {result.written}")


def _describe(change: dict[str, Any]) -> str:
    parts = [change["change"]]
    if "name" in change:
        parts.append(change["name"])
    if "from" in change or "to" in change:
        parts.append(f"{change.get('from')} -> {change.get('to')}")
    if change.get("incompatible"):
        parts.append("(incompatible: new version)")
    return " ".join(str(p) for p in parts)
