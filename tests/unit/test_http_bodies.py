"""Where a body error is: the field names the problem answers carry."""

from __future__ import annotations

import msgspec
import pytest

from adapters.http.bodies import field_name


@pytest.mark.parametrize(
    ("path", "message", "field"),
    [
        ("$.transcripts[3].text", "Expected `str`, got `int`", "transcripts[3].text"),
        ("transcripts[3].text", "Expected `str`, got `int`", "transcripts[3].text"),
        ("$.transcripts[1]", "Object missing required field `timestamp`",
         "transcripts[1].timestamp"),
        ("transcripts[1]", "Object contains unknown field `extra`", "transcripts[1].extra"),
        ("data", "Object contains unknown field `admin`", "admin"),
        ("", "Object missing required field `token`", "token"),
        ("$", "Expected `object`, got `array`", "body"),
        ("data", "Expected `object`, got `null`", "body"),
    ],
)
def test_field_names(path: str, message: str, field: str) -> None:
    assert field_name(path, message) == field


class Entry(msgspec.Struct, forbid_unknown_fields=True):
    text: str


class Body(msgspec.Struct, forbid_unknown_fields=True):
    entries: list[Entry]


def test_msgspec_paths_are_what_field_name_reads() -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert({"entries": [{"text": "a"}, {"text": 5}]}, Body, strict=True)
    message, _, path = str(caught.value).partition(" - at `")
    assert field_name(path.rstrip("`"), message) == "entries[1].text"
