#!/usr/bin/env bash
# `halyard bench scheduling` on a standalone and on etcd (a scheduler and two executors of
# one slot), with the binary BIN, for benches/RESULTS.md "Event-driven scheduling": run it
# for a baseline binary and for the change, one after the other.
# Usage: benches/scheduling.sh BIN LABEL [JOBS (100)]   (etcd at $ETCD, default 127.0.0.1:2379)
set -u
bin=$1; label=$2; n=${3:-100}
etcd=${ETCD:-127.0.0.1:2379}
w=$(mktemp -d /tmp/bs.XXXX)
cd "$w"
echo "== $label: standalone"
"$bin" standalone --listen 127.0.0.1:7091 --data-dir "$w/sa" --data-roots $w,/tmp --jobs-per-key 1000 > "$w/sa.log" 2>&1 &
sa=$!
for _ in $(seq 1 100); do "$bin" cluster --scheduler 127.0.0.1:7091 --key "$(cat $w/sa/admin.key 2>/dev/null)" >/dev/null 2>&1 && break; sleep 0.2; done
"$bin" bench --scheduler 127.0.0.1:7091 --key "$(cat $w/sa/admin.key)" scheduling --jobs $n --batch $n
kill $sa; wait $sa 2>/dev/null
echo "== $label: etcd, 2 executors of one slot"
root=/bench-$label-$$
"$bin" scheduler --listen 127.0.0.1:7092 --etcd $etcd --etcd-root $root --key-file "$w/k.key" --store file://$w/bs --data-roots $w,/tmp --jobs-per-key 1000 > "$w/s.log" 2>&1 &
p1=$!
sleep 1
"$bin" executor --id e0 --listen 127.0.0.1:0 --etcd $etcd --etcd-root $root --key-file "$w/k.key" --store file://$w/bs --cpu-slots 1 --data-roots $w,/tmp > "$w/e0.log" 2>&1 &
p2=$!
"$bin" executor --id e1 --listen 127.0.0.1:0 --etcd $etcd --etcd-root $root --key-file "$w/k.key" --store file://$w/bs --cpu-slots 1 --data-roots $w,/tmp > "$w/e1.log" 2>&1 &
p3=$!
for _ in $(seq 1 100); do "$bin" cluster --scheduler 127.0.0.1:7092 --key "$(cat $w/k.key 2>/dev/null)" 2>/dev/null | grep -q e1 && break; sleep 0.2; done
"$bin" bench --scheduler 127.0.0.1:7092 --key "$(cat $w/k.key)" scheduling --jobs $n --batch $n
kill $p1 $p2 $p3; wait 2>/dev/null
rm -rf "$w"
