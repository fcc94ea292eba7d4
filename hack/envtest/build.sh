#!/usr/bin/env bash
# Builds kube-apiserver, kubectl, etcd, helm and promtool from Go modules into a cache keyed by
# version, and skips every binary already present. Prints the cache directory on its last line.
#
#   hack/envtest/build.sh            build what is missing
#   hack/envtest/build.sh --dir      print the cache directory only
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
kube_version=$(grep -Eo 'k8s.io/kubernetes v[0-9.]+' "$here/kube/go.mod" | head -1 | sed 's/.* v//')
etcd_version=$(grep -Eo 'go.etcd.io/etcd/server/v3 v[0-9.]+' "$here/etcd/go.mod" | head -1 | sed 's/.* v//')
helm_version=$(grep -Eo 'helm.sh/helm/v3 v[0-9.]+' "$here/helm/go.mod" | head -1 | sed 's/.* v//')
# Prometheus publishes release vX.Y.Z as Go module v0.(100X+Y).Z: v3.16.0 is v0.316.0.
prometheus_module=$(grep -Eo 'github.com/prometheus/prometheus v0\.[0-9]+\.[0-9]+' "$here/promtool/go.mod" | head -1 | sed 's/.* v//')
prometheus_minor=${prometheus_module#0.}
prometheus_minor=${prometheus_minor%%.*}
promtool_version="${prometheus_minor:0:1}.$((10#${prometheus_minor:1})).${prometheus_module##*.}"
cache_root=${ADC_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/adc-operator/envtest}
dir="$cache_root/k8s-v$kube_version-etcd-v$etcd_version-helm-v$helm_version-promtool-v$promtool_version"

if [ "${1:-}" = "--dir" ]; then
  echo "$dir"
  exit 0
fi

mkdir -p "$dir"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

# Stamp the release into the Kubernetes binaries, as the upstream build does, so that
# `kubectl version` and helm's kubeVersion checks see v$kube_version and not v0.0.0.
kube_ldflags="-X k8s.io/component-base/version.gitVersion=v$kube_version"
kube_ldflags+=" -X k8s.io/component-base/version.gitMajor=${kube_version%%.*}"
kube_minor=${kube_version#*.}
kube_ldflags+=" -X k8s.io/component-base/version.gitMinor=${kube_minor%%.*}"
kube_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"

# build MODULE_DIR BINARY PACKAGE [EXTRA_LDFLAGS]
build() {
  local module=$1 binary=$2 package=$3 ldflags="-s -w ${4:-}"
  if [ -x "$dir/$binary" ]; then
    echo "envtest: $binary present in $dir" >&2
    return
  fi
  local start=$SECONDS
  echo "envtest: building $binary from $package ..." >&2
  (cd "$here/$module" && go build -trimpath -ldflags="$ldflags" -o "$dir/$binary.tmp" "$package")
  mv "$dir/$binary.tmp" "$dir/$binary"
  echo "envtest: built $binary in $((SECONDS - start))s" >&2
}

build etcd etcd go.etcd.io/etcd/server/v3
build kube kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build kube kubectl k8s.io/kubernetes/cmd/kubectl "$kube_ldflags"
build helm helm helm.sh/helm/v3/cmd/helm
# Stamped like the upstream build, so that `promtool --version` says v$promtool_version.
build promtool promtool github.com/prometheus/prometheus/cmd/promtool \
  "-X github.com/prometheus/common/version.Version=$promtool_version"

echo "$dir"
