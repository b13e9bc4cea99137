"""The health filter: listening, down (deployed but silent) and not deployed are told apart."""

from __future__ import annotations

from tests.support.ansible_plugins import load_filter_plugin

health = load_filter_plugin("autobot_health.py", "autobot_health")


def _svc(key: str, port: int, health_route: str | None = "/api/health") -> dict[str, object]:
    value: dict[str, object] = {"port": port, "unit": f"autobot-{key}"}
    if health_route:
        value["health"] = health_route
    return {"key": key, "value": value}


def _seen(
    loaded: bool = True, active: bool = True, port_open: bool = True, status: int | None = 200
) -> dict[str, object]:
    return {"loaded": loaded, "active": active, "port_open": port_open, "health_status": status}


def test_listening_down_and_not_deployed() -> None:
    services = [_svc("main-backend", 8001), _svc("npu-worker", 8081), _svc("ai-stack", 8080)]
    observed = {
        "main-backend": _seen(),
        "npu-worker": _seen(port_open=False),
        "ai-stack": _seen(loaded=False),
    }
    assert health.autobot_service_health(services, observed) == {
        "main-backend": "listening",
        "npu-worker": "down",  # running but its port is closed
        "ai-stack": "not deployed",
    }


def test_a_stopped_unit_is_down_even_when_its_socket_holds_the_port() -> None:
    observed = {"main-backend": _seen(active=False)}
    assert health.autobot_service_health([_svc("main-backend", 8001)], observed) == {"main-backend": "down"}


def test_a_health_route_that_does_not_answer_200_is_down() -> None:
    for status in (0, 500, 503):
        observed = {"main-backend": _seen(status=status)}
        services = [_svc("main-backend", 8001)]
        assert health.autobot_service_health(services, observed) == {"main-backend": "down"}


def test_a_service_without_a_health_route_is_judged_by_its_unit_and_port() -> None:
    services = [_svc("redis-stack", 6379, health_route=None)]
    assert health.autobot_service_health(services, {"redis-stack": _seen(status=None)}) == {
        "redis-stack": "listening"
    }
    assert health.autobot_service_health(services, {"redis-stack": _seen(port_open=False, status=None)}) == {
        "redis-stack": "down"
    }


def test_a_machine_that_reported_nothing_has_nothing_deployed() -> None:
    assert health.autobot_service_health([_svc("npu-worker", 8081)], {}) == {"npu-worker": "not deployed"}
