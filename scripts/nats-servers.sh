#!/usr/bin/env bash
# Installs the nats-server binaries the tests run against (every release line the
# registry supports: 2.9 through the newest) and prints the list the tests read from
# REGISTRY_NATS_SERVERS: "<version>=<path>,<version>=<path>,...".
#
#   scripts/nats-servers.sh          install what is missing, then print the list
#   scripts/nats-servers.sh --list   print the list; fail if a binary is missing
#
# 2.10 and later are built with `go install` into
# ${XDG_CACHE_HOME:-$HOME/.cache}/registry-syncer/nats-server/<version>/nats-server;
# 2.9 is Debian 12's package (/usr/sbin/nats-server, installed with apt-get when missing
# and running as root). Already installed binaries are checked with --version, not
# rebuilt. A newer release: add it to VERSIONS (go list -m -versions github.com/nats-io/nats-server/v2).
set -euo pipefail

VERSIONS=(v2.10.29 v2.11.12 v2.12.15 v2.15.3)
DEBIAN_BIN=${NATS_SERVER_2_9:-/usr/sbin/nats-server}
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/registry-syncer/nats-server"

mode=install
case "${1:-}" in
  "") ;;
  --list) mode=list ;;
  *) echo "usage: $0 [--list]" >&2; exit 2 ;;
esac

fail() { echo "nats-servers: $*" >&2; exit 1; }

# version prints the version a binary reports ("2.9.10"), or nothing.
version() { "$1" --version 2>/dev/null | sed -nE 's/^nats-server: v?([0-9][^ ]*).*/\1/p'; }

list=()

# 2.9: Debian's package.
if [ ! -x "$DEBIAN_BIN" ]; then
  if [ "$mode" = install ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "nats-servers: $DEBIAN_BIN not found; installing Debian's nats-server package (2.9)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null ||
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; } ||
      fail "apt-get install nats-server failed"
    # The package enables a system service on port 4222; the tests never use it.
  else
    fail "nats-server 2.9 not found at $DEBIAN_BIN: install Debian 12's package (sudo apt-get install nats-server), or set NATS_SERVER_2_9 to a 2.9.x binary; then run 'make deps'"
  fi
fi
v=$(version "$DEBIAN_BIN")
case "$v" in
  2.9.*) list+=("$v=$DEBIAN_BIN") ;;
  *) fail "$DEBIAN_BIN reports version '${v:-?}', want 2.9.x (set NATS_SERVER_2_9 to a 2.9.x binary)" ;;
esac

# 2.10 and later: go install into the cache.
for tag in "${VERSIONS[@]}"; do
  want=${tag#v}
  dir="$CACHE/$want"
  bin="$dir/nats-server"
  if [ ! -x "$bin" ] || [ "$(version "$bin")" != "$want" ]; then
    [ "$mode" = install ] || fail "nats-server $want not installed at $bin: run 'make deps'"
    command -v go >/dev/null 2>&1 || fail "Go is needed to build nats-server $want"
    echo "nats-servers: building nats-server $want into $dir (once; about a minute)" >&2
    tmp=$(mktemp -d "$CACHE.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE" && mktemp -d "$CACHE.tmp.XXXXXX"; })
    # Outside any module, so that this repository's go.mod plays no part.
    (cd "$tmp" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN="$tmp" go install "github.com/nats-io/nats-server/v2@$tag") ||
      { rm -rf "$tmp"; fail "go install github.com/nats-io/nats-server/v2@$tag failed"; }
    got=$(version "$tmp/nats-server")
    [ "$got" = "$want" ] || { rm -rf "$tmp"; fail "the nats-server built from $tag reports version '$got'"; }
    mkdir -p "$dir"
    mv -f "$tmp/nats-server" "$bin"
    rm -rf "$tmp"
  fi
  list+=("$want=$bin")
done

(IFS=,; echo "${list[*]}")
