"""User functions in definitions (transformations, on-demand features), stored in the registry as text.

A function is recorded by its module, qualified name and source. Loading imports
``module.name`` when the module can be imported (a package of feature definitions),
and otherwise runs the recorded source (a function defined in a notebook or a
script run as ``__main__``), with ``pd`` and ``np`` at hand.
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from mlplat.errors import DefinitionError


def describe(function: Callable[..., Any], what: str) -> dict[str, str]:
    """``{"module", "name", "source"}`` of a plain function (``what`` names it in errors)."""
    if not inspect.isfunction(function) or function.__name__ == "<lambda>":
        raise DefinitionError(f"{what} must be a function defined with def (not a lambda or a callable object), "
                              f"got {function!r}.")
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        raise DefinitionError(f"{what}: the source of {function.__qualname__} cannot be read; define it in a file "
                              "or a notebook cell.") from None
    return {"module": function.__module__, "name": function.__qualname__, "source": source}


def load(recorded: dict[str, str]) -> Callable[..., Any]:
    """The function a :func:`describe` record names."""
    module, name = recorded["module"], recorded["name"]
    if module != "__main__" and "<locals>" not in name:
        try:
            found: Any = importlib.import_module(module)
            for part in name.split("."):
                found = getattr(found, part)
            return found
        except (ImportError, AttributeError):
            pass  # not importable here: run the recorded source
    import numpy as np
    import pandas as pd

    namespace: dict[str, Any] = {"pd": pd, "np": np}
    exec(compile(_without_decorators(recorded["source"]), f"<mlplat {name}>", "exec"), namespace)
    short = name.rsplit(".", 1)[-1]
    if short not in namespace:
        raise DefinitionError(f"The recorded source of {name} does not define it; apply the definition again.")
    return namespace[short]


def _without_decorators(source: str) -> str:
    lines = source.splitlines()
    while lines and lines[0].lstrip().startswith("@"):
        lines.pop(0)
    return "\n".join(lines) + "\n"
