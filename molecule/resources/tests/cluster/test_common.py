"""The common base on every machine (role `common`)."""

from __future__ import annotations

from typing import Any


def test_systemd_is_pid_1_and_running(host: Any) -> None:
    assert host.process.get(pid=1).comm == "systemd"
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state == "running", host.run("systemctl --failed --no-legend").stdout


def test_config_dir_is_readable_by_the_service_group_only(host: Any, layout: dict[str, Any]) -> None:
    d = host.file(layout["autobot_config_dir"])
    assert d.is_directory
    assert (d.user, d.group, d.mode) == ("root", layout["autobot_service_group"], 0o750)


def test_state_and_log_dirs_belong_to_the_service_account(host: Any, layout: dict[str, Any]) -> None:
    owner = (layout["autobot_service_user"], layout["autobot_service_group"])
    for path in (layout["autobot_state_dir"], layout["autobot_log_dir"]):
        d = host.file(path)
        assert d.is_directory, path
        assert (d.user, d.group, d.mode) == (*owner, 0o750), path


def test_install_dir_exists(host: Any) -> None:
    d = host.file("/opt/autobot")  # autobot_install_dir
    assert d.is_directory
    assert (d.user, d.mode) == ("root", 0o755)


def test_host_is_in_exactly_one_service_group(host: Any, services: dict[str, Any]) -> None:
    from conftest import host_groups

    service_groups = {svc["group"] for svc in services.values()}
    assert len(set(host_groups(host)) & service_groups) == 1
