"""Workspaces as their users' own OS accounts (``MLPLAT_HUB_ACCOUNTS=1``) on a real hub run as root.

alice and bob sign up (NativeAuthenticator), an admin approves them, each logs in with their own password;
their servers run as accounts the hub created (``t<run>-alice``, ``t<run>-bob``), in the team's OS group.
What alice's kernel can reach is checked from inside it, as her account. Accounts and groups get names
unique to the run and are removed at the end.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests
from click.testing import CliRunner
from hubs import hub_environment, log_in, passable_to_accounts, running_hub, user_token

from mlplat.cli import main
from mlplat_hub.accounts import team_group

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates OS accounts and groups: needs root (CI is root)")

RUN = uuid.uuid4().hex[:6]
TEMPLATE = f"t{RUN}-{{username}}"  # unique accounts for this run
TEAM = f"team{RUN}"
ADMIN = "admin"
PASSWORDS = {ADMIN: "admin-s3cret-pass", "alice": "alice-s3cret-pass", "bob": "bob-s3cret-pass"}


def account(user: str) -> pwd.struct_passwd:
    return pwd.getpwnam(TEMPLATE.format(username=user))


def _remove_accounts_and_groups() -> None:
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(f"t{RUN}-"):
            subprocess.run(["userdel", entry.pw_name], check=True)
    if TEAM in {g.gr_name.removeprefix("mlplat-team-") for g in grp.getgrall()}:
        subprocess.run(["groupdel", team_group(TEAM)], check=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub in accounts and server mode whose workspace root is outside its (private) home."""
    root = Path(tempfile.mkdtemp(prefix="mlplat-accounts-"))  # 0700: the hub opens it to accounts (0711)
    variables = {"MLPLAT_HUB_ACCOUNTS": "1", "MLPLAT_HUB_SERVER": "1", "MLPLAT_HUB_ACCOUNT_NAME": TEMPLATE,
                 "MLPLAT_HUB_ROOT": str(root), "MLPLAT_HUB_ADMINS": ADMIN,
                 "MLPLAT_HUB_TEAMS": f"{{{TEAM}: [alice, bob]}}", "MLPLAT_HUB_SERVICES": "",
                 "MLPLAT_HUB_CULL_TIMEOUT": "0"}
    try:
        with passable_to_accounts(), running_hub(tmp_path_factory.mktemp("accounts-hub"),
                                                            variables) as started:
            yield started
    finally:
        _remove_accounts_and_groups()
        shutil.rmtree(root)


def sign_up(hub, user: str) -> str:
    browser = requests.Session()
    browser.get(hub.url + "hub/signup")
    page = browser.post(hub.url + "hub/signup", timeout=30, data={
        "username": user, "signup_password": PASSWORDS[user], "signup_password_confirmation": PASSWORDS[user],
        "_xsrf": browser.cookies["_xsrf"]})
    assert page.status_code == 200
    return page.text


@pytest.fixture(scope="module")
def people(hub):
    """alice and bob signed up and approved by the admin; their servers running."""
    assert "The signup was successful" in sign_up(hub, ADMIN)  # an admin needs no approval
    for user in ("alice", "bob"):
        assert "Your information has been sent to the admin" in sign_up(hub, user)
    assert not log_in(hub, "alice", PASSWORDS["alice"]).logged_in  # not approved yet
    admin = log_in(hub, ADMIN, PASSWORDS[ADMIN])
    assert admin.logged_in
    for user in ("alice", "bob"):
        assert admin.get(f"{hub.url}hub/authorize/{user}", timeout=30).status_code == 200
    return {user: hub.spawn(user, "cpu-small") for user in ("alice", "bob")}


def test_each_person_logs_in_with_their_own_password_only(hub, people):
    assert log_in(hub, "alice", PASSWORDS["alice"]).logged_in
    assert log_in(hub, "bob", PASSWORDS["bob"]).logged_in
    assert not log_in(hub, "bob", PASSWORDS["alice"]).logged_in
    assert not log_in(hub, "carol", PASSWORDS["alice"]).logged_in  # never signed up
    assert user_token(hub, "alice", PASSWORDS["alice"])  # the API checks the same passwords


def test_mlplat_hub_says_how_people_log_in(hub):
    env = {**hub_environment(hub.home), "MLPLAT_HUB_ACCOUNTS": "1", "MLPLAT_HUB_SERVER": "1"}
    shown = CliRunner().invoke(main, ["hub"], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"login    each user as themselves (MLPLAT_HUB_AUTHENTICATOR); native: sign up at {hub.url}hub/signup" \
        in shown.output and "password" not in shown.output


def test_each_server_runs_as_its_users_own_account_with_no_store_of_the_hubs(hub, people):
    alice, bob = (psutil.Process(people[user]["state"]["pid"]) for user in ("alice", "bob"))
    assert alice.uids().real == alice.uids().effective == account("alice").pw_uid
    assert bob.uids().effective == account("bob").pw_uid
    assert 0 not in {*alice.uids(), *bob.uids()} and account("alice").pw_uid != account("bob").pw_uid
    assert account("alice").pw_shell == "/usr/sbin/nologin"
    groups = {int(gid) for gid in _status(alice)["Groups"].split()}  # its own and the team's, no other
    assert groups == {account("alice").pw_gid, grp.getgrnam(team_group(TEAM)).gr_gid}
    environ = alice.environ()
    assert environ["MLPLAT_SERVER_URL"] and environ["USER"] == account("alice").pw_name
    assert environ["HOME"] == str(hub.root / "users" / "alice")
    for name in ("MLPLAT_HOME", "MLPLAT_REGISTRY", "MLPLAT_TRACKING", "MLPLAT_ONLINE_STORE", "MLPLAT_HUB_ADMIN_TOKEN"):
        assert name not in environ


def _status(process: psutil.Process) -> dict[str, str]:
    lines = Path(f"/proc/{process.pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_folders_belong_to_their_account_and_the_teams_group(hub, people):
    folder = (hub.root / "users" / "alice").stat()
    assert (folder.st_uid, stat.S_IMODE(folder.st_mode)) == (account("alice").pw_uid, 0o700)
    team = (hub.root / "teams" / TEAM).stat()
    assert (team.st_uid, team.st_gid) == (0, grp.getgrnam(team_group(TEAM)).gr_gid)
    assert stat.S_IMODE(team.st_mode) == 0o2770
    link = hub.root / "users" / "alice" / "teams" / TEAM
    assert link.readlink() == hub.root / "teams" / TEAM and link.lstat().st_uid == account("alice").pw_uid
    spec = hub.root / "kernels" / "share" / "jupyter" / "kernels" / "mlplat" / "kernel.json"
    for path, mode in ((hub.root / "kernels", 0o755), (spec, 0o644)):  # every account reads, root alone writes
        assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (0, mode)
    for path, mode in ((hub.home / "hub", 0o700), (hub.home / "hub" / "cookie_secret", 0o600),
                       (hub.home / "hub" / "jupyterhub.sqlite", 0o600)):  # the hub's secrets: root's alone
        assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (0, mode)


def test_alices_kernel_reaches_her_team_but_not_bob_nor_the_hub(hub, people):
    """Run as alice's account: bob's folder, bob's server's environment (his hub token) and the hub's cookie
    secret and database are closed; the team folder takes what she writes, for the team."""
    state = hub.home / "hub"
    closed = {"bob's folder": str(hub.root / "users" / "bob"),
              "bob's token": f"/proc/{people['bob']['state']['pid']}/environ",
              "cookie secret": str(state / "cookie_secret"), "hub database": str(state / "jupyterhub.sqlite"),
              "hub home": str(hub.home)}
    printed = hub.run_in_kernel("alice", "mlplat", "\n".join([
        "import json, os",
        f"closed = {closed!r}",
        "def refused(path):",
        "    try:",
        "        os.listdir(path) if os.path.isdir(path) else open(path, 'rb').read(1)",
        "    except PermissionError:",
        "        return True",
        "    return False",
        f"open({str(hub.root / 'users' / 'alice' / 'teams' / TEAM / 'from-alice.txt')!r}, 'w').write('hi team')",
        "print(json.dumps({'uid': os.getuid(), 'home': os.environ.get('MLPLAT_HOME'),",
        "                  'refused': {what: refused(path) for what, path in closed.items()}}))",
    ]))
    seen = json.loads(printed)
    assert seen["uid"] == account("alice").pw_uid and seen["home"] is None
    assert seen["refused"] == {what: True for what in closed}
    written = (hub.root / "teams" / TEAM / "from-alice.txt").stat()
    assert written.st_gid == grp.getgrnam(team_group(TEAM)).gr_gid  # setgid folder: the team's file
    assert stat.S_IMODE(written.st_mode) == 0o660  # the team reads and writes it; others nothing
    assert hub.run_in_kernel("bob", "mlplat", f"print(open({str(hub.root / 'teams' / TEAM / 'from-alice.txt')!r})"
                             ".read())").strip() == "hi team"


def test_leaving_the_team_takes_bobs_account_out_of_its_group_at_his_next_start(hub, people):
    hub.api("DELETE", f"/hub/api/groups/{TEAM}/users", json={"users": ["bob"]})
    hub.api("DELETE", "/hub/api/users/bob/server")
    deadline = time.monotonic() + 30
    while hub.api("GET", "/hub/api/users/bob").json()["servers"]:
        assert time.monotonic() < deadline, "bob's server did not stop"
        time.sleep(0.2)
    server = psutil.Process(hub.spawn("bob", "cpu-small")["state"]["pid"])
    team = grp.getgrnam(team_group(TEAM))
    assert account("bob").pw_name not in team.gr_mem
    assert team.gr_gid not in {int(gid) for gid in _status(server)["Groups"].split()}
    assert not os.path.lexists(hub.root / "users" / "bob" / "teams" / TEAM)


def test_alices_scheduled_job_runs_as_her_account_calling_the_server_as_her(hub, people):
    """A tick of the scheduler as the hub's service runs it (``job_server_url``, ``job_account``): the kernel of
    alice's job is her account's, with no environment of the hub's, and the server sees alice."""
    from datetime import timedelta

    import nbformat

    import mlplat
    from mlplat.jobs.scheduler import Scheduler

    url = psutil.Process(people["alice"]["state"]["pid"]).environ()["MLPLAT_SERVER_URL"]
    job = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    job.cells = [nbformat.v4.new_code_cell("import json, os, mlplat\nme = mlplat.connect().server.whoami()\n"
                                           "print(json.dumps([os.getuid(), me['name'], 'MLPLAT_HOME' in os.environ]))")]
    schedule_id = hub.run_in_kernel("alice", "mlplat", "\n".join([
        "import mlplat, nbformat, os",
        "path = os.path.join(os.environ['HOME'], 'job.ipynb')",
        f"nbformat.write(nbformat.reads({nbformat.writes(job)!r}, as_version=4), path)",
        "print(mlplat.connect().jobs.schedule(path, '0 * * * *'))"])).strip()
    scheduler = mlplat.connect(home=str(hub.home), job_server_url=url, job_account=TEMPLATE)
    try:
        due = next(s.next_run for s in scheduler.jobs.schedules() if str(s.id) == schedule_id)
        (ran,) = Scheduler(scheduler.jobs).tick(due + timedelta(minutes=1))
        (run,) = [r for r in scheduler.jobs.history() if r.id == ran]
    finally:
        scheduler.close()
    assert (run.status, run.owner) == ("succeeded", "alice"), run.error
    printed = [o["text"] for c in nbformat.read(run.output, as_version=4).cells for o in c.get("outputs", [])]
    assert json.loads(printed[0]) == [account("alice").pw_uid, "alice", False]
