"""PyTorch models on platform features: a module trained with its user's own loop and logged with p.models.log,
and a skorch net trained by p.train; each exported to ONNX where it lives, deployed and answering over gRPC as the
module itself does."""

from pathlib import Path

import numpy as np
import pytest
from platforms import complete_rows, triton_platform

from mlplat.errors import ArtifactIntegrityError
from mlplat.registry import tracking

torch = pytest.importorskip("torch")
skorch = pytest.importorskip("skorch")

FEATURES = ["driver_stats:rating", "driver_stats:acceptance_rate", "customer_profile:avg_fare"]
COLUMNS = ["rating", "acceptance_rate", "avg_fare"]
ROWS = [{"driver_id": d, "customer_id": c} for d, c in [(1, 5), (2, 7), (3, 9)]]


class MLP(torch.nn.Module):
    """A small tabular classifier returning one logit per class."""

    def __init__(self, n_features=3, hidden=16, classes=2):
        super().__init__()
        self.scale = torch.nn.BatchNorm1d(n_features)
        self.layers = torch.nn.Sequential(torch.nn.Linear(n_features, hidden), torch.nn.ReLU(),
                                          torch.nn.Linear(hidden, classes))

    def forward(self, x):
        return self.layers(self.scale(x))


@pytest.fixture(scope="module")
def platform(tmp_path_factory, redis_url):
    yield from triton_platform(tmp_path_factory.mktemp("torch"), redis_url,
                               drivers=100, customers=50, days=5, trips=2000, seed=11)


@pytest.fixture(scope="module")
def rows(platform):
    """Trips whose every feature is known (a module has no rule for missing values), and their training set."""
    return complete_rows(platform, FEATURES, COLUMNS)


def online_rows(p):
    online = p.features.get_online_features(FEATURES, ROWS).to_dict()
    return np.array([online[c] for c in COLUMNS], dtype=np.float32).T


def test_a_module_trained_with_its_own_loop_is_logged_deployed_and_predicts_its_softmax(platform, rows):
    entity_df, frame = rows
    torch.manual_seed(0)
    module = MLP()
    X = torch.tensor(frame[COLUMNS].to_numpy(np.float32))
    y = torch.tensor(frame["completed"].to_numpy(np.int64))
    optimiser = torch.optim.Adam(module.parameters(), lr=0.02)
    for _ in range(60):  # the user's own training loop
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(module(X), y).backward()
        optimiser.step()
    logged = platform.models.log(module.eval(), "torch_mlp", features=FEATURES, entity_df=entity_df,
                                 target="completed", validation={"metric": "roc_auc", "min": 0.0})
    assert logged.version == "1" and 0 < logged.metrics["roc_auc"] <= 1

    trained = platform.train("logistic_regression", features=FEATURES, entity_df=entity_df, target="completed",
                             name="torch_peer", register=False)
    assert logged.training_set_fingerprint == trained.training_set_fingerprint  # the same rows, the same set
    lineage = str(platform.lineage("torch_mlp", 1))
    assert "driver_stats" in lineage and "customer_profile" in lineage
    assert logged.training_set_fingerprint[:16] in lineage
    with tracking.session(platform.settings) as client:
        run = client.get_run(logged.run_id)
        version = client.get_model_version("torch_mlp", "1")
    assert run.data.tags["mlplat.runtime"] == "onnx" and "mlplat.onnx_sha256" in version.tags
    assert "mlplat/model.onnx" in [a.path for a in client.list_artifacts(logged.run_id, "mlplat")]

    platform.models.promote("torch_mlp")
    deployment = platform.deploy("torch_mlp")
    assert (deployment.status, deployment.runtime) == ("READY", "onnx")
    with torch.no_grad():
        expected = torch.softmax(module(torch.tensor(online_rows(platform))), dim=-1).numpy()
    np.testing.assert_allclose(platform.predict("torch_mlp", ROWS).outputs, expected, atol=1e-4)
    # the registry scores it through its pinned export: the pickled module is never loaded by the platform
    scored = platform.models.score("torch_mlp", entity_df.head(20))
    assert {"probability_0", "probability_1"} <= set(scored.columns)
    with pytest.raises(ArtifactIntegrityError, match="logged from its author's process"):
        platform.models.load("torch_mlp")


def test_a_changed_export_is_refused(platform, rows):
    entity_df, frame = rows
    module = MLP().eval()
    logged = platform.models.log(module, "torch_tampered", features=FEATURES, entity_df=entity_df,
                                 target="completed")
    # someone with write access to the artifact store edits the recorded description of the export
    changed = [p for p in Path(platform.settings.home).rglob("onnx.json") if logged.run_id in str(p)]
    assert len(changed) == 1
    changed[0].write_text(changed[0].read_text().replace('"kind"', '"kind" ', 1))
    with pytest.raises(ArtifactIntegrityError, match="changed since it was registered"):
        platform.deploy("torch_tampered", alias="challenger")


def test_a_skorch_net_trains_through_p_train_and_serves(platform, rows):
    entity_df, _ = rows
    net = skorch.NeuralNetClassifier(MLP, max_epochs=8, lr=0.02, optimizer=torch.optim.Adam,
                                     criterion=torch.nn.CrossEntropyLoss, train_split=None, verbose=0)
    result = platform.train(net, features=FEATURES, entity_df=entity_df, target="completed", name="torch_skorch")
    assert result.version == "1"
    with tracking.session(platform.settings) as client:
        params = client.get_run(result.run_id).data.params
    assert (params["max_epochs"], params["lr"]) == ("8", "0.02")  # the net's own parameters, as given
    platform.models.promote("torch_skorch")
    deployment = platform.deploy("torch_skorch")
    assert (deployment.status, deployment.runtime) == ("READY", "onnx")
    import mlflow

    with tracking.session(platform.settings):
        native = mlflow.pytorch.load_model(result.model_uri)  # here, in the author's own process
    with torch.no_grad():
        expected = native(torch.tensor(online_rows(platform))).numpy()
    np.testing.assert_allclose(platform.predict("torch_skorch", ROWS).outputs, expected, atol=1e-4)
    # by name, with the module as a parameter
    again = platform.train("skorch.NeuralNetClassifier", features=FEATURES, entity_df=entity_df, target="completed",
                           name="torch_skorch", register=False,
                           params={"module": MLP, "max_epochs": 2, "criterion": torch.nn.CrossEntropyLoss,
                                   "train_split": None, "verbose": 0})
    assert again.version is None and set(again.metrics) >= {"roc_auc", "log_loss"}
