#!/usr/bin/env bash
# A real multi-process Halyard cluster on loopback, without containers: etcd, an S3 server
# with signature checks, two schedulers (leader + standby) and N executors storing models
# in S3, with keys and mutual TLS on (a CA and node certificates from `halyard certs init`).
# Ctrl-C stops everything. Usage: deploy/local-cluster.sh [EXECUTORS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/halyard-target}"
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
# The flags of every other build of the shared target directory (else cargo rebuilds it all).
. scripts/rustflags.sh
cargo build -p halyard --bin halyard -p halyard-s3-server --bin halyard-s3-server
bin="$CARGO_TARGET_DIR/debug"
dir=$(mktemp -d /tmp/halyard-cluster.XXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; echo "logs kept in $dir"' EXIT

etcd --data-dir "$dir/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 >"$dir/etcd.log" 2>&1 &
pids+=($!)
export AWS_ACCESS_KEY_ID=halyard AWS_SECRET_ACCESS_KEY=halyard-local-secret
mkdir -p "$dir/s3/models"
"$bin/halyard-s3-server" "$dir/s3" --listen 127.0.0.1:9000 >"$dir/s3.log" 2>&1 &
pids+=($!)
sleep 1
export HALYARD_ETCD=127.0.0.1:2379 HALYARD_S3_ENDPOINT=http://127.0.0.1:9000
# Every node stores models in S3 (the schedulers too: their SQL writes feature tables there).
export HALYARD_STORE=s3://models/halyard
# Mutual TLS between nodes: one CA, a certificate per node; clients trust the CA.
nodes="scheduler-0,scheduler-1$(for i in $(seq 0 $((n - 1))); do printf ',executor-%s' "$i"; done)"
"$bin/halyard" certs init --out "$dir/certs" --nodes "$nodes" >/dev/null
export HALYARD_TLS_CA="$dir/certs/ca.pem"
tls() { echo --tls-cert "$dir/certs/$1.pem" --tls-key "$dir/certs/$1.key"; }
# Every node shares the cluster's admin key (the first to start writes it, mode 0600); the
# CLI reads the same file.
export HALYARD_KEY_FILE="$dir/admin.key"
for i in 0 1; do
  "$bin/halyard" scheduler --id "scheduler-$i" --listen "127.0.0.1:$((7070 + i))" \
    $(tls "scheduler-$i") >"$dir/scheduler-$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 0 $((n - 1))); do
  "$bin/halyard" executor --id "executor-$i" --listen "127.0.0.1:$((7100 + i))" \
    $(tls "executor-$i") >"$dir/executor-$i.log" 2>&1 &
  pids+=($!)
done
sleep 2
"$bin/halyard" cluster --scheduler 127.0.0.1:7070
cat <<MSG

cluster up: schedulers on 127.0.0.1:7070 (and standby 7071), $n executors, models in s3://models/halyard
(S3 server on 127.0.0.1:9000 serving $dir/s3); admin key in $dir/admin.key; every port
serves TLS, nodes talk mutual TLS (certificates in $dir/certs). Try, in a shell with
HALYARD_KEY_FILE=$dir/admin.key HALYARD_TLS_CA=$dir/certs/ca.pem:
  $bin/halyard datagen && $bin/halyard submit examples/campaign-response.toml --follow
  kill the leader's process and watch 127.0.0.1:7071 take over: $bin/halyard cluster --scheduler 127.0.0.1:7071
Ctrl-C stops the cluster.
MSG
wait
