#!/bin/sh
# The container's health check: GET /healthz (no key needed) on this node's own port, the
# port of HALYARD_LISTEN (7070 when unset); over TLS when the node serves it
# (HALYARD_TLS_CERT), trusting the cluster's CA (HALYARD_TLS_CA). Exits non-zero when
# the node does not answer 200.
set -eu
port="${HALYARD_LISTEN:-127.0.0.1:7070}"
port="${port##*:}"
if [ -n "${HALYARD_TLS_CERT:-}" ]; then
  exec curl -fsS --max-time 3 --cacert "${HALYARD_TLS_CA:?HALYARD_TLS_CA names the cluster CA}" \
    "https://localhost:${port}/healthz"
fi
exec curl -fsS --max-time 3 "http://127.0.0.1:${port}/healthz"
