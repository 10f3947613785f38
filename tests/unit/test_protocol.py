"""The wire format between the SDK and ``mlplat server`` (hypothesis properties).

What the SDK sends comes back equal; any bytes at all either decode or raise InvalidArgument (so the server
answers garbage with 400); nothing but mlplat's own classes is ever rebuilt, and the server rebuilds none.
"""

from __future__ import annotations

import json
import math
import struct
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplat.audit import AuditEntry, AuditTrail
from mlplat.errors import InvalidArgument, MlplatError
from mlplat.features.definitions import Entity, FeatureView, Field
from mlplat.remote import protocol

SETTINGS = settings(max_examples=200, deadline=None, database=None)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.text(),
                    st.floats(allow_nan=False), st.datetimes(timezones=st.just(UTC)),
                    st.timedeltas(min_value=timedelta(days=-999), max_value=timedelta(days=999)))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=5), inner, max_size=4),
    st.dictionaries(st.integers(), inner, max_size=3)), max_leaves=12)


@SETTINGS
@given(values)
def test_plain_values_come_back_equal(value):
    back = protocol.decode(protocol.encode(value))
    assert back == value or _timedeltas_close(back, value)


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_invalid_argument(data):
    try:
        protocol.decode(data)
    except InvalidArgument:
        pass


@SETTINGS
@given(st.lists(st.tuples(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8)),
                max_size=30))
def test_frames_and_arrays_come_back_equal(rows):
    frame = pd.DataFrame(rows, columns=["k", "x", "s"]).astype({"k": "int64", "x": "float64"})
    frame["t"] = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(frame["k"].abs(), unit="s")
    array = frame["x"].to_numpy()
    back_frame, back_array = protocol.decode(protocol.encode([frame, array]))
    pd.testing.assert_frame_equal(back_frame, frame)
    np.testing.assert_array_equal(back_array, array)


def test_feature_definitions_travel_as_the_registry_stores_them():
    rider = Entity("rider", join_keys=["rider_id"], team="b")
    view = FeatureView("rider_stats", entities=[rider], ttl=timedelta(days=1), schema=[Field("spend", "float64")],
                       team="b", private=True)
    assert protocol.decode(protocol.encode([rider, view])) == [rider, view]


def test_results_rebuild_mlplat_classes_only_where_asked():
    trail = AuditTrail([AuditEntry(1, datetime(2024, 1, 1, tzinfo=UTC), "bob", "b", "model", "m", "1", "promoted",
                                   "", {"forced": True})])
    message = protocol.encode(trail)
    assert protocol.decode(message, objects=True) == trail
    with pytest.raises(InvalidArgument, match="not accepted here"):
        protocol.decode(message)  # the server never rebuilds objects a client names


@pytest.mark.parametrize("name", ["os:system", "subprocess:Popen", "builtins:eval", "mlplat", "mlplatx.y:Z"])
def test_only_mlplat_classes_are_rebuilt(name):
    message = _raw({"$object": name, "fields": {}})
    with pytest.raises(InvalidArgument):
        protocol.decode(message, objects=True)


def test_user_keys_that_look_like_tags_stay_data():
    value = {"$object": "os:system", "fields": {}}
    assert protocol.decode(protocol.encode(value), objects=True) == value


def test_what_cannot_travel_is_refused_before_sending():
    with pytest.raises(InvalidArgument, match="cannot be sent"):
        protocol.encode({"f": lambda: 1})


def _raw(head) -> bytes:
    """A message with this JSON, as a hostile client could write it."""
    data = json.dumps(head).encode()
    return struct.pack(">Q", len(data)) + data


def _timedeltas_close(a, b) -> bool:
    """Timedeltas travel as float seconds: microseconds of very long ones may round."""
    if isinstance(a, timedelta) and isinstance(b, timedelta):
        return math.isclose(a.total_seconds(), b.total_seconds(), abs_tol=1e-5)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return all(x == y or _timedeltas_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return all(a[k] == b[k] or _timedeltas_close(a[k], b[k]) for k in a)
    return False


@SETTINGS
@given(st.sampled_from(["$view", "$entity"]), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(
        st.sampled_from(["name", "entities", "schema", "join_keys", "ttl", "kind", "dtype", "x"]), inner,
        max_size=4)), max_leaves=10))
def test_malformed_definitions_are_invalid_arguments(tag, spec):
    try:
        protocol.decode(_raw({tag: spec}))
    except (InvalidArgument, MlplatError):
        pass
