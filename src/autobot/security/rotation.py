"""Where each rotation stands, kept in the secrets themselves (the vault file), and the steps that move it on.

A service key rotation goes through these stages, each recorded under `rotation.keys.<service>` in the same
vault write as the keyring change it belongs to, so the record and the keys never disagree:

    planned    the next version is staged in the keyring: verifiers will accept it, nobody signs with it
    published  every verifier restarted with it (checked)
    switching  the keyring signs with it; the old version stays accepted as `previous`
    switched   every signer restarted with it
    retiring   every signer was checked to sign with it; the keyring no longer holds the old version
    done       every verifier restarted without the old version

A Redis password rotation, under `rotation.redis.<user>`:

    planned    the new password is in the secrets, the old one under `redis.previous`
    added      the Redis ACL user accepts both
    switched   the service's machines restarted with the new password file
    removing   the old password left the secrets (kept in this record until the logins prove it refused)
    done       Redis refuses the old password and accepts the new one

The secrets as a whole are therefore always safe to distribute: a keyring change is written only once the
stage before it was checked on every machine. The playbooks run the steps in order; a rerun after an
interruption starts again at the recorded stage (a step only moves records that are at its starting stage).
Pure functions: the caller passes the time and the key and password generators.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from autobot.security.keyring_file import (
    ControllerKeyring,
    KeyringFileError,
    ServiceKeys,
    dump_keyring,
    parse_keyring,
    retire,
    revoke,
    stage,
    switch,
)
from autobot.security.keys import KeyFormatError, KeyId

KEY_STAGES = ("planned", "published", "switching", "switched", "retiring", "done")
REDIS_STAGES = ("planned", "added", "switched", "removing", "done")
# step -> (the stage it moves records from, the stage it moves them to)
KEY_STEPS: dict[str, tuple[str, str]] = {
    "published": ("planned", "published"),
    "switch": ("published", "switching"),
    "switched": ("switching", "switched"),
    "retire": ("switched", "retiring"),
    "done": ("retiring", "done"),
}
REDIS_STEPS: dict[str, tuple[str, str]] = {
    "added": ("planned", "added"),
    "switched": ("added", "switched"),
    "remove": ("switched", "removing"),
    "done": ("removing", "done"),
}
# Where an operator may stop a rotation on purpose (`-e rotate_until=<stage>`), in the order they are reached.
KEY_STOPS = ("planned", "published", "switched", "done")
REDIS_STOPS = ("planned", "added", "switched", "done")


class RotationError(ValueError):
    """A step cannot apply: bad input, or secrets that disagree with their record. Never carries a secret."""


@dataclass(frozen=True)
class StepResult:
    secrets: dict[str, Any]
    changes: list[str]


def _keyring(secrets: Mapping[str, Any]) -> ControllerKeyring:
    if not secrets.get("keyring"):
        raise RotationError("the secrets hold no keyring: run playbooks/generate-service-keys.yml first")
    try:
        return parse_keyring(secrets["keyring"], source="secrets keyring")
    except KeyringFileError as exc:
        raise RotationError(str(exc)) from None


def _with_keyring(secrets: dict[str, Any], keyring: ControllerKeyring) -> None:
    secrets["keyring"] = yaml.safe_load(dump_keyring(keyring))


def _records(secrets: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    rotation = secrets.setdefault("rotation", {})
    records: dict[str, dict[str, Any]] = rotation.setdefault(kind, {})
    return records


def _normalised(secrets: dict[str, Any]) -> dict[str, Any]:
    # As Ansible returns it (integer versions become strings), so it compares equal to what the vault holds.
    result: dict[str, Any] = json.loads(json.dumps(secrets))
    return result


def _check_targets(targets: Iterable[str], known: Iterable[str], what: str) -> list[str]:
    chosen = list(dict.fromkeys(targets))
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise RotationError(f"cannot rotate {', '.join(unknown)}: not {what}")
    if not chosen:
        raise RotationError(f"nothing to rotate: no {what} given")
    return chosen


def in_progress(record: Mapping[str, Any] | None) -> bool:
    return record is not None and record.get("stage") not in (None, "done")


# -- service keys ---------------------------------------------------------------------------------------


def _check_key_record(service: str, entry: ServiceKeys, record: Mapping[str, Any]) -> None:
    """The keyring must be in the shape its record says (a hand-edited vault is refused, not guessed at)."""
    stage_name, version = record.get("stage"), record.get("version")
    expected = {
        "planned": entry.staged == version,
        "published": entry.staged == version,
        "switching": entry.current == version and entry.previous is not None,
        "switched": entry.current == version and entry.previous is not None,
        "retiring": entry.current == version and entry.previous is None and entry.staged is None,
        "done": True,
    }.get(str(stage_name), False)
    if not expected:
        raise RotationError(
            f"{service}: the rotation record (stage {stage_name}, v{version}) does not match the keyring "
            f"(current v{entry.current}, staged {entry.staged}, previous {entry.previous}); "
            "restore the vault file from its backup"
        )


def key_begin(
    secrets: Mapping[str, Any],
    services: Iterable[str],
    *,
    now: str,
    new_key: Callable[[], bytes],
) -> StepResult:
    """Start a rotation for each service that has none in progress: stage its next version (recorded
    `planned`). A service still holding a previous version from an earlier rotation resumes at `switched`
    (its signers are checked, then that version retires). Services already under way are left as they are."""
    result = copy.deepcopy(dict(secrets))
    keyring = _keyring(result)
    chosen = _check_targets(services, keyring.services, "a service with keys")
    records = _records(result, "keys")
    changes: list[str] = []
    for service in chosen:
        entry = keyring.entry(service)
        record = records.get(service)
        if in_progress(record):
            assert record is not None
            _check_key_record(service, entry, record)
            changes.append(f"{service}: resuming at {record['stage']} (v{record['version']})")
            continue
        if entry.previous is not None:
            records[service] = {"stage": "switched", "version": entry.current, "started": now, "updated": now}
            changes.append(
                f"{service}: v{entry.previous} is still accepted from an earlier rotation: checking the "
                f"signers use v{entry.current}, then retiring v{entry.previous}"
            )
            continue
        if entry.staged is None:
            entry = stage(entry, new_key())
            keyring = keyring.with_entry(service, entry)
        records[service] = {"stage": "planned", "version": entry.staged, "started": now, "updated": now}
        changes.append(f"{KeyId(service, entry.current)} -> {KeyId(service, int(entry.staged or 0))} planned")
    _with_keyring(result, keyring)
    return StepResult(_normalised(result), changes)


Move = Callable[[str, dict[str, Any]], tuple[dict[str, Any], str]]
"""What a step does to one target: (its updated record, the change line); the record already holds the new
stage and time."""


def _advance(
    records: dict[str, dict[str, Any]], chosen: list[str], stage_pair: tuple[str, str], now: str, move: Move
) -> list[str]:
    """Apply `move` to each chosen target whose record is at the starting stage; the others stay as they are,
    which makes every step idempotent."""
    before, after = stage_pair
    changes = []
    for name in chosen:
        record = records.get(name)
        if record is None or record.get("stage") != before:
            continue
        records[name], change = move(name, {**record, "stage": after, "updated": now})
        changes.append(change)
    return changes


def _step_of(table: dict[str, tuple[str, str]], step: str, what: str) -> tuple[str, str]:
    if step not in table:
        raise RotationError(f"unknown {what} rotation step {step!r}: one of {', '.join(table)}")
    return table[step]


def key_step(secrets: Mapping[str, Any], services: Iterable[str], step: str, *, now: str) -> StepResult:
    """Move every chosen service whose record is at the step's starting stage on to the next stage, with
    the keyring change that belongs to it (`switch`: sign with the staged version; `retire`: drop the
    previous one). Services elsewhere are left as they are, so a step is idempotent."""
    stage_pair = _step_of(KEY_STEPS, step, "key")
    result = copy.deepcopy(dict(secrets))
    keyring = _keyring(result)
    chosen = _check_targets(services, keyring.services, "a service with keys")
    records = _records(result, "keys")

    def move(service: str, record: dict[str, Any]) -> tuple[dict[str, Any], str]:
        nonlocal keyring
        entry = keyring.entry(service)
        _check_key_record(service, entry, records[service])
        if step == "switch":
            change = f"{service} signs with v{entry.staged} (v{entry.current} still accepted)"
            entry = switch(entry)
        elif step == "retire":
            change = f"{KeyId(service, int(entry.previous or 0))} retired"
            entry = retire(entry)
        else:
            change = f"{service}: {record['stage']} (v{record['version']})"
        keyring = keyring.with_entry(service, entry)
        return record, change

    changes = _advance(records, chosen, stage_pair, now, move)
    _with_keyring(result, keyring)
    return StepResult(_normalised(result), changes)


def key_revoke(
    secrets: Mapping[str, Any], key_id: str, *, now: str, new_key: Callable[[], bytes]
) -> StepResult:
    """Emergency: take one version out of the keyring at once (the caller then distributes to every machine
    together). If it was the signing version, the staged one (or a new one) becomes current in the same
    step. A rotation under way for that service ends at `done`, or at `switched` if a previous version is
    still accepted (the next rotation run checks the signers and retires it)."""
    try:
        parsed = KeyId.parse(key_id)
    except KeyFormatError as exc:
        raise RotationError(str(exc)) from None
    result = copy.deepcopy(dict(secrets))
    keyring = _keyring(result)
    if parsed.service not in keyring.services:
        raise RotationError(f"cannot revoke {parsed}: the keyring has no keys for {parsed.service!r}")
    entry = keyring.entry(parsed.service)
    try:
        revoked = revoke(entry, parsed.version, new_key)
    except KeyringFileError as exc:
        raise RotationError(f"cannot revoke {parsed}: {exc}") from None
    changes: list[str] = []
    if revoked != entry:
        changes.append(f"{parsed} revoked")
        if revoked.current != entry.current:
            changes.append(f"{parsed.service} signs with v{revoked.current}")
        records = _records(result, "keys")
        record = records.get(parsed.service)
        if revoked.previous is not None:
            records[parsed.service] = {
                **(record or {"started": now}),
                "stage": "switched",
                "version": revoked.current,
                "updated": now,
            }
        elif in_progress(record):
            assert record is not None
            records[parsed.service] = {
                **record,
                "stage": "done",
                "version": revoked.current,
                "updated": now,
                "note": f"ended by the revocation of {parsed}",
            }
        keyring = keyring.with_entry(parsed.service, revoked)
    else:
        changes.append(f"{parsed} was already revoked")
    _with_keyring(result, keyring)
    return StepResult(_normalised(result), changes)


# -- Redis passwords ------------------------------------------------------------------------------------


def _redis(secrets: dict[str, Any]) -> dict[str, Any]:
    redis: dict[str, Any] = secrets.setdefault("redis", {})
    redis.setdefault("users", {})
    redis.setdefault("previous", {})
    redis.setdefault("generation", {})
    return redis


def redis_begin(
    secrets: Mapping[str, Any],
    users: Iterable[str],
    *,
    now: str,
    new_password: Callable[[], str],
) -> StepResult:
    """Start a password rotation for each chosen ACL user that has none in progress: a new password, the
    old one kept under `redis.previous`, the generation counted up (recorded `planned`). A user that still
    has a previous password from an earlier rotation continues with the passwords it has."""
    result = copy.deepcopy(dict(secrets))
    redis = _redis(result)
    chosen = _check_targets(users, redis["users"], "a Redis ACL user")
    records = _records(result, "redis")
    changes: list[str] = []
    for user in chosen:
        record = records.get(user)
        if in_progress(record):
            assert record is not None
            changes.append(f"redis user {user}: resuming at {record['stage']}")
            continue
        generation = int(redis["generation"].get(user, 1))
        if user not in redis["previous"]:
            redis["previous"][user] = redis["users"][user]
            redis["users"][user] = new_password()
            generation += 1
            redis["generation"][user] = generation
        records[user] = {"stage": "planned", "generation": generation, "started": now, "updated": now}
        changes.append(f"redis user {user}: password generation {generation} planned")
    return StepResult(_normalised(result), changes)


def redis_step(secrets: Mapping[str, Any], users: Iterable[str], step: str, *, now: str) -> StepResult:
    """Move every chosen user whose record is at the step's starting stage on; `remove` takes the old
    password out of `redis.previous` (the record keeps it until `done`, for the refused-login proof)."""
    stage_pair = _step_of(REDIS_STEPS, step, "Redis")
    result = copy.deepcopy(dict(secrets))
    redis = _redis(result)
    chosen = _check_targets(users, redis["users"], "a Redis ACL user")

    def move(user: str, record: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if step == "remove":
            if user not in redis["previous"]:
                raise RotationError(
                    f"redis user {user}: the record says switched but the secrets hold no previous password"
                )
            record["retired_password"] = redis["previous"].pop(user)
        elif step == "done":
            record.pop("retired_password", None)
        return record, f"redis user {user}: {record['stage']}"

    changes = _advance(_records(result, "redis"), chosen, stage_pair, now, move)
    return StepResult(_normalised(result), changes)


def stages(secrets: Mapping[str, Any], kind: str, names: Iterable[str]) -> dict[str, str]:
    """name -> recorded stage ("none" without a record), for the chosen names: the playbooks' view."""
    records = (secrets.get("rotation") or {}).get(kind) or {}
    return {name: str((records.get(name) or {}).get("stage") or "none") for name in names}
