"""The tiers file: named default policies for tenants (`VOXGATE_POLICY_FILE`).

The file is YAML with one top-level key, ``tiers``, mapping tier names to tier-shaped
policy mappings (see ``policies.policy.parse_policy``). It is validated in full when the
gateway starts; an error names the file and the dotted key at fault, so a typo never
silently becomes "no limit". Without ``VOXGATE_POLICY_FILE`` the packaged
``gateway/default_tiers.yaml`` is used.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gateway.settings import SettingsError
from policies.policy import PolicyError, TenantPolicy, parse_policy, parse_tiers

DEFAULT_TIERS_RESOURCE = "default_tiers.yaml"


class PolicyFileError(ValueError):
    """A tiers or policy file is unreadable or invalid; `key` is the offending dotted key, if any."""

    def __init__(self, source: str, message: str, key: str | None = None) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.key = key


def parse_tiers_yaml(text: str, source: str) -> dict[str, TenantPolicy]:
    """Parse and validate tiers YAML; `source` names where it came from in error messages."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyFileError(source, f"not valid YAML ({_one_line(exc)})") from None
    try:
        return parse_tiers(data)
    except PolicyError as exc:
        raise PolicyFileError(source, f"invalid key {exc.key}: {_reason(exc)}", key=exc.key) from None


def load_tiers(path: Path | str | None = None) -> dict[str, TenantPolicy]:
    """The tiers in `path`, or the packaged defaults when `path` is None."""
    if path is None:
        text = resources.files("gateway").joinpath(DEFAULT_TIERS_RESOURCE).read_text(encoding="utf-8")
        return parse_tiers_yaml(text, f"packaged tiers file {DEFAULT_TIERS_RESOURCE}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError(f"tiers file {path}", f"cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PolicyFileError(f"tiers file {path}", "is not UTF-8 text") from None
    return parse_tiers_yaml(text, f"tiers file {path}")


def check_default_tier(tiers: dict[str, TenantPolicy], tier: str | None, policy_file: Path | str | None) -> None:
    """Refuse a `VOXGATE_DEFAULT_TIER` the tiers file does not define: a typo must not mean "no limits"."""
    if tier is not None and tier not in tiers:
        source = policy_file or "the packaged gateway/default_tiers.yaml"
        raise SettingsError(
            f"VOXGATE_DEFAULT_TIER: tier {tier!r} is not in {source} (tiers: {', '.join(sorted(tiers))}); "
            "set one of those, or 'none' for tenants without a policy to be unrestricted"
        )


def read_policy_file(path: Path | str) -> dict[str, Any]:
    """One tier-shaped mapping from a YAML (or JSON) file, validated; errors name the key."""
    source = f"policy file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError(source, f"cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PolicyFileError(source, "is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyFileError(source, f"not valid YAML ({_one_line(exc)})") from None
    try:
        parse_policy(data)
    except PolicyError as exc:
        raise PolicyFileError(source, f"invalid key {exc.key}: {_reason(exc)}", key=exc.key) from None
    return dict(data)


def _one_line(exc: Exception) -> str:
    """A YAML error's text on one line (PyYAML's spans several, with a caret under the spot)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _reason(exc: PolicyError) -> str:
    # PolicyError's text is "key: reason"; the key is reported separately.
    return str(exc).removeprefix(f"{exc.key}: ")
