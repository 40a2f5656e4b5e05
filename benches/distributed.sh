#!/usr/bin/env bash
# Data-parallel training figures (issue 5), on real processes:
#   1. throughput (samples/s) of the bank-marketing MLP with 1, 2 and 4 workers, each an
#      executor process pinned to a core with taskset (core = worker index mod the cores);
#   2. the time lost when a worker is killed with SIGKILL: from the kill to training resumed
#      (the log's "resumed from the checkpoint" line), and the steps redone.
# Needs a release build, a running etcd ($ETCD, default 127.0.0.1:2379) and
# ../shared/data/bank-full.csv. Usage: benches/distributed.sh [EPOCHS] [BATCH] [FAIL_EPOCHS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
B=${HALYARD:-${CARGO_TARGET_DIR:-$here/target}/release/halyard}
ETCD=${ETCD:-127.0.0.1:2379}
EPOCHS=${1:-4}
BATCH=${2:-512}
FAIL_EPOCHS=${3:-100}
TTL=${TTL:-5}
work=$(mktemp -d)
# The example without its search, with W workers and no early stopping.
spec() {
  sed -e '/^# Hyperparameter search/,$d' \
      -e "s|^path = .*|path = \"$here/../shared/data/bank-full.csv\"|" \
      -e "s/^workers = .*/workers = $1/" -e "s/^epochs = .*/epochs = ${3:-$EPOCHS}/" \
      -e "s/^batch_size = .*/batch_size = $BATCH/" -e "s/^patience = .*/patience = 0/" \
      -e "s/^checkpoint_steps = .*/checkpoint_steps = ${2:-0}/" -e "s/^checkpoint_secs = .*/checkpoint_secs = 0/" \
      "$here/examples/bank-marketing-distributed.toml" > "$work/w$1.toml"
  echo "$work/w$1.toml"
}

# The reference data's folder and the work folder are the cluster's data roots.
ROOTS="$(cd "$here/../shared/data" && pwd),$work"
SCHED_ARGS="--lease-ttl $TTL"
EXEC_ARGS="--lease-ttl $TTL"
# shellcheck source=benches/cluster.sh
. "$here/benches/cluster.sh"

echo "machine: $cores cores ($(lscpu | sed -n 's/^Model name: *//p')); epochs $EPOCHS, batch $BATCH"
for w in 1 2 4; do
  cluster "$w"
  id=$(submit_and_wait "$(spec "$w")")
  line=$("$B" logs "$id" --scheduler "$api" | grep -o "trained [0-9]* samples in [0-9.]* s: [0-9]* samples/s ([^)]*)" || echo "failed")
  auc=$("$B" job "$id" --scheduler "$api" --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["metrics"].get("test_auc", 0), 4))')
  echo "workers $w: $line (test AUC $auc)"
  stop_cluster
done

[ "${SKIP_FAILURE:-0}" = 1 ] && exit 0
# Time lost to a killed worker: 2 workers of 3 executors, a checkpoint every 50 steps.
cluster 3
id=$("$B" submit "$(spec 2 50 "$FAIL_EPOCHS")" --scheduler "$api" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
until "$B" logs "$id" --scheduler "$api" | grep -q "checkpoint written"; do sleep 0.1; done
sleep 0.5
victim=$("$B" job "$id" --scheduler "$api" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"][1])')
pid=$(pgrep -f -- "--id $victim " | head -1)
kill_ms=$(date +%s%3N)
kill -9 "$pid"
until "$B" logs "$id" --scheduler "$api" | grep -q "resumed from the checkpoint"; do sleep 0.05; done
resumed_ms=$(date +%s%3N)
"$B" logs "$id" --scheduler "$api" | grep -E "checkpoint written|resumed from|lost|failed|requeued" | tail -6
echo "kill -9 of $victim (lease TTL $TTL s) to training resumed: $(( resumed_ms - kill_ms )) ms"
until "$B" job "$id" --scheduler "$api" --json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["state"] in ("succeeded","failed") else 1)'; do sleep 0.5; done
"$B" job "$id" --scheduler "$api" --json | python3 -c 'import json,sys; j=json.load(sys.stdin); print("job", j["state"], "attempt", j["attempt"], "test AUC", round(j["metrics"].get("test_auc", 0), 4))'
