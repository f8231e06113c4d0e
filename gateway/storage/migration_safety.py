"""Which migrations an older voxgate can still run on: expand-only SQL, and the marker for the rest.

A rolling upgrade runs old pods on the new schema until they are replaced, and a `helm rollback`
runs them on it for good (migrations only move forward). That is safe only if every migration
*expands*: it adds tables, nullable columns, columns with defaults, indexes; it never drops,
renames or retypes what an older release reads or writes, and never makes a column it does not
fill mandatory. `destructive_statements` finds what breaks that rule; `tests/test_migrations.py`
runs it over every shipped file.

A change that must *contract* (drop a column the code stopped using a release ago) ships in a
file carrying the line `-- voxgate: contract`. The runner records it (`schema_migrations.expand_only`
false), and a voxgate older than that file refuses to start on the database instead of running on
a schema it no longer fits (docs/operations.md, "Roll back").
"""

from __future__ import annotations

import re

_CONTRACT_MARKER = re.compile(r"^\s*--\s*voxgate:\s*contract\b", re.IGNORECASE | re.MULTILINE)
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_STRING = re.compile(r"'(?:[^']|'')*'")
_IDENT = r'("[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)'

_DROP = re.compile(r"\bDROP\s+(TABLE|COLUMN|VIEW|MATERIALIZED\s+VIEW|TYPE|SCHEMA)\b")
# `ALTER TABLE t DROP c`: PostgreSQL's COLUMN keyword is optional (DROP DEFAULT/NOT NULL/CONSTRAINT relax)
_DROP_BARE_COLUMN = re.compile(
    rf"\bDROP\s+(?!(?:COLUMN|CONSTRAINT|DEFAULT|NOT|IDENTITY|EXPRESSION|TABLE|VIEW|TYPE|SCHEMA|INDEX|MATERIALIZED)\b){_IDENT}"
)
_RENAME = re.compile(r"\bRENAME\b")
_RETYPE = re.compile(rf"\bALTER\s+(?:COLUMN\s+)?{_IDENT}\s+(?:SET\s+DATA\s+)?TYPE\b")
_SET_NOT_NULL = re.compile(rf"\bALTER\s+(?:COLUMN\s+)?{_IDENT}\s+SET\s+NOT\s+NULL\b")
_SET_DEFAULT = re.compile(rf"\bALTER\s+(?:COLUMN\s+)?{_IDENT}\s+SET\s+DEFAULT\b")
_ADD_COLUMN = re.compile(rf"\bADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?{_IDENT}\s")
_KEYWORDS_AFTER_ADD = frozenset({"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "EXCLUDE"})


def is_contract(sql: str) -> bool:
    """True if the file is marked `-- voxgate: contract` (it may remove what older releases use)."""
    return _CONTRACT_MARKER.search(sql) is not None


def destructive_statements(sql: str) -> list[str]:
    """Each statement of `sql` that an older voxgate could not run against, with why; [] if it only expands."""
    statements = [s.strip() for s in _STRING.sub("''", _COMMENT.sub(" ", sql)).split(";") if s.strip()]
    normalised = [" ".join(s.split()).upper() for s in statements]
    added = {c for s in normalised for c in _added_columns(s)}
    defaulted = {m.group(1) for s in normalised for m in _SET_DEFAULT.finditer(s)}
    found: list[str] = []
    for statement in normalised:
        reasons = [f"DROP {m.group(1)}" for m in _DROP.finditer(statement)]
        if statement.startswith("ALTER TABLE"):
            reasons += [f"DROP COLUMN {m.group(1)}" for m in _DROP_BARE_COLUMN.finditer(statement)]
        reasons += ["RENAME"] if _RENAME.search(statement) else []
        reasons += [f"ALTER COLUMN {m.group(1)} TYPE" for m in _RETYPE.finditer(statement)]
        reasons += [
            f"SET NOT NULL on {m.group(1)}"
            for m in _SET_NOT_NULL.finditer(statement)
            # safe only on a column this file added and gave a default: old code never writes it
            if not (m.group(1) in added and m.group(1) in defaulted)
        ]
        reasons += [f"ADD COLUMN {c} NOT NULL without a DEFAULT" for c in _mandatory_columns(statement)]
        found += [f"{reason}: {_shorten(statement)}" for reason in reasons]
    return found


def _column_clauses(statement: str) -> list[tuple[str, str]]:
    """(column, its definition up to the next top-level comma) for every ADD COLUMN of an ALTER TABLE."""
    if not statement.startswith("ALTER TABLE"):
        return []
    clauses = []
    for match in _ADD_COLUMN.finditer(statement):
        if match.group(1) in _KEYWORDS_AFTER_ADD:
            continue
        depth, end = 0, len(statement)
        for i in range(match.end(), len(statement)):
            char = statement[i]
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                end = i
                break
        clauses.append((match.group(1), statement[match.end() : end]))
    return clauses


def _added_columns(statement: str) -> list[str]:
    return [column for column, _ in _column_clauses(statement)]


def _mandatory_columns(statement: str) -> list[str]:
    return [
        c for c, definition in _column_clauses(statement) if "NOT NULL" in definition and "DEFAULT" not in definition
    ]


def _shorten(statement: str, limit: int = 120) -> str:
    return statement if len(statement) <= limit else statement[: limit - 1] + "…"
