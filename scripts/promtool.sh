#!/usr/bin/env bash
# Prints the path of a promtool (Prometheus' rule checker) for the deploy/ tests: the one
# on PATH, else one cached under ${XDG_CACHE_HOME:-~/.cache}/registry-syncer/promtool/,
# else it fetches Debian's prometheus package with `apt-get download` (no root needed, no
# service installed or started) and keeps only promtool from it.
set -euo pipefail

fail() { echo "promtool: $*" >&2; exit 1; }

if p=$(command -v promtool 2>/dev/null); then echo "$p"; exit 0; fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/registry-syncer/promtool"
if [ -x "$cache/promtool" ]; then echo "$cache/promtool"; exit 0; fi

command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 ||
  fail "not found: install Prometheus' promtool (Debian/Ubuntu: apt-get install prometheus; macOS: brew install prometheus) or put it on PATH"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 0777 "$tmp" # apt-get download runs as _apt when it can
if ! (cd "$tmp" && apt-get download prometheus >"$tmp/log" 2>&1); then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    (cd "$tmp" && apt-get download prometheus >"$tmp/log" 2>&1) ||
      fail "apt-get download prometheus failed: $(tail -3 "$tmp/log")"
  else
    fail "apt-get download prometheus failed ($(tail -1 "$tmp/log")): run apt-get update as root, or install prometheus"
  fi
fi
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
[ -x "$tmp/x/usr/bin/promtool" ] || fail "Debian's prometheus package has no usr/bin/promtool"
mkdir -p "$cache"
install -m 0755 "$tmp/x/usr/bin/promtool" "$cache/promtool.new"
mv "$cache/promtool.new" "$cache/promtool"
echo "$cache/promtool"
