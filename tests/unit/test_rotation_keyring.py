"""The keyring's rotation model (autobot.security.keyring_file): staged, current, previous and revoked
versions, the pure steps between them, and the v1 format read transparently."""

from __future__ import annotations

import pytest
import yaml

from autobot.security.keyring_file import (
    KEYRING_FORMAT,
    ControllerKeyring,
    KeyringFileError,
    ServiceKeys,
    dump_keyring,
    parse_keyring,
    plan_keyring,
    retire,
    revoke,
    stage,
    switch,
)

K = {n: bytes([n]) * 32 for n in range(1, 10)}


def _keys(*versions: int) -> dict[int, bytes]:
    return {v: K[v] for v in versions}


def test_a_rotation_stages_switches_and_retires() -> None:
    idle = ServiceKeys(current=1, keys=_keys(1))
    assert idle.accepted == (1,)
    staged = stage(idle, K[2])
    assert (staged.current, staged.staged, staged.previous, staged.accepted) == (1, 2, None, (2, 1))
    switched = switch(staged)
    assert (switched.current, switched.staged, switched.previous, switched.accepted) == (2, None, 1, (2, 1))
    done = retire(switched)
    assert (done.current, done.staged, done.previous, done.accepted) == (2, None, None, (2,))
    assert done.keys == {2: K[2]}


def test_steps_out_of_order_are_refused_and_change_nothing() -> None:
    idle = ServiceKeys(current=1, keys=_keys(1))
    with pytest.raises(KeyringFileError, match="no staged version"):
        switch(idle)
    with pytest.raises(KeyringFileError, match="no previous version"):
        retire(idle)
    staged = stage(idle, K[2])
    with pytest.raises(KeyringFileError, match="already staged"):
        stage(staged, K[3])
    with pytest.raises(KeyringFileError, match="retire it before staging"):
        stage(switch(staged), K[3])
    assert idle == ServiceKeys(current=1, keys=_keys(1))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"current": 2, "keys": _keys(1, 2, 3), "staged": 3, "previous": 1}, "not both|retire the previous"),
        ({"current": 2, "keys": _keys(1, 2), "staged": 1}, "newer than current"),
        ({"current": 2, "keys": _keys(2, 3), "previous": 3}, "older than current"),
        ({"current": 2, "keys": _keys(1, 2)}, "exactly the current, staged and previous"),
        ({"current": 2, "keys": _keys(2), "revoked": (2,)}, "revoked version is still held"),
        ({"current": 2, "keys": _keys(1)}, "has no key"),
    ],
)
def test_inconsistent_entries_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(KeyringFileError, match=message):
        ServiceKeys(**fields)  # type: ignore[arg-type]


def test_verifiers_never_accept_more_than_two_versions() -> None:
    entry = ServiceKeys(current=1, keys=_keys(1))
    for _ in range(4):
        entry = stage(entry, K[entry.next_version])
        assert len(entry.accepted) <= 2
        entry = switch(entry)
        assert len(entry.accepted) <= 2
        entry = retire(entry)
        assert entry.accepted == (entry.current,)


def test_revoking_the_signing_version_promotes_the_staged_one() -> None:
    staged = ServiceKeys(current=1, keys=_keys(1, 2), staged=2)
    after = revoke(staged, 1, lambda: K[9])
    assert (after.current, after.staged, after.previous, after.revoked) == (2, None, None, (1,))
    assert after.keys == {2: K[2]}


def test_revoking_the_signing_version_without_a_staged_one_issues_a_new_one() -> None:
    idle = ServiceKeys(current=3, keys=_keys(3), revoked=(2,))
    after = revoke(idle, 3, lambda: K[4])
    assert (after.current, after.revoked, after.keys) == (4, (2, 3), {4: K[4]})


def test_revoking_the_staged_or_previous_version_keeps_the_signer() -> None:
    staged = ServiceKeys(current=1, keys=_keys(1, 2), staged=2)
    assert revoke(staged, 2, lambda: K[9]) == ServiceKeys(current=1, keys=_keys(1), revoked=(2,))
    switched = ServiceKeys(current=2, keys=_keys(1, 2), previous=1)
    assert revoke(switched, 1, lambda: K[9]) == ServiceKeys(current=2, keys=_keys(2), revoked=(1,))


def test_revoking_the_current_version_while_a_previous_one_is_accepted_keeps_the_previous() -> None:
    switched = ServiceKeys(current=2, keys=_keys(1, 2), previous=1)
    after = revoke(switched, 2, lambda: K[3])
    assert (after.current, after.previous, after.revoked, sorted(after.keys)) == (3, 1, (2,), [1, 3])


def test_a_revoked_version_number_is_never_issued_again() -> None:
    staged = ServiceKeys(current=1, keys=_keys(1, 2), staged=2)
    after = revoke(staged, 2, lambda: K[9])
    assert after.next_version == 3
    assert stage(after, K[3]).staged == 3


def test_revoking_twice_changes_nothing_and_an_unknown_version_is_a_clear_error() -> None:
    after = revoke(ServiceKeys(current=1, keys=_keys(1, 2), staged=2), 2, lambda: K[9])
    assert revoke(after, 2, lambda: K[8]) == after
    with pytest.raises(KeyringFileError, match=r"v7 is not held \(accepted: v1\): nothing to revoke"):
        revoke(after, 7, lambda: K[8])


def test_the_v2_format_round_trips_every_field() -> None:
    ring = ControllerKeyring(
        {
            "a": ServiceKeys(current=2, keys=_keys(2, 3), staged=3, revoked=(1,)),
            "b": ServiceKeys(current=5, keys=_keys(4, 5), previous=4),
        }
    )
    text = dump_keyring(ring)
    doc = yaml.safe_load(text)
    assert doc["format"] == KEYRING_FORMAT == "autobot-keyring-v2"
    assert doc["services"]["a"] == {
        "current": 2,
        "staged": 3,
        "revoked": [1],
        "keys": {3: K[3].hex(), 2: K[2].hex()},
    }
    assert parse_keyring(doc) == ring


def test_a_v1_keyring_is_read_as_current_and_previous() -> None:
    """The format before staged rotation: current is the highest version, verifiers accepted the two
    highest. Read transparently: the second highest becomes previous; older keys (never shipped) go."""
    v1 = {
        "format": "autobot-keyring-v1",
        "services": {
            "a": {"current": 3, "keys": {3: K[3].hex(), 2: K[2].hex(), 1: K[1].hex()}},
            "b": {"current": 1, "keys": {1: K[1].hex()}},
        },
    }
    ring = parse_keyring(v1)
    assert ring.services["a"] == ServiceKeys(current=3, keys=_keys(2, 3), previous=2)
    assert ring.services["b"] == ServiceKeys(current=1, keys=_keys(1))
    assert yaml.safe_load(dump_keyring(ring))["format"] == "autobot-keyring-v2"
    with pytest.raises(KeyringFileError, match="must be the highest"):
        parse_keyring(
            {
                "format": "autobot-keyring-v1",
                "services": {"a": {"current": 1, "keys": {1: K[1].hex(), 2: K[2].hex()}}},
            }
        )


def test_a_malformed_v2_entry_is_a_clear_error_that_names_the_service_not_the_key() -> None:
    doc = {
        "format": KEYRING_FORMAT,
        "services": {"a": {"current": 1, "staged": 1, "keys": {1: K[1].hex()}}},
    }
    with pytest.raises(KeyringFileError, match=r"service 'a'.*newer than current") as caught:
        parse_keyring(doc)
    assert K[1].hex() not in str(caught.value)
    doc["services"]["a"] = {"current": 1, "revoked": "v1", "keys": {1: K[1].hex()}}
    with pytest.raises(KeyringFileError, match="'revoked' must be a list"):
        parse_keyring(doc)


def test_offline_rotation_of_a_keyring_file_retires_the_previous_version_first() -> None:
    """`autobot keys generate --rotate` on a file no machine uses: all steps at once."""
    ring, _ = plan_keyring(None, ["a"], new_key=iter([K[1]]).__next__)
    ring, changes = plan_keyring(ring, ["a"], rotate=["a"], new_key=iter([K[2]]).__next__)
    assert [str(c) for c in changes] == ["a:v2 rotated", "a:v1 kept"]
    assert ring.services["a"] == ServiceKeys(current=2, keys=_keys(1, 2), previous=1)
    ring, changes = plan_keyring(ring, ["a"], rotate=["a"], new_key=iter([K[3]]).__next__)
    assert [str(c) for c in changes] == ["a:v3 rotated", "a:v2 kept", "a:v1 retired"]
    assert ring.services["a"] == ServiceKeys(current=3, keys=_keys(2, 3), previous=2)
