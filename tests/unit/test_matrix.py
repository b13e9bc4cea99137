"""The authorization matrix: semantics on the real inventory matrix, and on small synthetic ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autobot.security.matrix import Matrix, MatrixError


def _matrix(callee: str, public: list[Any] | None = None, callers: dict[str, Any] | None = None) -> Matrix:
    services: dict[str, Any] = {callee: {"public": public or [], "callers": callers or {}}}
    for caller in callers or {}:
        services.setdefault(caller, {})
    return Matrix.from_services(services, callee)


def test_real_matrix_grants_and_denies(services_matrix_file: Path) -> None:
    npu = Matrix.load(services_matrix_file, "npu-worker")
    assert npu.callers == {"main-backend", "ai-stack"}
    assert npu.allows("main-backend", "POST", "/api/process")
    assert npu.allows("ai-stack", "POST", "/api/process")
    assert not npu.allows("ai-stack", "GET", "/api/health")
    assert not npu.allows("browser-service", "POST", "/api/process")
    assert not npu.allows("main-backend", "POST", "/api/process/extra")
    assert npu.is_public("GET", "/api/health")
    assert not npu.is_public("HEAD", "/api/health")
    assert not npu.is_public("POST", "/api/process")


def test_real_matrix_double_star_and_single_star(services_matrix_file: Path) -> None:
    browser = Matrix.load(services_matrix_file, "browser-service")
    for path in ["/api/sessions", "/api/sessions/", "/api/sessions/abc", "/api/sessions/a/b/c"]:
        assert browser.allows("main-backend", "DELETE", path), path
    assert not browser.allows("main-backend", "PUT", "/api/sessions/abc")
    assert not browser.allows("main-backend", "GET", "/api/sessionsX")
    backend = Matrix.load(services_matrix_file, "main-backend")
    assert backend.is_public("GET", "/api/chat/sessions/s1/messages")
    assert not backend.is_public("GET", "/api/chat/sessions//messages")
    assert not backend.is_public("GET", "/api/chat/sessions/a/b/messages")
    assert backend.is_public("DELETE", "/api/sessions/s1/files/f1")
    assert not backend.is_public("DELETE", "/api/sessions/s1/files")
    assert backend.callers == frozenset()


def test_frontend_root_pattern_is_public_for_get_and_head(services_matrix_file: Path) -> None:
    frontend = Matrix.load(services_matrix_file, "frontend")
    assert frontend.is_public("GET", "/")
    assert frontend.is_public("HEAD", "/assets/app.js")
    assert not frontend.is_public("POST", "/")


def test_unknown_callee_denies_everything(services_matrix_file: Path) -> None:
    ghost = Matrix.load(services_matrix_file, "ghost-service")
    assert not ghost.is_public("GET", "/api/health")
    assert not ghost.allows("main-backend", "POST", "/api/process")
    redis = Matrix.load(services_matrix_file, "redis-stack")
    assert not redis.is_public("GET", "/")


def test_methods_are_exact() -> None:
    m = _matrix("x", callers={"a": [{"methods": ["GET"], "path": "/r"}]})
    assert m.allows("a", "GET", "/r")
    assert not m.allows("a", "get", "/r")
    assert not m.allows("a", "HEAD", "/r")


def test_star_is_exactly_one_non_empty_segment() -> None:
    m = _matrix("x", public=[{"methods": ["GET"], "path": "/a/*/c"}])
    assert m.is_public("GET", "/a/b/c")
    assert not m.is_public("GET", "/a/c")
    assert not m.is_public("GET", "/a/b/b/c")
    assert not m.is_public("GET", "/a//c")


def test_double_star_matches_zero_or_more_and_trailing_slash_is_distinct() -> None:
    m = _matrix("x", public=[{"methods": ["GET"], "path": "/a/**"}, {"methods": ["GET"], "path": "/exact"}])
    assert m.is_public("GET", "/a")
    assert m.is_public("GET", "/a/b/c/d")
    assert not m.is_public("GET", "/ab")
    assert m.is_public("GET", "/exact")
    assert not m.is_public("GET", "/exact/")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"methods": ["GET"], "path": "/a/**/b"}, "last segment"),
        ({"methods": ["GET"], "path": "/a/b*"}, "whole segments"),
        ({"methods": ["get"], "path": "/a"}, "upper-case"),
        ({"methods": [], "path": "/a"}, "non-empty"),
        ({"methods": ["GET"], "path": "a"}, "starting with '/'"),
        ({"methods": ["GET"], "path": "/a", "extra": 1}, "exactly the keys"),
    ],
)
def test_malformed_rules_are_refused_with_the_location(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(MatrixError, match=message) as info:
        _matrix("x", public=[entry])
    assert "x.public[1]" in str(info.value)


def test_caller_must_be_a_service_of_the_matrix() -> None:
    with pytest.raises(MatrixError, match="not a service"):
        Matrix.from_services({"x": {"callers": {"ghost": [{"methods": ["GET"], "path": "/a"}]}}}, "x")


def test_top_level_key_is_accepted_and_required_in_files(tmp_path: Path) -> None:
    services = {"x": {"public": [{"methods": ["GET"], "path": "/h"}]}}
    assert Matrix.from_services({"autobot_services": services}, "x").is_public("GET", "/h")
    path = tmp_path / "m.yml"
    path.write_text("x:\n  public: []\n")
    with pytest.raises(MatrixError, match="autobot_services"):
        Matrix.load(path, "x")
    with pytest.raises(MatrixError, match="cannot read"):
        Matrix.load(tmp_path / "missing.yml", "x")
