#!/usr/bin/env bash
# Data-parallel boosted trees (issue 18): boosting throughput (rows × trees per second) of
# `[model] type = "gbdt"` trained by 1 and 2 workers, each an executor process pinned to its
# own core with taskset, on ROWS generated rows (`halyard datagen --rows`), the same trees
# and leaves, no early stopping. The figure is the workers' own ("member 1: the workers' N
# trees agreed … in S s …"): the boosting, without reading and binning the rows. Also
# checks that both runs end with the same metrics (the trees are the same bit for bit).
# The pair runs REPEAT times, alternating (this machine is shared: medians and their ratio).
# Needs a release build and a running etcd ($ETCD, default 127.0.0.1:2379).
# Usage: benches/gbdt_scaling.sh [ROWS] [TREES] [LEAVES] [REPEAT]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
B=${HALYARD:-${CARGO_TARGET_DIR:-$here/target}/release/halyard}
ETCD=${ETCD:-127.0.0.1:2379}
ROWS=${1:-1000000}
TREES=${2:-50}
LEAVES=${3:-31}
REPEAT=${4:-3}
cores=$(nproc)
work=$(mktemp -d)
pids=()
stop_cluster() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() { stop_cluster; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$B" datagen --out "$work/data" --rows "$ROWS" --seed 7 >/dev/null
spec() {
  cat > "$work/w$1.toml" <<EOF
name = "gbdt-scaling-$1"
[data]
source = "$work/data/campaign/responses.csv"
label = "responded"
positive = "yes"
exclude = ["customer_id"]
[model]
type = "gbdt"
trees = $TREES
num_leaves = $LEAVES
early_stopping = 0
[train]
workers = $1
learning_rate = 0.1
seed = 1
checkpoint_steps = 0
checkpoint_secs = 0
step_timeout_secs = 120
[resources]
cpus = 1
memory_mb = 4096
EOF
  echo "$work/w$1.toml"
}

# A scheduler and N executors, executor i pinned to core i mod the cores; sets $api.
cluster() {
  local n=$1 root=/bench-gbdt-$RANDOM-$$
  api=127.0.0.1:$(free_port)
  "$B" scheduler --listen "$api" --etcd "$ETCD" --etcd-root "$root" --data-roots "$work" >"$work/sched.log" 2>&1 &
  pids+=($!)
  for i in $(seq 0 $((n - 1))); do
    taskset -c $((i % cores)) "$B" executor --listen "127.0.0.1:$(free_port)" --id "w$i" --etcd "$ETCD" \
      --etcd-root "$root" --store "file://$work/store" --data-roots "$work" --cpu-slots 1 \
      --memory-mb 8192 >"$work/w$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 150); do
    [ "$("$B" cluster --scheduler "$api" --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["executors"]))' 2>/dev/null || echo 0)" = "$n" ] && return
    sleep 0.2
  done
  echo "the cluster did not start"; cat "$work/sched.log"; exit 1
}

echo "machine: $cores cores ($(lscpu | sed -n 's/^Model name: *//p')); $ROWS rows, $TREES trees of $LEAVES leaves, $REPEAT runs each"
declare -A secs
for r in $(seq 1 "$REPEAT"); do
for w in 1 2; do
  cluster "$w"
  id=$("$B" submit "$(spec "$w")" --scheduler "$api" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  until "$B" job "$id" --scheduler "$api" --json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["state"] in ("succeeded","failed") else 1)'; do sleep 1; done
  line=$("$B" logs "$id" --scheduler "$api" | grep -o "trees agreed bit for bit.*" || { "$B" logs "$id" --scheduler "$api" | tail -5; echo failed; })
  metrics=$("$B" job "$id" --scheduler "$api" --json | python3 -c 'import json,sys; m=json.load(sys.stdin)["metrics"]; print("test AUC %.6f log loss %.6f" % (m.get("test_auc", 0), m.get("test_log_loss", 0)))')
  echo "run $r, workers $w: $line ($metrics)"
  secs[$w]+="$(echo "$line" | sed -n 's/.* in \([0-9.]*\) s:.*/\1/p') "
  stop_cluster
done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
m1=$(echo "${secs[1]}" | median); m2=$(echo "${secs[2]}" | median)
echo "median boosting: 1 worker $m1 s, 2 workers $m2 s: $(python3 -c "print(round($m1/$m2, 2))")x"
