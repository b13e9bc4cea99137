"""The state of a playbook run, folded from ansible-runner events (pure: no clock, no terminal, no thread).

Only the display thread applies events (ops/pump.py), and the summary reads the state after that thread has
stopped, so the state needs no lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Event = Mapping[str, Any]

# The recap counters of `playbook_on_stats`, in the order ansible prints them.
STAT_KEYS = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")
_GENERIC_ITEM_FAILURE = "One or more items failed"
_MESSAGE_LIMIT = 600


@dataclass
class HostTally:
    """Task results of one host so far (what the recap will say, counted live)."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class Failure:
    host: str
    task: str
    message: str
    unreachable: bool = False


@dataclass
class RunState:
    play: str = ""
    task: str = ""
    task_number: int = 0
    # An estimate given before the run (ops/tasks.py); `exact` says whether it can be trusted to the task.
    task_total: int | None = None
    task_total_exact: bool = False
    hosts: dict[str, HostTally] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    # host -> recap counters, from the final `playbook_on_stats` event (None until the playbook ends).
    stats: dict[str, dict[str, int]] | None = None
    events: int = 0

    def _tally(self, host: str) -> HostTally:
        return self.hosts.setdefault(host, HostTally())

    def apply(self, event: Event) -> None:
        self.events += 1
        kind = event.get("event")
        data: Mapping[str, Any] = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self.play = str(data.get("name") or data.get("play") or "")
        elif kind == "playbook_on_task_start":
            self.task_number += 1
            self.task = task_label(data)
        elif kind == "playbook_on_handler_task_start":
            # Handlers run only when notified: they are not counted against the total.
            self.task = "handler: " + task_label(data)
        elif kind == "runner_on_ok":
            tally = self._tally(str(data.get("host")))
            tally.ok += 1
            if (data.get("res") or {}).get("changed"):
                tally.changed += 1
        elif kind == "runner_on_skipped":
            self._tally(str(data.get("host"))).skipped += 1
        elif kind == "runner_on_failed":
            host = str(data.get("host"))
            if data.get("ignore_errors"):
                self._tally(host).ok += 1
            else:
                self._tally(host).failed += 1
                self.failures.append(Failure(host, task_label(data), failure_message(data.get("res") or {})))
        elif kind == "runner_on_unreachable":
            host = str(data.get("host"))
            self._tally(host).unreachable += 1
            self.failures.append(
                Failure(host, task_label(data), failure_message(data.get("res") or {}), unreachable=True)
            )
        elif kind == "playbook_on_stats":
            self.stats = recap(data)

    @property
    def shown_total(self) -> int | None:
        """The total to show: never below the tasks already started (includes and batches add tasks)."""
        if self.task_total is None:
            return None
        return max(self.task_total, self.task_number)

    def totals(self) -> HostTally:
        total = HostTally()
        for tally in self.hosts.values():
            total.ok += tally.ok
            total.changed += tally.changed
            total.failed += tally.failed
            total.unreachable += tally.unreachable
            total.skipped += tally.skipped
        return total

    def final_failures(self) -> list[Failure]:
        """The failures that stand: a failure a `rescue` recovered from is not one (the recap says which).

        Per host, the last failure counts: after a rescue that flips back, the play fails with the reason.
        """
        last: dict[str, Failure] = {}
        for failure in self.failures:
            last[failure.host] = failure
        if self.stats is None:
            return list(last.values())
        return [
            f
            for host, f in last.items()
            if self.stats.get(host, {}).get("failures", 0) or self.stats.get(host, {}).get("dark", 0)
        ]


def task_label(data: Mapping[str, Any]) -> str:
    """`role : task`, as ansible prints it."""
    task = str(data.get("task") or data.get("name") or "").strip()
    role = str(data.get("role") or "").strip()
    return f"{role} : {task}" if role and not task.startswith(f"{role} :") else task


def failure_message(res: Mapping[str, Any]) -> str:
    """Why a task failed, in one paragraph: the module's message, the failed item's, stderr's last line.

    A no_log result only ever says that it was censored, so a secret cannot reach the terminal from here.
    """
    if "censored" in res:
        return str(res["censored"])
    message = str(res.get("msg") or "").strip()
    results = res.get("results")
    if isinstance(results, list) and (not message or message.startswith(_GENERIC_ITEM_FAILURE)):
        for item in results:
            if isinstance(item, Mapping) and item.get("failed"):
                message = failure_message(item) or message
                break
    stderr = str(res.get("stderr") or "").strip()
    if stderr:
        last = stderr.splitlines()[-1]
        if last not in message:
            message = f"{message}: {last}" if message else last
    if not message and res.get("rc") is not None:
        message = f"exit status {res['rc']}"
    message = " ".join(message.split())
    return message[:_MESSAGE_LIMIT] + ("..." if len(message) > _MESSAGE_LIMIT else "") or "failed"


def recap(data: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """host -> {ok, changed, failures, dark, ...} from a `playbook_on_stats` event."""
    hosts: dict[str, dict[str, int]] = {}
    processed = data.get("processed") or {}
    for host in processed if isinstance(processed, Mapping) else ():
        hosts[str(host)] = dict.fromkeys(STAT_KEYS, 0)
    for key in STAT_KEYS:
        counts = data.get(key) or {}
        if isinstance(counts, Mapping):
            for host, count in counts.items():
                hosts.setdefault(str(host), dict.fromkeys(STAT_KEYS, 0))[key] = int(count)
    return hosts
