"""Plan fix 1, concurrent start-up: sixteen processes initialise the same fresh database at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from queue import Empty
from typing import Any

PROCESSES = 16


def _init_worker(db: str, migrations_dir: str | None, barrier: Barrier, results: Any) -> None:
    # Imported here so the time spent importing is before the barrier, not inside the race.
    from autobot.storage.migrate import migrate

    barrier.wait(timeout=60)
    try:
        result = migrate(db, migrations_dir=Path(migrations_dir) if migrations_dir else None)
        results.put(("ok", result.from_version, result.to_version, result.applied))
    except Exception as exc:
        results.put(("error", repr(exc), None, None))


def race(db: Path, migrations_dir: Path | None = None) -> list[tuple[Any, ...]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    workers = [
        context.Process(
            target=_init_worker,
            args=(str(db), str(migrations_dir) if migrations_dir else None, barrier, results),
        )
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    outcomes: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 120
    try:
        while len(outcomes) < PROCESSES:
            try:
                outcomes.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except Empty:
                break
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert [w.exitcode for w in workers] == [0] * PROCESSES
    return outcomes


def test_sixteen_processes_apply_each_migration_exactly_once(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    # Each migration inserts one audit row: a second application would add a second row (or fail on CREATE).
    (migrations / "0001_audit.sql").write_text(
        "CREATE TABLE migration_audit (id INTEGER PRIMARY KEY, migration TEXT NOT NULL);\n"
        "INSERT INTO migration_audit (migration) VALUES ('0001');\n"
    )
    (migrations / "0002_more.sql").write_text(
        "CREATE TABLE later (x INTEGER);\n"
        "INSERT INTO migration_audit (migration) VALUES ('0002');\n"
        "CREATE TRIGGER later_audit AFTER INSERT ON later BEGIN\n"
        "    INSERT INTO migration_audit (migration) VALUES ('trigger');\n"
        "END;\n"
    )
    db = tmp_path / "fresh" / "race.db"
    outcomes = race(db, migrations)

    errors = [o for o in outcomes if o[0] != "ok"]
    assert errors == []
    assert len(outcomes) == PROCESSES
    applied = [name for outcome in outcomes for name in outcome[3]]
    assert sorted(applied) == ["0001_audit.sql", "0002_more.sql"]  # each applied by exactly one process
    assert all(outcome[2] == 2 for outcome in outcomes)
    with sqlite3.connect(db) as conn:
        audit = conn.execute("SELECT migration, count(*) FROM migration_audit GROUP BY migration").fetchall()
        version = conn.execute("PRAGMA user_version").fetchone()
    conn.close()
    assert sorted(audit) == [("0001", 1), ("0002", 1)]
    assert version == (2,)


def test_sixteen_processes_initialise_the_real_schema(tmp_path: Path) -> None:
    db = tmp_path / "data" / "conversation_files.db"
    outcomes = race(db)

    assert [o for o in outcomes if o[0] != "ok"] == []
    assert len(outcomes) == PROCESSES
    assert [name for outcome in outcomes for name in outcome[3]] == ["0001_initial.sql"]
    # Everyone but the winner found the schema already there.
    assert sorted(outcome[1] for outcome in outcomes) == [0] + [1] * (PROCESSES - 1)
    with sqlite3.connect(db) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchone()
        integrity = conn.execute("PRAGMA integrity_check").fetchone()
    conn.close()
    assert tables == (5,)
    assert integrity == ("ok",)
