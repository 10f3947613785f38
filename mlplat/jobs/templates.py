"""The notebook templates of ``templates/``: shipped in the wheel as ``mlplat/templates``."""

from __future__ import annotations

from pathlib import Path

from mlplat.errors import InvalidArgument


def template(name: str) -> Path:
    """A notebook template: in the wheel (``mlplat/templates``) or in the source tree (``templates/``)."""
    here = Path(__file__).resolve().parents[1]
    for folder in (here / "templates", here.parent / "templates"):
        if (folder / name).is_file():
            return folder / name
    raise InvalidArgument(f"The notebook template {name} is missing from this installation; reinstall mlplat.")
