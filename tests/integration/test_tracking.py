"""The embedded tracking store is safe to open for the first time from several processes at once."""

import subprocess
import sys
import time

FIRST_USE = """
import sys, time
from pathlib import Path
from mlplat.config import load_settings
from mlplat.registry import tracking
go = Path(sys.argv[2])
Path(f"{go}.{sys.argv[3]}.ready").touch()  # imported, and waiting at the line
while not go.exists():
    time.sleep(0.005)
client = tracking.client(load_settings(home=sys.argv[1]))
client.create_experiment(sys.argv[3])
print(len(client.search_experiments()) >= 1)
"""


def test_processes_opening_a_new_store_together_all_succeed(tmp_path):
    home, go = tmp_path / "h", tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, "-c", FIRST_USE, str(home), str(go), f"e{i}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"go.e{i}.ready").exists() for i in range(4)):  # every process waits at the line
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "a worker did not get ready"
        time.sleep(0.05)
    go.touch()
    finished = [w.communicate(timeout=120) for w in workers]
    assert [(w.returncode, out.strip()) for w, (out, _) in zip(workers, finished)] == [(0, "True")] * 4, \
        [err[-400:] for _, err in finished]


def test_the_default_experiment_keeps_its_artifacts_under_the_platform_home(tmp_path, monkeypatch):
    """A run without an experiment lands in MLflow's Default one: under $MLPLAT_HOME, not the caller's ./mlruns."""
    from mlplat.config import load_settings
    from mlplat.registry import tracking

    elsewhere = tmp_path / "a-repository"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(home=str(tmp_path / "h"))
    client = tracking.client(settings)
    run = client.create_run("0")
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert client.get_experiment("0").artifact_location.startswith(settings.artifacts)
    assert list(elsewhere.iterdir()) == []
    assert client.search_registered_models() == []  # the registry's tables are there too
