"""Hub workspaces as OS accounts (``MLPLAT_HUB_ACCOUNTS=1``): the options, the account names, the refusals.

The real thing (accounts, groups, servers, a real hub) is tests/e2e/test_hub_accounts.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from hubs import passable_to_accounts

from mlplat.config import load_settings
from mlplat.errors import ConfigError, HubError
from mlplat_hub.accounts import account_name, check_can_manage, check_runnable, check_template, team_group
from mlplat_hub.options import ACCOUNTS_ROOT, HubOptions
from mlplat_hub.workspaces import open_to_accounts

ACCOUNTS = {"MLPLAT_HUB_ACCOUNTS": "1", "MLPLAT_HUB_SERVER": "1"}


def test_hub_users_map_to_legal_account_names_or_are_refused_saying_why():
    assert account_name("mlplat-{username}", "alice") == "mlplat-alice"
    assert account_name("{username}", "bob_2") == "bob_2"
    with pytest.raises(HubError, match="not a legal account name"):
        account_name("{username}", "-alice")
    for user in ("Alice", "alice@example.org", "a.b", "x" * 30, "al ice", "../root"):
        with pytest.raises(HubError, match=r"not a legal account name \(lower-case letters.*MLPLAT_HUB_ACCOUNT_NAME"):
            account_name("mlplat-{username}", user)
    assert team_group("team-a") == "mlplat-team-team-a"
    with pytest.raises(HubError, match="not a legal group name.*Rename the hub group"):
        team_group("Team A")


def test_an_account_name_template_must_name_one_account_per_user():
    check_template("ws_{username}")
    for template in ("mlplat", "{username}-{username}", "Mlplat-{username}", "mlplat/{username}"):
        with pytest.raises(HubError, match="MLPLAT_HUB_ACCOUNT_NAME"):
            check_template(template)


def test_only_root_may_run_workspaces_as_accounts():
    check_can_manage(0)
    with pytest.raises(HubError, match=r"only a hub run as root.*`sudo mlplat hub`.*without MLPLAT_HUB_ACCOUNTS"):
        check_can_manage(1000)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the check as another account (setpriv needs root)")
def test_a_hub_not_run_as_root_refuses_accounts_when_configured():
    """The configuration itself, run by an unprivileged account (nobody), refuses before anything starts."""
    home = f"/tmp/mlplat-nobody-{uuid.uuid4().hex}"  # not made: nobody may look there, not write
    env = {"PATH": os.environ["PATH"], "MLPLAT_HOME": home, **ACCOUNTS}
    code = ("from mlplat.config import load_settings; from mlplat_hub.options import HubOptions; "
            "HubOptions.from_env(load_settings())")
    with passable_to_accounts():
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", sys.executable,
                               "-c", code], env=env, capture_output=True, text=True, cwd="/")
    assert done.returncode == 1
    assert "HubError: MLPLAT_HUB_ACCOUNTS=1 runs each user's workspace as an OS account" in done.stderr


def test_accounts_options_and_what_they_need():
    settings = load_settings()
    options = HubOptions.from_env(settings, {**ACCOUNTS, "MLPLAT_HUB_ACCOUNT_NAME": "ws-{username}"})
    assert (options.accounts, options.account_name, options.authenticator) == (True, "ws-{username}", "native")
    assert options.root == ACCOUNTS_ROOT  # outside the hub's private home
    assert HubOptions.from_env(settings, {}).authenticator == "shared"  # the one-user hub is unchanged
    refused = {
        "MLPLAT_HUB_SERVER=1": {"MLPLAT_HUB_ACCOUNTS": "1"},
        "each person logs in as themselves": {**ACCOUNTS, "MLPLAT_HUB_AUTHENTICATOR": "shared"},
        "must hold '{username}' once": {**ACCOUNTS, "MLPLAT_HUB_ACCOUNT_NAME": "mlplat"},
        "set MLPLAT_HUB_ACCOUNTS=1": {"MLPLAT_HUB_AUTHENTICATOR": "native"},
        "must be 1 \\(on\\) or 0": {"MLPLAT_HUB_ACCOUNTS": "maybe"},
    }
    for says, env in refused.items():
        with pytest.raises((ConfigError, HubError), match=says):
            HubOptions.from_env(settings, env)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the interpreter as another account (setpriv needs root)")
def test_an_interpreter_other_accounts_cannot_run_is_refused_naming_the_fix(tmp_path):
    with passable_to_accounts():
        check_runnable(sys.executable, "mlplat_hub")  # what the hub checks at start: this venv is runnable
    hidden = tmp_path / "python"  # pytest's temporary folders are 0700, as /root is
    hidden.symlink_to(sys.executable)
    with pytest.raises(HubError, match=r"cannot run this hub's Python .*\). Build the environment with an "
                                       r"interpreter every account can run: `rm -rf \.venv \.venv-triton && make install`"):
        check_runnable(str(hidden), "mlplat_hub")


def test_a_workspace_root_accounts_cannot_reach_is_refused(tmp_path):
    with pytest.raises(HubError, match=r"is closed to other accounts\. Set MLPLAT_HUB_ROOT"):
        open_to_accounts(tmp_path / "workspaces")  # inside pytest's 0700 folder
