#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine: install Debian's docker.io and start dockerd if needed.
# Prints the PID file of a dockerd it started, so the caller can stop exactly that process later.
set -euo pipefail

pidfile=/run/autobot-dockerd.pid
logfile=/var/log/autobot-dockerd.log

if docker info >/dev/null 2>&1; then
  echo "docker: engine already answering" >&2
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker: installing Debian's docker.io" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
echo "docker: starting dockerd (log: $logfile)" >&2
nohup dockerd --pidfile "$pidfile" >"$logfile" 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "docker: engine ready" >&2
    echo "$pidfile"
    exit 0
  fi
  sleep 1
done
echo "docker: dockerd did not answer within 60 s; see $logfile" >&2
tail -n 20 "$logfile" >&2 || true
exit 1
