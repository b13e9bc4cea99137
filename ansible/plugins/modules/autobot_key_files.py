#!/usr/bin/python
"""Make a key directory hold exactly the given files (content, owner, group, mode), in one module call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: autobot_key_files
short_description: Make a directory hold exactly the given secret files
description:
  - Runs on the machine. Creates I(path) with the given owner, group and mode, writes every file of I(files)
    whose content, owner, group or mode differs (to a temporary file in the directory, then renamed over the
    old one, so a reader never sees half a key), and removes every other file in the directory.
  - One call per machine instead of one per file (the role service_keys' install took most of an idempotent
    converge's time as a loop of copy tasks). Never returns or logs file contents; the task sets no_log.
  - Supports check mode (reports what would change, changes nothing).
options:
  path:
    description: The directory.
    type: path
    required: true
  owner:
    description: Owner of the directory.
    type: str
    default: root
  group:
    description: Group of the directory.
    type: str
    required: true
  mode:
    description: Mode of the directory (octal string).
    type: str
    default: "0750"
  files:
    description: The files, each C(path) (inside I(path)), C(content), C(owner), C(group), C(mode).
    type: list
    elements: dict
    required: true
author: AutoBot cluster toolkit
"""

RETURN = r"""
written:
  description: Names of the files written (new or different).
  type: list
  elements: str
  returned: always
removed:
  description: Names of the files removed (not in I(files)).
  type: list
  elements: str
  returned: always
"""

import grp
import os
import pwd
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule


def _ids(owner: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid


def _differs(path: str, data: bytes, uid: int, gid: int, mode: int) -> bool:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISREG(info.st_mode) or (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) != (
        uid,
        gid,
        mode,
    ):
        return True
    with open(path, "rb") as handle:
        return handle.read() != data


def _write(directory: str, name: str, data: bytes, uid: int, gid: int, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, os.path.join(directory, name))
    except OSError:
        os.unlink(tmp)
        raise


def sync(params: dict[str, Any], check_mode: bool) -> tuple[list[str], list[str], bool]:
    directory = params["path"]
    dir_uid, dir_gid = _ids(params["owner"], params["group"])
    dir_mode = int(params["mode"], 8)
    changed = False
    if not os.path.isdir(directory):
        changed = True
        if not check_mode:
            os.makedirs(directory, mode=dir_mode)
    if os.path.isdir(directory):
        info = os.stat(directory)
        if (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) != (dir_uid, dir_gid, dir_mode):
            changed = True
            if not check_mode:
                os.chown(directory, dir_uid, dir_gid)
                os.chmod(directory, dir_mode)
    wanted: dict[str, dict[str, Any]] = {}
    for entry in params["files"]:
        if os.path.dirname(os.path.normpath(entry["path"])) != os.path.normpath(directory):
            raise ValueError(f"{entry['path']} is not a file of {directory}")
        wanted[os.path.basename(entry["path"])] = entry
    written = []
    for name, entry in sorted(wanted.items()):
        data = (str(entry["content"]) + "\n").encode("utf-8")
        uid, gid = _ids(entry["owner"], entry["group"])
        mode = int(entry["mode"], 8)
        if _differs(os.path.join(directory, name), data, uid, gid, mode):
            written.append(name)
            if not check_mode:
                _write(directory, name, data, uid, gid, mode)
    present = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    removed = [name for name in present if name not in wanted]
    if not check_mode:
        for name in removed:
            os.unlink(os.path.join(directory, name))
    return written, removed, changed or bool(written or removed)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "owner": {"type": "str", "default": "root"},
            "group": {"type": "str", "required": True},
            "mode": {"type": "str", "default": "0750"},
            "files": {"type": "list", "elements": "dict", "required": True, "no_log": True},
        },
        supports_check_mode=True,
    )
    try:
        written, removed, changed = sync(module.params, module.check_mode)
    except (KeyError, ValueError, OSError) as exc:
        # The message names paths and users only; the contents never leave this function.
        module.fail_json(msg=f"cannot install the key files in {module.params['path']}: {exc}")
    module.exit_json(changed=changed, written=written, removed=removed)


if __name__ == "__main__":
    main()
