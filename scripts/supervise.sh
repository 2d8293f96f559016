#!/usr/bin/env bash
# Runs several long-lived processes together, for `make run` and `make backends`, and stops
# them all as soon as one of them exits: a backend whose port is taken, or corelb that cannot
# start, ends the whole run within a fraction of a second, naming which one and why.
#
#   scripts/supervise.sh LABEL COMMAND [LABEL COMMAND]...
#
# LABEL names the process in messages (say "backend B on 127.0.0.1:8082"); COMMAND is one
# shell word list. Ctrl-C or SIGTERM stops everything and exits 0 (corelb drains and exits 0
# on SIGTERM); a child that exits first makes the run exit 1.
set -uo pipefail

[ $# -ge 2 ] && [ $(($# % 2)) = 0 ] || { echo "usage: supervise.sh LABEL COMMAND..." >&2; exit 2; }

pids=()
labels=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  # Whatever did not stop in 5 s (a drain is bounded well below that) is killed.
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 1 ] || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap 'stop_all; exit 0' INT TERM

# Each child in its own process group (set -m), so that only this script decides when it stops.
set -m
while [ $# -gt 0 ]; do
  labels+=("$1")
  # shellcheck disable=SC2086
  $2 &
  pids+=($!)
  shift 2
done
set +m

# Polling, not `wait -n`: a child that died before `wait -n` began would never be reported.
while :; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      wait "${pids[$i]}"
      rc=$?
      if [ $rc -gt 128 ]; then why="killed by signal $((rc - 128))"; else why="exit status $rc"; fi
      echo "supervise: ${labels[$i]} exited ($why); stopping the others" >&2
      unset 'pids[i]'
      stop_all
      exit 1
    fi
  done
  sleep 0.1
done
