"""Two OS processes appending to one session's transcript through the real TranscriptStore, at once.

Each process has its own in-process locks, so only the file lock (flock on the session's lock file) can
keep their appends apart: without it, records are lost or numbered twice.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from autobot.chat.transcripts import TranscriptStore

_WRITER = """
import asyncio, json, sys, time
from pathlib import Path
from autobot.chat.entries import ChatEntry
from autobot.chat.transcripts import TranscriptStore

async def main(directory, name, count, go):
    store = TranscriptStore(Path(directory))
    await store.initialize()
    entries = [ChatEntry.new("user", f"{name} {i}") for i in range(count)]
    while not Path(go).exists():  # both processes start appending at the same moment
        time.sleep(0.001)
    receipts = await asyncio.gather(*(store.append("shared", [e]) for e in entries))
    await store.aclose()
    print(json.dumps({e.id: r.last_seq for e, r in zip(entries, receipts)}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
"""


async def test_two_processes_appending_at_once_lose_no_record(tmp_path: Path) -> None:
    directory, go = tmp_path / "transcripts", tmp_path / "go"
    directory.mkdir()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(directory), name, "100", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("one", "two")
    ]
    time.sleep(0.5)  # let both import and wait at the start line
    go.touch()
    outputs = []
    for writer in writers:
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err.decode()
        outputs.append(json.loads(out))
    records = await TranscriptStore(directory).load("shared")
    assert [r.seq for r in records] == list(range(1, 201))
    given = {**outputs[0], **outputs[1]}
    assert len(given) == 200
    # Every append got the sequence number its record has in the file: none numbered twice, none lost.
    assert {r.entry.id: r.seq for r in records} == given
    # ...and the two really ran at the same time: their records are interleaved, not one block each.
    owners = [r.entry.content.split()[0] for r in records]
    assert sum(1 for a, b in itertools.pairwise(owners) if a != b) > 1
