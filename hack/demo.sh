#!/usr/bin/env bash
# `make demo`: build everything, start a local control plane, show what runs, and stop by itself.
# DEMO_KEEP=1 leaves the control plane running for exploration (stop it with `make cluster-down`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export ADC_CLUSTER_DIR=${ADC_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/adc-operator/demo}

step() { printf '\n==> %s\n' "$*"; }

emulator_pid=""
cleanup() {
  if [ "${DEMO_KEEP:-0}" != 1 ]; then
    [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null
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

step "starting gce-emulator (the local Compute Engine API) with examples/world.yaml"
mkdir -p "$ADC_CLUSTER_DIR"
setsid target/debug/gce-emulator --listen 127.0.0.1:0 --world examples/world.yaml --auth none \
  >"$ADC_CLUSTER_DIR/emulator.out" 2>"$ADC_CLUSTER_DIR/emulator.log" </dev/null &
emulator_pid=$!
for _ in $(seq 1 50); do
  grep -q '^listening on ' "$ADC_CLUSTER_DIR/emulator.out" 2>/dev/null && break
  sleep 0.1
done
emulator=http://$(sed -n 's/^listening on //p' "$ADC_CLUSTER_DIR/emulator.out")
echo "gce-emulator at $emulator"
compute=$emulator/compute/v1/projects/demo-project

step "the emulated cloud: service-engine instances and routes in demo-project"
for zone in us-central1-a us-central1-b us-central1-c; do
  curl -sf "$compute/zones/$zone/instances" |
    python3 -c 'import json, sys
for i in json.load(sys.stdin).get("items", []):
    print("  instance %-6s %-10s %s" % (i["name"], i["status"], i["networkInterfaces"][0]["networkIP"]))'
done
echo "  routes: $(curl -sf "$compute/global/routes" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("items", [])))')"

cat <<'MSG'

==> not there yet
The operator's custom resources and controllers are not built yet (see the open issues), so
nothing is applied to Kubernetes and nothing is created in the emulated GCP: this demo stops
after showing the control plane and the emulator running.
MSG

if [ "${DEMO_KEEP:-0}" = 1 ]; then
  step "left running (DEMO_KEEP=1)"
  hack/local-cluster.sh env
  echo "export GCE_EMULATOR=$emulator   # pid $emulator_pid"
  echo "stop it with: ADC_CLUSTER_DIR=$ADC_CLUSTER_DIR hack/local-cluster.sh down"
fi
