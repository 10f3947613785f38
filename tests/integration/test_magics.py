"""The magics, in a real Jupyter kernel running a real notebook."""

import nbformat
import pytest

CELLS = [
    "%load_ext mlplat_magics",
    "views = %feature list\nprint('views', [v.name for v in views])",
    "import pandas as pd\nlabels = pd.read_parquet(LABELS)",
    "ts = %feature training-set labels driver_stats:rating driver_stats:trips_today\nprint('shape', ts.shape)",
    "online = %feature get driver_stats:rating --entity driver_id=1,2\nprint('online', online.to_dict())",
    "r = %train xgboost.XGBClassifier --features driver_stats:* --entity-df labels --target completed "
    "--name nb_model --param n_estimators=5 --gate roc_auc>=0.01\nprint('version', r.version, r.rejected)",
    "from IPython.core.error import UsageError\n"
    "try:\n    get_ipython().run_line_magic('feature', 'show driver_stat')\n"
    "except UsageError as exc:\n    print('usage', exc)",
    "try:\n    get_ipython().run_line_magic('train', 'xgboost.XGBClassifier --features driver_stats:*')\n"
    "except UsageError as exc:\n    print('usage', exc)",
    "status = %mlplat status\nprint('status', status.services)",
    "fresh = pd.DataFrame({'driver_id': [1], 'event_timestamp': [pd.Timestamp.now(tz='UTC')], 'rating': [1.25],"
    " 'trips_today': [2], 'acceptance_rate': [0.5], 'avg_speed_kmh': [30.0]})\n"
    "pushed = %feature push driver_stats fresh\n"
    "now = %feature get driver_stats:rating --entity driver_id=1\nprint('pushed', pushed, now.to_dict()['rating'])",
    "import nbformat\nnb = nbformat.v4.new_notebook()\nfirst = nbformat.v4.new_code_cell('n = 1')\n"
    "first.metadata['tags'] = ['parameters']\nnb.cells = [first, nbformat.v4.new_code_cell('print(n * 3)')]\n"
    "nbformat.write(nb, 'tiny.ipynb')\njob = %job run tiny.ipynb n=5\nruns = %job history tiny.ipynb\n"
    "print('job', job.status, len(runs))",
    "%%feature apply\nfrom datetime import timedelta\nfrom mlplat.features import Entity, FeatureView, Field\n"
    "customer = Entity('customer', join_keys=['customer_id'])\n"
    "names = ['spend', 'visits']\n"
    "customer_stats = FeatureView('customer_stats', entities=[customer], ttl=timedelta(days=1),\n"
    "                             schema=[Field(n, 'float64') for n in names])",
    "applied = %feature list\nprint('applied', [v.name for v in applied])",
    "%%train --features driver_stats:rating driver_stats:trips_today --entity-df labels --target completed "
    "--name nb_cell --cluster local\nfrom sklearn.ensemble import HistGradientBoostingClassifier\nrounds = 20\n"
    "HistGradientBoostingClassifier(max_iter=rounds)",
    "cell = _\nprint('cell', cell.version, cell.metrics['roc_auc'] > 0)",
    "promoted = %model promote nb_model\nscored = %model score nb_model labels\n"
    "print('promoted', promoted.version, 'scored', len(scored), sorted(set(scored.columns) - set(labels.columns)))",
    "%job schedule tiny.ipynb '0 3 * * *' n=2\nlisted = %job schedules\n"
    "print('schedules', [(s.cron, s.parameters) for s in listed])\n"
    "%job unschedule {listed[0].id}\nremaining = %job schedules\nprint('unscheduled', len(remaining))",
    "limits = %monitor thresholds nb_model psi=0.3 window=30min\nfired = %monitor alerts nb_model\n"
    "print('thresholds', limits.psi, limits.window_s, len(fired))",
    "try:\n    get_ipython().run_line_magic('job', '--help')\nexcept UsageError as exc:\n"
    "    print('help', str(exc).splitlines()[0])",
]


@pytest.fixture
def home(tmp_path, redis_url, demo_platform, monkeypatch):
    p = demo_platform(tmp_path / "h", drivers=50, customers=10, days=4, trips=600, seed=2, profiles=False)
    settings = {"home": str(p.settings.home), "online_store": redis_url, "online_prefix": p.settings.online_prefix}
    p.close()
    for key, value in settings.items():
        monkeypatch.setenv(f"MLPLAT_{key.upper()}", value)  # the kernel inherits them
    p.labels.to_parquet(tmp_path / "labels.parquet")
    return tmp_path


def run_magics(home, cells) -> str:
    """Run ``cells`` after a parameters cell naming the labels, in a real kernel; return what they printed."""
    import papermill

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell(f"LABELS = {str(home / 'labels.parquet')!r}")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, home / "magics.ipynb")
    papermill.execute_notebook(str(home / "magics.ipynb"), str(home / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, cwd=str(home))
    return "".join(o.get("text", "") for c in nbformat.read(home / "out.ipynb", as_version=4).cells
                   for o in c.get("outputs", []))


# What the notebook prints in either mode (the stores are the same; only who writes them differs).
PRINTED_IN_BOTH_MODES = [
    "views ['driver_stats']", "shape (600, 7)", "online {'driver_id': [1, 2], 'rating': [", "version 1 None",
    "usage 'driver_stat' is not a registered feature view (did you mean 'driver_stats'?)",
    "usage %train: the following arguments are required: --entity-df, --target, --name", "pushed 1 [1.25]",
    "applied ['customer_stats', 'driver_stats']",  # the cell's definitions, registered
    "cell 1 True",  # %%train: the cell built the estimator, fitted on a local Dask cluster
    "promoted 1 scored 600 ['prediction', 'probability_0', 'probability_1']", "schedules [('0 3 * * *', {'n': 2})]",
    "unscheduled 0", "thresholds 0.3 1800.0 0", "help usage: %job [-h]"]


def test_every_magic_in_a_real_kernel(home):
    printed = run_magics(home, CELLS)
    assert [line for line in PRINTED_IN_BOTH_MODES if line not in printed] == []
    assert "status {" in printed and "'mlflow': None" in printed  # the UI is `mlplat up`'s job
    assert "job succeeded 1" in printed


def test_every_magic_in_server_mode(home, monkeypatch):
    """The same magics in a workspace of a shared install: every call goes to a real ``mlplat server`` (an admin's
    token: the demo's views belong to no team), training logs to the MLflow behind it."""
    from servers import running_server_with_mlflow

    from mlplat.identity import Identity
    from mlplat.server.authentication import LocalAuthenticator

    ops = LocalAuthenticator({"ops-token": Identity("ops", {"ml": "editor"}, True)})
    with running_server_with_mlflow(ops) as (url, backend):  # on the stores the kernel's environment names
        monkeypatch.setenv("MLPLAT_SERVER_URL", url)
        monkeypatch.setenv("MLPLAT_SERVER_TOKEN", "ops-token")
        cells = [JOB_RUN_IN_SERVER_MODE if "%job run" in c else c for c in CELLS]
        printed = run_magics(home, cells)
        promoted = [e.who for e in backend.audit.entries(kind="model", obj="nb_model", action="promoted")]
    assert [line for line in PRINTED_IN_BOTH_MODES if line not in printed] == []
    assert "job refused: In server mode a notebook job runs through the platform's scheduler" in printed
    assert promoted == ["ops"]


JOB_RUN_IN_SERVER_MODE = (
    "import nbformat\nnb = nbformat.v4.new_notebook()\nfirst = nbformat.v4.new_code_cell('n = 1')\n"
    "first.metadata['tags'] = ['parameters']\nnb.cells = [first, nbformat.v4.new_code_cell('print(n * 3)')]\n"
    "nbformat.write(nb, 'tiny.ipynb')\n"
    "try:\n    get_ipython().run_line_magic('job', 'run tiny.ipynb n=5')\n"
    "except UsageError as exc:\n    print('job refused:', exc)")


def test_the_mlplat_kernels_load_the_magics_and_pin_the_gpu(home, tmp_path, monkeypatch):
    import papermill
    from click.testing import CliRunner

    from mlplat.cli import main

    prefix = tmp_path / "prefix"
    installed = CliRunner().invoke(main, ["install-kernels", "--prefix", str(prefix)])
    assert installed.exit_code == 0 and "mlplat-gpu" in installed.output
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\nviews = %feature list\n"
        "print([v.name for v in views], os.environ['MLPLAT_DEVICE'], os.environ['CUDA_VISIBLE_DEVICES'])")]
    nbformat.write(nb, tmp_path / "gpu.ipynb")
    papermill.execute_notebook(str(tmp_path / "gpu.ipynb"), str(tmp_path / "gpu-out.ipynb"),
                               kernel_name="mlplat-gpu", progress_bar=False)
    out = nbformat.read(tmp_path / "gpu-out.ipynb", as_version=4).cells[0].outputs[0]["text"]
    assert out.strip() == "['driver_stats'] gpu:0 0"
    papermill.execute_notebook(str(tmp_path / "gpu.ipynb"), str(tmp_path / "cpu-out.ipynb"),
                               kernel_name="mlplat", progress_bar=False)
    out = nbformat.read(tmp_path / "cpu-out.ipynb", as_version=4).cells[0].outputs[0]["text"]
    assert out.strip() == "['driver_stats'] cpu"  # the CPU kernel hides the GPUs (CUDA_VISIBLE_DEVICES empty)


def _commands(parser):
    """Each argv that asks ``parser`` for help: itself and each of its subcommands."""
    import argparse

    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [["--help"]] + [[name, "--help"] for action in subcommands for name in action.choices]


def test_every_magic_and_subcommand_answers_help():
    """``--help`` shows usage (as a UsageError, the kernel stays up) and help naming other magics verbatim."""
    from IPython.core.error import UsageError

    from mlplat_magics import _parsers

    for name, parser in _parsers().items():
        for argv in _commands(parser):
            with pytest.raises(UsageError, match=f"usage: %{name}"):
                parser.parse_args(argv)
    with pytest.raises(UsageError) as shown:
        _parsers()["feature"].parse_args(["--help"])
    assert "%%feature apply: register the cell's definitions" in str(shown.value)
    assert "%feature apply FILE.py" in str(shown.value)
