"""Which key files each machine receives, derived from the controller keyring and the service matrix.

A machine gets its own master keys and, for each caller the matrix lets call it, the pair keys derived for it
from that caller's master keys; the versions are those verifiers accept (current and previous). Nothing else:
a compromised machine cannot sign as its callers towards any other service. Pure, so the Ansible filter plugin
and the tests use this one function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autobot.security.keyring import ACCEPTED_VERSIONS, master_file_name, pair_file_name
from autobot.security.keyring_file import ControllerKeyring
from autobot.security.keys import derive_pair_key


class DistributionError(ValueError):
    """The keyring and the matrix disagree (e.g. a caller without keys); never carries key material."""


def _accepted(versions: Mapping[int, bytes]) -> list[int]:
    return sorted(versions, reverse=True)[:ACCEPTED_VERSIONS]


def callers_of(services: Mapping[str, Any], callee: str) -> list[str]:
    entry = services.get(callee)
    if not isinstance(entry, Mapping):
        raise DistributionError(f"service {callee!r} is not in the matrix")
    return sorted((entry.get("callers") or {}).keys())


def machine_key_files(
    keyring: ControllerKeyring, services: Mapping[str, Any], service_id: str
) -> dict[str, str]:
    """File name -> 64-hex content for /etc/autobot/service-keys/ on the machine running `service_id`."""
    files: dict[str, str] = {}
    callers = callers_of(services, service_id)
    own = keyring.services.get(service_id)
    if own is None:
        raise DistributionError(f"the keyring has no keys for {service_id!r}: generate keys first")
    for version in _accepted(own.keys):
        files[master_file_name(version)] = own.keys[version].hex()
    for caller in callers:
        theirs = keyring.services.get(caller)
        if theirs is None:
            raise DistributionError(f"{caller!r} may call {service_id!r} but the keyring has no keys for it")
        for version in _accepted(theirs.keys):
            files[pair_file_name(caller, version)] = derive_pair_key(theirs.keys[version], service_id).hex()
    return dict(sorted(files.items()))
