"""A release flip of main-backend under 20 clients of steady chat load, with and without socket activation.

Runs against the LOCAL cluster only (inventory/local, after `make up`; nothing else is ever targeted). Load
runs on the main-backend machine itself (molecule/resources/traffic/traffic.py, chat turns only, 20 users), so
the numbers are the service's, not the network's. In each phase main-backend is flipped twice between its two
newest releases exactly as roles/release does it (a new link renamed over `current`, then a restart of the
unit); the phases differ only in who holds the port:

  socket   the deployed way: autobot-main-backend.socket holds it and uvicorn takes it as fd 3, so a restart
           queues new connections in the kernel's backlog;
  no-socket  uvicorn binds the port itself, so a restart refuses connections until the new process listens.
           systemd cannot drop a Requires= in a drop-in, so the socket unit still starts: two runtime drop-ins
           move it to a spare port and start the service without the LISTEN_* variables.

Prints, per phase: requests, failed requests and why, p50/p99/max latency. Asserts nothing about time.
The cluster is left as it was found (socket activation, the original release serving).

  python tests/perf/bench_flip.py [--duration 40] [--users 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventory" / "local"
HOST = "autobot-main-backend"
UNIT = "autobot-main-backend"
TRAFFIC = ROOT / "molecule" / "resources" / "traffic" / "traffic.py"
DROP_INS = (f"/run/systemd/system/{UNIT}.service.d/bench-no-socket.conf",
            f"/run/systemd/system/{UNIT}.socket.d/bench-no-socket.conf")  # fmt: skip
SPARE_PORT = 18001
# The unit's ExecStart (roles/python_service/templates/service.service.j2).
SERVE = (
    "/opt/autobot/current/venv/bin/autobot serve main-backend --config /etc/autobot/main-backend/config.yml"
)


def on_backend(command: str, *, check: bool = True) -> str:
    """Run a shell command as root on the main-backend machine, through Ansible (SSH, become)."""
    result = subprocess.run(
        ["ansible", "-i", str(INVENTORY), HOST, "-b", "-m", "ansible.builtin.shell", "-a", command],
        capture_output=True, text=True, cwd=ROOT, check=False,
        env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": f"{Path(sys.executable).parent}:/bin"},
    )  # fmt: skip
    if check and result.returncode != 0:
        raise RuntimeError(f"{command!r} failed on {HOST}: {result.stdout[-800:]}{result.stderr[-800:]}")
    # ansible prints "host | CHANGED | rc=0 >>" and then the command's standard output.
    head, _, body = result.stdout.partition(" >>\n")
    return body.strip() if head else ""


def flip_to(release: str) -> None:
    """What roles/release/tasks/flip.yml does, then the restart of roles/python_service's hook."""
    on_backend(f"cd /opt/autobot && ln -sfn releases/{release} current.new && mv -T current.new current")
    on_backend(f"systemctl restart {UNIT}.service")


def wait_healthy() -> None:
    on_backend(
        "for i in $(seq 1 60); do curl -sf http://127.0.0.1:8001/api/ready >/dev/null && exit 0;"
        " sleep 0.5; done; exit 1"
    )


def phase(name: str, releases: tuple[str, str], duration: float, users: int) -> dict[str, Any]:
    script = TRAFFIC.read_text(encoding="utf-8")
    on_backend(f"cat > /var/tmp/autobot-traffic.py <<'EOF'\n{script}\nEOF")
    out = f"/var/tmp/bench-flip-{name}.json"
    on_backend(
        f"rm -f {out}; systemd-run --unit=bench-flip-{name} --collect "
        f"--property=RuntimeMaxSec={int(duration) + 60} "
        f"/usr/bin/python3 /var/tmp/autobot-traffic.py legit --chat-only --target http://127.0.0.1:8001 "
        f"--duration {duration} --count 20000 --users {users} --pause 0.02 --out {out}"
    )
    time.sleep(duration / 4)
    flips = []
    for release in (releases[1], releases[0]):
        started = time.monotonic()
        flip_to(release)
        flips.append(round(time.monotonic() - started, 2))
        time.sleep(duration / 4)
    on_backend(f"while systemctl is-active --quiet bench-flip-{name}; do sleep 1; done")
    result: dict[str, Any] = json.loads(on_backend(f"cat {out}"))
    result["flip_seconds"] = flips
    # The load is bounded by a count as well as by time; a load that ran out early measured no flip at all.
    if float(result["seconds"]) < 0.9 * duration:
        sys.exit(f"{name}: the load ended after {result['seconds']} s, before the flips; raise --count")
    return result


def without_socket() -> None:
    service, sock = DROP_INS
    on_backend(
        f"mkdir -p $(dirname {service}) $(dirname {sock})"
        f" && printf '[Service]\\nExecStart=\\nExecStart=/usr/bin/env -u LISTEN_FDS -u LISTEN_PID {SERVE}\\n'"
        f" > {service}"
        f" && printf '[Socket]\\nListenStream=\\nListenStream=127.0.0.1:{SPARE_PORT}\\n' > {sock}"
        f" && systemctl daemon-reload && systemctl stop {UNIT}.service {UNIT}.socket"
        f" && systemctl start {UNIT}.service"
    )
    wait_healthy()
    # Proof that uvicorn holds the port itself: the socket unit listens on the spare port only.
    listening = on_backend(f"systemctl show -p Listen --value {UNIT}.socket")
    if str(SPARE_PORT) not in listening:
        sys.exit(f"the no-socket phase did not take: the socket unit listens on {listening}")


def with_socket() -> None:
    on_backend(
        f"rm -f {' '.join(DROP_INS)} && systemctl daemon-reload"
        f" && systemctl stop {UNIT}.service {UNIT}.socket && systemctl start {UNIT}.socket {UNIT}.service"
    )
    wait_healthy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    try:
        current = on_backend("readlink /opt/autobot/current").removeprefix("releases/")
    except RuntimeError:
        # `make bench` runs every benchmark; this one alone needs the local cluster, so say so and skip.
        print("skipped: the local cluster is not up with main-backend deployed (run `make up` first)")
        return
    all_releases = sorted(on_backend("ls /opt/autobot/releases").split())
    others = [r for r in all_releases if r != current and on_backend(
        f"test -e /opt/autobot/releases/{r}/venv/bin/autobot && echo yes", check=False) == "yes"]  # fmt: skip
    if not others:
        sys.exit("main-backend needs two releases: deploy twice (-e release_force=true) first")
    releases = (current, others[-1])
    print(f"main-backend flips {releases[0]} -> {releases[1]} -> {releases[0]} in each phase; load: "
          f"{args.users} users, chat only, {args.duration:g} s per phase; load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    try:
        results["socket"] = phase("socket", releases, args.duration, args.users)
        without_socket()
        results["no-socket"] = phase("no-socket", releases, args.duration, args.users)
    finally:
        with_socket()
        if on_backend("readlink /opt/autobot/current").removeprefix("releases/") != current:
            flip_to(current)
    print(f"{'phase':10} {'requests':>9} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  failures")
    for name, result in results.items():
        latency = result.get("latency_ms") or {}
        reasons: dict[str, int] = {}
        for failure in result.get("failures", []):
            key = str(failure["status"])
            reasons[key] = reasons.get(key, 0) + 1
        kept = len(result.get("failures", []))  # the traffic tool keeps the first failures only
        why = (
            f"{reasons}" + (f" (of the first {kept})" if kept < result["failed"] else "") if reasons else "-"
        )
        print(f"{name:10} {result['requests']:>9} {result['failed']:>7} {latency.get('p50', 0):>8} "
              f"{latency.get('p99', 0):>8} {latency.get('max', 0):>8}  {why}")  # fmt: skip


if __name__ == "__main__":
    main()
