#!/usr/bin/env bash
# Checks what the tests and `make run` need, installs PostgreSQL's server binaries with
# apt-get when they are missing and we are root, and otherwise says exactly what to do.
set -euo pipefail

fail() { echo "deps: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || fail "Go is not installed: install Go 1.26 (https://go.dev/dl/) and put it on PATH"

find_pg() {
  if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then echo "$PG_BIN"; return 0; fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then echo "$d"; return 0; fi
  done
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir)
    if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  fi
  return 1
}

if ! bin=$(find_pg); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: PostgreSQL server binaries not found; installing them with apt-get (postgresql)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin=$(find_pg) || fail "apt-get installed postgresql but initdb is still not found"
  else
    fail "PostgreSQL >= 14 server binaries (initdb, postgres) not found: install them (Debian/Ubuntu: sudo apt-get install postgresql; macOS: brew install postgresql@16) or set PG_BIN to their directory"
  fi
fi

major=$("$bin/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/')
[ "$major" -ge 14 ] || fail "PostgreSQL $major found in $bin; version 14 or newer is needed"

if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  fail "running as root: PostgreSQL refuses to run as root and the tests start it as the 'postgres' system user, which does not exist (create it: useradd --system postgres)"
fi
echo "deps: go $(go env GOVERSION), PostgreSQL $major ($bin)"

# Debian's chromium: the status page (GET /) is tested in a real headless browser
# (cmd/syncer TestStatusPageInBrowser), which fails naming `make deps` without it.
find_chromium() {
  local c
  for c in chromium chromium-browser google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
  done
  return 1
}
if ! chrome=$(find_chromium); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: chromium not found; installing it with apt-get (chromium chromium-driver)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    chrome=$(find_chromium) || fail "apt-get installed chromium but it is still not on PATH"
  else
    fail "chromium not found: the status page test runs it headless; install it (Debian/Ubuntu: sudo apt-get install chromium chromium-driver; macOS: brew install --cask chromium)"
  fi
fi
echo "deps: $("$chrome" --version 2>/dev/null | tail -n 1) ($chrome), for the status page test"
