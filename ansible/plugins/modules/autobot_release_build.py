#!/usr/bin/python
"""Build one release on the controller: the wheelhouse of the Python services and the web UI bundle."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: autobot_release_build
short_description: Build the AutoBot release artifacts on the controller
description:
  - Runs on the controller, once per run. Builds what every machine installs offline, and names the release.
  - The wheelhouse holds every wheel the services need, pinned with hashes by the lock file, for the machines'
    platform (whatever the controller's is), plus the project's own wheel, built reproducibly. It is packed in
    one deterministic tar file whose name carries the hash of its content.
  - The web UI bundle is the static UI directory, packed the same way.
  - Dependencies are downloaded once per lock file, the project wheel once per source tree; a run with nothing
    new builds nothing and reports no change.
options:
  project_dir:
    description: The toolkit checkout (holds pyproject.toml and src/).
    type: path
    required: true
  lock_file:
    description: The services' pinned dependencies with hashes (pip requirements format).
    type: path
    required: true
  webui_dir:
    description: The static web UI.
    type: path
    required: true
  cache_dir:
    description: Where artifacts are built and kept on the controller.
    type: path
    required: true
  python_version:
    description: The machines' Python (major.minor).
    type: str
    default: "3.11"
  platforms:
    description: Wheel platform tags the machines accept, most specific first.
    type: list
    elements: str
    default: [manylinux_2_28_x86_64, manylinux_2_17_x86_64, manylinux2014_x86_64]
  release_id:
    description: Use this release id instead of computing one (UTC time + short commit).
    type: str
author: AutoBot cluster toolkit
"""

RETURN = r"""
release_id:
  description: The release id, UTC time and short commit (for example C(20261130T134500Z-31f032c)).
  type: str
  returned: always
commit:
  description: The short commit of the checkout, with C(-dirty) when it has uncommitted changes.
  type: str
  returned: always
built_at:
  description: When the release was named (ISO 8601, UTC).
  type: str
  returned: always
wheelhouse:
  description: C(tar) (path), C(sha256) (content hash) and C(wheels) (name and sha256 of each wheel).
  type: dict
  returned: always
www:
  description: C(tar) (path) and C(sha256) (content hash) of the web UI bundle.
  type: dict
  returned: always
"""

import datetime
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

# The project files a wheel is built from: anything else in the checkout cannot change the wheel.
_WHEEL_SOURCES = ("pyproject.toml", "src/autobot")
# Wheels carry this timestamp, so the same source always gives the same bytes (1980-01-01, zip's epoch).
_SOURCE_DATE_EPOCH = "315532800"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_files(root: Path, relative: Iterable[str]) -> list[Path]:
    """The files under `relative` paths of `root`, sorted, without caches."""
    files: list[Path] = []
    for rel in relative:
        base = root / rel
        candidates = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        files.extend(
            p for p in candidates if "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        )
    return sorted(files)


def tree_sha256(root: Path, files: Sequence[Path]) -> str:
    """Content hash of a set of files: their paths relative to `root` and their bytes."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def manifest_sha256(entries: Iterable[tuple[str, str]]) -> str:
    """Content hash of a wheelhouse: the sorted (file name, sha256) pairs."""
    return hashlib.sha256("".join(f"{name} {sha}\n" for name, sha in sorted(entries)).encode()).hexdigest()


def content_mtime(sha256_hex: str) -> int:
    """A file's modification time derived from its content. nginx's ETag and Last-Modified come from mtime
    and size, so two releases' files of equal size but different content must not share an mtime (a browser
    would keep the old file); equal content keeps it (nothing to download again)."""
    return int(sha256_hex[:7], 16)


def write_deterministic_tar(dest: Path, root: Path, files: Sequence[Path]) -> None:
    """A tar whose bytes depend on the files' names and contents only (no clock, owners or order)."""
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = content_mtime(sha256_file(path))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    os.replace(tmp, dest)


def release_id(now: datetime.datetime, commit: str) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{commit}"


def git_commit(project: Path) -> str:
    def git(*args: str) -> str:
        # The operator's git, on the operator's own checkout.
        return subprocess.run(  # noqa: S603
            ["git", "-C", str(project), *args],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=7", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "nogit"
    return f"{commit}-dirty" if dirty else commit


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": _SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # argv lists built here from the module's own parameters (paths), never a shell.
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, check=False)  # noqa: S603
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {result.returncode}):\n{tail}")


def download_dependencies(lock: Path, dest: Path, python_version: str, platforms: Sequence[str]) -> None:
    """Every pinned wheel for the machines' platform, hash-checked against the lock (once per lock file)."""
    if dest.is_dir():
        return
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--abi",
        f"cp{python_version.replace('.', '')}",
        "--abi",
        "abi3",
        "--abi",
        "none",
        "-r",
        str(lock),
        "-d",
        str(tmp),
    ]
    for platform in platforms:
        cmd += ["--platform", platform]
    try:
        _run(cmd)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_project_wheel(project: Path, cache: Path) -> Path:
    """The project's wheel, built from a copy of its sources (the checkout stays clean), once per source."""
    files = tree_files(project, _WHEEL_SOURCES)
    source_hash = tree_sha256(project, files)[:16]
    target = cache / f"project-{source_hash}"
    wheels = sorted(target.glob("*.whl")) if target.is_dir() else []
    if wheels:
        return wheels[0]
    with tempfile.TemporaryDirectory(prefix="autobot-wheel-") as tmpdir:
        src = Path(tmpdir, "src")
        for path in files:
            copy = src / path.relative_to(project)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
        out = Path(tmpdir, "out")
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(src)])
        built = sorted(out.glob("*.whl"))
        if len(built) != 1:
            raise RuntimeError(f"expected one project wheel, got {[p.name for p in built]}")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[0], target / built[0].name)
        return target / built[0].name


def build(params: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    project, cache = Path(params["project_dir"]), Path(params["cache_dir"])
    lock, webui = Path(params["lock_file"]), Path(params["webui_dir"])
    cache.mkdir(parents=True, exist_ok=True)
    changed = False

    deps = cache / f"deps-{sha256_file(lock)[:16]}"
    changed |= not deps.is_dir()
    download_dependencies(lock, deps, params["python_version"], params["platforms"])
    project_wheel = build_project_wheel(project, cache)

    with tempfile.TemporaryDirectory(prefix="autobot-wheelhouse-", dir=cache) as tmpdir:
        house = Path(tmpdir, "wheelhouse")
        house.mkdir()
        for wheel in [*sorted(deps.glob("*.whl")), project_wheel]:
            os.link(wheel, house / wheel.name)
        shutil.copy2(lock, house / "requirements.lock")
        entries = [(p.name, sha256_file(p)) for p in sorted(house.iterdir())]
        house_sha = manifest_sha256(entries)
        house_tar = cache / f"wheelhouse-{house_sha[:16]}.tar"
        if not house_tar.is_file():
            write_deterministic_tar(house_tar, house, sorted(house.iterdir()))
            changed = True

    www_files = tree_files(webui, ["."]) if webui.is_dir() else []
    www_sha = tree_sha256(webui, www_files)
    www_tar = cache / f"www-{www_sha[:16]}.tar"
    if not www_tar.is_file():
        write_deterministic_tar(www_tar, webui, www_files)
        changed = True

    now = datetime.datetime.now(datetime.UTC)
    commit = git_commit(project)
    result = {
        "release_id": params.get("release_id") or release_id(now, commit),
        "commit": commit,
        "built_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "wheelhouse": {
            "tar": str(house_tar),
            "sha256": house_sha,
            "project_wheel": project_wheel.name,
            "wheels": [{"name": name, "sha256": sha} for name, sha in entries if name.endswith(".whl")],
        },
        "www": {"tar": str(www_tar), "sha256": www_sha},
    }
    return result, changed


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "project_dir": {"type": "path", "required": True},
            "lock_file": {"type": "path", "required": True},
            "webui_dir": {"type": "path", "required": True},
            "cache_dir": {"type": "path", "required": True},
            "python_version": {"type": "str", "default": "3.11"},
            "platforms": {
                "type": "list",
                "elements": "str",
                "default": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
            },
            "release_id": {"type": "str"},
        },
        # The controller's cache is not the machines' state: check mode builds too, so --check --diff can
        # show what a deploy would change on them.
        supports_check_mode=True,
    )
    for name in ("lock_file",):
        if not Path(module.params[name]).is_file():
            module.fail_json(msg=f"{name} {module.params[name]} does not exist (make lock writes it)")
    try:
        result, changed = build(module.params)
    except (OSError, RuntimeError) as exc:
        module.fail_json(msg=f"building the release failed: {exc}")
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
