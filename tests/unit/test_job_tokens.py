"""Job tokens: a scheduled job's kernel is let in as its schedule's owner, and nothing else is."""

import stat

import pytest

from mlplat.errors import NotAuthenticated
from mlplat.identity import Identity
from mlplat.job_tokens import SECRET_FILE, JobTokens
from mlplat.server.authentication import JobTokenAuthenticator, LocalAuthenticator

PEOPLE = {"alice-token": Identity("alice", {"a": "editor"}), "bob-token": Identity("bob", {"b": "editor"})}


@pytest.fixture
def tokens(tmp_path):
    return JobTokens(tmp_path / "run")


@pytest.fixture
def auth(tokens):
    return JobTokenAuthenticator(LocalAuthenticator(PEOPLE), tokens)


def test_a_job_token_is_its_owner_with_the_owners_roles_and_the_secret_is_private(auth, tokens):
    assert auth.identify(tokens.make("alice", 60)) == PEOPLE["alice-token"]
    assert auth.identify("bob-token") == PEOPLE["bob-token"]  # the wrapped tokens still work
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600 and tokens.path.name == SECRET_FILE


def test_forged_expired_spliced_and_garbage_tokens_are_refused(auth, tokens, tmp_path):
    good = tokens.make("alice", 60)
    prefix, user, expiry, signature = good.split(".")
    other = JobTokens(tmp_path / "elsewhere").make("alice", 60)  # another install's secret
    refused = {
        "forged signature": f"{prefix}.{user}.{expiry}.{'0' * len(signature)}",
        "another secret": other,
        "expired": tokens.make("alice", -1),
        "later expiry spliced in": f"{prefix}.{user}.{int(expiry) + 3600}.{signature}",
        "other user spliced in": f"{prefix}.bob.{expiry}.{signature}",
        "user with a dot spliced in": f"{prefix}.alice.{expiry}.{expiry}.{signature}",
        "garbage": "mlplat-job.garbage",
        "empty parts": "mlplat-job...",
        "not ascii": f"{prefix}.{user}.{expiry}.{signature[:-1]}é",
        "unicode digits": f"{prefix}.{user}.²³.{signature}",
    }
    for why, token in refused.items():
        with pytest.raises(NotAuthenticated):
            auth.identify(token)
            pytest.fail(f"{why} was let in")
    with pytest.raises(NotAuthenticated, match="expired"):
        auth.identify(tokens.make("alice", -1))


def test_a_valid_token_for_a_user_the_server_does_not_know_is_refused(auth, tokens):
    with pytest.raises(NotAuthenticated, match="carol"):
        auth.identify(tokens.make("carol", 60))
