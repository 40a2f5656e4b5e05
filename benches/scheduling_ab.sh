#!/usr/bin/env bash
# benches/scheduling.sh for several binaries, alternating, ROUNDS rounds (benches/RESULTS.md
# "Event-driven scheduling": a change against its baseline in one invocation).
# Usage: ETCD=127.0.0.1:23791 benches/scheduling_ab.sh ROUNDS BIN... (each BIN labelled by its file name)
set -u
rounds=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
for r in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    label=$(basename "$bin")
    echo "##### round $r: $label $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    "$here/scheduling.sh" "$bin" "$label-$r" 100 2>&1 | grep -E '^==|submit|throughput'
  done
done
