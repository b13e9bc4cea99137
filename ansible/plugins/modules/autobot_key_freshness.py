#!/usr/bin/python
"""Tell whether a service's running process started after its key files last changed (on the machine)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: autobot_key_freshness
short_description: Whether a service has loaded its current key files (it started after they last changed)
description:
  - Runs on the machine (standard library only). Services read their key files and Redis password at start,
    so a process that started before a file changed still uses the old content. This module compares the
    start time of the unit's main process with the newest modification time of the given files and of the
    directory itself (removing a retired or revoked key file changes no remaining file, only the directory).
  - C(stale) is true when the unit has no running process or a file is newer than its process; the caller
    then restarts it. After an interrupted run (files copied, restart never reached) a rerun therefore still
    restarts the service, although copying the files changes nothing any more.
  - Never reads the files' contents. Read-only; supports check mode.
options:
  unit:
    description: The systemd service unit (for example C(autobot-npu-worker.service)).
    type: str
    required: true
  directory:
    description: The key directory.
    type: path
    required: true
  patterns:
    description: Shell patterns of the file names that the service loads at start.
    type: list
    elements: str
    default: ["*.key", "redis.password"]
author: AutoBot cluster toolkit
"""

RETURN = r"""
running:
  description: Whether the unit has a main process.
  returned: always
  type: bool
started:
  description: When the main process started (UNIX time), 0 when none runs.
  returned: always
  type: float
newest:
  description: The newest modification time of the matched files (UNIX time), 0 without files.
  returned: always
  type: float
newest_file:
  description: The name of the newest matched file.
  returned: always
  type: str
stale:
  description: The service must be restarted to load its files.
  returned: always
  type: bool
"""

import fnmatch
import os

from ansible.module_utils.basic import AnsibleModule


def process_start_time(stat_text: str, boot_time: float, ticks_per_second: int) -> float:
    """UNIX time a process started, from /proc/<pid>/stat and /proc/stat's btime.

    The second field (the command name) may hold spaces and parentheses, so fields are counted after the
    last ')'; `starttime` is field 22 of proc(5), in clock ticks since boot.
    """
    after_name = stat_text[stat_text.rindex(")") + 2 :].split()
    return boot_time + int(after_name[19]) / ticks_per_second


def boot_time(proc_stat_text: str) -> float:
    for line in proc_stat_text.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("/proc/stat has no btime line")


def newest_file(directory: str, patterns: list[str]) -> tuple[float, str]:
    """(mtime, name) of the newest file whose name matches one of `patterns`; (0, "") without one."""
    newest, name = 0.0, ""
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False) and any(fnmatch.fnmatch(entry.name, p) for p in patterns):
            mtime = entry.stat(follow_symlinks=False).st_mtime
            if mtime > newest:
                newest, name = mtime, entry.name
    return newest, name


# What newest_file names when the directory changed last: a file was removed (a retired or revoked version),
# which no remaining file's time shows, or one was added or renamed into place.
DIRECTORY_CHANGED = "(the directory: a file was added or removed)"


def freshness(pid: int, directory: str, patterns: list[str], proc: str = "/proc") -> dict[str, object]:
    newest, name = newest_file(directory, patterns)
    directory_mtime = os.stat(directory).st_mtime
    if directory_mtime > newest:
        newest, name = directory_mtime, DIRECTORY_CHANGED
    if pid <= 0:
        return {"running": False, "started": 0.0, "newest": newest, "newest_file": name, "stale": True}
    with open(f"{proc}/{pid}/stat", encoding="utf-8", errors="replace") as handle:
        stat_text = handle.read()
    with open(f"{proc}/stat", encoding="utf-8") as handle:
        booted = boot_time(handle.read())
    started = process_start_time(stat_text, booted, os.sysconf("SC_CLK_TCK"))
    # Equal times count as stale: the start time has clock-tick resolution, a restart too many is harmless.
    return {
        "running": True,
        "started": started,
        "newest": newest,
        "newest_file": name,
        "stale": newest >= started,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "unit": {"type": "str", "required": True},
            "directory": {"type": "path", "required": True},
            "patterns": {"type": "list", "elements": "str", "default": ["*.key", "redis.password"]},
        },
        supports_check_mode=True,
    )
    p = module.params
    systemctl = module.get_bin_path("systemctl", required=True)
    rc, out, err = module.run_command([systemctl, "show", "--property=MainPID", "--value", p["unit"]])
    if rc != 0:
        module.fail_json(msg=f"systemctl show {p['unit']} failed: {err.strip()}")
    try:
        result = freshness(int(out.strip() or 0), p["directory"], p["patterns"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot tell whether {p['unit']} loaded {p['directory']}: {exc}")
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
