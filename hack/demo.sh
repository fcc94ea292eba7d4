#!/usr/bin/env bash
# `make demo`: build everything, start a local control plane, show what runs, and stop by itself.
# DEMO_KEEP=1 leaves the control plane running for exploration (stop it with `make cluster-down`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export ADC_CLUSTER_DIR=${ADC_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/adc-operator/demo}

step() { printf '\n==> %s\n' "$*"; }

cleanup() {
  if [ "${DEMO_KEEP:-0}" != 1 ]; then
    hack/local-cluster.sh down >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "building the workspace"
cargo build --quiet --workspace

step "starting a local control plane (etcd + kube-apiserver built from Go modules)"
eval "$(hack/local-cluster.sh up)"
kubectl get --raw /readyz && echo
kubectl version 2>/dev/null | grep Server

step "what the control plane serves"
kubectl get namespaces
kubectl api-resources --api-group=apiextensions.k8s.io

cat <<'MSG'

==> not there yet
The operator's custom resources, controllers and the Compute Engine emulator are not built
yet (see the open issues). This demo stops after the control plane is up: nothing about
GCP is shown because nothing about GCP exists yet.
MSG

if [ "${DEMO_KEEP:-0}" = 1 ]; then
  step "left running (DEMO_KEEP=1)"
  hack/local-cluster.sh env
  echo "stop it with: ADC_CLUSTER_DIR=$ADC_CLUSTER_DIR hack/local-cluster.sh down"
fi
