"""Nickname rules: examples of hostile names, and properties over any text."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.account import Account
from domain.errors import InvalidValue
from domain.nickname import MAX_CHARACTERS, normalise_nickname, user_perceived_characters


def refused(raw: str) -> str:
    with pytest.raises(InvalidValue) as caught:
        normalise_nickname(raw)
    assert caught.value.field == "nickname"
    return caught.value.reason


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("  Ana  ", "Ana"),
        ("e\u0301mile", "\u00e9mile"),  # NFC composes e + combining acute
        ("Zoë Ø'Brien-Smith", "Zoë Ø'Brien-Smith"),
        ("山田 太郎", "山田 太郎"),
        ("x" * 32, "x" * 32),
        ("👍🏽" * 32, "👍🏽" * 32),  # a skin-tone modifier belongs to its emoji
        ("🇫🇷🇩🇪", "🇫🇷🇩🇪"),  # two flags, two characters
        ("Nguyễn Thị", "Nguyễn Thị"),
        ("\u3000\tAna\n\u00a0", "Ana"),  # Unicode white space is trimmed
    ],
)
def test_accepted_names_are_trimmed_and_normalised(raw: str, stored: str) -> None:
    assert normalise_nickname(raw) == stored


def test_length_counts_user_perceived_characters() -> None:
    assert len(user_perceived_characters("e\u0301\u0302a")) == 2
    assert len(user_perceived_characters("🇫🇷🇩🇪")) == 2
    assert "33" in refused("x" * 33)
    assert "at most 32 characters" in refused("é" * 33)


def test_two_hundred_combining_marks_do_not_get_through() -> None:
    assert "combining marks" in refused("a" + "\u0301" * 200)
    assert "combining marks" in refused("Bob" + "\u0336\u0337\u0338\u0339\u033a")
    # Many marks spread over 32 bases is still too long in code points.
    assert refused(("a" + "\u0300\u0301\u0302\u0303\u0304") * 40)


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("evil\u202egnp.exe", "format characters (found U+202E)"),  # right-to-left override
        ("ad\u200dmin", "format characters (found U+200D)"),  # zero-width joiner
        ("ad\u200bmin", "format characters (found U+200B)"),  # zero-width space
        ("a\u2066b", "format characters (found U+2066)"),  # bidi isolate
        ("nul\x00byte", "control characters (found U+0000)"),
        ("tab\tbed", "control characters (found U+0009)"),
        ("line\u2028break", "line separator"),
        ("👨\u200d👩\u200d👧", "format characters (found U+200D)"),
        ("\ufeffbom", "format characters (found U+FEFF)"),
        # Python's str.strip() takes U+001C-U+001F as whitespace; they are controls.
        ("\x1fhidden", "control characters (found U+001F)"),
        ("hidden\x1c", "control characters (found U+001C)"),
    ],
)
def test_control_and_format_characters_are_refused(raw: str, rule: str) -> None:
    assert rule in refused(raw)


@pytest.mark.parametrize("raw", ["", "   ", "\u3000\u3000", "\u3164", "\u2800\u2800 "])
def test_empty_or_invisible_names_are_refused(raw: str) -> None:
    assert refused(raw)


def test_names_of_only_marks_or_starting_with_a_mark_are_refused() -> None:
    assert "combining mark" in refused("\u0301\u0301")
    assert "combining mark" in refused("\u0301abc")


def test_a_huge_input_is_refused_without_work() -> None:
    assert "at most 32" in refused("a" * 1_000_000)


@given(st.text(max_size=80))
def test_any_accepted_nickname_round_trips_and_is_clean(raw: str) -> None:
    try:
        name = normalise_nickname(raw)
    except InvalidValue:
        return
    assert normalise_nickname(name) == name
    assert name == unicodedata.normalize("NFC", name) == name.strip()
    assert 1 <= len(user_perceived_characters(name)) <= MAX_CHARACTERS
    assert not any(unicodedata.category(ch) in {"Cc", "Cf", "Cs"} for ch in name)


@given(st.text(st.characters(categories=["Lu", "Ll", "Nd", "Zs"]), min_size=1, max_size=32))
def test_ordinary_names_are_accepted(raw: str) -> None:
    if raw.strip():
        assert normalise_nickname(raw) == unicodedata.normalize("NFC", raw).strip()


def test_the_same_nickname_again_records_nothing() -> None:
    account = Account(tenant_id="t", user_id="u")
    account.change_nickname("Ana")
    account.change_nickname("Ana")
    names = [type(e).__name__ for e in account.collect_events()]
    assert names == ["Registered", "NicknameChanged"]
    account.change_nickname("Bea")
    assert [type(e).__name__ for e in account.collect_events()] == ["NicknameChanged"]
    assert account.nickname == "Bea"
