#!/usr/bin/env bash
# A blend trained data-parallel (issue 18): `examples/bank-marketing-distributed.toml` with
# its MLP made a blend (the same MLP, plus boosted trees), without its search, trained by one
# executor alone and by WORKERS executors data-parallel, each executor pinned to a core with
# taskset; prints each run's wall time (submit to end), test AUC, log loss and the trees'
# weight. RUNS pairs, alternating. With ROWS set, on that many rows of `halyard datagen
# --rows` instead (an MLP of 64 units, 4 epochs, and TREES trees, no early stopping).
# Needs a release build, a running etcd ($ETCD, default 127.0.0.1:2379) and, without ROWS,
# ../shared/data/bank-full.csv.
# SHOW_LOG=N prints the last N lines of each job's log.
# Usage: [ROWS=1000000] [SHOW_LOG=N] benches/blend_distributed.sh [WORKERS] [RUNS] [TREES]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
B=${HALYARD:-${CARGO_TARGET_DIR:-$here/target}/release/halyard}
ETCD=${ETCD:-127.0.0.1:2379}
WORKERS=${1:-2}
RUNS=${2:-1}
TREES=${3:-500}
work=$(mktemp -d)
ROOTS=$work
[ -n "${ROWS:-}" ] || ROOTS="$(cd "$here/../shared/data" && pwd),$work"
# shellcheck source=benches/cluster.sh
. "$here/benches/cluster.sh"

# The blend of generated rows with $1 workers ("alone": none).
generated_spec() {
  cat > "$work/$1.toml" <<EOT
name = "blend-$1"
[data]
source = "$work/data/campaign/responses.csv"
label = "responded"
positive = "yes"
exclude = ["customer_id"]
[model]
type = "blend"
hidden = [64]
trees = $TREES
early_stopping = 0
[train]
workers = $1
epochs = 4
batch_size = 4096
patience = 0
seed = 1
checkpoint_steps = 0
checkpoint_secs = 0
step_timeout_secs = 120
[resources]
cpus = 1
memory_mb = 4096
EOT
}

# The example as a blend, without its search; `alone` drops `workers`.
spec() {
  if [ -n "${ROWS:-}" ]; then
    generated_spec "$1"
  else
    sed -e '/^# Hyperparameter search/,$d' \
      -e "s|^path = .*|path = \"$here/../shared/data/bank-full.csv\"|" \
      -e 's/^type = "mlp"/type = "blend"/' \
      -e "s/^ensemble = 1/ensemble = 1\ntrees = $TREES\nshrinkage = 0.05\nearly_stopping = 50/" \
      -e "s/^workers = .*/workers = $1/" \
      "$here/examples/bank-marketing-distributed.toml" > "$work/$1.toml"
  fi
  [ "$1" = alone ] && sed -i '/^workers = /d' "$work/$1.toml"
  echo "$work/$1.toml"
}

[ -z "${ROWS:-}" ] || "$B" datagen --out "$work/data" --rows "$ROWS" --seed 7 >/dev/null
EXEC_ARGS="--memory-mb 8192"
echo "machine: $cores cores ($(lscpu | sed -n 's/^Model name: *//p')); $WORKERS workers, at most $TREES trees, $RUNS runs each"
for r in $(seq 1 "$RUNS"); do
for w in alone "$WORKERS"; do
  cluster "$WORKERS"
  start=$(date +%s.%N)
  id=$(submit_and_wait "$(spec "$w")")
  secs=$(python3 -c "import time; print(round(time.time() - $start, 1))")
  metrics=$("$B" job "$id" --scheduler "$api" --json | python3 -c 'import json,sys; j=json.load(sys.stdin); m=j["metrics"]; print("%s: test AUC %.4f log loss %.4f trees weight %.2f" % (j["state"], m.get("test_auc", 0), m.get("test_log_loss", 0), m.get("blend_trees_weight", -1)))')
  # A data-parallel run's parts: the MLP's training and the trees' boosting, as logged.
  log=$("$B" logs "$id" --scheduler "$api")
  parts=$(grep -o 'in [0-9.]* s: [0-9]* \(samples/s\|per second\)' <<<"$log" | sed 's/: .*//' | paste -sd, - || true)
  # Rank 0's end: from the trees' agreement to the log's last line (scoring, publishing).
  end=$(python3 -c '
import sys
from datetime import datetime
t = lambda l: datetime.strptime(l.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
lines = [l for l in sys.stdin.read().splitlines() if l[:2] == "20"]
agreed = [l for l in lines if "trees agreed bit for bit" in l]
print(round((t(lines[-1]) - t(agreed[-1])).total_seconds(), 2) if agreed else "")' <<<"$log")
  echo "run $r, $w: $secs s, $metrics${parts:+ (parts trained $parts)}${end:+; $end s from the trees' agreement to the log's end}"
  [ -z "${SHOW_LOG:-}" ] || tail -n "$SHOW_LOG" <<<"$log"
  stop_cluster
done
done
