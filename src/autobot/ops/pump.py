"""Events from ansible-runner to the display without ever making the run wait for the terminal.

ansible-runner calls its `event_handler` from the loop that reads ansible-playbook's output. A handler that
draws on a slow terminal (or a paused one: a scrolled tmux pane, a stalled SSH session) would stop that loop;
ansible-playbook then blocks writing to a full pipe and the whole run on every machine waits. So, as
ansible-navigator does, the handler only puts the event on a queue and returns; one display thread drains the
queue, folds every event into the run state, and renders once per batch. A slow render therefore costs
frames, never events: the next batch holds everything that arrived meanwhile.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from autobot.ops.progress import Event, RunState

Render = Callable[[RunState, Sequence[Event]], None]

_STOP = object()


class EventPump:
    """`handler` for ansible-runner; a thread that applies events to `state` and calls `render`.

    Use as a context manager around the run. After it exits, `state` holds every event and no other thread
    touches it. `render` is also called every `tick` seconds without events, so elapsed time keeps moving.
    """

    def __init__(self, state: RunState, render: Render, tick: float = 0.5) -> None:
        self.state = state
        self._render: Render | None = render
        self._tick = tick
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="autobot-ops-display", daemon=True)
        self.render_error: BaseException | None = None

    def handler(self, event: dict[str, Any]) -> bool:
        """Called by ansible-runner for each event: enqueue and return at once (True: keep the artifact)."""
        self._queue.put(event)
        return True

    def __enter__(self) -> EventPump:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _next_batch(self) -> tuple[list[Event], bool]:
        try:
            first = self._queue.get(timeout=self._tick)
        except queue.Empty:
            return [], False
        batch: list[Event] = []
        item = first
        while True:
            if item is _STOP:
                return batch, True
            batch.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _drain(self) -> None:
        while True:
            batch, stop = self._next_batch()
            for event in batch:
                self.state.apply(event)
            if self._render is not None:
                try:
                    self._render(self.state, batch)
                except Exception as exc:  # a broken terminal must not lose the run's result
                    self.render_error = exc
                    self._render = None
            if stop:
                return
