"""The project's Ansible filter plugins, imported from their files (they are not a package on sys.path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

FILTERS = Path(__file__).resolve().parents[2] / "ansible" / "plugins" / "filter"


def load_filter_plugin(file_name: str, module_name: str) -> ModuleType:
    """ansible/plugins/filter/<file_name> as module `module_name` (registered, so dataclasses work in it)."""
    spec = importlib.util.spec_from_file_location(module_name, FILTERS / file_name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
