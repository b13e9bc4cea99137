"""What each `autobot ops` command runs: one playbook, its extra variables, and the plain command line.

Pure: nothing here touches a file or a process, so the mapping from operator command to `ansible-playbook`
arguments is tested directly. The CLI shows `command_line()` before every run, so an operator can always
repeat (or audit) a run by hand with exactly the arguments the runner was given.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Collection
from dataclasses import dataclass

from autobot.security.keys import is_service_id

# One playbook per operator action (README "Playbooks"); the CLI adds nothing a plain run would not do.
PLAYBOOKS: dict[str, str] = {
    "status": "playbooks/health.yml",
    "site": "playbooks/site.yml",
    "deploy": "playbooks/deploy-services.yml",
    "phase": "playbooks/deploy-service-auth.yml",
    "gate": "playbooks/service-auth-gate.yml",
    "rotate keys": "playbooks/rotate-service-keys.yml",
    "rotate redis": "playbooks/rotate-redis-passwords.yml",
    "revoke": "playbooks/rotate-service-keys.yml",
    "rollback services": "playbooks/rollback-services.yml",
    "rollback service-auth": "playbooks/rollback-service-auth.yml",
    "rollback redis-acl": "playbooks/rollback-redis-acl.yml",
}
HEALTH_PLAYBOOK = PLAYBOOKS["status"]

# The phase is which middleware file the entry files import (never a flag): the playbook takes the file name.
PHASE_MIDDLEWARE: dict[str, str] = {
    "logging": "service_auth_logging.py",
    "enforcement": "service_auth_enforcement.py",
    "none": "none",
}

DEFAULT_INVENTORY = "inventory/local"

# A value that ansible's key=value parser keeps as one plain string; anything else goes as JSON.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.:/@+,-]+")
_KEY_VERSION = re.compile(r"(?P<service>[a-z0-9][a-z0-9-]*):v(?P<version>[1-9][0-9]*)")
# A release id is a folder name under /opt/autobot/releases: never a path.
_RELEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CommandError(ValueError):
    """An argument the operator gave is not valid; nothing has been run."""


@dataclass(frozen=True)
class PlaybookCall:
    """One operator command: its name, its playbook (relative to the checkout), its own extra variables."""

    command: str
    playbook: str
    extra_vars: tuple[tuple[str, str], ...] = ()

    @property
    def slug(self) -> str:
        """The command as a file-name part (`rotate keys` -> `rotate-keys`), for the run folder."""
        return self.command.replace(" ", "-")


@dataclass(frozen=True)
class RunOptions:
    """The options every command shares, as the operator gave them."""

    inventory: str = DEFAULT_INVENTORY
    check: bool = False
    extra_vars: tuple[str, ...] = ()
    verbosity: int = 0
    limit: str | None = None


def extra_var(name: str, value: str) -> str:
    """One `-e` argument: `name=value` when that parses back to the same string, else a JSON object.

    `-e gate_override=maintenance window` would give ansible two words; JSON keeps the reason whole.
    """
    if _PLAIN_VALUE.fullmatch(value):
        return f"{name}={value}"
    return json.dumps({name: value})


def playbook_args(call: PlaybookCall, options: RunOptions) -> list[str]:
    """The `ansible-playbook` arguments of a run, in the order an operator would type them."""
    args = ["-i", options.inventory, call.playbook]
    for name, value in call.extra_vars:
        args += ["-e", extra_var(name, value)]
    for raw in options.extra_vars:
        args += ["-e", raw]
    if options.limit:
        args += ["--limit", options.limit]
    if options.check:
        args += ["--check", "--diff"]
    if options.verbosity:
        args.append("-" + "v" * options.verbosity)
    return args


def command_line(call: PlaybookCall, options: RunOptions) -> str:
    """The plain command that does the same as the `autobot ops` command (shown before every run)."""
    return shlex.join(["ansible-playbook", *playbook_args(call, options)])


def _service(service: str | None, known: Collection[str]) -> tuple[tuple[str, str], ...]:
    if service is None:
        return ()
    if not is_service_id(service) or (known and service not in known):
        choices = ", ".join(sorted(known)) or "a service id of the matrix"
        raise CommandError(f"unknown service {service!r}: expected one of {choices}")
    return (("service", service),)


def status() -> PlaybookCall:
    return PlaybookCall("status", PLAYBOOKS["status"])


def site() -> PlaybookCall:
    return PlaybookCall("site", PLAYBOOKS["site"])


def deploy(service: str | None, known: Collection[str]) -> PlaybookCall:
    return PlaybookCall("deploy", PLAYBOOKS["deploy"], _service(service, known))


def phase(name: str) -> PlaybookCall:
    if name not in PHASE_MIDDLEWARE:
        raise CommandError(f"unknown phase {name!r}: expected one of {', '.join(PHASE_MIDDLEWARE)}")
    return PlaybookCall("phase", PLAYBOOKS["phase"], (("middleware_file", PHASE_MIDDLEWARE[name]),))


def gate(override: str | None) -> PlaybookCall:
    if override is None:
        return PlaybookCall("gate", PLAYBOOKS["gate"])
    if not override.strip():
        raise CommandError("--override needs a reason (it is recorded with the gate's decision)")
    return PlaybookCall("gate", PLAYBOOKS["gate"], (("gate_override", override.strip()),))


def rotate_keys(service: str | None, known: Collection[str]) -> PlaybookCall:
    return PlaybookCall("rotate keys", PLAYBOOKS["rotate keys"], _service(service, known))


def rotate_redis(service: str | None, known: Collection[str]) -> PlaybookCall:
    return PlaybookCall("rotate redis", PLAYBOOKS["rotate redis"], _service(service, known))


def revoke(key: str, known: Collection[str]) -> PlaybookCall:
    match = _KEY_VERSION.fullmatch(key)
    if match is None:
        raise CommandError(f"cannot revoke {key!r}: expected SERVICE:vN, e.g. main-backend:v2")
    _service(match["service"], known)
    return PlaybookCall("revoke", PLAYBOOKS["revoke"], (("revoke", key),))


def rollback_services(service: str | None, release: str | None, known: Collection[str]) -> PlaybookCall:
    extra = _service(service, known)
    if release is not None:
        if not _RELEASE_ID.fullmatch(release):
            raise CommandError(
                f"invalid release id {release!r}: a release folder name, e.g. 20250101T120000Z-abc1234"
            )
        extra += (("release", release),)
    return PlaybookCall("rollback services", PLAYBOOKS["rollback services"], extra)


def rollback_service_auth() -> PlaybookCall:
    return PlaybookCall("rollback service-auth", PLAYBOOKS["rollback service-auth"])


def rollback_redis_acl() -> PlaybookCall:
    return PlaybookCall("rollback redis-acl", PLAYBOOKS["rollback redis-acl"])
