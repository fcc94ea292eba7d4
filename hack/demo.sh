#!/usr/bin/env bash
# `make demo`: the whole loop on a local control plane and the emulated Compute API.
# Builds everything, starts etcd + kube-apiserver and gce-emulator, installs the CRDs, runs the
# operator, applies examples/, waits until every object is Ready, prints what exists in
# Kubernetes and in the (emulated) GCP, and stops everything again.
# DEMO_KEEP=1 leaves it all running for exploration (it prints how to reach and stop it).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export ADC_CLUSTER_DIR=${ADC_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/adc-operator/demo}
start=$SECONDS

step() { printf '\n==> %s\n' "$*"; }

pids=()
cleanup() {
  if [ "${DEMO_KEEP:-0}" != 1 ]; then
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    hack/local-cluster.sh down >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "building the workspace"
cargo build --quiet --workspace

step "starting a local control plane (etcd + kube-apiserver built from Go modules)"
eval "$(hack/local-cluster.sh up)"
kubectl version 2>/dev/null | grep Server

step "starting gce-emulator (the local Compute Engine API) with examples/world.yaml, at GCP's pace"
mkdir -p "$ADC_CLUSTER_DIR"
# The gcp profile: Compute's latencies, 5-15 s operations and per-minute rate quotas, so that
# the progress below is worth watching.
setsid target/debug/gce-emulator --listen 127.0.0.1:0 --world examples/world.yaml --auth token --profile gcp \
  >"$ADC_CLUSTER_DIR/emulator.out" 2>"$ADC_CLUSTER_DIR/emulator.log" </dev/null &
pids+=($!)
for _ in $(seq 1 50); do
  grep -q '^listening on ' "$ADC_CLUSTER_DIR/emulator.out" 2>/dev/null && break
  sleep 0.1
done
emulator_addr=$(sed -n 's/^listening on //p' "$ADC_CLUSTER_DIR/emulator.out")
emulator=http://$emulator_addr
echo "gce-emulator at $emulator (tokens from its metadata-server path, as GKE Workload Identity gives them)"

step "installing the CRDs"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/gcpclouds.adc.dev crd/virtualservices.adc.dev crd/vpcroutes.adc.dev >/dev/null

# ADC_OPERATOR_CMD replaces the operator binary, e.g. "hack/image-assemble.sh exec" runs it from
# inside the container image (`make image-demo`); it is split on spaces.
read -r -a operator_cmd <<<"${ADC_OPERATOR_CMD:-target/debug/adc-operator}"
step "running adc-operator: ${operator_cmd[*]} (log: $ADC_CLUSTER_DIR/operator.log)"
GCE_METADATA_HOST=$emulator_addr setsid "${operator_cmd[@]}" run --kubeconfig "$KUBECONFIG" \
  --metrics-addr 127.0.0.1:0 --cluster-id demo >"$ADC_CLUSTER_DIR/operator.log" 2>&1 </dev/null &
pids+=($!)

step "applying examples/: a tenant namespace, a GcpCloud with a VIP pool, six VirtualServices (two from the pool, one carried by an internal load balancer), two VpcRoutes"
kubectl apply --server-side -f examples/tenant.yaml
sed "s|endpoint: http://127.0.0.1:8085 .*|endpoint: $emulator|" examples/gcpcloud.yaml | kubectl apply --server-side -f -
kubectl apply --server-side -f examples/virtualservices.yaml -f examples/vpcroutes.yaml

step "waiting until everything is Ready, watching the fleet's progress: kubectl get gcpcloud -w"
kubectl get gcpcloud -w &
watch_pid=$!
pids+=("$watch_pid")
kubectl wait --for=condition=Ready --timeout=120s gcpcloud/demo >/dev/null
kubectl wait --for=condition=Ready --timeout=120s -n team-a virtualservice --all >/dev/null
kubectl wait --for=condition=Ready --timeout=120s -n team-a vpcroute --all >/dev/null
# The progress is written every few seconds: wait until it shows every object Ready.
for _ in $(seq 1 40); do
  [ "$(kubectl get gcpcloud demo -o jsonpath='{.status.progress.summary}')" = "[##########] 100% 8/8" ] && break
  sleep 0.5
done
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true

step "in Kubernetes: kubectl get adc -A"
kubectl get adc -A

step "in the (emulated) GCP: demo-project's routes and firewall rules"
compute=$emulator/compute/v1/projects/demo-project
token=$(curl -sf -H 'Metadata-Flavor: Google' "$emulator/computeMetadata/v1/instance/service-accounts/default/token" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -sf -H "Authorization: Bearer $token" "$compute/global/routes" | python3 -c '
import json, sys
print("%-26s %-18s %-8s %s" % ("ROUTE", "DEST", "PRIORITY", "NEXT HOP"))
for r in json.load(sys.stdin).get("items", []):
    hop = (r.get("nextHopInstance") or r.get("nextHopIp") or r.get("nextHopGateway") or "").rsplit("/", 1)[-1]
    print("%-26s %-18s %-8s %s" % (r["name"], r["destRange"], r["priority"], hop))'
echo
curl -sf -H "Authorization: Bearer $token" "$compute/global/firewalls" | python3 -c '
import json, sys
print("%-26s %-18s %s" % ("FIREWALL", "TO", "ALLOWS"))
for f in json.load(sys.stdin).get("items", []):
    allowed = " ".join(a["IPProtocol"] + ":" + ",".join(a.get("ports", [])) for a in f.get("allowed", []))
    print("%-26s %-18s %s" % (f["name"], ",".join(f.get("destinationRanges", [])), allowed))'

step "the internal load balancer of team-a/intranet (vipMode ILB): its forwarding rule, backend service and health"
curl -sf -H "Authorization: Bearer $token" "$compute/regions/us-central1/forwardingRules" | python3 -c '
import json, sys
print("%-26s %-14s %-6s %s" % ("FORWARDING RULE", "VIP", "PORTS", "BACKEND SERVICE"))
for f in json.load(sys.stdin).get("items", []):
    if f.get("loadBalancingScheme") == "INTERNAL":
        print("%-26s %-14s %-6s %s" % (f["name"], f["IPAddress"], ",".join(f.get("ports", [])) or "all", f["backendService"].rsplit("/", 1)[-1]))'
kubectl -n team-a get virtualservice intranet -o jsonpath='{range .status.engineHealth[*]}{.name}{"\t"}{.state}{"\n"}{end}'

step "the fleet as an SRE sees it: kubectl adc status (the operator binary linked as kubectl-adc)"
mkdir -p "$ADC_CLUSTER_DIR/bin"
ln -sf "$root/target/debug/adc-operator" "$ADC_CLUSTER_DIR/bin/kubectl-adc"
PATH=$ADC_CLUSTER_DIR/bin:$PATH kubectl adc status

step "done in $((SECONDS - start))s"
if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo "left running (DEMO_KEEP=1):"
  hack/local-cluster.sh env
  echo "export GCE_EMULATOR=$emulator"
  echo "stop: kill ${pids[*]}; ADC_CLUSTER_DIR=$ADC_CLUSTER_DIR hack/local-cluster.sh down"
  echo "try: kubectl -n team-a get virtualservice web -o yaml; curl -X POST \$GCE_EMULATOR/compute/v1/projects/demo-project/zones/us-central1-a/instances/se-1/stop -H \"Authorization: Bearer \$(...)\""
fi
