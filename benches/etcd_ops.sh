#!/usr/bin/env bash
# etcd operations per trivial job (issue 19 item 3, benches/RESULTS.md "Fewer etcd round
# trips a job"): a scheduler and two executors of one slot on etcd at $ETCD (its metrics at
# $ETCD_METRICS, etcd's --listen-metrics-urls), `halyard bench scheduling --jobs N --batch N`
# (2N jobs: N one after the other, N at once), and etcd's own counters before and after:
# gRPC calls by method, WAL fsyncs. Printed per job (divided by 2N).
# Usage: ETCD=127.0.0.1:23791 ETCD_METRICS=http://127.0.0.1:23792 benches/etcd_ops.sh BIN [N (100)]
set -u
bin=$1; n=${2:-100}
etcd=${ETCD:-127.0.0.1:2379}; metrics=${ETCD_METRICS:-http://127.0.0.1:2381}
snap() { curl -s "$metrics/metrics" | awk '/^grpc_server_handled_total/ && /grpc_code="OK"/ && $2>0 {match($0,/grpc_method="[A-Za-z]+"/); print substr($0,RSTART+13,RLENGTH-14), $2} /^etcd_disk_wal_fsync_duration_seconds_count/ {print "wal_fsyncs", $2}' | sort; }
w=$(mktemp -d /tmp/eo.XXXX); cd "$w"
root=/etcd-ops-$$
"$bin" scheduler --listen 127.0.0.1:7093 --etcd $etcd --etcd-root $root --key-file "$w/k.key" --store file://$w/bs --data-roots $w,/tmp --jobs-per-key 1000 > "$w/s.log" 2>&1 &
p1=$!
sleep 1
for e in e0 e1; do
  "$bin" executor --id $e --listen 127.0.0.1:0 --etcd $etcd --etcd-root $root --key-file "$w/k.key" --store file://$w/bs --cpu-slots 1 --data-roots $w,/tmp > "$w/$e.log" 2>&1 &
done
for _ in $(seq 1 100); do "$bin" cluster --scheduler 127.0.0.1:7093 --key "$(cat $w/k.key 2>/dev/null)" 2>/dev/null | grep -q e1 && break; sleep 0.2; done
sleep 2
snap > before
"$bin" bench --scheduler 127.0.0.1:7093 --key "$(cat $w/k.key)" scheduling --jobs $n --batch $n
snap > after
join -a2 before after | awk -v jobs=$((2 * n)) '{d = (NF == 2) ? $2 : $3 - $2; printf "%-12s %8d  per job %.1f\n", $1, d, d / jobs}'
kill $p1 $(jobs -p) 2>/dev/null; wait 2>/dev/null
rm -rf "$w"
