"""The health filter: listening, down (deployed but silent) and not deployed are told apart."""

from __future__ import annotations

from tests.support.ansible_plugins import load_filter_plugin

health = load_filter_plugin("autobot_health.py", "autobot_health")
# The ports that accepted a connection on the machine (playbooks/health.yml probes each service's port).
TCP_LISTEN = [6379, 45549, 8001]


def _svc(key: str, port: int, health_route: str | None = "/api/health") -> dict[str, object]:
    value: dict[str, object] = {"port": port, "unit": f"autobot-{key}"}
    if health_route:
        value["health"] = health_route
    return {"key": key, "value": value}


def _unit(state: str, status: str = "enabled") -> dict[str, str]:
    return {"state": state, "status": status}


def test_listening_down_and_not_deployed() -> None:
    services = [_svc("main-backend", 8001), _svc("npu-worker", 8081), _svc("ai-stack", 8080)]
    units = {"autobot-main-backend.service": _unit("running"), "autobot-npu-worker.service": _unit("running")}
    assert health.autobot_service_health(services, TCP_LISTEN, units, {"main-backend": 200}) == {
        "main-backend": "listening",
        "npu-worker": "down",  # running but its port is closed
        "ai-stack": "not deployed",
    }


def test_a_stopped_unit_is_down_even_when_its_socket_holds_the_port() -> None:
    services = [_svc("main-backend", 8001)]
    units = {"autobot-main-backend.service": _unit("stopped")}
    assert health.autobot_service_health(services, TCP_LISTEN, units) == {"main-backend": "down"}


def test_a_health_route_that_does_not_answer_200_is_down() -> None:
    services = [_svc("main-backend", 8001)]
    units = {"autobot-main-backend.service": _unit("running")}
    for status in (0, 500, 503):
        assert health.autobot_service_health(services, TCP_LISTEN, units, {"main-backend": status}) == {
            "main-backend": "down"
        }


def test_a_service_without_a_health_route_is_judged_by_its_unit_and_port() -> None:
    services = [_svc("redis-stack", 6379, health_route=None)]
    units = {"autobot-redis-stack.service": _unit("running")}
    assert health.autobot_service_health(services, TCP_LISTEN, units) == {"redis-stack": "listening"}


def test_a_unit_service_facts_reports_as_not_found_is_not_deployed() -> None:
    services = [_svc("npu-worker", 8081)]
    units = {"autobot-npu-worker.service": _unit("inactive", "not-found")}
    assert health.autobot_service_health(services, TCP_LISTEN, units) == {"npu-worker": "not deployed"}
