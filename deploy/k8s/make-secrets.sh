#!/usr/bin/env bash
# Creates the Secret `halyard-secrets` the manifests mount: a CA and a certificate per
# node (`halyard certs init`), the cluster's admin key, and the S3 server's credentials.
# The CA's key stays in the local folder (keep it offline); the admin key is printed
# where it lies, for the CLI. Usage:
#   deploy/k8s/make-secrets.sh [EXECUTORS (3)] [GPU_EXECUTORS (0)] [FOLDER (halyard-k8s-secrets)]
set -euo pipefail
executors=${1:-3}
gpu_executors=${2:-0}
dir=${3:-halyard-k8s-secrets}
ns=halyard
command -v halyard >/dev/null || { echo "halyard not on PATH (cargo install --path . or the image's /usr/local/bin/halyard)" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "kubectl not on PATH" >&2; exit 1; }
[ -e "$dir" ] && { echo "$dir exists: remove it or name another folder" >&2; exit 1; }

nodes="scheduler.$ns.svc"
for i in $(seq 0 $((executors - 1))); do nodes="$nodes,executor-$i.executor.$ns.svc"; done
for i in $(seq 0 $((gpu_executors - 1))); do nodes="$nodes,executor-gpu-$i.executor-gpu.$ns.svc"; done
halyard certs init --out "$dir" --nodes "$nodes" >/dev/null
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
(umask 077
 printf 'hk_%s_%s\n' "$(hex 6)" "$(hex 32)" >"$dir/admin.key"
 printf 'halyard\n' >"$dir/s3-access-key-id"
 hex 24 >"$dir/s3-secret-access-key")

files=()
for f in "$dir"/*; do
  [ "$(basename "$f")" = ca.key ] || files+=("--from-file=$f")
done
kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"
kubectl -n "$ns" create secret generic halyard-secrets "${files[@]}"
echo "secret halyard-secrets created in namespace $ns from $dir (ca.key left out: keep it offline)"
echo "CLI: kubectl -n $ns port-forward svc/scheduler 7070 &"
echo "     HALYARD_KEY_FILE=$dir/admin.key HALYARD_TLS_CA=$dir/ca.pem halyard cluster --scheduler localhost:7070"
