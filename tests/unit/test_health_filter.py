"""The health filter: listening, down (deployed but silent) and not deployed are told apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "autobot_health", ROOT / "ansible/plugins/filter/autobot_health.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


health = _load()
SS = [
    "LISTEN 0      511          0.0.0.0:6379      0.0.0.0:*",
    "LISTEN 0      4096      127.0.0.11:45549     0.0.0.0:*",
    "LISTEN 0      511             [::]:8001         [::]:*",
]


def _svc(key: str, port: int) -> dict[str, object]:
    return {"key": key, "value": {"port": port, "unit": key}}


def test_ports_are_read_from_ss_for_ipv4_and_ipv6() -> None:
    assert health.listening_ports(SS) == {6379, 45549, 8001}
    assert health.listening_ports(["garbage", ""]) == set()


def test_listening_down_and_not_deployed() -> None:
    services = [_svc("redis-stack", 6379), _svc("npu-worker", 8081), _svc("ai-stack", 8080)]
    states = ["enabled", "enabled", "disabled"]
    assert health.autobot_service_health(services, SS, states) == {
        "redis-stack": "listening",
        "npu-worker": "down",
        "ai-stack": "not deployed",
    }


def test_a_unit_that_does_not_exist_is_not_deployed() -> None:
    assert health.autobot_service_health([_svc("x", 9)], [], []) == {"x": "not deployed"}
