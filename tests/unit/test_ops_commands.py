"""Each `autobot ops` command maps to one playbook and the `ansible-playbook` arguments an operator types."""

from __future__ import annotations

import json
import shlex

import pytest

from autobot.ops import commands
from autobot.ops.commands import CommandError, RunOptions, command_line, extra_var, playbook_args

KNOWN = {"main-backend", "npu-worker", "ai-stack"}


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (commands.status(), "ansible-playbook -i inventory/local playbooks/health.yml"),
        (commands.site(), "ansible-playbook -i inventory/local playbooks/site.yml"),
        (commands.deploy(None, KNOWN), "ansible-playbook -i inventory/local playbooks/deploy-services.yml"),
        (
            commands.deploy("npu-worker", KNOWN),
            "ansible-playbook -i inventory/local playbooks/deploy-services.yml -e service=npu-worker",
        ),
        (
            commands.phase("logging"),
            "ansible-playbook -i inventory/local playbooks/deploy-service-auth.yml"
            " -e middleware_file=service_auth_logging.py",
        ),
        (
            commands.phase("enforcement"),
            "ansible-playbook -i inventory/local playbooks/deploy-service-auth.yml"
            " -e middleware_file=service_auth_enforcement.py",
        ),
        (
            commands.phase("none"),
            "ansible-playbook -i inventory/local playbooks/deploy-service-auth.yml -e middleware_file=none",
        ),
        (commands.gate(None), "ansible-playbook -i inventory/local playbooks/service-auth-gate.yml"),
        (
            commands.rotate_keys("ai-stack", KNOWN),
            "ansible-playbook -i inventory/local playbooks/rotate-service-keys.yml -e service=ai-stack",
        ),
        (
            commands.rotate_redis(None, KNOWN),
            "ansible-playbook -i inventory/local playbooks/rotate-redis-passwords.yml",
        ),
        (
            commands.revoke("main-backend:v2", KNOWN),
            "ansible-playbook -i inventory/local playbooks/rotate-service-keys.yml -e revoke=main-backend:v2",
        ),
        (
            commands.rollback_services("main-backend", "20250101T120000Z-abc1234", KNOWN),
            "ansible-playbook -i inventory/local playbooks/rollback-services.yml"
            " -e service=main-backend -e release=20250101T120000Z-abc1234",
        ),
        (
            commands.rollback_service_auth(),
            "ansible-playbook -i inventory/local playbooks/rollback-service-auth.yml",
        ),
        (
            commands.rollback_redis_acl(),
            "ansible-playbook -i inventory/local playbooks/rollback-redis-acl.yml",
        ),
    ],
)
def test_each_command_runs_its_playbook(call: commands.PlaybookCall, expected: str) -> None:
    assert command_line(call, RunOptions()) == expected


def test_check_mode_passes_check_and_diff_and_the_common_options_follow() -> None:
    options = RunOptions(
        inventory="inventory/other",
        check=True,
        extra_vars=("a=1", "@vars.yml"),
        verbosity=2,
        limit="autobot-frontend",
    )
    assert playbook_args(commands.site(), options) == [
        "-i",
        "inventory/other",
        "playbooks/site.yml",
        "-e",
        "a=1",
        "-e",
        "@vars.yml",
        "--limit",
        "autobot-frontend",
        "--check",
        "--diff",
        "-vv",
    ]


def test_a_reason_with_spaces_stays_one_value() -> None:
    call = commands.gate("maintenance window: ticket 42")
    [arg] = [a for a in playbook_args(call, RunOptions()) if "gate_override" in a]
    assert json.loads(arg) == {"gate_override": "maintenance window: ticket 42"}
    # and the shown command line gives the shell exactly that argument back
    assert arg in shlex.split(command_line(call, RunOptions()))


def test_plain_values_stay_key_value() -> None:
    assert extra_var("service", "main-backend") == "service=main-backend"
    assert extra_var("x", "a b") == '{"x": "a b"}'
    assert extra_var("x", "") == '{"x": ""}'


@pytest.mark.parametrize(
    "build",
    [
        lambda: commands.deploy("no-such-service", KNOWN),
        lambda: commands.deploy("Main Backend", KNOWN),
        lambda: commands.rotate_keys("../etc", KNOWN),
        lambda: commands.revoke("main-backend", KNOWN),
        lambda: commands.revoke("main-backend:v0", KNOWN),
        lambda: commands.revoke("nobody:v1", KNOWN),
        lambda: commands.rollback_services(None, "../../etc/passwd", KNOWN),
        lambda: commands.rollback_services(None, "", KNOWN),
        lambda: commands.phase("enforcing"),
        lambda: commands.gate("   "),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(build: object) -> None:
    with pytest.raises(CommandError):
        build()  # type: ignore[operator]


def test_without_a_matrix_only_the_form_of_a_service_id_is_checked() -> None:
    assert commands.deploy("anything-new", set()).extra_vars == (("service", "anything-new"),)
    with pytest.raises(CommandError):
        commands.deploy("not/an/id", set())


def test_the_run_folder_name_of_a_two_word_command() -> None:
    assert commands.rotate_keys(None, KNOWN).slug == "rotate-keys"
    assert commands.rollback_service_auth().slug == "rollback-service-auth"
