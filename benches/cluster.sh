# Shell functions the cluster benches share (sourced, not run): a scheduler and executor
# processes on loopback over a running etcd, each executor pinned to a core with taskset.
# The sourcing script sets B (the halyard binary), ETCD, work (its scratch folder) and
# ROOTS (the data roots), and may set SCHED_ARGS and EXEC_ARGS (extra flags, word-split).
cores=$(nproc)
pids=()
stop_cluster() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_cluster; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A scheduler and N executors under a fresh key root, executor i pinned to core i mod the
# cores; sets $api.
cluster() {
  local n=$1 root=/bench-$RANDOM-$$
  api=127.0.0.1:$(free_port)
  # shellcheck disable=SC2086
  "$B" scheduler --listen "$api" --etcd "$ETCD" --etcd-root "$root" --data-roots "$ROOTS" \
    ${SCHED_ARGS:-} >"$work/sched.log" 2>&1 &
  pids+=($!)
  for i in $(seq 0 $((n - 1))); do
    # shellcheck disable=SC2086
    taskset -c $((i % cores)) "$B" executor --listen "127.0.0.1:$(free_port)" --id "w$i" --etcd "$ETCD" \
      --etcd-root "$root" --store "file://$work/store" --data-roots "$ROOTS" --cpu-slots 1 \
      ${EXEC_ARGS:-} >"$work/w$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 150); do
    [ "$("$B" cluster --scheduler "$api" --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["executors"]))' 2>/dev/null || echo 0)" = "$n" ] && return
    sleep 0.2
  done
  echo "the cluster did not start"; cat "$work/sched.log"; exit 1
}

# Submit the spec at $1 and wait for the job to end; prints its id.
submit_and_wait() {
  local id
  id=$("$B" submit "$1" --scheduler "$api" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  until "$B" job "$id" --scheduler "$api" --json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["state"] in ("succeeded","failed") else 1)'; do sleep 0.5; done
  echo "$id"
}
