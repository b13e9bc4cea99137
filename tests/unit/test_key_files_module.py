"""The autobot_key_files module: a key directory holds exactly the given files, with their modes, and nothing
changes when nothing differs (idempotence); check mode changes nothing."""

from __future__ import annotations

import grp
import importlib.util
import os
import pwd
import stat
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "autobot_key_files", ROOT / "ansible/plugins/modules/autobot_key_files.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MOD = _module()
USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def _params(directory: Path, files: dict[str, tuple[str, str]]) -> dict[str, Any]:
    return {
        "path": str(directory),
        "owner": USER,
        "group": GROUP,
        "mode": "0750",
        "files": [
            {"path": str(directory / name), "content": content, "owner": USER, "group": GROUP, "mode": mode}
            for name, (content, mode) in files.items()
        ],
    }


def test_writes_the_files_with_their_modes_and_removes_the_rest(tmp_path: Path) -> None:
    keys = tmp_path / "service-keys"
    keys.mkdir(mode=0o755)
    (keys / "master.v0.key").write_text("retired\n")
    written, removed, changed = MOD.sync(
        _params(keys, {"master.v1.key": ("aa" * 32, "0640"), "redis-admin.password": ("pw", "0600")}), False
    )
    assert (written, removed, changed) == (["master.v1.key", "redis-admin.password"], ["master.v0.key"], True)
    assert (keys / "master.v1.key").read_text() == "aa" * 32 + "\n"
    assert stat.S_IMODE((keys / "master.v1.key").stat().st_mode) == 0o640
    assert stat.S_IMODE((keys / "redis-admin.password").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o750
    assert sorted(p.name for p in keys.iterdir()) == ["master.v1.key", "redis-admin.password"]


def test_nothing_changes_when_nothing_differs(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    params = _params(keys, {"master.v1.key": ("aa" * 32, "0640")})
    assert MOD.sync(params, False)[2] is True
    assert MOD.sync(params, False) == ([], [], False)
    # A changed mode or content is written again.
    os.chmod(keys / "master.v1.key", 0o644)
    assert MOD.sync(params, False)[0] == ["master.v1.key"]
    assert stat.S_IMODE((keys / "master.v1.key").stat().st_mode) == 0o640


def test_check_mode_reports_and_changes_nothing(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    keys.mkdir(mode=0o750)
    (keys / "stale.key").write_text("x\n")
    written, removed, changed = MOD.sync(_params(keys, {"master.v1.key": ("aa" * 32, "0640")}), True)
    assert (written, removed, changed) == (["master.v1.key"], ["stale.key"], True)
    assert sorted(p.name for p in keys.iterdir()) == ["stale.key"]


def test_a_file_outside_the_directory_is_refused(tmp_path: Path) -> None:
    params = _params(tmp_path / "k", {})
    outside = str(tmp_path / "elsewhere.key")
    params["files"] = [{"path": outside, "content": "x", "owner": USER, "group": GROUP, "mode": "0640"}]
    with pytest.raises(ValueError, match="is not a file of"):
        MOD.sync(params, False)
