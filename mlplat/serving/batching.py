"""How Triton batches and copies a deployed model: ``p.deploy``'s ``max_batch_size``, ``instances`` and
``queue_delay_us``, checked before anything is written, and the ``config.pbtxt`` lines they become."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from mlplat.errors import InvalidArgument

# Each setting's range and what it means, for the message that refuses a value outside it.
LIMITS = {
    "max_batch_size": (1, 65_536, "the most rows Triton merges into one model call"),
    "instances": (1, 64, "model copies run in parallel, one per core is a good start"),
    "queue_delay_us": (0, 1_000_000, "how long Triton waits for more requests to batch, 0 adds no delay"),
}


@dataclass(frozen=True)
class Batching:
    """A deployed model's batching: the same for the model and its ``<model>_by_id``."""

    max_batch_size: int = 1024
    instances: int = 1
    queue_delay_us: int = 0

    def __post_init__(self) -> None:
        for name, (low, high, meaning) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
                raise InvalidArgument(f"p.deploy(..., {name}=) takes a whole number from {low:,} to {high:,} "
                                      f"({meaning}), not {value!r}.")

    def config(self) -> str:
        """Its ``config.pbtxt`` lines: the batch limit, the dynamic batcher with its queue delay, the copies."""
        return (f"max_batch_size: {int(self.max_batch_size)}\n"
                f"dynamic_batching {{ max_queue_delay_microseconds: {int(self.queue_delay_us)} }}\n"
                f"instance_group [ {{ kind: KIND_CPU count: {int(self.instances)} }} ]\n")
