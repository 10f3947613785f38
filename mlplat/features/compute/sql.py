"""SQL transformations: each source a DuckDB table, the partition's bounds ``$start`` and ``$end``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from mlplat.errors import MissingDependency, TransformationError
from mlplat.features.compute.sources import find_files
from mlplat.features.compute.view import BatchFeatureView


def duckdb_module() -> Any:
    """The ``duckdb`` module; MissingDependency saying which extra to install when it is absent."""
    try:
        import duckdb
    except ImportError:
        raise MissingDependency("SQL transformations run on DuckDB; install it with "
                                "`pip install 'mlplat[compute]'`.") from None
    return duckdb


def run_sql(view: BatchFeatureView, tables: Mapping[str, Any], start: pd.Timestamp, end: pd.Timestamp,
            threads: int | None) -> pa.Table:
    """The view's query over ``tables`` (DataFrames, Arrow tables or paths) for the partition ``[start, end)``."""
    duckdb = duckdb_module()
    query = view.transformation
    con = duckdb.connect(config={"threads": threads} if threads else {})
    try:
        con.execute("SET TimeZone = 'UTC'")
        for name, source in tables.items():
            if isinstance(source, (pd.DataFrame, pa.Table)):
                con.register(name, source)
                continue
            files = find_files(view, source)
            if isinstance(files, str) and Path(files).is_dir():
                files = os.path.join(files, "**", "*.parquet")
            listed = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in
                                     ([files] if isinstance(files, str) else files)) + "]"
            reader = "read_csv" if source.lower().endswith(".csv") else "read_parquet"
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {reader}({listed})')
        params = {k: v.to_pydatetime() for k, v in (("start", start), ("end", end))
                  if re.search(rf"\${k}\b", query)}
        relation = con.sql(query, params=params or None)
        if relation is None:
            raise TransformationError(f"The SQL transformation of feature view {view.name!r} returns no rows; "
                                      "it must be a SELECT.")
        return (getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table)()
    except duckdb.Error as exc:
        raise TransformationError(f"The SQL transformation of feature view {view.name!r} failed: {exc}") from None
    finally:
        con.close()
