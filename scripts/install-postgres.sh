#!/usr/bin/env bash
# Makes PostgreSQL (15 or newer) available for the migration example's demo
# and e2e tests and prints the folder holding its server binaries (initdb,
# postgres, pg_ctl) on stdout; progress goes to stderr.
#
#   - $PG_BIN, if it holds a postgres of version 15+, is used as it is;
#   - else the newest /usr/lib/postgresql/<major>/bin with major >= 15;
#   - else Debian's `postgresql` package is installed with apt-get. Its
#     default cluster is not created (createcluster.d), so nothing listens
#     on 5432: the tests start their own server on a free loopback port in
#     a temporary data directory (test/harness.StartPostgres).
#
# The harness finds the binaries through $PG_BIN, then the same folders.
set -euo pipefail

log() { echo "install-postgres: $*" >&2; }

major_of() { # $1: postgres binary → its major version, or nothing
	"$1" --version 2>/dev/null | sed -n 's/^postgres (PostgreSQL) \([0-9][0-9]*\).*/\1/p'
}

usable() { # $1: bin folder
	local m
	[[ -x "$1/postgres" && -x "$1/initdb" ]] || return 1
	m="$(major_of "$1/postgres")"
	[[ -n "$m" && "$m" -ge 15 ]]
}

find_bin() {
	if [[ -n "${PG_BIN:-}" ]] && usable "$PG_BIN"; then
		echo "$PG_BIN"
		return 0
	fi
	local d best=""
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
		if usable "$d"; then best="$d"; fi
	done
	[[ -n "$best" ]] && echo "$best"
}

if bin="$(find_bin)"; then
	echo "$bin"
	exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
	log "no PostgreSQL 15+ found and no apt-get to install one; set PG_BIN to its bin folder"
	exit 1
fi
log "installing Debian's postgresql package"
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/shiftplane-no-main.conf
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends postgresql >&2

if bin="$(find_bin)"; then
	echo "$bin"
	exit 0
fi
log "installed postgresql, but found no PostgreSQL 15+ under /usr/lib/postgresql"
exit 1
