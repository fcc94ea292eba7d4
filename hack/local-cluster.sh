#!/usr/bin/env bash
# A local Kubernetes control plane (etcd + kube-apiserver built from Go modules) for humans.
#
#   hack/local-cluster.sh up     start it in the background, print `export KUBECONFIG=...`
#   hack/local-cluster.sh env    print the export lines for a running one (eval "$(... env)")
#   hack/local-cluster.sh down   stop it and remove its state; no process is left behind
#   hack/local-cluster.sh status say whether it runs
#
# ADC_CLUSTER_DIR sets the state directory (default ~/.local/state/adc-operator/cluster).
# There is no kubelet, scheduler or controller-manager: pods never run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${ADC_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/adc-operator/cluster}
pidfile="$dir/testenv.pid"

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

print_env() {
  local bin
  bin=$("$root/hack/envtest/build.sh" --dir)
  echo "export KUBECONFIG=$dir/kubeconfig"
  echo "export PATH=$bin:\$PATH"
}

case "${1:-}" in
  up)
    if running; then
      echo "local cluster already running (pid $(cat "$pidfile"))" >&2
      print_env
      exit 0
    fi
    "$root/hack/envtest/build.sh" >/dev/null
    (cd "$root" && cargo build --quiet -p adc-testenv)
    mkdir -p "$dir"
    rm -f "$dir/testenv.log"
    # setsid: the control plane outlives this shell; its children die with it (parent-death signal).
    setsid "$root/target/debug/adc-testenv" up --dir "$dir" >"$dir/testenv.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 600); do
      if grep -q '^ready ' "$dir/testenv.log" 2>/dev/null; then
        echo "local cluster up: $(grep -o 'https://[^ ]*' "$dir/kubeconfig" | head -1)" >&2
        print_env
        exit 0
      fi
      if ! running; then
        echo "local cluster failed to start:" >&2
        cat "$dir/testenv.log" >&2
        exit 1
      fi
      sleep 0.2
    done
    echo "local cluster not ready after 120s; see $dir/testenv.log" >&2
    exit 1
    ;;
  env)
    running || { echo "local cluster is not running: hack/local-cluster.sh up" >&2; exit 1; }
    print_env
    ;;
  status)
    if running; then echo "running (pid $(cat "$pidfile"), state in $dir)"; else echo "not running"; exit 1; fi
    ;;
  down)
    if running; then
      pid=$(cat "$pidfile")
      kill -TERM "$pid"
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
    echo "local cluster down" >&2
    ;;
  *)
    sed -n '2,10p' "$0" >&2
    exit 2
    ;;
esac
