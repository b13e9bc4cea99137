"""Every role's defaults/main.yml is its documented interface, and meta/argument_specs.yml agrees with it:
the same default for every variable (the template, not a literal standing in for it), and nothing that has a
default is marked required."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if (p / "meta" / "argument_specs.yml").is_file())
# Documented as prose in the spec because the default is an expression over the inventory.
DESCRIBED_NOT_COPIED = {("frontend", "frontend_backend_hosts")}


def _specs(role: Path) -> dict[str, dict[str, Any]]:
    data: dict[str, Any] = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    return {name: entry.get("options") or {} for name, entry in data["argument_specs"].items()}


def _defaults(role: Path) -> dict[str, Any]:
    path = role / "defaults" / "main.yml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_agree_with_defaults(role: Path) -> None:
    defaults = _defaults(role)
    problems = []
    for entry_point, options in _specs(role).items():
        for name, option in options.items():
            if name not in defaults:
                continue
            if option.get("required"):
                problems.append(f"{entry_point}.{name}: has a default in defaults/main.yml, yet is required")
            if (role.name, name) in DESCRIBED_NOT_COPIED:
                continue
            if "default" in option and option["default"] != defaults[name]:
                problems.append(
                    f"{entry_point}.{name}: spec default {option['default']!r} != defaults {defaults[name]!r}"
                )
    assert problems == []


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_is_documented_in_the_main_spec(role: Path) -> None:
    specs = _specs(role)
    documented = set().union(*(set(options) for options in specs.values()))
    missing = sorted(set(_defaults(role)) - documented)
    assert missing == []
