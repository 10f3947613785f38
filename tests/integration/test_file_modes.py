"""What the platform writes under MLPLAT_HOME is its owner's alone: dirs 0700, files 0600, unreadable to others."""

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import nbformat
import pytest
from platforms import demo_platform

import mlplat
from mlplat import services
from mlplat.config import load_settings

SERVICES = ("redis", "mlflow", "scheduler", "monitor", "stream")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
CAT = shutil.which("cat", path="/usr/bin:/bin")  # a system binary: the venv's python is not executable by nobody


def loose(home: Path) -> list[str]:
    """Everything under ``home`` (and itself) that group or others may read, write or enter."""
    found = []
    for path in [home, *home.rglob("*")]:
        info = path.lstat()
        # A symlink's own mode is always 0777 and means nothing; a socket's mode does not guard connect() on
        # every platform, so a socket is not counted either (the services listen on loopback TCP, none here).
        if stat.S_ISLNK(info.st_mode) or stat.S_ISSOCK(info.st_mode):
            continue
        if info.st_mode & 0o077:
            found.append(f"{oct(stat.S_IMODE(info.st_mode))} {path}")
    return found


def nobody_reads(path: Path) -> bool:
    return subprocess.run([*NOBODY, CAT, str(path)], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def home():
    """A demo platform whose home sits in a folder every account can enter (pytest's own is 0700, which would
    hide the home whatever its mode), with a trained model, a notebook job's run and every embedded service but
    Triton running."""
    before = os.umask(0o022)  # what the process had, for the check below
    os.umask(before)
    parent = Path(tempfile.mkdtemp(prefix="mlplat-modes-", dir="/tmp"))
    parent.chmod(0o755)
    (parent / "control").write_text("anyone may read this")
    (parent / "control").chmod(0o644)
    where = parent / "home"
    try:
        p = demo_platform(where)
        labels = p.labels
        result = p.train("xgboost.XGBClassifier", features=["driver_stats:*"], entity_df=labels,
                         target="completed", name="modes", params={"n_estimators": 5, "max_depth": 2})
        assert result.version is not None
        source = parent / "job.ipynb"  # the user's own notebook, 0644: its copy in the home is private all the same
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("print(x)")]
        nb.cells[0].metadata["tags"] = ["parameters"]
        nbformat.write(nb, source)
        assert p.jobs.run(source, parameters={"x": 2}).status == "succeeded"
        services.up(p.settings, only=SERVICES)
        assert os.umask(before) == before  # the library changed the process's umask only while it wrote
        yield where
        p.close()
    finally:  # also when setting up failed half-way: no service outlives the test
        services.down(load_settings(home=str(where)))
        shutil.rmtree(parent, ignore_errors=True)


def test_nothing_under_the_home_is_open_to_group_or_others(home):
    kinds = {p.name for p in home.iterdir()}
    assert {"registry.db", "mlflow.db", "offline", "mlartifacts", "redis", "jobs", "run"} <= kinds, kinds
    assert list((home / "offline").rglob("*.parquet")) and list((home / "run").glob("*.log"))
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert loose(home) == []


def files(home: Path) -> dict[str, Path]:
    return {"registry database": home / "registry.db", "MLflow database": home / "mlflow.db",
            "Parquet file": next((home / "offline").rglob("*.parquet")),
            "MLflow artifact": next(p for p in (home / "mlartifacts").rglob("*") if p.is_file()),
            "Redis append-only file": next(p for p in (home / "redis").rglob("*") if p.is_file()),
            "service log": next((home / "run").glob("*.log")),
            "job's notebook": next((home / "jobs").rglob("job.ipynb"))}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run as another account")
def test_another_account_reads_none_of_it_even_with_the_home_opened(home):
    assert nobody_reads(home.parent / "control")  # the check itself works: nobody reads what is open to it
    targets = files(home)
    for what, path in targets.items():
        assert not nobody_reads(path), what
    sqlite3 = shutil.which("sqlite3", path="/usr/bin:/bin")
    if sqlite3:
        query = subprocess.run([*NOBODY, sqlite3, str(home / "registry.db"), "select count(*) from sqlite_master"],
                               capture_output=True, text=True)
        assert query.returncode != 0, query.stdout
    # A home made before file modes were kept (0755): what is inside is still private, by its own modes ...
    home.chmod(0o755)
    try:
        for what, path in targets.items():
            assert not nobody_reads(path), f"{what} with the home opened"
        # ... and opening the platform again closes the home.
        mlplat.connect(home=str(home)).close()
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
    finally:
        home.chmod(0o700)


def test_a_deployed_models_repository_is_private_too(home):
    """Deploy writes the model repository (ONNX, configs, the by-id model's lookup naming Redis) from the
    caller's process: under the home, 0700/0600 like the rest."""
    from mlplat.serving.triton import TritonService, triton_installed

    p = mlplat.connect(home=str(home))
    if not triton_installed(p.settings):
        pytest.skip(f"no Triton in {p.settings.triton_env}: `make triton` creates it")
    try:
        assert p.deploy("modes", alias="challenger").status == "READY"
        models = home / "triton" / "models"
        assert list(models.rglob("model.onnx")) and list(models.rglob("lookup.json"))
        assert loose(home) == []
        if os.geteuid() == 0:
            home.chmod(0o755)
            try:
                assert not any(nobody_reads(f) for f in models.rglob("*") if f.is_file())
            finally:
                home.chmod(0o700)
    finally:
        p.close()
        TritonService(p.settings).stop()


def test_a_hubs_state_is_the_hubs_alone(tmp_path):
    """The hub's folder, its database, cookie secret, password and proxy pid: 0700/0600 (JupyterHub itself would
    leave the database and the pid file 0644). Team folders keep what the hub's e2e tests check."""
    from hubs import running_hub

    home = tmp_path / "hub-home"
    home.mkdir()
    with running_hub(home) as hub:
        state = hub.settings.home / "hub"
        assert {"jupyterhub.sqlite", "cookie_secret", "proxy.pid"} <= {p.name for p in state.iterdir()}
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert loose(state) == []


def test_a_hub_started_outside_the_supervisor_keeps_its_state_private_too(tmp_path):
    """``python -m mlplat_hub`` under a site's own init system, with its umask (022 here): the hub's folder, its
    database and its proxy's pid file are still 0700/0600, and a folder made before is tightened."""
    from types import SimpleNamespace

    from traitlets.config import Config

    from mlplat.config import load_settings
    from mlplat_hub.config import configure_local
    from mlplat_hub.options import HubOptions
    from mlplat_hub.proxy import PrivateProxy

    before = os.umask(0o022)
    try:
        settings = load_settings(home=str(tmp_path / "home"))
        options = HubOptions.from_env(settings, {"MLPLAT_HUB_PASSWORD": "12345678"})
        options.state_dir.mkdir(parents=True, mode=0o755)
        (options.state_dir / "proxy.pid").write_text("1")  # left by an earlier hub, 0644
        configure_local(Config(), options, settings)
        assert stat.S_IMODE(options.state_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((options.state_dir / "jupyterhub.sqlite").stat().st_mode) == 0o600
        PrivateProxy._write_pid_file(SimpleNamespace(pid_file=str(options.state_dir / "proxy.pid"),
                                                     proxy_process=SimpleNamespace(pid=4321)))
        assert (options.state_dir / "proxy.pid").read_text() == "4321"
        assert loose(options.state_dir) == []
    finally:
        os.umask(before)
