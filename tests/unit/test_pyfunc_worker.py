"""The pyfunc worker's framing (what Triton's python model and the worker say to each other), and skorch nets
recorded as plain parameters and rebuilt from them."""

import io
import json

import numpy as np
import pytest

from mlplat.errors import InvalidArgument
from mlplat.registry.pyfunc_worker import read_frame, write_frame
from mlplat.training import estimators


def test_frames_carry_arrays_and_errors_and_end_cleanly():
    stream = io.BytesIO()
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_frame(stream, rows)
    write_frame(stream, np.array("ValueError: bad rows"))
    write_frame(stream, np.array(1234, dtype=np.int64))
    stream.write(b"\x10\x00")  # a frame cut short, as when the other side dies mid-write
    stream.seek(0)
    np.testing.assert_array_equal(read_frame(stream), rows)
    error = read_frame(stream)
    assert error.dtype.kind == "U" and str(error) == "ValueError: bad rows"
    assert int(read_frame(stream)) == 1234
    assert read_frame(stream) is None


def test_a_frame_never_unpickles():
    stream = io.BytesIO()
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    stream.write(len(buffer.getvalue()).to_bytes(8, "little") + buffer.getvalue())
    stream.seek(0)
    with pytest.raises(ValueError):
        read_frame(stream)


def test_a_skorch_net_is_recorded_as_plain_parameters_and_rebuilt():
    torch = pytest.importorskip("torch")
    skorch = pytest.importorskip("skorch")
    net = skorch.NeuralNetClassifier(torch.nn.Linear, module__in_features=3, module__out_features=2, max_epochs=4,
                                     criterion=torch.nn.CrossEntropyLoss, train_split=None)
    spec = estimators.resolve(net, {"lr": 0.05}, seed=0)
    assert (spec.family, spec.kind) == ("torch", "classifier")
    assert spec.params["module"] == {"class": "torch.nn.modules.linear.Linear"}
    assert json.loads(json.dumps(spec.params)) == spec.params  # what train_spec.json records
    rebuilt = spec.build()
    assert rebuilt.module is torch.nn.Linear and rebuilt.criterion is torch.nn.CrossEntropyLoss
    assert (rebuilt.max_epochs, rebuilt.lr, rebuilt.train_split) == (4, 0.05, None)
    with pytest.raises(InvalidArgument, match="needs its torch module"):
        estimators.resolve("skorch.NeuralNetRegressor", {"max_epochs": 2}, seed=0)
    with pytest.raises(InvalidArgument, match="plain values"):
        estimators.resolve(net, {"callbacks": [object()]}, seed=0)
