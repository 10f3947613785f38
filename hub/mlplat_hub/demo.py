"""The end of ``make demo``: a running hub whose demo user finds the templates and the demo's data.

``python -m mlplat_hub.demo`` copies the notebooks of ``templates/`` into the demo
user's workspace with the demo dataset beside them (the templates' default inputs),
starts the hub and prints its URL and login.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mlplat.config import load_settings
from mlplat.demo import make_dataset
from mlplat_hub.app import start_hub
from mlplat_hub.options import HubOptions
from mlplat_hub.workspaces import user_folder

DEMO_USER = "demo"
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"  # in the repository beside hub/


def main() -> None:
    """Seed the demo user's workspace, start the hub, say where and how to log in."""
    settings = load_settings()
    folder = user_folder(HubOptions.from_env(settings).root, DEMO_USER)
    folder.mkdir(parents=True, exist_ok=True)
    for template in sorted(TEMPLATES.glob("*.ipynb")):
        shutil.copy2(template, folder / template.name)
    stats, _, labels = make_dataset()  # the demo's data again (fixed seed), where the templates look for it
    stats.to_parquet(folder / "driver_stats.parquet")
    labels.to_parquet(folder / "labels.parquet")
    running = start_hub(settings)
    print(f"\nWorkspaces: {running.url}  log in as {DEMO_USER} / {running.password}")
    print(f"  {DEMO_USER}'s workspace holds templates/ ({', '.join(p.stem for p in sorted(TEMPLATES.glob('*.ipynb')))})"
          " with the demo's data beside them.")
    print("  Stop everything with `mlplat hub --stop && mlplat down` (or `make clean`).")


if __name__ == "__main__":
    main()
