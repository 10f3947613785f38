"""Point-in-time correct training sets, in process or on a Dask cluster.

``training_set`` returns ``entity_df`` with one column per requested feature:
every input row exactly once, in its original order and index, extra columns
untouched. Each view is read only over the time window the query rows need
(from the earliest query time minus the TTL to the latest query time).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mlplat.errors import EntityDataFrameError, MissingColumnError, SchemaError
from mlplat.features.offline import OfflineStore
from mlplat.features.pit import key_codes, latest_at
from mlplat.features.refs import ViewRequest
from mlplat.features.schema import timestamp_column

_NULLABLE = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def refuse_clashes(columns: Iterable[Any], features: list[str]) -> None:
    """Refuse an entity_df column named like a feature column the join would add (it would be renamed or lost)."""
    clashes = [c for c in features if c in set(columns)]
    if clashes:
        raise EntityDataFrameError(
            f"entity_df already has the column(s) {clashes}, which the requested features would add; rename or "
            "drop them first (a label named like a feature needs a name of its own).")


def entity_times(entity_df: pd.DataFrame, timestamp_field: str) -> np.ndarray:
    """The query times of ``entity_df`` as int64 ns UTC, validated."""
    if not isinstance(entity_df, pd.DataFrame):
        raise EntityDataFrameError(f"entity_df must be a pandas DataFrame, not {type(entity_df).__name__}.")
    twice = sorted({str(c) for c in entity_df.columns[entity_df.columns.duplicated()]})
    if twice:
        raise EntityDataFrameError(f"entity_df has the column(s) {twice} more than once; keep one of each.")
    if timestamp_field not in entity_df.columns:
        raise EntityDataFrameError(
            f"entity_df has no {timestamp_field!r} column, so there is no time to join features as of. "
            f"Add the time each row was observed (its label time) as {timestamp_field!r}, or pass "
            "timestamp_field='your_column'."
        )
    column = pa.chunked_array([pa.array(entity_df[timestamp_field], from_pandas=True)])
    try:
        return timestamp_column(column, timestamp_field, "entity_df").to_numpy().astype(np.int64)
    except SchemaError as exc:
        raise EntityDataFrameError(str(exc)) from None


def check_keys(entity_df: pd.DataFrame, requests: list[ViewRequest]) -> None:
    """Every requested view's join keys must be columns of ``entity_df``, of a joinable kind."""
    for request in requests:
        for key in request.view.join_keys:
            if key not in entity_df.columns:
                raise MissingColumnError(
                    f"entity_df lacks join key {key!r}, needed for view {request.view.name!r}; "
                    f"it has columns {list(entity_df.columns)}."
                )
            if entity_df[key].isna().any():
                raise EntityDataFrameError(f"entity_df column {key!r} has null values; drop or fill those rows.")


def training_set(
    offline: OfflineStore, requests: list[ViewRequest], entity_df: pd.DataFrame, timestamp_field: str
) -> pd.DataFrame:
    """Join every request onto ``entity_df`` as of each row's timestamp (in process)."""
    return with_features(entity_df, features_at(offline, requests, entity_df, timestamp_field))


def features_at(
    offline: OfflineStore, requests: list[ViewRequest], entity_df: pd.DataFrame, timestamp_field: str
) -> pa.Table:
    """Every request's feature columns as of each row of ``entity_df``: one Arrow row per entity row, in order."""
    query_ts = entity_times(entity_df, timestamp_field)
    check_keys(entity_df, requests)
    picked = [_join_view(offline, request, entity_df, query_ts) for request in requests]
    return pa.Table.from_arrays([c for t in picked for c in t.columns], [n for t in picked for n in t.column_names])


def with_features(entity_df: pd.DataFrame, features: pa.Table) -> pd.DataFrame:
    """``entity_df`` with the columns of ``features`` (from :func:`features_at`) beside it."""
    frame = features.to_pandas(types_mapper=_NULLABLE.get, split_blocks=True)
    frame.index = entity_df.index
    return pd.concat([entity_df, frame], axis=1)


def _join_view(
    offline: OfflineStore, request: ViewRequest, entity_df: pd.DataFrame, query_ts: np.ndarray
) -> pa.Table:
    view = request.view
    ttl_ns = None if view.ttl is None else int(view.ttl.total_seconds() * 1e9)
    if len(query_ts):
        start = None if ttl_ns is None else int(query_ts.min()) - ttl_ns
        end = int(query_ts.max())
    else:
        start = end = 0
    created = view.created_timestamp_field
    read = [*view.join_keys, view.timestamp_field, *filter(None, [created]), *request.features]
    data = offline.read(view, read, start, end)
    _check_key_kinds(entity_df, data, view.join_keys, view.name)
    query_codes, data_codes = key_codes(
        [entity_df[k].to_numpy() for k in view.join_keys],
        [data.column(k).to_numpy() for k in view.join_keys],
    )
    data_ts = data.column(view.timestamp_field).to_numpy().view(np.int64)
    data_created = None
    if created:
        data_created = data.column(created).fill_null(pa.scalar(0, data.schema.field(created).type))
        data_created = data_created.to_numpy().view(np.int64)
    hit = latest_at(query_codes, query_ts, data_codes, data_ts, data_created, ttl_ns)
    picked = data.select(list(request.features)).take(pa.array(hit, mask=hit < 0))
    return picked.rename_columns(list(request.columns))


def _check_key_kinds(entity_df: pd.DataFrame, data: pa.Table, keys: list[str], view: str) -> None:
    for key in keys:
        if data.num_rows == 0:
            return
        ours = pa.types.is_integer(data.schema.field(key).type)
        theirs = pd.api.types.is_integer_dtype(entity_df[key].dtype)
        if ours != theirs:
            raise EntityDataFrameError(
                f"entity_df column {key!r} has dtype {entity_df[key].dtype} but view {view!r} stores "
                f"{data.schema.field(key).type} keys; convert it so the keys can match."
            )


def training_set_on_dask(
    client: Any, offline_url: str, requests: list[ViewRequest], entity_df: pd.DataFrame,
    timestamp_field: str, partitions: int | None = None,
) -> pd.DataFrame:
    """The same join, split by time into partitions that run as tasks on a Dask cluster.

    Each task reads only the window its rows need, so the data read at once is
    bounded by a partition's time span plus the TTL, not the whole store.
    """
    query_ts = entity_times(entity_df, timestamp_field)
    check_keys(entity_df, requests)
    if partitions is None:
        partitions = max(1, 2 * len(client.scheduler_info().get("workers", {})))
    order = np.argsort(query_ts, kind="stable")
    chunks = [entity_df.iloc[part] for part in np.array_split(order, partitions) if len(part)]
    # Scattered first, the rows go straight to the workers rather than through the scheduler's graph.
    futures = client.map(_join_partition, client.scatter(chunks), offline_url=offline_url, requests=requests,
                         timestamp_field=timestamp_field, pure=False)
    joined = pd.concat(client.gather(futures)) if chunks else training_set(
        OfflineStore(offline_url), requests, entity_df, timestamp_field)
    # Positions, not labels, so duplicate index labels come back exactly once each.
    return joined.iloc[np.argsort(order, kind="stable")]


def _join_partition(chunk: pd.DataFrame, offline_url: str, requests: list[ViewRequest], timestamp_field: str):
    return training_set(OfflineStore(offline_url), requests, chunk, timestamp_field)


def training_set_lazy(offline_url: str, requests: list[ViewRequest], entity_ddf: Any, timestamp_field: str) -> Any:
    """The join over a ``dask.dataframe`` entity set: a lazy dask DataFrame, one task per partition.

    For data larger than memory: nothing is read until the result is computed
    (or written with ``to_parquet``), and each partition reads only the window
    its own rows need, so partitions that each span a short time keep tasks small.
    """
    meta = training_set(OfflineStore(offline_url), requests, entity_ddf._meta, timestamp_field)
    return entity_ddf.map_partitions(_join_partition, offline_url=offline_url, requests=requests,
                                     timestamp_field=timestamp_field, meta=meta)
