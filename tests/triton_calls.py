"""Calls of ``<model>_by_id`` as any gRPC client makes them, one at a time or all at once (for the batcher)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


def key_inputs(ids: dict[str, list[bytes]]) -> list[Any]:
    """One BYTES tensor per key, a row per entity."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for key, values in ids.items():
        tensor = grpcclient.InferInput(key, [len(values), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object).reshape(-1, 1))
        inputs.append(tensor)
    return inputs


def at_once(client: Any, model: str, requests: list[dict[str, list[bytes]]], timeout: float = 60) -> list[Any]:
    """Send every request without waiting for the others (tritonclient's ``async_infer``), so that Triton can
    batch them; each one's (probabilities, missing_features) or its error, in order."""
    answers: list[Any] = [None] * len(requests)
    done = threading.Semaphore(0)

    def answer(index: int) -> Any:
        def callback(result: Any, error: Any) -> None:
            answers[index] = error if error is not None else (result.as_numpy("probabilities"),
                                                               result.as_numpy("missing_features"))
            done.release()
        return callback

    for index, ids in enumerate(requests):
        client.async_infer(model, key_inputs(ids), answer(index))
    for _ in requests:
        if not done.acquire(timeout=timeout):
            raise TimeoutError(f"{model} did not answer every request within {timeout} s")
    return answers


def executions(client: Any, model: str) -> tuple[int, int]:
    """The model's (requests served, executions) so far, from Triton's statistics."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("execution_count", 0))
