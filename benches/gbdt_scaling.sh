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
work=$(mktemp -d)
ROOTS=$work
EXEC_ARGS="--memory-mb 8192"
# shellcheck source=benches/cluster.sh
. "$here/benches/cluster.sh"

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

echo "machine: $cores cores ($(lscpu | sed -n 's/^Model name: *//p')); $ROWS rows, $TREES trees of $LEAVES leaves, $REPEAT runs each"
declare -A secs
for r in $(seq 1 "$REPEAT"); do
for w in 1 2; do
  cluster "$w"
  id=$(submit_and_wait "$(spec "$w")")
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
