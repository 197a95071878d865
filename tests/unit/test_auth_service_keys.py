"""Service keys and the X-On-Behalf-Of header of the internal service flow."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from adapters.auth.errors import AuthenticationError
from adapters.auth.service_keys import (
    DEV_KEY_FILE_NAME,
    ServiceKeyChecker,
    dev_service_key,
    parse_on_behalf_of,
)
from application.settings import Settings


def test_configured_keys_are_accepted_and_others_rejected(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path), service_keys=("key-one-abc", "key-two-xyz"))
    checker = ServiceKeyChecker(settings)
    assert checker.check("key-one-abc")
    assert checker.check("key-two-xyz")
    for other in ("", "key-one-ab", "key-one-abcd", "KEY-ONE-ABC", "key-three", "x" * 5000):
        assert not checker.check(other), other
    # With keys configured, no dev key file is created or accepted.
    assert not (tmp_path / DEV_KEY_FILE_NAME).exists()


def test_dev_key_is_used_when_none_configured(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path))
    checker = ServiceKeyChecker(settings)
    key = dev_service_key(settings)
    assert key.startswith("xts_") and len(key) == 44
    assert checker.check(key)
    assert not checker.check(key[:-1])
    path = tmp_path / DEV_KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dev_service_key(settings) == key
    assert ServiceKeyChecker(Settings(state_dir=str(tmp_path))).check(key)


def test_dev_key_is_not_accepted_once_keys_are_configured(tmp_path: Path) -> None:
    dev_key = dev_service_key(Settings(state_dir=str(tmp_path)))
    configured = Settings(state_dir=str(tmp_path), service_keys=("real-key",))
    assert not ServiceKeyChecker(configured).check(dev_key)


def test_authenticate_builds_a_service_principal(tmp_path: Path) -> None:
    checker = ServiceKeyChecker(Settings(state_dir=str(tmp_path), service_keys=("sk",)))
    principal = checker.authenticate("sk", "t1/u1")
    assert (principal.tenant_id, principal.user_id) == ("t1", "u1")
    assert principal.scopes == frozenset({"live:read", "live:write"})
    assert principal.credential == "service"
    with pytest.raises(AuthenticationError):
        checker.authenticate("wrong", "t1/u1")
    with pytest.raises(AuthenticationError):
        checker.authenticate("sk", "t1")


def test_on_behalf_of_accepts_tenant_slash_user() -> None:
    assert parse_on_behalf_of("t1/u1") == ("t1", "u1")
    assert parse_on_behalf_of("acme-corp/auth0|5f1c") == ("acme-corp", "auth0|5f1c")
    assert parse_on_behalf_of("t" * 200 + "/" + "u" * 200) == ("t" * 200, "u" * 200)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "t1",
        "/",
        "t1/u1/x",
        "/u",
        "t/",
        "//",
        "t 1/u1",
        "t1/u 1",
        " t1/u1",
        "t1/u1 ",
        "t1/u1\n",
        "t1\r\n/u1",
        "t1/u\x00",
        "t1/u\x7f",
        "t1/u\u200b",  # zero-width space: a format character
        "t\tab/u1",
        "t" * 201 + "/u1",
        "t1/" + "u" * 201,
    ],
    ids=repr,
)
def test_on_behalf_of_rejects_everything_else(header: str) -> None:
    with pytest.raises(AuthenticationError):
        parse_on_behalf_of(header)
