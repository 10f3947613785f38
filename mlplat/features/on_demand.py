"""On-demand features: a Python function over request data and stored features, run at read time.

An :class:`OnDemandFeatureView` stores nothing. Its ``function`` gets a DataFrame
with one row per entity row: a column per source feature (named after the
feature, or ``view__feature`` where two sources share a name) and per request
field; it returns the ``schema`` columns. ``get_online_features`` (latest values)
and ``get_training_set`` (point-in-time values) build that frame the same way,
with the same dtypes, call the function once per call and check what it
returns, so a model sees one transformation in training and in serving.

>>> def fare_per_km(df):
...     return pd.DataFrame({"fare_per_km": df["avg_fare"] / df["distance_km"]})
>>> OnDemandFeatureView("trip_features", sources=["driver_stats:avg_fare"],
...                     request=[Field("distance_km", "float64")],
...                     schema=[Field("fare_per_km", "float64")], function=fare_per_km)

Applying the view pins its sources to the versions registered then
(``driver_stats@2:avg_fare``): a model trained on ``trip_features@1`` keeps
reading the same data, and applying it again after a source moves to a new
version makes a new version of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mlplat.errors import (
    DefinitionError,
    DtypeMismatch,
    FeatureNotFound,
    InvalidArgument,
    MissingColumnError,
    OnDemandFeatureError,
)
from mlplat.features import udf
from mlplat.features.definitions import Entity, FeatureView, Field, _as_list, _check_name, check_metadata
from mlplat.features.refs import ViewRequest, parse_ref

if TYPE_CHECKING:
    import pandas as pd

# What an on-demand view cannot use: it has no rows of its own to time, expire, read or screen.
_STORAGE_ONLY = {"timestamp_field": "event_timestamp", "created_timestamp_field": None, "ttl": None,
                 "source": None, "on_violation": "reject"}


@dataclasses.dataclass(frozen=True)
class OnDemandFeatureView(FeatureView):
    """Features computed at read time by ``function`` from ``sources`` (``view:feature``) and ``request`` data.

    ``function(df) -> DataFrame`` must be a ``def`` function; it is recorded in the
    registry by module, name and source (see :mod:`mlplat.features.udf`), so a
    function defined in a notebook works in a later session too (with ``pd`` and
    ``np`` at hand; import anything else inside it).
    """

    entities: list[Entity] = dataclasses.field(default_factory=list)  # none: its rows are its sources' entity rows
    schema: list[Field] = dataclasses.field(default_factory=list)  # the outputs
    sources: list[str] = dataclasses.field(default_factory=list, kw_only=True)
    request: list[Field] = dataclasses.field(default_factory=list, kw_only=True)
    function: Callable[[pd.DataFrame], pd.DataFrame] | dict[str, str] | None = dataclasses.field(
        default=None, kw_only=True, compare=False)  # a function, or its registry record (loaded on first use)

    kind: ClassVar[str] = "on_demand"

    def __post_init__(self) -> None:
        _check_name("OnDemandFeatureView", self.name)
        where = f"OnDemandFeatureView {self.name!r}"
        for attr in ("entities", "schema", "sources", "request"):
            value = getattr(self, attr)
            if isinstance(value, (str, Field)):
                value = [value]
            object.__setattr__(self, attr, _as_list(value, f"{where}: {attr}", f"{attr}=[...]"))
        check_metadata(self, where)
        object.__setattr__(self, "tags", dict(self.tags))
        if self.entities:
            raise DefinitionError(f"{where} takes no entities: it has a row for each entity row of its sources. "
                                  "Remove entities= and name the source features in sources=[...].")
        for attr, default in _STORAGE_ONLY.items():
            if getattr(self, attr) != default:
                raise DefinitionError(f"{where}: {attr}= does not apply to an on-demand view, which stores nothing; "
                                      "set it on the source views.")
        self._check_sources(where)
        self._check_fields(where)
        object.__setattr__(self, "udf", _record(self.function, where))
        if isinstance(self.function, dict):  # read from the registry: loaded when the view is first served
            owner = f"on-demand view {self.name!r} v{self.version}: function"
            object.__setattr__(self, "function", udf.StoredFunction(self.udf, owner))

    def _check_sources(self, where: str) -> None:
        if not self.sources:
            raise DefinitionError(f"{where} needs sources=['view:feature', ...]: the stored features it computes from.")
        for ref in self.sources:
            try:
                _, _, feature = parse_ref(ref)
            except FeatureNotFound as exc:
                raise DefinitionError(f"{where}: bad source. {exc}") from None
            if feature == "*":
                raise DefinitionError(f"{where}: source {ref!r} must name one feature, e.g. 'driver_stats:rating'.")
        twice = sorted({ref for ref in self.sources if self.sources.count(ref) > 1})
        if twice:
            raise DefinitionError(f"{where} lists source(s) {twice} twice; list each once.")

    def _check_fields(self, where: str) -> None:
        if not all(isinstance(f, Field) for f in self.request):
            raise DefinitionError(f"{where} needs request=[Field('distance_km', 'float64'), ...] (or none).")
        if not self.schema or not all(isinstance(f, Field) for f in self.schema):
            raise DefinitionError(f"{where} needs schema=[Field('name', 'float64'), ...]: the columns it returns.")
        for f in (*self.request, *self.schema):
            if f.rules():
                raise DefinitionError(f"{where}: field {f.name!r} declares {f.rules()}, but expectations are checked "
                                      "on ingest and push, which an on-demand view has none of; remove them.")
        names = [*self.inputs.values(), *(f.name for f in self.request), *(f.name for f in self.schema)]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise DefinitionError(
                f"{where} uses the name(s) {clashes} twice; the function's input columns (one per source feature "
                f"{list(self.inputs.values())} and request field) and its outputs each need their own name."
            )

    @property
    def inputs(self) -> dict[str, str]:
        """Source reference -> the column the function gets it as: the feature name, or ``view__feature``."""
        parsed = [(ref, *parse_ref(ref)) for ref in self.sources]
        counts = Counter(feature for *_, feature in parsed)
        return {ref: feature if counts[feature] == 1 else f"{name}__{feature}" for ref, name, _, feature in parsed}

    def transform(self, inputs: pd.DataFrame) -> pd.DataFrame:
        """Run the function on ``inputs`` and check its output: the schema columns, typed, one row per input row.

        Retrieval runs the same, on typed source and request columns; call it yourself to try a definition:
        ``view.transform(pd.DataFrame({"avg_fare": [20.0], "distance_km": [4.0]}))``.
        """
        import pandas as pd

        return pd.DataFrame({name: _to_pandas(array).array for name, array in self._compute(inputs).items()},
                            index=inputs.index)

    def _compute(self, inputs: pd.DataFrame) -> dict[str, Any]:
        """Output name -> checked Arrow array of its dtype (nulls where missing)."""
        if len(inputs) == 0:  # nothing to compute: spare the function an empty frame
            return {f.name: _arrow([], f.dtype) for f in self.schema}
        function = self._function()
        try:
            out = function(inputs)
        except Exception as exc:  # the user's code: say whose, keep the traceback
            raise OnDemandFeatureError(f"The function {self.udf['name']} of on-demand view {self.name!r} raised "
                                       f"{type(exc).__name__}: {exc}") from exc
        return {f.name: self._output(out, f, len(inputs)) for f in self.schema}

    def _output(self, out: Any, field: Field, rows: int) -> Any:
        import pandas as pd

        expected = ", ".join(f"{f.name} ({f.dtype})" for f in self.schema)
        said = f"The function {self.udf['name']} of on-demand view {self.name!r}"
        if not isinstance(out, pd.DataFrame):
            raise OnDemandFeatureError(f"{said} returned a {type(out).__name__}; it must return a pandas DataFrame "
                                       f"with the columns {expected}.")
        missing = [f.name for f in self.schema if f.name not in out.columns or list(out.columns).count(f.name) > 1]
        if missing:
            raise OnDemandFeatureError(f"{said} returned the columns {list(out.columns)}; it must return each of "
                                       f"{expected} once (lacking or doubled: {missing}).")
        if len(out) != rows:
            raise OnDemandFeatureError(f"{said} returned {len(out)} rows for {rows} input rows; it must return one row "
                                       "per input row, in the same order (no filtering, no aggregation).")
        try:
            return _arrow(out[field.name], field.dtype)
        except DtypeMismatch as exc:
            raise OnDemandFeatureError(f"{said} returned column {field.name!r} as {out[field.name].dtype}, which "
                                       f"cannot be read as the declared {field.dtype}: {exc}") from None

    def _function(self) -> Callable[[pd.DataFrame], pd.DataFrame]:
        """The function itself (a registered view's is loaded now; BrokenDefinition if it cannot be)."""
        return udf.loaded(self.function)

    def _schema_part(self) -> dict[str, Any]:
        # What decides the values: a new source version, request field or function body makes a new version.
        return {"sources": self.sources, "request": [[f.name, f.dtype] for f in self.request],
                "function": self.udf["source"], "fields": [[f.name, f.dtype] for f in self.schema]}

    def kind_changes(self, old: FeatureView) -> list[dict[str, Any]]:
        """New sources (or source versions), request fields or a new function body make a new version: they
        decide the values, and a model trained on ``view@1`` must keep getting what it was trained on."""
        assert isinstance(old, OnDemandFeatureView)
        changes = []
        if not _same_sources(old.sources, self.sources):
            changes.append({"change": "sources changed", "from": old.sources, "to": self.sources, "incompatible": True})
        old_request, new_request = ([f"{f.name}:{f.dtype}" for f in v.request] for v in (old, self))
        if old_request != new_request:
            changes.append({"change": "request changed", "from": old_request, "to": new_request, "incompatible": True})
        elif [f.description for f in old.request] != [f.description for f in self.request]:
            changes.append({"change": "request description changed", "incompatible": False})
        if old.udf["source"] != self.udf["source"]:
            changes.append({"change": "function changed", "name": self.udf["name"], "incompatible": True})
        elif "sha256" not in old.udf and "sha256" in self.udf:  # stored before hashes: recorded on this apply
            changes.append({"change": "function hash recorded", "name": self.udf["name"], "incompatible": False})
        elif (old.udf["module"], old.udf["name"]) != (self.udf["module"], self.udf["name"]):
            changes.append({"change": "function moved", "from": f"{old.udf['module']}.{old.udf['name']}",
                            "to": f"{self.udf['module']}.{self.udf['name']}", "incompatible": False})
        return changes

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["request"] = [f.to_dict() for f in self.request]
        data["function"] = dict(self.udf)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnDemandFeatureView:
        data = dict(data)
        data["request"] = [Field(**f) for f in data.get("request", [])]
        return super().from_dict(data)

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(f"<tr><td>{escape(f.name)}</td><td>{f.dtype}</td><td>{escape(f.description)}</td></tr>"
                       for f in self.schema)
        facts = {"computed by": self.udf["name"], "sources": ", ".join(self.sources),
                 "request": ", ".join(f"{f.name} ({f.dtype})" for f in self.request) or "-",
                 "owner": self.owner or "-", "team": self.team or "-",
                 "tags": ", ".join(f"{k}={v}" for k, v in self.tags.items()) or "-"}
        header = "".join(f"<div><b>{k}</b>: {escape(v)}</div>" for k, v in facts.items())
        return (f"<div><h4>{escape(self.name)} v{self.version} (on demand)</h4><p>{escape(self.description)}</p>"
                f"{header}<table><tr><th>feature</th><th>dtype</th><th>description</th></tr>{rows}</table></div>")


def _same_sources(registered: list[str], given: list[str]) -> bool:
    """Equal, where an unpinned ``view:feature`` (a definition not applied yet, as ``diff`` previews it) matches
    any version of it: applying pins it first, so a new source version still shows as a change there."""
    if len(registered) != len(given):
        return False
    for old, new in zip(registered, given):
        (old_view, _, old_feature), (new_view, version, new_feature) = parse_ref(old), parse_ref(new)
        if old != new and (version is not None or (old_view, old_feature) != (new_view, new_feature)):
            return False
    return True


def _record(function: Any, where: str) -> dict[str, str]:
    """The registry record of ``function`` (checked), or the record itself when loaded from the registry."""
    if isinstance(function, udf.StoredFunction):
        function = function.recorded
    if isinstance(function, dict):
        if not {"module", "name", "source"} <= set(function) <= {"module", "name", "source", "sha256"}:
            raise DefinitionError(f"{where}: function record {sorted(function)} needs module, name and source "
                                  "(and sha256, the hash of its source, when recorded).")
        udf.check_hash(function, f"{where}: function")  # a stored record edited outside mlplat is refused
        return dict(function)
    recorded = udf.describe(function, f"{where}: function")
    try:
        inspect.signature(function).bind(None)
    except TypeError:
        raise DefinitionError(f"{where}: function {function.__qualname__} must take one argument, a DataFrame of "
                              "its inputs, and return a DataFrame of its outputs.") from None
    return recorded


def is_on_demand(view: FeatureView) -> bool:
    return isinstance(view, OnDemandFeatureView)


def refuse_storage(view: FeatureView, action: str) -> FeatureView:
    """``view``, unless it is on-demand: it has no rows to ingest, push or materialise."""
    if isinstance(view, OnDemandFeatureView):
        raise DefinitionError(f"{view.name!r} is an on-demand view: it stores nothing, so there is nothing to {action}. "
                              f"{action.capitalize()} its sources ({', '.join(view.sources)}) instead.")
    return view


# -- registering -------------------------------------------------------------------


def pin_sources(view: OnDemandFeatureView, lookup: Callable[[str, int | None], FeatureView | None],
                known: Iterable[str]) -> OnDemandFeatureView:
    """``view`` with each source pinned to a registered version (``driver_stats@2:rating``), all checked.

    ``lookup(name, version)`` returns the registered view or None; ``known`` names them all, for hints.
    """
    pinned, where = [], f"OnDemandFeatureView {view.name!r}"
    for ref in view.sources:
        name, version, feature = parse_ref(ref)
        source = lookup(name, version)
        if source is None:
            hint = difflib.get_close_matches(name, list(known), n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            at = f" at version {version}" if version is not None and name in known else ""
            raise DefinitionError(f"{where}: source {ref!r} names no registered feature view{at}{did_you_mean}; "
                                  "apply the source view first, or in the same apply().")
        if isinstance(source, OnDemandFeatureView):
            raise DefinitionError(f"{where}: source {ref!r} is itself on-demand; compute from stored features: "
                                  f"use its sources ({', '.join(source.sources)}).")
        if feature not in source.feature_names:
            hint = difflib.get_close_matches(feature, source.feature_names, n=1)
            did_you_mean = f"did you mean {name}:{hint[0]}? " if hint else ""
            raise DefinitionError(f"{where}: source {ref!r}: view {name!r} (v{source.version}) has no feature "
                                  f"{feature!r}; {did_you_mean}it has {', '.join(source.feature_names)}.")
        pinned.append(f"{source.name}@{source.version}:{feature}")
    return dataclasses.replace(view, sources=pinned)


def source_views(refs: Iterable[str], get_view: Callable[[str, int | None], FeatureView]) -> list[str]:
    """``name@version`` of every view ``refs`` read, on-demand views' sources included (for lineage tags)."""
    found: set[str] = set()
    for ref in refs:
        name, version, _ = parse_ref(ref)
        view = get_view(name, version)
        found.add(f"{view.name}@{view.version}")
        if isinstance(view, OnDemandFeatureView):
            found.update(source.split(":")[0] for source in view.sources)
    return sorted(found)


# -- reading -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Step:
    """One on-demand request: its view and features, and where each function input comes from."""

    request: ViewRequest
    inputs: tuple[tuple[str, str, str], ...]  # (input column, column read, dtype)


@dataclasses.dataclass(frozen=True)
class Expansion:
    """Resolved requests that include on-demand views: what to read from storage, then what to compute.

    ``reads`` are the stored requests asked for, then the sources not asked for
    (under hidden column names, dropped from the result).
    """

    reads: list[ViewRequest]
    steps: tuple[_Step, ...]
    columns: tuple[str, ...]  # the feature columns asked for, in the order asked

    def check_request(self, columns: Iterable[str]) -> None:
        """``entity_df`` must carry every request column (each row's value at request time)."""
        have = set(columns)
        for step in self.steps:
            for field in step.request.view.request:
                if field.name not in have:
                    raise MissingColumnError(
                        f"entity_df lacks request column {field.name!r} ({field.dtype}), which on-demand view "
                        f"{step.request.view.name!r} needs; add the value each row had at request time.")

    def finish_online(self, values: dict[str, list], entity_columns: Mapping[str, Sequence[Any]],
                      request_data: Mapping[str, Sequence[Any]] | None) -> dict[str, list]:
        """Entity columns, then the features asked for (on-demand ones computed), from an online read."""
        import pandas as pd

        rows = len(next(iter(entity_columns.values()))) if entity_columns else 0
        for step in self.steps:
            inputs = {name: typed(values[column], dtype).array for name, column, dtype in step.inputs}
            for field in step.request.view.request:
                given = _request_values(step.request.view, field, request_data, entity_columns, rows)
                inputs[field.name] = _typed_request(step.request.view, field, given).array
            out = step.request.view._compute(pd.DataFrame(inputs, index=pd.RangeIndex(rows)))
            for feature, column in zip(step.request.features, step.request.columns):
                values[column] = out[feature].to_pylist()
        return {**{k: values[k] for k in entity_columns}, **{c: values[c] for c in self.columns}}

    def finish_offline(self, frame: pd.DataFrame, entity_width: int) -> pd.DataFrame:
        """The entity columns (the first ``entity_width``), then the features asked for, from a joined frame."""
        import pandas as pd

        found = {c: frame[c].array for c in self.columns if c in frame.columns}
        for step in self.steps:
            inputs = {name: typed(frame[column], dtype).array for name, column, dtype in step.inputs}
            for field in step.request.view.request:
                inputs[field.name] = _typed_request(step.request.view, field, frame[field.name]).array
            out = step.request.view._compute(pd.DataFrame(inputs, index=pd.RangeIndex(len(frame))))
            found.update({column: _to_pandas(out[feature]).array for feature, column in
                          zip(step.request.features, step.request.columns)})
        features = pd.DataFrame({c: found[c] for c in self.columns}, index=frame.index)
        return pd.concat([frame.iloc[:, :entity_width], features], axis=1)

    def finish_lazy(self, joined: Any, entity_width: int) -> Any:
        """:meth:`finish_offline` on each partition of a lazy dask DataFrame (the function runs once per partition)."""
        meta = self.finish_offline(joined._meta, entity_width)
        return joined.map_partitions(self.finish_offline, entity_width, meta=meta)


def expand(requests: list[ViewRequest], get_view: Callable[[str, int | None], FeatureView]) -> Expansion:
    """What ``requests`` read and compute; with no on-demand view, the requests themselves and no steps."""
    columns = tuple(c for r in requests for c in r.columns)
    stored = [r for r in requests if not isinstance(r.view, OnDemandFeatureView)]
    if len(stored) == len(requests):
        return Expansion(list(requests), (), columns)
    have = {(r.view.name, r.view.version, f): c for r in stored for f, c in zip(r.features, r.columns)}
    hidden: dict[tuple[str, int], tuple[FeatureView, list[str], list[str]]] = {}
    steps = []
    for request in requests:
        if not isinstance(request.view, OnDemandFeatureView):
            continue
        inputs = []
        for ref, name in request.view.inputs.items():
            view_name, version, feature = parse_ref(ref)
            source = get_view(view_name, version)
            key = (source.name, source.version, feature)
            if key not in have:  # a source not asked for: read under a name no feature or entity column has
                have[key] = f"__source:{source.name}@{source.version}:{feature}"
                _, features, names = hidden.setdefault(key[:2], (source, [], []))
                features.append(feature)
                names.append(have[key])
            inputs.append((name, have[key], source.field(feature).dtype))
        steps.append(_Step(request, tuple(inputs)))
    reads = [ViewRequest(view, tuple(features), tuple(names)) for view, features, names in hidden.values()]
    return Expansion([*stored, *reads], tuple(steps), columns)


def typed(values: Any, dtype: str) -> pd.Series:
    """``values`` (a Series or list) as a training set holds a feature of ``dtype``; DtypeMismatch if they do not fit.

    Both retrieval paths pass every function input and output through here, so
    the function sees the same dtypes online and offline, and its outputs come
    out as stored features of the same dtype do (nullable integers and booleans).
    """
    return _to_pandas(_arrow(values, dtype))


def _arrow(values: Any, dtype: str) -> Any:
    """``values`` as an Arrow array of ``dtype`` (NaN and None as null), cast as ingest casts."""
    import pyarrow as pa

    from mlplat.features.schema import _ACCEPTS, ARROW_TYPES

    target = ARROW_TYPES[dtype]
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DtypeMismatch(f"the values are of mixed or unsupported types ({exc})") from None
    if array.type == target:
        return array
    if not pa.types.is_null(array.type) and not any(accepts(array.type) for accepts in _ACCEPTS[dtype]):
        raise DtypeMismatch(f"values of type {array.type} are not {dtype}")
    try:
        return array.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DtypeMismatch(f"some values do not fit ({exc})") from None


def _to_pandas(array: Any) -> pd.Series:
    from mlplat.features.retrieval import _NULLABLE

    return array.to_pandas(types_mapper=_NULLABLE.get)


def _request_values(view: OnDemandFeatureView, field: Field, request_data: Mapping[str, Sequence[Any]] | None,
                    entity_columns: Mapping[str, Sequence[Any]], rows: int) -> Sequence[Any]:
    if request_data is not None and field.name in request_data:
        given, where = request_data[field.name], f"request_data[{field.name!r}]"
    elif field.name in entity_columns:
        given, where = entity_columns[field.name], f"entity rows' {field.name!r}"
    else:
        raise MissingColumnError(
            f"On-demand view {view.name!r} needs request data {field.name!r} ({field.dtype}); pass "
            f"request_data={{{field.name!r}: [...]}} with one value per entity row, or put it in the entity rows.")
    count = len(given) if hasattr(given, "__len__") and not isinstance(given, (str, bytes)) else None
    if count != rows:
        raise InvalidArgument(f"{where} has {'no list of' if count is None else count} values for {rows} entity "
                              "rows; give one value per entity row.")
    return given


def _typed_request(view: OnDemandFeatureView, field: Field, values: Any) -> pd.Series:
    try:
        return typed(values, field.dtype)
    except DtypeMismatch as exc:
        raise DtypeMismatch(f"Request data {field.name!r} of on-demand view {view.name!r} is declared {field.dtype}, "
                            f"but {exc}; convert it.") from None
