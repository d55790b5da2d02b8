#!/usr/bin/env bash
# Makes a headless-capable Chromium available for the dashboard's browser
# test and prints its path on stdout (progress goes to stderr).
#
#   - $CHROMIUM_BIN, or a `chromium` / `chromium-browser` / `google-chrome`
#     on PATH that answers --version, is used as it is;
#   - else Debian's `chromium` package is installed with apt-get (as root,
#     or through sudo when it is there).
#
# The browser test (test/e2e/dashboard_test.go) reads CHROMIUM_BIN.
set -euo pipefail

log() { echo "install-chromium: $*" >&2; }

works() { timeout 60 "$1" --headless --no-sandbox --version >/dev/null 2>&1; }

if [[ -n "${CHROMIUM_BIN:-}" ]] && works "$CHROMIUM_BIN"; then
	echo "$CHROMIUM_BIN"
	exit 0
fi
for name in chromium chromium-browser google-chrome; do
	if p="$(command -v "$name" 2>/dev/null)" && works "$p"; then
		echo "$p"
		exit 0
	fi
done

sudo=""
if [[ "$(id -u)" != 0 ]]; then
	if command -v sudo >/dev/null 2>&1; then
		sudo="sudo"
	else
		log "chromium is missing and this user cannot install packages (not root, no sudo)"
		exit 1
	fi
fi
log "installing Debian's chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends chromium fonts-liberation >&2
p="$(command -v chromium)"
works "$p" || { log "$p does not start headless"; exit 1; }
echo "$p"
