"""Which inventories need the operator's typed confirmation (read from copies; no host is contacted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autobot.ops.inventory import inventory_env, needs_confirmation

ROOT = Path(__file__).resolve().parents[2]


def _inventory(folder: Path, env: str | None) -> Path:
    folder.mkdir(parents=True)
    vars_line = f"    autobot_env: {env}\n" if env else "    other: 1\n"
    (folder / "hosts.yml").write_text(f"---\nall:\n  vars:\n{vars_line}  hosts:\n    h:\n", encoding="utf-8")
    return folder


def test_the_repository_inventories_say_which_environment_they_are() -> None:
    assert inventory_env(ROOT / "inventory" / "local") == "local"
    assert not needs_confirmation(ROOT / "inventory" / "local", "local")


def test_an_inventory_that_says_production_needs_confirmation(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path / "elsewhere", "production")
    assert inventory_env(inventory) == "production"
    assert needs_confirmation(inventory, "production")
    assert needs_confirmation(inventory / "hosts.yml", inventory_env(inventory / "hosts.yml"))


def test_the_production_folder_needs_confirmation_even_if_it_does_not_say_so(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path / "inventory" / "production", None)
    assert inventory_env(inventory) is None
    assert needs_confirmation(inventory, None)


@pytest.mark.parametrize("content", ["", "not: [valid", "- a list\n", "all:\n  vars: 3\n"])
def test_unreadable_or_odd_inventories_have_no_environment(tmp_path: Path, content: str) -> None:
    (tmp_path / "hosts.yml").write_text(content, encoding="utf-8")
    assert inventory_env(tmp_path) is None
    assert inventory_env(tmp_path / "absent") is None
