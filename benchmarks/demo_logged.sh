#!/bin/sh
# `make demo`: run benchmarks/science_text.py with its arguments, showing its output and keeping a copy in
# benchmarks/results/logs/science_text-<UTC>.log (every run of the day is kept there, as issue #28 asks), with the
# machine's load (`uptime`) at start and end, the wall time and, where GNU time exists, the CPU seconds.
set -u
cd "$(dirname "$0")/.."
LOG="benchmarks/results/logs/science_text-$(date -u +%Y%m%dT%H%M%SZ).log"
mkdir -p benchmarks/results/logs
PY="${PY:-.venv/bin/python}"
{
  echo "# command: $PY benchmarks/science_text.py $*"
  echo "# git: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) uncommitted path(s)"
  echo "# start: $(date -u +%FT%TZ) uptime: $(uptime)"
  echo "# nproc: $(nproc)"
} > "$LOG"
START=$(date +%s)
TIMER=""
if [ -x /usr/bin/time ]; then TIMER="/usr/bin/time -v"; fi
rcfile=$(mktemp)
{ HF_HUB_DISABLE_XET=1 $TIMER "$PY" benchmarks/science_text.py "$@" 2>&1; echo $? > "$rcfile"; } | tee -a "$LOG"
rc=$(cat "$rcfile"); rm -f "$rcfile"
echo "# end: $(date -u +%FT%TZ) uptime: $(uptime) wall: $(( $(date +%s) - START ))s rc: $rc" | tee -a "$LOG"
echo "log: $LOG"
exit "$rc"
