"""The operator's price file (`VOXGATE_PRICE_FILE`): YAML read here, checked by `policies.prices.sheet`.

Operators add or override prices without a release: the file's models replace the built-in
table's (per model), and the rows they price carry the file's `version`. It is read once,
before the gateway listens; any fault stops the start with one line naming the file and
the dotted key (docs/pricing.md, "Your own prices").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.prices.sheet import PriceSheet, parse_price_sheet
from policies.prices.table import PriceTable


class PriceFileError(ValueError):
    """The price file is unreadable, not YAML, or not a valid price sheet."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice: YAML would silently keep the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_price_sheet(path: Path | str) -> PriceSheet:
    """The price sheet in `path`; PriceFileError names the file and the key at fault."""
    source = f"price file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PriceFileError(f"{source}: cannot be read ({reason})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PriceFileError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
    try:
        return parse_price_sheet(data)
    except ValueError as exc:
        raise PriceFileError(f"{source}: {exc}") from None


def load_prices(path: Path | str | None, builtin: PriceTable = DEFAULT_PRICE_TABLE) -> PriceTable:
    """The table sessions are priced with: `builtin`, with the price file's models over it if one is set."""
    if path is None:
        return builtin
    return read_price_sheet(path).over(builtin)
