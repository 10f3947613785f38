"""Keyword options passed through ``**options`` (``p.train``, ``p.tune``, ``p.deploy``), checked by name."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from mlplat.errors import InvalidArgument


def check_options(function: Callable[..., Any], options: dict[str, Any], call: str, given: int = 0) -> dict[str, Any]:
    """``options`` if ``function`` takes each of them and gets every one it needs; else InvalidArgument.

    ``given`` is how many of its leading parameters the caller passes itself (the platform, a name, ...).
    """
    parameters = list(inspect.signature(function).parameters.values())[given:]
    named = [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for option in options:
        if option not in named:
            hint = difflib.get_close_matches(option, named, n=1)
            raise InvalidArgument(f"{call}() has no option {option!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                                  f"it takes {', '.join(named)}.")
    needed = [p.name for p in parameters if p.default is p.empty and p.name not in options]
    if needed:
        raise InvalidArgument(f"{call}() needs {', '.join(f'{n}=' for n in needed)}; see help(p.{call}).")
    return options
