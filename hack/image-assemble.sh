#!/usr/bin/env bash
# `make image-demo`: the Dockerfile's final stage, assembled for real without a Docker daemon
# and without pulling a base image.
#
#   hack/image-assemble.sh [--binary PATH]   assemble the image (default command)
#   hack/image-assemble.sh exec [ARGS...]    run the image's entrypoint with ARGS (or its CMD)
#
# assemble: takes the binary that the Dockerfile's build stage makes (hack/image-check.sh builds
# it; --binary skips that), and builds the final stage FROM SCRATCH with buildah: the binary
# where the final stage's COPY puts it, the shared libraries it links and the dynamic loader at
# their exact paths (ldd), /etc/passwd and /etc/group with nonroot 65532 (as distroless), the
# host's CA certificates, /tmp; user, entrypoint, cmd and exposed ports read from the final
# stage. It commits the image as $ADC_IMAGE (default localhost/adc-operator:dev), pushes it to
# an OCI layout (target/image/oci) and unpacks that layout's layers into target/image/rootfs,
# then runs `version` inside the image.
#
# exec: runs the image with podman (network host; the file named by --kubeconfig or $KUBECONFIG
# mounted read-only at the same path) when ADC_IMAGE_RUNNER=podman, or in the unpacked rootfs
# with chroot --userspec (the kubeconfig copied in) when ADC_IMAGE_RUNNER=chroot. The default,
# auto, uses podman when `podman run` works on this machine, chroot otherwise. The environment
# the image sees: its own PATH and SSL_CERT_FILE plus GCE_METADATA_HOST, RUST_LOG,
# ADC_CLUSTER_ID, POD_NAME and POD_NAMESPACE when set.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dockerfile=$repo/Dockerfile
image=${ADC_IMAGE:-localhost/adc-operator:dev}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
case "$target_dir" in /*) ;; *) target_dir=$repo/$target_dir ;; esac
out=$target_dir/image
rootfs=$out/rootfs
passthrough_env=(GCE_METADATA_HOST RUST_LOG ADC_CLUSTER_ID POD_NAME POD_NAMESPACE)
# The image's environment, as distroless sets it.
image_env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)

say() { echo "image-assemble: $*" >&2; }
fail() {
  say "$*"
  exit 1
}

# The final stage's instructions, one a line ("KEYWORD ARGUMENTS"), continuation lines joined.
final_stage() {
  awk '
    /^[[:space:]]*#/ && joined == "" { next }
    /\\[[:space:]]*$/ { sub(/\\[[:space:]]*$/, " "); joined = joined $0; next }
    { line = joined $0; joined = "" }
    line ~ /^[[:space:]]*$/ { next }
    { sub(/^[[:space:]]+/, "", line); sub(/[[:space:]]+$/, "", line) }
    toupper(line) ~ /^FROM[[:space:]]/ { n = 0; delete stage }
    { stage[n++] = line }
    END { for (i = 0; i < n; i++) print stage[i] }
  ' "$dockerfile"
}

# instruction KEYWORD: the arguments of the final stage's last KEYWORD instruction.
instruction() {
  final_stage | awk -v k="$1" 'toupper($1) == k { sub(/^[^[:space:]]+[[:space:]]+/, ""); v = $0 } END { print v }'
}

# The user the final stage runs as, numeric (USER 65532:65532; a name is looked up in the
# passwd this script writes).
image_user() {
  local user
  user=$(instruction USER)
  [ -n "$user" ] || user=0:0
  case "$user" in
    nonroot) user=65532:65532 ;;
    root) user=0:0 ;;
  esac
  [[ "$user" =~ ^[0-9]+(:[0-9]+)?$ ]] || fail "USER $user: only numeric users (or nonroot) are supported"
  [[ "$user" == *:* ]] || user=$user:$user
  echo "$user"
}

# ---------------------------------------------------------------------------------------------
assemble() {
  local binary="" dest stage_copy entrypoint cmd port ports=() user lib loader work c
  while [ $# -gt 0 ]; do
    case "$1" in
      --binary) binary=${2:?--binary needs a path}; shift 2 ;;
      *) fail "unknown argument '$1'" ;;
    esac
  done
  command -v buildah >/dev/null || fail "buildah is not installed: run \`make image-tools\`"

  if [ -z "$binary" ]; then
    say "building the binary the way the Dockerfile's build stage does (hack/image-check.sh)"
    binary=$("$repo/hack/image-check.sh" --dockerfile "$dockerfile" | tail -1)
  fi
  [ -x "$binary" ] || fail "no binary at '$binary'"

  stage_copy=$(final_stage | awk 'toupper($1) == "COPY" && $2 ~ /^--from=/ { print $(NF) }' | tail -1)
  dest=${stage_copy:-/adc-operator}
  entrypoint=$(instruction ENTRYPOINT)
  cmd=$(instruction CMD)
  for value in "$entrypoint" "$cmd"; do
    [ -z "$value" ] || [ "${value:0:1}" = "[" ] || fail "only the JSON form of ENTRYPOINT and CMD is supported: $value"
  done
  for port in $(final_stage | awk 'toupper($1) == "EXPOSE" { $1 = ""; print }'); do
    [[ "$port" == */* ]] || port=$port/tcp
    ports+=("$port")
  done
  user=$(image_user)

  work=$(mktemp -d "${TMPDIR:-/tmp}/image-assemble.XXXXXX")
  # shellcheck disable=SC2064 # expand now: $work is local
  trap "rm -rf '$work'" EXIT
  local root=$work/rootfs
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  install -m 0755 "$binary" "$root$dest"

  # The shared libraries the binary links, and the dynamic loader, at their exact paths.
  # (Without LD_LIBRARY_PATH, which `cargo test` sets: the libraries the image needs are the
  # system's, as the loader finds them in a clean environment.)
  env -u LD_LIBRARY_PATH ldd "$binary" >"$work/ldd" || fail "ldd $binary failed (a static binary needs no libraries: use it as is)"
  while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' "$work/ldd")
  loader=$(awk '$1 ~ /^\// { print $1 }' "$work/ldd" | head -1)
  [ -n "$loader" ] || fail "ldd names no dynamic loader for $binary"

  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" ||
    fail "no CA certificates at /etc/ssl/certs/ca-certificates.crt (apt-get install -y ca-certificates)"

  say "assembling $image from scratch: $dest, $(awk '$2 == "=>" && $3 ~ /^\// { print $1 }' "$work/ldd" | paste -sd' '), $loader"
  c=$(buildah from --quiet scratch)
  # shellcheck disable=SC2064
  trap "buildah rm '$c' >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  # One layer, from a tar archive: buildah keeps the archive's owners and modes.
  tar --numeric-owner --sort=name -C "$root" -cf "$work/layer.tar" .
  buildah add --quiet "$c" "$work/layer.tar" / >/dev/null
  local config=(--user "$user" --workingdir /home/nonroot)
  [ -z "$entrypoint" ] || config+=(--entrypoint "$entrypoint")
  [ -z "$cmd" ] || config+=(--cmd "$cmd")
  for port in "${ports[@]}"; do config+=(--port "$port"); done
  for value in "${image_env[@]}"; do config+=(--env "$value"); done
  buildah config "${config[@]}" "$c"
  local previous
  previous=$(buildah images --quiet --no-trunc "$image" 2>/dev/null || true)
  buildah commit --quiet --rm "$c" "$image" >/dev/null
  # The image this one replaces, now untagged (kept when a container still uses it).
  if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet --no-trunc "$image")" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
  fi
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT

  # What the image holds, as a registry would get it: an OCI layout, unpacked layer by layer.
  rm -rf "$out/oci" "$rootfs"
  mkdir -p "$out" "$rootfs"
  buildah push --quiet "$image" "oci:$out/oci" >/dev/null
  while read -r layer; do
    tar -xf "$out/oci/blobs/${layer/://}" -C "$rootfs"
  done < <(python3 - "$out/oci" <<'EOF'
import json, sys
layout = sys.argv[1]
index = json.load(open(f"{layout}/index.json"))
digest = index["manifests"][0]["digest"]
manifest = json.load(open(f"{layout}/blobs/{digest.replace(':', '/')}"))
for layer in manifest["layers"]:
    print(layer["digest"])
EOF
  )
  say "image $image; OCI layout $out/oci; its root file system unpacked in $rootfs"
  say "inside the image: $(exec_image version)"
}

# ---------------------------------------------------------------------------------------------
# podman as it works here: runc (crun refuses a hybrid cgroup v1/v2 host) and limits no higher
# than this process's own (raising them needs CAP_SYS_RESOURCE).
podman_run_args() {
  local nofile nproc runtime=()
  nofile=$(ulimit -n)
  nproc=$(ulimit -u)
  [ "$nofile" != unlimited ] || nofile=1048576
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ]; then nproc=4096; fi
  if command -v runc >/dev/null; then runtime=(--runtime runc); fi
  printf '%s\n' "${runtime[@]}" run --rm --network host \
    --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc"
}

podman_works() {
  command -v podman >/dev/null || return 1
  local args=()
  mapfile -t args < <(podman_run_args)
  podman "${args[@]}" "$image" version >/dev/null 2>&1
}

# The file the operator reads as its kubeconfig: --kubeconfig PATH, --kubeconfig=PATH, or
# $KUBECONFIG.
kubeconfig_of() {
  local previous="" arg
  for arg in "$@"; do
    [ "$previous" = --kubeconfig ] && { echo "$arg"; return; }
    case "$arg" in --kubeconfig=*) echo "${arg#*=}"; return ;; esac
    previous=$arg
  done
  echo "${KUBECONFIG:-}"
}

exec_image() {
  local runner=${ADC_IMAGE_RUNNER:-auto} kubeconfig name env=() args=()
  kubeconfig=$(kubeconfig_of "$@")
  if [ "$runner" = auto ]; then
    if podman_works; then runner=podman; else runner=chroot; fi
  fi
  for name in "${passthrough_env[@]}"; do
    [ -z "${!name:-}" ] || env+=("$name=${!name}")
  done
  case "$runner" in
    podman)
      command -v podman >/dev/null || fail "podman is not installed: run \`make image-tools\`"
      mapfile -t args < <(podman_run_args)
      for name in "${env[@]}"; do args+=(--env "$name"); done
      if [ -n "$kubeconfig" ]; then
        args+=(--volume "$kubeconfig:$kubeconfig:ro")
        [ -z "${KUBECONFIG:-}" ] || args+=(--env "KUBECONFIG=$kubeconfig")
      fi
      exec podman "${args[@]}" "$image" "$@"
      ;;
    chroot)
      [ -x "$rootfs/adc-operator" ] || fail "no unpacked image at $rootfs: run hack/image-assemble.sh"
      [ "$(id -u)" = 0 ] || fail "chroot needs root"
      if [ -n "$kubeconfig" ]; then
        mkdir -p "$rootfs$(dirname "$kubeconfig")"
        install -m 0644 "$kubeconfig" "$rootfs$kubeconfig"
        [ -z "${KUBECONFIG:-}" ] || env+=("KUBECONFIG=$kubeconfig")
      fi
      local entrypoint=() cmd=()
      mapfile -t entrypoint < <(json_array "$(instruction ENTRYPOINT)")
      [ $# -gt 0 ] || mapfile -t cmd < <(json_array "$(instruction CMD)")
      exec env -i "${image_env[@]}" HOME=/home/nonroot "${env[@]}" \
        chroot --userspec="$(image_user)" "$rootfs" "${entrypoint[@]}" "${cmd[@]}" "$@"
      ;;
    *) fail "ADC_IMAGE_RUNNER=$runner: expected podman, chroot or auto" ;;
  esac
}

# json_array '["a", "b"]': prints a, b one a line.
json_array() {
  [ -n "$1" ] || return 0
  python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$1"
}

case "${1:-}" in
  exec) shift; exec_image "$@" ;;
  -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2 ;;
  *) assemble "$@" ;;
esac
