#!/usr/bin/env bash
# The demo on a fresh machine: prerequisites, build, a standalone cluster on a free port,
# generated data, one response model trained, its metrics printed; the cluster is stopped
# at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# How long each phase took, printed at the end (time to a first result).
timings=()
phase_start=$SECONDS
phase() {
  timings+=("$(printf '  %-10s %5d s' "$1" $((SECONDS - phase_start)))")
  phase_start=$SECONDS
}

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v mold >/dev/null || need+=(mold)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
phase install

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/halyard-target}"
. scripts/rustflags.sh
cargo build --bin halyard
halyard="$CARGO_TARGET_DIR/debug/halyard"
phase build

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
state=$(mktemp -d)
"$halyard" standalone --listen "127.0.0.1:$port" --data-dir "$state" >"$state/standalone.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
export HALYARD_SCHEDULER="127.0.0.1:$port"
# The standalone cluster wrote its admin key there; the CLI sends it.
export HALYARD_KEY_FILE="$state/admin.key"
for _ in $(seq 1 100); do "$halyard" cluster >/dev/null 2>&1 && break; sleep 0.1; done
phase start

"$halyard" datagen
phase data
"$halyard" submit examples/campaign-response.toml --follow
phase train
echo "models are in $state/store (standalone log: $state/standalone.log)"
echo "time to the first model, by phase:"
printf '%s\n' "${timings[@]}"
echo "  total      $(printf '%5d' "$SECONDS") s"
