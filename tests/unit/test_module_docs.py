"""The project's Ansible modules document themselves in YAML that parses (ansible-doc, ansible-lint)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

MODULES = sorted((Path(__file__).resolve().parents[2] / "ansible" / "plugins" / "modules").glob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.stem)
def test_documentation_and_return_are_yaml(module: Path) -> None:
    blocks = {
        node.targets[0].id: node.value.value
        for node in ast.parse(module.read_text()).body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("DOCUMENTATION", "RETURN")
        and isinstance(node.value, ast.Constant)
    }
    assert set(blocks) == {"DOCUMENTATION", "RETURN"}
    documentation = yaml.safe_load(blocks["DOCUMENTATION"])
    assert documentation["module"] == module.stem
    assert isinstance(yaml.safe_load(blocks["RETURN"]), dict)
