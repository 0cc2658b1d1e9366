#!/bin/sh
# Run benchmarks/science_vision.py with its arguments, logged as `make demo` logs the text demo (output shown and kept
# in benchmarks/results/logs/science_vision-<UTC>.log with the load, the wall time and, with GNU time, the CPU seconds).
exec env DEMO_SCRIPT=science_vision sh "$(dirname "$0")/demo_logged.sh" "$@"
