"""The rollout phases are deployed files. npu-worker runs as a real `autobot serve` process, first with the
logging entry file (unsigned calls pass, audited as "would be refused"), then with the enforcement entry file
rendered over it and a restart (unsigned calls are refused), its config file byte for byte the same."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest
from tests.integration.cluster import (
    Cluster,
    Phase,
    ServiceProcess,
    read_audit,
    running_cluster,
    wait_for_audit,
)
from tests.support.redis_server import RedisServer

from autobot.client.service_client import ServiceClient
from autobot.config import load_config
from autobot.middleware.service_auth_enforcement import ServiceAuthEnforcementMiddleware
from autobot.middleware.service_auth_logging import ServiceAuthLoggingMiddleware

pytestmark = pytest.mark.slow

UNSIGNED = {"texts": ["an unsigned call"], "dimensions": 8}
SIGNED = {"texts": ["a signed call"], "dimensions": 8}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Cluster]:
    """npu-worker runs; main-backend is only laid out, so the test can sign with its deployed keys."""
    with running_cluster(
        tmp_path_factory.mktemp("phases"),
        redis_server.url,
        phase="logging",
        names=("main-backend", "npu-worker"),
        start=("npu-worker",),
    ) as built:
        yield built


def _digest(svc: ServiceProcess) -> str:
    return hashlib.sha256(svc.config_path.read_bytes()).hexdigest()


def _phase_of(svc: ServiceProcess) -> Phase:
    """What an operator's `grep -l ServiceAuth...Middleware <entry file>` tells: one class is named."""
    text = svc.entry_path.read_text()
    named = {
        cls.__name__
        for cls in (ServiceAuthLoggingMiddleware, ServiceAuthEnforcementMiddleware)
        if cls.__name__ in text
    }
    assert len(named) == 1, named
    return "enforcement" if named == {ServiceAuthEnforcementMiddleware.__name__} else "logging"


async def _calls(cluster: Cluster) -> tuple[httpx.Response, httpx.Response]:
    """An unsigned and a signed (as main-backend) POST /api/process."""
    npu = cluster["npu-worker"]
    async with httpx.AsyncClient(base_url=npu.url, trust_env=False) as anyone:
        unsigned = await anyone.post("/api/process", json=UNSIGNED)
    async with ServiceClient.from_config(
        load_config(cluster["main-backend"].config_path), retries=0
    ) as signer:
        signed = await signer.post("npu-worker", "/api/process", json=SIGNED)
    return unsigned, signed


async def test_switching_the_entry_file_switches_the_phase(cluster: Cluster) -> None:
    npu = cluster["npu-worker"]
    config_before = _digest(npu)

    # Logging phase: nothing is refused, but the unsigned call is audited as one enforcement would refuse.
    assert _phase_of(npu) == "logging"
    unsigned, signed = await _calls(cluster)
    assert unsigned.status_code == 200, unsigned.text
    assert unsigned.json()["count"] == 1
    assert signed.status_code == 200, signed.text
    would_refuse = wait_for_audit(npu.audit_log, path="/api/process", caller=None, phase="logging")
    assert (would_refuse["decision"], would_refuse["status"]) == ("deny", 401)
    assert would_refuse["reason"].startswith("missing_header")
    wait_for_audit(npu.audit_log, caller="main-backend", decision="allow", phase="logging")

    # Enforcement phase: only the entry file is rendered again, then the service restarts.
    cluster.set_phase("npu-worker", "enforcement")
    cluster.restart("npu-worker")
    assert _phase_of(npu) == "enforcement"
    assert _digest(npu) == config_before, "the phase must not be a config setting"
    unsigned, signed = await _calls(cluster)
    assert unsigned.status_code == 401
    assert signed.status_code == 200, signed.text
    refused = wait_for_audit(npu.audit_log, path="/api/process", caller=None, phase="enforcement")
    assert (refused["decision"], refused["status"]) == ("deny", 401)
    wait_for_audit(npu.audit_log, caller="main-backend", decision="allow", phase="enforcement")

    # Rollback is the same move the other way.
    cluster.set_phase("npu-worker", "logging")
    cluster.restart("npu-worker")
    unsigned, _ = await _calls(cluster)
    assert unsigned.status_code == 200
    assert _digest(npu) == config_before
    phases = [
        r["phase"] for r in read_audit(npu.audit_log) if r["caller"] is None and r["path"] == "/api/process"
    ]
    assert phases == ["logging", "enforcement", "logging"]


def test_enforcement_refuses_to_start_without_its_keys(cluster: Cluster) -> None:
    """Fail closed: with the enforcement entry file and no key directory, the service does not start."""
    npu = cluster["npu-worker"]
    cluster.stop("npu-worker")
    cluster.set_phase("npu-worker", "enforcement")
    hidden = npu.keys_dir.with_name("service-keys.hidden")
    npu.keys_dir.rename(hidden)
    try:
        with pytest.raises(RuntimeError, match="exited with"):
            cluster.start("npu-worker")
        assert "service auth" in npu.output_tail()
    finally:
        hidden.rename(npu.keys_dir)
        cluster.stop("npu-worker")
