"""The `mlplat` command, as a user types it."""

import json
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlplat.cli import main

DEFINITIONS = """
from datetime import timedelta
from mlplat.features import Entity, FeatureView, Field

driver = Entity("driver", join_keys=["driver_id"])
stats = FeatureView("driver_stats", entities=[driver], ttl=timedelta(days=2), owner="ana",
                    schema=[Field("rating", "{rating}"), Field("trips", "int64")])
"""


@pytest.fixture
def cli(redis_url, monkeypatch):
    monkeypatch.setenv("MLPLAT_ONLINE_STORE", redis_url)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return run


def write_defs(tmp_path, rating="float32"):
    path = tmp_path / "defs.py"
    path.write_text(textwrap.dedent(DEFINITIONS).replace("{rating}", rating))
    return str(path)


def test_apply_list_show_diff_history(cli, tmp_path):
    result = cli("features", "apply", write_defs(tmp_path))
    assert result.exit_code == 0
    assert "entity       driver: created" in result.output
    assert "feature_view driver_stats v1: created" in result.output
    changed = cli("features", "apply", write_defs(tmp_path, rating="float64"))
    assert "driver_stats v2: new_version" in changed.output
    assert "dtype changed rating float32 -> float64 (incompatible: new version)" in changed.output
    listing = cli("features", "list")
    assert listing.output.split()[:4] == ["driver_stats", "v2", "2", "features"]
    shown = json.loads(cli("features", "show", "driver_stats", "--version", "1").output)
    assert shown["schema"][0] == {"name": "rating", "dtype": "float32", "description": ""}
    assert "dtype changed rating float32 -> float64" in cli("features", "diff", "driver_stats", "1").output
    history = cli("features", "history", "driver_stats").output.splitlines()
    assert [line.split()[3] for line in history] == ["created", "new_version"]


def test_errors_are_one_line_with_the_fix(cli, tmp_path):
    result = cli("features", "show", "nope")
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error: 'nope' is not a registered feature view")
    assert "Traceback" not in result.output
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('oops')\n")
    assert "Running" in cli("features", "apply", str(broken)).output


def test_up_status_down(tmp_path, monkeypatch):
    import urllib.request

    runner = CliRunner()
    try:
        up = runner.invoke(main, ["up"])
        assert up.exit_code == 0 and "redis    running" in up.output and "mlflow   running" in up.output
        status = runner.invoke(main, ["status"])
        assert status.exit_code == 0 and "redis://127.0.0.1:" in status.output
        ui = status.output.split("mlflow   running")[1].splitlines()[0].split()[-1]
        with urllib.request.urlopen(f"{ui}/api/2.0/mlflow/experiments/search?max_results=5") as response:
            assert b"experiments" in response.read()  # the UI's API answers, over the platform's own store
    finally:
        down = runner.invoke(main, ["down"]).output
    assert "stopped: redis, mlflow" in down  # (and triton, when installed)
    stopped = runner.invoke(main, ["status"])
    assert stopped.exit_code == 1 and "redis    stopped" in stopped.output and "mlflow   stopped" in stopped.output


def test_materialize_command(cli, tmp_path):
    cli("features", "apply", write_defs(tmp_path))
    assert "driver_stats v1: read 0 rows" in cli("features", "materialize").output


def test_jobs_from_the_shell(cli, tmp_path):
    import nbformat
    import yaml

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell("n = 1\nwords = []")
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, nbformat.v4.new_code_cell("print(n * 2, words)")]
    nbformat.write(nb, tmp_path / "double.ipynb")

    ran = cli("jobs", "run", "double.ipynb", "-p", "n=21", "-p", "words=[a, b]")
    assert ran.exit_code == 0 and ran.output.startswith("succeeded in ")
    output = nbformat.read(ran.output.split(": ")[1].split(" (job")[0], as_version=4)
    assert output.cells[-1].outputs[0]["text"] == "42 ['a', 'b']\n"  # YAML values: an int and a list
    refused = cli("jobs", "run", "double.ipynb", "-p", "word=a")
    assert refused.output == ("Error: double.ipynb declares no parameter 'word' (did you mean 'words'?); "
                              "its parameters cell declares ['n', 'words'].\n")
    assert "succeeded" in cli("jobs", "history").output
    assert cli("jobs", "schedule", "double.ipynb", "--cron", "0 3 * * *", "-p", "n=2").output == \
        "schedule 1: double.ipynb at '0 3 * * *'\n"
    assert cli("jobs", "pause", "1").output == "schedule 1 paused\n"
    listed = cli("jobs", "schedules").output
    assert "0 3 * * *" in listed and "next paused" in listed
    refused = cli("jobs", "cronjob", "1")
    assert refused.exit_code == 1 and "needs the kubernetes settings section" in refused.output
    (tmp_path / "mlplat.yaml").write_text(yaml.safe_dump({"kubernetes": {"image": "mlplat:1", "volume": "projects"}}))
    assert "cannot reach registry=sqlite" in cli("jobs", "cronjob", "1").output
    never = cli("jobs", "schedule", "double.ipynb", "--cron", "0 0 30 2 *")
    assert never.exit_code == 1 and never.output.startswith("Error: '0 0 30 2 *' never fires")
    assert cli("jobs", "unschedule", "1").output == "schedule 1 deleted\n"
    assert cli("jobs", "schedules").output == ""
    gone = cli("jobs", "unschedule", "1")
    assert gone.exit_code == 1 and gone.output.startswith("Error: No schedule 1;")


def install_commands(folder: Path, monkeypatch, commands: dict[str, str]) -> None:
    """Install ``commands`` (name: "module:command") in the ``mlplat.commands`` entry-point group, as pip does
    for a package that declares them."""
    info = folder / "mlplat_commands_test-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlplat-commands-test\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[mlplat.commands]\n" + "".join(f"{name} = {target}\n"
                                                                           for name, target in commands.items()))
    monkeypatch.syspath_prepend(str(folder))


HELLO = """
import click
from mlplat.errors import InvalidArgument

@click.command()
@click.option("--fail", is_flag=True)
def hello(fail):
    \"\"\"Say hello from another package.\"\"\"
    if fail:
        raise InvalidArgument("hello was told to fail; leave out --fail.")
    click.echo("hello from a plug-in")
"""


def test_other_packages_add_commands_through_entry_points_loaded_when_asked_for(tmp_path, monkeypatch):
    (tmp_path / "hello_command.py").write_text(HELLO)
    install_commands(tmp_path, monkeypatch, {"hello": "hello_command:hello"})
    runner = CliRunner()
    assert runner.invoke(main, ["down", "--help"]).exit_code == 0
    assert "hello_command" not in sys.modules  # the library's own commands load no other package
    listed = runner.invoke(main, ["--help"]).output
    assert "hello            Say hello from another package." in listed
    assert runner.invoke(main, ["hello"]).output == "hello from a plug-in\n"
    failed = runner.invoke(main, ["hello", "--fail"])
    assert (failed.exit_code, failed.output) == (1, "Error: hello was told to fail; leave out --fail.\n")
    sys.modules.pop("hello_command")


def test_the_hub_package_declares_mlplat_hub(tmp_path, monkeypatch):
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    install_commands(tmp_path, monkeypatch, project["entry-points"]["mlplat.commands"])
    shown = CliRunner().invoke(main, ["hub", "--help"])
    assert shown.exit_code == 0 and "Start JupyterHub with CPU/GPU workspaces" in shown.output
