"""Counts in words for the messages the tool prints."""

from __future__ import annotations


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` with ``noun`` in the form the count takes: '1 shard', '1,000 pairs', '2 identities'."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"
