#!/usr/bin/env bash
# Lone records on plain arrays against candle (issue 19 item 5): two standalones, each
# training examples/bank-marketing.toml (the 10-member MLP) and deploying version 1, one
# started with `--plain-rows 0` (candle for every request: the baseline), one with the
# default; `halyard bench serving --baseline` loads them phase by phase in one invocation,
# with 1 connection (lone requests, never batched) and with 32, unpinned, then with both
# standalones' threads on core 1 and the load generator on core 0.
# Needs a release build and ../shared/data/bank-full.csv.
# Usage: benches/serving_plain.sh [SECONDS_PER_PHASE]
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
H=${HALYARD:-${CARGO_TARGET_DIR:-$here/target}/release/halyard}
DATA=${DATA:-$here/../shared/data}
SECONDS_PER=${1:-8}
[ -f "$DATA/bank-full.csv" ] || { echo "no $DATA/bank-full.csv: set DATA to the reference data folder" >&2; exit 1; }
DATA=$(cd "$DATA" && pwd)
work=$(mktemp -d); cd "$work"
sed "s#path = \"../../shared/data/bank-full.csv\"#path = \"$DATA/bank-full.csv\"#" \
  "$here/examples/bank-marketing.toml" > spec.toml
printf 'name = "bank-marketing"\n[data]\nsource = "%s"\ndelimiter = ";"\nlabel = "y"\n' \
  "$DATA/bank-full.csv" > records.toml
start() { # folder port extra-flags...
  local n=$1 p=$2; shift 2
  mkdir -p "$n"
  (cd "$n" && exec "$H" standalone --executors 1 --listen "127.0.0.1:$p" --data-roots "$DATA,$work" "$@" > log 2>&1) &
  echo $! > "$n/pid"
}
start candle 27170 --plain-rows 0
start plain 27270
trap 'kill $(cat "$work"/candle/pid "$work"/plain/pid) 2>/dev/null; rm -rf "$work"' EXIT
sleep 8
key() { cat "$work/$1/halyard-data/admin.key"; }
for n in candle:27170 plain:27270; do
  d=${n%%:*}; p=${n##*:}
  HALYARD_KEY=$(key "$d") "$H" submit spec.toml --follow --scheduler "127.0.0.1:$p" > "$d/train.log" 2>&1 \
    || { echo "training on $d failed:"; tail "$d/train.log"; exit 1; }
  HALYARD_KEY=$(key "$d") "$H" deploy bank-marketing --version 1 --scheduler "127.0.0.1:$p" >> "$d/train.log" 2>&1
done
executor() { HALYARD_KEY=$(key "$1") "$H" cluster --scheduler "127.0.0.1:$2" --json \
  | python3 -c "import json,sys; print(json.load(sys.stdin)['executors'][0]['address'])"; }
candle=$(executor candle 27170); plain=$(executor plain 27270)
sleep 5
bench() { # label connections generator-prefix
  echo "== $1, $2 connection(s); target: plain arrays, baseline: candle"
  HALYARD_KEY=$(key plain) $3 "$H" bench --scheduler 127.0.0.1:27270 serving --spec records.toml \
    --target "$plain" --baseline "$candle" --baseline-key "$(key candle)" \
    --connections "$2" --seconds "$SECONDS_PER" --batch 0 2>&1 | sort -u
}
pin() { for d in candle plain; do for t in /proc/$(cat "$d/pid")/task/*; do taskset -pc "$1" "${t##*/}" > /dev/null; done; done; }
bench unpinned 1 ""
bench unpinned 32 ""
pin 1
bench "standalones on core 1, generator on core 0" 1 "taskset -c 0"
bench "standalones on core 1, generator on core 0" 32 "taskset -c 0"
