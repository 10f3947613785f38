"""p.deploy's batching settings: any value in range becomes exactly that in Triton's own config message;
anything else is refused with a clear error before a config is written."""

import pytest
from google.protobuf import text_format
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2

from mlplat.errors import InvalidArgument
from mlplat.serving.batching import LIMITS, Batching


def parsed(batching: Batching) -> model_config_pb2.ModelConfig:
    return text_format.Parse(f'name: "m"\nbackend: "onnxruntime"\n{batching.config()}', model_config_pb2.ModelConfig())


@given(st.integers(*LIMITS["max_batch_size"][:2]), st.integers(*LIMITS["instances"][:2]),
       st.integers(*LIMITS["queue_delay_us"][:2]))
def test_settings_in_range_are_what_triton_reads(max_batch_size, instances, queue_delay_us):
    config = parsed(Batching(max_batch_size, instances, queue_delay_us))
    assert config.max_batch_size == max_batch_size
    assert config.dynamic_batching.max_queue_delay_microseconds == queue_delay_us
    assert [(group.kind, group.count) for group in config.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, instances)]


BAD = st.one_of(st.integers(max_value=-1), st.integers(min_value=1_000_001), st.booleans(), st.floats(),
                st.text(), st.none(), st.just("1 } ] backend: \"python\" #"))


@given(st.sampled_from(sorted(LIMITS)), BAD)
def test_anything_else_is_refused_naming_the_setting_and_its_range(name, value):
    low, high, _ = LIMITS[name]
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return  # in range for this setting after all
    with pytest.raises(InvalidArgument) as refused:
        Batching(**{name: value})
    assert f"{name}=" in str(refused.value) and f"{low:,} to {high:,}" in str(refused.value)
