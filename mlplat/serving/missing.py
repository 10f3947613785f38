"""What a deployed model does with rows that lack feature values: its missing-feature policy.

A feature is missing for a row when the online store has no value for it (an unknown or expired
entity, a null value) or the caller's matrix holds NaN there. Each deployed version has a policy,
chosen at ``p.deploy(..., missing=...)`` and applied alike by ``p.predict`` and by Triton's
``<model>_by_id`` (see :mod:`mlplat.serving.backend.by_id`):

- ``"flag"`` (default): predict as the model does with missing values, and say so: the
  prediction's ``missing`` maps each such row to the features it lacks, and the
  ``mlplat_predict_missing_features_total`` metric counts them;
- ``"error"``: refuse the request (``MissingFeatures`` naming the rows and features);
- ``"impute"``: fill the gaps with the values recorded when the version was trained (the
  training rows' medians), and flag them as ``"flag"`` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlplat.errors import InvalidArgument, MissingFeatures

POLICIES = ("flag", "error", "impute")
DEFAULT = "flag"


def check_policy(policy: Any) -> str:
    """``policy`` if it is one of :data:`POLICIES`."""
    if not isinstance(policy, str) or policy not in POLICIES:
        raise InvalidArgument(f"missing={policy!r} is not a missing-feature policy; use one of "
                              f"{', '.join(map(repr, POLICIES))}.")
    return policy


def apply(name: str, info: dict[str, Any], features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The matrix to send and where it lacks values (a boolean matrix, None when nothing is missing), by policy.

    ``info`` is a deployed version's serving info: its ``features``, ``missing`` policy and ``impute``
    values. ``"error"`` raises MissingFeatures; ``"impute"`` fills the gaps in a new array (the
    caller's is never changed).
    """
    gaps = np.isnan(features)
    if not gaps.any():
        return features, None
    policy = info.get("missing", DEFAULT)
    if policy == "error":
        missing = lacking(gaps, info["features"])
        shown = "; ".join(f"row {row}: {', '.join(refs)}" for row, refs in list(missing.items())[:5])
        more = f" and {len(missing) - 5} more rows" if len(missing) > 5 else ""
        raise MissingFeatures(
            f"{name} v{info['version']} is deployed with missing='error' and {len(missing)} row(s) lack features "
            f"({shown}{more}): unknown or expired entities, or null values. Materialise or push their features, "
            "or deploy with missing='flag' or 'impute'.", missing)
    if policy == "impute":
        features = np.where(gaps, np.asarray(info["impute"], dtype=np.float32), features)
    return features, gaps


def lacking(gaps: np.ndarray | None, refs: list[str]) -> dict[int, list[str]]:
    """Each row that has a gap, with the features (``refs``, in column order) it lacks."""
    if gaps is None:
        return {}
    names = np.array(refs, dtype=object)
    return {row: names[gaps[row]].tolist() for row in np.flatnonzero(gaps.any(axis=1)).tolist()}
