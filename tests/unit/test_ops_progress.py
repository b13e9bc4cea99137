"""Folding recorded ansible-runner event streams into progress, failures and the per-host summary (pure)."""

from __future__ import annotations

from rich.console import Console
from tests.unit.ops_replay import load_stream

from autobot.ops.display import failure_text, local_cluster_down, progress_view, summary_table
from autobot.ops.health import machines_from_events
from autobot.ops.progress import RunState, failure_message


def _fold(name: str, total: int | None = None) -> RunState:
    state = RunState(task_total=total)
    for event in load_stream(name):
        state.apply(event)
    return state


def _text(renderable: object, width: int = 160) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_a_successful_run_counts_tasks_plays_and_results() -> None:
    state = _fold("site-ok", total=4)
    assert state.task_number == 4
    assert state.play == "Record the phase"
    assert state.task == "Write the phase"
    assert {h: (t.ok, t.changed, t.failed) for h, t in state.hosts.items()} == {
        "node-a": (4, 3, 0),
        "node-b": (4, 3, 0),
    }
    assert state.stats is not None
    assert state.stats["node-a"]["changed"] == 3
    assert state.final_failures() == []


def test_progress_shows_play_task_n_of_total_hosts_and_elapsed() -> None:
    state = RunState(task_total=4)
    events = load_stream("site-ok")
    # the moment the second task started: 1 task done on both machines
    second_task = [i for i, e in enumerate(events) if e["event"] == "playbook_on_task_start"][1]
    for event in events[: second_task + 1]:
        state.apply(event)
    text = _text(progress_view(state, elapsed=83.4))
    assert "Write the release marker" in text  # the play
    assert "task 2 of ~4" in text
    assert "hosts 2" in text
    assert "ok 2" in text
    assert "changed 2" in text
    assert "failed 0" in text
    assert "unreachable 0" in text
    assert "0:01:23" in text


def test_an_exact_total_is_shown_without_tilde_and_never_below_the_tasks_started() -> None:
    state = _fold("site-ok", total=3)
    state.task_total_exact = True
    assert "task 4 of 4" in _text(progress_view(state, 0))
    assert "task 4 of" not in _text(progress_view(_fold("site-ok", total=None), 0))


def test_a_failed_run_names_the_host_task_and_message() -> None:
    state = _fold("deploy-failed")
    [failure] = state.final_failures()
    assert failure.host == "node-b"
    assert failure.task == "Check the new release's health"
    assert "did not answer /api/health" in failure.message
    text = _text(failure_text(state.final_failures()))
    assert 'FAILED on node-b, task "Check the new release\'s health": npu-worker did not answer' in text
    # the other machine went on; the live counters say who failed
    assert state.hosts["node-a"].failed == 0
    assert "failed 1 (node-b)" in _text(progress_view(state, 1))


def test_unreachable_hosts_of_the_local_cluster_are_said_plainly() -> None:
    state = _fold("site-unreachable")
    failures = state.final_failures()
    assert {f.host for f in failures} == {"node-a", "node-b"}
    assert all(f.unreachable for f in failures)
    assert "Failed to create temporary directory" in failures[0].message  # what ansible says ...
    hosts = sorted(state.hosts)
    assert local_cluster_down(failures, hosts, "local") == "the local cluster is not running: run `make up`"
    assert local_cluster_down(failures[:1], hosts, "local") == (
        f"part of the local cluster is not running ({failures[0].host}): run `make up`"
    )
    # a remote inventory's unreachable machine is not "the local cluster"
    assert local_cluster_down(failures, hosts, "production") is None
    assert "UNREACHABLE on node-a" in _text(failure_text(failures))


def test_a_rescued_failure_does_not_stand() -> None:
    state = RunState()
    failed = {
        "event": "runner_on_failed",
        "event_data": {"host": "h", "task": "Flip", "res": {"msg": "health check failed"}},
    }
    state.apply(failed)
    state.apply(
        {
            "event": "playbook_on_stats",
            "event_data": {"ok": {"h": 3}, "rescued": {"h": 1}, "processed": {"h": 1}},
        }
    )
    assert state.final_failures() == []


def test_an_ignored_error_is_not_a_failure() -> None:
    state = RunState()
    state.apply(
        {
            "event": "runner_on_failed",
            "event_data": {"host": "h", "task": "t", "ignore_errors": True, "res": {}},
        }
    )
    assert state.failures == []
    assert state.hosts["h"].ok == 1


def test_roles_and_handlers_are_labelled_as_ansible_prints_them() -> None:
    state = RunState(task_total=2)
    state.apply({"event": "playbook_on_task_start", "event_data": {"task": "Install", "role": "redis"}})
    assert state.task == "redis : Install"
    state.apply(
        {"event": "playbook_on_handler_task_start", "event_data": {"task": "Restart", "role": "redis"}}
    )
    assert state.task == "handler: redis : Restart"
    assert state.task_number == 1  # handlers are not counted against the total


def test_failure_messages() -> None:
    assert failure_message({"censored": "the output has been hidden due to no_log"}) == (
        "the output has been hidden due to no_log"
    )
    assert failure_message({"msg": "non-zero return code", "stderr": "line 1\nredis-cli: NOAUTH"}) == (
        "non-zero return code: redis-cli: NOAUTH"
    )
    loop = {
        "msg": "One or more items failed",
        "results": [{"failed": False, "msg": "fine"}, {"failed": True, "msg": "port 8081 is taken"}],
    }
    assert failure_message(loop) == "port 8081 is taken"
    assert failure_message({"rc": 3}) == "exit status 3"
    assert failure_message({}) == "failed"
    assert len(failure_message({"msg": "x" * 5000})) < 700


def test_the_summary_has_a_row_per_host_with_release_phase_and_keys() -> None:
    state = _fold("deploy-failed")
    machines = {m.host: m for m in machines_from_events(load_stream("health-after-deploy"))}
    text = _text(summary_table(state, machines, title="deploy"), width=200)
    [row_a] = [line for line in text.splitlines() if "node-a" in line]
    [row_b] = [line for line in text.splitlines() if "node-b" in line]
    # node-a flipped to the new release, node-b stopped at its health gate and still serves the old one
    assert "20250102T000000Z-def5678" in row_a
    assert "20250101T000000Z-abc1234" in row_b
    assert "logging" in row_a
    assert "signs main-backend:v2; verifies npu-worker:v1" in row_a
    assert [c.strip() for c in row_b.split("│")[2:6]] == ["2", "1", "1", "0"]  # ok changed failed unreachable


def test_the_summary_tolerates_machines_without_a_health_report() -> None:
    state = _fold("site-unreachable")
    text = _text(summary_table(state, None, title="site"))
    assert "node-a" in text
    assert "-" in text
