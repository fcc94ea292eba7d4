#!/usr/bin/env bash
# `make image-check`: proves that the Dockerfile's build stage builds, without a container engine.
#
#   hack/image-check.sh [--dockerfile PATH] [--metadata-only]
#
# Reads the stage named `build` of the Dockerfile (its WORKDIR, COPY and RUN lines), stages
# exactly what those COPYs copy from the build context (this repository, minus what
# .dockerignore excludes) into a directory of its own, and then
#   (a) runs `cargo metadata --locked --no-deps` and `cargo fetch --locked --offline` there: a
#       workspace member, path dependency or declared target file the stage forgets to copy is
#       named in the error;
#   (b) unless --metadata-only, runs the stage's RUN commands in a staging directory with a
#       stable path (~/.cache/adc-operator/image-check/), with CARGO_TARGET_DIR set to this
#       repository's target directory (${CARGO_TARGET_DIR:-REPO/target}) so that what was
#       built before is reused, and checks that the file the final stage copies out of the
#       build stage (WORKDIR/target/... -> $CARGO_TARGET_DIR/...) exists.
# Exits non-zero on any failure. On success it prints the binary's path on the last line.
# shellcheck disable=SC2016 # the backquotes in sed expressions are cargo's, not expansions
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dockerfile=$repo/Dockerfile
metadata_only=0
build_stage=build

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dockerfile) dockerfile=${2:?--dockerfile needs a path}; shift 2 ;;
    --dockerfile=*) dockerfile=${1#*=}; shift ;;
    --metadata-only) metadata_only=1; shift ;;
    -h | --help) usage ;;
    *) echo "image-check: unknown argument '$1'" >&2; usage ;;
  esac
done

fail() {
  echo "image-check: $*" >&2
  exit 1
}

[ -f "$dockerfile" ] || fail "no Dockerfile at $dockerfile"
context=$repo
target_dir=${CARGO_TARGET_DIR:-$repo/target}
case "$target_dir" in /*) ;; *) target_dir=$repo/$target_dir ;; esac

# ---------------------------------------------------------------------------------------------
# The Dockerfile, as instructions: continuation lines joined, comments and blank lines dropped.
# Each instruction is stored as "STAGE<TAB>KEYWORD<TAB>ARGUMENTS"; STAGE is the stage's name
# (or its index when it has none).
instructions=()
stage_names=()
read_dockerfile() {
  local line joined="" stage="" index=-1 keyword args
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    if [ -z "$joined" ]; then
      case "$line" in '' | \#*) continue ;; esac
    fi
    if [[ "$line" =~ ^(.*)\\[[:space:]]*$ ]]; then
      joined+="${BASH_REMATCH[1]} "
      continue
    fi
    joined+=$line
    joined=$(printf '%s' "$joined" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
    keyword=$(printf '%s' "${joined%%[[:space:]]*}" | tr '[:lower:]' '[:upper:]')
    args=""
    [[ "$joined" =~ ^[^[:space:]]+[[:space:]]+(.*)$ ]] && args=${BASH_REMATCH[1]}
    joined=""
    if [ "$keyword" = FROM ]; then
      index=$((index + 1))
      stage=$index
      if [[ "$args" =~ [[:space:]][Aa][Ss][[:space:]]+([^[:space:]]+)$ ]]; then
        stage=${BASH_REMATCH[1]}
      fi
      stage_names+=("$stage")
    fi
    [ "$index" -ge 0 ] || continue
    instructions+=("$stage"$'\t'"$keyword"$'\t'"$args")
  done <"$dockerfile"
}
read_dockerfile

has_stage() {
  local s
  for s in "${stage_names[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}
has_stage "$build_stage" || fail "$dockerfile has no stage named '$build_stage' (FROM ... AS $build_stage)"
final_stage=${stage_names[${#stage_names[@]} - 1]}

# ---------------------------------------------------------------------------------------------
# .dockerignore: each pattern becomes an anchored regular expression over paths relative to the
# context (Docker's rules: `*` and `?` stay within one path element, `**` spans any number of
# them, a match on a directory excludes everything beneath it, `!PATTERN` re-includes, the last
# matching pattern wins).
ignore_regexes=()
ignore_negated=()
has_exceptions=0
glob_to_regex() {
  local glob=$1 out="" i c
  for ((i = 0; i < ${#glob}; i++)); do
    c=${glob:i:1}
    if [ "${glob:i:3}" = "**/" ]; then
      out+="(.*/)?"
      i=$((i + 2))
    elif [ "${glob:i:2}" = "**" ]; then
      out+=".*"
      i=$((i + 1))
    else
      case "$c" in
        '*') out+="[^/]*" ;;
        '?') out+="[^/]" ;;
        '.' | '+' | '(' | ')' | '{' | '}' | '^' | '$' | '|') out+="\\$c" ;;
        \\) out+="\\${glob:i+1:1}"; i=$((i + 1)) ;;
        *) out+=$c ;;
      esac
    fi
  done
  printf '^%s(/.*)?$' "$out"
}
read_dockerignore() {
  local file=$context/.dockerignore line negated
  [ -f "$file" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    line=$(printf '%s' "${line%$'\r'}" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
    case "$line" in '' | \#*) continue ;; esac
    negated=0
    if [ "${line:0:1}" = '!' ]; then
      negated=1
      has_exceptions=1
      line=${line:1}
    fi
    line=${line#/}
    line=${line#./}
    while [ "${line%/}" != "$line" ]; do line=${line%/}; done
    [ -n "$line" ] || continue
    ignore_regexes+=("$(glob_to_regex "$line")")
    ignore_negated+=("$negated")
  done <"$file"
}
read_dockerignore

# ignored REL: true when .dockerignore keeps REL (relative to the context) out of the context.
ignored() {
  local rel=$1 i result=1
  for i in "${!ignore_regexes[@]}"; do
    if [[ "$rel" =~ ${ignore_regexes[i]} ]]; then
      if [ "${ignore_negated[i]}" = 1 ]; then result=1; else result=0; fi
    fi
  done
  return $result
}

# copy_tree SRC_ABS REL DEST: copies the context path REL (a file or a directory's contents) to
# DEST, leaving out what .dockerignore excludes. Timestamps are kept, so that cargo sees
# unchanged sources as unchanged and a warm check rebuilds nothing.
copy_tree() {
  local src=$1 rel=$2 dest=$3 entry name
  if [ -d "$src" ] && [ ! -L "$src" ]; then
    mkdir -p "$dest"
    shopt -s dotglob nullglob
    for entry in "$src"/*; do
      name=${entry##*/}
      local child_rel=${rel:+$rel/}$name
      [ "$rel" = . ] && child_rel=$name
      if ignored "$child_rel"; then
        # With `!` exceptions a directory may hold re-included files: look inside it.
        if [ "$has_exceptions" = 1 ] && [ -d "$entry" ] && [ ! -L "$entry" ]; then
          copy_tree "$entry" "$child_rel" "$dest/$name"
          rmdir "$dest/$name" 2>/dev/null || true
        fi
        continue
      fi
      copy_tree "$entry" "$child_rel" "$dest/$name"
    done
    shopt -u dotglob nullglob
  else
    mkdir -p "$(dirname "$dest")"
    cp -P -p "$src" "$dest"
  fi
}

# ---------------------------------------------------------------------------------------------
# The build stage's file system: WORKDIR and COPY, staged under STAGE (the stage's "/").
workdir=/
copied=()
stage_build_context() {
  local root=$1 entry stage keyword args
  workdir=/
  copied=()
  for entry in "${instructions[@]}"; do
    IFS=$'\t' read -r stage keyword args <<<"$entry"
    [ "$stage" = "$build_stage" ] || continue
    case "$keyword" in
      WORKDIR)
        case "$args" in /*) workdir=$args ;; *) workdir=${workdir%/}/$args ;; esac
        mkdir -p "$root$workdir"
        ;;
      COPY | ADD) stage_copy "$root" "$args" ;;
    esac
  done
}

stage_copy() {
  local root=$1 args=$2 words=() sources=() dest src rel match matches
  if [ "${args:0:1}" = "[" ]; then
    fail "COPY in JSON form is not supported by this check: $args"
  fi
  read -r -a words <<<"$args"
  while [ "${#words[@]}" -gt 0 ] && [ "${words[0]:0:2}" = "--" ]; do
    case "${words[0]}" in
      --from=*) fail "the build stage copies from another stage or image (${words[0]}); this check only knows the build context" ;;
    esac
    words=("${words[@]:1}")
  done
  [ "${#words[@]}" -ge 2 ] || fail "a COPY without source and destination: COPY $args"
  dest=${words[${#words[@]} - 1]}
  sources=("${words[@]:0:${#words[@]}-1}")
  case "$dest" in /*) ;; *) dest=${workdir%/}/$dest ;; esac
  for src in "${sources[@]}"; do
    rel=${src#./}
    rel=${rel#/}
    while [ "${rel%/}" != "$rel" ]; do rel=${rel%/}; done
    [ -n "$rel" ] || rel=.
    # Sources may be globs: expand them inside the context.
    matches=()
    if [[ "$rel" == *[\*\?\[]* ]]; then
      while IFS= read -r match; do matches+=("${match#"$context"/}"); done < <(
        shopt -s nullglob dotglob
        for match in "$context"/$rel; do printf '%s\n' "$match"; done
      )
    elif [ -e "$context/$rel" ]; then
      matches=("$rel")
    fi
    local kept=()
    for match in "${matches[@]}"; do
      if [ "$match" != . ] && ignored "$match"; then continue; fi
      kept+=("$match")
    done
    [ "${#kept[@]}" -gt 0 ] ||
      fail "COPY $src: '$rel' is not in the build context (missing, or excluded by .dockerignore)"
    for match in "${kept[@]}"; do
      copied+=("$match")
      if [ -d "$context/$match" ]; then
        # A directory's contents go into the destination directory.
        copy_tree "$context/$match" "$match" "$root$dest"
      elif [ "${dest%/}" != "$dest" ] || [ "${#sources[@]}" -gt 1 ] || [ "${#kept[@]}" -gt 1 ] ||
        [ -d "$root$dest" ]; then
        copy_tree "$context/$match" "$match" "$root${dest%/}/${match##*/}"
      else
        copy_tree "$context/$match" "$match" "$root$dest"
      fi
    done
  done
}

# ---------------------------------------------------------------------------------------------
# (a) cargo metadata in a fresh staging directory; cargo's complaint turned into what is missing.
explain_cargo_failure() {
  local output=$1 work=$2 missing kind="" name
  # A manifest cargo could not read: a workspace member or a path dependency.
  missing=$(printf '%s\n' "$output" | sed -n "s|.*failed to read \`$work/\(.*\)/Cargo.toml\`.*|\1|p" | head -1)
  if [ -z "$missing" ]; then
    missing=$(printf '%s\n' "$output" | sed -n "s|.*failed to load manifest for [a-z ]* \`$work/\([^\`]*\)\`.*|\1|p" | head -1)
  fi
  if [ -n "$missing" ]; then
    if printf '%s\n' "$output" | grep -q "failed to load manifest for workspace member"; then
      kind="workspace member"
    elif printf '%s\n' "$output" | grep -q "failed to load manifest for dependency\|failed to get .* as a dependency"; then
      name=$(printf '%s\n' "$output" | sed -n 's/.*failed to get `\([^`]*\)` as a dependency of package `\([^ `]*\).*/\1 of \2/p' | head -1)
      kind="path dependency${name:+ $name}"
    else
      kind="a manifest cargo needs"
    fi
    echo "image-check: the Dockerfile's build stage does not copy '$missing' ($kind)" >&2
    return
  fi
  # A target cargo could not find: "failed to parse manifest at `DIR/Cargo.toml`", then
  # "can't find `NAME` bench at `PATH` or ..." with PATH relative to DIR.
  missing=$(printf '%s\n' "$output" | sed -n 's/.*can'"'"'t find `\([^`]*\)` \([a-z]*\) at `\([^`]*\)`.*/\3/p' | head -1)
  if [ -n "$missing" ]; then
    kind=$(printf '%s\n' "$output" | sed -n 's/.*can'"'"'t find `\([^`]*\)` \([a-z]*\) at .*/\2 target `\1`/p' | head -1)
    name=$(printf '%s\n' "$output" | sed -n "s|.*failed to parse manifest at \`$work/\(.*\)/Cargo.toml\`.*|\1|p" | head -1)
    echo "image-check: the Dockerfile's build stage does not copy '${name:+$name/}$missing' ($kind declared in ${name:+$name/}Cargo.toml)" >&2
    return
  fi
  # Any other file cargo could not read (a build script, a readme or license it was told about).
  missing=$(printf '%s\n' "$output" | sed -n "s|.*\`$work/\([^\`]*\)\`.*|\1|p" | head -1)
  if [ -n "$missing" ]; then
    echo "image-check: cargo failed on '$missing' in the build stage: does the Dockerfile copy it?" >&2
  fi
}

# probe WORK ARGS...: runs cargo ARGS in WORK, prints cargo's messages only when it fails.
probe() {
  local work=$1 output
  shift
  output=$(cd "$work" && cargo "$@" 2>&1 >/dev/null) && return 0
  printf '%s\n' "$output"
  return 1
}

check_metadata() {
  local work=$1 output
  if ! output=$(probe "$work" metadata --locked --format-version 1 --no-deps); then
    printf '%s\n' "$output" | sed 's/^/  cargo: /' >&2
    explain_cargo_failure "$output" "$work"
    fail "cargo cannot read the workspace the build stage of $dockerfile copies (${copied[*]})"
  fi
  # `cargo metadata` quietly leaves out a declared target whose file is missing; `cargo fetch`
  # parses every manifest in full. Offline, it downloads nothing: a crate missing from the
  # local registry cache is no concern of this check (the build fetches it).
  if ! output=$(probe "$work" fetch --locked --offline) && ! printf '%s\n' "$output" | grep -q offline; then
    printf '%s\n' "$output" | sed 's/^/  cargo: /' >&2
    explain_cargo_failure "$output" "$work"
    fail "cargo cannot load the workspace the build stage of $dockerfile copies (${copied[*]})"
  fi
  [ -f "$work/Cargo.lock" ] ||
    fail "the Dockerfile's build stage does not copy 'Cargo.lock' (the build is --locked)"
}

# Cargo as clean as in the image: without the variables cargo sets for the programs it runs. A
# test that runs this script has CARGO_MANIFEST_DIR, CARGO_PKG_NAME and the like; build scripts
# such as ring's rerun when those change, and everything above them would be rebuilt.
for name in $(compgen -e); do
  case "$name" in
    CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_NAME | CARGO_BIN_NAME | CARGO_BIN_EXE_* | \
      CARGO_PRIMARY_PACKAGE | CARGO_TARGET_TMPDIR | CARGO_CFG_* | CARGO_RUSTC_CURRENT_DIR | OUT_DIR)
      unset "$name"
      ;;
  esac
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/image-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
stage_build_context "$tmp/rootfs"
[ -f "$tmp/rootfs$workdir/Cargo.toml" ] ||
  fail "the build stage does not copy Cargo.toml into its WORKDIR $workdir"
check_metadata "$tmp/rootfs${workdir%/}"
echo "image-check: cargo reads the workspace the build stage copies (${copied[*]})"
[ "$metadata_only" = 1 ] && exit 0

# ---------------------------------------------------------------------------------------------
# (b) the stage's RUN commands, in a staging directory with a stable path: cargo fingerprints
# sources by path and timestamp, so a warm check rebuilds nothing. One check at a time.
cache=${XDG_CACHE_HOME:-$HOME/.cache}/adc-operator/image-check/$(printf '%s' "$repo" | sha256sum | cut -c1-12)
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
rm -rf "$cache/rootfs"
stage_build_context "$cache/rootfs"
build_dir=$cache/rootfs${workdir%/}
mkdir -p "$target_dir"

for entry in "${instructions[@]}"; do
  IFS=$'\t' read -r stage keyword args <<<"$entry"
  if [ "$stage" != "$build_stage" ] || [ "$keyword" != RUN ]; then continue; fi
  [ "${args:0:1}" != "[" ] || fail "RUN in JSON form is not supported by this check: $args"
  echo "image-check: RUN $args   (in $build_dir, CARGO_TARGET_DIR=$target_dir)"
  (cd "$build_dir" && CARGO_TARGET_DIR=$target_dir sh -c "$args") ||
    fail "the build stage's RUN failed: $args"
done

# The final stage copies the binary out of the build stage: it must be there.
binary=""
for entry in "${instructions[@]}"; do
  IFS=$'\t' read -r stage keyword args <<<"$entry"
  if [ "$stage" != "$final_stage" ] || [ "$keyword" != COPY ]; then continue; fi
  [[ "$args" =~ --from=${build_stage}[[:space:]]+([^[:space:]]+)[[:space:]] ]] || continue
  src=${BASH_REMATCH[1]}
  case "$src" in
    "${workdir%/}/target/"*) binary=$target_dir/${src#"${workdir%/}/target/"} ;;
    /*) binary=$cache/rootfs$src ;;
    *) binary=$build_dir/$src ;;
  esac
  [ -f "$binary" ] || fail "the final stage copies $src from the build stage, but the build did not make it ($binary)"
  [ -x "$binary" ] || fail "$binary (the final stage's $src) is not executable"
  echo "image-check: the final stage's $src is there: $binary"
done
[ -n "$binary" ] || fail "the final stage of $dockerfile copies nothing from the '$build_stage' stage"
echo "$binary"
