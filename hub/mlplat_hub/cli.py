"""``mlplat hub``: the hub's command, which the ``mlplat`` CLI finds through the ``mlplat.commands`` entry point."""

from __future__ import annotations

import click

from mlplat.config import load_settings


@click.command()
@click.option("--ip", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, help="Port to listen on (default: a free one).")
@click.option("--stop", is_flag=True, help="Stop the hub, its workspace servers and its services.")
def hub(ip: str, port: int | None, stop: bool) -> None:
    """Start JupyterHub with CPU/GPU workspaces on this machine (or show the running one); MLPLAT_HUB_* configure it."""
    from mlplat_hub.app import start_hub, stop_hub

    if stop:
        click.echo("hub stopped" if stop_hub(load_settings()) else "no hub was running")
        return
    running = start_hub(load_settings(), ip, port)
    click.echo(f"hub      running  pid {running.pid}  {running.url}")
    names = ", ".join(running.users) if running.users else "any user name"
    if running.password:
        click.echo(f"login    {names}, password {running.password}")
    else:
        click.echo(f"login    each user as themselves (MLPLAT_HUB_AUTHENTICATOR); native: sign up at {running.url}hub/signup, "
                   f"an admin approves at {running.url}hub/authorize")
    if running.server_url:
        click.echo(f"server   {running.server_url}  (MLPLAT_SERVER_URL; MLPLAT_SERVER_TOKEN: a token from "
                   f"{running.url}hub/token)")
