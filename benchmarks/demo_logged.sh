#!/bin/sh
# `make demo`: run benchmarks/science_text.py with its arguments, showing its output and keeping a copy in
# benchmarks/results/logs/science_text-<UTC>.log (every run of the day is kept there, as issue #28 asks), with the
# machine's load (`uptime`) at start and end, the wall time and, where GNU time exists, the CPU seconds.
# DEMO_SCRIPT=science_vision logs the image demo the same way (benchmarks/vision_logged.sh).
set -u
cd "$(dirname "$0")/.."
SCRIPT="${DEMO_SCRIPT:-science_text}"
LOG="benchmarks/results/logs/$SCRIPT-$(date -u +%Y%m%dT%H%M%SZ).log"
mkdir -p benchmarks/results/logs
PY="${PY:-.venv/bin/python}"
{
  echo "# command: $PY benchmarks/$SCRIPT.py $*"
  echo "# git: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) uncommitted path(s)"
  echo "# start: $(date -u +%FT%TZ) uptime: $(uptime)"
  echo "# nproc: $(nproc)"
} > "$LOG"
START=$(date +%s)
TIMER=""
if [ -x /usr/bin/time ]; then TIMER="/usr/bin/time -v"; fi
rcfile=$(mktemp)
{ HF_HUB_DISABLE_XET=1 $TIMER "$PY" benchmarks/$SCRIPT.py "$@" 2>&1; echo $? > "$rcfile"; } | tee -a "$LOG"
rc=$(cat "$rcfile"); rm -f "$rcfile"
echo "# end: $(date -u +%FT%TZ) uptime: $(uptime) wall: $(( $(date +%s) - START ))s rc: $rc" | tee -a "$LOG"
echo "log: $LOG"
exit "$rc"
