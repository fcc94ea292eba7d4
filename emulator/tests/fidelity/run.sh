#!/usr/bin/env bash
# Fidelity test: gce-emulator driven by Google's own Python clients (google-api-python-client with
# the compute.v1 discovery document it ships, and google-cloud-compute; google-auth
# service-account credentials).
#
#   emulator/tests/fidelity/run.sh [pytest args...]
#
# Builds nothing: expects the emulator binary at $GCE_EMULATOR_BIN, default
# <repo>/target/debug/gce-emulator (`cargo build -p gce-emulator`).
# Uses the venv <repo>/.venv, creating it when missing and installing requirements.txt only when
# that file (or the Python) changed since the last install. Exits with pytest's exit code.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
VENV="$ROOT/.venv"
REQUIREMENTS="$HERE/requirements.txt"
STAMP="$VENV/.fidelity-requirements.sha256"
PYTHON="${PYTHON:-python3}"

export GCE_EMULATOR_BIN="${GCE_EMULATOR_BIN:-$ROOT/target/debug/gce-emulator}"
if [[ ! -x "$GCE_EMULATOR_BIN" ]]; then
    echo "run.sh: gce-emulator binary not found or not executable at $GCE_EMULATOR_BIN" >&2
    echo "run.sh: build it first (cd $ROOT && cargo build -p gce-emulator) or set GCE_EMULATOR_BIN" >&2
    exit 2
fi

if ! command -v "$PYTHON" >/dev/null; then
    echo "run.sh: $PYTHON not found; Python 3.11 or newer is needed" >&2
    exit 2
fi

make_venv() {
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1 || [[ ! -x "$VENV/bin/pip" ]]; then
        # No ensurepip (e.g. Debian without python3-venv): virtualenv from the package index.
        rm -rf "$VENV"
        echo "run.sh: python3 -m venv is unavailable; using virtualenv" >&2
        "$PYTHON" -m pip install --quiet --user virtualenv 2>/dev/null \
            || "$PYTHON" -m pip install --quiet --user --break-system-packages virtualenv
        "$PYTHON" -m virtualenv --quiet "$VENV"
    fi
}

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "run.sh: creating $VENV" >&2
    make_venv
fi

want="$( { cat "$REQUIREMENTS"; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
    echo "run.sh: installing $REQUIREMENTS into $VENV" >&2
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" >&2
    echo "$want" > "$STAMP"
fi

cd "$HERE"
export PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
