"""Nickname rules: what a person sees is what is counted and stored.

A nickname is trimmed and NFC-normalised, then checked character by character. Length is
counted in user-perceived characters (a base character with the marks and modifiers that
attach to it), so combining marks cannot smuggle a 200-code-point name through, and a
character may carry only a few marks (no "zalgo" towers drawn over the neighbours).
Control and format characters are refused outright: bidi overrides reorder what follows,
zero-width joiners and spaces hide text; their legitimate uses do not belong in a name.
"""

from __future__ import annotations

import unicodedata

from domain.errors import InvalidValue

FIELD = "nickname"
MAX_CHARACTERS = 32
MAX_MARKS_PER_CHARACTER = 4
# More code points than this cannot be 32 reasonable characters; refused before any work.
MAX_CODE_POINTS = MAX_CHARACTERS * (MAX_MARKS_PER_CHARACTER + 2)

_MARKS = frozenset({"Mn", "Mc", "Me"})
# Control, format, surrogate, and the line/paragraph separators (they break a name in two).
_REFUSED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Letters and symbols that render as nothing: a name made only of them looks empty.
_BLANK = frozenset({"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"})
# What trimming removes: Unicode's White_Space characters. (Python's bare strip() also
# takes U+001C-U+001F, which are control characters and so refused, not trimmed.)
_WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
_EMOJI_MODIFIERS = range(0x1F3FB, 0x1F400)


def normalise_nickname(raw: str) -> str:
    """The nickname to store, or InvalidValue naming the broken rule."""
    if len(raw) > MAX_CODE_POINTS * 4:
        raise InvalidValue(FIELD, f"must be at most {MAX_CHARACTERS} characters")
    name = unicodedata.normalize("NFC", raw).strip(_WHITE_SPACE)
    if not name:
        raise InvalidValue(FIELD, "must not be empty or only whitespace")
    for ch in name:
        category = unicodedata.category(ch)
        if category in _REFUSED:
            kind = "control" if category == "Cc" else "format"
            if category in {"Zl", "Zp"}:
                kind = "line separator"
            elif category == "Cs":
                kind = "surrogate"
            raise InvalidValue(
                FIELD, f"must not contain {kind} characters (found U+{ord(ch):04X})"
            )
    if unicodedata.category(name[0]) in _MARKS:
        raise InvalidValue(FIELD, "must not start with a combining mark")
    if all(ch.isspace() or ch in _BLANK or unicodedata.category(ch) in _MARKS for ch in name):
        raise InvalidValue(FIELD, "must contain a visible character")
    characters = user_perceived_characters(name)
    for character in characters:
        marks = sum(1 for ch in character if unicodedata.category(ch) in _MARKS)
        if marks > MAX_MARKS_PER_CHARACTER:
            raise InvalidValue(
                FIELD,
                f"a character may carry at most {MAX_MARKS_PER_CHARACTER} combining marks",
            )
    if len(characters) > MAX_CHARACTERS or len(name) > MAX_CODE_POINTS:
        raise InvalidValue(
            FIELD, f"must be at most {MAX_CHARACTERS} characters (got {len(characters)})"
        )
    return name


def user_perceived_characters(text: str) -> list[str]:
    """An approximation of extended grapheme clusters (UAX #29) that is enough for names:
    a base character absorbs the combining marks, emoji modifiers and zero-width-joined
    characters after it, and regional indicators pair up into flags."""
    clusters: list[str] = []
    for ch in text:
        if clusters and _extends(clusters[-1], ch):
            clusters[-1] += ch
        else:
            clusters.append(ch)
    return clusters


def _extends(cluster: str, ch: str) -> bool:
    code = ord(ch)
    if unicodedata.category(ch) in _MARKS or code in _EMOJI_MODIFIERS or ch == "\u200d":
        return True
    if cluster[-1] == "\u200d":
        return True
    return (
        len(cluster) == 1
        and ord(cluster) in _REGIONAL_INDICATORS
        and code in _REGIONAL_INDICATORS
    )
