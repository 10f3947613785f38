"""Batch feature views: features a transformation computes from a source, partition by partition.

A :class:`BatchFeatureView` is a FeatureView with a ``transformation``: a Python
function over a pandas DataFrame, or a SQL query (run by DuckDB) over its
``sources`` (Parquet or CSV files, or DataFrames given to ``compute``).
``p.features.compute(view, start, end)`` cuts ``[start, end)`` into partitions
(a UTC day by default) and, for each, runs the transformation, checks what it
returned against the view, screens it by the view's expectations (as ingest
does) and stores it offline. With a Dask ``client`` the partitions run in
parallel on the workers (each still hands the transformation a pandas
DataFrame); without one they run here, one after the other.

What a transformation sees, and what it must return:

- A Python function ``fn(df)`` gets the source rows whose time column
  (``source_timestamp_field``, default the view's ``timestamp_field``) is in
  ``[start - lookback, end)``; if it declares ``start`` and ``end`` parameters it
  gets the partition's bounds too (UTC ``pd.Timestamp``). ``lookback`` gives a
  rolling feature the history it needs; rows it returns from before ``start``
  are that history, and are dropped.
- A SQL query sees each source as a table of that name and the partition's
  bounds as the parameters ``$start`` and ``$end`` (UTC timestamps); it filters
  the rows it reads itself (``WHERE pickup_at >= $start AND pickup_at < $end``).
- Either returns exactly the view's join keys, timestamp field(s) and features,
  of types the features accept, with event times in ``[start, end)``; anything
  else is a :class:`~mlplat.errors.TransformationError` naming the partition. An
  aggregate known only once the partition closes is stamped just before its end
  (``end - pd.Timedelta(1, "us")``, in SQL ``$end - INTERVAL 1 MICROSECOND``), so
  point-in-time joins never see it early.

Every partition's outcome is a row of the ``feature_compute_partitions`` table
(status, rows, error, start and finish time). Computing a range again skips the
partitions that succeeded, so a backfill that failed resumes where it stopped;
``force=True`` recomputes them. A recomputed partition *replaces* its earlier
rows (:meth:`OfflineStore.replace`): rerunning never duplicates anything.

One module per concern:

- :mod:`~mlplat.features.compute.view`: the :class:`BatchFeatureView` definition;
- :mod:`~mlplat.features.compute.partitions`: cutting a range into partitions, naming them, how one went;
- :mod:`~mlplat.features.compute.log`: the partition log table;
- :mod:`~mlplat.features.compute.runner`: what is due, running the partitions here or on Dask, the result;
- :mod:`~mlplat.features.compute.task`: one partition computed, checked, screened and stored;
- :mod:`~mlplat.features.compute.sources`: finding and reading a view's source files;
- :mod:`~mlplat.features.compute.sql`: running a SQL transformation on DuckDB;
- :mod:`~mlplat.features.compute.output`: checking what a transformation returned;
- :mod:`~mlplat.features.compute.schedule`: asking a scheduler to run the compute template on a cron.
"""

from mlplat.features.compute.view import BatchFeatureView

__all__ = ["BatchFeatureView"]
