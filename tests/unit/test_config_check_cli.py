"""`autobot config check`: the deployment validates each rendered config with the service's own model."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from autobot.cli import main


def _check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["config", "check", *args])
    return result.exit_code, result.output


def test_a_valid_config_passes(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("service_id: npu-worker\nlisten: {host: 0.0.0.0, port: 8081}\n")
    assert _check(str(path)) == (0, f"{path}: valid npu-worker configuration\n")
    assert _check(str(path), "--service", "npu-worker")[0] == 0


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        pytest.param("redis: {max_connections: 0}", "redis.max_connections", id="invalid-setting"),
        pytest.param("listen_port: 1", "listen_port", id="unknown-key"),
    ],
)
def test_a_bad_setting_is_refused_by_name(tmp_path: Path, extra: str, named: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(f"service_id: npu-worker\nlisten: {{port: 8081}}\n{extra}\n")
    code, output = _check(str(path))
    assert code == 2
    assert named in output


def test_the_config_of_another_service_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("service_id: ai-stack\nlisten: {port: 8080}\n")
    code, output = _check(str(path), "--service", "npu-worker")
    assert code == 2
    assert "is for service 'ai-stack', not 'npu-worker'" in output


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    code, output = _check(str(tmp_path / "nope.yml"))
    assert code == 2
    assert "cannot read config file" in output
