"""What the operator sees: live progress while a playbook runs, then a summary per host.

`progress_view` and `summary_table` are pure (state in, rich renderable out); `LiveProgress` is the only part
that owns a terminal, and it is called only from the display thread of ops/pump.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from autobot.ops.health import MachineHealth, keys_text, release_text
from autobot.ops.progress import Event, Failure, RunState


def elapsed_text(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


def progress_view(state: RunState, elapsed: float) -> RenderableType:
    """Play, task n of total, hosts ok/changed/failed/unreachable so far, elapsed time."""
    total = state.shown_total
    if total is None:
        counter = f"task {state.task_number}"
    else:
        counter = f"task {state.task_number} of {'' if state.task_total_exact else '~'}{total}"
    lines: list[RenderableType] = [
        Text.assemble(("play  ", "bold"), state.play or "(starting)"),
        Text.assemble((f"{counter}  ", "bold"), state.task or "-"),
    ]
    if total:
        lines.append(ProgressBar(total=total, completed=state.task_number, width=60))
    t = state.totals()
    failed_hosts = sorted(h for h, tally in state.hosts.items() if tally.failed)
    dark_hosts = sorted(h for h, tally in state.hosts.items() if tally.unreachable)
    counts = Text.assemble(
        ("hosts ", "bold"),
        f"{len(state.hosts)}  ",
        ("ok ", "green"),
        f"{t.ok}  ",
        ("changed ", "yellow"),
        f"{t.changed}  ",
        ("failed ", "red"),
        f"{len(failed_hosts)}" + (f" ({', '.join(failed_hosts)})" if failed_hosts else ""),
        "  ",
        ("unreachable ", "red"),
        f"{len(dark_hosts)}" + (f" ({', '.join(dark_hosts)})" if dark_hosts else ""),
        ("  elapsed ", "bold"),
        elapsed_text(elapsed),
    )
    lines.append(counts)
    grid = Table.grid()  # one row per line: a bare Group would run the bar and the counts together
    grid.add_column()
    for line in lines:
        grid.add_row(line)
    return grid


class LiveProgress:
    """A `Render` for ops/pump.py: redraws the progress view; with -v also prints ansible's own lines."""

    def __init__(
        self, console: Console, verbose: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._console = console
        self._verbose = verbose
        self._clock = clock
        self._started = clock()
        self._live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> LiveProgress:
        self._started = self._clock()
        self._live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.stop()
        if not self._console.is_terminal:  # rich ends the last frame with a newline on terminals only
            self._console.line()

    def __call__(self, state: RunState, batch: Sequence[Event]) -> None:
        if self._verbose:
            for event in batch:
                stdout = str(event.get("stdout") or "")
                if stdout:
                    self._live.console.print(Text.from_ansi(stdout))
        elif not self._console.is_terminal:
            # A log file gets no live frames (only the last one): give it a line per play instead.
            for event in batch:
                if event.get("event") == "playbook_on_play_start":
                    name = (event.get("event_data") or {}).get("name") or ""
                    self._live.console.print(Text(f"play: {name}", style="dim"))
        self._live.update(progress_view(state, self._clock() - self._started), refresh=True)


def summary_table(state: RunState, machines: Mapping[str, MachineHealth] | None, title: str) -> Table:
    """One row per host: the recap counters, then what the health run after the action reported."""
    table = Table(title=title)
    for column in ("host", "ok", "changed", "failed", "unreachable", "release", "phase", "keys"):
        numeric = column in ("ok", "changed", "failed", "unreachable")
        table.add_column(
            column, justify="right" if numeric else "left", no_wrap=column in ("host", "release", "phase")
        )
    recap = state.stats or {
        host: {"ok": t.ok, "changed": t.changed, "failures": t.failed, "dark": t.unreachable}
        for host, t in state.hosts.items()
    }
    hosts = sorted(set(recap) | set(machines or {}))
    for host in hosts:
        counts = recap.get(host, {})
        machine = (machines or {}).get(host)
        failed, dark = counts.get("failures", 0), counts.get("dark", 0)
        table.add_row(
            host,
            str(counts.get("ok", 0)),
            f"[yellow]{counts.get('changed', 0)}[/]" if counts.get("changed") else "0",
            f"[red]{failed}[/]" if failed else "0",
            f"[red]{dark}[/]" if dark else "0",
            release_text(machine.release) if machine else "-",
            (machine.phase or "-") if machine else "-",
            keys_text(machine.keys) if machine else "-",
        )
    return table


def failure_text(failures: Sequence[Failure]) -> Text:
    """`FAILED on <host>, task "<task>": <message>` per failing host."""
    text = Text()
    for f in failures:
        what = "UNREACHABLE" if f.unreachable else "FAILED"
        text.append(f"{what} on {f.host}", style="bold red")
        text.append(f', task "{f.task}": ' if f.task else ": ")
        text.append(f.message)
        text.append("\n")
    text.rstrip()
    return text


def local_cluster_down(failures: Sequence[Failure], hosts: Sequence[str], env: str | None) -> str | None:
    """Plain words for the local cluster's containers being absent or stopped (ansible says "Failed to create
    temporary directory"). Only for the local inventory: there, every host is a local container."""
    if env != "local":
        return None
    dark = sorted({f.host for f in failures if f.unreachable})
    if not dark:
        return None
    if set(dark) >= set(hosts):
        return "the local cluster is not running: run `make up`"
    return f"part of the local cluster is not running ({', '.join(dark)}): run `make up`"
