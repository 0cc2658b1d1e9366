#!/bin/sh
# Run benchmarks/science_vision.py with its arguments, logging everything to
# benchmarks/results/logs/science_vision-<UTC>.log: `uptime` (the machine's load) at start and end, and /usr/bin/time -v
# (user + sys CPU seconds: the idle 2-core wall time is estimated as their sum / 2).
set -u
cd "$(dirname "$0")/.."
LOG="benchmarks/results/logs/science_vision-$(date -u +%Y%m%dT%H%M%SZ).log"
mkdir -p benchmarks/results/logs
PY="${PY:-.venv/bin/python}"
{
  echo "# command: $PY benchmarks/science_vision.py $*"
  echo "# git: $(git rev-parse HEAD) $(git status --porcelain | wc -l) uncommitted path(s)"
  echo "# start: $(date -u +%FT%TZ) uptime: $(uptime)"
  echo "# nproc: $(nproc)"
} > "$LOG"
HF_HUB_DISABLE_XET=1 /usr/bin/time -v "$PY" benchmarks/science_vision.py "$@" >> "$LOG" 2>&1
rc=$?
echo "# end: $(date -u +%FT%TZ) uptime: $(uptime) rc: $rc" >> "$LOG"
echo "$LOG"
exit $rc
