"""Two identities on every machine: the deploy login (untouched by every role) and the service account.

Ansible and these checks reach the machines as production does: SSH as the login user, sudo for root. The
login user as the machine had it before any role ran was recorded by molecule/resources/prepare.yml.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

LOGIN = "autobot"  # the deploy login baked into the node image, as on the VMs (autobot_deploy_user)


def _login_record(host: Any) -> str:
    return host.check_output(
        f"getent passwd {LOGIN}; id -Gn {LOGIN}; sha256sum < ~{LOGIN}/.ssh/authorized_keys"
    ).strip()


def test_checks_run_as_the_login_user_through_sudo(host: Any) -> None:
    # testinfra runs with --sudo over the SSH login, exactly as Ansible's become does.
    assert host.check_output("id -un") == "root"
    assert host.check_output("printenv SUDO_USER") == LOGIN


def test_the_login_user_is_unchanged_by_the_converge(host: Any) -> None:
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not ephemeral:
        pytest.skip("needs Molecule's prepare record")
    name = host.backend.get_hostname()
    before = Path(ephemeral, f"login-{name}.txt").read_text(encoding="utf-8").strip()
    assert _login_record(host) == before


def test_the_login_user_keeps_its_shell_home_and_sudo(host: Any) -> None:
    user = host.user(LOGIN)
    assert (user.shell, user.home) == ("/bin/bash", f"/home/{LOGIN}")
    assert "sudo" in user.groups
    assert host.file(f"/home/{LOGIN}/.ssh/authorized_keys").mode == 0o600


def test_the_service_account_is_a_locked_system_user(host: Any, layout: dict[str, Any]) -> None:
    user = host.user(layout["autobot_service_user"])
    assert user.exists
    assert user.name != LOGIN
    assert user.group == layout["autobot_service_group"]
    assert user.groups == [layout["autobot_service_group"]], "no supplementary groups (sudo, docker, ...)"
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000, "the service account must be a system account"
    assert user.password in ("!", "*", "!*"), "no usable password"
    assert not host.file(f"{user.home}/.ssh").exists, "no SSH keys"


def test_the_service_account_has_no_sudo(host: Any, layout: dict[str, Any]) -> None:
    out = host.check_output(f"sudo -l -U {layout['autobot_service_user']}")
    assert "is not allowed to run sudo" in out
