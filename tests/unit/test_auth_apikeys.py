"""API keys: shape, checksum, hashing, and the pepper kept in the state directory."""

from __future__ import annotations

import re
import stat
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.auth.api_keys import (
    KEY_LENGTH,
    PEPPER_FILE_NAME,
    PREFIX,
    generate_api_key,
    has_valid_shape,
    hash_api_key,
    keys_match,
    load_pepper,
)
from application.settings import Settings

KEY_PATTERN = re.compile(r"xtl_[0-9A-Za-z]{36}")


def test_generated_keys_have_the_right_shape() -> None:
    seen = set()
    for _ in range(200):
        key_id, secret = generate_api_key()
        assert KEY_PATTERN.fullmatch(secret), secret
        assert len(secret) == KEY_LENGTH == 40
        assert has_valid_shape(secret)
        assert re.fullmatch(r"[0-9A-Za-z]{12}", key_id)
        # The public id reveals nothing of the secret.
        assert key_id not in secret
        seen.add(secret)
    assert len(seen) == 200


# Drawn once: a key generated inside the test would change between Hypothesis's replays.
_, SECRET = generate_api_key()


@given(data=st.data())
def test_any_single_character_substitution_is_rejected(data: st.DataObject) -> None:
    secret = SECRET
    index = data.draw(st.integers(min_value=0, max_value=len(secret) - 1), label="index")
    replacement = data.draw(
        st.sampled_from(string.ascii_letters + string.digits + "_-+/=. ").filter(
            lambda ch: ch != secret[index]
        ),
        label="replacement",
    )
    typo = secret[:index] + replacement + secret[index + 1 :]
    assert not has_valid_shape(typo)


@given(st.text(max_size=60))
def test_random_text_is_not_a_key(text: str) -> None:
    assert not has_valid_shape(text)


def test_other_malformations_are_rejected() -> None:
    _, secret = generate_api_key()
    body = secret[len(PREFIX) :]
    for bad in (
        "",
        secret[:-1],
        secret + "0",
        "xtk_" + body,
        "XTL_" + body,
        body,
        secret.upper(),
        " " + secret,
        secret[: len(PREFIX) + 30] + "zzzzzz",  # a checksum that can never be a CRC32
    ):
        assert not has_valid_shape(bad), bad


def test_hash_is_deterministic_per_pepper_and_differs_across_peppers() -> None:
    _, secret = generate_api_key()
    _, other = generate_api_key()
    a = hash_api_key(secret, b"pepper-one")
    assert a == hash_api_key(secret, b"pepper-one")
    assert re.fullmatch(r"[0-9a-f]{64}", a)
    assert a != hash_api_key(secret, b"pepper-two")
    assert a != hash_api_key(other, b"pepper-one")
    assert keys_match(a, hash_api_key(secret, b"pepper-one"))
    assert not keys_match(a, hash_api_key(secret, b"pepper-two"))


def test_pepper_file_is_created_once_and_reused(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path / "state"))
    first = load_pepper(settings)
    path = settings.state_path / PEPPER_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert re.fullmatch(rb"[0-9a-f]{64}", first)
    assert load_pepper(settings) == first
    assert load_pepper(Settings(state_dir=str(tmp_path / "state"))) == first
    assert load_pepper(Settings(state_dir=str(tmp_path / "elsewhere"))) != first


def test_concurrent_first_use_yields_one_pepper(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path))
    with ThreadPoolExecutor(max_workers=16) as pool:
        peppers = set(pool.map(lambda _: load_pepper(settings), range(64)))
    assert len(peppers) == 1
    assert [p.name for p in tmp_path.iterdir()] == [PEPPER_FILE_NAME]


def test_configured_pepper_wins_and_matches_the_file_form(tmp_path: Path) -> None:
    generated = load_pepper(Settings(state_dir=str(tmp_path)))
    configured = Settings(state_dir=str(tmp_path), api_key_pepper=generated.decode())
    # Moving the generated pepper into XENTREE_API_KEY_PEPPER keeps stored hashes valid.
    assert load_pepper(configured) == generated
    other = Settings(state_dir=str(tmp_path / "x"), api_key_pepper="configured-secret")
    assert load_pepper(other) == b"configured-secret"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_empty_pepper_file_is_an_error_not_silently_replaced(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / PEPPER_FILE_NAME).write_bytes(content)
    with pytest.raises(RuntimeError):
        load_pepper(Settings(state_dir=str(tmp_path)))
