"""Cost-per-task tags: what a client may put in `X-Voxgate-Tags`, and what is refused.

A tag set is small and plain on purpose: every tag becomes a key of the session's row and a
value finance groups by, so the bounds keep the cost rollups' cardinality and the header's
size in check, and the charset keeps a tag printable in CSV, JSON and FOCUS `Tags` alike.
"""

from __future__ import annotations

import re
from typing import Final

#: At most this many tags on one session.
MAX_TAGS: Final = 8
#: A key is 1..MAX_KEY_LENGTH characters of `[a-z0-9_.-]`, starting with a letter or digit.
MAX_KEY_LENGTH: Final = 40
#: A value is 1..MAX_VALUE_LENGTH characters of `[A-Za-z0-9_.:/@-]`.
MAX_VALUE_LENGTH: Final = 64

_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_VALUE = re.compile(r"[A-Za-z0-9_.:/@-]+")

Tags = tuple[tuple[str, str], ...]


class TagsError(ValueError):
    """A tag header that breaks a rule; the message says which, without echoing the header."""


def parse_tags(values: list[str]) -> Tags:
    """The tags of every `X-Voxgate-Tags` header value (`k=v,k2=v2`), sorted by key.

    Raises `TagsError` for a malformed pair, a bad key or value, a repeated key, or too many.
    """
    pairs: dict[str, str] = {}
    for value in values:
        for part in value.split(","):
            item = part.strip()
            if not item:
                continue
            key, sep, tag_value = item.partition("=")
            key, tag_value = key.strip(), tag_value.strip()
            if not sep:
                raise TagsError("Each tag must be 'key=value'.")
            _check(key, _KEY, MAX_KEY_LENGTH, "key", "lowercase letters, digits, '_', '.', '-'")
            _check(tag_value, _VALUE, MAX_VALUE_LENGTH, "value", "letters, digits, '_', '.', ':', '/', '@', '-'")
            if key in pairs:
                raise TagsError(f"The tag key '{key}' appears twice.")
            pairs[key] = tag_value
            if len(pairs) > MAX_TAGS:
                raise TagsError(f"At most {MAX_TAGS} tags may be set on a session.")
    return tuple(sorted(pairs.items()))


def _check(text: str, pattern: re.Pattern[str], limit: int, what: str, charset: str) -> None:
    if not text or len(text) > limit:
        raise TagsError(f"A tag {what} must be 1 to {limit} characters long.")
    if pattern.fullmatch(text) is None:
        raise TagsError(f"A tag {what} may contain only {charset}.")
