"""The offline store: Parquet files, one folder per view version, partitioned by date.

Layout under the store's root (a local folder or an S3-compatible bucket)::

    <view>/v<version>/date=YYYY-MM-DD/<ingest-ns>-<random>.parquet
    <view>/v<version>/date=YYYY-MM-DD/<ingest-ns>-<tag>.parquet     (a computed partition, see replace)

Each ingest writes every file to a hidden temporary name first and renames them
into place only after all were written, so readers never see half an ingest (on
object stores, where an upload appears whole, files are written in place and
removed again if a later one fails).
The ``<ingest-ns>`` prefix orders files by arrival: among rows with equal
timestamps the one ingested last wins, and materialisation finds new files by it.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlplat.errors import ConfigError, SchemaError
from mlplat.features.definitions import FeatureView
from mlplat.features.keys import kind_of
from mlplat.features.schema import TIMESTAMP, arrow_schema
from mlplat.files import private_umask


@dataclass(frozen=True)
class IngestResult:
    """Rows written and the files they went to."""

    view: str
    version: int
    rows: int
    files: list[str]


@dataclass(frozen=True)
class StoredFile:
    """One Parquet file of a view and when it was ingested."""

    path: str
    ingest_ns: int
    day: str  # its date=YYYY-MM-DD partition


def _filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"Cannot open offline store {url!r}: {exc}. Check offline_store in your settings.") from None


class OfflineStore:
    """Append-only Parquet storage of feature rows."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = _filesystem(url if "://" in url else f"file://{url}")
        self._key_kinds: dict[tuple[str, int], dict[str, str]] = {}  # fixed once stored: cached for good

    def key_kinds(self, view: FeatureView) -> dict[str, str]:
        """Each join key's kind (``"int64"`` or ``"string"``, see :mod:`mlplat.features.keys`); empty before any write."""
        found = self._key_kinds.get((view.name, view.version))
        if found is None:
            files = self.files(view)
            if not files:
                return {}
            schema = pq.read_schema(files[-1].path, filesystem=self.fs)
            found = self._key_kinds[(view.name, view.version)] = {k: kind_of(schema.field(k).type)
                                                                  for k in view.join_keys}
        return found

    def _check_key_kinds(self, view: FeatureView, table: pa.Table) -> None:
        stored = self.key_kinds(view)
        for key, kind in stored.items():
            if kind_of(table.schema.field(key).type) != kind:
                raise SchemaError(
                    f"Join key {key!r} of view {view.name!r} holds {kind} keys, but these rows have "
                    f"{table.schema.field(key).type} ones; convert them (e.g. df[{key!r}].astype("
                    f"{'int' if kind == 'int64' else 'str'})) so both name the same entities."
                )

    def _view_dir(self, view: FeatureView) -> str:
        return f"{self.root}/{view.name}/v{view.version}"

    def write(self, view: FeatureView, table: pa.Table, tag: str | None = None) -> IngestResult:
        """Append a table already conformed to ``view``, atomically; ``tag`` (see :meth:`replace`) names its files."""
        if table.num_rows == 0:
            return IngestResult(view.name, view.version, 0, [])
        self._check_key_kinds(view, table)
        # UTC dates as YYYY-MM-DD: a cast, about ten times faster than pc.strftime
        days = table.column(view.timestamp_field).cast(pa.date32()).cast(pa.string())
        table = table.append_column("__date", days).sort_by("__date")
        ingest_ns = time.time_ns()
        # Dictionary pages make distinct floats larger and slower to read; keep them for repeating values.
        dictionary_columns = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
        # A local folder gets hidden temporary files renamed into place at the end; an object
        # store publishes an object only when its upload completes, so there files go in place.
        in_place = not isinstance(self.fs, pafs.LocalFileSystem)
        staged: list[tuple[str, str]] = []
        try:
            for day in pc.unique(table.column("__date")).to_pylist():
                part = table.filter(pc.equal(table.column("__date"), day)).drop_columns(["__date"])
                folder = f"{self._view_dir(view)}/date={day}"
                name = f"{ingest_ns:020d}-{tag or uuid.uuid4().hex[:8]}.parquet"
                with private_umask():  # a local store's folders and files: 0700/0600
                    self.fs.create_dir(folder, recursive=True)
                    staged.append((f"{folder}/{name}" if in_place else f"{folder}/.{name}.tmp", f"{folder}/{name}"))
                    pq.write_table(part, staged[-1][0], filesystem=self.fs, compression="snappy",
                                   use_dictionary=dictionary_columns)
            for written, final in staged:
                if written != final:
                    self.fs.move(written, final)
        except BaseException:
            for path in {p for pair in staged for p in pair}:  # whatever got written, under either name
                with contextlib.suppress(OSError):
                    self.fs.delete_file(path)
            raise
        return IngestResult(view.name, view.version, table.num_rows, [final for _, final in staged])

    def replace(self, view: FeatureView, table: pa.Table, tag: str, first_day: str, last_day: str) -> IngestResult:
        """Store ``table`` as everything tagged ``tag`` in the dates ``first_day..last_day``.

        A computed partition is written this way: its new files land atomically (as :meth:`write`'s), then
        the files an earlier write of the same tag left are removed, so recomputing a partition replaces
        its rows instead of adding to them. Between the two steps a reader may see both (the newer file wins
        ties, by ingest time); a crash there leaves the older files to the next replace.
        """
        if not re.fullmatch(r"[A-Za-z0-9_]+", tag):
            raise ValueError(f"A file tag is letters, digits and underscores, not {tag!r}.")
        written = self.write(view, table, tag)
        landed = int(written.files[0].rsplit("/", 1)[-1].split("-", 1)[0]) if written.files else time.time_ns()
        for old in self.files(view, first_day, last_day):
            if old.path.endswith(f"-{tag}.parquet") and old.ingest_ns < landed:  # a later replace's files stay
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_file(old.path)
        return written

    def files(self, view: FeatureView, first_day: str | None = None, last_day: str | None = None) -> list[StoredFile]:
        """Stored files of ``view``, oldest ingest first, optionally only dates in a range."""
        selector = pafs.FileSelector(self._view_dir(view), recursive=True, allow_not_found=True)
        found = []
        for info in self.fs.get_file_info(selector):
            name = info.base_name
            if info.type != pafs.FileType.File or name.startswith(".") or not name.endswith(".parquet"):
                continue
            day = info.path.rsplit("/", 2)[-2].removeprefix("date=")
            if (first_day and day < first_day) or (last_day and day > last_day):
                continue
            found.append(StoredFile(info.path, int(name.split("-", 1)[0]), day))
        return sorted(found, key=lambda f: (f.ingest_ns, f.path))

    def read(
        self, view: FeatureView, columns: list[str], start_ns: int | None = None, end_ns: int | None = None,
        files: list[StoredFile] | None = None,
    ) -> pa.Table:
        """Rows with ``start_ns <= timestamp <= end_ns``, in ingest order.

        Only date partitions that can hold such rows are opened; the files are
        scanned in parallel and their rows come back in the order of ``files``.
        """
        if files is None:
            files = self.files(view, day_of(start_ns), day_of(end_ns))
        schema = arrow_schema(view)
        wanted = list(dict.fromkeys(columns))
        if not files:
            return _empty(schema, wanted)
        ts = ds.field(view.timestamp_field)
        condition = None
        if start_ns is not None:
            condition = ts >= pa.scalar(start_ns, TIMESTAMP)
        if end_ns is not None:
            upper = ts <= pa.scalar(end_ns, TIMESTAMP)
            condition = upper if condition is None else condition & upper
        dataset = ds.dataset([f.path for f in files], format="parquet", filesystem=self.fs)
        return dataset.to_table(columns=wanted, filter=condition)  # keeps the files' order


def day_of(ns: int | None) -> str | None:
    """The UTC date (YYYY-MM-DD) of a ns timestamp, None for None."""
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d")


def _empty(schema: pa.Schema, columns: list[str]) -> pa.Table:
    fields = [schema.field(c) if c in schema.names else pa.field(c, pa.int64()) for c in columns]
    return pa.Table.from_pylist([], schema=pa.schema(fields))
