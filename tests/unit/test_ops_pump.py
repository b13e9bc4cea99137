"""The event handler only enqueues: a slow (here: stuck) display never holds up the run, nor loses events."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tests.unit.ops_replay import load_stream

from autobot.ops.progress import Event, RunState
from autobot.ops.pump import EventPump

WAIT = 10.0  # generous upper bound for a thread to do a few microseconds of work; never a speed assertion


class StuckRenderer:
    """A renderer that blocks inside its first call until released, as a paused terminal would."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def __call__(self, state: RunState, batch: Sequence[Event]) -> None:
        self.entered.set()
        self.release.wait(WAIT)
        self.batches.append(len(batch))


def test_a_stuck_renderer_does_not_stall_the_handler_and_every_event_arrives() -> None:
    events = load_stream("site-ok") * 20  # 480 events
    renderer = StuckRenderer()
    state = RunState()
    with EventPump(state, renderer) as pump:
        assert pump.handler(events[0]) is True
        assert renderer.entered.wait(WAIT)  # the display thread is now stuck inside its first render
        # ansible-runner's reader thread delivers the rest: each call must return without the display
        feeder = threading.Thread(target=lambda: [pump.handler(e) for e in events[1:]])
        feeder.start()
        feeder.join(WAIT)
        assert not feeder.is_alive(), "the handler waited for the display"
        assert renderer.batches == []  # the renderer is still stuck in its first call
        renderer.release.set()
    # after the pump stopped: every event was applied, in few renders (batches coalesce while rendering lags)
    assert state.events == len(events)
    assert sum(renderer.batches) == len(events)
    assert len(renderer.batches) < len(events)
    assert state.task_number == 4 * 20


def test_a_broken_renderer_is_switched_off_and_the_state_still_gets_every_event() -> None:
    calls = []

    def broken(state: RunState, batch: Sequence[Event]) -> None:
        calls.append(len(batch))
        raise OSError("terminal gone")

    events = load_stream("deploy-failed")
    state = RunState()
    with EventPump(state, broken) as pump:
        for event in events:
            pump.handler(event)
    assert state.events == len(events)
    assert [f.host for f in state.final_failures()] == ["node-b"]
    assert isinstance(pump.render_error, OSError)
    assert len(calls) == 1


def test_without_events_the_display_still_ticks() -> None:
    ticks = threading.Semaphore(0)

    def render(state: RunState, batch: Sequence[Event]) -> None:
        if not batch:
            ticks.release()

    with EventPump(RunState(), render, tick=0.01):
        assert ticks.acquire(timeout=WAIT)
        assert ticks.acquire(timeout=WAIT)
