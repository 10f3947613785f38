"""User functions in definitions (transformations, on-demand features), stored in the registry as text.

A function is recorded by its module, qualified name and source. Loading imports
``module.name`` when the module can be imported (a package of feature definitions),
and otherwise runs the recorded source (a function defined in a notebook or a
script run as ``__main__``), with ``pd`` and ``np`` at hand.

A registered function is user code: reading the registry never runs it. A view
read back holds a :class:`StoredFunction`, which loads the function the first
time that view is computed or served, so a function that cannot load (a default
argument naming a notebook global, a module gone) fails for its own view alone.
:func:`describe` refuses such a function before it is registered.

Each record carries the sha256 of its source (``"sha256"``), taken when the view is applied; a record whose
source no longer matches it (someone edited the registry row) is refused before any of it runs. A record
stored before hashes were recorded has none: it loads as before, and gets one when its view is next applied.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from mlplat.errors import BrokenDefinition, DefinitionError, one_line

_ADVICE = ("a registered function is loaded in later sessions with only pd and np at hand: import what it needs "
           "inside the function, or write the value as a constant (k=3, not k=SOME_GLOBAL)")


def describe(function: Callable[..., Any], what: str) -> dict[str, str]:
    """``{"module", "name", "source"}`` of a plain function (``what`` names it in errors), once it is known to
    load the way a later session will load it."""
    if not inspect.isfunction(function) or function.__name__ == "<lambda>":
        raise DefinitionError(f"{what} must be a function defined with def (not a lambda or a callable object), "
                              f"got {function!r}.")
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        raise DefinitionError(f"{what}: the source of {function.__qualname__} cannot be read; define it in a file "
                              "or a notebook cell.") from None
    recorded = sealed({"module": function.__module__, "name": function.__qualname__, "source": source}, what)
    try:
        load(recorded)
    except Exception as exc:  # whatever running its definition raises, it would raise in every later session
        raise DefinitionError(f"{what} {function.__qualname__} would not load in a later session: "
                              f"{one_line(exc)}; {_ADVICE}.") from None
    return recorded


def source_hash(source: str) -> str:
    """The sha256 (hex) of a function's recorded source."""
    return hashlib.sha256(source.encode()).hexdigest()


def check_hash(recorded: dict[str, str], what: str) -> None:
    """Refuse a record whose source does not match the sha256 recorded with it (one without a hash passes)."""
    expected = recorded.get("sha256")
    if expected is not None and (not isinstance(recorded.get("source"), str)
                                 or source_hash(recorded["source"]) != expected):
        raise BrokenDefinition(f"{what} {recorded.get('name')}: its stored source does not match the sha256 recorded "
                               "when it was applied, so it was changed outside mlplat and is not run. Apply the view's "
                               "definition again from its notebook or file, and check the registry's audit trail.")


def sealed(recorded: dict[str, str], what: str) -> dict[str, str]:
    """``recorded`` with the sha256 of its source: checked when it has one, added when it has none."""
    check_hash(recorded, what)
    return {**recorded, "sha256": source_hash(recorded["source"])}


def load(recorded: dict[str, str]) -> Callable[..., Any]:
    """The function a :func:`describe` record names (this runs its definition: see :class:`StoredFunction`).

    A record whose source does not match its recorded sha256 is refused before anything is imported or run.
    """
    check_hash(recorded, "function")
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
        raise DefinitionError(f"the recorded source of {name} does not define it")
    return namespace[short]


class StoredFunction:
    """A registered function, loaded from its record when first called, never when its view is read.

    ``owner`` names the view and role in errors (``"feature view 'driver_daily' v1's transformation"``).
    A function that cannot load raises :class:`~mlplat.errors.BrokenDefinition` for its view alone, every
    time it is used; ``repr`` shows whether it loaded, failed or was not needed yet.
    """

    def __init__(self, recorded: dict[str, str], owner: str):
        self.recorded, self.owner = dict(recorded), owner
        self.__qualname__ = recorded["name"]  # named like the function it stands for, without loading it
        self._function: Callable[..., Any] | None = None
        self.error: str | None = None  # why it cannot be loaded, once that is known

    def load(self) -> Callable[..., Any]:
        """The function itself, loaded on first use."""
        if self._function is None:
            try:
                check_hash(self.recorded, self.owner)
            except BrokenDefinition as exc:
                self.error = "its stored source does not match its recorded sha256"
                raise exc from None
            try:
                self._function = load(self.recorded)
            except Exception as exc:  # anything the user's definition raises while it is defined
                self.error = one_line(exc)
                raise BrokenDefinition(f"{self.owner} {self.recorded['name']} cannot be loaded: {self.error}. "
                                       f"Apply a fixed definition of the view ({_ADVICE}).") from None
        return self._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:  # what inspect.signature reports: the function's own
        return inspect.signature(self.load())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoredFunction) and other.recorded == self.recorded

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.recorded.items())))

    def __reduce__(self) -> tuple[Any, ...]:  # to a Dask worker as its record: the worker loads it itself
        return StoredFunction, (self.recorded, self.owner)

    def __repr__(self) -> str:
        state = "loaded" if self._function is not None else \
            f"BROKEN: {self.error}" if self.error else "not loaded yet"
        return f"<stored function {self.recorded['name']} of {self.owner}: {state}>"


def loaded(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` itself: a :class:`StoredFunction` loaded (BrokenDefinition if it cannot be), any other as is."""
    return function.load() if isinstance(function, StoredFunction) else function



def _without_decorators(source: str) -> str:
    lines = source.splitlines()
    while lines and lines[0].lstrip().startswith("@"):
        lines.pop(0)
    return "\n".join(lines) + "\n"
