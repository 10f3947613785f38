"""Settings come from layered sources, each overriding the one before."""

import pytest

from mlplat.config import load_settings
from mlplat.errors import ConfigError


def test_embedded_defaults_live_under_home(tmp_path):
    settings = load_settings(home=str(tmp_path / "h"))
    assert settings.home == tmp_path / "h"
    assert settings.online_store == "embedded"
    assert settings.registry == f"sqlite:///{tmp_path / 'h' / 'registry.db'}"
    assert settings.offline_store == (tmp_path / "h" / "offline").as_uri()


def test_layers_override_in_order(tmp_path, monkeypatch):
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.yaml").write_text("registry: sqlite:////from/home.db\noffline_store: s3://home/x\nuser: home\n")
    (tmp_path / "mlplat.yaml").write_text("offline_store: s3://project/x\nuser: project\n")
    monkeypatch.setenv("MLPLAT_HOME", str(home))
    monkeypatch.setenv("MLPLAT_USER", "env")
    settings = load_settings(online_store="redis://10.0.0.1:6379/0")
    assert settings.registry == "sqlite:////from/home.db"  # home config, nothing above it
    assert settings.offline_store == "s3://project/x"  # ./mlplat.yaml beats home config
    assert settings.user == "env"  # environment beats both files
    assert settings.online_store == "redis://10.0.0.1:6379/0"  # arguments beat everything
    assert load_settings(user="arg").user == "arg"


def test_mistyped_setting_is_named_with_a_suggestion(tmp_path):
    (tmp_path / "mlplat.yaml").write_text("onlinestore: redis://x\n")
    with pytest.raises(ConfigError, match="'onlinestore'.*did you mean 'online_store'"):
        load_settings()


def test_unsupported_url_scheme_is_refused():
    with pytest.raises(ConfigError, match="registry='mysql://x'.*sqlite:///"):
        load_settings(registry="mysql://x")


def test_malformed_yaml_is_reported(tmp_path):
    (tmp_path / "mlplat.yaml").write_text("registry: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings()


def test_triton_control_secret_is_only_for_an_external_triton(tmp_path):
    with pytest.raises(ConfigError, match="triton_control_secret is for an external Triton"):
        load_settings(home=str(tmp_path), triton_control_secret="s3cret")
    settings = load_settings(home=str(tmp_path), triton_url="grpc://triton:8001", triton_control_secret="s3cret")
    assert settings.triton_control_secret == "s3cret"


def test_jobs_run_as_their_owners_only_against_a_servers_url(tmp_path):
    settings = load_settings(home=str(tmp_path), job_server_url="http://127.0.0.1:8585",
                             job_account="mlplat-{username}")
    assert (settings.job_server_url, settings.job_account) == ("http://127.0.0.1:8585", "mlplat-{username}")
    assert load_settings(home=str(tmp_path)).job_server_url == ""  # a laptop: jobs run as the scheduler
    for bad in ({"job_server_url": "127.0.0.1:8585"}, {"job_account": "mlplat-{username}"},
                {"job_server_url": "http://s", "job_account": "mlplat-jobs"}):
        with pytest.raises(ConfigError, match="job_"):
            load_settings(home=str(tmp_path), **bad)


def test_an_external_redis_with_a_reader_goes_with_the_embedded_triton(tmp_path):
    settings = load_settings(home=str(tmp_path), online_store="redis://r:6379/0", online_reader="redis://ro@r:6379/0")
    assert (settings.online_reader, settings.triton_url) == ("redis://ro@r:6379/0", "embedded")
