"""Words for the messages the tool prints: counts, and how two settings differ."""

from __future__ import annotations

import difflib
import os
import unicodedata
from collections.abc import Iterable


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` with ``noun`` in the form the count takes: '1 shard', '1,000 pairs', '2 identities'."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"


def first_few(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``names``, and '...' when there are more: 'a, b, c, ...'."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def as_ranges(numbers: list[int]) -> str:
    """Sorted distinct integers as a command's --folds takes them, runs of three or more as ranges:
    '1-8', '1,2,4'."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) >= 3 else ",".join(map(str, run)) for run in runs)


def every(number: int, noun: str) -> str:
    """All of ``number`` things, as a sentence's subject: 'the only input', 'every one of the 2 inputs'."""
    return f"the only {noun}" if number == 1 else f"every one of the {counted(number, noun)}"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """The clause ``; did you mean 'jpeg'?`` for a message that refuses ``name``, where one of ``choices``
    is close to it (a typo: 'jpg', 'qualty', 'mauq'); else an empty string."""
    close = difflib.get_close_matches(str(name), [str(choice) for choice in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def matchable(name: str) -> str:
    """``name`` in Unicode's composed form (NFC), for matching names that come from different places:
    a folder copied from macOS names 'Zoë' decomposed (e followed by a combining diaeresis), a
    spreadsheet or a pairs file composed; the two look alike and compare unequal as written."""
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def readable(name: str | os.PathLike) -> str:
    """A file or folder name as the file system gave it (bytes that are not UTF-8 held as surrogates,
    as Python decodes them), as text every output can hold: those bytes written as \\x escapes,
    ``Jos\\xe9`` for a Latin-1 name. Arrow's string columns and paths, and JSON, take UTF-8 only."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


# Fields whose values are too long for a message, named by a phrase where two settings differ in them.
_NAMED_APART = {"recipe_text": "the recipe's text", "attributes_values": "the attributes' values",
                "build_attributes_values": "the build's attributes' values",
                "own_ops_code": "the code of the recipe's own ops"}


def differences(there: dict, here: dict) -> str:
    """The fields whose values differ between two settings, in sorted order, as
    "seed 0 there, 3 here; shard_size 16 there, 2048 here" ("the recipe's text" for a recipe's
    YAML); empty when none does."""
    return "; ".join(_NAMED_APART.get(field, f"{field} {there.get(field)} there, {here.get(field)} here")
                     for field in sorted(there.keys() | here.keys(), key=str) if there.get(field) != here.get(field))
