"""The one way to open the conversation-files database for reading and writing.

Every connection gets a busy timeout (concurrent writers wait instead of failing at once), autocommit mode
(transactions are explicit ``BEGIN IMMEDIATE`` ... ``COMMIT``, never opened implicitly by the driver) and
``foreign_keys=ON``: SQLite's default is OFF per connection, which is how AutoBot first shipped.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

DEFAULT_BUSY_TIMEOUT_S = 10.0


def connect(path: Path | str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn
